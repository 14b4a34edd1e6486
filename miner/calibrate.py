"""Per-finding box levels fixed on a validation archive with boxes (``miner calibrate``).

Lesions of different findings have different extents relative to the peak of their class map: a nodule is the
tip of its peak, cardiomegaly the whole broad hump. The ``steps`` box rule (`miner.step_boxes`) cuts each peak at
a fraction of its height; this module picks that fraction per finding on images that have ground-truth boxes and
were not used for training (a validation split, never the test split), and records it in the checkpoint
(``boxes.finding_levels``), where ``miner mine``, ``miner export`` and every backend find it.

For every candidate level, the model's boxes (its own recipe settings, the mining job's code) are scored with
Acc at T(IoU) = ``iou`` with every box (`miner.metrics.hits`); each finding with at least ``min_boxes``
ground-truth boxes takes the level with the highest Acc (ties: the level closest to the recipe's default), the
others keep the default. The model's maps are computed once; only mining and boxes run per level.

With ``shapes`` (the default) each finding also gets a box shape (`fit_shape`): the hot region of a class map has
the map's shape, not the lesion's -- a round blob for a flat band of atelectasis, a hump that runs below an
effusion's meniscus, a region a cell or two off the lesion where the network's receptive fields are not centred
-- so at every candidate level the boxes are rescaled (width x sx, height x sy) and moved (centre + dx x width,
dy x height) by the (sx, sy, dx, dy) that finds the most validation boxes, searched by coordinate descent on a
grid (`SCALES` x `SCALES`, then `SHIFTS` x `SHIFTS`, twice). The level and shape are chosen together; a shape is
kept only where it finds at least ``min_gain`` (share of the finding's boxes, and at least one box) more than the
plain boxes at that level, and at equal Acc a level with plain boxes wins over one with a shape. The product
applies them as ``boxes.finding_shapes`` (`miner.step_boxes.shape_boxes`).

The same validation images choose how much each finding's map reads from the coarsest backbone stage
(`calibrate_maps`, ``stage_weights`` in the checkpoint, `miner.cam.ClassMapper`): the MSA's stride-32 part is
upsampled x4 and spreads every peak over cells around the lesion, while the finer stages place it but classify
less well. For each candidate weight of that stage (`COARSE_WEIGHTS`; 1 = the maps as trained) the levels and
shapes are calibrated as above; each finding takes the weight whose chosen level and shape find the most
validation boxes, where that beats the plain maps by at least ``min_gain`` (ties: the weight nearest 1). The
logits, and so the probabilities, are the model's own.

The same validation images can also choose the image size the model runs at (`calibrate_input_size`): the
models are fully convolutional, so a model trained at 256 px runs at 288 or 320 px, where a lesion covers more
cells of the class map and the boxes read from it are finer (docs/results/box-quality.md measures it). Each candidate
size gets its own per-finding levels (and shapes); the size with the best macro mean Acc over the calibrated
findings wins (or, with a tolerance, the smallest within it of the best: the model's time grows with the pixel
count), and the checkpoint records it as ``input_size`` (the training size stays in ``trained_input_size``).

Last, at the chosen size and stage weights, the same images fit each finding's box regressors
(`calibrate_regressors`, ``boxes.regressors``, `miner.box_regression`): ridge regressions from every mining step's
candidate to the lesion's box and the IoU it reaches, then (unless ``refine=False``) a refinement that chooses
one of 81 moves of each resulting box by the image and the map, and scores the chosen box. The refinement learns
from boxes as unseen images get them: the batches fall into ``REFINE_FOLDS`` folds, and each fold's boxes come from
a first stage fitted on the other folds (cross-fitting). They replace the levels' and shapes' boxes of the findings
they cover.

With the refinement, the boxes it gives, not the levels', can choose each finding's stage weight
(`calibrate_box_weights`, ``miner calibrate --weights-by boxes``): the regressors and refinement are
fitted at every candidate weight, and each fold's refined boxes are scored by a move choice fitted on the other
folds (`refinement_oof`: Acc at T(IoU) ``OOF_IOU`` = 0.5, the measure the boxes are trained for). A finding moves
from the levels' weight to the one whose boxes find the most lesions where that finds at least ``min_gain`` of its
boxes more. The levels' Acc at T(IoU) 0.3 favours a map whose hot core sits on the lesion; a box at IoU 0.5 also
needs the lesion's border, which the finer stages carry: for a diffuse finding the coarse stage spreads the map
over the surroundings.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from miner.errors import UsageError

#: candidate levels (fractions of a step's peak)
LEVELS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
#: candidate box scales (width x sx, height x sy) and centre shifts (fractions of the box's width / height)
SCALES: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0)
SHIFTS: tuple[float, ...] = (-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3)
#: candidate weights of the coarsest stage's channels in a finding's map (`calibrate_maps`)
COARSE_WEIGHTS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)
#: the T(IoU) of the out-of-fold Acc by which `calibrate_box_weights` compares a finding's candidate maps
OOF_IOU = 0.5


@dataclass
class BoxedSet:
    """Positive images of one or more archives, decoded for one model input size, with their ground truth.

    gt maps (image_id, finding) -> [(x, y, w, h), ...]; image ids of a second archive are prefixed ``"1:"`` etc.
    when several archives are merged (phantom archives reuse names).
    """

    batches: list[Any]
    gt: dict[tuple[str, str], list[tuple[float, float, float, float]]]
    images: int
    maps: list[tuple[Any, Any]] = field(default_factory=list)

    @property
    def multi(self) -> list[tuple[str, str]]:
        return sorted(k for k, boxes in self.gt.items() if len(boxes) >= 2)


def load_boxed_set(archives: Sequence[str | Path], input_size: tuple[int, int], *, split: str | None = None,
                   batch_size: int = 32, val: tuple[float, int] | None = None) -> BoxedSet:
    """The positive images with boxes of `archives` (one split of each, or all; ``split="val"`` holds out the
    training run's validation patients: `val` = (val_fraction, seed) as `miner.train.dataset.split_validation`)."""
    from miner.data import read_archive
    from miner.pipeline import decode_batch

    records: list[tuple[str, str, tuple[str, ...], str | None]] = []
    gt: dict[tuple[str, str], list[tuple[float, float, float, float]]] = defaultdict(list)
    for k, path in enumerate(archives):
        archive = read_archive(path)
        chosen = list(archive.records)
        if split == "val":
            from miner.train.dataset import split_validation

            fraction, seed = val if val is not None else (0.1, 0)
            _, chosen = split_validation([r for r in chosen if r.split != "test"], fraction, seed=seed)
        elif split is not None:
            chosen = [r for r in chosen if r.split == split]
        prefix = f"{k}:" if k else ""
        boxed = {b.image_id for b in archive.boxes}
        for r in chosen:
            if r.labels and r.image_id in boxed:
                records.append((prefix + r.image_id, r.path, tuple(r.labels), r.root))  # root: miner.data.confine
        ids = {r.image_id for r in chosen}
        for b in archive.boxes:
            if b.image_id in ids:
                gt[(prefix + b.image_id, b.finding)].append((b.x, b.y, b.w, b.h))
    if not records:
        where = ", ".join(str(p) for p in archives)
        raise UsageError(f"{where}: no labelled image with ground-truth boxes"
                         + (f" in split {split!r}" if split else "") + ": calibration and scoring need boxes")
    batches = [decode_batch(records[i:i + batch_size], input_size=input_size)
               for i in range(0, len(records), batch_size)]
    return BoxedSet(batches, dict(gt), len(records))


def compute_maps(backend: Any, data: BoxedSet) -> BoxedSet:
    """Run the backend once over `data` (kept in `data.maps`: (images, maps) per batch)."""
    import torch

    data.maps = []
    with torch.inference_mode():
        for batch in data.batches:
            images = torch.from_numpy(np.require(batch.images, requirements="W"))
            data.maps.append((images, backend.run(images)[1] if len(batch) else None))
    return data


def mine_set(pipeline: Any, data: BoxedSet, *, on_batch: Callable[[Any, Any, np.ndarray], None] | None = None,
             ) -> list[tuple[str, str, int, float, tuple[float, float, float, float]]]:
    """Boxes of every batch of `data` (maps from `compute_maps`) under `pipeline`'s settings, for the images'
    labelled findings: rows (image_id, finding, rank, score, xywh). `on_batch(batch, mined, chosen)` sees each
    batch's `miner.mining.MiningResult`."""
    import torch

    rows = []
    for batch, (images, maps) in zip(data.batches, data.maps):
        if not len(batch):
            continue
        chosen = pipeline.select(np.zeros((len(batch), len(pipeline.class_names))), batch.labels)
        sizes = [tuple(int(v) for v in s) for s in batch.sizes]
        with torch.inference_mode():
            mined, found = pipeline.mine_maps(maps, images, chosen, sizes)
        if on_batch is not None:
            on_batch(batch, mined, chosen)
        for b, boxes in enumerate(found):
            for box in boxes:
                xywh = (float(box["x"]), float(box["y"]), float(box["w"]), float(box["h"]))
                rows.append((batch.image_ids[b], pipeline.class_names[box["class_index"]], int(box["rank"]),
                             float(box["score"]), xywh))
    return rows


@dataclass
class ShapeCandidates:
    """One finding's mined boxes and ground truth, padded per image-finding (K of them) for `fit_shape`."""

    pred: Any  # Tensor[K, P, 4] float64 x0, y0, x1, y1, original pixels
    pred_ok: Any  # Tensor[K, P] bool
    truth: Any  # Tensor[K, G, 4]
    truth_ok: Any  # Tensor[K, G] bool
    limit: Any  # Tensor[K, 2] image (width, height)

    @property
    def boxes(self) -> int:
        return int(self.truth_ok.sum())

    def hits(self, shapes: Any, iou: float) -> Any:
        """Ground-truth boxes found at T(IoU) = `iou` by a box of their image-finding, per shape (Tensor[Q] long
        for shapes Tensor[Q, 4])."""
        import torch

        from miner.step_boxes import shape_boxes

        q = shapes.shape[0]
        boxes = shape_boxes(self.pred.unsqueeze(0), shapes.view(q, 1, 1, 4), self.limit.view(1, -1, 1, 2))
        a, b = boxes.unsqueeze(3), self.truth.view(1, *self.truth.shape[:1], 1, -1, 4)  # [Q,K,P,1,4], [1,K,1,G,4]
        iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
        ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
        inter = iw * ih
        union = ((a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
                 - inter)
        match = (inter >= (iou - 1e-12) * union) & (union > 0) & self.pred_ok.view(1, *self.pred_ok.shape, 1)
        return (match.any(dim=2) & self.truth_ok.unsqueeze(0)).sum(dim=(1, 2))


def shape_candidates(rows: Sequence[tuple[str, str, int, float, tuple[float, float, float, float]]],
                     data: BoxedSet) -> dict[str, ShapeCandidates]:
    """Per finding, the `mine_set` rows' boxes beside the ground truth of every image-finding with boxes."""
    import torch

    sizes = {i: (float(s[1]), float(s[0])) for batch in data.batches for i, s in zip(batch.image_ids, batch.sizes)}
    pred: dict[tuple[str, str], list[tuple[float, ...]]] = defaultdict(list)
    for image_id, finding, _, _, (x, y, w, h) in rows:
        pred[(image_id, finding)].append((x, y, x + w, y + h))
    out = {}
    for finding in sorted({f for _, f in data.gt}):
        keys = [k for k in data.gt if k[1] == finding and k[0] in sizes]
        if not keys:
            continue
        p = max([len(pred.get(k, ())) for k in keys] + [1])
        g = max(len(data.gt[k]) for k in keys)
        pb, po = torch.zeros(len(keys), p, 4, dtype=torch.float64), torch.zeros(len(keys), p, dtype=torch.bool)
        tb, to = torch.zeros(len(keys), g, 4, dtype=torch.float64), torch.zeros(len(keys), g, dtype=torch.bool)
        for i, key in enumerate(keys):
            mine = pred.get(key, [])
            if mine:
                pb[i, :len(mine)] = torch.tensor(mine, dtype=torch.float64)
                po[i, :len(mine)] = True
            truth = [(x, y, x + w, y + h) for x, y, w, h in data.gt[key]]
            tb[i, :len(truth)] = torch.tensor(truth, dtype=torch.float64)
            to[i, :len(truth)] = True
        limit = torch.tensor([sizes[k[0]] for k in keys], dtype=torch.float64)
        out[finding] = ShapeCandidates(pb, po, tb, to, limit)
    return out


def fit_shape(cand: ShapeCandidates, iou: float, *, scales: Sequence[float] = SCALES,
              shifts: Sequence[float] = SHIFTS, rounds: int = 2) -> tuple[tuple[float, float, float, float], int, int]:
    """The box shape (sx, sy, dx, dy) that finds the most of `cand`'s ground-truth boxes (module docstring):
    coordinate descent from (1, 1, 0, 0), each move to the best grid point (ties: the one nearest the identity)
    when it finds more. Returns (shape, boxes found with it, boxes found without)."""
    import itertools

    import torch

    from miner.step_boxes import IDENTITY_SHAPE

    def nearest_first(points):
        return sorted(points, key=lambda t: (abs(math.log(t[0])) + abs(math.log(t[1])) + abs(t[2]) + abs(t[3]), t))

    shape = tuple(float(v) for v in IDENTITY_SHAPE)
    plain = best = int(cand.hits(torch.tensor([shape], dtype=torch.float64), iou)[0])
    for _ in range(rounds):
        moved = False
        for grid in ([(a, b, shape[2], shape[3]) for a, b in itertools.product(scales, scales)],
                     [(shape[0], shape[1], a, b) for a, b in itertools.product(shifts, shifts)]):
            grid = nearest_first(grid)
            found = cand.hits(torch.tensor(grid, dtype=torch.float64), iou)
            k = int(torch.argmax(found))  # the first maximum: the one nearest the identity
            if int(found[k]) > best:
                best, shape, moved = int(found[k]), tuple(float(v) for v in grid[k]), True
        if not moved:
            break
    return shape, best, plain


@dataclass
class Calibration:
    """Chosen level (and shape) per finding and the Acc of every candidate level (finding -> level -> Acc, with
    the level's fitted shape where shapes are calibrated; ``plain``: without shapes)."""

    levels: dict[str, float]
    table: dict[str, dict[float, float]]
    boxes: dict[str, int]
    default: float
    iou: float
    recipe: str = ""
    method: str = "cam"
    mining: Any = None
    box_config: Any = None
    shapes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    plain: dict[str, dict[float, float]] = field(default_factory=dict)
    #: finding -> {stage -> weight} where a finding's map reads its coarsest stage at a weight other than 1
    stage_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    #: finding -> {candidate weight of the coarsest stage -> Acc at its chosen level and shape}; the stage's name
    weight_table: dict[str, dict[float, float]] = field(default_factory=dict)
    stage: str = ""
    #: each candidate weight's calibration of every finding (`calibrate_maps`; the weights chosen by the boxes,
    #: `calibrate_box_weights`, take their levels and shapes from here)
    by_weight: dict[float, Calibration] = field(default_factory=dict, repr=False, compare=False)
    #: finding -> {candidate weight -> out-of-fold Acc at T(IoU) 0.5 of the refined boxes} where the weights were
    #: chosen by the boxes (`calibrate_box_weights`)
    box_weight_table: dict[str, dict[float, float]] = field(default_factory=dict)

    @property
    def macro(self) -> float:
        """Mean over the calibrated findings of the Acc at their chosen level (NaN when none was calibrated)."""
        accs = [self.table[f][lv] for f, lv in self.levels.items()]
        return float(np.mean(accs)) if accs else math.nan

    @property
    def plain_macro(self) -> float:
        """`macro` without the shapes (the plain boxes at the chosen levels)."""
        accs = [self.plain[f][lv] for f, lv in self.levels.items()] if self.plain else []
        return float(np.mean(accs)) if accs else self.macro

    def lines(self) -> list[str]:
        levels = sorted({lv for accs in self.table.values() for lv in accs})
        head = f"{'finding':<14}{'boxes':>6}" + "".join(f"{lv:>7g}" for lv in levels) + "   chosen"
        out = [head]
        for f, accs in self.table.items():
            mark = self.levels.get(f)
            if mark is None:
                tail = f"   {self.default:g} (default: too few boxes)"
            else:
                tail = f"   {mark:g}"
                if f in self.shapes:
                    sx, sy, dx, dy = self.shapes[f]
                    tail += (f", shape w x{sx:g} h x{sy:g} centre {dx:+g}w {dy:+g}h "
                             f"(plain boxes {self.plain[f][mark]:.2f})")
                for stage, weight in self.stage_weights.get(f, {}).items():
                    tail += f", map with {stage} x{weight:g}"
            out.append(f"{f:<14}{self.boxes.get(f, 0):>6}" + "".join(f"{accs.get(lv, math.nan):>7.2f}" for lv in levels)
                       + tail)
        if self.weight_table:
            weights = sorted({w for accs in self.weight_table.values() for w in accs}, reverse=True)
            out.append(f"best Acc per weight of {self.stage} in the map (the rows above: the chosen weight's levels):")
            out.append(f"{'finding':<14}{'boxes':>6}" + "".join(f"{w:>7g}" for w in weights) + "   chosen")
            for f, accs in self.weight_table.items():
                chosen = self.stage_weights.get(f, {}).get(self.stage, 1.0)
                out.append(f"{f:<14}{self.boxes.get(f, 0):>6}"
                           + "".join(f"{accs.get(w, math.nan):>7.2f}" for w in weights)
                           + (f"   {chosen:g}" if f in self.levels else "   1 (default: too few boxes)"))
        return out + self.box_weight_lines()

    def box_weight_lines(self) -> list[str]:
        """The refined boxes' out-of-fold Acc per candidate weight (`calibrate_box_weights`); [] without."""
        if not self.box_weight_table:
            return []
        weights = sorted({w for accs in self.box_weight_table.values() for w in accs}, reverse=True)
        out = [f"refined boxes' out-of-fold Acc at T(IoU)={OOF_IOU:g} per weight of {self.stage} in the map "
               "(these choose the weight):",
               f"{'finding':<14}{'boxes':>6}" + "".join(f"{w:>7g}" for w in weights) + "   chosen"]
        for f, accs in self.box_weight_table.items():
            chosen = self.stage_weights.get(f, {}).get(self.stage, 1.0)
            out.append(f"{f:<14}{self.boxes.get(f, 0):>6}"
                       + "".join(f"{accs.get(w, math.nan):>7.2f}" for w in weights) + f"   {chosen:g}")
        return out


def calibrate_levels(backend: Any, data: BoxedSet, *, levels: Sequence[float] = LEVELS, iou: float = 0.3,
                     min_boxes: int = 10, recipe: str | None = None, shapes: bool = True,
                     min_gain: float = 0.02) -> Calibration:
    """Pick ``boxes.finding_levels`` (and, with `shapes`, ``boxes.finding_shapes``) on `data` (module
    docstring). The backend's own settings (or `recipe`'s) are the base; their box rule must be ``steps``."""
    from miner.metrics.hits import found_per_finding, group_boxes
    from miner.pipeline import Pipeline

    pipeline = Pipeline(backend, recipe=recipe, boxes={"regressors": None})  # any recorded ones are refitted
    if pipeline.box_config.rule != "steps":
        raise UsageError(f"recipe {pipeline.recipe!r} reads boxes with the {pipeline.box_config.rule!r} rule: "
                         "per-finding levels apply to the 'steps' rule only")
    if not data.maps:
        compute_maps(backend, data)
    default = float(pipeline.box_config.step_level)
    base = replace(pipeline.box_config, finding_levels=None, finding_shapes=None)
    plain: dict[str, dict[float, float]] = defaultdict(dict)
    table: dict[str, dict[float, float]] = defaultdict(dict)
    level_shapes: dict[str, dict[float, tuple[float, float, float, float]]] = defaultdict(dict)
    counts: dict[str, int] = {}
    for level in levels:
        pipeline.box_config = replace(base, step_level=float(level))
        rows = mine_set(pipeline, data)
        pred = group_boxes((r[0], r[1], r[2], r[4]) for r in rows)
        for finding, (hit, n) in found_per_finding(pred, data.gt, iou).items():
            plain[finding][float(level)] = table[finding][float(level)] = hit / n
            counts[finding] = n
        if shapes:
            for finding, cand in shape_candidates(rows, data).items():
                n = cand.boxes
                if n < min_boxes:
                    continue
                shape, found, without = fit_shape(cand, iou)
                if found - without >= min_gain_boxes(n, min_gain):
                    level_shapes[finding][float(level)] = shape
                    table[finding][float(level)] = found / n
    chosen = {}
    for finding, accs in table.items():
        if counts.get(finding, 0) >= min_boxes:
            shaped = level_shapes.get(finding, {})  # ties: plain boxes, then the level nearest the recipe's
            chosen[finding] = max(accs, key=lambda lv: (accs[lv], lv not in shaped, -abs(lv - default)))
    chosen_shapes = {f: level_shapes[f][lv] for f, lv in chosen.items() if lv in level_shapes.get(f, {})}
    return Calibration(chosen, dict(table), counts, default, iou, pipeline.recipe, backend.meta.method,
                       pipeline.mining,
                       replace(base, step_level=default, finding_levels=dict(chosen),
                               finding_shapes={f: list(v) for f, v in chosen_shapes.items()} or None),
                       chosen_shapes, dict(plain))


def min_gain_boxes(boxes: int, min_gain: float) -> int:
    """How many more of a finding's `boxes` ground-truth boxes a shape or a stage weight must find to be kept:
    the share `min_gain` of them, at least one."""
    return max(1, math.ceil(min_gain * boxes - 1e-9))


def coarse_stage(backend: Any) -> str | None:
    """The coarsest backbone stage of a torch backend's model whose features split by stage into two or more
    (``model.feature_stages``, coarsest first); None otherwise."""
    stages = list(getattr(getattr(backend, "model", None), "feature_stages", {}) or {})
    return stages[0] if len(stages) >= 2 else None


def calibrate_maps(backend_with: Callable[[dict[str, dict[str, float]]], Any], data: BoxedSet, *,
                   coarse_weights: Sequence[float] = COARSE_WEIGHTS, min_gain: float = 0.02,
                   **options: Any) -> Calibration:
    """Per finding, the weight of the coarsest stage in its map, with its levels and shapes (module docstring).

    `backend_with(stage_weights)` opens the model with those stage weights (finding -> {stage -> weight};
    {} = the maps as trained) for `data`'s image size; `options` go to `calibrate_levels`. With the single
    candidate 1 this is `calibrate_levels` on the plain maps."""
    weights = [float(w) for w in coarse_weights]
    if not weights or any(not (math.isfinite(w) and w >= 0) for w in weights):
        raise UsageError(f"coarse-stage weights must be numbers >= 0, got {list(coarse_weights)}")
    if 1.0 not in weights:
        weights.insert(0, 1.0)  # the plain maps are always a candidate: a weight must beat them
    plain_backend = backend_with({})
    stage = coarse_stage(plain_backend) if len(weights) > 1 else None
    if len(weights) > 1 and stage is None:
        raise UsageError("the model's features do not split into two or more backbone stages "
                         "(model.feature_stages): its maps have no coarse stage to weigh; pass --coarse-weights 1")
    results: dict[float, Calibration] = {}
    for weight in weights:
        if weight == 1.0:
            backend = plain_backend
        else:
            classes = list(plain_backend.meta.classes)
            backend = backend_with({f: {stage: weight} for f in classes})
        compute_maps(backend, data)  # this weight's maps, whatever `data` held before
        results[weight] = calibrate_levels(backend, data, min_gain=min_gain, **options)
    base = results[1.0]
    if len(results) == 1:
        return base

    def acc(result: Calibration, finding: str) -> float:
        return result.table[finding][result.levels[finding]]

    chosen: dict[str, float] = {}
    for finding in base.levels:
        need = min_gain_boxes(base.boxes[finding], min_gain) / base.boxes[finding]
        best = max(weights, key=lambda w: (round(acc(results[w], finding), 12), -abs(w - 1.0)))
        if acc(results[best], finding) - acc(base, finding) >= need - 1e-12:
            chosen[finding] = best
    weight_table = {f: {w: acc(results[w], f) for w in weights} for f in base.levels}
    return _at_weights(results, chosen, stage, weight_table=weight_table)


def _at_weights(results: Mapping[float, Calibration], chosen: Mapping[str, float], stage: str,
                **extra: Any) -> Calibration:
    """One calibration from each candidate weight's (`results`, weight 1 among them): each finding's levels, shapes
    and Acc at its `chosen` weight (1 where it has none), and the stage weights other than 1."""
    base = results[1.0]
    pick = {f: results[chosen.get(f, 1.0)] for f in base.table}  # each finding's calibration at its weight
    levels = {f: pick[f].levels[f] for f in base.levels}
    table = {f: pick[f].table[f] for f in base.table}
    plain = {f: pick[f].plain[f] for f in base.plain}
    shapes = {f: pick[f].shapes[f] for f in levels if f in pick[f].shapes}
    stage_weights = {f: {stage: w} for f, w in chosen.items() if w != 1.0}
    box_config = replace(base.box_config, finding_levels=dict(levels),
                         finding_shapes={f: list(v) for f, v in shapes.items()} or None)
    return replace(base, levels=levels, table=table, plain=plain, shapes=shapes, box_config=box_config,
                   stage_weights=stage_weights, stage=stage, by_weight=dict(results), **extra)


@dataclass
class SizeSearch:
    """The per-finding calibration at each candidate input size, and the size chosen (`calibrate_input_size`)."""

    size: int
    trained: int
    results: dict[int, Calibration]
    tolerance: float = 0.0

    @property
    def calibration(self) -> Calibration:
        return self.results[self.size]

    def lines(self) -> list[str]:
        out = [f"{'size':>6}{'macro Acc':>11}"]
        for size, result in self.results.items():
            notes = [n for n, yes in (("trained", size == self.trained), ("chosen", size == self.size)) if yes]
            out.append(f"{size:>6}{result.macro:>11.3f}" + (f"   {', '.join(notes)}" if notes else ""))
        return out


def calibrate_input_size(backend_at: Callable[[int, dict[str, dict[str, float]]], Any],
                         data_at: Callable[[int], BoxedSet], sizes: Sequence[int], *, trained: int,
                         tolerance: float = 0.0, on_size: Callable[[int, Calibration], None] | None = None,
                         **options: Any) -> SizeSearch:
    """Per-finding levels, shapes and stage weights (`calibrate_maps` with `options`) at each of `sizes`, with the
    backend and the validation images made for that size by `backend_at(size, stage_weights)` and
    `data_at(size)`. The size with the best macro
    mean Acc over its calibrated findings is chosen (ties: the one closest to `trained`, then the smaller); with
    a `tolerance` > 0, the smallest size within `tolerance` of the best (the model's time grows with the pixels).
    `on_size(size, calibration)` sees each result as it comes."""
    if not sizes:
        raise UsageError("calibrate_input_size: no candidate size")
    results: dict[int, Calibration] = {}
    for size in sizes:
        result = calibrate_maps(lambda weights, size=int(size): backend_at(size, weights), data_at(int(size)),
                                **options)
        if not result.levels:
            raise UsageError(f"no finding has enough ground-truth boxes to calibrate at {size} px: "
                             "an input size cannot be chosen (lower --min-boxes or add validation images)")
        results[int(size)] = result
        if on_size is not None:
            on_size(int(size), result)
    best = max(r.macro for r in results.values())
    near = [s for s, r in results.items() if r.macro >= best - tolerance - 1e-12]
    chosen = min(near) if tolerance > 0 else \
        max(near, key=lambda s: (round(results[s].macro, 12), -abs(s - trained), -s))
    return SizeSearch(chosen, int(trained), results, tolerance)


def write_calibrated(checkpoint: str | Path, out: str | Path, calibration: Calibration, *,
                     source: Mapping[str, Any], sizes: SizeSearch | None = None,
                     regression: RegressorFit | None = None) -> Path:
    """A copy of `checkpoint` whose settings record (`miner.settings`) holds the calibration's recipe, mining
    settings and box settings with the calibrated ``finding_levels`` (and where they came from, ``calibration``).
    With `sizes` (a `SizeSearch` whose chosen calibration is `calibration`), the record's ``input_size`` becomes the
    chosen size, the size it was trained at is kept as ``trained_input_size``, and ``calibration.input_sizes`` holds
    each candidate's macro Acc. With `regression` (`calibrate_regressors` on the chosen size's maps), the box
    settings record its regressors and ``calibration.regressors`` the validation Acc before and after."""
    from miner.models.checkpoint import read_checkpoint, write_record
    from miner.settings import InferenceSettings

    record = read_checkpoint(checkpoint)
    settings = InferenceSettings.from_checkpoint(record, source=str(checkpoint))
    if sizes is not None:
        if sizes.calibration is not calibration:
            raise ValueError("write_calibrated: `calibration` is not the size search's chosen one")
        trained = settings.trained_input_size if settings.trained_input_size is not None else settings.input_size
        settings = replace(settings, input_size=int(sizes.size), trained_input_size=trained)
    # the maps the levels were fitted on: these stage weights, or none
    boxes = calibration.box_config
    if regression is not None:
        boxes = replace(boxes, regressors=dict(regression.regressors) or None)
    settings = replace(settings, recipe=calibration.recipe, method=calibration.method, mining=calibration.mining,
                       boxes=boxes, stage_weights=dict(calibration.stage_weights) or None)
    record = settings.into_checkpoint(record)
    record["calibration"] = {**dict(source), "iou": calibration.iou, "levels": dict(calibration.levels),
                             "shapes": {f: list(v) for f, v in calibration.shapes.items()},
                             "plain_acc": {f: {f"{lv:g}": a for lv, a in accs.items()}
                                           for f, accs in calibration.plain.items()},
                             "boxes": dict(calibration.boxes),
                             "acc": {f: {f"{lv:g}": a for lv, a in accs.items()}
                                     for f, accs in calibration.table.items()}}
    if calibration.weight_table:
        record["calibration"]["stage_weight_acc"] = {
            "stage": calibration.stage, "chosen_by": "boxes" if calibration.box_weight_table else "levels",
            "acc": {f: {f"{w:g}": a for w, a in accs.items()} for f, accs in calibration.weight_table.items()}}
        if calibration.box_weight_table:
            record["calibration"]["stage_weight_acc"]["boxes_acc"] = {
                "iou": OOF_IOU, "folds": "out of fold",
                "acc": {f: {f"{w:g}": a for w, a in accs.items()} for f, accs in calibration.box_weight_table.items()}}
    if regression is not None:
        record["calibration"]["regressors"] = {"before": regression.before, "after": regression.after,
                                               "candidates": regression.candidates}
    if sizes is not None:
        record["calibration"]["input_sizes"] = {str(s): r.macro for s, r in sizes.results.items()}
    return write_record(out, record)


@dataclass
class RegressorFit:
    """Per-finding box regressors fitted on validation images (`calibrate_regressors`) and their validation Acc:
    finding -> {"0.3": ..., "0.5": ...} with the calibrated boxes (``before``) and the regressed ones (``after``;
    in-sample: the same images fitted them)."""

    regressors: dict[str, Any]
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    candidates: dict[str, int]
    #: finding -> out-of-fold Acc at T(IoU) ``OOF_IOU`` of the refined boxes (`refinement_oof`; with ``score=True``)
    oof: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{'finding':<14}{'steps':>6}  Acc@0.3 before/after  Acc@0.5 before/after"]
        for f in sorted(self.before):
            b, a = self.before[f], self.after.get(f, self.before[f])
            tail = "" if f in self.regressors else "   (no regressor: too few boxes)"
            if f in self.oof:
                tail += f"   (out of fold: {self.oof[f]:.2f})"
            out.append(f"{f:<14}{self.candidates.get(f, 0):>6}      {b['0.3']:.2f} / {a['0.3']:.2f}"
                       f"           {b['0.5']:.2f} / {a['0.5']:.2f}{tail}")
        return out

    def only(self, findings: Sequence[str]) -> RegressorFit:
        """The fit of `findings` alone (every finding's numbers are its own: a finding's maps, candidates and
        regressions do not depend on another's)."""
        keep = set(findings)

        def sub(d: Mapping[str, Any]) -> dict[str, Any]:
            return {f: v for f, v in d.items() if f in keep}

        return RegressorFit(sub(self.regressors), sub(self.before), sub(self.after), sub(self.candidates),
                            sub(self.oof))


#: folds of the validation images: the refinement learns from each fold's boxes as a first stage fitted on the
#: other folds gives them (cross-fitting: boxes as unseen images get them, not as tight as on the images it fitted)
REFINE_FOLDS = 4


def calibrate_regressors(backend: Any, data: BoxedSet, calibration: Calibration, *,
                         min_boxes: int = 10, refine: bool = True, folds: int = REFINE_FOLDS,
                         score: bool = False) -> RegressorFit:
    """Fit ``boxes.regressors`` (`miner.box_regression`) on `data` under `calibration`'s recipe, mining and box
    settings (the backend opened with its stage weights, at its input size): every mining step of every labelled
    finding with boxes is one candidate. Findings with fewer than `min_boxes` ground-truth boxes get none. With
    `refine`, each finding's refinement is fitted on the boxes of `folds` folds of the batches, each as the first
    stage fitted on the other folds gives them (`_fit_refinements`); with `score` too, the refined boxes are scored
    out of fold (`refinement_oof`: ``RegressorFit.oof``)."""
    import torch

    from miner.box_regression import candidates, fit_regressor
    from miner.boxes import work_size
    from miner.metrics.hits import found_per_finding, group_boxes
    from miner.pipeline import Pipeline

    base = replace(calibration.box_config, regressors=None)
    pipeline = Pipeline(backend, mining=calibration.mining, boxes=base, recipe=calibration.recipe or None)
    if pipeline.box_config.rule != "steps":
        raise UsageError(f"box regressors apply to the 'steps' rule only; the recipe reads boxes with "
                         f"{pipeline.box_config.rule!r}")
    if not data.maps:
        compute_maps(backend, data)
    feats: dict[str, list[Any]] = defaultdict(list)
    refs: dict[str, list[Any]] = defaultdict(list)
    truth: dict[str, list[Any]] = defaultdict(list)
    origin: dict[str, list[int]] = defaultdict(list)  # each candidate's batch
    index_of = {id(batch): i for i, batch in enumerate(data.batches)}
    images_of = {id(batch): images for batch, (images, _) in zip(data.batches, data.maps)}

    def collect(batch: Any, mined: Any, chosen: np.ndarray) -> None:
        pairs = torch.as_tensor(np.argwhere(chosen), dtype=torch.long)
        if not len(pairs):
            return
        h, w = mined.step_maps.shape[-2:]
        hw, ww = work_size((h, w), pipeline.box_config)
        cand = candidates(mined.step_maps, mined.masks, pairs, (hw, ww), images_of[id(batch)])
        for i, (b, c) in enumerate(pairs.tolist()):
            finding = pipeline.class_names[c]
            height, width = (float(v) for v in batch.sizes[b])
            gts = torch.tensor([(x * ww / width, y * hw / height, (x + bw) * ww / width, (y + bh) * hw / height)
                                for x, y, bw, bh in data.gt.get((batch.image_ids[b], finding), [])],
                               dtype=torch.float64).reshape(-1, 4)
            for t in range(cand.live.shape[1]):
                if bool(cand.live[i, t]):
                    feats[finding].append(cand.features[i, t])
                    refs[finding].append(cand.ref[i, t])
                    truth[finding].append(gts)
                    origin[finding].append(index_of[id(batch)])

    rows = mine_set(pipeline, data, on_batch=collect)
    counts: dict[str, int] = defaultdict(int)  # ground-truth boxes per finding
    for (_, finding), boxes in data.gt.items():
        counts[finding] += len(boxes)

    def fit(held: set[int]) -> dict[str, Any]:
        """The first stage fitted on every batch but those `held` out."""
        out: dict[str, Any] = {}
        for finding in sorted(feats):
            if counts.get(finding, 0) < min_boxes:
                continue
            keep = [j for j, i in enumerate(origin[finding]) if i not in held]
            if len(keep) < 2:
                continue
            reg = fit_regressor(torch.stack([feats[finding][j] for j in keep]),
                                torch.stack([refs[finding][j] for j in keep]), [truth[finding][j] for j in keep])
            if reg is not None:
                out[finding] = reg.to_record()
        return out

    regressors = fit(set())

    def accs(rows_: Sequence[tuple]) -> dict[str, dict[str, float]]:
        pred = group_boxes((r[0], r[1], r[2], r[4]) for r in rows_)
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for level in (0.3, 0.5):
            for f, (hit, n) in found_per_finding(pred, data.gt, level).items():
                out[f][f"{level:g}"] = hit / n
        return dict(out)

    before = accs(rows)
    pipeline.box_config = replace(base, regressors=regressors or None)
    oof: dict[str, float] = {}
    if regressors and refine:
        regressors, samples = _fit_refinements(pipeline, data, regressors, fit, folds)
        pipeline.box_config = replace(base, regressors=regressors)
        if score:
            oof = refinement_oof(samples, iou=OOF_IOU)
    after = accs(mine_set(pipeline, data)) if regressors else before
    return RegressorFit(regressors, before, after, {f: len(v) for f, v in feats.items()}, oof)


def calibrate_box_weights(backend_with: Callable[[dict[str, dict[str, float]]], Any], data: BoxedSet,
                          calibration: Calibration, *, min_boxes: int = 10, min_gain: float = 0.02,
                          folds: int = REFINE_FOLDS) -> tuple[Calibration, RegressorFit]:
    """Each finding's weight of the coarsest stage in its map chosen by the boxes the product gives, not by the
    levels' boxes (module docstring): for every candidate weight `calibrate_maps` tried (``calibration.by_weight``)
    the box regressors and their refinement are fitted on `data` with every finding's map at that weight
    (`calibrate_regressors`), and the refined boxes scored out of fold at T(IoU) ``OOF_IOU``
    (`refinement_oof`). A finding takes the weight whose boxes find the most lesions where that beats its weight
    by the levels (`calibrate_maps`' choice) by at least `min_gain` of its boxes (ties: the weight nearest that
    one); its levels and shapes are those calibrated at the weight, its regressors those fitted at it (a finding's
    maps, candidates and regressions do not depend on another's). With a single candidate weight this is
    `calibrate_regressors` at the calibration's weights.

    `backend_with(stage_weights)` opens the model at `data`'s image size. Returns the calibration at the chosen
    weights (``box_weight_table``: finding -> weight -> out-of-fold Acc) and the regressors fitted at them."""
    stage = calibration.stage
    weights = sorted(calibration.by_weight, reverse=True)
    if len(weights) < 2 or not stage:
        backend = backend_with(dict(calibration.stage_weights))
        compute_maps(backend, data)
        fit = calibrate_regressors(backend, data, calibration, min_boxes=min_boxes, folds=folds, score=True)
        data.maps = []
        return calibration, fit
    plain = backend_with({})
    classes = list(plain.meta.classes)
    fits: dict[float, RegressorFit] = {}
    for weight in weights:
        backend = plain if weight == 1.0 else backend_with({f: {stage: weight} for f in classes})
        compute_maps(backend, data)  # this weight's maps for every finding
        fits[weight] = calibrate_regressors(backend, data, calibration.by_weight[weight], min_boxes=min_boxes,
                                            folds=folds, score=True)
    data.maps = []  # the last weight's maps: not the chosen ones
    chosen: dict[str, float] = {}
    table: dict[str, dict[float, float]] = {}
    for finding in classes:
        own = float(calibration.stage_weights.get(finding, {}).get(stage, 1.0))
        scored = {w: fits[w].oof[finding] for w in weights if finding in fits[w].oof}
        if own in scored:
            table[finding] = scored
            boxes = max(1, calibration.boxes.get(finding, 0))
            need = min_gain_boxes(boxes, min_gain) / boxes
            best = max(scored, key=lambda w: (round(scored[w], 12), -abs(w - own)))
            chosen[finding] = best if scored[best] - scored[own] >= need - 1e-12 else own
        elif own != 1.0:
            chosen[finding] = own
    result = _at_weights(calibration.by_weight, chosen, stage, weight_table=calibration.weight_table,
                         box_weight_table=table)
    parts = [fits[chosen.get(f, 1.0)].only([f]) for f in classes]
    fit = RegressorFit(*({k: v for part in parts for k, v in getattr(part, name).items()}
                         for name in ("regressors", "before", "after", "candidates", "oof")))
    return result, fit


def _subset(data: BoxedSet, batches: Sequence[int]) -> BoxedSet:
    """The batches `batches` of `data` (with their maps and ground truth)."""
    chosen = [data.batches[i] for i in batches]
    ids = {i for batch in chosen for i in batch.image_ids}
    return BoxedSet(chosen, {k: v for k, v in data.gt.items() if k[0] in ids}, sum(len(b) for b in chosen),
                    [data.maps[i] for i in batches])


@dataclass
class RefineSample:
    """One validation pair's first-stage boxes for the refinement (`_fit_refinements`): the features of each box's
    moves (Tensor[K, 81, R]), the IoU each move reaches with the pair's nearest lesion (Tensor[K, 81]), the boxes'
    expected IoU (Tensor[K]), which is the pair's first lesion (Tensor[K] bool), which train the move choice
    (Tensor[K] bool), the fold the pair's batch fell in, the moves (Tensor[K, 81, 4]) and the pair's lesions
    (Tensor[G, 4], the tables' pixels). A pair whose finding the first stage boxed nowhere has K = 0."""

    features: Any
    iou: Any
    quality: Any
    first: Any
    train: Any
    fold: int
    moves: Any
    truth: Any

    def fitting(self) -> tuple[Any, ...]:
        return self.features, self.iou, self.quality, self.first, self.train


def refinement_oof(samples: Mapping[str, Sequence[RefineSample]], *, iou: float = OOF_IOU) -> dict[str, float]:
    """Per finding, the out-of-fold Acc at T(IoU) `iou` of the refined boxes: each fold's pairs refined by a move
    choice fitted on the other folds' boxes (`miner.box_regression.fit_refinement`), and the share of their lesions
    that a chosen box overlaps at `iou` or more (every box of the pair, as ``Acc`` with every box; a pair with no
    box finds none). With a single fold: in-sample."""
    import torch

    from miner.box_regression import box_iou, choose_moves, fit_refinement

    out: dict[str, float] = {}
    for finding, pairs in samples.items():
        folds = sorted({p.fold for p in pairs})
        found = lesions = 0
        for fold in folds:
            rest = [p for p in pairs if p.fold != fold and len(p.iou)] if len(folds) > 1 else \
                [p for p in pairs if len(p.iou)]
            if not rest:
                continue
            refine = fit_refinement(*(torch.cat([p.fitting()[j] for p in rest]) for j in range(5)))
            for p in pairs:
                if p.fold != fold:
                    continue
                lesions += len(p.truth)
                if not len(p.iou):
                    continue
                best, _ = choose_moves(refine, p.features)
                boxes = p.moves[torch.arange(len(best)), best]
                found += int((box_iou(boxes, p.truth) >= iou - 1e-12).any(0).sum())
        if lesions:
            out[finding] = found / lesions
    return out


def _fit_refinements(pipeline: Any, data: BoxedSet, regressors: dict[str, Any],
                     fit: Callable[[set[int]], dict[str, Any]], folds: int,
                     ) -> tuple[dict[str, Any], dict[str, list[RefineSample]]]:
    """`regressors` with each finding's refinement (`miner.box_regression.fit_refinement`) fitted on `data`'s
    boxes of pairs with ground truth: the batches split into `folds` folds (by batch index modulo folds; one fold,
    in-sample, where there are fewer than two batches), each fold's boxes as the first stage `fit` on the other folds
    gives them, every move of each with the IoU it reaches; and those boxes (`RefineSample`s, per finding)."""
    import torch

    from miner.box_regression import (
        MIN_TRAIN_IOU,
        REFINE_NAMES,
        Regressor,
        box_iou,
        fit_refinement,
        lesion_boxes,
        read_regressors,
        refine_features,
        refine_moves,
    )
    from miner.boxes import work_size

    samples: dict[str, list[RefineSample]] = defaultdict(list)
    images_of = {id(batch): images for batch, (images, _) in zip(data.batches, data.maps)}
    cfg = pipeline.box_config
    n = len(data.batches)
    k = max(1, min(int(folds), n)) if n >= 2 else 1
    for fold in range(k):
        held = [i for i in range(n) if i % k == fold]
        records = fit(set(held)) if k > 1 else regressors
        stage = read_regressors(records)

        def capture(batch: Any, mined: Any, chosen: np.ndarray, stage: dict[str, Any] = stage,
                    fold: int = fold) -> None:
            pairs = torch.as_tensor(np.argwhere(chosen), dtype=torch.long)
            if not len(pairs):
                return
            hw, ww = work_size(tuple(mined.step_maps.shape[-2:]), cfg)
            found = lesion_boxes(mined.step_maps, mined.masks, pairs, work=(hw, ww), regressors=stage,
                                 classes=pipeline.class_names, dedup_iou=cfg.dedup_iou,
                                 images=images_of[id(batch)], tables=True)
            if found is None:
                return
            for i, (b, _) in enumerate(found.pairs.tolist()):
                gts = data.gt.get((batch.image_ids[b], found.finding[i]), [])
                live = found.ok[i]
                if not gts:
                    continue  # what a pair without ground truth holds is unknown: it trains nothing
                height, width = (float(v) for v in batch.sizes[b])
                to_table = found.to_image * torch.tensor([ww / width, hw / height] * 2, dtype=torch.float64)
                truth = torch.tensor([(x, y, x + w, y + h) for x, y, w, h in gts], dtype=torch.float64) * to_table
                if not bool(live.any()):  # no box: it trains nothing, and its lesions are missed
                    none = refine_moves(torch.zeros(0, 4, dtype=torch.float64))  # [0, 81, 4]
                    samples[found.finding[i]].append(RefineSample(
                        none.new_zeros(*none.shape[:2], len(REFINE_NAMES)), none[..., 0],
                        none.new_zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool),
                        fold, none, truth))
                    continue
                boxes = found.boxes[i][live] * found.to_image  # [K, 4] the tables' pixels
                moved = refine_moves(boxes)  # [K, 81, 4]
                kk = len(boxes)
                f = refine_features(found.tables, torch.full((kk,), b), found.maps, torch.full((kk,), i), moved,
                                    boxes.unsqueeze(-2))
                iou = box_iou(moved.reshape(-1, 4), truth).amax(1).reshape(kk, -1)
                first = torch.zeros(kk, dtype=torch.bool)
                first[0] = bool(live[0])
                samples[found.finding[i]].append(RefineSample(f, iou, found.quality[i][live], first,
                                                              iou[:, 0] >= MIN_TRAIN_IOU, fold, moved, truth))

        held_out = _subset(data, held)
        before = pipeline.box_config
        pipeline.box_config = replace(cfg, regressors=records or None)
        try:
            mine_set(pipeline, held_out, on_batch=capture)
        finally:
            pipeline.box_config = before
    out = dict(regressors)
    for finding, parts in samples.items():
        parts = [p for p in parts if len(p.iou)]
        if finding not in regressors or not parts:
            continue
        refine = fit_refinement(*(torch.cat([p.fitting()[j] for p in parts]) for j in range(5)))
        reg = Regressor.from_record(finding, regressors[finding])
        out[finding] = Regressor(reg.mean, reg.scale, reg.box, reg.quality, refine).to_record()
    return out, {f: v for f, v in samples.items() if f in regressors}


def group_rows(rows: Sequence[tuple]) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """`mine_set` rows as image_id -> finding -> boxes (x0, y0, x1, y1, original pixels)."""
    out: dict[str, dict[str, list[tuple[float, float, float, float]]]] = defaultdict(lambda: defaultdict(list))
    for image_id, finding, _, _, (x, y, w, h) in rows:
        out[image_id][finding].append((x, y, x + w, y + h))
    return out
