"""`miner bench paper`: the structure of Cai et al.'s Tables 2 and 3 and Fig. 2, reproduced on phantoms.

What it runs (all in `DIR`, default ``runs/paper``; a rerun reuses the archives and every finished stage):

1. Two phantom archives (`miner.phantoms.make_phantoms`): ``DIR/train`` (``train_images``, seed ``seed``) to train
   on and ``DIR/eval`` (``eval_images``, seed ``eval_seed``) to mine, unseen by every model. The number of
   images with two or more lesions of a finding (the case attention mining exists for) is counted and printed.
2. One base model (`miner.train`: stages base, msa-init, end2end of a ResNet-18-MSA) and three AM fine-tunings
   from it: ``--kp none`` (every image of a batch erased), ``vanilla`` (the first N/8) and ``kp`` (KP-Vanilla
   plus the knowledge-preservation loss). The seed's "w/o KP, KP-Vanilla, KP".
3. Every model mines the positive images of ``DIR/eval`` for their labelled findings (as ``miner mine
   --classes labels`` does, through `miner.pipeline.Pipeline` in process) at T = 1, 2, 3; the boxes go to
   ``DIR/boxes/<model>_t<T>.parquet`` and are scored with `miner.metrics.localization_table` three ways:
   Wang et al.'s AFP bounds (the seed's Table 2), every box of B (the seed's Table 3) and every box of B on
   the multi-lesion images only (GT restricted to image-finding pairs with two or more lesions).
4. Tables (printed, ``DIR/tables.txt``, every cell in ``DIR/results.json``) and a figure like the seed's Fig. 2
   (``DIR/fig2.png``, `miner.figure`): heatmaps of the steps t = 1, 2, 3 and H_f of the KP model, ground truth
   red, mined boxes green, on multi-lesion cases where T = 3 finds a lesion t = 1 misses, and a failure case.

Table 2 rows: "CAM" is the base model at t = 1 (no AM anywhere: Wang et al.'s approach, the seed's "ref."
analogue), "base." the KP-Vanilla model at t = 1 (the seed's baseline: "the 1st time step of AM with
KP-Vanilla") and "ours" the KP model at T = 3.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from miner.config import PaperConfig, PhantomConfig

HELP = "the seed's Tables 2-3 and Fig. 2 on phantoms: t=1 vs T=3, AM steps, KP vs KP-Vanilla vs none"
DESCRIPTION = __doc__

#: model variants: key -> (label, --kp of its AM fine-tuning or None for the base model)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "base": ("CAM (no AM training)", None),
    "none": ("w/o KP", "none"),
    "vanilla": ("KP-Vanilla", "vanilla"),
    "kp": ("KP", "kp"),
}
SHORT = {"Atelectasis": "AT", "Cardiomegaly": "CM", "Effusion": "PE", "Infiltration": "Infiltra.", "Mass": "Mass",
         "Nodule": "Nodule", "Pneumonia": "PNA", "Pneumothorax": "PTx"}
#: `--quick`: a few-minute run with the same structure (a weaker model: fewer images and epochs)
QUICK = {"train_images": 600, "eval_images": 300, "epochs": 4, "msa_init_epochs": 1, "end2end_epochs": 2,
         "am_epochs": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = PaperConfig()
    parser.add_argument("--out", default="runs/paper", help="working folder (default: %(default)s; reused on rerun)")
    parser.add_argument("--quick", action="store_true",
                        help="a few-minute version: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    parser.add_argument("--train-images", type=int, default=None, help=f"default {d.train_images}")
    parser.add_argument("--eval-images", type=int, default=None, help=f"default {d.eval_images}")
    parser.add_argument("--size", type=int, default=None, help=f"image side = model input (default {d.size})")
    parser.add_argument("--epochs", type=int, default=None, help=f"base epochs (default {d.epochs})")
    parser.add_argument("--msa-init-epochs", type=int, default=None, help=f"default {d.msa_init_epochs}")
    parser.add_argument("--end2end-epochs", type=int, default=None, help=f"default {d.end2end_epochs}")
    parser.add_argument("--am-epochs", type=int, default=None, help=f"default {d.am_epochs}")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {d.batch_size}")
    parser.add_argument("--max-steps", type=int, default=None, help="cap the steps of every epoch (tests)")
    parser.add_argument("--seed", type=int, default=d.seed, help="training archive and training seed")
    parser.add_argument("--eval-seed", type=int, default=d.eval_seed, help="evaluation archive seed")
    parser.add_argument("--figure", default=None, help="also copy the figure here (e.g. docs/paper_fig2.png)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in a DIR made with other settings")


def config_from_args(args: argparse.Namespace) -> PaperConfig:
    cfg = PaperConfig(seed=args.seed, eval_seed=args.eval_seed)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    for key in ("train_images", "eval_images", "size", "epochs", "msa_init_epochs", "end2end_epochs", "am_epochs",
                "batch_size"):
        value = getattr(args, key)
        if value is not None:
            cfg = replace(cfg, **{key: value})
    return cfg


def run(args: argparse.Namespace) -> int:
    # idle OpenMP threads sleep instead of spinning (as `miner train`): set before torch loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    result = run_paper(args.out, config_from_args(args), max_steps=args.max_steps, overwrite=args.overwrite)
    if args.figure and result.figure is not None:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.figure, args.figure)
        print(f"figure copied to {args.figure}")
    print(result.line(), flush=True)
    return 0


# --------------------------------------------------------------------------------------------- results


@dataclass
class PaperResult:
    """Where the outputs are, the cells, and the timings (seconds and load averages per phase)."""

    out: Path
    tables: str
    cells: dict[str, Any]
    multi_lesion: dict[str, int]
    figure: Path | None
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def line(self) -> str:
        total = sum(t["seconds"] for t in self.timings.values())
        return (f"miner bench paper: {total:.0f} s -> {self.out}/tables.txt, results.json"
                + (f", {self.figure.name}" if self.figure else ""))


def _phase(timings: dict, name: str, started: float, load_before: float) -> None:
    timings[name] = {"seconds": round(time.perf_counter() - started, 2), "load_before": round(load_before, 2),
                     "load_after": round(os.getloadavg()[0], 2)}


def multi_lesion_pairs(boxes: Sequence[Any]) -> dict[tuple[str, str], int]:
    """(image_id, finding) -> number of ground-truth boxes, for the pairs with two or more."""
    per = Counter((b.image_id, b.finding) for b in boxes)
    return {key: n for key, n in per.items() if n >= 2}


def recipe(cfg: PaperConfig, max_steps: int | None) -> dict[str, Any]:
    """What the working folder's contents depend on (a rerun with another recipe is refused)."""
    return json.loads(json.dumps({**asdict(cfg), "max_steps": max_steps}))


def train_config(cfg: PaperConfig, classes: Sequence[str], *, stages: tuple[str, ...], kp: str = "kp",
                 max_steps: int | None = None) -> Any:
    """The `miner.config.TrainConfig` of the bench's models: the seed's recipe (``cai2018``), which the first
    embedded model also used."""
    from miner.config import TrainConfig

    # workers=0: the phantom archives are small and cached in memory once; decode workers would cost more
    # to start than they save
    return TrainConfig(arch=cfg.arch, recipe="cai2018", model_options={"width": cfg.width}, input_size=cfg.size,
                       classes=tuple(classes), stages=stages, base_epochs=cfg.epochs,
                       msa_init_epochs=cfg.msa_init_epochs, end2end_epochs=cfg.end2end_epochs,
                       am_epochs=cfg.am_epochs, lr=cfg.lr, finetune_lr=cfg.finetune_lr, batch_size=cfg.batch_size,
                       class_weights=cfg.class_weights, augment=cfg.augment, cache=True, workers=0,
                       seed=cfg.seed, kp=kp, max_steps=max_steps, progress=False)


def mine_boxes(model_path: Path, batches: Sequence[Any], *, steps: int) -> Any:
    """Boxes of `batches` (`miner.pipeline.DecodedBatch`) mined at T = `steps` for their labelled findings:
    a pyarrow table with the Parquet schema of ``miner mine`` (the same `Pipeline` the Ray actors run)."""
    import pyarrow as pa

    from miner.backends import open_backend
    from miner.io import BOXES_SCHEMA
    from miner.pipeline import Pipeline

    # the model's own recipe settings (the bench's models record cai2018's), T overridden
    pipeline = Pipeline(open_backend(model_path, backend="torch", device="cpu"), mining={"steps": steps},
                        classes="labels")
    tables = [pipeline.run(batch).boxes for batch in batches]
    return pa.concat_tables(tables).cast(BOXES_SCHEMA) if tables else BOXES_SCHEMA.empty_table()


def score(pred: Any, gt: Any, findings: Sequence[str], levels: Sequence[float]) -> dict[str, list[Any]]:
    """The three evaluations of one box set: ``bounded`` (Wang et al.'s AFP), ``all`` (every box of B) and
    ``multi`` (every box of B, multi-lesion image-finding pairs only; gt["multi"] is that ground truth)."""
    from miner.config import EvalConfig
    from miner.metrics import default_bounds, localization_table, no_bounds

    cfg = replace(EvalConfig(), iou_thresholds=tuple(levels), iobb_thresholds=())
    multi_findings = [f for f in findings if f in set(gt["multi"].finding.tolist())]
    return {
        "bounded": localization_table(pred, gt["all"], config=cfg, bounds=default_bounds(), findings=findings),
        "all": localization_table(pred, gt["all"], config=cfg, bounds=no_bounds(), findings=findings),
        "multi": localization_table(pred, gt["multi"], config=cfg, bounds=no_bounds(), findings=multi_findings),
    }


# --------------------------------------------------------------------------------------------- tables


def _grid(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)])


def _cell(results: list[Any], finding: str, level: float, *, afp: bool) -> str:
    for r in results:
        if r.finding == finding and abs(r.threshold - level) < 1e-9:
            if math.isnan(r.acc):
                return "-"
            return f"{r.acc:.2f}-{r.afp:.2f}" if afp else f"{r.acc:.2f}"
    return "-"


def table2(cells: dict[str, Any], findings: Sequence[str], levels: Sequence[float]) -> str:
    """The seed's Table 2 layout: per T(IoU), rows CAM / base. / ours, "Acc-AFP" cells (Wang et al.'s bounds)."""
    rows = []
    methods = (("CAM", "base", 1), ("base.", "vanilla", 1), ("ours", "kp", max(_steps(cells))))
    for level in levels:
        for i, (label, variant, t) in enumerate(methods):
            results = cells[f"{variant}_t{t}"]["bounded"]
            rows.append([f"{level:g}" if i == 0 else "", f"{label} ({VARIANTS[variant][1] or 'no AM'}, t={t})",
                         *(_cell(results, f, level, afp=True) for f in findings)])
    return _grid(["T(IoU)", "Method", *(SHORT.get(f, f) for f in findings)], rows)


def table3(cells: dict[str, Any], findings: Sequence[str], levels: Sequence[float], *, which: str = "all") -> str:
    """The seed's Table 3 layout: AM block (KP model, t = 1, 2, 3) and KP block (w/o KP, KP-Vanilla, KP at the
    largest T) at each level; Acc with every box of B (``which="multi"``: multi-lesion pairs only)."""
    steps = _steps(cells)
    rows = []
    for block, entries in (("AM", [(f"t={t}", "kp", t) for t in steps]),
                           ("KP", [(VARIANTS[v][0], v, max(steps)) for v in ("none", "vanilla", "kp")])):
        for level in levels:
            for i, (label, variant, t) in enumerate(entries):
                results = cells[f"{variant}_t{t}"][which]
                rows.append([block if (level == levels[0] and i == 0) else "", f"{level:g}" if i == 0 else "", label,
                             *(_cell(results, f, level, afp=False) for f in findings)])
    return _grid(["", "T(IoU)", "Method", *(SHORT.get(f, f) for f in findings)], rows)


def _steps(cells: dict[str, Any]) -> list[int]:
    return sorted({int(k.rsplit("_t", 1)[1]) for k in cells})


def answers(cells: dict[str, Any], multi_findings: Sequence[str], findings: Sequence[str], *,
            level: float = 0.3) -> list[str]:
    """The two questions of the benchmark, in words, at T(IoU) = `level` (every box of B)."""
    def acc(key: str, which: str, finding: str) -> float:
        for r in cells[key][which]:
            if r.finding == finding and abs(r.threshold - level) < 1e-9:
                return r.acc
        return math.nan

    top = max(_steps(cells))
    lines = []
    for which, names, text in (("multi", multi_findings, "multi-lesion images"), ("all", findings, "all images")):
        diffs = {f: acc(f"kp_t{top}", which, f) - acc("kp_t1", which, f) for f in names}
        diffs = {f: d for f, d in diffs.items() if not math.isnan(d)}
        better = [f for f, d in diffs.items() if d > 0]
        mean = sum(diffs.values()) / len(diffs) if diffs else math.nan
        names_better = ", ".join(SHORT.get(f, f) for f in better) or "-"
        lines.append(f"AM T={top} vs t=1 (KP model), Acc at T(IoU)={level:g}, {text}: mean change {mean:+.3f}; "
                     f"better on {len(better)}/{len(diffs)} findings ({names_better})")
    diffs = {f: acc(f"kp_t{top}", "all", f) - acc(f"vanilla_t{top}", "all", f) for f in findings}
    diffs = {f: d for f, d in diffs.items() if not math.isnan(d)}
    better = [f for f, d in diffs.items() if d > 0]
    mean = sum(diffs.values()) / len(diffs) if diffs else math.nan
    lines.append(f"KP vs KP-Vanilla (T={top}), Acc at T(IoU)={level:g}, all images: mean change {mean:+.3f}; "
                 f"better on {len(better)}/{len(diffs)} findings ({', '.join(SHORT.get(f, f) for f in better) or '-'})")
    return lines


# --------------------------------------------------------------------------------------------- mechanism


def _cells_of(box: Sequence[float], image_hw: tuple[int, int], map_hw: tuple[int, int]) -> tuple[slice, slice]:
    """The map cells (rows, cols) a box (x, y, w, h in original pixels) touches."""
    (height, width), (h, w) = image_hw, map_hw
    x, y, bw, bh = box
    r0, r1 = int(math.floor(y * h / height)), int(math.ceil((y + bh) * h / height))
    c0, c1 = int(math.floor(x * w / width)), int(math.ceil((x + bw) * w / width))
    return slice(max(0, r0), max(r0 + 1, min(h, r1))), slice(max(0, c0), max(c0 + 1, min(w, c1)))


def mechanism(cases: Sequence[Any]) -> dict[str, float]:
    """How attention mining behaves on multi-lesion cases (`miner.figure.MiningCase`, T >= 2), as fractions:

    - ``peak_in_lesion``: H_1's maximum lies on a lesion (a map cell its box touches);
    - ``first_covers_all``: the component erased at step 1 touches every lesion of the case (step 2 can only
      find background or parts of lesions already found);
    - ``second_on_new_lesion``: H_2's maximum lies on a lesion the step-1 component left untouched (what AM
      exists for);
    - ``erased_fraction``: mean share of the map erased at step 1;
    - ``hot_first``, ``hot_fused``: mean share of the map at 0.7 or more of its range (the top box level) in
      H_1 (what T = 1 boxes) and in H_f (what T boxes): how much fusion flattens the map.
    """
    import numpy as np

    counts = {"peak_in_lesion": 0, "first_covers_all": 0, "second_on_new_lesion": 0}
    erased: list[float] = []
    hot: tuple[list[float], list[float]] = ([], [])
    for case in cases:
        h, w = case.step_maps.shape[-2:]
        cells = [_cells_of(box, case.image.shape[:2], (h, w)) for box in case.gt]

        def on_lesion(index: int, lesions: list, w: int = w) -> bool:
            r, c = divmod(int(index), w)
            return any(rs.start <= r < rs.stop and cs.start <= c < cs.stop for rs, cs in lesions)

        first = case.erased[0]
        counts["peak_in_lesion"] += on_lesion(np.argmax(case.step_maps[0]), cells)
        touched = [bool(first[rs, cs].any()) for rs, cs in cells]
        counts["first_covers_all"] += all(touched)
        left = [cell for cell, hit in zip(cells, touched) if not hit]
        if case.step_maps.shape[0] > 1 and left and case.step_maps[1].max() > 0:
            counts["second_on_new_lesion"] += on_lesion(np.argmax(case.step_maps[1]), left)
        erased.append(float(first.mean()))
        hot[0].append(_hot(case.step_maps[0]))
        hot[1].append(_hot(case.fused))
    n = max(1, len(cases))
    result = {key: value / n for key, value in counts.items()}
    result["erased_fraction"] = float(np.mean(erased)) if erased else math.nan
    result["hot_first"] = float(np.mean(hot[0])) if hot[0] else math.nan
    result["hot_fused"] = float(np.mean(hot[1])) if hot[1] else math.nan
    result["cases"] = len(cases)
    return result


def _hot(heat: Any, level: float = 0.7) -> float:
    """Share of a map at `level` or more of its min-max range."""
    import numpy as np

    lo, hi = float(heat.min()), float(heat.max())
    return float(np.mean((heat - lo) >= level * (hi - lo))) if hi > lo else 0.0


def box_to_lesion_area(pred: Any, gt_boxes: Sequence[Any], pairs: Sequence[tuple[str, str]]) -> float:
    """Median over `pairs` of (area of the pair's rank-1 box) / (mean area of its ground-truth boxes); pairs
    without a box are left out (NaN when none has one)."""
    import numpy as np

    area: dict[tuple[str, str], list[float]] = {}
    for b in gt_boxes:
        area.setdefault((b.image_id, b.finding), []).append(b.w * b.h)
    best = {}
    for i in np.flatnonzero(pred.rank == 1):
        best[(str(pred.image_id[i]), str(pred.finding[i]))] = float(pred.w[i] * pred.h[i])
    ratios = [best[k] / float(np.mean(area[k])) for k in pairs if k in best and k in area]
    return float(np.median(ratios)) if ratios else math.nan


def mechanism_table(rows: dict[str, dict[str, float]]) -> str:
    head = ["", "cases", "H_1 peak on a lesion", "step-1 component touches all", "H_2 peak on a new lesion",
            "map erased at step 1", "map >= 0.7: H_1", "H_f"]
    body = [[label, str(int(m["cases"])), f"{m['peak_in_lesion']:.2f}", f"{m['first_covers_all']:.2f}",
             f"{m['second_on_new_lesion']:.2f}", f"{m['erased_fraction']:.2f}", f"{m['hot_first']:.2f}",
             f"{m['hot_fused']:.2f}"] for label, m in rows.items()]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in body)])


# --------------------------------------------------------------------------------------------- figure


def figure_items(pred: dict[int, Any], gt_boxes: Sequence[Any], pairs: dict[tuple[str, str], int], *,
                 count: int = 3, level: float = 0.1) -> list[tuple[str, str, str]]:
    """Up to `count` multi-lesion (image_id, finding, caption) cases for Fig. 2: first those where T = max finds
    more ground-truth lesions (IoU >= `level`) than t = 1, then a failure case (no lesion found at T = max).

    pred: T -> `miner.metrics.BoxTable` of the KP model's boxes at that T.
    """
    import numpy as np

    from miner.metrics import iou

    top, first = pred[max(pred)], pred[min(pred)]
    gt_of: dict[tuple[str, str], np.ndarray] = {}
    for b in gt_boxes:
        gt_of.setdefault((b.image_id, b.finding), []).append((b.x, b.y, b.w, b.h))

    def found(table: Any, key: tuple[str, str]) -> int:
        sel = (table.image_id.astype(str) == key[0]) & (table.finding == key[1])
        if not sel.any():
            return 0
        return int((iou(table.xywh[sel], np.asarray(gt_of[key], float)) >= level).any(axis=0).sum())

    scored = sorted(((found(first, k), found(top, k), n, k) for k, n in pairs.items()),
                    key=lambda s: (-(s[1] - s[0]), -s[2], s[3]))
    chosen: list[tuple[str, str, str]] = []
    for f1, ft, n, key in scored:
        if ft > f1 and len(chosen) < count - 1:
            chosen.append((*key, f"mined after erasing: t=1 finds {f1}/{n} lesions, T={max(pred)} finds {ft}/{n} "
                                 f"(IoU >= {level:g})"))
    failures = [s for s in scored if s[1] == 0]
    if failures:
        f1, ft, n, key = failures[0]
        chosen.append((*key, f"failure case: no lesion found at any step (0/{n}, IoU >= {level:g})"))
    for f1, ft, n, key in scored:
        if len(chosen) >= count:
            break
        if all(key != (c[0], c[1]) for c in chosen):
            chosen.append((*key, f"t=1 finds {f1}/{n} lesions, T={max(pred)} finds {ft}/{n} (IoU >= {level:g})"))
    return chosen[:count]


# --------------------------------------------------------------------------------------------- the run


def run_paper(out: str | Path, cfg: PaperConfig | None = None, *, max_steps: int | None = None,
              overwrite: bool = False, log: Callable[[str], None] | None = None) -> PaperResult:
    """Run the benchmark in `out` (module docstring); returns the tables and where everything is."""
    import pyarrow.parquet as pq

    from miner.data import read_archive
    from miner.errors import UsageError
    from miner.figure import mining_cases, steps_figure, write_png
    from miner.metrics import read_boxes
    from miner.phantoms import make_phantoms
    from miner.pipeline import decode_batch
    from miner.train import stage_path, train

    cfg = cfg or PaperConfig()
    log = log or (lambda text: print(text, flush=True))
    out = Path(out)
    wanted = recipe(cfg, max_steps)
    record = out / "paper.json"
    if record.is_file() and json.loads(record.read_text()).get("recipe") != wanted:
        if not overwrite:
            raise UsageError(f"{out} was made with other settings ({record}); pass --overwrite or another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"recipe": wanted}, indent=1))
    timings: dict[str, dict[str, float]] = {}

    # 1. archives -------------------------------------------------------------------------------------
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    for name, images, seed in (("train", cfg.train_images, cfg.seed), ("eval", cfg.eval_images, cfg.eval_seed)):
        if not (out / name / "Data_Entry_2017.csv").is_file():
            log(f"[paper] phantoms: {images} images of {cfg.size}x{cfg.size}, seed {seed} -> {out / name}")
            make_phantoms(out / name, images=images, size=cfg.size, seed=seed, overwrite=True)
    train_archive, eval_archive = read_archive(out / "train"), read_archive(out / "eval")
    classes = list(PhantomConfig().findings)  # the model's class list: every finding the phantoms draw
    findings = [f for f in classes if any(b.finding == f for b in eval_archive.boxes)]
    pairs = multi_lesion_pairs(eval_archive.boxes)
    multi = {f: sum(1 for (_, g) in pairs if g == f) for f in findings}
    multi = {f: n for f, n in multi.items() if n}
    positives = Counter(f for r in eval_archive.records for f in r.labels)
    log(f"[paper] evaluation archive: {len(eval_archive)} images; per finding images (with 2+ lesions): "
        + ", ".join(f"{SHORT.get(f, f)} {positives[f]} ({multi.get(f, 0)})" for f in findings))
    _phase(timings, "phantoms", t0, load0)

    # 2. models -------------------------------------------------------------------------------------
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    models = out / "models"
    base_out = models / "base.pt"
    if not (base_out.is_file()):
        log(f"[paper] training the base model ({cfg.arch}, width {cfg.width}, {cfg.size} px): "
            f"base {cfg.epochs} + msa-init {cfg.msa_init_epochs} + end2end {cfg.end2end_epochs} epochs")
        train(out / "train", base_out, train_config(cfg, classes, stages=("base", "msa-init", "end2end"),
                                                    max_steps=max_steps), resume=True)
    _phase(timings, "train_base", t0, load0)
    paths = {"base": stage_path(base_out, "end2end")}
    for variant in ("none", "vanilla", "kp"):
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        target = models / f"am-{variant}.pt"
        if not target.is_file():
            log(f"[paper] AM fine-tuning from the base model, --kp {variant}, {cfg.am_epochs} epochs")
            train(out / "train", target, train_config(cfg, classes, stages=("am",), kp=variant, max_steps=max_steps),
                  resume=True, start_from=paths["base"])
        paths[variant] = target
        _phase(timings, f"train_am_{variant}", t0, load0)

    # 3. mining and scores ---------------------------------------------------------------------------
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    records = [(r.image_id, r.path, tuple(r.labels)) for r in eval_archive.records if r.labels]
    batches = [decode_batch(records[i:i + 32], input_size=cfg.size) for i in range(0, len(records), 32)]
    from miner.metrics import ground_truth_table

    gt = {"all": ground_truth_table(eval_archive.boxes),
          "multi": ground_truth_table([b for b in eval_archive.boxes if (b.image_id, b.finding) in pairs])}
    (out / "boxes").mkdir(exist_ok=True)
    cells: dict[str, Any] = {}
    kp_boxes: dict[int, Any] = {}
    for variant, path in paths.items():
        for t in cfg.steps:
            if variant in ("none",) and t != max(cfg.steps):
                continue  # Table 3's KP block compares the fine-tunings at T = max only
            if variant == "base" and t != 1:
                continue
            if variant == "vanilla" and t not in (1, max(cfg.steps)):
                continue
            file = out / "boxes" / f"{variant}_t{t}.parquet"
            pq.write_table(mine_boxes(path, batches, steps=t), file)
            pred = read_boxes(file)
            cells[f"{variant}_t{t}"] = score(pred, gt, findings, cfg.iou_levels)
            if variant == "kp":
                kp_boxes[t] = pred
    _phase(timings, "mine_and_score", t0, load0)

    # the mechanism: what the erasure steps do on the multi-lesion cases --------------------------------
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    from miner.backends import open_backend

    image_path = {r.image_id: r.path for r in eval_archive.records}
    gt_of: dict[tuple[str, str], list] = {}
    for b in eval_archive.boxes:
        gt_of.setdefault((b.image_id, b.finding), []).append((b.x, b.y, b.w, b.h))
    top_mining = {"steps": max(cfg.steps)}  # the models' own (cai2018) settings at the largest T
    multi_items = [(i, image_path[i], f, gt_of[(i, f)]) for (i, f) in sorted(pairs) if f in classes]
    mech: dict[str, dict[str, float]] = {}
    for variant, path in paths.items():
        backend = open_backend(path, backend="torch", device="cpu")
        cases = mining_cases(backend, multi_items, mining=top_mining) if multi_items else []
        mech[VARIANTS[variant][0]] = mechanism(cases)
        if variant == "kp":
            for f in findings:
                own = [c for c in cases if c.finding == f]
                if own:
                    mech[f"  KP, {SHORT.get(f, f)}"] = mechanism(own)
    _phase(timings, "mechanism", t0, load0)

    # 4. tables and figure ---------------------------------------------------------------------------
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    multi_findings = [f for f in findings if f in multi]
    box_ratio = {t: box_to_lesion_area(kp_boxes[t], eval_archive.boxes, sorted(pairs)) for t in sorted(kp_boxes)}
    head = (f"phantom benchmark: {len(train_archive)} training / {len(eval_archive)} evaluation images of "
            f"{cfg.size}x{cfg.size}; mined: {len(records)} positive evaluation images, their labelled findings; "
            f"multi-lesion image-findings: " + ", ".join(f"{SHORT.get(f, f)} {n}" for f, n in multi.items()))
    text = [
        head, "",
        "Table 2 (Acc-AFP; B taken until AFP reaches Wang et al.'s bound for the finding and level):",
        table2(cells, findings, cfg.iou_levels), "",
        "Table 3 (Acc with every box of B):",
        table3(cells, findings, cfg.table3_levels), "",
        "Table 3 on multi-lesion image-findings only (Acc with every box of B; GT of pairs with 2+ lesions):",
        table3(cells, multi_findings, cfg.table3_levels, which="multi") if multi_findings else "(none)", "",
        *answers(cells, multi_findings, findings), "",
        f"What the erasure steps do on the multi-lesion image-findings (T={max(cfg.steps)}; a lesion = the map "
        "cells its box touches):",
        mechanism_table(mech), "",
        "Rank-1 box area / lesion area (median over the multi-lesion image-findings), KP model: "
        + ", ".join(f"t={t} {ratio:.1f}" for t, ratio in box_ratio.items()),
    ]
    tables = "\n".join(text)
    log(tables)
    (out / "tables.txt").write_text(tables + "\n")
    figure = None
    if kp_boxes:
        items = figure_items(kp_boxes, eval_archive.boxes, pairs)
        if items:
            backend = open_backend(paths["kp"], backend="torch", device="cpu")
            cases = mining_cases(backend, [(i, image_path[i], f, gt_of[(i, f)]) for i, f, _ in items],
                                 mining=top_mining)
            for case, (_, _, caption), letter in zip(cases, items, "abcdef"):
                case.caption = f"({letter}) {caption}"
            figure = out / "fig2.png"
            write_png(figure, steps_figure(cases, panel_size=200, title=(
                "attention mining on phantoms (KP model): H_t per step, component erased at step t in white, "
                "fused H_f; ground truth red, mined boxes green")))
    _phase(timings, "tables_and_figure", t0, load0)
    from miner.io import json_safe
    from miner.metrics.localization import results_json

    (out / "results.json").write_text(json.dumps(json_safe({
        "recipe": wanted, "timings": timings, "multi_lesion_images": multi,
        "positive_images": {f: positives[f] for f in findings}, "answers": answers(cells, multi_findings, findings),
        "mechanism": {label.strip(): value for label, value in mech.items()},
        "box_to_lesion_area": {f"t={t}": v for t, v in box_ratio.items()},
        "cells": {key: {which: results_json(rs) for which, rs in value.items()} for key, value in cells.items()},
    }), indent=1))
    return PaperResult(out=out, tables=tables, cells=cells, multi_lesion=multi, figure=figure, timings=timings)
