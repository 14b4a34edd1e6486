"""`miner bench detector`: what the mined boxes are worth to a detector trained on them.

Per look (``plain`` phantoms, ``real`` ones drawn on the pydicom-data radiograph), one archive the product never
trains, calibrates or benchmarks on (seeds below), split by patient into a train and a test split, is mined by
``miner mine`` with the embedded model (its own recipe, a local Ray). Then, with one training budget
(`miner.config.DetectorTrainConfig`: epochs, batch, learning rate, input size) and the same training seeds:

- **(a)** the detector trained on the train split's **true boxes** (written as a job output and exported by
  ``miner labels --format yolo``, so it goes through the very same path as (b));
- **(b)** the detector trained on the train split's **mined boxes** (``miner labels --format yolo``, read by the
  detector's loader as a user's trainer reads the folder: data.yaml's train list, `miner.detector.data`);
- **(c)** the test split's mined boxes, scored directly;
- **(r)** one refinement round: (b)'s detector predicts on the test split and its boxes are fused with the mined
  ones where they agree (`miner.detector.predict.refine_outputs`: the mean of the two boxes).

(a) and (b) predict on the test split (``miner detector predict --split test``, the images' labelled findings)
and every row is scored by ``miner eval``'s code (`miner.metrics.job.evaluate_job`) against the test split's true
boxes: COCO AP and AP50 (``miner eval``'s convention), Acc at T(IoU) 0.3 and 0.5 with every box of B. Rows of
several training seeds show their mean and, in the macro column, ``mean +- half the range``. A detector the working
folder already holds for the same labels and options is reused (training is deterministic; ``--retrain``).

**Label filters** (which ``miner labels`` setting to train on): on the first look, (b) is trained once per
``--filter`` (``NAME=max_rank:K,min_score:S``) with the first training seed; the best macro AP50 is named.

``--quick`` (CI): one small plain look at 128 px, one epoch, one seed, no filters, about a minute.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HELP = "a detector trained on true vs mined boxes: AP, AP50, Acc@0.3/0.5 per finding, (b)/(a), one refinement round"
DESCRIPTION = __doc__

SHORT = {"Atelectasis": "AT", "Cardiomegaly": "CM", "Effusion": "PE", "Infiltration": "Inf", "Mass": "Mass",
         "Nodule": "Nod", "Pneumonia": "PNA", "Pneumothorax": "PTx"}
#: the archive's seed per look (its train split trains the detectors, its test split scores them). Unused
#: elsewhere: the embedded model trains on 0 and 3, is calibrated on 5 and 6, `miner bench localize` scores 1 and 2.
SEEDS = {"plain": 31, "real": 33}
METRICS = ("ap50", "ap", "acc30", "acc50")
METRIC_NAMES = {"ap50": "AP50", "ap": "AP", "acc30": "Acc@0.3", "acc50": "Acc@0.5"}
DEFAULT_FILTERS = ("top3=max_rank:3", "top1=max_rank:1", "top3 score>=0.5=max_rank:3,min_score:0.5")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/bench-detector", help="working folder (archives, outputs, labels, "
                        "detectors, results.json, tables.txt)")
    parser.add_argument("--looks", default="plain,real", help="plain and/or real (default: %(default)s)")
    parser.add_argument("--train-images", type=int, default=300, help="images of each training archive "
                        "(default: %(default)s)")
    parser.add_argument("--eval-images", type=int, default=200, help="images of each test archive "
                        "(default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="phantom side and detector input (default: "
                        "%(default)s)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of every detector (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1", help="training seeds of (a) and (b) (default: %(default)s)")
    parser.add_argument("--filter", action="append", default=None, metavar="NAME=max_rank:K[,min_score:S]",
                        help="a miner labels setting to train (b) on (repeatable; the first is (b)'s; default: "
                             + "; ".join(DEFAULT_FILTERS) + ")")
    parser.add_argument("--agree-iou", type=float, default=0.1, help="refinement's agreement IoU (default: "
                        "%(default)s)")
    parser.add_argument("--weight", type=float, default=0.5, help="refinement: the detector box's weight in a fused "
                        "box (1: it replaces the mined box; default: %(default)s)")
    parser.add_argument("--retrain", action="store_true", help="train every detector afresh (default: a detector "
                        "the working folder already holds for the same labels and options is reused: training is "
                        "deterministic)")
    parser.add_argument("--quick", action="store_true", help="a small run for CI (about a minute)")


@dataclass
class LabelFilter:
    name: str
    max_rank: int = 3
    min_score: float = 0.0


def parse_filter(text: str) -> LabelFilter:
    from miner.errors import UsageError

    name, sep, spec = text.rpartition("=")
    if not sep or not name.strip():
        raise UsageError(f"--filter: {text!r} is not NAME=max_rank:K[,min_score:S]")
    values: dict[str, Any] = {}
    for part in (p for p in spec.split(",") if p.strip()):
        key, colon, value = part.partition(":")
        key = key.strip()
        try:
            if key == "max_rank" and colon:
                values[key] = int(value)
                ok = 1 <= values[key] <= 100
            elif key == "min_score" and colon:
                values[key] = float(value)
                ok = 0.0 <= values[key] <= 1.0
            else:
                ok = False
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"--filter: {part!r} of {text!r} is not max_rank:K (1-100) or min_score:S (0-1)")
    return LabelFilter(name=name.strip(), **values)


@dataclass
class Row:
    """One scored output: per finding {metric: value}."""

    name: str
    look: str
    seed: int | None
    values: dict[str, dict[str, float]]
    out: str
    extra: dict[str, Any] = field(default_factory=dict)

    def macro(self, metric: str) -> float:
        vals = [v[metric] for v in self.values.values() if not math.isnan(v[metric])]
        return float(np.mean(vals)) if vals else math.nan


def score_output(out: Path, *, split: str | None = None) -> dict[str, dict[str, float]]:
    """Per finding AP, AP50 (COCO, miner eval's convention) and Acc at T(IoU) 0.3 / 0.5 with every box of B, on the
    output's images (of one `split` of the archive where given)."""
    from miner.metrics import read_boxes
    from miner.metrics.job import evaluate_job, job_ground_truth
    from miner.output import read_output

    output = read_output(out)
    arch = output.archive()
    images = list(dict.fromkeys(output.image_ids))
    if split is not None:
        in_split = {r.image_id for r in arch.records if r.split == split}
        images = [i for i in images if i in in_split]
    gt, findings = job_ground_truth(arch.boxes, mined=images, classes=output.classes)
    pred = read_boxes(out)
    keep = np.isin(pred.image_id.astype(str), np.asarray(images, dtype=str))
    pred = pred.take(keep)
    ev = evaluate_job(pred, gt, images=images, findings=findings, every_box=True, coco=True, sizes=output.sizes,
                      exhaustive=arch.exhaustive)
    values = {}
    for f in findings:
        coco = ev.coco_of(f)
        values[f] = {"ap50": coco.ap50 if coco else math.nan, "ap": coco.ap if coco else math.nan,
                     "acc30": ev.acc(f, 0.3, every_box=True), "acc50": ev.acc(f, 0.5, every_box=True)}
    return values


def write_truth_output(archive: str | Path, out: Path, *, classes: Sequence[str]) -> Path:
    """The archive's true boxes as a job output (score 1, ranks in file order, probs = the image labels): the
    archive's record and fingerprint as ``miner mine`` writes them, so ``miner labels`` exports these boxes exactly
    as it exports mined ones."""
    from miner.config import ArchiveConfig
    from miner.data import read_archive
    from miner.data.confine import load_record
    from miner.detector.output import archive_record, check_new_output, write_output

    classes = list(classes)
    arch = read_archive(archive)
    records = list({r.image_id: r for r in arch.records}.values())
    rank: dict[tuple[str, str], int] = {}
    rows = []
    for b in arch.boxes:
        if b.finding not in classes:
            continue
        key = (b.image_id, b.finding)
        rank[key] = rank.get(key, 0) + 1
        rows.append({"image_id": b.image_id, "finding": b.finding, "class_index": classes.index(b.finding),
                     "rank": rank[key], "x": b.x, "y": b.y, "w": b.w, "h": b.h, "score": 1.0, "prob": 1.0,
                     "threshold": 0.0})
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["image_id"]] = counts.get(r["image_id"], 0) + 1
    image_rows = []
    for record in records:
        _, (height, width) = load_record(record)
        image_rows.append({"image_id": record.image_id, "height": height, "width": width,
                           "boxes": counts.get(record.image_id, 0),
                           "probs": [1.0 if c in record.labels else 0.0 for c in classes]})
    section, fingerprint = archive_record(arch, ArchiveConfig(), archive)
    out = check_new_output(out, overwrite=True)
    return write_output(out, boxes=rows, errors=[], images=image_rows, archive=section, fingerprint=fingerprint,
                        model={"classes": classes, "kind": "ground truth"},
                        producer={"verb": "miner bench detector (true boxes)"}, overwrite=True)


@dataclass
class Plan:
    looks: list[str]
    train_images: int
    eval_images: int
    size: int
    epochs: int
    seeds: list[int]
    filters: list[LabelFilter]
    agree_iou: float
    weight: float = 0.5
    retrain: bool = False


def run_bench(plan: Plan, work: Path, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every row of the benchmark (module docstring); returns results.json's content."""
    from miner.config import DetectorTrainConfig, JobConfig, LabelsConfig, PhantomConfig
    from miner.detector.predict import predict_archive, refine_outputs
    from miner.job import run_job
    from miner.labels import export_labels
    from miner.phantoms import make_phantoms

    model = Path(__file__).resolve().parents[1] / "assets" / "default_model.pt"
    rows: list[Row] = []
    timings: dict[str, float] = {}

    def timed(key: str, started: float) -> None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - started

    for n_look, look in enumerate(plan.looks):
        base = work / look
        seed = SEEDS[look]
        t0 = time.perf_counter()
        archive = base / "archive"
        total = plan.train_images + plan.eval_images
        make_phantoms(archive, images=total, size=plan.size, seed=seed, real_background=look == "real",
                      config=PhantomConfig(test_fraction=plan.eval_images / total), overwrite=True)
        timed("phantoms", t0)
        t0 = time.perf_counter()
        mined = base / "mined"
        summary = run_job(archive, model, mined, config=JobConfig(), overwrite=True, progress=False,
                          log=lambda line: None)
        log(f"{look}: {summary.line()}")
        timed("mine", t0)
        t0 = time.perf_counter()
        from miner.output import read_output

        truth_out = write_truth_output(archive, base / "truth", classes=read_output(mined).classes)
        label_sets = {"a": base / "labels-truth"}
        export_labels(truth_out, label_sets["a"], format="yolo", overwrite=label_sets["a"].exists())
        filters = plan.filters if n_look == 0 else plan.filters[:1]
        for flt in filters:
            target = base / f"labels-mined-{_slug(flt.name)}"
            result = export_labels(mined, target, format="yolo", overwrite=target.exists(),
                                   config=LabelsConfig(min_score=flt.min_score, max_rank=flt.max_rank))
            label_sets[f"b:{flt.name}"] = target
            log(f"{look}: {result.line()}")
        timed("labels", t0)
        rows.append(Row(name="c", look=look, seed=None, values=score_output(mined, split="test"), out=str(mined)))
        jobs = [("a", label_sets["a"], seed) for seed in plan.seeds]
        jobs += [(f"b:{plan.filters[0].name}", label_sets[f"b:{plan.filters[0].name}"], seed) for seed in plan.seeds]
        jobs += [(f"b:{f.name}", label_sets[f"b:{f.name}"], plan.seeds[0]) for f in filters[1:]]
        for key, labels, seed in jobs:
            t0 = time.perf_counter()
            folder = base / "detectors" / f"{_slug(key)}-seed{seed}"
            cfg = DetectorTrainConfig(epochs=plan.epochs, size=plan.size, seed=seed)
            trained = _train(labels, folder, cfg, archive, retrain=plan.retrain)
            timed("train", t0)
            t0 = time.perf_counter()
            pred_out = base / "predicted" / f"{_slug(key)}-seed{seed}"
            predict_archive(trained.detector, archive, pred_out, split="test", overwrite=True, progress=False)
            name = "a" if key == "a" else ("b" if key == f"b:{plan.filters[0].name}" else key)
            rows.append(Row(name=name, look=look, seed=seed, values=score_output(pred_out), out=str(pred_out),
                            extra={"train_seconds": trained.seconds, "loss": trained.last_loss}))
            log(f"{look}: {name} seed {seed}: macro AP50 {rows[-1].macro('ap50'):.3f} "
                f"({trained.seconds:.0f} s of training)")
            if name == "b":
                refined = base / "refined" / f"seed{seed}"
                refine_outputs(mined, pred_out, refined, agree_iou=plan.agree_iou, weight=plan.weight, overwrite=True)
                rows.append(Row(name="r", look=look, seed=seed, values=score_output(refined), out=str(refined)))
            timed("predict+eval", t0)
    return {"plan": {**asdict(plan), "filters": [asdict(f) for f in plan.filters]},
            "seeds": {look: SEEDS[look] for look in plan.looks}, "timings": timings,
            "rows": [asdict(r) for r in rows]}


def _train(labels: Path, folder: Path, cfg: Any, archive: Path, *, retrain: bool) -> Any:
    """Train one detector, or reuse the finished training in `folder` when it is of the same labels and options
    (`miner.detector.train` resumes it: nothing left to do). Training is deterministic for a given torch build and
    thread count, so a reused detector is the one a new training would give."""
    from miner.detector.train import train_detector
    from miner.errors import UsageError

    if not retrain:
        try:
            return train_detector(labels, folder, config=cfg, archive=archive, overwrite=False, progress=False)
        except UsageError:  # another label set or other options: train afresh
            pass
    return train_detector(labels, folder, config=cfg, archive=archive, overwrite=True, progress=False)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def _fmt(value: float) -> str:
    return "  -  " if value is None or math.isnan(value) else f"{value:.3f}"


def _mean(rows: Sequence[Row], finding: str | None, metric: str) -> tuple[float, float]:
    """Mean over the rows (seeds) and half their range, of one finding or of the macro mean."""
    vals = [r.macro(metric) if finding is None else r.values.get(finding, {}).get(metric, math.nan) for r in rows]
    vals = [v for v in vals if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return float(np.mean(vals)), (max(vals) - min(vals)) / 2


def tables(result: dict[str, Any]) -> str:
    """The printed tables: per look and metric, rows (a) / (b) / (c) / (r) per finding and macro, (b)/(a); then the
    label filters and the targets."""
    rows = [Row(**r) for r in result["rows"]]
    plan = result["plan"]
    lines = []
    names = {"a": "(a) true boxes", "b": "(b) mined boxes", "c": "(c) mined, direct", "r": "(r) refined (b)"}
    summary = []
    for look in plan["looks"]:
        these = [r for r in rows if r.look == look]
        findings = list(next(r for r in these if r.name == "c").values)
        lines.append(f"{look} phantoms (archive seed {result['seeds'][look]}): detector trained on its train split "
                     f"(about {plan['train_images']} images), scored on its test split (about {plan['eval_images']} "
                     f"images), {plan['size']} px, "
                     f"{plan['epochs']} epochs, training seeds {','.join(map(str, plan['seeds']))} "
                     "(mean; macro +- half the range)")
        head = f"{'':24s}" + "".join(f"{SHORT.get(f, f[:5]):>6s}" for f in findings) + "   macro"
        for metric in METRICS:
            lines.append(f"{METRIC_NAMES[metric]}:")
            lines.append(head)
            for key in ("a", "b", "c", "r"):
                group = [r for r in these if r.name == key]
                if not group:
                    continue
                cells = "".join(f"{_fmt(_mean(group, f, metric)[0]):>6s}" for f in findings)
                mean, spread = _mean(group, None, metric)
                pm = f" +-{spread:.3f}" if len(group) > 1 else ""
                lines.append(f"{names[key]:24s}{cells}   {_fmt(mean)}{pm}")
            a = [r for r in these if r.name == "a"]
            b = [r for r in these if r.name == "b"]
            if a and b:
                ratios = []
                for f in findings:
                    ma, mb = _mean(a, f, metric)[0], _mean(b, f, metric)[0]
                    ratios.append(_ratio(mb, ma))
                macro = _ratio(_mean(b, None, metric)[0], _mean(a, None, metric)[0])
                lines.append(f"{'(b)/(a)':24s}" + "".join(f"{_fmt(v):>6s}" for v in ratios) + f"   {_fmt(macro)}")
        lines.append("")
        a, b = [r for r in these if r.name == "a"], [r for r in these if r.name == "b"]
        c, rr = [r for r in these if r.name == "c"], [r for r in these if r.name == "r"]
        if a and b and c:
            ratio = _ratio(_mean(b, None, "ap50")[0], _mean(a, None, "ap50")[0])
            summary.append(f"{look}: (b)/(a) AP50 macro {ratio:.2f} (target >= 0.8: "
                           f"{'met' if ratio >= 0.8 else 'missed'}); (b) {_mean(b, None, 'ap50')[0]:.3f} vs (c) "
                           f"{_mean(c, None, 'ap50')[0]:.3f} AP50 ((b) >= (c): "
                           f"{'met' if _mean(b, None, 'ap50')[0] >= _mean(c, None, 'ap50')[0] else 'missed'})")
        if rr and c:
            d50 = _mean(rr, None, "ap50")[0] - _mean(c, None, "ap50")[0]
            dacc5 = _mean(rr, None, "acc50")[0] - _mean(c, None, "acc50")[0]
            dacc3 = _mean(rr, None, "acc30")[0] - _mean(c, None, "acc30")[0]
            ok = d50 > 0 and dacc5 > 0 and dacc3 >= -0.02
            summary.append(f"{look}: refined - mined: AP50 {d50:+.3f}, Acc@0.5 {dacc5:+.3f}, Acc@0.3 {dacc3:+.3f} "
                           f"(target: both up, Acc@0.3 down at most 0.02: {'met' if ok else 'missed'})")
    first = plan["looks"][0]
    filtered = [r for r in rows if r.look == first and (r.name == "b" and r.seed == plan["seeds"][0]
                                                        or r.name.startswith("b:"))]
    if len(plan["filters"]) > 1 and filtered:
        lines.append(f"label filters ({first} phantoms, training seed {plan['seeds'][0]}): (b) macro over findings")
        lines.append(f"{'miner labels setting':36s}   AP50     AP  Acc@0.3  Acc@0.5")
        best = None
        for flt in plan["filters"]:
            key = "b" if flt["name"] == plan["filters"][0]["name"] else f"b:{flt['name']}"
            row = next((r for r in filtered if r.name == key), None)
            if row is None:
                continue
            option = f"--max-rank {flt['max_rank']}" + (f" --min-score {flt['min_score']}" if flt["min_score"] else "")
            lines.append(f"{flt['name'] + ' (' + option + ')':36s}  {_fmt(row.macro('ap50'))}  {_fmt(row.macro('ap'))}"
                         f"    {_fmt(row.macro('acc30'))}    {_fmt(row.macro('acc50'))}")
            if best is None or row.macro("ap50") > best[1]:
                best = (f"{flt['name']} ({option})", row.macro("ap50"))
        if best is not None:
            summary.append(f"best miner labels setting for (b): {best[0]}, AP50 {best[1]:.3f}")
        lines.append("")
    return "\n".join(lines + summary) + "\n"


def run(args: argparse.Namespace) -> int:
    from miner.detector import require_torchvision
    from miner.errors import UsageError

    require_torchvision()
    looks = [w.strip() for w in args.looks.split(",") if w.strip()]
    bad = [w for w in looks if w not in SEEDS]
    if bad or not looks:
        raise UsageError(f"--looks: {', '.join(bad) or 'nothing'} is not plain or real")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds: {args.seeds!r} is not a list of integers") from None
    if not seeds or any(not 0 <= s < 2**31 for s in seeds):
        raise UsageError(f"--seeds: {args.seeds!r} is not a list of seeds in [0, 2^31)")
    filters = [parse_filter(t) for t in (args.filter or DEFAULT_FILTERS)]
    if args.quick:
        plan = Plan(looks=["plain"], train_images=48, eval_images=24, size=128, epochs=1, seeds=[0],
                    filters=filters[:1], agree_iou=args.agree_iou, weight=args.weight, retrain=args.retrain)
    else:
        plan = Plan(looks=looks, train_images=args.train_images, eval_images=args.eval_images, size=args.size,
                    epochs=args.epochs, seeds=seeds, filters=filters, agree_iou=args.agree_iou, weight=args.weight,
                    retrain=args.retrain)
    if not 0.0 <= plan.agree_iou <= 1.0:
        raise UsageError(f"--agree-iou must lie in [0, 1], got {plan.agree_iou}")
    if not 0.0 <= plan.weight <= 1.0:
        raise UsageError(f"--weight must lie in [0, 1], got {plan.weight}")
    work = Path(args.out).expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = run_bench(plan, work, log=lambda line: print(f"miner bench detector: {line}", flush=True))
    result["seconds"] = time.perf_counter() - started
    (work / "results.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    text = tables(result)
    (work / "tables.txt").write_text(text)
    print(text, end="", flush=True)
    print(f"miner bench detector: {result['seconds']:.0f} s -> {work / 'tables.txt'}, results.json", flush=True)
    return 0
