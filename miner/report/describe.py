"""The job's description in a report: archive, model (arch, classes, recipe, hash), backend and device, options,
runs with their timings, versions; and the text formatting every table of the report shares."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from miner.report.job import JobSnapshot

#: the job options a report lists (`miner.config.JobConfig` fields, as the manifest records them)
JOB_OPTIONS = ("shard_size", "batch_size", "workers", "cpus_per_worker", "gpus_per_worker", "backend", "malloc",
               "prefetch")


def fmt(value: float | None, digits: int = 2) -> str:
    """A number with `digits` decimals; ``-`` for None and NaN."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def text(value: Any) -> str:
    """A manifest value as one line of text (lists joined by commas, dicts as key=value; ``-`` for None)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={text(v)}" for k, v in value.items()) or "-"
    return str(value)


def model_rows(output: JobSnapshot, model: str | Path | None) -> list[tuple[str, str]]:
    """The model's description: the manifest's record, plus arch and recipe from the checkpoint (or the model
    card beside it) when the file can be read."""
    m = output.manifest.get("model", {})
    rows = [("file", text(m.get("path"))), ("sha256", text(m.get("sha256"))),
            ("classes", f"{len(output.classes)}: {', '.join(output.classes)}"),
            ("backend", f"{text(m.get('backend'))} ({text(m.get('provider'))})"),
            ("device", text(m.get("device"))),
            ("maps", f"{text(m.get('method'))} at {text(m.get('layer'))}, {text(m.get('map_size'))}"),
            ("input", f"{text(m.get('input_size'))}, {text(m.get('in_chans'))} channel(s)")]
    path = Path(str(m.get("path") or ""))
    card = path.with_suffix(".json") if path.name else None  # no file named: nothing to read beside it
    described = False
    if card is not None and card.is_file():
        try:
            info = json.loads(card.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        if info.get("sha256") == m.get("sha256"):
            training = info.get("training", {})
            rows += [("arch", f"{text(info.get('arch'))} ({text(info.get('parameters'))} parameters)"),
                     ("recipe", f"{text(training.get('command'))}; {text(training.get('data'))}; stages "
                                f"{text(training.get('config', {}).get('stages'))}, "
                                f"{text(training.get('seconds'))} s")]
            described = True
    if not described and path.suffix == ".pt" and path.is_file():
        from miner.errors import ModelError
        from miner.models import read_checkpoint

        try:
            record = read_checkpoint(path)
        except ModelError:
            record = {}
        config = record.get("config") or {}
        keys = ("stages", "base_epochs", "msa_init_epochs", "end2end_epochs", "am_epochs", "optimizer", "lr",
                "batch_size", "input_size", "class_weights", "augment", "kp", "seed")
        rows += [("arch", f"{text(record.get('arch'))} {text(record.get('options'))}"),
                 ("recipe", f"stage {text(record.get('stage'))} epoch {text(record.get('epoch'))}; "
                            + "; ".join(f"{k}={text(config[k])}" for k in keys if k in config))]
        described = bool(record)
    if not described:
        rows.append(("arch, recipe", "not recorded: the model file is not readable here or carries no recipe"))
    if model is not None:
        rows.append(("heatmaps drawn with", str(model)))
    return rows


def run_rows(manifest: dict[str, Any]) -> list[dict[str, str]]:
    """One row per run of the job (a resumed job has several): times, status, work, images per second."""
    rows = []
    for run in manifest.get("runs", []):
        rows.append({"started": text(run.get("started")), "finished": text(run.get("finished")),
                     "status": text(run.get("status")), "shards": text(run.get("shards")),
                     "images": text(run.get("images")), "seconds": fmt(run.get("seconds"), 1),
                     "startup": fmt(run.get("startup_seconds"), 1), "workers": text(run.get("workers")),
                     "rate": fmt(run.get("images_per_second"), 1),
                     "steady": fmt(run.get("steady_images_per_second"), 1)})
    return rows


def archive_rows(output: JobSnapshot, *, given: str | Path | None, gt_boxes: int | None) -> list[tuple[str, str]]:
    """The archive as the manifest records it, where this report read it, and its ground-truth boxes."""
    manifest = output.manifest
    record = manifest.get("archive", {})
    rows = [("path", text(record.get("path"))), ("kind", text(record.get("source"))),
            ("images", text(record.get("images"))), ("labelled", text(record.get("has_labels"))),
            ("fingerprint", text(manifest.get("identity", {}).get("archive")))]
    if given is not None:
        rows.append(("read by this report from", str(given)))
    if gt_boxes is not None:
        rows.append(("ground-truth boxes", f"{gt_boxes:,}"))
    return rows


def option_rows(output: JobSnapshot) -> list[tuple[str, str]]:
    """The output-affecting options (which findings get boxes, mining, boxes, maps) and the job's own."""
    config = output.manifest.get("config", {})
    mode = config.get("classes", "labels")
    pipeline = config.get("pipeline", {})
    return [("classes", mode + (f" (p >= {config.get('prob_threshold')})" if mode == "predicted" else "")),
            ("mining", text(pipeline.get("mining"))), ("boxes", text(pipeline.get("boxes"))),
            ("backend options", text(config.get("backend_options"))),
            ("job", text({k: config.get(k) for k in JOB_OPTIONS}))]


def version_rows(output: JobSnapshot) -> list[tuple[str, str]]:
    """The versions the manifest records (Python, this package, torch, Ray, ...)."""
    return [(k, text(v)) for k, v in output.manifest.get("versions", {}).items()]


def last_rate(output: JobSnapshot) -> str:
    """Images per second of the last run that recorded one."""
    timed = [r for r in output.manifest.get("runs", []) if r.get("images_per_second")]
    return fmt(timed[-1]["images_per_second"], 1) if timed else "-"
