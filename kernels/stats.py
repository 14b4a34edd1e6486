"""Per-component statistics of labelled maps: bounding box, area, sum and mean of a value map."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from miner.errors import UsageError
from miner.kernels._checks import flatten_maps
from miner.kernels.ops import component_stats_op


class ComponentStats(NamedTuple):
    """Statistics of labels 1..K of each map; entry ``k - 1`` describes label ``k``.

    bbox (Tensor[N, K, 4], int32): x0, y0, x1, y1 in pixels, x1/y1 EXCLUSIVE; all zero for absent labels.
    area (Tensor[N, K], int32): pixel count (0 for absent labels).
    sum (Tensor[N, K], float32): sum of ``values`` over the component.
    mean (Tensor[N, K], float32): ``sum / area`` (0 for absent labels).
    """

    bbox: Tensor
    area: Tensor
    sum: Tensor
    mean: Tensor


def component_stats(labels: Tensor, values: Tensor, *, num_labels: int | None = None) -> ComponentStats:
    """Bounding box, area, sum and mean of ``values`` for every label of every map.

    labels (Tensor[N, H, W], int32; leading dims ``[..., H, W]`` are kept), values (same shape, float) ->
    ComponentStats with K = ``num_labels``, or the largest label in the batch when None.

    ``num_labels=None`` reads the largest label back to the host (one synchronisation on CUDA); pass it (for instance
    ``int(counts.max())`` once per batch, or a fixed cap) to keep a CUDA batch free of host round trips. Labels above
    K and below 1 are ignored. ``sum`` is accumulated in float32 within each horizontal run and in float64 across runs
    on CPU, and in float32 on CUDA (atomic adds in nondeterministic order), so the two agree to float32 rounding, not
    bit for bit; bbox and area are exact on both.
    """
    lab, shape = flatten_maps(labels, "labels", floating=False, dtype=torch.int32)
    if values.shape != labels.shape:
        raise UsageError(f"values: shape {tuple(values.shape)} must equal labels' shape {tuple(labels.shape)}")
    if values.device != labels.device:
        raise UsageError(f"values: on {values.device}, labels on {labels.device}; put both on one device")
    val, _ = flatten_maps(values, "values", floating=True)
    if num_labels is None:
        num_labels = int(lab.max()) if lab.numel() else 0
        num_labels = max(num_labels, 0)
    if num_labels < 0:
        raise UsageError(f"num_labels: {num_labels} must be >= 0")
    bbox, area, total, mean = component_stats_op(lab, val, int(num_labels))
    lead = shape[:-2]
    k = int(num_labels)
    return ComponentStats(
        bbox.reshape(*lead, k, 4), area.reshape(*lead, k), total.reshape(*lead, k), mean.reshape(*lead, k)
    )


__all__ = ["ComponentStats", "component_stats"]
