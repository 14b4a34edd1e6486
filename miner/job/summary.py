"""What a job did: counts, timings, and the steady-state throughput of its model actors."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BatchEvent:
    """One batch finished by one worker at wall-clock time `finished` (seconds since the epoch)."""

    worker: int
    started: float
    finished: float
    images: int


def steady_window(events: Sequence[BatchEvent]) -> tuple[int, float] | None:
    """(images, seconds) of the window in which every worker was busy: start-up and tail excluded.

    The window opens when the last worker to get going finishes its first batch (every model is loaded and
    warm) and closes when the first worker finishes its last batch (after that, some worker idles for lack
    of work). It counts the images of the batches finished inside ``(open, close]``. None when the window is
    empty (too few batches per worker to measure).
    """
    by_worker: dict[int, list[BatchEvent]] = {}
    for event in events:
        by_worker.setdefault(event.worker, []).append(event)
    if not by_worker:
        return None
    opens = max(min(e.finished for e in evs) for evs in by_worker.values())
    closes = min(max(e.finished for e in evs) for evs in by_worker.values())
    if closes <= opens:
        return None
    images = sum(e.images for e in events if opens < e.finished <= closes)
    return (images, closes - opens) if images else None


def steady_rate(events: Sequence[BatchEvent]) -> float | None:
    """Images per second inside `steady_window` (None when it is empty)."""
    window = steady_window(events)
    return window[0] / window[1] if window else None


@dataclass
class JobSummary:
    """Counts over the whole output folder (earlier runs included) and timings of this run.

    Attributes:
        images: records in the archive; processed: images that went through the model; errors: error rows;
        boxes: box rows (all over the whole output).
        shards, shards_run: shards in the plan, shards this run wrote.
        images_run: images this run handled (processed or failed).
        seconds: this run's wall time, Ray start-up and model loading included.
        startup_seconds: from the start of the run until the first model actor was ready.
        events: per-batch timings of this run (for `steady_rate`).
    """

    images: int
    processed: int
    errors: int
    boxes: int
    shards: int
    shards_run: int
    images_run: int
    seconds: float
    startup_seconds: float = 0.0
    workers: int = 0
    out: str = ""
    events: list[BatchEvent] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Images per second of this run, wall time (start-up included)."""
        return self.images_run / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_rate(self) -> float | None:
        return steady_rate(self.events)

    def line(self) -> str:
        """The one-line summary printed at the end of `miner mine`."""
        skipped = self.shards - self.shards_run
        resumed = f", {skipped} of {self.shards} shards already done" if skipped and self.shards_run else ""
        if not self.shards_run:
            return (f"nothing to do: all {self.shards} shards of {self.out} are done ({self.images} images, "
                    f"{self.boxes} boxes, {self.errors} errors)")
        steady = self.steady_rate
        steady_text = f", {steady:.1f} steady" if steady else ""
        return (f"mined {self.images} images: {self.boxes} boxes, {self.errors} errors{resumed}; this run "
                f"{self.images_run} images in {self.seconds:.1f} s ({self.rate:.1f} images/s{steady_text}, "
                f"{self.workers} workers) -> {self.out}")
