"""`miner demo OUT`: the whole product in about a minute, with no data and no GPU.

1. **Archive**: a phantom archive in the ChestX-ray14 release layout (`miner.data.make_phantoms`) under
   ``OUT/archive``, with one broken file of each kind (`miner.data.bad_files.inject_bad_files`) so that the
   error rows can be seen.
2. **Mining**: the Ray job of ``miner mine`` (`miner.job.run_job`; a local Ray unless an address is given)
   with the model (default: the one embedded in the package, `default_model_path`) writes ``OUT/boxes``,
   ``OUT/errors``, ``OUT/images`` and ``OUT/_manifest.json``.
3. **Evaluation**: ``miner eval``'s protocol (`miner.metrics.job`, the one evaluation of a job) against the
   archive's ground-truth boxes, once with Wang et al.'s AFP bounds (the seed's Table 2) and once with every
   box of the ranked list B (the seed's Table 3), written to ``OUT/evaluation.txt`` and
   ``OUT/evaluation.json``; and the mined boxes as pseudo-labels (`miner.labels`, ``miner labels``) in both
   formats: ``OUT/labels/coco/`` and ``OUT/labels/yolo/``.
4. **Pictures**: ``OUT/overlays/<image>.png`` as ``miner show`` draws them (image, fused heatmap H_f per
   finding, ground truth red, mined boxes green; multi-lesion images first), and
   ``OUT/overlays/attention_mining.png``, the heatmaps of every mining step as in the seed's Fig. 2.
5. **Report**: ``OUT/report/index.html`` as ``miner report`` writes it (`miner.report.write_report`, with the
   model's heatmaps and CLEAR pictures), to open in a browser.

The embedded model (``miner/assets/default_model.pt``, described by ``default_model.json``) is reproduced by
``scripts/train_default_model.sh``.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miner.config import DemoConfig
from miner.errors import ModelError, UsageError

ASSET_MODEL = "default_model.pt"
ASSET_CARD = "default_model.json"
#: what a demo writes into OUT (the job's own files are removed by `run_job(overwrite=True)`)
DEMO_ITEMS = ("archive", "overlays", "evaluation.txt", "evaluation.json", "report")


def assets_dir() -> Path:
    """The folder of the package's embedded files (``miner/assets``)."""
    from importlib import resources

    return Path(str(resources.files("miner") / "assets"))


def default_model_path() -> Path:
    """The embedded default model (a `miner.models` checkpoint); `ModelError` if the package lacks it."""
    path = assets_dir() / ASSET_MODEL
    if not path.is_file():
        raise ModelError(f"{path}: the embedded default model is missing from this installation; reinstall the "
                         "package, or rebuild it with scripts/train_default_model.sh, or pass --model")
    return path


def default_model_card() -> dict[str, Any]:
    """The embedded model's description (``miner/assets/default_model.json``): classes, input size, how it was
    trained (command, seconds, machine load), its test AUC and localisation figures."""
    path = assets_dir() / ASSET_CARD
    if not path.is_file():
        raise ModelError(f"{path}: the embedded model's description is missing from this installation")
    return json.loads(path.read_text())


@dataclass
class DemoResult:
    """What `run_demo` did: counts, where the files are, timings per phase (seconds)."""

    out: Path
    model: Path
    images: int
    processed: int
    errors: int
    boxes: int
    multi_lesion: dict[str, int]
    acc_iou03: dict[str, float]
    overlays: list[Path]
    acc_iou03_every: dict[str, float] = field(default_factory=dict)  # every box of B (no AFP bound)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None  # OUT/report/index.html

    def line(self) -> str:
        """The one-line summary printed at the end of ``miner demo``."""
        accs = [v for v in self.acc_iou03.values() if not math.isnan(v)]
        mean = sum(accs) / len(accs) if accs else math.nan
        every = [v for v in self.acc_iou03_every.values() if not math.isnan(v)]
        mean_every = sum(every) / len(every) if every else math.nan
        multi = sum(self.multi_lesion.values())
        return (f"miner demo: {self.images} archive images ({multi} image-findings with 2+ lesions), "
                f"{self.processed} mined on Ray in {self.seconds.get('mine', 0):.1f} s: {self.boxes} boxes, "
                f"{self.errors} error rows; mean Acc at T(IoU)=0.3 over {len(accs)} findings {mean_every:.2f} "
                f"(every box), {mean:.2f} (Wang AFP bounds); total {self.seconds.get('total', 0):.1f} s "
                f"-> {self.out}/ (boxes/ errors/ images/ _manifest.json evaluation.txt overlays/)"
                + (f"; report: {self.report}" if self.report else ""))


def _mined_images(out: Path) -> set[str]:
    """The ids of the images the job mined (``OUT/images``)."""
    import pyarrow.dataset as ds

    from miner.io import IMAGES_SCHEMA

    return set(ds.dataset(out / "images", format="parquet", schema=IMAGES_SCHEMA)
               .to_table(columns=["image_id"]).column("image_id").to_pylist())


def evaluate(out: Path, archive: Any, *, classes: tuple[str, ...]) -> dict[str, Any]:
    """``miner eval``'s tables for the boxes in `out` against `archive`'s ground truth (`miner.metrics.job`:
    Wang et al.'s AFP bounds, and every box of B); writes ``OUT/evaluation.txt`` and ``OUT/evaluation.json`` and
    returns the JSON report.

    Only images that went through the model count (the broken files have no boxes to evaluate).
    """
    from miner.io import json_safe
    from miner.metrics import format_table, read_boxes
    from miner.metrics.job import evaluate_job, job_ground_truth, multi_lesion_counts
    from miner.metrics.localization import results_json

    processed = _mined_images(out)
    gt, findings = job_ground_truth(archive.boxes, mined=processed, classes=classes)
    pred = read_boxes(out)
    result = evaluate_job(pred, gt, images=sorted(processed), findings=findings, coco=False)
    cfg = result.config
    multi = multi_lesion_counts([b for b in archive.boxes if b.image_id in processed])
    text = [
        f"{len(pred)} mined boxes vs {len(gt)} ground-truth boxes on {len(set(gt.image_id))} images "
        f"({len(processed)} images mined); images with 2+ lesions of a finding: "
        + ", ".join(f"{k} {v}" for k, v in multi.items()),
        "",
        "Acc-AFP, B taken until AFP reaches Wang et al.'s bound (the seed's Table 2; * = no bound: every box):",
        format_table(result.bounded),
        "",
        "Acc-AFP with every box of B (the seed's Table 3 uses Acc this way):",
        format_table(result.every_box),
    ]
    (out / "evaluation.txt").write_text("\n".join(text) + "\n")
    report = {
        "boxes": str(out / "boxes"), "images_mined": len(processed), "gt_boxes": len(gt),
        "multi_lesion_images": multi, "bounds": result.bounds_source,
        "config": {"iou_thresholds": list(cfg.iou_thresholds), "iobb_thresholds": list(cfg.iobb_thresholds),
                   "within_rank": cfg.within_rank, "max_rank": cfg.max_rank},
        "cells": results_json(result.bounded), "cells_all_boxes": results_json(result.every_box),
    }
    (out / "evaluation.json").write_text(json.dumps(json_safe(report), indent=1))
    return report


def pick_overlays(archive: Any, processed: set[str], count: int) -> list[str]:
    """Up to `count` mined image ids with ground-truth boxes: most boxes of one finding first (multi-lesion
    images), then most boxes in all; ties in image order."""
    per = Counter((b.image_id, b.finding) for b in archive.boxes if b.image_id in processed)
    total = Counter(b.image_id for b in archive.boxes if b.image_id in processed)
    most = Counter()
    for (image_id, _), n in per.items():
        most[image_id] = max(most[image_id], n)
    return sorted(total, key=lambda i: (-most[i], -total[i], i))[:count]


def draw_overlays(out: Path, archive: Any, model: Path, *, count: int, mining: Any, boxes: Any) -> list[Path]:
    """``miner show`` pictures of `count` images and one attention-mining figure; returns the files written.

    `mining`, `boxes`: as the job's pipeline took them (`miner.pipeline.Pipeline`: None or overrides of the
    model's own settings), so the figure mines as the job did."""
    from miner.backends import open_backend
    from miner.figure import mining_cases, steps_figure, write_png
    from miner.metrics import read_boxes
    from miner.show import Panel, render

    if count < 1:
        return []
    chosen = pick_overlays(archive, _mined_images(out), count)
    if not chosen:
        return []
    backend = open_backend(model)
    classes = set(backend.meta.classes)
    paths = {r.image_id: r.path for r in archive.records}
    gt_of: dict[tuple[str, str], list] = {}
    for b in archive.boxes:
        gt_of.setdefault((b.image_id, b.finding), []).append((b.x, b.y, b.w, b.h))
    items = [(i, paths[i], f, gt) for (i, f), gt in sorted(gt_of.items()) if i in chosen and f in classes]
    cases = mining_cases(backend, items, mining=mining, boxes=boxes)
    from miner.pipeline import Pipeline

    steps = Pipeline(backend, mining=mining, boxes=boxes).mining.steps
    mined = read_boxes(out)
    written: list[Path] = []
    for image_id in chosen:
        own = [c for c in cases if c.image_id == image_id]
        if not own:
            continue
        panels = []
        for case in own:
            # the boxes the job wrote (the case's own boxes are the same computation, `miner.figure`)
            sel = (mined.image_id.astype(str) == image_id) & (mined.finding == case.finding)
            order = sorted(range(int(sel.sum())), key=lambda k: mined.rank[sel][k])
            xywh, scores, ranks = mined.xywh[sel], mined.score[sel], mined.rank[sel]
            panels.append(Panel(finding=case.finding, heat=case.fused, gt=case.gt,
                                mined=[tuple(xywh[k]) for k in order],
                                labels=[f"{int(ranks[k])} {scores[k]:.2f}" for k in order],
                                note=f"H_f, T={steps}, p={case.prob:.2f}"))
        picture = render(own[0].image, panels, panel_size=320,
                         title=f"{image_id}: ground truth red, mined boxes green (rank, score)")
        path = out / "overlays" / f"{Path(image_id).stem}.png"
        write_png(path, picture)
        written.append(path)
    multi = sorted((c for c in cases if len(c.gt) >= 2), key=lambda c: (-len(c.gt), c.image_id))[:3] or cases[:3]
    figure = steps_figure(multi, panel_size=224, title=(
        f"attention mining, T={steps}: H_t per step (white: component erased at step t), fused H_f; "
        "ground truth red, mined boxes green"))
    path = out / "overlays" / "attention_mining.png"
    write_png(path, figure)
    written.append(path)
    return written


def run_demo(
    out: str | Path,
    *,
    model: str | Path | None = None,
    config: DemoConfig | None = None,
    address: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Generate a phantom archive, mine it with the Ray job, evaluate it and draw overlays (module docstring).

    Args:
        out: a new (or empty) folder; with `overwrite`, a folder of an earlier demo is redone.
        model: a checkpoint, ONNX graph or engine (default: the embedded model, `default_model_path`).
        config: `miner.config.DemoConfig` (None = defaults: 200 images at the model's input size).
        address: a Ray cluster to attach to (default: ``RAY_ADDRESS``, else a local Ray).
        progress: progress bars on stderr.
        log: where the phase lines go (default: stdout).
    """
    from miner.backends import open_backend
    from miner.config import JobConfig
    from miner.data import read_archive
    from miner.job import run_job
    from miner.outdir import prepare_out
    from miner.phantoms import make_phantoms
    from miner.phantoms.bad_files import inject_bad_files

    cfg = config or DemoConfig()
    log = log or (lambda text: print(text, flush=True))
    if cfg.images < 8:
        raise UsageError(f"--images must be at least 8 (the broken files need 4 readable images), got {cfg.images}")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    model_path = Path(model) if model is not None else default_model_path()
    if not model_path.is_file():
        raise UsageError(f"--model: {model_path} does not exist")
    out = Path(out).expanduser().resolve()
    meta = open_backend(model_path).meta
    size = cfg.size or int(meta.input_size[0])
    findings = tuple(f for f in meta.classes if f in _phantom_findings())
    if not findings:
        raise UsageError(f"--model: {model_path} knows none of the findings the phantoms draw "
                         f"({', '.join(_phantom_findings())})")
    # OUT is touched only once the model is known to be usable; --overwrite removes what an earlier demo wrote
    prepare_out(out, overwrite=overwrite, where=f"OUT: {out}", not_folder="give a new folder", remove=DEMO_ITEMS,
                create=True)

    t0 = time.perf_counter()
    log(f"[1/5] phantom archive: {cfg.images} images of {size}x{size}, seed {cfg.seed} -> {out / 'archive'}")
    make_phantoms(out / "archive", images=cfg.images, size=size, seed=cfg.seed, findings=findings,
                  progress=progress)
    bad: dict[str, str] = {}
    if cfg.bad_files:
        bad = inject_bad_files(out / "archive", seed=cfg.seed)
        log(f"      broken on purpose: {', '.join(f'{k} {v}' for k, v in bad.items())}")
    archive = read_archive(out / "archive")
    seconds["phantoms"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"[2/5] miner mine on Ray with {model_path.name} ({meta.arch or 'model'}, {meta.method}, "
        f"{len(meta.classes)} findings, T={cfg.steps}) -> {out}/boxes, errors, images, _manifest.json")
    mining = {"steps": cfg.steps}  # the model's own recipe settings (miner.recipes), T as asked
    box_config: dict[str, Any] = {}
    job = JobConfig(shard_size=cfg.shard_size, batch_size=cfg.batch_size, workers=cfg.workers)
    summary = run_job(out / "archive", model_path, out, config=job,
                      pipeline_options={"mining": mining, "boxes": box_config},
                      address=address, overwrite=True, progress=progress,
                      log=lambda text: log(f"      {text}"))
    log(f"      {summary.line()}")
    seconds["mine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"[3/5] evaluation (miner eval) -> {out / 'evaluation.txt'}, {out / 'evaluation.json'}")
    report = evaluate(out, archive, classes=tuple(meta.classes))
    log((out / "evaluation.txt").read_text().rstrip())
    from miner.labels import export_labels

    for fmt in ("coco", "yolo"):  # pseudo-labels for a detector trainer, as `miner labels` writes them
        log(f"      {export_labels(out, out / 'labels' / fmt, format=fmt, overwrite=True).line()}")
    seconds["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"[4/5] overlays (miner show) -> {out / 'overlays'}")
    overlays = draw_overlays(out, archive, model_path, count=cfg.overlays, mining=mining, boxes=box_config)
    seconds["overlays"] = time.perf_counter() - t0

    from miner.report import write_report

    t0 = time.perf_counter()
    log(f"[5/5] report (miner report) -> {out / 'report' / 'index.html'}")
    written = write_report(out, archive=out / "archive", model=model_path)
    log(f"      {written.line()}")
    seconds["report"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started

    def at03(cells: list[dict[str, Any]]) -> dict[str, float]:
        return {c["finding"]: (math.nan if c["acc"] is None else float(c["acc"])) for c in cells
                if c["metric"] == "iou" and abs(c["threshold"] - 0.3) < 1e-9}

    acc = at03(report["cells"])
    return DemoResult(out=out, model=model_path, images=summary.images, processed=summary.processed,
                      errors=summary.errors, boxes=summary.boxes, multi_lesion=report["multi_lesion_images"],
                      acc_iou03=acc, acc_iou03_every=at03(report["cells_all_boxes"]),
                      overlays=overlays, seconds=seconds, report=written.index)


def _phantom_findings() -> tuple[str, ...]:
    from miner.phantoms.lesions import PHANTOM_FINDINGS

    return tuple(PHANTOM_FINDINGS)
