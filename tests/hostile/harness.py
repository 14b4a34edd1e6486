"""Run the real `miner` CLI on hostile input and check what a user would see.

Every hostile case runs ``python -m miner ...`` as a subprocess and asserts:

- the exit code the README's exit-code table gives;
- exactly one line on stderr, and no ``Traceback`` anywhere;
- nothing created, changed or deleted outside OUT: the listing (path, size, mtime, content hash) of the watched
  folders before and after, OUT excluded;
- the child's peak memory (``os.wait4``'s rusage of that child and what it waited for), for the bomb cases.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: the environment of every child: quiet Ray, no progress bars, no colour
ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_WAIT_POLICY": "PASSIVE",
    "NO_COLOR": "1",
    "PYTHONWARNINGS": "ignore",
}


@dataclass
class Result:
    """One finished `miner` run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    max_rss_mb: float  # the child's peak resident memory (ru_maxrss of the child and its waited-for children)
    seconds: float

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        return (f"miner {' '.join(self.args)}\n-> exit {self.returncode} in {self.seconds:.1f} s\n"
                f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}")


def snapshot(folders: Iterable[Path], *, exclude: Sequence[Path] = ()) -> dict[str, tuple]:
    """Every file, link and folder below `folders` (links not followed), with size, mtime and a content hash;
    paths below any of `exclude` are left out."""
    excluded = [Path(e).absolute() for e in exclude]
    listing: dict[str, tuple] = {}
    for folder in folders:
        folder = Path(folder).absolute()
        if not os.path.lexists(folder):
            continue
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            here = Path(dirpath)
            if any(here == e or e in here.parents for e in excluded):
                dirnames[:] = []
                continue
            listing[str(here)] = ("dir",)
            for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
                p = here / name
                if any(p == e for e in excluded):
                    continue
                st = os.lstat(p)
                if os.path.islink(p):
                    listing[str(p)] = ("link", os.readlink(p))
                else:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < (64 << 20) else ""
                    listing[str(p)] = ("file", st.st_size, st.st_mtime_ns, digest)
    return listing


def diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """What changed between two snapshots, one line each (empty when nothing did)."""
    lines = [f"deleted {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"created {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"changed {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


# Linux starts a child's ru_maxrss at the peak of the process it was forked (or vforked) from, carried through
# exec: a CLI started straight from a large pytest process reports at least pytest's own peak. With
# peak_memory=True the CLI is forked from this small launcher instead, which reports the CLI's own rusage.
_LAUNCHER = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "miner", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def run_miner(args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300,
              signal_after: tuple[float, int] | None = None, wait_for: Path | None = None,
              peak_memory: bool = False) -> Result:
    """Run ``python -m miner ARGS`` in `cwd`, wait for it and measure its peak memory (``os.wait4``).

    `signal_after=(seconds, signum)` sends the signal to the child that long after it started (or, with
    `wait_for`, that long after the file `wait_for` appears), to test signals at a given phase. stdout and
    stderr go to files in a temporary folder outside `cwd`, so that the capture changes no watched folder.
    `max_rss_mb` is the CLI's own peak only with `peak_memory=True` (through `_LAUNCHER`; not with signals);
    otherwise it is at least this process's peak.
    """
    assert not (peak_memory and signal_after), "peak_memory runs through a launcher that forwards no signal"
    child_env = {**os.environ, **ENV, **(env or {})}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hostile") as capture:
        out_path, err_path = Path(capture) / "stdout", Path(capture) / "stderr"
        rss_path = Path(capture) / "maxrss"
        command = ([sys.executable, "-c", _LAUNCHER, str(rss_path)] if peak_memory
                   else [sys.executable, "-m", "miner"])
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([*command, *map(str, args)], cwd=cwd, env=child_env,
                                    stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = start + timeout
            signalled = signal_after is None
            appeared: float | None = None
            while True:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                now = time.monotonic()
                if not signalled:
                    delay, signum = signal_after
                    if wait_for is None or wait_for.exists():
                        appeared = appeared if appeared is not None else now
                        if now - (start if wait_for is None else appeared) >= delay:
                            os.kill(proc.pid, signum)
                            signalled = True
                if now > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    os.wait4(proc.pid, 0)
                    raise AssertionError(f"miner {' '.join(map(str, args))} did not end within {timeout} s:\n"
                                         f"{err_path.read_text(errors='replace')[-3000:]}")
                time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        max_rss_kb = int(rss_path.read_text()) if peak_memory else rusage.ru_maxrss
    return Result([str(a) for a in args], proc.returncode, stdout, stderr, max_rss_kb / 1024,
                  time.monotonic() - start)


def assert_refused(result: Result, code: int, *, contains: Sequence[str] = ()) -> str:
    """The run ended with `code`, exactly one line on stderr and no traceback; returns that line."""
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.describe()
    assert result.returncode == code, result.describe()
    assert len(result.err_lines) == 1, result.describe()
    line = result.err_lines[0]
    for text in contains:
        assert text in line, f"{text!r} not in the error line: {line}\n{result.describe()}"
    return line


def assert_untouched(before: dict[str, tuple], after: dict[str, tuple]) -> None:
    changes = diff(before, after)
    assert not changes, "outside OUT:\n" + "\n".join(changes[:50])
