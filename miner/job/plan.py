"""The job's plan: deterministic shard boundaries, and what identifies a job's output.

A shard is a contiguous slice of the archive's records in archive order: shard k holds records
``[k * shard_size, min((k + 1) * shard_size, N))``. The boundaries depend only on the archive and the shard
size, so a rerun cuts the same shards and can skip the finished ones. They are recorded in the manifest.

A job's *identity* is what its rows depend on: the archive (a fingerprint of its ordered records), the
model's content hash and the output-affecting options. A rerun on an output folder with a different
identity is refused (it would mix rows of two jobs) unless the user overwrites.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miner.data.records import Record
from miner.errors import UsageError


@dataclass(frozen=True)
class Shard:
    """Records ``[start, stop)`` of the archive."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(num_records: int, shard_size: int) -> list[Shard]:
    """Cut ``num_records`` records into shards of ``shard_size`` (the last one may be shorter)."""
    if shard_size < 1:
        raise UsageError(f"--shard-size must be at least 1 (got {shard_size})")
    return [Shard(k, start, min(start + shard_size, num_records))
            for k, start in enumerate(range(0, num_records, shard_size))]


def archive_fingerprint(records: Sequence[Record], root: str | Path) -> str:
    """sha256 over the ordered (image_id, path relative to `root`, labels) of `records`.

    Relative paths keep the fingerprint stable when the whole archive moves (another mount point on
    another node); any change to which images are mined, their order or their labels changes it.
    """
    digest = hashlib.sha256()
    root = str(root)
    for record in records:
        rel = os.path.relpath(record.path, root)
        digest.update(f"{record.image_id}\t{rel}\t{'|'.join(record.labels)}\n".encode())
    return digest.hexdigest()


def model_files(model_path: str | Path) -> list[Path]:
    """The files a model consists of: the file itself, plus an ONNX graph's external-data file
    (``NAME.onnx.data``) when there is one."""
    path = Path(model_path)
    files = [path]
    data = path.with_name(path.name + ".data")
    if path.suffix == ".onnx" and data.is_file():
        files.append(data)
    return files


def model_hash(model_path: str | Path) -> str:
    """sha256 of the model's content (over every file of `model_files`, in order)."""
    digest = hashlib.sha256()
    for file in model_files(model_path):
        with open(file, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def check_identity(recorded: Mapping[str, Any], current: Mapping[str, Any], *, out: str | Path) -> None:
    """Raise a one-line `UsageError` naming the first item where `recorded` and `current` differ."""
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if old != new:
            raise UsageError(
                f"{out} holds the output of a different job ({key}: {_short(old)} there, {_short(new)} now); "
                "rerun with the same archive, model and options to resume, or pass --overwrite to start afresh")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
