"""`miner bench localize`: how well boxes land on lesions, one row per recipe (model x mining x boxes).

Every row mines the positive images of unseen phantom archives for their labelled findings (as ``miner mine
--classes labels``, through `miner.pipeline.Pipeline`: the job's own code) and is scored four ways, per finding
and as the macro mean over the findings with boxes:

- **Acc** at T(IoU) 0.1 / 0.3 / 0.5 with every box of the ranked list B (the seed's Table 3; at most
  ``max_boxes`` per image and finding), and at T(IoU) 0.3 with Wang et al.'s AFP bounds (Table 2's selection);
- **pointing game**: the maximum of the fused map H_f (upsampled as the boxes are, placed as the boxes are)
  lies inside a ground-truth box of the finding, per image and finding;
- **box size**: the median over image-findings of (rank-1 box area) / (area of the ground-truth box it overlaps
  most);
- **multi-lesion**: Acc at T(IoU) 0.3 with every box on the image-findings with two or more lesions, mined at
  T = 1, 2 and 3 with the row's other settings (does mining find the second lesion?).

and, for boxes tight enough to train a detector on (issue 25; the "tight boxes" tables):

- **COCO AP50 and AP** (IoU 0.50:0.95) per finding, by ``miner eval``'s own code and convention
  (`miner.metrics.job.job_coco`, its default `EvalConfig`; the images convention from the archive's
  ``exhaustive``, as ``miner eval --archive``: ``boxed`` for these phantom archives), on every scored image;
- **nested**: the share of image-findings with two or more boxes in which one box holds another or lies inside
  it, their intersection over the smaller box's area >= 0.9 (`miner.metrics.tightness`; target below 2 %);
- **large found@3**: of the ground-truth boxes whose area lies above the 0.75 quantile of their finding's
  ground-truth box areas in the scored archive, the share found at T(IoU) 0.3 by a box of rank <= 3 of the same
  image and finding (does a rule that drops nested boxes lose the large lesions?).

Archives: ``plain`` phantoms (seed ``--seed``) and ``real`` ones drawn on the pydicom-data radiograph
(``--real-background``, seed ``--real-seed``), ``--images`` each, never seen in training (the embedded model and
``scripts/train_default_model.sh`` train on seeds 0 and 3). Rows::

    miner bench localize --row seed=runs/paper/models/am-kp.pt --row peaks=miner/assets/default_model.pt \\
        --row "peaks, levels boxes=miner/assets/default_model.pt:boxes.rule=levels,boxes.align_cells=false"

``LABEL=MODEL[:KEY=VALUE,...]``: the model's own recipe record unless overridden; keys ``recipe`` (a named
recipe's mining and box settings), ``method`` (the class-map method), ``maps=plain`` (the maps without the
model's calibrated stage weights), ``mining.<field>`` (`miner.config.MiningConfig`) and ``boxes.<field>``
(`BoxConfig`).
Without ``--row`` the embedded model is scored with its own settings and with the seed's (``recipe=cai2018``).
Maps are computed once per model and archive; rows that share a model reuse them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HELP = ("box quality per recipe: Acc at T(IoU) 0.1/0.3/0.5, pointing game, box size, multi-lesion Acc at T=1,2,3, "
        "COCO AP50/AP, nested boxes, large lesions found")
DESCRIPTION = __doc__

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax")
SHORT = {"Atelectasis": "AT", "Cardiomegaly": "CM", "Effusion": "PE", "Infiltration": "Inf", "Mass": "Mass",
         "Nodule": "Nod", "Pneumonia": "PNA", "Pneumothorax": "PTx"}
LEVELS = (0.1, 0.3, 0.5)
MULTI_STEPS = (1, 2, 3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--row", action="append", default=[], metavar="LABEL=MODEL[:KEY=VALUE,...]",
                        help="a row (repeatable; module help); default: the embedded model, own settings and cai2018")
    parser.add_argument("--out", default="runs/localize", help="working folder: archives, results.json, tables.txt")
    parser.add_argument("--images", type=int, default=600, help="images per archive (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="phantom side (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="plain phantoms' seed (default: %(default)s)")
    parser.add_argument("--real-seed", type=int, default=2,
                        help="real-background phantoms' seed (default: %(default)s)")
    parser.add_argument("--archives", default="plain,real", help="which archives: plain, real or both (default)")
    parser.add_argument("--batch-size", type=int, default=32)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from miner.demo import default_model_path

    specs = [parse_row(text) for text in args.row] or [
        RowSpec("embedded, own settings", str(default_model_path())),
        RowSpec("embedded, cai2018 mining+boxes", str(default_model_path()), {"recipe": "cai2018"}),
    ]
    kinds = [k.strip() for k in args.archives.split(",") if k.strip()]
    result = run_localize(args.out, specs, images=args.images, size=args.size, seed=args.seed,
                          real_seed=args.real_seed, kinds=kinds, batch_size=args.batch_size)
    print(result.tables, flush=True)
    print(f"miner bench localize: {len(specs)} row(s) x {len(kinds)} archive(s) in {result.seconds:.0f} s -> "
          f"{Path(args.out) / 'tables.txt'}, results.json", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------- rows


@dataclass
class RowSpec:
    """One row: a label, a model file, and overrides of its inference settings (``recipe``, ``method``,
    ``maps=plain``: without the model's stage weights, ``mining.*``, ``boxes.*``)."""

    label: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """Pipeline keyword options: recipe, mining (dict of overrides), boxes (dict of overrides)."""
        out: dict[str, Any] = {"recipe": None, "method": None, "plain_maps": False, "mining": {}, "boxes": {}}
        for key, value in self.overrides.items():
            if key in ("recipe", "method"):
                out[key] = value
            elif key == "maps":
                out["plain_maps"] = value == "plain"
            else:
                part, name = key.split(".", 1)
                out[part][name] = value
        return out


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "/" in text:  # thresholds as 0.3/0.5/0.7
        return tuple(float(v) for v in text.split("/"))
    return text


def parse_row(text: str) -> RowSpec:
    """``LABEL=MODEL[:KEY=VALUE,...]`` -> RowSpec (UsageError for anything else)."""
    from miner.errors import UsageError

    if "=" not in text:
        raise UsageError(f"--row {text!r}: expected LABEL=MODEL[:KEY=VALUE,...]")
    label, rest = text.split("=", 1)
    model, _, opts = rest.partition(":")
    if not Path(model).is_file():
        raise UsageError(f"--row {label!r}: model file {model} does not exist")
    overrides: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in opts.split(","))):
        key, sep, value = item.partition("=")
        if key.strip() == "maps" and value.strip() != "plain":
            raise UsageError(f"--row {label!r}: option {item!r}: maps= takes 'plain' (the maps without the model's "
                             "stage weights)")
        if not sep or not (key in ("recipe", "method", "maps")
                           or key.split(".", 1)[0] in ("mining", "boxes") and "." in key):
            raise UsageError(f"--row {label!r}: option {item!r} must be recipe=NAME, method=NAME, maps=plain, "
                             "mining.FIELD=V or boxes.FIELD=V")
        overrides[key.strip()] = _value(value)
    return RowSpec(label.strip(), model, overrides)


# ------------------------------------------------------------------------------------------------- scores


@dataclass
class RowResult:
    label: str
    kind: str
    acc: dict[str, dict[str, float]]  # level -> finding -> Acc (every box)
    bounded: dict[str, float]  # finding -> Acc at 0.3 with Wang's AFP bounds
    pointing: dict[str, float]
    area_ratio: float
    multi: dict[int, dict[str, float]]  # T -> finding -> Acc at 0.3 on multi-lesion pairs
    settings: dict[str, Any]
    ap50: dict[str, float] = field(default_factory=dict)  # finding -> COCO AP50 (miner eval's job_coco)
    ap: dict[str, float] = field(default_factory=dict)  # finding -> COCO AP (IoU 0.50:0.95)
    coco_negatives: str = ""  # the COCO images convention used (all / boxed)
    nested: dict[str, float] = field(default_factory=dict)  # finding -> share of image-findings with nested boxes
    nested_pairs: dict[str, tuple[int, int]] = field(default_factory=dict)  # -> (nested, with >= 2 boxes)
    large3: dict[str, float] = field(default_factory=dict)  # finding -> large lesions found at 0.3, rank <= 3
    large3_lesions: dict[str, tuple[int, int]] = field(default_factory=dict)  # -> (found, large lesions)
    large_area: dict[str, float] = field(default_factory=dict)  # finding -> area above which a lesion is large


def score_row(spec: RowSpec, backend: Any, data: Any, kind: str, *, exhaustive: bool = False) -> RowResult:
    """Mine `data` (a `miner.calibrate.BoxedSet` with maps) with `backend` under `spec`'s settings; `exhaustive`:
    the archive's readers saw every image (`miner.data.Archive.exhaustive`: COCO's images convention)."""
    from dataclasses import replace

    from miner.calibrate import mine_set
    from miner.config import EvalConfig
    from miner.metrics import BoxTable, default_bounds, localization_table
    from miner.metrics.hits import found_share, group_boxes, rank1_area_ratio
    from miner.metrics.job import job_coco
    from miner.metrics.tightness import (
        LARGE_QUANTILE,
        large_areas,
        large_found_per_finding,
        nested_per_finding,
        shares,
    )
    from miner.pipeline import Pipeline

    settings = spec.settings()
    pipeline = Pipeline(backend, mining=settings["mining"] or None, boxes=settings["boxes"] or None,
                        recipe=settings["recipe"])
    steps_main = pipeline.mining.steps
    base_mining = pipeline.mining
    preds: dict[int, dict] = {}
    rows_main: list[tuple] = []
    pointing_hits: dict[str, list[bool]] = defaultdict(list)
    for t in sorted(set(MULTI_STEPS) | {steps_main}):
        pipeline.mining = replace(base_mining, steps=t)

        def point(batch: Any, mined: Any, chosen: np.ndarray) -> None:
            _pointing(pointing_hits, mined.fused, batch, chosen, pipeline, data.gt)

        rows = mine_set(pipeline, data, on_batch=point if t == steps_main else None)
        preds[t] = group_boxes((r[0], r[1], r[2], r[4]) for r in rows)
        if t == steps_main:
            rows_main = rows
    main = preds[steps_main]
    keys = sorted(data.gt)
    acc = {f"{lv:g}": found_share(main, data.gt, lv, keys) for lv in LEVELS}
    table = BoxTable.from_columns([r[0] for r in rows_main], [r[1] for r in rows_main],
                                  *(np.asarray([r[4][i] for r in rows_main], float) for i in range(4)),
                                  rank=[r[2] for r in rows_main], score=[r[3] for r in rows_main])
    gt_rows = [(k[0], k[1], *b) for k in keys for b in data.gt[k]]
    gt_table = BoxTable.from_columns([g[0] for g in gt_rows], [g[1] for g in gt_rows],
                                     *(np.asarray([g[i] for g in gt_rows], float) for i in range(2, 6)))
    findings = [f for f in FINDINGS if any(k[1] == f for k in keys)]
    cfg = replace(EvalConfig(), iou_thresholds=(0.3,), iobb_thresholds=())
    bounded = {r.finding: r.acc for r in localization_table(table, gt_table, config=cfg, bounds=default_bounds(),
                                                               findings=findings)}
    # COCO as miner eval scores a job: every image that went through the model, its size, the archive's convention
    images = [i for batch in data.batches for i in batch.image_ids]
    sizes = {i: (int(s[0]), int(s[1])) for batch in data.batches for i, s in zip(batch.image_ids, batch.sizes)}
    coco = job_coco(table, gt_table, images=images, findings=findings, config=EvalConfig(), sizes=sizes,
                    exhaustive=exhaustive)
    nested = nested_per_finding(main)
    large = large_found_per_finding(main, data.gt, level=0.3, max_rank=3, quantile=LARGE_QUANTILE)
    return RowResult(
        label=spec.label, kind=kind, acc=acc, bounded=bounded,
        pointing={f: float(np.mean(v)) for f, v in pointing_hits.items()},
        area_ratio=rank1_area_ratio(main, data.gt),
        multi={t: found_share(preds[t], data.gt, 0.3, data.multi) for t in MULTI_STEPS},
        settings={"recipe": pipeline.recipe, "mining": asdict(base_mining), "boxes": asdict(pipeline.box_config)},
        ap50={r.finding: r.ap50 for r in coco.results}, ap={r.finding: r.ap for r in coco.results},
        coco_negatives=coco.convention, nested=shares(nested), nested_pairs=nested, large3=shares(large),
        large3_lesions=large, large_area=large_areas(data.gt, LARGE_QUANTILE),
    )


def _pointing(hits: dict[str, list[bool]], fused: Any, batch: Any, chosen: np.ndarray, pipeline: Any,
              gt: dict) -> None:
    """Pointing game on H_f: its maximum, upsampled and placed as the boxes are, inside a GT box of the pair."""
    import torch
    from torch.nn import functional as F

    from miner.boxes import work_size
    from miner.metrics.hits import inside

    h, w = fused.shape[-2:]
    hw, ww = work_size((h, w), pipeline.box_config)
    dy, dx = pipeline.shift if pipeline.box_config.align_cells else (0.0, 0.0)
    for b, c in zip(*np.nonzero(chosen)):
        key = (batch.image_ids[b], pipeline.class_names[c])
        if key not in gt:
            continue
        m = F.interpolate(fused[b, c][None, None].float(), size=(hw, ww), mode="bilinear", align_corners=False)[0, 0]
        r, q = divmod(int(torch.argmax(m)), ww)
        height, width = (float(v) for v in batch.sizes[b])
        y = (r + 0.5 + dy * hw / h) * height / hw
        x = (q + 0.5 + dx * ww / w) * width / ww
        hits[key[1]].append(inside((x, y), gt[key]))


def eval_archive(out: Path, kind: str, *, images: int, size: int, seed: int) -> Path:
    """The phantom archive of one kind (generated once into `out`)."""
    from miner.phantoms import make_phantoms

    path = out / f"{kind}-{images}-{size}-{seed}"
    if not (path / "Data_Entry_2017.csv").is_file():
        make_phantoms(path, images=images, size=size, seed=seed, real_background=kind == "real", overwrite=True)
    return path


# ------------------------------------------------------------------------------------------------- run


@dataclass
class LocalizeResult:
    rows: list[RowResult]
    tables: str
    seconds: float


def run_localize(out: str | Path, specs: Sequence[RowSpec], *, images: int = 600, size: int = 256, seed: int = 1,
                 real_seed: int = 2, kinds: Sequence[str] = ("plain", "real"), batch_size: int = 32,
                 log: Callable[[str], None] | None = None) -> LocalizeResult:
    """Score every row on every archive kind (module docstring); writes ``tables.txt`` and ``results.json``."""
    from miner.backends import open_backend
    from miner.calibrate import compute_maps, load_boxed_set
    from miner.data import read_archive
    from miner.errors import UsageError

    log = log or (lambda text: print(text, flush=True))
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        if kind not in ("plain", "real"):
            raise UsageError(f"--archives: {kind!r} is neither plain nor real")
    paths = {kind: eval_archive(out, kind, images=images, size=size, seed=seed if kind == "plain" else real_seed)
             for kind in kinds}
    exhaustive = {kind: bool(read_archive(paths[kind]).exhaustive) for kind in kinds}
    results: list[RowResult] = []
    by_model: dict[tuple[str, str | None, bool], list[RowSpec]] = defaultdict(list)
    for spec in specs:
        by_model[(spec.model, spec.settings()["method"], spec.settings()["plain_maps"])].append(spec)
    for (model, method, plain_maps), group in by_model.items():
        backend = open_backend(model, backend="torch", device="cpu", method=method, plain_maps=plain_maps)
        for kind in kinds:
            data = compute_maps(backend, load_boxed_set([paths[kind]], backend.meta.input_size,
                                                        batch_size=batch_size))
            for spec in group:
                log(f"[localize] {spec.label} on {kind} phantoms ({data.images} positive images)")
                results.append(score_row(spec, backend, data, kind, exhaustive=exhaustive[kind]))
    tables = format_tables(results, kinds)
    (out / "tables.txt").write_text(tables + "\n")
    (out / "results.json").write_text(json.dumps([_json(r) for r in results], indent=1))
    return LocalizeResult(results, tables, time.perf_counter() - start)


def _json(r: RowResult) -> dict[str, Any]:
    from miner.io import json_safe

    return json_safe(asdict(r))


def macro(values: dict[str, float]) -> float:
    from miner.metrics.hits import macro as mean_of

    return mean_of(values, FINDINGS)


def format_tables(results: Sequence[RowResult], kinds: Sequence[str]) -> str:
    """One summary table per archive kind (macro means) and one per-finding table of Acc at T(IoU) = 0.3."""
    text = []
    for kind in kinds:
        rows = [r for r in results if r.kind == kind]
        if not rows:
            continue
        width = max(len(r.label) for r in rows) + 2
        head = (f"{'':<{width}}{'Acc@0.1':>8}{'Acc@0.3':>8}{'Acc@0.5':>8}{'AFP-b@.3':>9}{'point':>7}{'area':>6}"
                f"{'multi T=1':>10}{'T=2':>6}{'T=3':>6}{'T3-T1':>7}")
        text += [f"{kind} phantoms: macro mean over findings (every box of B unless 'AFP-b': Wang et al.'s bounds; "
                 "area = median rank-1 box / lesion area; multi = Acc@0.3 on multi-lesion image-findings)", head]
        for r in rows:
            multi = [macro(r.multi[t]) for t in MULTI_STEPS]
            text.append(f"{r.label:<{width}}" + "".join(f"{macro(r.acc[f'{lv:g}']):>8.3f}" for lv in LEVELS)
                        + f"{macro(r.bounded):>9.3f}{macro(r.pointing):>7.2f}{r.area_ratio:>6.2f}"
                        + f"{multi[0]:>10.3f}{multi[1]:>6.3f}{multi[2]:>6.3f}{multi[2] - multi[0]:>+7.3f}")
        text.append("")
        text.append(f"{kind} phantoms: Acc at T(IoU)=0.3, every box of B, per finding")
        text.append(f"{'':<{width}}" + "".join(f"{SHORT[f]:>6}" for f in FINDINGS) + f"{'macro':>7}{'min':>6}")
        for r in rows:
            accs = r.acc["0.3"]
            vals = [accs.get(f, math.nan) for f in FINDINGS]
            text.append(f"{r.label:<{width}}" + "".join(f"{v:>6.2f}" for v in vals)
                        + f"{macro(accs):>7.3f}{np.nanmin(vals):>6.2f}")
        text.append("")
        text += tight_tables(rows, kind, width)
    return "\n".join(text).rstrip()


def tight_tables(rows: Sequence[RowResult], kind: str, width: int) -> list[str]:
    """The "tight boxes" lines of one archive kind: macro Acc@0.3/0.5, COCO AP50/AP, nested share, large found@3
    per row, then Acc@0.5 and AP50 per finding (module docstring)."""
    negatives = ", ".join(sorted({r.coco_negatives for r in rows}))
    text = [f"{kind} phantoms: tight boxes, macro mean over findings (Acc every box of B; AP50, AP = COCO as miner "
            f"eval, images {negatives}; nested = image-findings with 2+ boxes where one holds another, intersection "
            ">= 0.9 of the smaller; large@3 = lesions above their finding's 0.75 area quantile found at IoU 0.3 by "
            "rank <= 3)",
            f"{'':<{width}}{'Acc@0.3':>8}{'Acc@0.5':>8}{'AP50':>7}{'AP':>7}{'nested':>8}{'large@3':>8}"]
    for r in rows:
        text.append(f"{r.label:<{width}}{macro(r.acc['0.3']):>8.3f}{macro(r.acc['0.5']):>8.3f}{macro(r.ap50):>7.3f}"
                    f"{macro(r.ap):>7.3f}{_percent(macro(r.nested)):>8}{macro(r.large3):>8.3f}")
    text.append("")
    text.append(f"{kind} phantoms: tight boxes per finding, Acc at T(IoU)=0.5 (every box of B) and COCO AP50")
    text.append(f"{'':<{width}}{'':<9}" + "".join(f"{SHORT[f]:>6}" for f in FINDINGS) + f"{'macro':>7}{'min':>6}")
    for r in rows:
        for name, values in (("Acc@0.5", r.acc["0.5"]), ("AP50", r.ap50)):
            vals = [values.get(f, math.nan) for f in FINDINGS]
            low = min((v for v in vals if not math.isnan(v)), default=math.nan)
            text.append(f"{r.label:<{width}}{name:<9}" + "".join(f"{v:>6.2f}" for v in vals)
                        + f"{macro(values):>7.3f}{low:>6.2f}")
    text.append("")
    return text


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.1f}%"
