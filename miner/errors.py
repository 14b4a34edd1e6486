"""The errors a user can act on.

Every error raised for bad input derives from `MinerError`; the CLI prints its message as one line and
exits with its `exit_code` (2 for usage, 1 for failures). Anything else that escapes is an internal bug
and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class MinerError(Exception):
    """An error with a one-line message that names what is wrong and what to do."""

    exit_code = 1


class UsageError(MinerError):
    """A bad option or argument (exit code 2)."""

    exit_code = 2


class ArchiveError(MinerError):
    """An archive (folder, CSV or manifest) that cannot be read as one."""


class ImageError(MinerError):
    """One image file that cannot be decoded.

    `kind` is one of ``missing``, ``empty``, ``truncated``, ``corrupt``, ``unsupported``, ``too_large`` (its
    header announces more pixels than the decoder may allocate; see `miner.data.image.load_image`).
    """

    KINDS = ("missing", "empty", "truncated", "corrupt", "unsupported", "too_large")

    def __init__(self, path: str | Path, kind: str, detail: str = "") -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown ImageError kind {kind!r}")
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        message = f"{self.path}: {kind} image"
        if detail:
            message += f" ({detail})"
        super().__init__(message)

    def __reduce__(self):  # picklable across Ray workers
        return (type(self), (self.path, self.kind, self.detail))


class ModelError(MinerError):
    """A checkpoint, ONNX graph or engine that cannot be used."""


class BackendUnavailable(MinerError):
    """A requested backend, provider or device that is not available here."""
