"""The three component operations as torch custom ops (namespace ``miner``).

- ``miner::erase_components(Tensor maps, float threshold, int connectivity) -> Tensor``
- ``miner::label_components(Tensor mask, int connectivity) -> (Tensor, Tensor)``
- ``miner::component_stats(Tensor labels, Tensor values, int num_labels) -> (Tensor, Tensor, Tensor, Tensor)``

CPU tensors run the batched CPU path (``miner.kernels._cpu``); CUDA tensors run the Triton kernels
(``miner.kernels.triton_ccl``, imported on first CUDA call only, so ``import miner.kernels`` never imports triton).
Every op has a fake (meta) implementation: all output shapes are static given the inputs and ``num_labels``, which is
why ``component_stats`` takes K as an argument at the op level (the public wrapper fills it in).

The ops take canonical inputs (3-D, contiguous, float32 maps/values, bool mask, int32 labels); the public functions in
``miner.kernels`` validate and convert.
"""
from __future__ import annotations

import torch
from torch import Tensor

from miner.kernels import _cpu


def _cuda_impl():
    from miner.kernels import triton_ccl

    return triton_ccl


@torch.library.custom_op("miner::erase_components", mutates_args=(), device_types="cpu")
def erase_components_op(maps: Tensor, threshold: float, connectivity: int) -> Tensor:
    return torch.from_numpy(_cpu.erase_cpu(maps.numpy(), threshold, connectivity))


@erase_components_op.register_kernel("cuda")
def _erase_cuda(maps: Tensor, threshold: float, connectivity: int) -> Tensor:
    return _cuda_impl().erase_cuda(maps, threshold, connectivity)


@erase_components_op.register_fake
def _erase_fake(maps: Tensor, threshold: float, connectivity: int) -> Tensor:
    return torch.empty(maps.shape, dtype=torch.bool, device=maps.device)


@torch.library.custom_op("miner::label_components", mutates_args=(), device_types="cpu")
def label_components_op(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    labels, counts = _cpu.label_cpu(mask.numpy(), connectivity)
    return torch.from_numpy(labels), torch.from_numpy(counts)


@label_components_op.register_kernel("cuda")
def _label_cuda(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    return _cuda_impl().label_cuda(mask, connectivity)


@label_components_op.register_fake
def _label_fake(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    labels = torch.empty(mask.shape, dtype=torch.int32, device=mask.device)
    counts = torch.empty(mask.shape[:1], dtype=torch.int32, device=mask.device)
    return labels, counts


@torch.library.custom_op("miner::component_stats", mutates_args=(), device_types="cpu")
def component_stats_op(labels: Tensor, values: Tensor, num_labels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    out = _cpu.stats_cpu(labels.numpy(), values.numpy(), num_labels)
    return tuple(torch.from_numpy(a) for a in out)  # type: ignore[return-value]


@component_stats_op.register_kernel("cuda")
def _stats_cuda(labels: Tensor, values: Tensor, num_labels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _cuda_impl().stats_cuda(labels, values, num_labels)


@component_stats_op.register_fake
def _stats_fake(labels: Tensor, values: Tensor, num_labels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, dev = labels.shape[0], labels.device
    return (
        torch.empty((n, num_labels, 4), dtype=torch.int32, device=dev),
        torch.empty((n, num_labels), dtype=torch.int32, device=dev),
        torch.empty((n, num_labels), dtype=torch.float32, device=dev),
        torch.empty((n, num_labels), dtype=torch.float32, device=dev),
    )
