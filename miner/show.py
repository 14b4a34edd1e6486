"""Pictures of mined boxes (as Cai et al.'s Fig. 2): the image, the fused heatmap, ground truth in red, boxes in green.

One panel per finding, side by side: the grey image (scaled so its longer side is ``panel_size``), the fused
heatmap H_f of that finding blended over it in OpenCV's JET colours when one is given, the ground-truth boxes
in red and the mined boxes in green labelled with their rank and score. A panel may instead hold the CLEAR
picture of the image (`miner.clear`: the dominant finding at each pixel as hue, its response as value) with a
legend of the findings' hues. Drawing is OpenCV only (BGR uint8).

The fused heatmap is not stored in the Parquet output (it is B x C x h x w floats per batch); `miner show`
recomputes it from the model when ``--model`` is given and draws boxes on the plain image otherwise.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

RED = (0, 0, 255)  # BGR
GREEN = (0, 200, 0)
WHITE = (255, 255, 255)


@dataclass
class Panel:
    """What one finding's panel shows. Boxes are (x, y, w, h) in original image pixels."""

    finding: str
    heat: np.ndarray | None = None  # H_f (np.ndarray[h, w]) over the whole image, any resolution
    gt: list[tuple[float, float, float, float]] = field(default_factory=list)
    mined: list[tuple[float, float, float, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # one per mined box, e.g. "1 0.83"
    note: str = ""
    #: the raw class maps of every class (np.ndarray[C, h, w]): the panel shows their CLEAR picture instead of
    #: the image (`miner.clear.clear_picture`); `clear_names` (one per class) adds a legend below it
    clear: np.ndarray | None = None
    clear_names: tuple[str, ...] = ()


def heatmap_overlay(image: np.ndarray, heat: np.ndarray | None, *, alpha: float = 0.45) -> np.ndarray:
    """Grey image (np.ndarray[H, W] float in [0, 1]) with `heat` blended in JET colours: np.ndarray[H, W, 3] uint8.

    The heat map is min-max normalised and resized to the image with bilinear interpolation (cv2.INTER_LINEAR,
    pixel centres aligned like ``align_corners=False``).
    """
    grey = np.clip(np.asarray(image, np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    canvas = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    if heat is None:
        return canvas
    h = np.asarray(heat, np.float32)
    span = float(h.max() - h.min())
    h = (h - h.min()) / span if span > 0 else np.zeros_like(h)
    h = cv2.resize(h, (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(h * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(colour, alpha, canvas, 1 - alpha, 0)


def draw_boxes(
    canvas: np.ndarray,
    boxes: Sequence[tuple[float, float, float, float]],
    colour: tuple[int, int, int],
    *,
    scale: float = 1.0,
    labels: Sequence[str] = (),
    thickness: int = 2,
) -> np.ndarray:
    """Draw x, y, w, h boxes (original pixels, times `scale`) on `canvas` in place; returns it."""
    for i, (x, y, w, h) in enumerate(boxes):
        p0 = (int(round(x * scale)), int(round(y * scale)))
        p1 = (int(round((x + w) * scale)) - 1, int(round((y + h) * scale)) - 1)
        cv2.rectangle(canvas, p0, p1, colour, thickness)
        if i < len(labels) and labels[i]:
            org = (p0[0] + 3, max(p0[1] - 4, 12))
            cv2.putText(canvas, labels[i], org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return canvas


def render(image: np.ndarray, panels: Sequence[Panel], *, panel_size: int = 512, title: str = "",
           header: bool = True) -> np.ndarray:
    """All panels side by side (np.ndarray[H', W', 3] uint8 BGR), each headed by its finding's name (`header`).

    A panel with `Panel.clear` shows the CLEAR picture of its maps at the panel's size (boxes drawn on it as
    on any panel), with a legend of the classes' hues below when `Panel.clear_names` is given; shorter panels
    are padded with black at the bottom so that all panels line up.
    """
    from miner.clear import clear_picture, legend

    height, width = image.shape[:2]
    scale = panel_size / max(height, width)
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    small = cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_AREA)
    head_height = 26
    tiles = []
    for panel in panels or [Panel(finding="(no boxes)")]:
        if panel.clear is not None:
            tile = clear_picture(panel.clear, size=(size[1], size[0]))
        else:
            tile = heatmap_overlay(small, panel.heat)
        draw_boxes(tile, panel.gt, RED, scale=scale)
        draw_boxes(tile, panel.mined, GREEN, scale=scale, labels=panel.labels)
        parts = [tile]
        if header:
            head = np.zeros((head_height, tile.shape[1], 3), np.uint8)
            text = panel.finding + (f"  ({panel.note})" if panel.note else "")
            cv2.putText(head, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
            parts.insert(0, head)
        if panel.clear is not None and panel.clear_names:
            parts.append(legend(panel.clear_names, width=tile.shape[1]))
        tiles.append(np.vstack(parts))
    tall = max(t.shape[0] for t in tiles)
    tiles = [np.vstack([t, np.zeros((tall - t.shape[0], t.shape[1], 3), np.uint8)]) if t.shape[0] < tall else t
             for t in tiles]
    gap = np.full((tall, 4, 3), 255, np.uint8)
    row = tiles[0]
    for tile in tiles[1:]:
        row = np.hstack([row, gap, tile])
    if title:
        top = np.zeros((head_height, row.shape[1], 3), np.uint8)
        cv2.putText(top, title, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, WHITE, 1, cv2.LINE_AA)
        row = np.vstack([top, row])
    return row
