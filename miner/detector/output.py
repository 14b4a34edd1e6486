"""Writing a finished output folder in the Parquet contract of ``miner mine`` (docs/design.md) from rows in hand.

``miner detector predict`` and ``miner detector refine`` (and ``miner bench detector``'s output of the true
boxes) write their boxes here, so that ``miner eval``, ``miner labels`` and ``miner report`` read them as they read a
mining job: ``boxes/``, ``errors/``, ``images/`` as one shard, its marker, and ``_manifest.json`` with status
``complete``, the archive and its fingerprint, the classes, and ``producer`` (which verb wrote it, from what).
OUT must be new or empty; ``overwrite`` replaces only what such an output holds (a user's other files stay).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from miner.errors import UsageError
from miner.io import (
    BOXES_SCHEMA,
    ERRORS_SCHEMA,
    IMAGES_SCHEMA,
    MANIFEST_NAME,
    ShardStore,
    read_manifest,
    shown,
    table_from_rows,
    write_manifest,
)


def check_new_output(out: str | Path, *, overwrite: bool, option: str = "--out") -> Path:
    """OUT resolved, refused (one line) if it is a file or holds something without `overwrite`; nothing written."""
    from miner.outdir import check_out_folder

    out = Path(out).expanduser().resolve()
    check_out_folder(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "an output" if (out / MANIFEST_NAME).exists() else "files"
        raise UsageError(f"{option}: {shown(out)} holds {what}; give a new folder or pass --overwrite (it replaces "
                         "only an output's boxes, errors, images and manifest)")
    if overwrite and out.is_dir() and any(out.iterdir()) and read_manifest(out) is None \
            and not (out / "images").is_dir():
        raise UsageError(f"{option}: {shown(out)} holds no output to replace; give a new folder")
    return out


def archive_record(arch: Any, archive_config: Any, path: str | Path) -> tuple[dict[str, Any], str]:
    """The manifest's ``archive`` section and the archive's fingerprint (as ``miner mine`` records them)."""
    from miner.job.plan import archive_fingerprint

    record = {"path": str(Path(path).expanduser().resolve()), "source": arch.source, "images": len(arch.records),
              "has_labels": arch.has_labels, "options": asdict(archive_config)}
    return record, archive_fingerprint(arch.records, arch.root)


def write_output(
    out: Path,
    *,
    boxes: Sequence[Mapping[str, Any]],
    errors: Sequence[Mapping[str, Any]],
    images: Sequence[Mapping[str, Any]],
    archive: Mapping[str, Any],
    fingerprint: str,
    model: Mapping[str, Any],
    producer: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the rows as a complete output folder `out` (checked with `check_new_output` before)."""
    from miner.job.driver import MANIFEST_FORMAT, _now, versions

    store = ShardStore(out)
    with store.lock():
        if overwrite:
            store.clear()
        store.prepare()
        count = len(images)
        store.write_shard(0, boxes=table_from_rows(list(boxes), BOXES_SCHEMA),
                          errors=table_from_rows(list(errors), ERRORS_SCHEMA),
                          images=table_from_rows(list(images), IMAGES_SCHEMA),
                          info={"images": count, "boxes": len(boxes), "errors": len(errors), "worker": 0,
                                "pid": os.getpid()})
        now = _now()
        write_manifest(out, {
            "format": MANIFEST_FORMAT,
            "status": "complete",
            "created": now,
            "updated": now,
            "identity": {"archive": fingerprint, "producer": producer.get("verb")},
            "archive": dict(archive),
            "model": dict(model),
            "config": dict(config or {}),
            "producer": dict(producer),
            "shards": {"size": max(count + len(errors), 1), "count": 1, "bounds": [[0, count + len(errors)]]},
            "counts": {"images": count, "boxes": len(boxes), "errors": len(errors)},
            "versions": versions(),
            "runs": [{"started": now, "finished": now, "status": "complete", "shards": 1, "images": count}],
        })
    return out
