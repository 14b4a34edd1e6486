"""Input validation shared by the public component operations."""
from __future__ import annotations

import torch
from torch import Tensor

from miner.errors import UsageError


def check_connectivity(connectivity: int) -> None:
    if connectivity not in (4, 8):
        raise UsageError(f"connectivity: {connectivity!r} is not supported; use 4 or 8")


def flatten_maps(
    x: Tensor, name: str, *, floating: bool, dtype: torch.dtype | None = None
) -> tuple[Tensor, torch.Size]:
    """Tensor[..., H, W] -> (contiguous Tensor[N, H, W] in the op's dtype, original shape).

    floating=True: float32 (other float dtypes are converted); floating=False: bool (``!= 0``) unless ``dtype``.
    """
    if not isinstance(x, Tensor):
        raise UsageError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise UsageError(f"{name}: expected a tensor of shape [..., H, W], got shape {tuple(x.shape)}")
    if x.device.type not in ("cpu", "cuda"):
        raise UsageError(f"{name}: device {x.device} is not supported; use a CPU or CUDA tensor")
    shape = x.shape
    x = x.detach()  # no output of the component ops is differentiable
    if floating:
        if not x.is_floating_point():
            raise UsageError(f"{name}: expected a floating-point tensor, got {x.dtype}")
        x = x.to(torch.float32)
    elif dtype is not None:
        if x.is_floating_point() or x.is_complex():
            raise UsageError(f"{name}: expected an integer tensor, got {x.dtype}")
        x = x.to(dtype)
    elif x.dtype != torch.bool:
        x = x != 0
    return x.reshape(-1, shape[-2], shape[-1]).contiguous(), shape
