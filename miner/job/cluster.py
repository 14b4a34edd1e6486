"""Connecting to Ray, and the environment and resources of the job's workers.

`connect` attaches to an existing cluster (``--address`` or ``RAY_ADDRESS``, as set by ``ray job submit``) or
starts a local one for the duration of the job, and reuses a session the caller already opened.

Authentication. Ray 2.52+ protects a cluster with a shared token (``RAY_AUTH_MODE=token``; the token from
``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token``). Without it anyone who
reaches the GCS or dashboard port can run code on every node, and a local cluster's GCS listens on every
interface. So a local cluster started here runs with token authentication unless ``RAY_AUTH_MODE`` says
otherwise: with the user's token where one is configured, else with a random token made here, kept in this
process's environment for the rest of its life (inherited by the cluster's processes, written nowhere; Ray
reads the mode and the token once per process, so a second local cluster of the same process reuses them).
It must stay off only where the user turns it off (``RAY_AUTH_MODE=disabled``; the test suite does so for the
in-process clusters of one pytest process, because Ray reads the mode once per process). Attaching, the mode
and the token are the environment's, as ``ray job submit`` passes them to its entrypoint; an attach that fails
for want of a token says so in one line.

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
import secrets
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

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


def check_token_path(environ: Mapping[str, str]) -> None:
    """Refuse a ``RAY_AUTH_TOKEN_PATH`` that does not name a readable, non-empty file (Ray aborts the whole
    process on one)."""
    path = environ.get("RAY_AUTH_TOKEN_PATH")
    if not path or environ.get("RAY_AUTH_TOKEN"):
        return
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as err:
        raise UsageError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the Ray token file ({err.strerror}); point it "
                         "at the cluster's token file") from None
    if not token:
        raise UsageError(f"RAY_AUTH_TOKEN_PATH={path}: the Ray token file is empty; point it at the cluster's "
                         "token file")


def token_configured(environ: Mapping[str, str]) -> bool:
    """Whether Ray would find a token: ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    if environ.get("RAY_AUTH_TOKEN") or environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    home = environ.get("HOME")
    return bool(home) and (Path(home) / ".ray" / "auth_token").is_file()


def local_auth_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to set for a local cluster started by the job: token authentication on, with the token
    the user configured, or a fresh random one for this job. Nothing when ``RAY_AUTH_MODE`` is already set
    (``token`` or ``disabled``: the user's choice)."""
    if environ.get("RAY_AUTH_MODE"):
        return {}
    changes = {"RAY_AUTH_MODE": "token"}
    if not token_configured(environ):
        changes["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # 256 bits, as `ray get-auth-token --generate`
    return changes


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """`ray.init` replaces SIGTERM's handler with ``sys.exit`` (and a started head node with its own); keep one
    the caller installed (``miner`` turns SIGTERM into an interrupt that ends the run cleanly, e.g. on ``ray job
    stop``): Ray's ``set_sigterm_handler`` does nothing while inside, and the caller's handler is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        import ray._private.utils as ray_utils
    except ImportError:  # pragma: no cover - another Ray layout: only the handler is put back
        ray_utils = None
    original = getattr(ray_utils, "set_sigterm_handler", None)
    if callable(previous) and original is not None:
        ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        if original is not None:
            ray_utils.set_sigterm_handler = original
        if callable(previous):
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            quiet: bool = True) -> Iterator[ClusterInfo]:
    """A Ray session for the job.

    Starting and stopping a local cluster is never cut in half by SIGINT or SIGTERM
    (`miner.runtime.signals_deferred`): a signal that arrives meanwhile is raised once the cluster is up (and
    the ``finally`` stops it) or down, so that no process of it outlives the job.

    Args:
        address: a cluster to attach to (``ray://``-less GCS address such as ``10.0.0.1:6379``, or ``auto``);
            None = ``RAY_ADDRESS`` if set, else a local cluster started here (with token authentication; see
            the module docstring) and stopped on exit.
        num_cpus, num_gpus: logical resources of a local cluster (default: what Ray detects); ignored when
            attaching.
        quiet: keep Ray's own INFO logging out of the terminal (the job prints its own progress).
    """
    from miner.runtime import signal_received, signals_deferred

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    import ray

    level = logging.WARNING if quiet else logging.INFO
    started = False
    try:
        if not ray.is_initialized():
            check_token_path(os.environ)
            if address is not None:
                with signals_deferred():
                    _attach(address, level)
            else:
                changes = local_auth_env(os.environ)
                os.environ.update(changes)
                if changes:
                    # Ray read the mode into its config when it was imported; read it again (as ray.init does when
                    # it turns token authentication on by itself)
                    from ray._raylet import Config

                    Config.initialize("")
                started = True  # from here on, whatever ray.init started is stopped on the way out
                with signals_deferred(), _keep_sigterm_handler():
                    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, logging_level=level)
        cpus, gpus, nodes = _resources()
        info = ClusterInfo(address=ray.get_runtime_context().gcs_address, started_here=started, cpus=cpus,
                           gpus=gpus, nodes=nodes)
        yield info
    except BaseException:
        failed = True
        raise
    else:
        failed = False
    finally:
        if started:
            with signals_deferred(), _stderr_silenced(failed or signal_received() is not None):
                ray.shutdown()


@contextlib.contextmanager
def _stderr_silenced(silence: bool) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null while the local cluster of a job that failed or was stopped is torn
    down: Ray's C++ core worker logs each task that the teardown cuts short (``task_manager.cc: Failed to push
    error to driver``) straight to the descriptor, past Python; the job's own line saying why it ended comes
    after."""
    if not silence:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _attach(address: str, level: int) -> None:
    import ray
    from ray.exceptions import AuthenticationError

    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    try:
        with _keep_sigterm_handler():
            ray.init(address=address, logging_level=level, log_to_driver=True)
    except AuthenticationError:
        raise UsageError(f"--address {address}: token authentication is on here (RAY_AUTH_MODE=token) but no "
                         "token was found; set RAY_AUTH_TOKEN_PATH to the cluster's token file (or RAY_AUTH_TOKEN), "
                         "as docs/cluster.md shows") from None
    except ConnectionError:
        hint = ("or its token differs from the one configured here" if token_mode else
                "or it requires token authentication (set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to its token "
                "file)")
        raise UsageError(f"--address {address}: no Ray cluster accepted the connection ({hint}); start one with "
                         "`ray start --head`, or leave --address out to run locally") from None


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
                 gpus_per_worker: float | None, decode_cpus: float = 0.0) -> WorkerResources:
    """How many model actors to start and what each reserves.

    GPUs are used where the cluster has them (``gpus_per_worker`` defaults to 1 there, 0 elsewhere); the
    default number of actors fills the cluster: one per ``gpus_per_worker`` GPUs, or on a CPU cluster one per
    ``cpus_per_worker`` CPUs, leaving ``decode_cpus`` free for a decode task (which would otherwise wait
    forever for CPUs the actors hold). An explicit ``workers`` beyond the cluster's current size is allowed on
    a cluster that may grow (an autoscaling one: actors start as resources appear); on a local cluster started
    by the job, which cannot grow, a plan that can never run (an actor larger than the cluster, decode tasks
    with no CPU left) is refused at once instead of waiting for resources that never come.
    """
    if cpus_per_worker < 1:
        raise UsageError(f"--cpus-per-worker must be at least 1 (got {cpus_per_worker})")
    if not decode_cpus >= 0:
        raise UsageError(f"--decode-cpus must be >= 0 (got {decode_cpus})")
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if cluster.gpus > 0 else 0.0
    if not gpus_per_worker >= 0:
        raise UsageError(f"--gpus-per-worker must be >= 0 (got {gpus_per_worker})")
    if gpus_per_worker > 0 and cluster.gpus == 0 and cluster.started_here:
        raise UsageError(f"--gpus-per-worker {gpus_per_worker:g}: the local Ray cluster has no GPUs; leave it out "
                         "(or 0) to run CPU actors")
    if gpus_per_worker > 0 and cluster.gpus == 0 and workers is None:
        raise UsageError(f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has no GPUs; leave it out "
                         "(or 0) to run CPU actors, or pass --workers for a cluster that autoscales GPU nodes")
    if cluster.started_here:  # a local cluster: what it has now is all it will ever have
        if gpus_per_worker > cluster.gpus:
            raise UsageError(f"--gpus-per-worker {gpus_per_worker:g}: the local Ray cluster has {cluster.gpus:g} "
                             "GPUs; ask for at most that many")
        if cpus_per_worker + decode_cpus > cluster.cpus:
            need = f"--cpus-per-worker {cpus_per_worker}" + (f" + --decode-cpus {decode_cpus:g}" if decode_cpus else "")
            raise UsageError(f"{need} needs more CPUs than the local Ray cluster has ({cluster.cpus:g}); lower "
                             "them, or raise --num-cpus")
    if workers is None:
        if gpus_per_worker > 0:
            workers = max(1, math.floor(cluster.gpus / gpus_per_worker + 1e-9))
        else:
            workers = max(1, math.floor((cluster.cpus - decode_cpus) / cpus_per_worker + 1e-9))
    if workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    if cluster.started_here and decode_cpus > 0 and workers * cpus_per_worker + decode_cpus > cluster.cpus:
        raise UsageError(f"--workers {workers} x --cpus-per-worker {cpus_per_worker} leave less than --decode-cpus "
                         f"{decode_cpus:g} of the local Ray cluster's {cluster.cpus:g} CPUs: decode tasks would wait "
                         "forever; lower --workers or --decode-cpus (0: decode beside the actors)")
    return WorkerResources(workers=workers, cpus=cpus_per_worker, gpus=float(gpus_per_worker))
