"""Ranked boxes from fused heatmaps: up to 3 per image and finding, in original image pixels.

For every selected (image, finding) pair, batched on the maps' device:

1. **Working resolution.** H_f (Tensor[h, w]) is upsampled bilinearly (``align_corners=False``: map cell i
   covers input pixels [i, i + 1) * S / h, as the network's stride does) by ``upsample`` (default 4: a 16x16
   ResNet-50 map at 512 px becomes 64x64, a 32x32 MSA map 128x128), with no side above ``max_work_side``
   (256) unless the map is already larger (a full-resolution DC-FPN map is used as it is). Bilinear
   interpolation of a coarse grid adds no information beyond ~4x; the finer the grid, the costlier step 3.
2. **Levels.** The upsampled map is min-max normalised per map, and each level tau of ``thresholds``
   (default 0.3, 0.5, 0.7; ``"wang"`` = 60/255 and 180/255, Wang et al.'s levels on heatmaps scaled to
   [0, 255]) gives the binary map (norm >= tau).
3. **Components.** All levels x pairs are labelled in ONE `miner.kernels.label_components` call and measured
   in ONE `miner.kernels.component_stats` call; every component of at least ``min_area`` map cells gives the
   box around it (x0, y0, x1, y1 exclusive, working pixels).
4. **Ranking.** Each box scores the mean of the (upsampled, not normalised) H_f inside the box, read from a
   summed-area table; boxes are ranked by score, highest first (Cai et al.: "ranked ... based on the mean H_f
   intensity values inside the bbox areas").
5. **Duplicates.** Going down the ranking, a box whose IoU with an already kept box exceeds ``dedup_iou``
   (0.8: the same region found at another level) is dropped; the first ``max_boxes`` (3) survivors get
   ranks 1, 2, 3. A map with fewer distinct regions gives fewer boxes (Cai et al. Fig. 2(a)); a map with no
   signal gives none.
6. **Original pixels.** Working pixel edges map linearly to the original image: x = x0 * W / W_work,
   w = (x1 - x0) * W / W_work (likewise y, h with H / H_work), float32 -- the BBox_List_2017 convention
   (x, y = top-left corner, w, h = size). The model input is the whole image resized to S x S (no crop, no
   padding: `miner.data.to_model_input`), so the map grid spans the whole original image.

Only the final boxes (a few numbers per pair) are copied to the host.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from miner.config import BoxConfig
from miner.errors import UsageError

#: Wang et al. (CVPR 2017): heatmaps scaled to [0, 255], boxes at intensity 60 and 180
WANG_THRESHOLDS: tuple[float, ...] = (60 / 255, 180 / 255)

#: which (image, finding) pairs get boxes
SELECT_MODES = ("labels", "predicted", "all")

#: how boxes are read off the mining result (`BoxConfig.rule`)
BOX_RULES = ("levels", "steps")

#: the row fields `boxes_from_maps` fills per box (the Parquet contract adds image_id, finding, prob)
BOX_FIELDS = ("class_index", "rank", "x", "y", "w", "h", "score", "threshold")


def resolve_thresholds(thresholds: Sequence[float] | str) -> tuple[float, ...]:
    """The levels for a `BoxConfig.thresholds` value (``"wang"`` or numbers in (0, 1])."""
    if isinstance(thresholds, str):
        if thresholds.strip().lower() == "wang":
            return WANG_THRESHOLDS
        try:
            thresholds = [float(v) for v in thresholds.split(",") if v.strip()]
        except ValueError:
            raise UsageError(f"box thresholds must be 'wang' or numbers like 0.3,0.5,0.7, got {thresholds!r}") from None
    out = tuple(float(v) for v in thresholds)
    if not out or any(not 0 < v <= 1 for v in out):
        raise UsageError(f"box thresholds must be in (0, 1] (levels on the normalised map), got {out}")
    return out


def select_classes(
    mode: str,
    *,
    probs: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    prob_threshold: float = 0.5,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Which (image, finding) pairs get boxes: np.ndarray[B, C] bool.

    Args:
        mode: ``labels`` (the image's labels), ``predicted`` (probability >= `prob_threshold`) or ``all``.
        probs: np.ndarray[B, C] of probabilities (``predicted``).
        labels: np.ndarray[B, C] of 0/1 labels (``labels``; `miner.data.Archive.labels_matrix` rows).
        shape: (B, C) for ``all`` when neither array is given.
    """
    if mode == "all":
        ref = probs if probs is not None else labels
        if ref is None and shape is None:
            raise UsageError("select_classes('all') needs probs, labels or shape")
        return np.ones(ref.shape if ref is not None else shape, dtype=bool)
    if mode == "predicted":
        if probs is None:
            raise UsageError("classes='predicted' needs the probabilities")
        return np.asarray(probs) >= prob_threshold
    if mode == "labels":
        if labels is None:
            raise UsageError("classes='labels' needs the image labels")
        return np.asarray(labels) > 0
    raise UsageError(f"classes must be one of {', '.join(SELECT_MODES)}, got {mode!r}")


def cell_shift(input_size: Sequence[int], map_size: Sequence[int], cell_origin: str) -> tuple[float, float]:
    """(dy, dx) in map cells that puts each cell on its receptive-field centre (`BoxConfig.align_cells`).

    ``cell_origin="corner"`` (ResNets: a stride-s cell i is centred on input pixel s * i): -(s - 1) / (2 s) cells,
    i.e. (s - 1) / 2 input pixels up and left of where bilinear upsampling with ``align_corners=False`` puts it.
    ``"centre"``: (0, 0).
    """
    if cell_origin != "corner":
        return 0.0, 0.0
    out = []
    for size, cells in zip(input_size, map_size):
        s = float(size) / float(cells)
        out.append(-(s - 1.0) / (2.0 * s) if s > 1 else 0.0)
    return out[0], out[1]


def work_size(map_size: tuple[int, int], config: BoxConfig) -> tuple[int, int]:
    """Working resolution (H_work, W_work) for maps of `map_size` (module docstring, step 1)."""
    h, w = int(map_size[0]), int(map_size[1])
    up = max(1, int(config.upsample))
    side = max(h, w)
    if side * up > config.max_work_side:
        up_f = max(1.0, config.max_work_side / side)
        return max(h, int(round(h * up_f))), max(w, int(round(w * up_f)))
    return h * up, w * up


def _box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes a (Tensor[N, 4]) with boxes b (Tensor[N, M, 4]), x1/y1 exclusive: Tensor[N, M]."""
    a = a.unsqueeze(1)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def boxes_from_maps(
    fused: Tensor,
    *,
    original_sizes: Sequence[tuple[int, int]],
    classes: np.ndarray | Tensor | str | None = None,
    config: BoxConfig | None = None,
    probs: np.ndarray | Tensor | None = None,
    labels: np.ndarray | None = None,
    prob_threshold: float = 0.5,
) -> list[list[dict[str, Any]]]:
    """Up to ``config.max_boxes`` ranked boxes per selected (image, finding) pair, by the ``levels`` rule.

    Args:
        fused: H_f (Tensor[B, C, h, w]) from `miner.mining.attention_mining` (any device).
        original_sizes: (H, W) of each original image, in pixels.
        classes: which (image, finding) pairs get boxes: a Tensor/np.ndarray[B, C] bool, or a mode of
            `select_classes` -- ``"labels"`` (needs `labels`), ``"predicted"`` (needs `probs`; probability >=
            `prob_threshold`) or ``"all"``; None = all.
        config: `miner.config.BoxConfig` (None = defaults; its ``rule`` is not consulted: this is the levels rule).
        probs, labels, prob_threshold: for the string modes (np.ndarray or Tensor [B, C]).

    Returns:
        per image, a list of dicts with `BOX_FIELDS` (class_index int, rank 1.., x, y, w, h in original pixels,
        score = mean H_f inside the box, threshold = the level that produced it), ordered by class then rank.
    """
    from miner.mining import small_ops

    with small_ops(fused.device):
        return _boxes(fused, None, original_sizes, classes, config, probs, labels, prob_threshold, None)


def boxes_from_mining(
    mined: Any,
    *,
    original_sizes: Sequence[tuple[int, int]],
    classes: np.ndarray | Tensor | str | None = None,
    config: BoxConfig | None = None,
    class_names: Sequence[str] | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
    probs: np.ndarray | Tensor | None = None,
    labels: np.ndarray | None = None,
    prob_threshold: float = 0.5,
    images: Tensor | None = None,
) -> list[list[dict[str, Any]]]:
    """Boxes of a `miner.mining.MiningResult` by ``config.rule``: ``levels`` (the fused map H_f at fixed levels,
    as `boxes_from_maps`) or ``steps`` (one box per mining step, `miner.step_boxes`).

    `class_names` (the C maps' finding names) lets ``config.finding_levels`` and ``config.finding_shapes`` apply;
    `shift` (dy, dx, in map cells, from `cell_shift`) moves the boxes where ``config.align_cells`` asks;
    `images` (Tensor[B, C, H, W]), the model's input the maps came from, is what box regressors
    (``config.regressors``) read beside the maps; other arguments as `boxes_from_maps`. Returns per image a list
    of dicts with `BOX_FIELDS` (``threshold`` = the level of the box: a level of H_f for ``levels``, the fraction
    of its step's peak for ``steps``).
    """
    from miner.mining import small_ops

    cfg = config or BoxConfig()
    if cfg.rule not in BOX_RULES:
        raise UsageError(f"box rule must be one of {', '.join(BOX_RULES)}, got {cfg.rule!r}")
    with small_ops(mined.fused.device):
        shift = shift if cfg.align_cells else (0.0, 0.0)
        if cfg.rule == "levels":
            return _boxes(mined.fused, None, original_sizes, classes, cfg, probs, labels, prob_threshold, class_names,
                          shift)
        return _boxes(mined.fused, mined, original_sizes, classes, cfg, probs, labels, prob_threshold, class_names,
                      shift, images)


def _chosen_pairs(classes, probs, labels, prob_threshold, shape, device) -> Tensor:
    b, c = shape
    if isinstance(classes, str):
        if isinstance(probs, Tensor):
            probs = probs.detach().float().cpu().numpy()
        classes = select_classes(classes, probs=probs, labels=labels, prob_threshold=prob_threshold, shape=(b, c))
    if classes is None:
        chosen = torch.ones(b, c, dtype=torch.bool, device=device)
    else:
        chosen = torch.as_tensor(np.asarray(classes) if not isinstance(classes, Tensor) else classes).to(device)
        if chosen.shape != (b, c):
            raise UsageError(f"classes selection must be [B, C] = {(b, c)}, got {tuple(chosen.shape)}")
        chosen = chosen.bool()
    return chosen.nonzero()  # [N, 2]


def _boxes(fused, mined, original_sizes, classes, config, probs, labels, prob_threshold, class_names,
           shift=(0.0, 0.0), images=None) -> list[list[dict[str, Any]]]:
    cfg = config or BoxConfig()
    if fused.dim() != 4:
        raise UsageError(f"fused maps must be Tensor[B, C, h, w], got shape {tuple(fused.shape)}")
    b, c, h, w = fused.shape
    if len(original_sizes) != b:
        raise UsageError(f"original_sizes has {len(original_sizes)} entries for a batch of {b}")
    if cfg.max_boxes < 1:
        raise UsageError(f"max_boxes must be at least 1, got {cfg.max_boxes}")
    out: list[list[dict[str, Any]]] = [[] for _ in range(b)]
    pairs = _chosen_pairs(classes, probs, labels, prob_threshold, (b, c), fused.device)
    if int(pairs.shape[0]) == 0:
        return out
    hw, ww = work_size((h, w), cfg)
    reg = None
    if cfg.regressors and mined is not None:  # regressed boxes (BoxConfig.regressors) where a finding has one
        from miner.box_regression import REFERENCE_LEVEL, read_regressors, regressed_boxes

        reg = regressed_boxes(mined.step_maps, mined.masks, pairs, work=(hw, ww),
                              regressors=read_regressors(cfg.regressors), classes=class_names,
                              max_boxes=cfg.max_boxes, dedup_iou=cfg.dedup_iou, images=images)
    if reg is not None and bool(reg[0].all()):  # every pair regressed: the rule's boxes are not needed
        done, sel_box, ok, sel_score = reg
        sel_level = torch.full_like(sel_score, REFERENCE_LEVEL)
    else:
        if mined is None:
            found = _level_boxes(fused, pairs, (hw, ww), cfg)
        else:
            from miner.step_boxes import step_boxes

            found = step_boxes(mined.step_maps, mined.masks, pairs, work=(hw, ww), config=cfg, classes=class_names)
        if found is None:
            return out
        sel_box, ok, sel_score, sel_level = found
        if shift != (0.0, 0.0):  # receptive-field centres (BoxConfig.align_cells), clipped to the image
            dy, dx = shift[0] * hw / h, shift[1] * ww / w
            move = torch.tensor([dx, dy, dx, dy], dtype=sel_box.dtype, device=sel_box.device)
            limit = torch.tensor([ww, hw, ww, hw], dtype=sel_box.dtype, device=sel_box.device)
            sel_box = torch.minimum(torch.clamp(sel_box + move, min=0), limit)
        if cfg.finding_shapes:  # per-finding box shapes (BoxConfig.finding_shapes), clipped to the image
            from miner.step_boxes import pair_shapes, shape_boxes

            shapes = pair_shapes(pairs[:, 1], class_names, cfg)
            if shapes is not None:
                limit = torch.tensor([ww, hw], dtype=sel_box.dtype, device=sel_box.device)
                sel_box = shape_boxes(sel_box, shapes.unsqueeze(1), limit)
        if reg is not None:  # the regressed findings' boxes replace the rule's, shapes and alignment
            done, r_box, r_ok, r_score = reg
            sel_box = torch.where(done.view(-1, 1, 1), r_box.to(sel_box.dtype), sel_box)
            ok = torch.where(done.view(-1, 1), r_ok, ok)
            sel_score = torch.where(done.view(-1, 1), r_score.to(sel_score.dtype), sel_score)
            sel_level = torch.where(done.view(-1, 1), torch.full_like(sel_level, REFERENCE_LEVEL), sel_level)
    # the one host copy: a few numbers per pair
    pairs_h = pairs.cpu().numpy()
    box_h = sel_box.cpu().numpy()
    score_h = sel_score.cpu().numpy()
    level_h = sel_level.cpu().numpy()
    ok_h = ok.cpu().numpy()
    for i, (bi, ci) in enumerate(pairs_h):
        height, width = (float(v) for v in original_sizes[bi])
        sx, sy = width / ww, height / hw
        rank = 0
        for r in range(ok_h.shape[1]):
            if not ok_h[i, r]:
                break
            rank += 1
            bx0, by0, bx1, by1 = box_h[i, r]
            out[bi].append({
                "class_index": int(ci),
                "rank": rank,
                "x": np.float32(bx0 * sx),
                "y": np.float32(by0 * sy),
                "w": np.float32((bx1 - bx0) * sx),
                "h": np.float32((by1 - by0) * sy),
                "score": np.float32(score_h[i, r]),
                "threshold": np.float32(level_h[i, r]),
            })
    return out


def _level_boxes(fused: Tensor, pairs: Tensor, work: tuple[int, int], cfg: BoxConfig):
    """The ``levels`` rule (module docstring, steps 1-5): (boxes [N, R, 4] working pixels, present [N, R],
    score [N, R], level [N, R]) or None when no map has a component."""
    from miner.kernels import component_stats, label_components

    levels = resolve_thresholds(cfg.thresholds)
    device = fused.device
    h, w = fused.shape[-2:]
    hw, ww = work
    n = int(pairs.shape[0])
    maps = fused[pairs[:, 0], pairs[:, 1]].float()  # [N, h, w]
    if (hw, ww) != (h, w):
        maps = F.interpolate(maps.unsqueeze(1), size=(hw, ww), mode="bilinear", align_corners=False).squeeze(1)
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - lo
    ok = span > 0
    norm = torch.where(ok, (maps - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(maps))

    lv = torch.tensor(levels, dtype=norm.dtype, device=device)
    nl = len(levels)
    binary = (norm.unsqueeze(0) >= lv.view(nl, 1, 1, 1)).reshape(nl * n, hw, ww)  # level-major
    labels, counts = label_components(binary, connectivity=cfg.connectivity)
    k = int(counts.max()) if counts.numel() else 0
    if k == 0:
        return None
    stats = component_stats(labels, maps.repeat(nl, 1, 1), num_labels=k)
    cell = (hw / h) * (ww / w)
    valid = stats.area.to(torch.float32) >= max(1.0, cfg.min_area * cell)  # [nl * N, K]

    # candidates per pair: [N, nl * K]
    bbox = stats.bbox.view(nl, n, k, 4).permute(1, 0, 2, 3).reshape(n, nl * k, 4).to(torch.int64)
    valid = valid.view(nl, n, k).permute(1, 0, 2).reshape(n, nl * k)
    level_of = lv.view(1, nl, 1).expand(n, nl, k).reshape(n, nl * k)

    # mean of H_f inside each box from a summed-area table (float64 sums: exact enough at any size)
    sat = F.pad(maps.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))  # [N, hw + 1, ww + 1]
    x0, y0, x1, y1 = bbox.unbind(-1)
    flat = sat.view(n, -1)
    stride = ww + 1

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return flat.gather(1, yy * stride + xx)

    box_sum = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    box_area = ((x1 - x0) * (y1 - y0)).clamp(min=1)
    score = (box_sum / box_area).float()
    score = torch.where(valid, score, torch.full_like(score, float("-inf")))

    # rank by score (stable: ties keep level order, then label order), then greedy de-duplication
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    score = score.gather(1, order)
    bbox_f = bbox.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)).to(torch.float32)
    level_of = level_of.gather(1, order)
    alive = torch.isfinite(score)
    picks, has = [], []
    rows = torch.arange(n, device=device)
    for _ in range(cfg.max_boxes):
        present = alive.any(dim=1)
        first = torch.argmax(alive.to(torch.int8), dim=1)  # first alive in ranking order
        picks.append(first)
        has.append(present)
        chosen_box = bbox_f[rows, first]
        dup = _box_iou(chosen_box, bbox_f) > cfg.dedup_iou
        alive = alive & ~dup
        alive[rows, first] = False
    pick = torch.stack(picks, 1)  # [N, R]
    ok = torch.stack(has, 1)
    sel_box = bbox_f.gather(1, pick.unsqueeze(-1).expand(-1, -1, 4))
    return sel_box, ok, score.gather(1, pick), level_of.gather(1, pick)


def box_columns(
    per_image: Sequence[Sequence[dict[str, Any]]],
    *,
    image_ids: Sequence[str],
    classes: Sequence[str],
    probs: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Rows of `boxes_from_maps` as columns of the Parquet output contract (docs/design.md) (pyarrow-ready numpy
    arrays).

    Columns: image_id, finding (str, object arrays), class_index int16, rank int8, x, y, w, h, score, prob,
    threshold float32 (prob NaN where `probs` is None).
    """
    cols: dict[str, list] = {name: [] for name in
                             ("image_id", "finding", "class_index", "rank", "x", "y", "w", "h", "score", "prob",
                              "threshold")}
    for b, boxes in enumerate(per_image):
        for box in boxes:
            ci = int(box["class_index"])
            cols["image_id"].append(image_ids[b])
            cols["finding"].append(classes[ci])
            cols["prob"].append(np.nan if probs is None else float(probs[b, ci]))
            for key in BOX_FIELDS:
                cols[key].append(box[key])
    dtypes = {"image_id": object, "finding": object, "class_index": np.int16, "rank": np.int8}
    return {name: np.asarray(values, dtype=dtypes.get(name, np.float32)) for name, values in cols.items()}
