"""Where and how large the annotated lesions of ChestX-ray14 are, per finding (for the phantom generator).

The constants below were derived from the real ``BBox_List_2017.csv`` (984 boxes on 880 images of 1024x1024
pixels, as shipped in ``torchxrayvision/data/BBox_List_2017.csv.gz``) by `derive_box_stats` and rounded to three
decimals; ``tests/phantoms/test_box_stats.py`` re-derives them from that file and compares. All values are
fractions of the image side (box pixels / 1024):

- ``p_left``: fraction of boxes whose centre lies in the image's left half (the patient's right side);
- ``cx_left``, ``cx_right``: mean and standard deviation of the box centre's x, per half;
- ``cy``: mean and standard deviation of the box centre's y;
- ``log_w``, ``log_h``: mean and standard deviation of the natural log of the box width and height
  (sizes are close to log-normal); ``corr``: correlation of log width and log height;
- ``w_range``: the smallest and largest width seen.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from miner.data.records import GroundTruthBox


@dataclass(frozen=True)
class BoxStats:
    n: int
    p_left: float
    cx_left: tuple[float, float]
    cx_right: tuple[float, float]
    cy: tuple[float, float]
    log_w: tuple[float, float]
    log_h: tuple[float, float]
    corr: float
    w_range: tuple[float, float]


# derive_box_stats(read_bbox_list(".../torchxrayvision/data/BBox_List_2017.csv.gz")), rounded to 3 decimals
NIH_BOX_STATS: dict[str, BoxStats] = {
    "Atelectasis": BoxStats(180, 0.500, (0.314, 0.072), (0.704, 0.094), (0.568, 0.115), (-1.710, 0.545),
                            (-2.123, 0.509), 0.326, (0.050, 0.852)),
    "Cardiomegaly": BoxStats(146, 0.055, (0.467, 0.022), (0.581, 0.042), (0.569, 0.064), (-0.764, 0.111),
                             (-1.000, 0.150), 0.478, (0.357, 0.647)),
    "Effusion": BoxStats(153, 0.510, (0.234, 0.069), (0.767, 0.085), (0.561, 0.119), (-1.664, 0.541),
                         (-1.396, 0.723), 0.243, (0.027, 0.880)),
    "Infiltration": BoxStats(123, 0.439, (0.351, 0.085), (0.668, 0.073), (0.525, 0.115), (-1.387, 0.492),
                             (-1.340, 0.471), 0.548, (0.093, 0.734)),
    "Mass": BoxStats(85, 0.529, (0.331, 0.074), (0.704, 0.092), (0.451, 0.115), (-1.996, 0.575),
                     (-1.879, 0.601), 0.844, (0.043, 0.682)),
    "Nodule": BoxStats(79, 0.481, (0.282, 0.087), (0.752, 0.073), (0.482, 0.153), (-2.701, 0.306),
                       (-2.730, 0.329), 0.858, (0.028, 0.120)),
    "Pneumonia": BoxStats(120, 0.475, (0.321, 0.069), (0.671, 0.068), (0.556, 0.104), (-1.422, 0.436),
                          (-1.316, 0.458), 0.626, (0.089, 0.746)),
    "Pneumothorax": BoxStats(98, 0.571, (0.277, 0.071), (0.699, 0.061), (0.325, 0.187), (-1.756, 0.524),
                             (-1.672, 0.735), 0.463, (0.033, 0.418)),
}


def derive_box_stats(boxes: Iterable[GroundTruthBox], *, image_size: float = 1024.0) -> dict[str, BoxStats]:
    """Per-finding box statistics (fractions of `image_size`), as in `NIH_BOX_STATS` before rounding."""
    by_finding: dict[str, list[tuple[float, float, float, float]]] = {}
    for b in boxes:
        by_finding.setdefault(b.finding, []).append((b.x, b.y, b.w, b.h))
    out = {}
    for finding, rows in by_finding.items():
        a = np.asarray(rows, dtype=np.float64) / image_size
        cx, cy = a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
        left = cx < 0.5
        lw, lh = np.log(a[:, 2]), np.log(a[:, 3])

        def mean_std(v: np.ndarray) -> tuple[float, float]:
            return (float(v.mean()), float(v.std())) if v.size else (0.5, 0.0)

        out[finding] = BoxStats(
            n=len(rows),
            p_left=float(left.mean()),
            cx_left=mean_std(cx[left]),
            cx_right=mean_std(cx[~left]),
            cy=mean_std(cy),
            log_w=mean_std(lw),
            log_h=mean_std(lh),
            corr=float(np.corrcoef(lw, lh)[0, 1]) if len(rows) > 1 else 0.0,
            w_range=(float(a[:, 2].min()), float(a[:, 2].max())),
        )
    return out


def sample_box(
    stats: BoxStats, rng: np.random.Generator, *, side: str | None = None
) -> tuple[float, float, float, float, str]:
    """One box drawn from a finding's statistics: (cx, cy, w, h) as fractions of the side, and the side.

    side: ``"left"``/``"right"`` (image halves) to force one, else drawn with ``p_left``.
    """
    if side is None:
        side = "left" if rng.random() < stats.p_left else "right"
    mean_x, std_x = stats.cx_left if side == "left" else stats.cx_right
    cx = rng.normal(mean_x, std_x)
    cy = rng.normal(*stats.cy)
    z1, z2 = rng.standard_normal(2)
    z2 = stats.corr * z1 + np.sqrt(max(1.0 - stats.corr**2, 0.0)) * z2
    w = float(np.exp(stats.log_w[0] + stats.log_w[1] * z1))
    h = float(np.exp(stats.log_h[0] + stats.log_h[1] * z2))
    return float(cx), float(cy), w, h, side
