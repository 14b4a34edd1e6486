"""Connecting to Ray, and the environment and resources of the job's workers.

`connect` attaches to an existing cluster (``--address`` or ``RAY_ADDRESS``, as set by ``ray job submit``) or
starts a local one for the duration of the job, and reuses a session the caller already opened.

`worker_env` is the runtime environment of every model actor: thread counts equal to the CPUs a worker
holds (so actors on one node do not oversubscribe its cores), passive OpenMP waiting, and, unless asked otherwise,
glibc malloc thresholds raised: with glibc's defaults, torch eager inference on CPU returns its large
activation buffers to the kernel after every layer and faults them in again (NOTES.md: batch 4 of
ResNet-50 at 512 px took 1775 ms instead of 695 ms, about 750k page faults per forward). glibc reads these
variables once at process start, which is why they are set through Ray's runtime environment (merged with
the job's own) rather than in the worker's code.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

from miner.errors import UsageError
from miner.runtime import MALLOC_TUNED, OMP_PASSIVE

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: idle OpenMP threads sleep instead of spinning: a worker shares its node's cores with decode tasks, other
#: actors and the driver (see miner.runtime)
OMP_WAIT = OMP_PASSIVE
MALLOC_CHOICES = ("tuned", "default")


def worker_env(*, threads: int, malloc: str = "tuned") -> dict[str, str]:
    """Environment variables of a worker process that runs `threads` threads of compute."""
    if malloc not in MALLOC_CHOICES:
        raise UsageError(f"--malloc must be one of {', '.join(MALLOC_CHOICES)} (got {malloc!r})")
    env = {name: str(max(1, int(threads))) for name in THREAD_VARIABLES}
    env.update(OMP_WAIT)
    if malloc == "tuned":
        env.update(MALLOC_TUNED)
    return env


@dataclass(frozen=True)
class ClusterInfo:
    """What the job sees of the cluster it runs on."""

    address: str
    started_here: bool
    cpus: float
    gpus: float
    nodes: int


def _resources() -> tuple[float, float, int]:
    import ray

    total = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0)), nodes


@contextlib.contextmanager
def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            quiet: bool = True) -> Iterator[ClusterInfo]:
    """A Ray session for the job.

    Args:
        address: a cluster to attach to (``ray://``-less GCS address such as ``10.0.0.1:6379``, or ``auto``);
            None = ``RAY_ADDRESS`` if set, else a local cluster started here and stopped on exit.
        num_cpus, num_gpus: logical resources of a local cluster (default: what Ray detects); ignored when
            attaching.
        quiet: keep Ray's own INFO logging out of the terminal (the job prints its own progress).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # A local cluster holds no secrets to protect; without this Ray 2.5x warns about token auth.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    level = logging.WARNING if quiet else logging.INFO
    started = False
    if not ray.is_initialized():
        if address is not None:
            try:
                ray.init(address=address, logging_level=level, log_to_driver=True)
            except ConnectionError as err:
                raise UsageError(f"--address {address}: no Ray cluster answers there ({err}); start one with "
                                 "`ray start --head` or leave --address out to run locally") from err
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, logging_level=level)
            started = True
    try:
        cpus, gpus, nodes = _resources()
        info = ClusterInfo(address=ray.get_runtime_context().gcs_address, started_here=started, cpus=cpus,
                           gpus=gpus, nodes=nodes)
        yield info
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class WorkerResources:
    """Resources of each model actor, and how many actors."""

    workers: int
    cpus: int
    gpus: float

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def plan_workers(cluster: ClusterInfo, *, workers: int | None, cpus_per_worker: int,
                 gpus_per_worker: float | None) -> WorkerResources:
    """How many model actors to start and what each reserves.

    GPUs are used where the cluster has them (``gpus_per_worker`` defaults to 1 there, 0 elsewhere); the
    default number of actors fills the cluster: one per ``gpus_per_worker`` GPUs, or on a CPU cluster one per
    ``cpus_per_worker`` CPUs. An explicit ``workers`` beyond the cluster's current size is allowed (an
    autoscaling cluster grows to fit; actors start as resources appear).
    """
    if cpus_per_worker < 1:
        raise UsageError(f"--cpus-per-worker must be at least 1 (got {cpus_per_worker})")
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if cluster.gpus > 0 else 0.0
    if gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker must be >= 0 (got {gpus_per_worker})")
    if gpus_per_worker > 0 and cluster.gpus == 0 and workers is None:
        raise UsageError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has no GPUs; leave it out "
                         "(or 0) to run CPU actors, or pass --workers for a cluster that autoscales GPU nodes")
    if workers is None:
        if gpus_per_worker > 0:
            workers = max(1, math.floor(cluster.gpus / gpus_per_worker + 1e-9))
        else:
            workers = max(1, math.floor(cluster.cpus / cpus_per_worker + 1e-9))
    if workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    return WorkerResources(workers=workers, cpus=cpus_per_worker, gpus=float(gpus_per_worker))
