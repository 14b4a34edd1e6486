"""Localisation metrics: IoU/IoBB, the ChestX-ray14 Acc/AFP protocol, MaxBoxAccV2 and PxAP.

- `miner.metrics.overlap`: `iou`, `iobb` (pairwise matrices of x, y, w, h boxes).
- `miner.metrics.localization`: the protocol of Wang et al. / Cai et al. (`localization_table`, `format_table`),
  box tables read from Parquet or BBox_List CSV files.
- `miner.metrics.bounds`: the AFP bounds (built-in, recovered from the seed's Table 2; or from a file; or none).
- `miner.metrics.coco`: COCO AP/AR per finding; `miner.metrics.readers`: several readers' boxes as one ground truth.
- `miner.metrics.job`: one evaluation of a finished job against a ground truth (``miner eval``, ``demo``, ``report``).
- `miner.metrics.wsol`: `max_box_acc_v2`, `pxap` (Choe et al. 2020).
"""
from __future__ import annotations

from miner.metrics.bounds import AfpBounds, default_bounds, load_bounds, no_bounds
from miner.metrics.localization import (
    BoxTable,
    LocalizationResult,
    evaluate_finding,
    format_table,
    ground_truth_table,
    localization_table,
    read_bbox_csv,
    read_boxes,
)
from miner.metrics.overlap import iobb, iou

__all__ = [
    "AfpBounds",
    "BoxTable",
    "LocalizationResult",
    "default_bounds",
    "evaluate_finding",
    "format_table",
    "ground_truth_table",
    "iobb",
    "iou",
    "load_bounds",
    "localization_table",
    "no_bounds",
    "read_bbox_csv",
    "read_boxes",
]
