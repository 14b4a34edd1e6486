"""Process environment for CPU inference: glibc malloc and OpenMP settings, read once at start-up.

Measured on this project's 2-core CPU machines (NOTES.md): with glibc's default malloc, torch eager
inference at batch 4 took 2.5x longer than with the thresholds below (about 750k page faults per
forward: every large activation is mmapped and returned to the kernel). An OpenMP team whose idle
threads spin stalls at every barrier when a member is descheduled (2 threads on a busy machine:
6.0 images/s spinning, 17.4 passive). Both are read by the C runtime when the process starts, so a
process that wants them must be started with them: Ray workers get them through their runtime
environment (`miner.job.cluster.worker_env`), benchmarks re-execute themselves (`reexec_with`).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

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
