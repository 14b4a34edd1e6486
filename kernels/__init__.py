"""`miner.kernels`: batched connected-component erasure and labelling (Triton on CUDA, exact CPU path).

The only place component operations live. Each is a torch custom op (``torch.ops.miner.*``, see
:mod:`miner.kernels.ops`) with a batched CPU path for CPU tensors and a Triton kernel for CUDA tensors
(:mod:`miner.kernels.triton_ccl`, imported on first CUDA use: importing this package never imports triton).

- :func:`erase_components` -- the component of ``maps >= threshold`` at each map's maximum (one mining step).
- :func:`label_components` -- labels numbered exactly like ``scipy.ndimage.label`` per map, and their counts.
- :func:`component_stats` -- bbox (x0, y0, x1, y1 exclusive), area, sum and mean of a value map per label.
"""
from __future__ import annotations

from miner.kernels.erase import erase_components
from miner.kernels.label import label_components
from miner.kernels.stats import ComponentStats, component_stats

__all__ = ["ComponentStats", "component_stats", "erase_components", "label_components"]
