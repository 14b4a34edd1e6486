"""The errors a user can act on.

Every error raised for bad input derives from `MinerError`; the CLI prints its message as one line and
exits with its `exit_code`:

- 2: fix what you gave us: an option (`UsageError`), an archive or label file (`ArchiveError`), a model file
  (`ModelError`), an output folder that is not ours or holds another job, a Parquet folder that breaks the
  output contract;
- 74: the output cannot be written (`WriteError`: a full disk, a quota, a read-only file system; sysexits.h's
  EX_IOERR, so that a script can tell "free space and rerun" from "fix the input");
- 1: other failures that are not the input's fault (a cluster that cannot be reached, a backend that is not
  installed here);
- 130 / 143: stopped by SIGINT / SIGTERM (what is finished is kept; rerun to resume).

Anything else that escapes is an internal bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class MinerError(Exception):
    """An error with a one-line message that names what is wrong and what to do."""

    exit_code = 1


class MinerWarning(UserWarning):
    """Something a user should know that does not stop the work (an archive listing an image twice, ...).

    The CLI prints each as one line, ``miner VERB: warning: ...`` on stderr (`miner.cli.main`)."""


class UsageError(MinerError):
    """A bad option or argument (exit code 2)."""

    exit_code = 2


class ArchiveError(MinerError):
    """An archive (folder, CSV or manifest) that cannot be read as one (exit code 2: fix the input)."""

    exit_code = 2


class ImageError(MinerError):
    """One image file that cannot be decoded (exit code 2 where a verb stops on it, e.g. `miner show`; in a job
    it is an error row and the job goes on).

    `kind` is one of ``missing``, ``empty``, ``truncated``, ``corrupt``, ``unsupported``, ``too_large`` (its
    header announces more pixels than the decoder may allocate, or its compressed data inflates past what the
    header promises; see `miner.data.image.load_image`), ``outside_archive`` (the path, symlinks followed,
    leaves the archive's root; see docs/untrusted-input.md, "The archive root"), ``non_finite`` (the model's
    logits or maps of the image are NaN or infinite: no boxes).
    """

    KINDS = ("missing", "empty", "truncated", "corrupt", "unsupported", "too_large", "outside_archive",
             "non_finite")
    exit_code = 2

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
    """A checkpoint, ONNX graph or engine that cannot be used (exit code 2: fix the input)."""

    exit_code = 2


class ExportError(MinerError):
    """An export that failed, or whose graph does not compute what the model computes (the parity check): not the
    input's fault (exit code 1); the message says what to try (another opset, --no-check to inspect the graph)."""


class BackendUnavailable(MinerError):
    """A requested backend, provider or device that is not available here."""


class WriteError(MinerError):
    """The output folder cannot be written: no space left, a quota, a read-only or failing file system.

    Not the input's fault, and nothing already written is lost: the message names the folder, the cause and
    what to do, which is always to rerun the same command (it resumes). Exit code 74 (EX_IOERR).
    """

    exit_code = 74

    def __init__(self, out: str | Path, cause: str, *, action: str, where: str = "", progress: str = "") -> None:
        self.out = str(out)
        self.cause = cause
        self.action = action
        self.where = where
        self.progress = progress
        super().__init__(self._message())

    def _message(self) -> str:
        message = f"{self.out}: cannot write the output: {self.cause}"
        if self.where:
            message += f" (writing {self.where})"
        if self.progress:
            message += f"; {self.progress}"
        return f"{message}; {self.action}"

    def with_progress(self, progress: str) -> WriteError:
        """The same error, saying how much of the job is safely written."""
        return WriteError(self.out, self.cause, action=self.action, where=self.where, progress=progress)

    def __reduce__(self):
        return (_rebuild_write_error, (self.out, self.cause, self.action, self.where, self.progress))


def _rebuild_write_error(out: str, cause: str, action: str, where: str, progress: str) -> WriteError:
    return WriteError(out, cause, action=action, where=where, progress=progress)
