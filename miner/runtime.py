"""The process: environment for CPU inference (glibc malloc and OpenMP settings, read once at start-up), and
how SIGINT and SIGTERM end a command (`interrupt_on_signals`, `signals_deferred`).

Measured on this project's 2-core CPU machines (NOTES.md): with glibc's default malloc, torch eager
inference at batch 4 took 2.5x longer than with the thresholds below (about 750k page faults per
forward: every large activation is mmapped and returned to the kernel). An OpenMP team whose idle
threads spin stalls at every barrier when a member is descheduled (2 threads on a busy machine:
6.0 images/s spinning, 17.4 passive). Both are read by the C runtime when the process starts, so a
process that wants them must be started with them: Ray workers get them through their runtime
environment (`miner.job.cluster.worker_env`), benchmarks re-execute themselves (`reexec_with`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any

#: glibc malloc: keep large blocks on the heap instead of mmap/munmap per tensor, never trim it back
MALLOC_TUNED: dict[str, str] = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "1073741824",
}
#: idle OpenMP threads sleep instead of spinning
OMP_PASSIVE: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}


def env_has(wanted: Mapping[str, str]) -> bool:
    """True when every variable of `wanted` has its value in this process's environment."""
    return all(os.environ.get(k) == v for k, v in wanted.items())


def malloc_tuned() -> bool:
    return env_has(MALLOC_TUNED)


def reexec_with(wanted: Mapping[str, str], *, guard: str, reason: str = "") -> None:
    """Restart this `miner` command with `wanted` in its environment, unless they are already there.

    `guard` names an environment variable set in the child so that a restart happens at most once.
    Returns only when no restart is needed; prints one line saying what it set when it restarts.
    """
    if env_has(wanted) or os.environ.get(guard):
        return
    env = dict(os.environ, **wanted, **{guard: "1"})
    print(f"re-executing with {' '.join(f'{k}={v}' for k, v in wanted.items())}"
          + (f" ({reason})" if reason else ""), flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "miner", *sys.argv[1:]], env)


# --- signals: SIGINT and SIGTERM end a command as an interrupt, once, whatever it is doing ---------------------


class Stopped(KeyboardInterrupt):
    """SIGTERM (``ray job stop``, ``kill``, a pod being deleted) raised in the main thread like Ctrl-C, so that a
    command ends as an interrupted run: the ``finally`` blocks roll back what was half written and record the
    rest."""

    signum = int(signal.SIGTERM)


#: the signals that interrupt a command (exit code 128 + the signal's number: 130 SIGINT, 143 SIGTERM)
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class _SignalState:
    """What `interrupt_on_signals` shares with every nested use and with `signals_deferred`."""

    def __init__(self) -> None:
        self.depth = 0
        self.previous: dict[int, Any] = {}
        self.received: list[int] = []
        self.raised = False  # an interrupt was raised: later signals are only recorded
        self.deferring = 0
        self.reported = False  # a verb printed its own "stopped by" line


_SIGNALS = _SignalState()


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Stopped() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, frame: object) -> None:
    state = _SIGNALS
    state.received.append(signum)
    if state.raised or state.deferring:
        return
    state.raised = True
    raise _interrupt(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While inside, SIGINT raises `KeyboardInterrupt` and SIGTERM raises `Stopped` in the main thread, once:
    the first one raises, later ones are only recorded (a second Ctrl-C cannot cut the clean-up of the first in
    half). `signal_received` says which came first; `signals_deferred` holds them back around work that must
    not be cut (starting or stopping Ray, writing a manifest). Signals that were ignored (a background job's
    SIGINT) stay ignored. Nested uses share the outermost one; it restores the previous handlers."""
    state = _SIGNALS
    if not _main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    if state.depth == 0:
        state.received.clear()
        state.raised = state.reported = False
        state.previous = {}
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                state.previous[int(signum)] = signal.signal(signum, _on_signal)
    state.depth += 1
    try:
        yield
    finally:
        state.depth -= 1
        if state.depth == 0:
            for signum, handler in state.previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            state.previous = {}


def signal_received() -> int | None:
    """The first SIGINT or SIGTERM received inside `interrupt_on_signals` (its number), or None."""
    return _SIGNALS.received[0] if _SIGNALS.received else None


def quiet_signals() -> None:
    """From now on, signals are only recorded (the command is ending: its last lines must not be cut)."""
    _SIGNALS.raised = True


def mark_reported() -> None:
    """The command printed its own "stopped by" line (`miner.cli.main` prints none then)."""
    _SIGNALS.reported = True


def reported() -> bool:
    return _SIGNALS.reported


def raise_if_signalled() -> None:
    """Raise the interrupt of a signal received but not raised (one that a library swallowed: a check where
    a loop can stop cleanly)."""
    if _SIGNALS.depth == 0:  # outside `interrupt_on_signals` nothing is recorded for this caller
        return
    signum = signal_received()
    if signum is not None and not _SIGNALS.deferring:
        _SIGNALS.raised = True
        raise _interrupt(signum)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while inside: they are recorded, and the first one is raised on leaving the
    block (unless an exception is already on its way out of it). For work that a signal must not cut in half:
    starting Ray (processes started but not yet known to ``ray.shutdown``), stopping it, a last manifest
    write. Outside `interrupt_on_signals`, the handlers are installed for the block and a signal received is
    sent again once the previous handlers are back (it then does what it would have done)."""
    state = _SIGNALS
    if not _main_thread():
        yield
        return
    own: dict[int, Any] = {}
    if state.depth == 0:  # nobody turns signals into interrupts: catch them here for the block
        for signum in STOP_SIGNALS:
            handler = signal.getsignal(signum)
            if handler is not signal.SIG_IGN and handler is not _on_signal:
                own[int(signum)] = signal.signal(signum, _on_signal)
    before = len(state.received)
    state.deferring += 1
    try:
        yield
    finally:
        state.deferring -= 1
        late = state.received[before:]
        if own:
            del state.received[before:]
            for signum, handler in own.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if not late:
        return
    if own:
        signal.raise_signal(late[0])  # the caller's handler (or the default action) takes it now
    elif state.deferring == 0 and not state.raised:
        state.raised = True
        raise _interrupt(late[0])
