"""The report's plots, drawn with matplotlib (Agg, the object API: no pyplot state) to PNG files.

- `finding_plot`: one finding's score histogram, boxes per image and box size distribution (width and height
  as fractions of the image, mined boxes as a 2-D histogram, ground-truth boxes as red points), and where the
  archive has ground truth its Acc against T(IoU).
- `accuracy_plot`: Acc against T(IoU) for one or more findings (Wang et al.'s AFP bounds: solid; every box of
  B: dashed).
- `overview_plot`: images with boxes and boxes per finding.

Every input is a plain array, so a plot of a 100,000-image job costs what its histogram costs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

GT_COLOUR = "#d62728"
MINED_COLOUR = "#2ca02c"
#: ground-truth points drawn at most in the size plot (a random subset beyond; the histogram holds all boxes)
MAX_GT_POINTS = 2000


def label(text: str) -> str:
    """Archive text (a finding's name) as a plot shows it: control and bidirectional characters escaped
    (`miner.io.visible`), ``$`` escaped so that matplotlib draws it instead of parsing math."""
    from miner.io import visible

    return visible(str(text)).replace("$", r"\$")


def _figure(width: float, height: float, **margins: float) -> Any:
    """A figure with fixed margins (fractions of the figure; `Figure.subplots_adjust`): a layout engine would
    cost more than the drawing itself (matplotlib's constrained layout took 60 % of a plot's time)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.subplots_adjust(**{"left": 0.07, "right": 0.97, "bottom": 0.15, "top": 0.9, **margins})
    return figure


def _save(figure: Any, path: Path, dpi: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png", metadata={"Software": None})
    return path


def finding_plot(
    path: str | Path,
    *,
    finding: str,
    scores: np.ndarray,
    per_image: Mapping[int, int],
    sizes: np.ndarray,
    gt_sizes: np.ndarray | None = None,
    accuracy: tuple[Sequence[float], Sequence[float], Sequence[float]] | None = None,
    dpi: int = 80,
) -> Path:
    """Three panels of one finding (four with `accuracy`), written as PNG to `path`.

    Args:
        scores: np.ndarray[N] the boxes' `score` column (the mean heat in the box, in [0, 1]).
        per_image: boxes of the finding per image -> number of images (0 = images mined for the finding
            that got no box, where known).
        sizes: np.ndarray[N, 2] width and height of each box as fractions of its image's width and height.
        gt_sizes: np.ndarray[M, 2] the same for the ground-truth boxes (None: no ground truth).
        accuracy: (levels, Acc with Wang et al.'s AFP bounds, Acc with every box of B) at T(IoU) levels.
    """
    width = 16 if accuracy is not None else 12
    figure = _figure(width, 3.2, left=0.6 / width, right=1 - 0.2 / width, bottom=0.16, top=0.9, wspace=0.33)
    axes = figure.subplots(1, 4 if accuracy is not None else 3)
    left, middle, right = axes[:3]
    left.hist(np.asarray(scores, np.float64), bins=40, range=(0.0, 1.0), color=MINED_COLOUR)
    left.set(title=f"{label(finding)}: box scores ({len(scores):,} boxes)",
             xlabel="score (mean fused heatmap in the box)", ylabel="boxes", xlim=(0, 1))
    counts = sorted(per_image.items())
    middle.bar([str(k) for k, _ in counts], [v for _, v in counts], color=MINED_COLOUR)
    middle.set(title="boxes per image", xlabel="boxes of this finding", ylabel="images")
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    if len(sizes):
        _, _, _, image = right.hist2d(sizes[:, 0], sizes[:, 1], bins=25, range=[[0, 1], [0, 1]], cmin=1,
                                      cmap="Greens")
        figure.colorbar(image, ax=right, label="mined boxes")
    if gt_sizes is not None and len(gt_sizes):
        points = np.asarray(gt_sizes, np.float64).reshape(-1, 2)
        if len(points) > MAX_GT_POINTS:
            points = points[np.random.default_rng(0).choice(len(points), MAX_GT_POINTS, replace=False)]
        right.scatter(points[:, 0], points[:, 1], s=6, c=GT_COLOUR, label=f"ground truth ({len(gt_sizes)})")
        right.legend(loc="upper left", fontsize="small")
    right.set(title="box size", xlabel="width / image width", ylabel="height / image height", xlim=(0, 1),
              ylim=(0, 1), aspect="equal")
    if accuracy is not None:
        levels, bounded, every = accuracy
        last = axes[3]
        last.plot(levels, bounded, marker="o", color="#1f77b4", label="Wang et al.'s AFP bounds")
        last.plot(levels, every, linestyle="--", marker=".", color="#1f77b4", alpha=0.7, label="every box of B")
        last.set(title="Acc vs T(IoU)", xlabel="T(IoU)", ylabel="Acc", ylim=(-0.02, 1.02))
        last.grid(alpha=0.3)
        last.legend(fontsize="small")
    return _save(figure, Path(path), dpi)


def accuracy_plot(
    path: str | Path,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
    *,
    colours: Mapping[str, str] | None = None,
    title: str = "",
    dpi: int = 80,
) -> Path:
    """Acc against T(IoU), one colour per finding, written as PNG to `path`.

    Args:
        curves: finding -> (levels, Acc with Wang et al.'s bounds, Acc with every box of B); NaN = no value.
        colours: finding -> matplotlib colour (default: the tab10 cycle).
    """
    from matplotlib import colormaps

    figure = _figure(8.4, 3.6, left=0.08, right=0.74, bottom=0.14, top=0.9)
    axes = figure.subplots()
    cycle = colormaps["tab10"].colors
    for i, (finding, (levels, bounded, every)) in enumerate(curves.items()):
        colour = (colours or {}).get(finding, cycle[i % len(cycle)])
        axes.plot(levels, bounded, marker="o", color=colour, label=label(finding))
        axes.plot(levels, every, linestyle="--", color=colour, alpha=0.7)
    axes.set(xlabel="T(IoU)", ylabel="Acc", ylim=(-0.02, 1.02),
             title=title or "Acc vs T(IoU): Wang et al.'s AFP bounds (solid), every box of B (dashed)")
    axes.title.set_fontsize("medium")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                    ncols=2 if len(curves) > 8 else 1)
    return _save(figure, Path(path), dpi)


def overview_plot(path: str | Path, findings: Sequence[str], images: Sequence[int], boxes: Sequence[int], *,
                  dpi: int = 80) -> Path:
    """Images with boxes and boxes, per finding (bars), written as PNG to `path`."""
    width = max(6.4, 0.6 * len(findings) + 2)
    figure = _figure(width, 3.4, left=0.7 / width, right=1 - 0.2 / width, bottom=0.3, top=0.9)
    axes = figure.subplots()
    x = np.arange(len(findings))
    axes.bar(x - 0.2, images, width=0.4, label="images with boxes", color="#1f77b4")
    axes.bar(x + 0.2, boxes, width=0.4, label="boxes", color=MINED_COLOUR)
    axes.set_xticks(x, [label(f) for f in findings], rotation=30, ha="right")
    axes.set(title="images with boxes and boxes per finding", ylabel="count")
    axes.legend(fontsize="small")
    return _save(figure, Path(path), dpi)
