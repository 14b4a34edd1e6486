"""Lesions of the phantom generator: one drawer per finding, each with its own look and size.

| finding | look | size (fraction of the side) |
|---|---|---|
| Nodule | small dense disc, sharp margin | 0.035-0.10 |
| Mass | larger lobulated opacity, denser centre | 0.10-0.30 |
| Pneumonia | large fuzzy consolidation with dark air bronchograms | 0.12-0.38 |
| Infiltration | patchy, mottled opacities scattered over a region | 0.10-0.32 |
| Atelectasis | elongated plate-like band, tilted | 0.10-0.30 long |
| Effusion | basal opacity filling the lung base, meniscus rising laterally | 0.10-0.32 high |
| Pneumothorax | lucent rim at apex and chest wall without lung texture, thin visceral pleural line | \
from the box statistics |
| Cardiomegaly | enlarged heart shadow (width >= 0.42 vs 0.30-0.35 normal) | from the box statistics |

Centres and sizes are drawn from the real NIH box statistics (`miner.phantoms.box_stats.NIH_BOX_STATS`),
clipped to the ranges above so that findings stay distinguishable, and lesions are kept inside the lung
fields. Each drawer adds its density to the chest and returns the lesion's pixel mask (the hard shape
before its edge blur); the ground-truth box is the mask's bounding box, so it covers the lesion by
construction. Several lesions of one finding in one image never overlap (their boxes keep a margin).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from miner.phantoms import anatomy
from miner.phantoms.anatomy import Chest, Heart
from miner.phantoms.box_stats import NIH_BOX_STATS, sample_box

#: findings the generator can draw
PHANTOM_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
)
#: peak density added by each finding (before `contrast`); negative = more lucent
AMPLITUDE = {"Nodule": 0.30, "Mass": 0.26, "Pneumonia": 0.22, "Infiltration": 0.17, "Atelectasis": 0.22,
             "Effusion": 0.34, "Pneumothorax": -0.13}


@dataclass
class Lesion:
    """One lesion: its finding and its pixel mask, stored as a window at (y0, x0)."""

    finding: str
    y0: int
    x0: int
    mask: np.ndarray  # bool [h, w]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x, y, w, h) in pixels: the mask's bounding box, pixel edges (covers [x, x + w) x [y, y + h))."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        return (float(self.x0 + cols[0]), float(self.y0 + rows[0]),
                float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))

    def paste(self, target: np.ndarray) -> None:
        """OR the mask into a full-size [S, S] bool array."""
        h, w = self.mask.shape
        target[self.y0:self.y0 + h, self.x0:self.x0 + w] |= self.mask


class Canvas:
    """A chest being drawn on, plus what the drawers share."""

    def __init__(self, chest: Chest, rng: np.random.Generator, *, contrast: float = 1.0) -> None:
        self.chest = chest
        self.rng = rng
        self.size = chest.size
        self.contrast = contrast
        self.lung_any = chest.lung[0] | chest.lung[1]
        self.taken: dict[str, list[tuple[float, float, float, float]]] = {}

    # -- helpers ---------------------------------------------------------------------------------------
    def window(self, cx: float, cy: float, rx: float, ry: float, margin: float):
        """Slices and local pixel-centre grids (xx, yy) of a box around (cx, cy) clipped to the image."""
        s = self.size
        x0, x1 = max(int(math.floor(cx - rx - margin)), 0), min(int(math.ceil(cx + rx + margin)) + 1, s)
        y0, y1 = max(int(math.floor(cy - ry - margin)), 0), min(int(math.ceil(cy + ry + margin)) + 1, s)
        if x1 <= x0 or y1 <= y0:
            return None
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        return slice(y0, y1), slice(x0, x1), xx + 0.5, yy + 0.5

    def stamp(self, ys: slice, xs: slice, field: np.ndarray, amplitude: float, sigma: float) -> None:
        if sigma > 0.3:
            field = cv2.GaussianBlur(field.astype(np.float32), (0, 0), sigma)
        self.chest.density[ys, xs] += np.float32(amplitude * self.contrast) * field

    def free(self, finding: str, box: tuple[float, float, float, float]) -> bool:
        """Whether a box keeps a margin from the earlier lesions of the same finding."""
        x, y, w, h = box
        margin = 0.02 * self.size
        for bx, by, bw, bh in self.taken.get(finding, []):
            if x < bx + bw + margin and bx < x + w + margin and y < by + bh + margin and by < y + h + margin:
                return False
        return True

    def place(self, finding: str, *, w_range: tuple[float, float], h_range: tuple[float, float] | None = None,
              aspect: tuple[float, float] | None = None, tries: int = 40):
        """Draw (cx, cy, rx, ry) in pixels from the finding's NIH statistics; centre in a lung, no overlap."""
        stats = NIH_BOX_STATS[finding]
        s = self.size
        for _ in range(tries):
            cx, cy, w, h, _side = sample_box(stats, self.rng)
            w = float(np.clip(w, *w_range))
            h = w * self.rng.uniform(*aspect) if aspect is not None else float(np.clip(h, *(h_range or w_range)))
            px, py = int(cx * s), int(cy * s)
            if not (0 <= px < s and 0 <= py < s) or not self.lung_any[py, px]:
                continue
            box = (cx * s - w * s / 2, cy * s - h * s / 2, w * s, h * s)
            if self.free(finding, box):
                return cx * s, cy * s, w * s / 2, h * s / 2
        return None

    def accept(self, finding: str, ys: slice, xs: slice, hard: np.ndarray, *, min_fill: float, shape_area: float):
        """A Lesion from a hard mask if enough of the intended shape lies in the lungs, else None."""
        area = int(hard.sum())
        if area == 0 or area < min_fill * shape_area:
            return None
        lesion = Lesion(finding, ys.start, xs.start, hard)
        if not self.free(finding, lesion.box):
            return None
        self.taken.setdefault(finding, []).append(lesion.box)
        return lesion


# ------------------------------------------------------------------------------------------------------
# drawers: (canvas) -> Lesion | None (None: no room found; the caller retries or gives up on that lesion)


def _ellipse_r(xx, yy, cx, cy, rx, ry, angle: float = 0.0) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)


def draw_nodule(c: Canvas) -> Lesion | None:
    spot = c.place("Nodule", w_range=(0.035, 0.10), aspect=(0.85, 1.15))
    if spot is None:
        return None
    cx, cy, rx, ry = spot
    sigma = max(0.5, 0.12 * rx)
    win = c.window(cx, cy, rx, ry, 3 * sigma + 1)
    if win is None:
        return None
    ys, xs, xx, yy = win
    hard = (_ellipse_r(xx, yy, cx, cy, rx, ry) <= 1.0) & c.lung_any[ys, xs]
    lesion = c.accept("Nodule", ys, xs, hard, min_fill=0.7, shape_area=math.pi * rx * ry)
    if lesion is not None:
        c.stamp(ys, xs, hard.astype(np.float32), AMPLITUDE["Nodule"], sigma)
    return lesion


def draw_mass(c: Canvas) -> Lesion | None:
    spot = c.place("Mass", w_range=(0.10, 0.30), aspect=(0.8, 1.25))
    if spot is None:
        return None
    cx, cy, rx, ry = spot
    sigma = max(0.6, 0.05 * rx)
    win = c.window(cx, cy, rx * 1.3, ry * 1.3, 3 * sigma + 1)
    if win is None:
        return None
    ys, xs, xx, yy = win
    r = _ellipse_r(xx, yy, cx, cy, rx, ry)
    theta = np.arctan2(yy - cy, xx - cx)
    boundary = np.ones_like(r)
    for k in range(2, 6):  # lobulation
        boundary += c.rng.uniform(0.0, 0.09) * np.cos(k * theta + c.rng.uniform(0, 2 * np.pi))
    hard = (r <= boundary) & c.lung_any[ys, xs]
    lesion = c.accept("Mass", ys, xs, hard, min_fill=0.6, shape_area=math.pi * rx * ry)
    if lesion is not None:
        profile = hard * (0.8 + 0.2 * np.clip(1.0 - r**2, 0, 1))
        c.stamp(ys, xs, profile.astype(np.float32), AMPLITUDE["Mass"], sigma)
    return lesion


def _smooth_field(c: Canvas, shape: tuple[int, int], cell: float) -> np.ndarray:
    h, w = shape
    small = c.rng.standard_normal((max(2, int(h / cell) + 2), max(2, int(w / cell) + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def draw_pneumonia(c: Canvas) -> Lesion | None:
    spot = c.place("Pneumonia", w_range=(0.12, 0.38), h_range=(0.12, 0.38))
    if spot is None:
        return None
    cx, cy, rx, ry = spot
    sigma = max(0.8, 0.15 * min(rx, ry))
    win = c.window(cx, cy, rx * 1.2, ry * 1.2, 3 * sigma + 1)
    if win is None:
        return None
    ys, xs, xx, yy = win
    r = _ellipse_r(xx, yy, cx, cy, rx, ry)
    r = r + 0.18 * _smooth_field(c, r.shape, max(2.0, min(rx, ry) / 2))
    hard = (r <= 1.0) & c.lung_any[ys, xs]
    lesion = c.accept("Pneumonia", ys, xs, hard, min_fill=0.5, shape_area=math.pi * rx * ry)
    if lesion is not None:
        profile = hard.astype(np.float32)
        width = max(0.7, c.size / 300)
        for _ in range(c.rng.integers(2, 5)):  # air bronchograms: dark branches through the consolidation
            phi = c.rng.uniform(0, np.pi)
            px, py = cx + c.rng.uniform(-0.4, 0.4) * rx, cy + c.rng.uniform(-0.4, 0.4) * ry
            d = np.abs((xx - px) * math.sin(phi) - (yy - py) * math.cos(phi))
            along = np.abs((xx - px) * math.cos(phi) + (yy - py) * math.sin(phi))
            profile *= 1.0 - 0.55 * np.exp(-((d / width) ** 2)) * (along < 0.6 * max(rx, ry))
        c.stamp(ys, xs, profile, AMPLITUDE["Pneumonia"], sigma)
    return lesion


def draw_infiltration(c: Canvas) -> Lesion | None:
    spot = c.place("Infiltration", w_range=(0.10, 0.32), h_range=(0.10, 0.32))
    if spot is None:
        return None
    cx, cy, rx, ry = spot
    sigma = max(0.6, c.size / 200)
    win = c.window(cx, cy, rx, ry, 3 * sigma + 1)
    if win is None:
        return None
    ys, xs, xx, yy = win
    region = (_ellipse_r(xx, yy, cx, cy, rx, ry) <= 1.0) & c.lung_any[ys, xs]
    noise = _smooth_field(c, region.shape, max(1.5, 0.035 * c.size))
    hard = (noise > 0.3) & region
    lesion = c.accept("Infiltration", ys, xs, hard, min_fill=0.15, shape_area=math.pi * rx * ry)
    if lesion is not None:
        mottled = hard * (0.7 + 0.3 * np.clip(noise, 0, 1.5) / 1.5)
        c.stamp(ys, xs, mottled.astype(np.float32), AMPLITUDE["Infiltration"], sigma)
    return lesion


def draw_atelectasis(c: Canvas) -> Lesion | None:
    spot = c.place("Atelectasis", w_range=(0.10, 0.30), aspect=(0.18, 0.32))
    if spot is None:
        return None
    cx, cy, half_length, half_thickness = spot
    angle = math.radians(c.rng.uniform(-25, 25))
    sigma = max(0.5, 0.15 * half_thickness)
    win = c.window(cx, cy, half_length, half_length, 3 * sigma + 1)
    if win is None:
        return None
    ys, xs, xx, yy = win
    hard = (_ellipse_r(xx, yy, cx, cy, half_length, half_thickness, angle) <= 1.0) & c.lung_any[ys, xs]
    lesion = c.accept("Atelectasis", ys, xs, hard, min_fill=0.6, shape_area=math.pi * half_length * half_thickness)
    if lesion is not None:
        c.stamp(ys, xs, hard.astype(np.float32), AMPLITUDE["Atelectasis"], sigma)
    return lesion


def _side_from_stats(c: Canvas, finding: str) -> int:
    return 0 if c.rng.random() < NIH_BOX_STATS[finding].p_left else 1


def _lung_window(c: Canvas, side: int):
    rows = np.flatnonzero(c.chest.lung[side].any(axis=1))
    cols = np.flatnonzero(c.chest.lung[side].any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def draw_effusion(c: Canvas) -> Lesion | None:
    used = {0 if bx + bw / 2 < c.size / 2 else 1 for bx, _, bw, _ in c.taken.get("Effusion", [])}
    sides = [s for s in (0, 1) if s not in used]  # at most one effusion per side
    if not sides:
        return None
    side = _side_from_stats(c, "Effusion")
    side = side if side in sides else sides[0]
    win = _lung_window(c, side)
    if win is None:
        return None
    ys, xs = win
    u, v = c.chest.u[ys, xs], c.chest.v[ys, xs]
    height = float(np.clip(sample_box(NIH_BOX_STATS["Effusion"], c.rng)[3], 0.10, 0.32))
    (_, cv), (a, b) = anatomy.LUNG_CENTRES[side], anatomy.LUNG_HALF[side]
    base = cv + b - 0.02  # the costophrenic angle's level (canonical)
    lateral = np.clip((np.abs(u - 0.5) - 0.08) / (2 * a - 0.05), 0, 1)
    top = base - height * (0.5 + 0.5 * lateral**2)  # meniscus: higher laterally
    hard = c.chest.lung[side][ys, xs] & (v >= top)
    lesion = c.accept("Effusion", ys, xs, hard, min_fill=0.0, shape_area=1.0)
    if lesion is not None:
        profile = hard * np.clip((v - top) / 0.03, 0.35, 1.0)  # graded at the meniscus, dense below
        c.stamp(ys, xs, profile.astype(np.float32), AMPLITUDE["Effusion"], max(0.6, c.size / 256))
    return lesion


def draw_pneumothorax(c: Canvas) -> Lesion | None:
    side = _side_from_stats(c, "Pneumothorax")
    if c.taken.get("Pneumothorax"):
        return None  # one per image
    win = _lung_window(c, side)
    if win is None:
        return None
    ys, xs = win
    u, v = c.chest.u[ys, xs], c.chest.v[ys, xs]
    stats = NIH_BOX_STATS["Pneumothorax"]
    _, cy, _, h, _ = sample_box(stats, c.rng)
    lowest = float(np.clip(cy + h / 2, 0.30, 0.60))  # how far down the chest wall the air reaches
    anchor = (0.5 + (0.07 if side else -0.07), 0.62)  # the lung collapses towards its hilum
    collapsed = anatomy.lung_shape(u, v, side, shrink=c.rng.uniform(0.16, 0.32), anchor=anchor) <= 1.0
    lung = c.chest.lung[side][ys, xs]
    hard = lung & ~collapsed & (v <= lowest)
    if hard.sum() < 0.002 * c.size**2:
        return None
    lesion = c.accept("Pneumothorax", ys, xs, hard, min_fill=0.0, shape_area=1.0)
    if lesion is None:
        return None
    sigma = max(0.6, c.size / 256)
    soft = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigma)
    c.chest.density[ys, xs] += np.float32(AMPLITUDE["Pneumothorax"] * c.contrast) * soft
    c.chest.texture[ys, xs] *= 1.0 - soft  # no lung markings beyond the pleural line
    edge = collapsed & ~cv2.erode(collapsed.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    line = edge & lung & (v <= lowest)
    c.stamp(ys, xs, line.astype(np.float32), 0.16, 0.5)
    return lesion


def enlarged_heart(rng: np.random.Generator) -> Heart:
    """Cardiomegaly: a heart shadow sized by the NIH Cardiomegaly boxes, width at least 0.42 of the image."""
    cx, cy, w, h, _ = sample_box(NIH_BOX_STATS["Cardiomegaly"], rng, side="right")
    return Heart(cx=float(np.clip(cx, 0.53, 0.62)), cy=float(np.clip(cy, 0.56, 0.64)),
                 w=float(np.clip(w, 0.42, 0.62)), h=float(np.clip(h, 0.30, 0.44)))


def heart_lesion(c: Canvas) -> Lesion:
    """The (already enlarged) heart shadow as the Cardiomegaly lesion."""
    mask = c.chest.heart_mask
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    lesion = Lesion("Cardiomegaly", ys.start, xs.start, mask[ys, xs].copy())
    c.taken.setdefault("Cardiomegaly", []).append(lesion.box)
    return lesion


DRAWERS: dict[str, Callable[[Canvas], Lesion | None]] = {
    "Atelectasis": draw_atelectasis,
    "Effusion": draw_effusion,
    "Infiltration": draw_infiltration,
    "Mass": draw_mass,
    "Nodule": draw_nodule,
    "Pneumonia": draw_pneumonia,
    "Pneumothorax": draw_pneumothorax,
}
