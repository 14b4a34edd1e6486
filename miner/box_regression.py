"""Boxes regressed from a mining step's map at several levels (``BoxConfig.regressors``, `miner calibrate`).

The ``steps`` rule (`miner.step_boxes`) cuts each step's peak at one level and boxes the component: the box has
the hot region's extent, which for a small lesion is a cell or two off and for a large one only its core. How the
region grows as the level falls says more: a compact lesion's box hardly changes from 0.9 to 0.4 of the peak, a
large faint one's keeps growing, a ring left around an erased core is lopsided towards it. Here each mining step
t of a selected (image, finding) pair becomes one candidate, described by (`features`, ``FEATURE_NAMES``):

- the boxes of the component of H_t >= level x peak at the peak, at each of ``FEATURE_LEVELS``, relative to the
  reference box at ``REFERENCE_LEVEL`` (log width and height ratios, centre offsets in reference widths/heights),
  and the mean H_1 inside each region (H_1 min-max normalised: the common scale of every step);
- the reference box's size and centre relative to the working image, and the peak's offset from its centre;
- which step found it (t = 1, 2, >= 3), H_1 at the peak (how strong the step's peak was before any erasure) and
  whether the peak's map cell touches a cell an earlier step erased (a ring around an erased core);
- what the image shows there: the mean of the model's input image (standardised over the whole image) inside each
  level's box, and its contrast with the ring around the box (the box grown by half its width and height on each
  side). A lesion is an opacity or a lucency against its surroundings; the regression learns, per finding, which
  boxes that contrast favours (the image is read, never changed).

Per finding, two linear maps of the standardised features (ridge regressions fitted on validation images with
boxes, `fit_regressor`; a few hundred numbers per finding, kept in the checkpoint's settings record) give

- the box: (log w/w_ref, log h/h_ref, dx/w_ref, dy/h_ref) of the lesion relative to the reference box, and
- the quality: the IoU the regressed box is expected to reach with its lesion, the box's score (without a refinement).

The candidates of a pair are ranked by quality; one whose IoU with a better one exceeds ``BoxConfig.dedup_iou``
or that holds or lies inside one (intersection over the smaller box's area >= ``NESTED_SHARE``) joins that one's
lesion (and so does a fused box that then overlaps or nests with a better one), so a lesion gets one box however
many steps found it: the mean of its candidates' boxes weighted by their expected IoU (weighted box fusion), scored
by its best candidate's expected IoU (clipped to [0, 1] once ranked); up to ``max_boxes`` remain. The regressed
boxes replace the rule's boxes, shapes and cell alignment for the findings that have a regressor (those absorb the
same systematic offsets); other findings keep them (and where every selected pair has one, the rule's boxes are
not computed at all). The score is the predicted IoU, comparable across images: a tight box ranks above a loose
one.

Where the finding's regressor carries a **refinement** (``refine``, fitted by `miner calibrate` unless
``--no-refine``), each lesion's box is then moved to where the image and the map say it fits best, and scored:

- **the move**: of the 81 moves of the box (width and height x 0.8, 1 or 1.25, centre +-0.15 of its width and
  height; the box itself first, so ties keep it), the one a linear choice rates highest. It reads each moved box
  (``REFINE_NAMES``): how it moved; the standardised image's mean and spread inside, its contrast with rings a
  quarter and a half of the box wide, the gradient on a band across its border and that against the gradient
  inside; the first map H_1's mean inside, its contrast with the two rings and the share of its mass inside; and
  products of the move with the image and the map. It is fitted as a ridge regression of the IoU a move reaches
  on these features, both less their mean over the box's moves (a fixed effect per box): it learns which move of
  a box is better, and nothing about which boxes are good, which is the score's task.
- **the score**: a ridge regression, over every validation box of a pair with ground truth, of the IoU its chosen
  move reaches on ``SCORE_NAMES``: the first stage's expected IoU, how far the chosen move stands above the box's
  other moves, the image at the chosen box, and whether it is its pair's first lesion. The score ranks boxes across
  images; boxes that come to overlap or nest with a better one are dropped.

The image is read through summed-area tables at half the input's resolution (`image_tables`), for the candidates'
features too; the map through a summed-area table of H_1 upsampled to the same pixels (`map_tables`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from miner.errors import UsageError

#: levels (fractions of a step's own peak) whose components describe a candidate
FEATURE_LEVELS: tuple[float, ...] = (0.4, 0.6, 0.8, 0.9)
#: the level of the reference box that the regression moves and scales
REFERENCE_LEVEL = 0.8
#: the feature layout's name, recorded with every regressor: a record of another layout is refused
FEATURES_ID = "steps-levels-image/2"
#: a box that holds or lies inside a better one by this share of the smaller box's area is the same lesion
NESTED_SHARE = 0.9
#: the smallest weight a candidate's expected IoU gives its box in its lesion's fused box
FUSION_FLOOR = 1e-3
#: largest |log scale| a regression may apply (e^3 = 20x): a bound against a wild extrapolation
MAX_LOG_SCALE = 3.0


def _names() -> tuple[str, ...]:
    out = []
    for lv in FEATURE_LEVELS:
        out += [f"log_w@{lv:g}", f"log_h@{lv:g}", f"dx@{lv:g}", f"dy@{lv:g}"]
    out += ["log_w_ref", "log_h_ref", "cx_ref", "cy_ref", "peak_dx", "peak_dy", "step1", "step2", "step3+",
            "peak_h1", "touches_erased"]
    out += [f"heat@{lv:g}" for lv in FEATURE_LEVELS]
    for lv in FEATURE_LEVELS:
        out += [f"inside@{lv:g}", f"contrast@{lv:g}"]
    return tuple(out)


FEATURE_NAMES: tuple[str, ...] = _names()

#: the local refinement's moves of a box: width and height x 0.8, 1, 1.25, centre +-0.15 of the width / height
#: (81 boxes, the box itself first: ties keep it)
REFINE_SCALES: tuple[float, ...] = (1.0, 0.8, 1.25)
REFINE_SHIFTS: tuple[float, ...] = (0.0, -0.15, 0.15)
#: the refinement's feature layout (recorded with it)
REFINE_ID = "box-image-map/3"
_GEO = ("log_sw", "log_sh", "dx", "dy")
#: what the refinement reads of a moved box: how it moved, the image there (mean, spread, contrast with two rings,
#: the gradient across its border), the mining's first map there (its mean, contrast with two rings, share of the
#: map's mass), and products of the move with the image and the map
REFINE_NAMES: tuple[str, ...] = (
    *_GEO, "inside", "inside_sd", "contrast@0.25", "contrast@0.5", "edge", "edge-inside",
    *(f"{g}^2" for g in _GEO), *(f"{g}*inside" for g in _GEO), *(f"{g}*contrast" for g in _GEO),
    "map_inside", "map_contrast@0.25", "map_contrast@0.5", "map_share",
    *(f"{g}*map_inside" for g in _GEO), *(f"{g}*map_contrast" for g in _GEO))
#: what the refined box's score reads: the first stage's expected IoU of the lesion, how far the chosen move stands
#: above the box's other moves, the image at the chosen box, and whether it is the pair's first lesion
SCORE_NAMES: tuple[str, ...] = ("quality", "choice", "inside", "inside_sd", "contrast@0.25", "contrast@0.5", "edge",
                                "edge-inside", "first")
#: ridge penalties of the move choice (on the features less their mean over a box's moves) and of the score
REFINE_RIDGE = 3.0
SCORE_RIDGE = 10.0


@dataclass(frozen=True)
class Candidates:
    """Every mining step's candidate for N pairs, T steps, in working pixels (x1/y1 exclusive).

    ref: Tensor[N, T, 4] the reference boxes; live: Tensor[N, T] bool (the step had a peak);
    features: Tensor[N, T, F] float64 (``FEATURE_NAMES``)."""

    ref: Tensor
    live: Tensor
    features: Tensor


@dataclass(frozen=True)
class Refinement:
    """One finding's refinement (`refine_boxes`, `fit_refinement`): the move choice, weights ``choose`` over the
    features ``REFINE_NAMES`` divided by ``scale`` (only differences between a box's moves count: no mean, no
    intercept), and the refined box's score, a ridge regression (``score``, Tensor[S + 1], the intercept last) over
    the standardised ``SCORE_NAMES``."""

    scale: Tensor
    choose: Tensor
    score_mean: Tensor
    score_scale: Tensor
    score: Tensor


#: a refinement record's numbers, in order
REFINE_FIELDS: tuple[str, ...] = ("scale", "choose", "score_mean", "score_scale", "score")


@dataclass(frozen=True)
class Regressor:
    """One finding's regressions over the standardised features z = (x - mean) / scale (`module docstring`).

    box: Tensor[F + 1, 4] (the last row: intercepts) -> (log w/w_ref, log h/h_ref, dx/w_ref, dy/h_ref);
    quality: Tensor[F + 1] -> the expected IoU of the regressed box with its lesion."""

    mean: Tensor
    scale: Tensor
    box: Tensor
    quality: Tensor
    #: the local refinement (`refine_boxes`); None: off
    refine: Refinement | None = None

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"features": FEATURES_ID, "mean": [float(v) for v in self.mean],
                               "scale": [float(v) for v in self.scale],
                               "box": [[float(v) for v in row] for row in self.box],
                               "quality": [float(v) for v in self.quality]}
        if self.refine is not None:
            out["refine"] = {"features": REFINE_ID, **{k: [float(v) for v in getattr(self.refine, k)]
                                                       for k in REFINE_FIELDS}}
        return out

    @classmethod
    def from_record(cls, finding: str, value: Any) -> Regressor:
        """A regressor from its record; a malformed one is a `UsageError` naming the finding."""
        n = len(FEATURE_NAMES)

        def bad(why: str) -> UsageError:
            return UsageError(f"boxes regressors: the entry of {finding!r} {why} (write it again with "
                              "`miner calibrate`, or mine with --plain-boxes)")

        if not isinstance(value, Mapping):
            raise bad(f"is a {type(value).__name__}, not an object")
        if value.get("features") != FEATURES_ID:
            raise bad(f"has the feature layout {value.get('features')!r}; this miner reads {FEATURES_ID!r}")
        try:
            mean = torch.tensor(value["mean"], dtype=torch.float64)
            scale = torch.tensor(value["scale"], dtype=torch.float64)
            box = torch.tensor(value["box"], dtype=torch.float64)
            quality = torch.tensor(value["quality"], dtype=torch.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise bad(f"is incomplete or not numbers ({err})") from None
        if mean.shape != (n,) or scale.shape != (n,) or box.shape != (n + 1, 4) or quality.shape != (n + 1,):
            raise bad(f"has shapes mean {tuple(mean.shape)}, scale {tuple(scale.shape)}, box {tuple(box.shape)}, "
                      f"quality {tuple(quality.shape)}; expected ({n},), ({n},), ({n + 1}, 4), ({n + 1},)")
        if not all(bool(torch.isfinite(t).all()) for t in (mean, scale, box, quality)) or bool((scale <= 0).any()):
            raise bad("holds a non-finite number or a scale <= 0")
        refine = value.get("refine")
        if refine is None:
            return cls(mean, scale, box, quality)
        if not isinstance(refine, Mapping) or refine.get("features") != REFINE_ID:
            raise bad(f"has a refinement that is not an object of the layout {REFINE_ID!r}")
        try:
            parts = {k: torch.tensor(refine[k], dtype=torch.float64) for k in REFINE_FIELDS}
        except (KeyError, TypeError, ValueError) as err:
            raise bad(f"has a refinement that is incomplete or not numbers ({err})") from None
        r, q = len(REFINE_NAMES), len(SCORE_NAMES)
        want = {"scale": (r,), "choose": (r,), "score_mean": (q,), "score_scale": (q,), "score": (q + 1,)}
        if any(tuple(parts[k].shape) != shape for k, shape in want.items()):
            raise bad(f"has refinement shapes {[tuple(parts[k].shape) for k in REFINE_FIELDS]}; expected "
                      f"{list(want.values())}")
        if (not all(bool(torch.isfinite(t).all()) for t in parts.values())
                or bool((parts["scale"] <= 0).any()) or bool((parts["score_scale"] <= 0).any())):
            raise bad("has a refinement with a non-finite number or a scale <= 0")
        return cls(mean, scale, box, quality, Refinement(**parts))


#: the last record `read_regressors` parsed, and what it gave (every batch of a job reads the same record)
_last_read: tuple[Any, dict[str, Regressor]] | None = None


def read_regressors(value: Any) -> dict[str, Regressor]:
    """``BoxConfig.regressors`` (finding -> record) as `Regressor`s; None or {} -> {}. The same record object read
    again (a model's settings for every batch) is not parsed again."""
    global _last_read
    if not value:
        return {}
    if _last_read is not None and _last_read[0] is value:
        return _last_read[1]
    if not isinstance(value, Mapping):
        raise UsageError(f"boxes regressors must be an object of finding -> regressor, got a {type(value).__name__}")
    parsed = {str(f): Regressor.from_record(str(f), v) for f, v in value.items()}
    _last_read = (value, parsed)
    return parsed


# ------------------------------------------------------------------------------------------------ candidates


def _bbox(region: Tensor) -> Tensor:
    """Bounding boxes (Tensor[M, 4] float x0, y0, x1, y1, exclusive ends) of masks Tensor[M, H, W] (0s if empty)."""
    from miner.step_boxes import _bbox as bounds

    has, x0, y0, x1, y1 = bounds(region)
    box = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(has.unsqueeze(1), box, torch.zeros_like(box))


def _box_means(table: Tensor, which: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """(sum, area) of each box (Tensor[N, K, 4] x0, y0, x1, y1 in the table's pixels, clipped, at least one pixel)
    of image `which` (Tensor[N]) of the summed-area tables (Tensor[B, H + 1, W + 1])."""
    _, h1, w1 = table.shape
    x0 = boxes[..., 0].floor().clamp(0, w1 - 2).long()
    y0 = boxes[..., 1].floor().clamp(0, h1 - 2).long()
    x1 = torch.maximum(boxes[..., 2].ceil().clamp(max=w1 - 1).long(), x0 + 1)
    y1 = torch.maximum(boxes[..., 3].ceil().clamp(max=h1 - 1).long(), y0 + 1)
    flat = table.reshape(-1)
    base = (which.long() * (h1 * w1)).view(-1, *([1] * (boxes.dim() - 2)))

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return flat[base + yy * w1 + xx]

    total = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    return total, ((x1 - x0) * (y1 - y0)).double()


def _ring_mean(table: Tensor, which: Tensor, outer: Tensor, inner_sum: Tensor, inner_area: Tensor) -> Tensor:
    """The mean of a summed-area table's image between boxes `outer` and the inner boxes whose (sum, area)
    `_box_means` gave."""
    outer_sum, outer_area = _box_means(table, which, outer)
    return (outer_sum - inner_sum) / (outer_area - inner_area).clamp_min(1.0)


def image_features(table: Tensor, which: Tensor, boxes: Tensor, work: tuple[int, int]) -> Tensor:
    """(inside, contrast) per box (Tensor[N, K, 2]) of the boxes (Tensor[N, K, 4], working pixels) on image
    `which` (Tensor[N]) of the model's input, as summed-area tables `table` (`image_tables`: Tensor[B, H + 1, W + 1]):
    the standardised image's mean inside the box, and that minus its mean in the ring around the box (grown by half
    its size on each side)."""
    hw, ww = work
    scale = torch.tensor([(table.shape[-1] - 1) / ww, (table.shape[-2] - 1) / hw] * 2, dtype=torch.float64,
                         device=boxes.device)
    box = boxes.double() * scale
    inner, inner_area = _box_means(table, which, box)
    half = torch.stack([(box[..., 2] - box[..., 0]) / 2, (box[..., 3] - box[..., 1]) / 2] * 2, -1)
    outer = box + half * torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64, device=box.device)
    inside = inner / inner_area
    return torch.stack([inside, inside - _ring_mean(table, which, outer, inner, inner_area)], -1)


def image_tables(images: Tensor, used: Tensor | None = None, *,
                 gradient: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Summed-area tables (each Tensor[B, H' + 1, W' + 1] float64) of the standardised images z (channels
    averaged), of z^2, and of z's gradient magnitude (3 x 3 Sobel, edges reflected), at half the input's
    resolution where its sides are 128 px or more (2 x 2 means: a quarter of the work; boxes are read through the
    tables' own size); only for the images `used` (Tensor of indices; None: all), the others' tables are 0."""
    b = images.shape[0]
    rows = torch.arange(b, device=images.device) if used is None else used.to(images.device)
    x = images[rows].float().mean(dim=1)
    if min(x.shape[-2:]) >= 128:
        x = F.avg_pool2d(x.unsqueeze(1), 2, ceil_mode=True)[:, 0]
    hh, ww = x.shape[-2:]
    std, mean = torch.std_mean(x, dim=(-2, -1), keepdim=True)
    z = (x - mean) / std.clamp_min(1e-6)

    def table(t: Tensor) -> Tensor:  # summed in float32 (a box's mean is off by < 1e-3 of z's spread), kept as float64
        out = torch.zeros(b, hh + 1, ww + 1, dtype=torch.float64, device=images.device)
        out[rows] = F.pad(t.cumsum(-2).cumsum(-1), (1, 0, 1, 0)).double()
        return out

    if not gradient:  # z alone (the candidates' image features)
        return table(z), None, None
    p = F.pad(z.unsqueeze(1), (1, 1, 1, 1), mode="reflect")[:, 0]
    gx = (p[:, :-2, 2:] - p[:, :-2, :-2]) + 2 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) + (p[:, 2:, 2:] - p[:, 2:, :-2])
    gy = (p[:, 2:, :-2] - p[:, :-2, :-2]) + 2 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) + (p[:, 2:, 2:] - p[:, :-2, 2:])
    grad = torch.sqrt(gx * gx + gy * gy)
    return table(z), table(z * z), table(grad)


def _grown(boxes: Tensor, k: float) -> Tensor:
    """Boxes (Tensor[..., 4]) grown by k x their width and height on each side (shrunk where k < 0)."""
    w = (boxes[..., 2] - boxes[..., 0]).clamp_min(1.0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp_min(1.0)
    return boxes + torch.stack([-k * w, -k * h, k * w, k * h], -1)


def map_tables(step_maps: Tensor, pairs: Tensor, size: tuple[int, int]) -> Tensor:
    """Summed-area tables (Tensor[N, H + 1, W + 1] float64) of each pair's first map H_1, upsampled (bilinear) to
    `size` (H, W: the image tables' pixels) and min-max normalised, row i for pair i."""
    h1 = step_maps[0, pairs[:, 0], pairs[:, 1]].float()
    up = F.interpolate(h1.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(-2, -1), keepdim=True)
    m = (up - lo) / (up.amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-12)
    return F.pad(m.cumsum(-2).cumsum(-1), (1, 0, 1, 0)).double()


def refine_features(tables: tuple[Tensor, Tensor, Tensor], which: Tensor, maps: Tensor, rows: Tensor, boxes: Tensor,
                    origin: Tensor) -> Tensor:
    """``REFINE_NAMES`` of boxes (Tensor[N, ..., 4], the tables' pixels) on image `which` (Tensor[N]) and pair
    `rows` (Tensor[N], rows of `maps`, `map_tables`) that moved from `origin` (broadcast to `boxes`): how they moved;
    the image's mean and spread inside, its contrast with two rings around them (grown by a quarter and a half of
    the box a side), the gradient on a band across their border (+-0.15 of the box) and that minus the gradient
    inside; the first map's mean inside, its contrast with the two rings and the share of its mass inside; and the
    move's products with the image and the map."""
    zt, sqt, gt = tables
    w = (boxes[..., 2] - boxes[..., 0]).clamp_min(1.0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp_min(1.0)
    w0 = (origin[..., 2] - origin[..., 0]).clamp_min(1.0)
    h0 = (origin[..., 3] - origin[..., 1]).clamp_min(1.0)
    geo = torch.stack([torch.log(w / w0), torch.log(h / h0),
                       ((boxes[..., 0] + boxes[..., 2]) - (origin[..., 0] + origin[..., 2])) / 2 / w0,
                       ((boxes[..., 1] + boxes[..., 3]) - (origin[..., 1] + origin[..., 3])) / 2 / h0], -1)
    z_in, area = _box_means(zt, which, boxes)
    inside = z_in / area
    spread = torch.sqrt((_box_means(sqt, which, boxes)[0] / area - inside * inside).clamp_min(0.0))
    contrast = [inside - _ring_mean(zt, which, _grown(boxes, k), z_in, area) for k in (0.25, 0.5)]
    band = _ring_mean(gt, which, _grown(boxes, 0.15), *_box_means(gt, which, _grown(boxes, -0.15)))
    g_in = _box_means(gt, which, boxes)[0] / area
    m_sum, m_area = _box_means(maps, rows, boxes)
    m_in = m_sum / m_area
    m_contrast = [m_in - _ring_mean(maps, rows, _grown(boxes, k), m_sum, m_area) for k in (0.25, 0.5)]
    m_total = maps[rows.long(), -1, -1].view(-1, *([1] * (boxes.dim() - 2)))
    base = torch.stack([inside, spread, contrast[0], contrast[1], band, band - g_in], -1)
    seen = torch.stack([m_in, m_contrast[0], m_contrast[1], m_sum / m_total.clamp_min(1e-12)], -1)
    return torch.cat([geo, base, geo * geo, geo * inside.unsqueeze(-1), geo * contrast[0].unsqueeze(-1), seen,
                      geo * m_in.unsqueeze(-1), geo * m_contrast[0].unsqueeze(-1)], -1)


def refine_moves(boxes: Tensor) -> Tensor:
    """Every move of the refinement applied to boxes (Tensor[..., 4]): Tensor[..., 81, 4], the box itself first."""
    moves = torch.tensor([(sx, sy, dx, dy) for sx in REFINE_SCALES for sy in REFINE_SCALES for dx in REFINE_SHIFTS
                          for dy in REFINE_SHIFTS], dtype=boxes.dtype, device=boxes.device)
    b = boxes.unsqueeze(-2)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    cx = (b[..., 0] + b[..., 2]) / 2 + moves[:, 2] * w
    cy = (b[..., 1] + b[..., 3]) / 2 + moves[:, 3] * h
    return torch.stack([cx - moves[:, 0] * w / 2, cy - moves[:, 1] * h / 2, cx + moves[:, 0] * w / 2,
                        cy + moves[:, 1] * h / 2], -1)


def choose_moves(refine: Refinement, features: Tensor) -> tuple[Tensor, Tensor]:
    """The chosen move of each box from its moves' features (Tensor[..., 81, R]): (index Tensor[...], its choice
    value above the mean of the box's moves Tensor[...]). Ties keep the first: the box itself."""
    value = (features / refine.scale.to(features.device)) @ refine.choose.to(features.device)
    best = value.argmax(-1)
    return best, value.gather(-1, best.unsqueeze(-1)).squeeze(-1) - value.mean(-1)


def score_features(quality: Tensor, choice: Tensor, chosen: Tensor, first: Tensor) -> Tensor:
    """``SCORE_NAMES`` (Tensor[..., S]) of refined boxes: the lesion's first-stage expected IoU, the chosen move's
    choice value (`choose_moves`), the chosen box's features (Tensor[..., R]) and whether it is the pair's first."""
    image = chosen[..., REFINE_NAMES.index("inside"):REFINE_NAMES.index("edge-inside") + 1]
    return torch.cat([quality.unsqueeze(-1), choice.unsqueeze(-1), image, first.double().unsqueeze(-1)], -1)


def refine_boxes(refine: Refinement, tables: tuple[Tensor, Tensor, Tensor], which: Tensor, maps: Tensor,
                 rows: Tensor, boxes: Tensor, quality: Tensor) -> tuple[Tensor, Tensor]:
    """The chosen move of each box (Tensor[N, K, 4], the tables' pixels, on image `which` and map row `rows`, each
    Tensor[N]; K lesions best first by their first-stage `quality` Tensor[N, K]) and its score (module docstring):
    (boxes Tensor[N, K, 4], scores Tensor[N, K])."""
    moved = refine_moves(boxes.double())  # [N, K, 81, 4]
    f = refine_features(tables, which, maps, rows, moved, boxes.double().unsqueeze(-2))
    best, choice = choose_moves(refine, f)
    pick = moved.gather(-2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    chosen = f.gather(-2, best[..., None, None].expand(*best.shape, 1, f.shape[-1])).squeeze(-2)
    first = torch.zeros_like(quality, dtype=torch.bool)
    first[:, 0] = True
    z = (score_features(quality.double(), choice, chosen, first) - refine.score_mean.to(f.device)) \
        / refine.score_scale.to(f.device)
    score = torch.cat([z, torch.ones_like(z[..., :1])], -1) @ refine.score.to(f.device)
    return pick, score


def candidates(step_maps: Tensor, masks: Tensor, pairs: Tensor, work: tuple[int, int],
               images: Tensor, table: Tensor | None = None) -> Candidates:
    """Each mining step's candidate for the `pairs` (module docstring), from `miner.mining.MiningResult`'s
    step maps H_1..H_T (Tensor[T, B, C, h, w]) and masks M_1..M_T, at working size `work` (H, W), and the model's
    input `images` (Tensor[B, C, H_in, W_in]) the maps were computed from."""
    from miner.kernels import erase_components

    if images is None or images.dim() != 4 or images.shape[0] != step_maps.shape[1]:
        raise UsageError("box regressors read the model's input images beside the maps: pass the batch's images "
                         f"(Tensor[B, C, H, W] with B = {step_maps.shape[1]})")

    steps = step_maps.shape[0]
    n = int(pairs.shape[0])
    hw, ww = work
    b_idx, c_idx = pairs[:, 0], pairs[:, 1]
    levels = torch.tensor(FEATURE_LEVELS, dtype=torch.float32, device=step_maps.device)
    nl = len(FEATURE_LEVELS)
    ref_at = FEATURE_LEVELS.index(REFERENCE_LEVEL)

    def up(x: Tensor) -> Tensor:
        x = x.float()
        if tuple(x.shape[-2:]) == (hw, ww):
            return x
        return F.interpolate(x.unsqueeze(1), size=(hw, ww), mode="bilinear", align_corners=False).squeeze(1)

    first = up(step_maps[0, b_idx, c_idx])
    if table is None:  # the summed-area table of the images that have a pair, once for every step
        table = image_tables(images.to(step_maps.device), torch.unique(b_idx), gradient=False)[0]
    refs, lives, feats = [], [], []
    for t in range(steps):
        ht = first if t == 0 else up(step_maps[t, b_idx, c_idx])
        if t > 0:
            cells = masks[t - 1, b_idx, c_idx]
            kept = F.interpolate(cells.float().unsqueeze(1), size=(hw, ww), mode="nearest").squeeze(1) > 0
            ht = ht * kept
            # map cells with an erased cell among their 8 neighbours (or erased themselves)
            near = F.max_pool2d((~cells).float().unsqueeze(1), 3, 1, 1).squeeze(1) > 0
        peak = ht.amax(dim=(-2, -1))
        live = peak > 0
        arg = ht.flatten(1).argmax(1)
        py, px = (arg // ww).double(), (arg % ww).double()
        scaled = torch.where(live.view(-1, 1, 1, 1),
                             ht.unsqueeze(1) / (peak.view(-1, 1, 1, 1) * levels.view(1, -1, 1, 1)).clamp_min(1e-12),
                             torch.zeros((), device=ht.device))  # [N, L, H, W]
        region = erase_components(scaled.reshape(n * nl, hw, ww), threshold=1.0).reshape(n, nl, hw, ww)
        region &= live.view(-1, 1, 1, 1)
        boxes = _bbox(region.reshape(n * nl, hw, ww)).reshape(n, nl, 4).double()
        # (a where and a byte count: the same sums as a product and a bool sum, in half the time on CPU)
        area = region.view(torch.uint8).sum(dim=(-2, -1), dtype=torch.int32).clamp_min(1)
        heat = (torch.where(region, first.unsqueeze(1), 0.0).sum(dim=(-2, -1)) / area).double()
        ref = boxes[:, ref_at]
        w = (ref[:, 2] - ref[:, 0]).clamp_min(1.0)
        h = (ref[:, 3] - ref[:, 1]).clamp_min(1.0)
        cx, cy = (ref[:, 0] + ref[:, 2]) / 2, (ref[:, 1] + ref[:, 3]) / 2
        bw = (boxes[..., 2] - boxes[..., 0]).clamp_min(1.0)
        bh = (boxes[..., 3] - boxes[..., 1]).clamp_min(1.0)
        per_level = torch.stack([torch.log(bw / w.unsqueeze(1)), torch.log(bh / h.unsqueeze(1)),
                                 ((boxes[..., 0] + boxes[..., 2]) / 2 - cx.unsqueeze(1)) / w.unsqueeze(1),
                                 ((boxes[..., 1] + boxes[..., 3]) / 2 - cy.unsqueeze(1)) / h.unsqueeze(1)], -1)
        step = torch.zeros(n, 3, dtype=torch.float64, device=ht.device)
        step[:, min(t, 2)] = 1.0
        peak_h1 = first.flatten(1).gather(1, arg.unsqueeze(1)).squeeze(1).double()
        if t > 0:  # the peak's map cell (nearest: as the masks are upsampled)
            mh, mw = near.shape[-2:]
            cell = ((py * mh / hw).long().clamp(max=mh - 1) * mw + (px * mw / ww).long().clamp(max=mw - 1))
            touches = near.flatten(1).gather(1, cell.unsqueeze(1)).squeeze(1).double()
        else:
            touches = torch.zeros(n, dtype=torch.float64, device=ht.device)
        seen = image_features(table, b_idx.to(boxes.device), boxes, work)  # [N, L, 2]
        f = torch.cat([per_level.reshape(n, 4 * nl),
                       torch.stack([torch.log(w / ww), torch.log(h / hw), cx / ww - 0.5, cy / hw - 0.5,
                                    (px + 0.5 - cx) / w, (py + 0.5 - cy) / h], 1),
                       step, peak_h1.unsqueeze(1), touches.unsqueeze(1), heat, seen.reshape(n, 2 * nl)], 1)
        refs.append(ref)
        lives.append(live)
        feats.append(torch.where(live.unsqueeze(1), f, torch.zeros_like(f)))
    return Candidates(torch.stack(refs, 1), torch.stack(lives, 1), torch.stack(feats, 1))


def decode(deltas: Tensor, ref: Tensor) -> Tensor:
    """Boxes (Tensor[..., 4]) from (log w/w_ref, log h/h_ref, dx/w_ref, dy/h_ref) deltas and reference boxes."""
    w = (ref[..., 2] - ref[..., 0]).clamp_min(1.0)
    h = (ref[..., 3] - ref[..., 1]).clamp_min(1.0)
    cx = (ref[..., 0] + ref[..., 2]) / 2 + deltas[..., 2] * w
    cy = (ref[..., 1] + ref[..., 3]) / 2 + deltas[..., 3] * h
    nw = w * torch.exp(deltas[..., 0].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE))
    nh = h * torch.exp(deltas[..., 1].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE))
    return torch.stack([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], -1)


def encode(boxes: Tensor, ref: Tensor) -> Tensor:
    """The deltas that `decode` turns `ref` into `boxes` with (Tensor[..., 4] each)."""
    w = (ref[..., 2] - ref[..., 0]).clamp_min(1.0)
    h = (ref[..., 3] - ref[..., 1]).clamp_min(1.0)
    bw = (boxes[..., 2] - boxes[..., 0]).clamp_min(1e-6)
    bh = (boxes[..., 3] - boxes[..., 1]).clamp_min(1e-6)
    return torch.stack([torch.log(bw / w), torch.log(bh / h),
                        ((boxes[..., 0] + boxes[..., 2]) - (ref[..., 0] + ref[..., 2])) / 2 / w,
                        ((boxes[..., 1] + boxes[..., 3]) - (ref[..., 1] + ref[..., 3])) / 2 / h], -1)


def predict(reg: Regressor, features: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
    """(boxes Tensor[..., 4], quality Tensor[...]) of one finding's candidates (features Tensor[..., F])."""
    z = (features.double() - reg.mean.to(features.device)) / reg.scale.to(features.device)
    z1 = torch.cat([z, torch.ones_like(z[..., :1])], -1)
    deltas = z1 @ reg.box.to(features.device)
    quality = z1 @ reg.quality.to(features.device)
    return decode(deltas, ref.double()), quality


# ------------------------------------------------------------------------------------------------ boxes


def _pair_overlap(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(IoU, intersection over the smaller area) of boxes a and b (Tensor[N, 4] each)."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).clamp(min=1e-12)
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).clamp(min=1e-12)
    return inter / (area_a + area_b - inter), inter / torch.minimum(area_a, area_b)


def _same_lesion(a: Tensor, b: Tensor, dedup_iou: float) -> Tensor:
    """Boxes a and b (Tensor[N, 4] each) overlap (IoU > `dedup_iou`) or nest (>= ``NESTED_SHARE``)."""
    iou, share = _pair_overlap(a, b)
    return (iou > dedup_iou) | (share >= NESTED_SHARE)


def _best_first(boxes: Tensor, ok: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(boxes, ok, score, order) sorted by score, best first (stable); absent boxes (ok False) score -inf, last."""
    score = torch.where(ok, score, torch.full_like(score, -math.inf))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    return boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)), ok.gather(1, order), score.gather(1, order), order


def _clipped(boxes: Tensor, limit: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes (Tensor[..., 4]) clipped to [0, limit], and whether each still has an area."""
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    return boxes, ((boxes[..., 2] - boxes[..., 0]) > 0) & ((boxes[..., 3] - boxes[..., 1]) > 0)


def one_box_per_lesion(boxes: Tensor, quality: Tensor, ok: Tensor, dedup_iou: float) -> tuple[Tensor, Tensor, Tensor]:
    """The candidates of each pair (boxes Tensor[M, T, 4], quality Tensor[M, T], ok Tensor[M, T] bool) as one box per
    lesion (module docstring), best first: (boxes, ok, score) Tensor[M, T, ...], kept boxes first by quality, the
    others with ok False and score -inf."""
    m, steps = ok.shape
    boxes, ok, score, _ = _best_first(boxes, ok, quality)
    # greedy, best first: a candidate that overlaps or nests with a better head joins that head's lesion
    head = ok.clone()
    joins = torch.arange(steps, device=ok.device).expand(m, steps).clone()
    for t in range(1, steps):
        for s in range(t):
            same = head[:, s] & head[:, t] & _same_lesion(boxes[:, t], boxes[:, s], dedup_iou)
            joins[:, t] = torch.where(same, s, joins[:, t])
            head[:, t] &= ~same
    # each lesion's box: its candidates' boxes weighted by their quality (weighted box fusion)
    weight = torch.where(ok, score.clamp_min(FUSION_FLOOR), torch.zeros_like(score))
    member = (joins.unsqueeze(1) == torch.arange(steps, device=ok.device).view(1, -1, 1)) & ok.unsqueeze(1)
    wsum = (member * weight.unsqueeze(1)).sum(-1)  # [m, heads]
    fused = ((member * weight.unsqueeze(1)).unsqueeze(-1) * boxes.unsqueeze(1)).sum(2)
    boxes = torch.where(head.unsqueeze(-1), fused / wsum.clamp_min(1e-12).unsqueeze(-1), boxes)
    # a fused box that now overlaps or nests with a better one is the same lesion too: merged into it
    for t in range(1, steps):
        for s in range(t):
            same = head[:, s] & head[:, t] & _same_lesion(boxes[:, t], boxes[:, s], dedup_iou)
            total = (wsum[:, s] + wsum[:, t]).clamp_min(1e-12)
            merged = (wsum[:, s, None] * boxes[:, s] + wsum[:, t, None] * boxes[:, t]) / total[:, None]
            boxes[:, s] = torch.where(same.unsqueeze(-1), merged, boxes[:, s])
            wsum[:, s] = torch.where(same, total, wsum[:, s])
            head[:, t] &= ~same
    return _best_first(boxes, head, score)[:3]  # kept boxes first, still by quality


def drop_duplicates(boxes: Tensor, score: Tensor, ok: Tensor, dedup_iou: float) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes (Tensor[M, K, 4]) best first by score: one that overlaps (IoU > `dedup_iou`) or nests with (>=
    ``NESTED_SHARE``) a better kept one is dropped. Returns (boxes, ok, score), kept first by score."""
    boxes, ok, score, _ = _best_first(boxes, ok, score)
    for t in range(1, ok.shape[1]):
        for s in range(t):
            ok[:, t] &= ~(ok[:, s] & _same_lesion(boxes[:, t], boxes[:, s], dedup_iou))
    return _best_first(boxes, ok, score)[:3]


@dataclass
class Lesions:
    """The first stage's boxes of the pairs whose finding has a regressor (`lesion_boxes`), before any refinement.

    done: Tensor[N] bool (the pair's finding has a regressor); pairs: Tensor[M, 2] those pairs; finding: their
    findings; boxes: Tensor[M, T, 4] float64 working pixels, best first; ok: Tensor[M, T] bool; quality: Tensor[M, T]
    the expected IoU; tables (`image_tables`) and maps (`map_tables`, row i for pair i) where a finding refines,
    with to_image (Tensor[4]: working pixels -> the tables' pixels)."""

    done: Tensor
    pairs: Tensor
    finding: list[str]
    boxes: Tensor
    ok: Tensor
    quality: Tensor
    tables: tuple[Tensor, Tensor, Tensor] | None = None
    maps: Tensor | None = None
    to_image: Tensor | None = None

    def rows(self, name: str) -> Tensor:
        return torch.tensor([f == name for f in self.finding], dtype=torch.bool, device=self.pairs.device)


def lesion_boxes(step_maps: Tensor, masks: Tensor, pairs: Tensor, *, work: tuple[int, int],
                 regressors: Mapping[str, Regressor], classes: Sequence[str], dedup_iou: float,
                 images: Tensor | None, tables: bool | None = None) -> Lesions | None:
    """The first stage (module docstring) for the pairs whose finding has a regressor: one box per lesion from the
    mining steps' candidates; with the image and map tables the refinement reads where a finding refines (`tables`
    True: always; False: never). None when no pair's finding has a regressor."""
    cls = pairs[:, 1].cpu().long()
    which = [classes[int(c)] in regressors for c in cls] if classes is not None else [False] * len(cls)
    if not any(which):
        return None
    done = torch.tensor(which, dtype=torch.bool)
    sub = pairs[done.to(pairs.device)]
    finding = [classes[int(c)] for c in cls[done]]
    if tables is None:
        tables = any(regressors[name].refine is not None for name in set(finding))
    image = image_tables(images.to(sub.device), torch.unique(sub[:, 0])) if tables and images is not None else None
    cand = candidates(step_maps, masks, sub, work, images, None if image is None else image[0])
    m, steps = cand.live.shape
    out = Lesions(done, sub, finding, torch.zeros(m, steps, 4, dtype=torch.float64, device=sub.device),
                  cand.live, torch.zeros(m, steps, dtype=torch.float64, device=sub.device))
    for name in set(finding):
        rows = out.rows(name)
        out.boxes[rows], out.quality[rows] = predict(regressors[name], cand.features[rows], cand.ref[rows])
    hw, ww = work
    limit = torch.tensor([ww, hw, ww, hw], dtype=torch.float64, device=sub.device)
    boxes, has_area = _clipped(out.boxes, limit)
    out.boxes, out.ok, out.quality = one_box_per_lesion(boxes, out.quality, cand.live & has_area, dedup_iou)
    if image is not None:
        th, tw = (v - 1 for v in image[0].shape[-2:])
        out.tables, out.maps = image, map_tables(step_maps, sub, (th, tw))
        out.to_image = torch.tensor([tw / ww, th / hw] * 2, dtype=torch.float64, device=sub.device)
    return out


def regressed_boxes(step_maps: Tensor, masks: Tensor, pairs: Tensor, *, work: tuple[int, int],
                    regressors: Mapping[str, Regressor], classes: Sequence[str], max_boxes: int,
                    dedup_iou: float, images: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Boxes of the pairs whose finding has a regressor (module docstring; `images`: the model's input batch the
    maps came from): (done Tensor[N] bool, boxes
    Tensor[N, R, 4] float32 working pixels clipped to the image, present Tensor[N, R] bool, score Tensor[N, R]
    float32), R = `max_boxes`, best first; rows of other pairs are empty. None when no pair has one."""
    found = lesion_boxes(step_maps, masks, pairs, work=work, regressors=regressors, classes=classes,
                         dedup_iou=dedup_iou, images=images)
    if found is None:
        return None
    done, sub, boxes, ok, score = found.done, found.pairs, found.boxes, found.ok, found.quality
    m, steps = ok.shape
    hw, ww = work
    limit = torch.tensor([ww, hw, ww, hw], dtype=torch.float64, device=sub.device)
    if found.tables is not None:  # each lesion's box moved where the image and map say it fits best, and scored
        to_image = found.to_image
        for name in set(found.finding):
            refine = regressors[name].refine
            if refine is None:
                continue
            rows = found.rows(name)
            moved, fit = refine_boxes(refine, found.tables, sub[rows, 0], found.maps,
                                      torch.nonzero(rows).squeeze(1), boxes[rows] * to_image,
                                      torch.where(ok[rows], score[rows], 0.0))
            boxes[rows] = moved / to_image
            score[rows] = torch.where(ok[rows], fit, score[rows])
        boxes, has_area = _clipped(boxes, limit)
        boxes, ok, score = drop_duplicates(boxes, score, ok & has_area, dedup_iou)
    r = int(max_boxes)
    if steps < r:
        pad = r - steps
        boxes = torch.cat([boxes, boxes.new_zeros(m, pad, 4)], 1)
        ok = torch.cat([ok, ok.new_zeros(m, pad)], 1)
        score = torch.cat([score, score.new_full((m, pad), -math.inf)], 1)
    n = int(pairs.shape[0])
    out_box = torch.zeros(n, r, 4, dtype=torch.float32, device=pairs.device)
    out_ok = torch.zeros(n, r, dtype=torch.bool, device=pairs.device)
    out_score = torch.full((n, r), -math.inf, dtype=torch.float32, device=pairs.device)
    idx = done.to(pairs.device)
    out_box[idx] = boxes[:, :r].float()
    out_ok[idx] = ok[:, :r]
    out_score[idx] = score[:, :r].clamp(0.0, 1.0).float()  # an IoU: ranked by the regression, reported in [0, 1]
    return idx, out_box, out_ok, out_score


# ------------------------------------------------------------------------------------------------ fitting

#: ridge penalty on the standardised features (the intercept is not penalised)
RIDGE = 30.0
#: a candidate whose reference box overlaps no lesion of its pair at this IoU does not train the box regression
MIN_TRAIN_IOU = 0.1


def _ridge(z: Tensor, y: Tensor, penalty: float) -> Tensor:
    """Least squares of y (Tensor[M, K]) on [z, 1] with `penalty` x |w|^2 on z's weights: Tensor[F + 1, K]."""
    z1 = torch.cat([z, torch.ones_like(z[:, :1])], 1)
    eye = torch.eye(z1.shape[1], dtype=z1.dtype)
    eye[-1, -1] = 0.0
    return torch.linalg.solve(z1.T @ z1 + penalty * eye, z1.T @ y)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of a (Tensor[M, 4]) with every box of b (Tensor[G, 4]): Tensor[M, G]."""
    a, b = a.unsqueeze(1), b.unsqueeze(0)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (union - inter).clamp(min=1e-12)


def fit_regressor(features: Tensor, ref: Tensor, truth: Sequence[Tensor], *, penalty: float = RIDGE,
                  min_iou: float = MIN_TRAIN_IOU) -> Regressor | None:
    """One finding's `Regressor` from M live candidates: features Tensor[M, F], reference boxes Tensor[M, 4] and
    each candidate's pair's ground-truth boxes (truth[i] Tensor[G_i, 4]), all in working pixels.

    The box regression learns, for each candidate whose reference box overlaps a lesion (IoU >= `min_iou`), the
    deltas to the lesion it overlaps most; the quality regression learns, for every candidate, the IoU of its
    regressed box with the nearest lesion (0 where its pair has none). None when fewer than 2 candidates
    overlap a lesion."""
    x = features.double()
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    scale = torch.where(scale > 1e-9, scale, torch.ones_like(scale))
    z = (x - mean) / scale
    targets, use = [], []
    for i, gts in enumerate(truth):
        if len(gts) == 0:
            targets.append(torch.zeros(4, dtype=torch.float64))
            use.append(False)
            continue
        iou = box_iou(ref[i:i + 1].double(), gts.double())[0]
        j = int(torch.argmax(iou))
        targets.append(encode(gts[j].double(), ref[i].double()))
        use.append(float(iou[j]) >= min_iou)
    used = torch.tensor(use, dtype=torch.bool)
    if int(used.sum()) < 2:
        return None
    box = _ridge(z[used], torch.stack(targets)[used], penalty)
    regressed = decode(torch.cat([z, torch.ones_like(z[:, :1])], 1) @ box, ref.double())
    reached = torch.tensor([float(box_iou(regressed[i:i + 1], gts.double()).max()) if len(gts) else 0.0
                            for i, gts in enumerate(truth)], dtype=torch.float64)
    quality = _ridge(z, reached.unsqueeze(1), penalty)[:, 0]
    return Regressor(mean, scale, box, quality)


def fit_refinement(features: Tensor, iou: Tensor, quality: Tensor, first: Tensor, train: Tensor, *,
                   penalty: float = REFINE_RIDGE, score_penalty: float = SCORE_RIDGE) -> Refinement:
    """One finding's `Refinement` from L validation boxes: the features of each box's moves (Tensor[L, 81, R],
    ``REFINE_NAMES``), the IoU each move reaches with its lesion (Tensor[L, 81], 0 where none), each box's first-stage
    expected IoU (Tensor[L]), whether it is its pair's first lesion (Tensor[L] bool) and whether it trains the move
    choice (Tensor[L] bool: it overlaps a lesion).

    The move choice is a ridge regression of the IoU on the features, both less their mean over the box's moves
    (a fixed effect per box: it learns which move of a box is better, not which boxes are good). The score is a
    ridge regression over every box of the IoU its chosen move reaches on ``SCORE_NAMES``."""
    x = features.double()
    d = x - x.mean(1, keepdim=True)
    t = iou.double() - iou.double().mean(1, keepdim=True)
    r = x.shape[-1]
    use = train.bool()
    if bool(use.any()):
        flat = d[use].reshape(-1, r)
        scale = flat.std(0, unbiased=False)
        scale = torch.where(scale > 1e-9, scale, torch.ones_like(scale))
        z = flat / scale
        choose = torch.linalg.solve(z.T @ z + penalty * torch.eye(r, dtype=z.dtype), z.T @ t[use].reshape(-1))
    else:  # no box overlaps a lesion: every box keeps its place
        scale, choose = torch.ones(r, dtype=torch.float64), torch.zeros(r, dtype=torch.float64)
    draft = Refinement(scale, choose, torch.zeros(len(SCORE_NAMES), dtype=torch.float64),
                       torch.ones(len(SCORE_NAMES), dtype=torch.float64),
                       torch.zeros(len(SCORE_NAMES) + 1, dtype=torch.float64))
    best, choice = choose_moves(draft, x)
    chosen = x.gather(1, best.view(-1, 1, 1).expand(-1, 1, r)).squeeze(1)
    s = score_features(quality.double(), choice, chosen, first)
    reached = iou.double().gather(1, best.unsqueeze(1)).squeeze(1)
    mean = s.mean(0)
    spread = s.std(0, unbiased=False)
    spread = torch.where(spread > 1e-9, spread, torch.ones_like(spread))
    weights = _ridge((s - mean) / spread, reached.unsqueeze(1), score_penalty)[:, 0]
    return Refinement(scale, choose, mean, spread, weights)


__all__ = ["FEATURE_LEVELS", "FEATURE_NAMES", "FEATURES_ID", "REFERENCE_LEVEL", "NESTED_SHARE", "Candidates",
           "Regressor", "candidates", "image_features", "decode", "encode", "predict", "regressed_boxes",
           "one_box_per_lesion", "drop_duplicates", "image_tables", "refine_features", "refine_moves", "refine_boxes",
           "fit_refinement", "REFINE_NAMES", "REFINE_ID", "SCORE_NAMES", "Refinement", "Lesions", "lesion_boxes",
           "map_tables", "choose_moves", "score_features",
           "read_regressors", "fit_regressor", "box_iou"]
