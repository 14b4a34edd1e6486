"""`write_report`: a mining job's output folder -> a static HTML report (see the package docstring)."""
from __future__ import annotations

import fnmatch
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from miner.config import ReportConfig
from miner.errors import UsageError
from miner.io import shown
from miner.metrics.job import JobEvaluation
from miner.outdir import (
    built_beside,
    check_not_in_data,
    folder_files,
    install_folder,
    listed_files,
    prepare_out,
    read_listing,
)
from miner.report import describe
from miner.report.describe import fmt
from miner.report.gallery import Box, Entry, MapSource
from miner.report.job import JobSnapshot, load_snapshot

#: written into every report folder; marks it as a report (`--to` refuses other non-empty folders)
SUMMARY_NAME = "report.json"


@dataclass
class ReportResult:
    """What `write_report` wrote: where, how much, how long."""

    index: Path
    findings: int
    thumbnails: int  # each with its full-size picture
    error_rows: int
    error_rows_listed: int
    files: int
    bytes: int
    seconds: float
    status: str
    notices: list[str] = field(default_factory=list)

    def line(self) -> str:
        """The one-line summary printed by ``miner report``."""
        return (f"miner report: {self.index} ({self.status} job; {self.findings} findings, {self.thumbnails} "
                f"thumbnails, {self.error_rows_listed} of {self.error_rows} error rows listed; {self.files} files, "
                f"{self.bytes / 1e6:.2f} MB, {self.seconds:.1f} s)")


@dataclass
class FindingView:
    """One finding as the pages show it (text cells already formatted)."""

    name: str
    slug: str
    page: str
    file: str
    hue: str
    asked: int | None
    images: int
    boxes: int
    rank1: int
    score_median: str
    prob_median: str
    gt_boxes: str = ""
    acc03: str = ""
    ap: str = ""
    plot: str = ""
    eval_rows: list[list[str]] = field(default_factory=list)
    top: list[Entry] = field(default_factory=list)
    sample: list[Entry] = field(default_factory=list)
    cards: list[tuple[str, str]] = field(default_factory=list)

    @property
    def asked_text(self) -> str:
        return "?" if self.asked is None else f"{self.asked:,}"


#: the files of a report written before its summary listed them (``files``): the layout of `miner.report`
_LEGACY_REPORT = ("index.html", SUMMARY_NAME, "findings/*.html", "img/plots/*.png", "img/thumbs/*/*.jpg",
                  "img/pictures/*/*.jpg")


def _earlier_report(target: Path) -> set[str]:
    """The files of an earlier report in the non-empty folder `target` (its summary's list).

    A folder that holds anything but is not a report (no summary, or a summary that is not one) is refused: a
    report replaces only the files it wrote itself (`miner.outdir.install_folder`)."""
    refused = (f"--to: {shown(target)} is not empty and holds no earlier report; give a new or empty folder (a "
               "report replaces only the files it wrote)")
    summary = read_listing(target / SUMMARY_NAME)
    if summary is None:
        raise UsageError(refused)
    files = listed_files(summary)
    if files is not None:
        owned = files | {SUMMARY_NAME}
    elif "files" not in summary and "out" in summary and "findings" in summary:  # a report of an earlier version
        owned = {p.relative_to(target).as_posix() for pattern in _LEGACY_REPORT for p in target.glob(pattern)
                 if p.is_file() and not p.is_symlink()} | {SUMMARY_NAME}
    else:
        raise UsageError(refused)
    # a file of the user's where a report writes: refused now rather than after the report is drawn (the exact
    # check, over the files actually written, is `install_folder`'s)
    for name in folder_files(target):
        if name not in owned and any(fnmatch.fnmatch(name, pattern) for pattern in _LEGACY_REPORT):
            raise UsageError(f"{shown(target / name)} was not written by miner report; move it away or give "
                             "another folder (miner never replaces a file it did not write)")
    return owned


def _summary_bytes(summary: dict[str, Any], files: Sequence[str]) -> bytes:
    """``report.json``: the summary and ``files``, every file the report wrote (all a later report may replace)."""
    return (json.dumps({**summary, "files": sorted(files)}, indent=1) + "\n").encode()


def _archive(output: JobSnapshot, archive: str | Path | None, *,
             allow_outside_archive: bool = False) -> tuple[Any, list[str]]:
    """The job's archive (checked against the manifest's fingerprint) and notices; (None, notices) when the
    manifest's archive cannot be read and none was given."""
    from miner.data import read_archive
    from miner.errors import ArchiveError
    from miner.job.plan import archive_fingerprint

    notices: list[str] = []
    recorded = output.manifest.get("archive", {}).get("path")
    path = archive if archive is not None else recorded
    if path is None:
        return None, ["The manifest names no archive: give --archive for pictures and ground truth."]
    from dataclasses import fields

    from miner.config import ArchiveConfig

    # read as the job read it: the options the manifest records (as `miner.output.JobOutput.archive` does)
    names = {f.name for f in fields(ArchiveConfig)}
    options = {k: v for k, v in (output.manifest.get("archive", {}).get("options") or {}).items() if k in names}
    if allow_outside_archive:  # the archive-root rule lifted (miner.data.confine)
        options["allow_outside_archive"] = True
    try:
        arch = read_archive(path, config=ArchiveConfig(**options))
    except ArchiveError as err:
        if archive is not None:
            raise UsageError(f"--archive: {err}") from None
        return None, [(f"Pictures and ground truth are left out: the job's archive {recorded} cannot be read "
                       f"here ({err}); give --archive ARCHIVE.")]
    expected = output.manifest.get("identity", {}).get("archive")
    if expected and archive_fingerprint(arch.records, arch.root) != expected:
        raise UsageError(f"{'--archive' if archive is not None else 'the manifest archive'}: {path} is not the "
                         f"archive this job mined (its images, order or labels differ); give the archive of "
                         f"{output.out}")
    return arch, notices


@dataclass
class _Rows:
    """The job's rows as numpy columns (boxes: one entry per box; images: one per mined image)."""

    image_id: np.ndarray
    finding: np.ndarray
    score: np.ndarray
    prob: np.ndarray
    rank: np.ndarray
    xywh: np.ndarray  # [N, 4]
    image_wh: np.ndarray  # [N, 2] width and height of each box's image
    mined: np.ndarray  # image ids of the mined images
    mined_wh: dict[str, tuple[float, float]]

    @classmethod
    def of(cls, output: JobSnapshot) -> _Rows:
        image_id = output.column("boxes", "image_id").astype(str)
        mined = output.column("images", "image_id").astype(str)
        wh = np.stack([output.column("images", "width"), output.column("images", "height")], axis=1)
        wh = wh.astype(np.float64).reshape(-1, 2)
        order = np.argsort(mined)
        where = np.searchsorted(mined[order], image_id)
        found = where < len(mined)
        found[found] = mined[order][where[found]] == image_id[found]
        if not found.all():
            raise UsageError(f"{output.out}: boxes of images missing from images/; the output folder is damaged "
                             "(rerun the job with --overwrite)")
        return cls(image_id=image_id, finding=output.column("boxes", "finding").astype(str),
                   score=output.column("boxes", "score").astype(np.float64),
                   prob=output.column("boxes", "prob").astype(np.float64),
                   rank=output.column("boxes", "rank").astype(np.int64),
                   xywh=np.stack([output.column("boxes", k).astype(np.float64) for k in "xywh"], axis=1).reshape(-1, 4),
                   image_wh=np.maximum(wh[order[where]], 1.0) if len(image_id) else np.ones((0, 2)),
                   mined=mined, mined_wh=dict(zip(mined.tolist(), map(tuple, wh.tolist()))))


@dataclass
class _Job:
    """Everything a report draws from: the output, its rows, the archive, the ground truth, the evaluation."""

    output: JobSnapshot
    rows: _Rows
    config: ReportConfig
    archive: Any  # miner.data.Archive or None
    gt: dict[tuple[str, str], list[Box]]  # (image id, finding) -> ground-truth boxes, mined images only
    evaluation: JobEvaluation | None
    asked: dict[str, int | None]  # finding -> images the job mined it for
    maps: MapSource | None
    hues: dict[str, str]  # finding -> #rrggbb of its CLEAR hue (with a model)


def _asked(output: JobSnapshot, archive: Any, mined: set[str]) -> dict[str, int | None]:
    """Per finding, the images the job mined it for (`--classes`): labelled with it, predicted (p >= the
    threshold) or all; None where unknown (labels without the archive)."""
    config = output.manifest.get("config", {})
    mode = config.get("classes", "labels")
    if mode == "all":
        return {f: len(mined) for f in output.classes}
    if mode == "predicted":
        probs = output.probs()
        threshold = float(config.get("prob_threshold", 0.5))
        return {f: int((probs[:, c] >= threshold).sum()) for c, f in enumerate(output.classes)}
    if archive is None:
        return {f: None for f in output.classes}
    labels = Counter(label for r in archive.records if r.image_id in mined for label in set(r.labels))
    return {f: int(labels.get(f, 0)) for f in output.classes}


def _finding(job: _Job, name: str, slug: str, tmp: Path) -> FindingView:
    """One finding's view: counts, its plot (written under `tmp`), evaluation rows and gallery entries."""
    from miner.metrics import iou
    from miner.report import gallery, plots

    r, cfg, evaluation = job.rows, job.config, job.evaluation
    rows = np.flatnonzero(r.finding == name)
    ids = r.image_id[rows]
    unique_ids, per = np.unique(ids, return_counts=True)
    view = FindingView(name=name, slug=slug, page=f"findings/{slug}.html", file=f"{slug}.html",
                       hue=job.hues.get(name, ""), asked=job.asked.get(name), images=len(unique_ids),
                       boxes=len(rows), rank1=int((r.rank[rows] == 1).sum()),
                       score_median=fmt(float(np.median(r.score[rows]))),
                       prob_median=fmt(float(np.median(r.prob[rows]))), plot=f"img/plots/{slug}.png")
    evaluated = evaluation is not None and name in evaluation.findings
    # the plot: scores, boxes per image (0 = mined for the finding, no box), sizes, Acc vs T(IoU)
    counts = {k: 0 for k in range(1, int(per.max()) + 1)}
    counts.update(Counter(per.tolist()))
    if view.asked is not None:
        counts[0] = max(0, view.asked - len(unique_ids))
    gt_sizes = accuracy = None
    if evaluated:
        gt_sizes = np.asarray([(b[2] / job.rows.mined_wh[i][0], b[3] / job.rows.mined_wh[i][1])
                               for (i, f), boxes in job.gt.items() if f == name for b in boxes]).reshape(-1, 2)
        bounded, every = evaluation.cells(name), evaluation.cells(name, every_box=True)
        accuracy = ([c.threshold for c in bounded], [c.acc for c in bounded], [c.acc for c in every])
        view.gt_boxes = f"{bounded[0].gt_boxes:,}" if bounded else "-"
        view.acc03 = fmt(evaluation.acc(name, 0.3))
        coco = evaluation.coco_of(name)
        view.ap = fmt(coco.ap, 3) if coco is not None else "-"
        every_at = {c.threshold: c for c in every}
        for c in bounded + evaluation.cells(name, metric="iobb"):
            e = every_at.get(c.threshold) if c.metric == "iou" else None
            view.eval_rows.append([f"T({'IoU' if c.metric == 'iou' else 'IoBB'})={c.threshold:g}", fmt(c.acc),
                                   fmt(c.afp), "none" if c.bound is None else f"{c.bound:g}",
                                   f"{c.selected} of {c.available}", fmt(e.acc) if e else "",
                                   fmt(e.afp) if e else ""])
    elif evaluation is not None:
        view.gt_boxes, view.acc03, view.ap = "0", "-", "-"
    plots.finding_plot(tmp / view.plot, finding=name, scores=r.score[rows], per_image=counts,
                       sizes=r.xywh[rows, 2:] / r.image_wh[rows], gt_sizes=gt_sizes, accuracy=accuracy,
                       dpi=cfg.plot_dpi)
    # the galleries
    top, sample = gallery.select(ids, r.score[rows], rows, finding=name, config=cfg)
    for kind, chosen in (("top", top), ("sample", sample)):
        for k, row in enumerate(chosen.tolist(), start=1):
            truth = job.gt.get((r.image_id[row], name), [])
            overlap = None
            if evaluated:
                overlap = float(iou(r.xywh[row:row + 1], np.asarray(truth)).max()) if truth else 0.0
            entry = Entry(kind=kind, position=k, finding=name, image_id=str(r.image_id[row]), row=int(row),
                          box=tuple(float(v) for v in r.xywh[row]), rank=int(r.rank[row]), score=float(r.score[row]),
                          prob=float(r.prob[row]), iou=overlap, thumb=f"img/thumbs/{slug}/{kind}-{k:02d}.jpg",
                          picture=f"img/pictures/{slug}/{kind}-{k:02d}.jpg")
            (view.top if kind == "top" else view.sample).append(entry)
    view.cards = [("images mined for it", view.asked_text), ("images with boxes", f"{view.images:,}"),
                  ("boxes", f"{view.boxes:,}"), ("median score", view.score_median)]
    if view.acc03:
        view.cards += [("Acc at T(IoU)=0.3", view.acc03), ("COCO AP", view.ap)]
    return view


def _draw(job: _Job, entries: list[Entry], tmp: Path) -> None:
    """The pictures of every gallery entry (through `miner.show`), or the reason there are none."""
    from miner.report import gallery

    if job.archive is None:
        for entry in entries:
            entry.error = "the archive is not readable here (give --archive)"
        return
    r = job.rows
    wanted = {(e.image_id, e.finding) for e in entries}
    box_rows: dict[tuple[str, str], list[int]] = {}
    for row in np.flatnonzero(np.isin(r.image_id, np.asarray(sorted({e.image_id for e in entries}), dtype=str))):
        key = (str(r.image_id[row]), str(r.finding[row]))
        if key in wanted:
            box_rows.setdefault(key, []).append(int(row))

    def mined(image_id: str, finding: str) -> tuple[list[Box], list[str]]:
        rows = sorted(box_rows.get((image_id, finding), []), key=lambda k: r.rank[k])
        return [tuple(float(v) for v in r.xywh[k]) for k in rows], [f"{r.rank[k]} {r.score[k]:.2f}" for k in rows]

    gallery.draw(entries, tmp, paths={rec.image_id: rec for rec in job.archive.records}, gt=job.gt,
                 mined=mined, maps=job.maps, config=job.config)


def _index(job: _Job, views: list[FindingView], tmp: Path, *, archive: str | Path | None,
           model: str | Path | None) -> dict[str, Any]:
    """The variables of the index page (its two plots written under `tmp`)."""
    from miner.report import plots

    output, cfg, evaluation = job.output, job.config, job.evaluation
    kind = output.column("errors", "kind").astype(str)
    error_ids = output.column("errors", "image_id").astype(str)
    messages = output.column("errors", "error").astype(str)
    listed = np.lexsort((error_ids, kind))[: cfg.max_errors] if len(error_ids) else np.zeros(0, np.int64)
    overview = accuracy = None
    if views:
        overview = "img/plots/overview.png"
        plots.overview_plot(tmp / overview, [v.name for v in views], [v.images for v in views],
                            [v.boxes for v in views], dpi=cfg.plot_dpi)
    if evaluation is not None:
        accuracy = "img/plots/accuracy.png"
        plots.accuracy_plot(tmp / accuracy, {f: (
            [c.threshold for c in evaluation.cells(f)], [c.acc for c in evaluation.cells(f)],
            [c.acc for c in evaluation.cells(f, every_box=True)]) for f in evaluation.findings}, dpi=cfg.plot_dpi)
        evaluation_line = (f"{len(job.rows.image_id):,} mined boxes against {evaluation.gt_boxes:,} ground-truth "
                           f"boxes on {evaluation.gt_images:,} mined images ({', '.join(evaluation.findings)}); the "
                           f"protocol of miner eval; AFP bounds: {evaluation.bounds_source}.")
    elif job.archive is None:
        evaluation_line = "No evaluation: the archive is not readable here (give --archive)."
    else:
        evaluation_line = ("No evaluation: the archive has no ground-truth boxes on the mined images "
                           "(no BBox_List_2017.csv, or none of its boxes on these images).")
    state = output.state
    return {
        "findings": views, "overview_plot": overview, "evaluation": evaluation, "evaluation_line": evaluation_line,
        "accuracy_plot": accuracy,
        "cards": [("images in the archive", f"{state.images_planned:,}"), ("images mined", f"{len(job.rows.mined):,}"),
                  ("boxes", f"{len(job.rows.image_id):,}"), ("error rows", f"{len(error_ids):,}"),
                  ("findings with boxes", str(len(views))),
                  ("shards done", f"{state.shards_done} / {state.shards_planned}"),
                  ("images/s (last run)", describe.last_rate(output))],
        "error_kinds": sorted(Counter(kind.tolist()).items()),
        "error_rows": [(error_ids[i], kind[i], messages[i]) for i in listed.tolist()],
        "errors_line": (f"All {len(error_ids):,} error rows, by kind and image." if len(listed) == len(error_ids)
                        else f"The first {len(listed):,} of {len(error_ids):,} error rows (by kind and image); all "
                             f"of them are in {output.out / 'errors'}."),
        "archive_rows": describe.archive_rows(output, given=archive, gt_boxes=None if job.archive is None
                                              else len(job.archive.boxes)),
        "model_rows": describe.model_rows(output, model), "option_rows": describe.option_rows(output),
        "runs": describe.run_rows(output.manifest), "version_rows": describe.version_rows(output),
    }


def write_report(
    out: str | Path,
    *,
    archive: str | Path | None = None,
    model: str | Path | None = None,
    to: str | Path | None = None,
    config: ReportConfig | None = None,
    log: Callable[[str], None] | None = None,
    allow_outside_archive: bool = False,
) -> ReportResult:
    """Write the static report of the job output folder `out` (docs/reports.md).

    Args:
        out: the folder `miner mine` (or `miner demo`) wrote; a job still running or stopped is reported
            with the shards done so far.
        archive: the job's archive (default: the manifest's); its images are drawn and its ground-truth
            boxes evaluated. Must be the archive the job mined (same fingerprint).
        model: a checkpoint, ONNX graph or engine: thumbnails and pictures show the fused heatmap H_f and the
            CLEAR picture (recomputed with the job's mining options). None: boxes on the plain images.
        to: the report's folder (default ``OUT/report``): new, empty, or an earlier report's, whose files (the
            list in its ``report.json``) are replaced; any other file there is kept (`miner.outdir.install_folder`).
            The report is written beside it first and moved in when complete.
        config: bounds and sizes (`miner.config.ReportConfig`).
        log: where progress lines go (default: nowhere).
        allow_outside_archive: draw images whose files resolve outside the archive's root too (else as the job
            read the archive; such an image's entry says why it has no picture: `miner.data.confine`).
    """
    from miner import __version__
    from miner.clear import finding_hues, hue_hex
    from miner.job.plan import model_hash
    from miner.metrics import BoxTable
    from miner.metrics.job import evaluate_job, job_ground_truth
    from miner.report.page import render_page, slug

    started = time.perf_counter()
    cfg = config or ReportConfig()
    for name in ("top", "sample", "max_errors"):
        if getattr(cfg, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(cfg, name)}")
    for name, least in (("thumb_size", 32), ("picture_size", 64), ("batch_size", 1)):
        if getattr(cfg, name) < least:
            raise UsageError(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(cfg, name)}")
    say = log or (lambda text: None)
    output = load_snapshot(out)
    target = (Path(to).expanduser() if to is not None else output.out / "report").resolve()
    check_not_in_data(output.out, target)
    owned = prepare_out(target, overwrite=True, where=f"--to: {shown(target)}",  # new, empty or a report
                        not_folder="give a folder for the report", owned_by=_earlier_report)
    if model is not None and not Path(model).is_file():
        raise UsageError(f"--model: {model} does not exist")
    arch, notices = _archive(output, archive, allow_outside_archive=allow_outside_archive)
    maps = None
    if model is not None:
        job_config = output.manifest.get("config", {})
        maps = MapSource(model, backend_options=job_config.get("backend_options"),
                         mining=job_config.get("pipeline", {}).get("mining"),
                         recipe=job_config.get("pipeline", {}).get("recipe"))
        recorded = output.manifest.get("model", {}).get("sha256")
        if recorded and model_hash(model) != recorded:
            notices.append(f"Heatmaps come from --model {model}, which is not the file the job mined with "
                           f"(sha256 {recorded[:12]}...): they may not match the boxes.")
    rows = _Rows.of(output)
    mined = set(rows.mined.tolist())
    gt: dict[tuple[str, str], list[Box]] = {}
    for b in (arch.boxes if arch is not None else []):
        if b.image_id in mined:
            gt.setdefault((b.image_id, b.finding), []).append((b.x, b.y, b.w, b.h))
    evaluation = None
    if gt:  # miner eval's tables (miner.metrics.job): the mined images' ground truth, the model's findings
        truth, findings = job_ground_truth(arch.boxes, mined=sorted(mined), classes=output.classes)
        if findings:
            evaluation = evaluate_job(BoxTable.from_arrow(output.boxes), truth, images=sorted(mined),
                                      findings=findings,
                                      sizes={i: (int(h), int(w)) for i, (w, h) in rows.mined_wh.items()},
                                      exhaustive=bool(getattr(arch, "exhaustive", False)))
    hues = finding_hues(len(output.classes)) if output.classes else []
    job = _Job(output=output, rows=rows, config=cfg, archive=arch, gt=gt, evaluation=evaluation,
               asked=_asked(output, arch, mined), maps=maps,
               hues={f: hue_hex(hues[c]) for c, f in enumerate(output.classes)} if maps is not None else {})

    # built beside the target, moved in place at the end; a full disk or a read-only folder: one line, exit 74
    with built_beside(target) as tmp:
        names = [f for f in output.classes if (rows.finding == f).any()]
        names += sorted(set(rows.finding.tolist()) - set(names))
        slugs: dict[str, str] = {}
        for name in names:
            s = slug(name)
            slugs[name] = s if s not in slugs.values() else f"{s}-{len(slugs)}"
        views = [_finding(job, name, slugs[name], tmp) for name in names]
        entries = [e for v in views for e in (*v.top, *v.sample)]
        say(f"plots of {len(views)} findings written; drawing {len(entries)} gallery pictures")
        _draw(job, entries, tmp)
        common = {"version": __version__, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "out": str(output.out), "bounds": cfg, "name": output.out.name, "state": output.state,
                  "notices": notices, "hues": list(job.hues.items()), "with_model": maps is not None}
        index = _index(job, views, tmp, archive=archive, model=model)
        (tmp / "index.html").write_text(render_page("index.html", **common, **index), encoding="utf-8")
        (tmp / "findings").mkdir(exist_ok=True)
        for i, view in enumerate(views):
            (tmp / view.page).write_text(render_page(
                "finding.html", **common, f=view, prev=views[i - 1] if i > 0 else None,
                next=views[i + 1] if i + 1 < len(views) else None), encoding="utf-8")
        thumbs = sum(1 for e in entries if not e.error)
        summary = {"out": str(output.out), "status": output.state.status,
                   "manifest_updated": output.manifest.get("updated"), "shards_done": output.state.shards_done,
                   "shards_planned": output.state.shards_planned, "findings": [v.name for v in views],
                   "gallery": {v.name: {"top": len(v.top), "sample": len(v.sample)} for v in views},
                   "thumbnails": thumbs, "error_rows": int(output.errors.num_rows),
                   "error_rows_listed": len(index["error_rows"]),
                   "evaluated": evaluation.findings if evaluation else [],
                   "model": str(model) if model else None,
                   "config": asdict(cfg), "seconds": round(time.perf_counter() - started, 3)}
        written = [*folder_files(tmp), SUMMARY_NAME]  # what this report writes: all it may replace next time
        (tmp / SUMMARY_NAME).write_bytes(_summary_bytes(summary, written))
    install_folder(tmp, target, owned=owned, listing=SUMMARY_NAME, verb="report",
                   listing_bytes=lambda files: _summary_bytes(summary, files))
    files, size = len(written), sum((target / name).lstat().st_size for name in written)
    return ReportResult(index=target / "index.html", findings=len(views), thumbnails=thumbs,
                        error_rows=summary["error_rows"], error_rows_listed=summary["error_rows_listed"], files=files,
                        bytes=size, seconds=time.perf_counter() - started, status=output.state.status,
                        notices=notices)
