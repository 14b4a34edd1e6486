"""Progress of a running job: a tqdm bar on a terminal, a log line every `interval` seconds otherwise (the
driver's log under `ray job submit` or Kubernetes, where a redrawn bar would be noise)."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


class Progress:
    """``update(images, boxes=, errors=)`` after every batch; ``close()`` at the end.

    Args:
        total: images this run will handle.
        enabled: False = silent.
        log: where the periodic lines go when stderr is not a terminal.
        interval: seconds between periodic lines.
    """

    def __init__(self, total: int, *, enabled: bool = True, log: Callable[[str], None] | None = None,
                 interval: float = 30.0, stream: Any = None) -> None:
        self.total = total
        self.done = 0
        self.boxes = 0
        self.errors = 0
        self.started = time.time()
        self.interval = interval
        self.log = log
        self._last = self.started
        self._bar = None
        stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.enabled = enabled
        if enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="img", desc="mining", file=stream, dynamic_ncols=True, mininterval=0.5)

    def update(self, images: int, *, boxes: int = 0, errors: int = 0) -> None:
        self.done += images
        self.boxes += boxes
        self.errors += errors
        if self._bar is not None:
            self._bar.set_postfix(boxes=self.boxes, errors=self.errors, refresh=False)
            self._bar.update(images)
        elif self.enabled and self.log is not None:
            now = time.time()
            if now - self._last >= self.interval or self.done == self.total:
                self._last = now
                self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.time()) - self.started, 1e-9)
        share = 100.0 * self.done / self.total if self.total else 100.0
        return (f"mined {self.done}/{self.total} images ({share:.1f}%), {self.boxes} boxes, {self.errors} errors, "
                f"{self.done / elapsed:.1f} images/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
