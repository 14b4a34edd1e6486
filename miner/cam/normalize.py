"""Per-map normalisation to [0, 1], shared by comparisons, pictures and box thresholds.

``"minmax"``     (M - min) / (max - min)          torchcam's and pytorch-grad-cam's normalisation (they add
                                                  eps to the divisor: `eps` here)
``"relu-max"``   ReLU(M) / max(ReLU(M))
A constant map (no signal) becomes all zeros, never NaN.
"""
from __future__ import annotations

import torch
from torch import Tensor

from miner.errors import UsageError

MODES = ("minmax", "relu-max")


def normalize_maps(maps: Tensor, *, mode: str = "minmax", eps: float = 0.0) -> Tensor:
    """maps (Tensor[..., h, w]) -> the same shape in [0, 1], each trailing [h, w] map on its own.

    Args:
        maps: raw maps.
        mode: ``"minmax"`` or ``"relu-max"``.
        eps: added to the divisor (1e-7 reproduces pytorch-grad-cam, 1e-8 torchcam); with 0 a constant map
            gives zeros.
    """
    if mode not in MODES:
        raise UsageError(f"normalisation must be one of {MODES}, got {mode!r}")
    x = maps if mode == "minmax" else torch.relu(maps)
    lo = x.amin(dim=(-2, -1), keepdim=True) if mode == "minmax" else torch.zeros_like(x[..., :1, :1])
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    if eps:
        return (x - lo) / (span + eps)
    ok = span > 0
    return torch.where(ok, (x - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(x))
