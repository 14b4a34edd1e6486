"""`run_job`: the driver of the mining job (see the package docstring for the design).

The driver reads the archive's index, plans shards, checks the output folder (resume or refuse), starts the
model actors, keeps every ready actor fed with up to ``prefetch`` batches (each one a decode task whose
result Ray hands straight to the actor), gathers each shard's batch results in order and writes the shard
atomically the moment its last batch returns. It never holds more than the shards in flight.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from miner.config import JobConfig
from miner.errors import MinerError, ModelError, UsageError, WriteError
from miner.io import BOXES_SCHEMA, ERRORS_SCHEMA, IMAGES_SCHEMA, ShardStore, read_manifest, write_manifest
from miner.job.cluster import ClusterInfo, WorkerResources, connect, plan_workers, worker_env
from miner.job.plan import Shard, archive_fingerprint, check_identity, model_files, model_hash, plan_shards
from miner.job.progress import Progress
from miner.job.summary import BatchEvent, JobSummary
from miner.outdir import check_out_folder
from miner.runtime import raise_if_signalled, signals_deferred
from miner.settings import InferenceSettings

MANIFEST_FORMAT = 1
CLASS_MODES = ("labels", "predicted", "all")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages the output depends on (None where not installed)."""
    from importlib import metadata

    result: dict[str, str | None] = {"python": sys.version.split()[0]}
    for key, dists in (("miner", ("attention-miner",)), ("torch", ("torch",)), ("ray", ("ray",)),
                       ("onnxruntime", ("onnxruntime-gpu", "onnxruntime")), ("pyarrow", ("pyarrow",)),
                       ("numpy", ("numpy",)), ("opencv", ("opencv-python-headless", "opencv-python"))):
        result[key] = None
        for dist in dists:
            try:
                result[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return result


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class _ShardParts:
    shard: Shard
    batches: int
    parts: dict[int, Any] = field(default_factory=dict)
    started: float = math.inf
    finished: float = 0.0

    @property
    def complete(self) -> bool:
        return len(self.parts) == self.batches


def _batches(records: list, shards: list[Shard], batch_size: int) -> Iterator[tuple[Shard, int, int, list]]:
    """(shard, batch number, number of batches in the shard, payload) for every batch of `shards`, in order."""
    for shard in shards:
        count = math.ceil(len(shard) / batch_size)
        for seq in range(count):
            lo = shard.start + seq * batch_size
            hi = min(lo + batch_size, shard.stop)
            payload = [(r.image_id, r.path, tuple(r.labels), r.root) for r in records[lo:hi]]  # root: confine
            yield shard, seq, count, payload


def _identity(*, fingerprint: str, images: int, model_sha: str, config: JobConfig,
              backend_options: Mapping[str, Any], pipeline_options: Mapping[str, Any]) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "archive": fingerprint,
        "images": images,
        "shard_size": config.shard_size,
        "model_sha256": model_sha,
        "backend": config.backend,
        "classes": config.classes,
        "max_pixels": config.max_pixels,
    }
    if config.classes == "predicted":
        identity["prob_threshold"] = config.prob_threshold
    for key, value in sorted(backend_options.items()):
        identity[f"backend.{key}"] = value
    for key, value in sorted(pipeline_options.items()):
        identity[f"pipeline.{key}"] = value
    return json.loads(json.dumps(identity))  # as the manifest stores it (tuples become lists)


def _unwrap(err: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error, if there is one."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, MinerError) else err


def run_job(archive: str | Path, model: str | Path, out: str | Path, *, config: JobConfig | None = None,
            backend_options: Mapping[str, Any] | None = None, pipeline_options: Mapping[str, Any] | None = None,
            address: str | None = None,
            num_cpus: int | None = None, overwrite: bool = False, progress: bool = True,
            log: Callable[[str], None] | None = None, archive_config: Any = None) -> JobSummary:
    """Mine every image of `archive` with `model` into the Parquet dataset `out` (the output contract of
    docs/design.md).

    Args:
        archive: anything `miner.data.read_archive` reads; image files must be readable on every node.
        model: a checkpoint, ONNX graph or TensorRT engine, readable on every node that runs a model actor.
        out: the output folder (on the driver's file system). Rerunning on it resumes: finished shards are
            skipped; a different archive, model or output-affecting option is refused unless `overwrite`.
        config: job options (`miner.config.JobConfig`).
        backend_options: more options of `miner.backends.open_backend` (``method``, ``layer`` of a checkpoint's
            maps); output-affecting.
        pipeline_options: keyword options of `miner.pipeline.Pipeline` (mining steps, box options, ...);
            output-affecting.
        address: a Ray cluster to attach to (default: ``RAY_ADDRESS``, else a local cluster).
        num_cpus: logical CPUs of a local cluster (default: Ray's detection); ignored when attaching.
        overwrite: discard what `out` holds and start afresh.
        progress: show a progress bar on stderr.
        log: where to write the job's few information lines (default: stderr).
        archive_config: how the archive is read (`miner.config.ArchiveConfig`: CheXpert's uncertainty policy);
            recorded in the manifest so `miner eval` / `miner labels` read it the same way.

    Returns:
        A `JobSummary` (counts over the whole output, timings of this run).
    """
    from miner.data import read_archive

    started = time.time()
    config = config or JobConfig()
    pipeline_options = dict(pipeline_options or {})
    backend_options = {k: v for k, v in dict(backend_options or {}).items() if v is not None}
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    if config.classes not in CLASS_MODES:
        raise UsageError(f"--classes must be one of {', '.join(CLASS_MODES)} (got {config.classes!r})")
    if config.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {config.batch_size})")
    if not 0 <= config.prob_threshold <= 1:  # NaN included
        raise UsageError(f"--prob-threshold must lie in [0, 1] (got {config.prob_threshold})")
    if config.prefetch is not None and config.prefetch < 1:
        raise UsageError(f"--prefetch must be at least 1 (got {config.prefetch})")
    if config.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1 (got {config.max_pixels})")
    decode_placement(config.decode, gpus=0)  # a placement it does not know: one line before Ray starts

    from miner.config import ArchiveConfig

    archive_config = archive_config or ArchiveConfig()
    arch = read_archive(archive, config=archive_config)
    records = arch.records
    if not records:
        raise UsageError(f"{archive}: the archive lists no images")
    if config.classes == "labels" and not arch.has_labels:
        raise UsageError(f"{archive}: this archive has no labels; use --classes predicted or --classes all")
    model_path = Path(model).expanduser().resolve()
    if not model_path.is_file():
        raise ModelError(f"{model}: no such model file; give a checkpoint (.pt), an ONNX graph (.onnx) or an engine")
    # the model against its own record, run once on a test batch (shapes, finite values), before Ray and OUT
    from miner.backends import check_model

    meta = check_model(model_path, backend=config.backend, **backend_options)
    settings = _check_pipeline(meta, config=config, pipeline_options=pipeline_options, source=str(model))
    model_sha = model_hash(model_path)
    shards = plan_shards(len(records), config.shard_size)
    identity = _identity(fingerprint=archive_fingerprint(records, arch.root), images=len(records),
                         model_sha=model_sha, config=config, backend_options=backend_options,
                         pipeline_options=pipeline_options)
    if archive_config.allow_outside_archive:  # files outside the archive's root are mined, not error rows
        identity["allow_outside_archive"] = True

    # nothing is written to OUT, and Ray does not start, before every option, the archive and the model pass:
    # a refused command leaves OUT as it was, and the corrected one is not taken for another job
    out = Path(out).expanduser().resolve()
    check_out_folder(out)  # miner.outdir: a file, or a file in the way, is refused
    store = ShardStore(out)
    runs_ray = _needs_work(store, shards, identity, overwrite=overwrite)  # refuses another job's OUT, read-only
    _check_local_cpus(address, num_cpus=num_cpus, config=config)
    cluster = _cluster(address, num_cpus=num_cpus, config=config) if runs_ray else contextlib.nullcontext()
    with cluster as ray_plan, _say_what_is_kept(store, shards=len(shards)), store.lock():
        previous = read_manifest(out)
        if overwrite:
            store.clear()
            previous = None
        elif previous is not None:
            check_identity(previous.get("identity", {}), identity, out=out)
        elif store.has_output():
            raise UsageError(f"{out} holds shard files but no manifest; pass --overwrite to start afresh")
        store.prepare()
        removed = store.clean_stale()
        done = store.done()
        pending = [s for s in shards if s.index not in done]
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "status": "running",
            "created": (previous or {}).get("created", _now()),
            "updated": _now(),
            "identity": identity,
            "archive": {"path": str(Path(archive).expanduser().resolve()), "source": arch.source,
                        "images": len(records), "has_labels": arch.has_labels,
                        "options": asdict(archive_config)},
            "model": {**(previous or {}).get("model", {}), "path": str(model_path), "sha256": model_sha,
                      "files": [f.name for f in model_files(model_path)]},
            "config": {**asdict(config), "backend_options": backend_options, "pipeline": pipeline_options},
            "settings": settings.to_record(),
            "shards": {"size": config.shard_size, "count": len(shards),
                       "bounds": [[s.start, s.stop] for s in shards]},
            "versions": versions(),
            "runs": list((previous or {}).get("runs", [])),
        }
        for old_run in manifest["runs"]:
            if old_run.get("status") == "running":  # we hold the lock: that driver died without a word
                old_run["status"] = "killed"
        run_info: dict[str, Any] = {"started": _now(), "status": "running", "shards": len(pending),
                                    "images": sum(len(s) for s in pending)}
        manifest["runs"].append(run_info)
        write_manifest(out, manifest)
        if done:
            log(f"resuming {out}: {len(done)} of {len(shards)} shards done"
                + (f", {removed} partial files removed" if removed else ""))

        events: list[BatchEvent] = []
        startup = 0.0
        workers = 0
        status = "interrupted"
        failure: BaseException | None = None
        try:
            if pending:
                startup, workers, worker_info = _run_pending(
                    records, pending, store, model_path=model_path, config=config, backend_options=backend_options,
                    pipeline_options=pipeline_options, address=address, num_cpus=num_cpus, ray_plan=ray_plan,
                    events=events, progress=progress, log=log, started=started)
                manifest["model"].update(worker_info["model"])
                run_info.update(worker_info["run"])
            status = "complete"
        except BaseException as err:
            failure = err
            raise
        finally:
            seconds = time.time() - started
            done = store.done()
            counts = {key: sum(int(info.get(key, 0)) for info in done.values())
                      for key in ("images", "processed", "boxes", "errors")}
            summary = JobSummary(images=len(records), processed=counts["processed"], errors=counts["errors"],
                                 boxes=counts["boxes"], shards=len(shards), shards_run=len(pending),
                                 images_run=run_info["images"], seconds=seconds, startup_seconds=startup,
                                 workers=workers, out=str(out), events=events)
            run_info.update(finished=_now(), seconds=round(seconds, 3), status=status,
                            startup_seconds=round(startup, 3), workers=workers)
            if pending and status == "complete":
                run_info["images_per_second"] = round(summary.rate, 3)
                steady = summary.steady_rate
                if steady is not None:
                    run_info["steady_images_per_second"] = round(steady, 3)
            if isinstance(failure, WriteError):
                failure = failure.with_progress(_kept(len(done), len(shards)))
            if isinstance(failure, MinerError):
                run_info["error"] = str(failure)
            manifest.update(status="complete" if len(done) == len(shards) else status, updated=_now(),
                            counts={**counts, "shards_done": len(done)})
            try:
                with signals_deferred():  # a signal now would leave the manifest saying "running"
                    write_manifest(out, manifest)
            except WriteError:
                if failure is None:
                    raise
                # the error on its way already says what to do; the manifest keeps its last state ("running"),
                # which the rerun records as "killed"
    return summary


@contextlib.contextmanager
def _say_what_is_kept(store: ShardStore, *, shards: int) -> Iterator[None]:
    """Add to a `WriteError` how many shards are complete in OUT (they are kept; the rerun resumes after them)."""
    try:
        yield
    except WriteError as err:
        try:
            done = len(store.done())
        except OSError:
            raise err from err.__cause__
        raise err.with_progress(_kept(done, shards)) from err.__cause__


def _kept(done: int, shards: int) -> str:
    return f"{done} of {shards} shards are complete in it and kept"


def _check_pipeline(meta: Any, *, config: JobConfig, pipeline_options: Mapping[str, Any],
                    source: str | None = None) -> InferenceSettings:
    """The mining and box settings against the model's record, as each model actor will build them
    (`miner.pipeline.Pipeline`: the recipe, --steps against what the model can recompute, ...). Returns the
    effective settings (the manifest's ``settings``)."""
    from types import SimpleNamespace

    from miner.pipeline import Pipeline

    return Pipeline(SimpleNamespace(meta=meta, source=source), classes=config.classes,
                    prob_threshold=config.prob_threshold, **dict(pipeline_options)).settings


def _needs_work(store: ShardStore, shards: list[Shard], identity: Mapping[str, Any], *, overwrite: bool) -> bool:
    """Whether any shard is left to run; refuses (read-only, before Ray starts) what the locked check in
    `run_job` would refuse: OUT holding another job, or shard files without a manifest."""
    if overwrite or not store.out.is_dir():
        return True
    previous = read_manifest(store.out)
    if previous is not None:
        check_identity(previous.get("identity", {}), identity, out=store.out)
    elif store.has_output():
        raise UsageError(f"{store.out} holds shard files but no manifest; pass --overwrite to start afresh")
    done = store.done()
    return any(s.index not in done for s in shards)


def _check_local_cpus(address: str | None, *, num_cpus: int | None, config: JobConfig) -> None:
    """A local cluster of --num-cpus CPUs that cannot hold one model actor (and a decode task) is refused before
    Ray starts (its actors would wait for CPUs forever)."""
    ray = sys.modules.get("ray")
    if address or os.environ.get("RAY_ADDRESS") or num_cpus is None or (ray is not None and ray.is_initialized()):
        return
    if config.cpus_per_worker + config.decode_cpus > num_cpus:
        need = f"--cpus-per-worker {config.cpus_per_worker}" + (
            f" + --decode-cpus {config.decode_cpus:g}" if config.decode_cpus else "")
        raise UsageError(f"{need} needs more than the local Ray cluster's --num-cpus {num_cpus}; lower it or raise "
                         "--num-cpus")


@contextlib.contextmanager
def _cluster(address: str | None, *, num_cpus: int | None,
             config: JobConfig) -> Iterator[tuple[ClusterInfo, WorkerResources]]:
    """Ray for the job, and the resources of its model actors (a plan the cluster can never run is refused
    here, before OUT is touched)."""
    with connect(address, num_cpus=num_cpus) as cluster:
        yield cluster, plan_workers(cluster, workers=config.workers, cpus_per_worker=config.cpus_per_worker,
                                    gpus_per_worker=config.gpus_per_worker, decode_cpus=config.decode_cpus)


def _run_pending(records: list, pending: list[Shard], store: ShardStore, *, model_path: Path, config: JobConfig,
                 backend_options: dict[str, Any], pipeline_options: dict[str, Any], address: str | None,
                 num_cpus: int | None, ray_plan: tuple[ClusterInfo, WorkerResources] | None,
                 events: list[BatchEvent], progress: bool, log: Callable[[str], None],
                 started: float) -> tuple[float, int, dict[str, Any]]:
    """Run the pending shards on Ray (`ray_plan`: the cluster and the actors' resources, or None to start
    Ray here). Returns (start-up seconds, workers, what the actors reported)."""
    if ray_plan is None:
        with _cluster(address, num_cpus=num_cpus, config=config) as plan:
            return _run_pending(records, pending, store, model_path=model_path, config=config,
                                backend_options=backend_options, pipeline_options=pipeline_options, address=address,
                                num_cpus=num_cpus, ray_plan=plan, events=events, progress=progress, log=log,
                                started=started)
    cluster, resources = ray_plan
    where = "local Ray" if cluster.started_here else f"Ray cluster {cluster.address}"
    log(f"{len(pending)} shards to mine on {where} ({cluster.nodes} nodes, {cluster.cpus:g} CPUs, "
        f"{cluster.gpus:g} GPUs): {resources.workers} {resources.device} model actors x "
        f"{resources.cpus} CPUs" + (f", {resources.gpus:g} GPUs" if resources.gpus else ""))
    total = sum(len(s) for s in pending)
    bar = Progress(total, enabled=progress, log=log)
    try:
        return _dispatch(records, pending, store, cluster=cluster, resources=resources,
                         model_path=model_path, config=config, backend_options=backend_options,
                         pipeline_options=pipeline_options,
                         events=events, bar=bar, started=started)
    finally:
        bar.close()


def _dispatch(records: list, pending: list[Shard], store: ShardStore, *, cluster: ClusterInfo,
              resources: WorkerResources, model_path: Path, config: JobConfig, backend_options: dict[str, Any],
              pipeline_options: dict[str, Any],
              events: list[BatchEvent], bar: Progress, started: float) -> tuple[float, int, dict[str, Any]]:
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from miner.job.actors import ModelWorker, decode_task

    prefetch = config.prefetch or (8 if resources.gpus > 0 else 2)
    placement = decode_placement(config.decode, gpus=resources.gpus)
    actor_cls = ray.remote(ModelWorker)
    actors = [
        actor_cls.options(num_cpus=resources.cpus, num_gpus=resources.gpus, max_restarts=2, max_task_retries=2,
                          runtime_env={"env_vars": worker_env(threads=resources.cpus, malloc=config.malloc)})
        .remote(str(model_path), backend=config.backend, device=resources.device, threads=resources.cpus,
                backend_options=backend_options, pipeline_options={**pipeline_options, "classes": config.classes,
                                  "prob_threshold": config.prob_threshold})
        for _ in range(resources.workers)
    ]
    decode_threads = max(1, math.floor(config.decode_cpus))
    decode = ray.remote(decode_task)
    decode_options = {"num_cpus": config.decode_cpus, "max_retries": 3}

    waiting_info = {actor.info.remote(): i for i, actor in enumerate(actors)}
    info: dict[int, dict[str, Any]] = {}
    load: dict[int, int] = {}
    inflight: dict[Any, tuple[int, int, int, int]] = {}  # ref -> (actor, shard index, seq, images)
    shards: dict[int, _ShardParts] = {}
    batches = _batches(records, pending, config.batch_size)
    next_batch = next(batches, None)
    startup = 0.0
    deadline = time.time() + config.start_timeout

    def fail(err: BaseException, what: str) -> MinerError:
        inner = _unwrap(err)
        if isinstance(inner, MinerError):
            return inner
        text = str(err).strip().splitlines()
        return MinerError(f"{what}: {text[-1] if text else type(err).__name__}; finished shards are kept, "
                          "rerun the same command to resume")

    while True:
        raise_if_signalled()  # a SIGTERM that Ray's wait turned into something else still stops the job here
        # keep every ready actor fed, least loaded first
        while next_batch is not None and info:
            actor = min(info, key=lambda i: load[i])
            if load[actor] >= prefetch:
                break
            shard, seq, count, payload = next_batch
            if shard.index not in shards:
                shards[shard.index] = _ShardParts(shard, count)
            if placement == "actor":
                ref = actors[actor].decode_and_process.remote(payload, config.max_pixels)
            else:
                strategy = NodeAffinitySchedulingStrategy(node_id=info[actor]["node_id"], soft=True)
                decoded = decode.options(**decode_options, scheduling_strategy=strategy).remote(
                    payload, tuple(info[actor]["input_size"]), decode_threads, config.max_pixels)
                ref = actors[actor].process.remote(decoded)
            inflight[ref] = (actor, shard.index, seq, len(payload))
            load[actor] += 1
            next_batch = next(batches, None)
        if not inflight and next_batch is None:
            break
        timeout = None if info else max(0.0, deadline - time.time())
        ready, _ = ray.wait([*inflight, *waiting_info], num_returns=1, timeout=timeout)
        if not ready:
            raise MinerError(
                f"no model actor started within {config.start_timeout:g} s: the cluster ({cluster.cpus:g} CPUs, "
                f"{cluster.gpus:g} GPUs) cannot place an actor needing {resources.cpus} CPUs and "
                f"{resources.gpus:g} GPUs; lower --cpus-per-worker/--gpus-per-worker or --workers")
        for ref in ready:
            if ref in waiting_info:
                i = waiting_info.pop(ref)
                try:
                    info[i] = ray.get(ref)
                except (RayActorError, RayTaskError) as err:
                    raise fail(err, "a model actor failed to start") from None
                load[i] = 0
                if len(info) == 1:
                    startup = time.time() - started
                sizes = {tuple(v["input_size"]) for v in info.values()}
                if len(sizes) > 1:
                    raise MinerError(f"model actors disagree on the input size: {sorted(sizes)}")
                continue
            actor, index, seq, images = inflight.pop(ref)
            load[actor] -= 1
            try:
                result = ray.get(ref)
            except (RayActorError, RayTaskError, GetTimeoutError) as err:
                raise fail(err, f"a batch of shard {index} failed") from None
            parts = shards[index]
            parts.parts[seq] = result
            parts.started = min(parts.started, result.started)
            parts.finished = max(parts.finished, result.finished)
            events.append(BatchEvent(worker=actor, started=result.started, finished=result.finished, images=images))
            bar.update(images, boxes=result.boxes.num_rows, errors=result.errors.num_rows)
            if parts.complete:
                _write_shard(store, shards.pop(index), worker=actor)

    first = next(iter(info.values()))
    model_info = {key: first[key] for key in ("backend", "provider", "device", "classes", "input_size",
                                               "in_chans", "method", "layer", "map_size")}
    run_info = {"actors": [{k: v[k] for k in ("node_id", "pid", "device", "threads", "load_seconds",
                                              "warmup_seconds", "malloc")}
                            for v in info.values()],
                "cluster": {"address": cluster.address, "nodes": cluster.nodes, "cpus": cluster.cpus,
                            "gpus": cluster.gpus, "started_here": cluster.started_here},
                "prefetch": prefetch, "decode": placement}
    return startup, len(info), {"model": model_info, "run": run_info}


DECODE_PLACEMENTS = ("auto", "actor", "tasks")


def decode_placement(choice: str, *, gpus: float) -> str:
    """Where a job decodes (`JobConfig.decode`): ``auto`` is ``tasks`` for GPU actors, ``actor`` for CPU actors."""
    if choice not in DECODE_PLACEMENTS:
        raise UsageError(f"--decode must be one of {', '.join(DECODE_PLACEMENTS)}, got {choice!r}")
    if choice == "auto":
        return "tasks" if gpus > 0 else "actor"
    return choice


def _write_shard(store: ShardStore, parts: _ShardParts, *, worker: int) -> None:
    ordered = [parts.parts[seq] for seq in range(parts.batches)]
    boxes = pa.concat_tables([p.boxes for p in ordered]).cast(BOXES_SCHEMA)
    errors = pa.concat_tables([p.errors for p in ordered]).cast(ERRORS_SCHEMA)
    images = pa.concat_tables([p.images for p in ordered]).cast(IMAGES_SCHEMA)
    info = {"shard": parts.shard.index, "start": parts.shard.start, "stop": parts.shard.stop,
            "images": len(parts.shard), "processed": images.num_rows, "boxes": boxes.num_rows,
            "errors": errors.num_rows, "seconds": round(parts.finished - parts.started, 4),
            "finished": round(parts.finished, 4), "last_worker": worker}
    if images.num_rows + errors.num_rows != len(parts.shard):
        raise RuntimeError(f"shard {parts.shard.index}: {images.num_rows} images + {errors.num_rows} errors "
                           f"!= {len(parts.shard)} records")
    store.write_shard(parts.shard.index, boxes=boxes, errors=errors, images=images, info=info)
