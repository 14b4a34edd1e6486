"""A mining job's output as a report reads it: the manifest, the rows of the finished shards, the job's state.

Only shards whose done-marker exists count (`miner.io`: a shard's three Parquet files are in place before its
marker), so a report of a job that is still running, or that was stopped, shows exactly the shards that are
done, and says how many of the planned ones those are. The state is read from the manifest and the folder's
lock: a manifest that says ``running`` while no process holds ``OUT/.lock`` belongs to a driver that died
without a word (killed).
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from miner.errors import UsageError
from miner.io import LOCK_NAME, MANIFEST_NAME, ContractError, ShardStore, read_manifest, read_parts, shown

#: job states a report names (`JobState.status`)
STATES = ("complete", "running", "interrupted", "killed")


@dataclass(frozen=True)
class JobState:
    """Where a job stands: its status, and shards and images done out of those planned."""

    status: str
    shards_done: int
    shards_planned: int
    images_done: int
    images_planned: int

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def line(self) -> str:
        """One sentence for the top of the report."""
        progress = (f"{self.shards_done} of {self.shards_planned} shards done ({self.images_done} of "
                    f"{self.images_planned} images)")
        return {
            "complete": f"Complete: {progress}.",
            "running": f"Still running (a job holds the output folder's lock): {progress} so far; this report "
                       "shows the finished shards only.",
            "interrupted": f"Interrupted: {progress}; rerun the same `miner mine` command to finish the rest.",
            "killed": f"Stopped without finishing (the driver died: killed or lost): {progress}; rerun the same "
                      "`miner mine` command to finish the rest.",
        }[self.status]


@dataclass
class JobSnapshot:
    """A snapshot of ``OUT`` as a report shows it (the finished shards; `miner.output.JobOutput` reads all rows).

    Attributes:
        out: the output folder.
        manifest: ``OUT/_manifest.json`` as written by the job.
        state: `JobState`.
        boxes, errors, images: the rows of the finished shards (`miner.io` schemas).
        classes: the model's class list (the manifest's; else the boxes' findings in class-index order).
    """

    out: Path
    manifest: dict[str, Any]
    state: JobState
    boxes: pa.Table
    errors: pa.Table
    images: pa.Table
    classes: list[str]

    def column(self, dataset: str, name: str) -> np.ndarray:
        """One column of one dataset as a numpy array (strings as an object array)."""
        table = {"boxes": self.boxes, "errors": self.errors, "images": self.images}[dataset]
        return table.column(name).to_numpy(zero_copy_only=False)

    def probs(self) -> np.ndarray:
        """The images' probabilities of every class, np.ndarray[N, C] float32 (C = len(classes))."""
        n, c = self.images.num_rows, len(self.classes)
        if n == 0:
            return np.zeros((0, c), np.float32)
        values = self.images.column("probs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        if values.size != n * c:
            raise UsageError(f"{self.out / 'images'}: the probs lists do not hold one value per class of the "
                             f"manifest ({c}); the output folder is damaged: rerun the job with --overwrite")
        return values.reshape(n, c).astype(np.float32)


def writer_alive(out: str | Path) -> bool:
    """Whether a process holds ``OUT/.lock`` (a job writing the folder right now; `ShardStore.lock`)."""
    import fcntl

    path = Path(out) / LOCK_NAME
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def job_state(out: str | Path, manifest: dict[str, Any], done: dict[int, dict[str, Any]]) -> JobState:
    """The `JobState` of `out` from its manifest, its shard markers (`done`) and its lock."""
    shards = manifest.get("shards", {})
    bounds = shards.get("bounds") or []
    planned = int(shards.get("count", len(bounds)))
    images_planned = int(manifest.get("archive", {}).get("images", bounds[-1][1] if bounds else 0))
    images_done = sum(int(info.get("images", 0)) for info in done.values())
    recorded = manifest.get("status", "running")
    if recorded == "complete" and len(done) >= planned:
        status = "complete"
    elif recorded == "interrupted":
        status = "interrupted"
    elif writer_alive(out):
        status = "running"
    else:
        status = "killed"
    return JobState(status=status, shards_done=len(done), shards_planned=planned, images_done=images_done,
                    images_planned=images_planned)


def _read_parts(store: ShardStore, dataset: str, indices: list[int]) -> pa.Table:
    """The parts of the finished shards `indices`, each checked against the output contract (`read_part`)."""
    paths = []
    for k in indices:
        path = store.part_path(dataset, k)
        if not os.path.lexists(path):
            raise ContractError(f"{shown(path)}: missing although shard {k} is marked done; the output folder is "
                                f"damaged: delete {shown(store.marker_path(k))} and rerun the same miner mine command "
                                "to rewrite that shard")
        paths.append(path)
    return read_parts(paths, dataset)


def load_snapshot(out: str | Path) -> JobSnapshot:
    """Read what a report shows of the job output folder `out` (raises `UsageError` if it is not one)."""
    out = Path(out).expanduser().resolve()
    if not out.is_dir():
        raise UsageError(f"OUT: {out} is not a folder; give the folder `miner mine --out` wrote")
    manifest = read_manifest(out)
    if manifest is None:
        raise UsageError(f"OUT: {out} holds no {MANIFEST_NAME}; give the folder `miner mine --out` (or "
                         "`miner demo`) wrote")
    store = ShardStore(out)
    done = store.done()
    indices = sorted(done)
    boxes = _read_parts(store, "boxes", indices)
    errors = _read_parts(store, "errors", indices)
    images = _read_parts(store, "images", indices)
    classes = list(manifest.get("model", {}).get("classes") or [])
    if not classes and boxes.num_rows:
        index = boxes.column("class_index").to_numpy()
        names = boxes.column("finding").to_numpy(zero_copy_only=False)
        by_index = dict(zip(index.tolist(), names.tolist()))
        classes = [by_index.get(i, f"class {i}") for i in range(max(by_index) + 1)]
    return JobSnapshot(out=out, manifest=manifest, state=job_state(out, manifest, done), boxes=boxes,
                     errors=errors, images=images, classes=classes)
