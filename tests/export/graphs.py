"""Small exported graphs shared by tests/export and tests/backends (each built once per test session).

Exports take seconds each, so every graph a test needs is built here on first use and cached for the session.
Models are tiny (widths 4..64, inputs 32-64 px, 3 classes) so the whole set builds in well under a minute.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from miner.models import create_model, save_checkpoint

CLASSES = ("Atelectasis", "Effusion", "Nodule")


@dataclass(frozen=True)
class Case:
    """One model + map method: how to build it and what to export."""

    arch: str
    options: tuple[tuple[str, Any], ...]
    method: str
    size: int
    layer: str | None = None

    def model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        model = create_model(self.arch, classes=CLASSES, **dict(self.options))
        _randomise_batchnorm(model)
        return model.eval()


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine terms (fresh BN is the identity, which hides export mistakes)."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


CASES: dict[str, Case] = {
    "resnet18-cam": Case("resnet18", (("width", 0.125),), "cam", 64),
    "msa-bilinear-cam": Case("resnet18_msa", (("width", 0.125), ("upsample", "bilinear")), "cam", 64),
    "msa-deconv-cam": Case("resnet18_msa", (("width", 0.125), ("upsample", "deconv")), "cam", 64),
    # the default recipe's head: stride-8 MSA, log-sum-exp pooling (CAM stays analytic)
    "msa8-lse-cam": Case("resnet18_msa", (("width", 0.125), ("msa_stride", 8), ("pooling", "lse")), "cam", 64),
    # top-k pooling makes dy/dX score-dependent: Grad-CAM goes through autograd (and a masks input)
    "msa8-topk-gradcam": Case("resnet18_msa", (("width", 0.125), ("msa_stride", 8), ("pooling", "topk"),
                                               ("pool_k", 0.1)), "gradcam", 64),
    "mlp-gradcam": Case("resnet18", (("width", 0.125), ("head", "mlp")), "gradcam", 64),
    "mlp-hirescam": Case("resnet18", (("width", 0.125), ("head", "mlp")), "hirescam", 64),
    "unet-seg-gradcam": Case("unet", (("channels", 4), ("depth", 2)), "seg-gradcam", 32),
    "unet-seg-hirescam": Case("unet", (("channels", 4), ("depth", 2)), "seg-hirescam", 32, layer="dec2"),
    "dcfpn-pyramid-gradcam": Case("dcfpn", (("channels", 4), ("depth", 2)), "pyramid-gradcam", 32),
}

_MODELS: dict[str, torch.nn.Module] = {}
_GRAPHS: dict[str, Any] = {}


def model_for(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        _MODELS[name] = CASES[name].model()
    return _MODELS[name]


def checkpoint_for(name: str, folder: Path) -> Path:
    """The case's model saved as a checkpoint with its input size."""
    path = folder / f"{name}.pt"
    if not path.exists():
        save_checkpoint(path, model_for(name), meta={"input_size": CASES[name].size})
    return path


def exported(name: str, folder: Path) -> Any:
    """`ExportResult` of the case's graph (exported with the parity check on), built once per session."""
    if name not in _GRAPHS:
        from miner.export.onnx import export_model

        case = CASES[name]
        _GRAPHS[name] = export_model(
            model_for(name), folder / f"{name}.onnx", input_size=case.size, method=case.method, layer=case.layer
        )
    return _GRAPHS[name]
