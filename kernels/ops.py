"""The three component operations as torch operators (namespace ``miner``).

- ``miner::erase_components(Tensor maps, float threshold, int connectivity) -> Tensor``
- ``miner::label_components(Tensor mask, int connectivity) -> (Tensor, Tensor)``
- ``miner::component_stats(Tensor labels, Tensor values, int num_labels) -> (Tensor, Tensor, Tensor, Tensor)``

CPU tensors run the batched CPU path (``miner.kernels._cpu``); CUDA tensors run the Triton kernels
(``miner.kernels.triton_ccl``, imported on first CUDA call only, so ``import miner.kernels`` never imports triton).
Every op has a fake (meta) implementation: all output shapes are static given the inputs and ``num_labels``, which is
why ``component_stats`` takes K as an argument at the op level (the public wrapper fills it in).

The ops are defined with ``torch.library.Library`` (a ``FRAGMENT`` of the ``miner`` namespace) rather than
``torch.library.custom_op``: the latter wraps every implementation in a dynamo guard whose first call imports
``torch._dynamo`` (about 2 s here). None of the outputs is differentiable; the public functions pass detached inputs.
The ops take canonical inputs (3-D, contiguous, float32 maps/values, bool mask, int32 labels); the public functions in
``miner.kernels`` validate and convert.
"""
from __future__ import annotations

import torch
from torch import Tensor

from miner.kernels import _cpu

_LIB = torch.library.Library("miner", "FRAGMENT")
_LIB.define("erase_components(Tensor maps, float threshold, int connectivity) -> Tensor")
_LIB.define("label_components(Tensor mask, int connectivity) -> (Tensor, Tensor)")
_LIB.define("component_stats(Tensor labels, Tensor values, int num_labels) -> (Tensor, Tensor, Tensor, Tensor)")


def _cuda_impl():
    from miner.kernels import triton_ccl

    return triton_ccl


# CPU
def _erase_cpu(maps: Tensor, threshold: float, connectivity: int) -> Tensor:
    return torch.from_numpy(_cpu.erase_cpu(maps.numpy(), threshold, connectivity))


def _label_cpu(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    labels, counts = _cpu.label_cpu(mask.numpy(), connectivity)
    return torch.from_numpy(labels), torch.from_numpy(counts)


def _stats_cpu(labels: Tensor, values: Tensor, num_labels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out = _cpu.stats_cpu(labels.numpy(), values.numpy(), num_labels)
    return tuple(torch.from_numpy(a) for a in out)  # type: ignore[return-value]


# CUDA (Triton)
def _erase_cuda(maps: Tensor, threshold: float, connectivity: int) -> Tensor:
    return _cuda_impl().erase_cuda(maps, threshold, connectivity)


def _label_cuda(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    return _cuda_impl().label_cuda(mask, connectivity)


def _stats_cuda(labels: Tensor, values: Tensor, num_labels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _cuda_impl().stats_cuda(labels, values, num_labels)


for _name, _cpu_fn, _cuda_fn in (
    ("erase_components", _erase_cpu, _erase_cuda),
    ("label_components", _label_cpu, _label_cuda),
    ("component_stats", _stats_cpu, _stats_cuda),
):
    _LIB.impl(_name, _cpu_fn, "CPU")
    _LIB.impl(_name, _cuda_fn, "CUDA")


# Fake (meta) kernels: shapes and dtypes only
@torch.library.register_fake("miner::erase_components", lib=_LIB)
def _erase_fake(maps: Tensor, threshold: float, connectivity: int) -> Tensor:
    return torch.empty(maps.shape, dtype=torch.bool, device=maps.device)


@torch.library.register_fake("miner::label_components", lib=_LIB)
def _label_fake(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    labels = torch.empty(mask.shape, dtype=torch.int32, device=mask.device)
    counts = torch.empty(mask.shape[:1], dtype=torch.int32, device=mask.device)
    return labels, counts


@torch.library.register_fake("miner::component_stats", lib=_LIB)
def _stats_fake(labels: Tensor, values: Tensor, num_labels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, dev = labels.shape[0], labels.device
    return (
        torch.empty((n, num_labels, 4), dtype=torch.int32, device=dev),
        torch.empty((n, num_labels), dtype=torch.int32, device=dev),
        torch.empty((n, num_labels), dtype=torch.float32, device=dev),
        torch.empty((n, num_labels), dtype=torch.float32, device=dev),
    )


erase_components_op = torch.ops.miner.erase_components.default
label_components_op = torch.ops.miner.label_components.default
component_stats_op = torch.ops.miner.component_stats.default
