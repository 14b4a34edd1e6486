"""One box per attention-mining step: the region around the peak each step found (``BoxConfig.rule="steps"``).

Attention mining (`miner.mining`) looks at a class map T times; step t finds the maximum of the map with the earlier
steps' regions erased. Here each step gives the box of what it found, for every selected (image, finding) pair,
batched on the maps' device:

1. **Working resolution.** The normalised step map H_t (0 where earlier steps erased) is upsampled bilinearly to the
   working size of `miner.boxes.work_size` (4x the map, at most 256 px a side), and divided by its own maximum.
2. **The region.** The connected component of (H_t >= level) that holds H_t's maximum
   (`miner.kernels.erase_components`), with ``level`` from ``BoxConfig.step_level`` (per finding where
   ``BoxConfig.finding_levels`` names one: levels fixed on a validation split with boxes, see
   `miner.calibrate`). A level relative to the step's own peak sizes the box by the shape of the peak, not by
   the map's global range: a weaker second lesion gets a box of its own extent.
3. **Ranking by the step's own heat.** A box scores the mean of the first map H_1 (min-max normalised over the
   whole map, the common scale of every step) inside its region: a background peak that step 3 was forced to
   take ranks below the lesions, and a lesion found at step 2 can rank above a weak step-1 region.
4. **Duplicates.** A box whose IoU with a kept box of an earlier step exceeds ``dedup_iou``, or that lies inside
   one (intersection over its own area above ``dedup_iobb``), is dropped: the shoulder of a lesion already boxed.
   Where ``drop_nested`` > 0, a box that holds one (intersection over the earlier box's area above
   ``drop_nested``) is dropped too: the ring around an erased core, a larger box of the same lesion that nests
   the first (off by default: today's recipes keep it).
5. Up to ``max_boxes`` boxes, ranked by score, in original pixels (as `miner.boxes`).
6. **Shapes** (any rule, where ``BoxConfig.finding_shapes`` names the finding): each box is rescaled and moved by
   its finding's calibrated shape (`shape_boxes`), after ranking and de-duplication.

At T = 1 this gives one box per pair; the seed's rule (``rule="levels"``, boxes of the fused map at fixed levels)
gives up to three from one map.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from miner.config import BoxConfig
from miner.errors import UsageError


def pair_levels(pairs_class: Tensor, classes: Sequence[str] | None, config: BoxConfig) -> Tensor:
    """The box level of every pair (Tensor[N] float32): ``finding_levels[name]`` where given, else ``step_level``."""
    levels = torch.full((pairs_class.shape[0],), float(config.step_level), dtype=torch.float32)
    own: Mapping[str, float] = config.finding_levels or {}
    if own and classes is not None:
        table = torch.tensor([float(own.get(name, config.step_level)) for name in classes], dtype=torch.float32)
        levels = table[pairs_class.cpu().long()]
    return levels.to(pairs_class.device)


IDENTITY_SHAPE: tuple[float, float, float, float] = (1.0, 1.0, 0.0, 0.0)


def shape_boxes(boxes: Tensor, shapes: Tensor, limit: Tensor) -> Tensor:
    """Boxes (Tensor[..., 4] x0, y0, x1, y1) with shapes (Tensor[..., 4] sx, sy, dx, dy, broadcast): width x sx,
    height x sy, centre moved by (dx x width, dy x height), clipped to [0, W] x [0, H] with `limit` (Tensor[..., 2]
    W, H, broadcast). (1, 1, 0, 0) leaves a box as it is."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    sx, sy, dx, dy = shapes.to(boxes.dtype).unbind(-1)
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + dx * w, (y0 + y1) / 2 + dy * h
    lim = limit.to(boxes.dtype)
    zero = torch.zeros_like(cx)
    nx0 = torch.minimum(torch.maximum(cx - sx * w / 2, zero), lim[..., 0])
    nx1 = torch.minimum(torch.maximum(cx + sx * w / 2, zero), lim[..., 0])
    ny0 = torch.minimum(torch.maximum(cy - sy * h / 2, zero), lim[..., 1])
    ny1 = torch.minimum(torch.maximum(cy + sy * h / 2, zero), lim[..., 1])
    return torch.stack([nx0, ny0, nx1, ny1], -1)


def pair_shapes(pairs_class: Tensor, classes: Sequence[str] | None, config: BoxConfig) -> Tensor | None:
    """The box shape of every pair (Tensor[N, 4] sx, sy, dx, dy) from ``finding_shapes``; None where no finding
    of `classes` has one."""
    own: Mapping[str, Sequence[float]] = config.finding_shapes or {}
    if not own or classes is None or not any(name in own for name in classes):
        return None
    table = torch.tensor([[float(v) for v in own.get(name, IDENTITY_SHAPE)] for name in classes],
                         dtype=torch.float32)
    return table[pairs_class.cpu().long()].to(pairs_class.device)


def _bbox(region: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(has, x0, y0, x1, y1) of each region mask (Tensor[N, H, W] bool); x1/y1 exclusive, working pixels."""
    n, hh, ww = region.shape
    cells = region.view(torch.uint8)  # a max over bytes: torch's any() over a bool dimension is 5x slower on CPU
    rows, cols = cells.amax(dim=2) > 0, cells.amax(dim=1) > 0
    ar = torch.arange(hh, device=region.device)
    ac = torch.arange(ww, device=region.device)
    y0 = torch.where(rows, ar, hh).amin(1)
    y1 = torch.where(rows, ar, -1).amax(1) + 1
    x0 = torch.where(cols, ac, ww).amin(1)
    x1 = torch.where(cols, ac, -1).amax(1) + 1
    return rows.any(dim=1), x0, y0, x1, y1


def step_boxes(
    step_maps: Tensor,
    masks: Tensor,
    pairs: Tensor,
    *,
    work: tuple[int, int],
    config: BoxConfig,
    classes: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Boxes of the mining steps for the selected pairs, ranked (module docstring).

    Args:
        step_maps: H_1..H_T (Tensor[T, B, C, h, w]) of `miner.mining.MiningResult`.
        masks: M_1..M_T (Tensor[T, B, C, h, w] bool, True = kept).
        pairs: (image, class) index pairs (Tensor[N, 2], long).
        work: working size (H_work, W_work).
        config: `BoxConfig` (``step_level``, ``finding_levels``, ``max_boxes``, ``dedup_iou``, ``dedup_iobb``,
            ``drop_nested``).
        classes: class names of the C maps (for ``finding_levels``).

    Returns:
        (boxes Tensor[N, R, 4] float32 x0, y0, x1, y1 in working pixels, present Tensor[N, R] bool,
        score Tensor[N, R] float32, level Tensor[N, R] float32), R = ``max_boxes``, best first.
    """
    from miner.kernels import erase_components

    nested = config.drop_nested
    if isinstance(nested, bool) or not isinstance(nested, (int, float)) or not 0.0 <= nested <= 1.0:
        raise UsageError(f"boxes drop_nested must be a number in [0, 1] (0 = off), got {nested!r}")
    steps = step_maps.shape[0]
    n = int(pairs.shape[0])
    hw, ww = work
    b_idx, c_idx = pairs[:, 0], pairs[:, 1]
    levels = pair_levels(c_idx, classes, config)  # [N]

    def up(x: Tensor) -> Tensor:
        x = x.float()
        if tuple(x.shape[-2:]) == (hw, ww):
            return x
        return F.interpolate(x.unsqueeze(1), size=(hw, ww), mode="bilinear", align_corners=False).squeeze(1)

    first = up(step_maps[0, b_idx, c_idx])  # H_1 on the common scale (min-max over the whole map)
    boxes, present, scores = [], [], []
    for t in range(steps):
        ht = up(step_maps[t, b_idx, c_idx])
        if t > 0:  # only where step t could look: bilinear blending leaks no heat into erased cells
            kept = masks[t - 1, b_idx, c_idx].float().unsqueeze(1)
            ht = ht * (F.interpolate(kept, size=(hw, ww), mode="nearest").squeeze(1) > 0)
        peak = ht.amax(dim=(-2, -1), keepdim=True)
        live = peak.flatten() > 0
        scaled = torch.where(peak > 0, ht / (peak * levels.view(-1, 1, 1)).clamp_min(1e-12), torch.zeros_like(ht))
        region = erase_components(scaled, threshold=1.0) & live.view(-1, 1, 1)  # H_t >= level * peak, at the peak
        has, x0, y0, x1, y1 = _bbox(region)
        area = region.sum(dim=(-2, -1)).clamp_min(1)
        heat = (first * region).sum(dim=(-2, -1)) / area
        boxes.append(torch.stack([x0, y0, x1, y1], dim=1).float())
        present.append(has)
        scores.append(torch.where(has, heat, torch.full_like(heat, float("-inf"))))
    box = torch.stack(boxes, 1)  # [N, T, 4]
    ok = torch.stack(present, 1)
    score = torch.stack(scores, 1)
    # duplicates of an earlier step (the same lesion's shoulder)
    for t in range(1, steps):
        for s in range(t):
            dup = _overlaps(box[:, t], box[:, s], config) & ok[:, s]
            ok[:, t] &= ~dup
    score = torch.where(ok, score, torch.full_like(score, float("-inf")))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    r = int(config.max_boxes)
    box = box.gather(1, order.unsqueeze(-1).expand(-1, -1, 4))
    ok = ok.gather(1, order)
    score = score.gather(1, order)
    if steps < r:  # pad to R ranks
        pad = r - steps
        box = torch.cat([box, box.new_zeros(n, pad, 4)], 1)
        ok = torch.cat([ok, ok.new_zeros(n, pad)], 1)
        score = torch.cat([score, score.new_full((n, pad), float("-inf"))], 1)
    level = levels.view(-1, 1).expand(n, box.shape[1])
    return box[:, :r], ok[:, :r], score[:, :r], level[:, :r]


def _overlaps(a: Tensor, b: Tensor, config: BoxConfig) -> Tensor:
    """a duplicates b: IoU(a, b) > dedup_iou or |a & b| / |a| > dedup_iobb, or (``drop_nested`` > 0) a holds b,
    |a & b| / |b| > drop_nested (Tensor[N, 4] each, exclusive ends)."""
    iw = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    ih = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).clamp(min=1e-12)
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).clamp(min=1e-12)
    iou = inter / (area_a + area_b - inter)
    dup = (iou > config.dedup_iou) | (inter / area_a > config.dedup_iobb)
    if config.drop_nested > 0:  # 0 = off: not even a zero-overlap test, so the recipes' boxes stay bit for bit
        dup |= inter / area_b > config.drop_nested
    return dup


__all__ = ["step_boxes", "pair_levels", "pair_shapes", "shape_boxes", "IDENTITY_SHAPE"]
