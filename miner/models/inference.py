"""Inference-time rewrites that leave a model's outputs unchanged up to float rounding.

- BatchNorm folding: an eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` becomes part of the
  convolution (w' = w * g / sqrt(var + eps), b' = (b - mean) * g / sqrt(var + eps) + beta), one pass over
  the activations less per convolution. Folded where the pairing is certain: consecutive children of an
  ``nn.Sequential``, and ``convN`` / ``bnN`` pairs of the ResNet stem and blocks (whose forward applies
  ``bnN`` to ``convN``'s output and nothing else).
- channels_last memory format, which oneDNN's CPU convolutions run faster (ResNet-50 at 512x512, batch 4,
  2 threads here: 1096 ms plain, 946 ms folded, 830 ms folded + channels_last).

Module names, `feature_layer`, `map_layers` and hooks keep working: folded BatchNorms become ``Identity``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from miner.models.resnet import BasicBlock, Bottleneck, ResNet


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = nn.Parameter(conv.weight.detach() * scale.reshape(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=False)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and bn.track_running_stats
        and bn.affine
        and bn.num_features == conv.out_channels
    )


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every certain conv -> BN pair of `model` (in place, eval mode required); returns how many."""
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model (BatchNorm must use its running statistics)")
    folded = 0
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if _foldable(conv, bn):
                    _fold(conv, bn)
                    module._modules[b] = nn.Identity()
                    folded += 1
        if isinstance(module, (ResNet, BasicBlock, Bottleneck)):
            for i in (1, 2, 3):
                conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
                if conv is not None and bn is not None and _foldable(conv, bn):
                    _fold(conv, bn)
                    setattr(module, f"bn{i}", nn.Identity())
                    folded += 1
    return folded


def prepare_for_inference(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True) -> nn.Module:
    """An inference copy of `model`: eval mode, frozen parameters, BatchNorm folded, channels_last.

    The caller's model is left untouched. Outputs equal the original's up to float rounding.
    """
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
