"""`miner bench mine`: the Ray mining job against a plain in-process loop, on the same phantom images.

Cases, run one after another in one command (same images, model, batch size and options):

- ``loop``: decode + pipeline in one process, torch using every core (a fresh process with the actors'
  environment: glibc malloc tuned, passive OpenMP waiting);
- ``job2``: ``miner mine``'s job with 2 CPU actors x 1 CPU, torch backend;
- ``job1``: the same with 1 actor x 1 CPU (how the job scales with actors);
- ``onnx2``: 2 CPU actors, onnxruntime on the graph ``miner export onnx`` writes for the same checkpoint;
- ``default2``: 2 CPU actors, torch, glibc's default malloc (the allocator effect);
- ``tasks2``: 2 CPU actors, torch, decoded by Ray tasks beside the actors (``--decode tasks``, the GPU default;
  the CPU default, ``job2``, decodes in the actors);
- ``bound``: the machine's bound for the job: in a fresh process with a model actor's environment (1 thread,
  glibc malloc tuned, passive OpenMP waiting) and torch at 1 thread, the CPU time per image of decode
  (`miner.pipeline.decode_batch`, as a decode task runs it) and of `miner.pipeline.Pipeline.run`, split into the
  model (the backend's own calls inside the pipeline, timed where they run) and mining (the rest: attention mining,
  boxes, rows), over the round's images in batches of ``--batch-size``, the first batch left out (warm-up).
  Bound (images/s) = cores / (decode + model + mining core-seconds per image): what the job would reach if every
  core did nothing but decode and the pipeline. ``job (2 actors) / bound`` is the job's share of it.

``--model PATH`` mines with that checkpoint (e.g. ``miner/assets/default_model.pt``, the embedded model, at its own
input size and with its own recipe settings) instead of the random ``--arch`` model; its ONNX graph for ``onnx2``
is cached like the others, keyed by the checkpoint's sha256.

Every figure is a steady-state rate: images per second while every worker is busy, from the moment the last
worker finishes its first batch to the moment the first worker finishes its last one (`miner.job.steady_rate`;
model loading, warm-up and the tail are excluded). Wall-clock rates with start-up are printed beside them.

The images are split into ``--rounds`` rounds and every case runs once per round, in rotating order, so that
a change of machine load hits every case alike; a case's figure pools its steady windows over the rounds. The
phantom archive and the model are made once and kept under ``--cache`` (default
``~/.cache/attention-miner/bench-mine``). The load average is printed around each case.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HELP = "Ray mining job vs an in-process loop and the machine's bound (steady-state images/s): actors, backends, malloc"
CASES = ("loop", "job2", "job1", "onnx2", "default2", "tasks2", "bound")
#: the fields of one timed batch of the ``bound`` case (seconds; ``*_wall``: wall clock, the others CPU time)
BOUND_FIELDS = ("images", "decode", "model", "pipeline", "decode_wall", "model_wall", "pipeline_wall")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=2000, help="phantom images (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=512, help="phantom side in pixels (default %(default)s)")
    parser.add_argument("--input-size", type=int, default=256, help="model input side (default %(default)s)")
    parser.add_argument("--model", default=None,
                        help="mine with this checkpoint (e.g. miner/assets/default_model.pt, the embedded model) at "
                             "its own input size and recipe settings, instead of the random --arch model (--arch, "
                             "--width, --input-size and --recipe are then ignored)")
    parser.add_argument("--arch", default="resnet18", help="model (default %(default)s, random weights)")
    parser.add_argument("--width", type=float, default=1.0, help="model width multiplier (default %(default)s)")
    parser.add_argument("--recipe", default=None,
                        help="build the model with this recipe's map options and mine with its settings (miner.recipes;"
                             " e.g. cai2018 vs peaks at the same arch and size); default: the arch as it is, "
                             "the seed's mining and boxes")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model call (default %(default)s)")
    parser.add_argument("--shard-size", type=int, default=100, help="images per shard (default %(default)s)")
    parser.add_argument("--classes", default="labels", choices=("labels", "predicted", "all"),
                        help="findings that get boxes (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="split the images into this many rounds; every case runs once per round (default "
                             "%(default)s)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of {', '.join(CASES)} (default: all)")
    parser.add_argument("--cache", default=None,
                        help="where the phantom archive and the model are kept (default ~/.cache/attention-miner/"
                             "bench-mine)")
    parser.add_argument("--archive", default=None,
                        help="an existing archive to use instead of the cached phantoms (its first --images images)")


def _model_stem(path: Path) -> str:
    """The cache name of a given checkpoint's ONNX graph: its name and the first 16 digits of its sha256."""
    from miner.models.meta import file_hash

    return f"{path.stem}-{file_hash(path).split(':', 1)[1][:16]}"


def _prepare(args: argparse.Namespace, cases: list[str]) -> tuple[Path, Path, Path | None]:
    """(archive, checkpoint, onnx graph or None), made once under the cache folder (a `--model` checkpoint is
    used where it is; its graph is cached under its sha256)."""
    import torch

    from miner.findings import CHESTXRAY14
    from miner.models import create_model, save_checkpoint
    from miner.phantoms import make_phantoms

    cache = Path(args.cache or Path.home() / ".cache" / "attention-miner" / "bench-mine").expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    if args.archive:
        archive = Path(args.archive)
    else:
        archive = cache / f"phantoms-{args.images}-{args.image_size}"
        if not (archive / "Data_Entry_2017.csv").is_file():
            print(f"writing {args.images} phantom images ({args.image_size} px) to {archive} (once)", flush=True)
            make_phantoms(archive, images=args.images, size=args.image_size, seed=0, overwrite=True, progress=True)
    recipe = getattr(args, "recipe", None)
    given = getattr(args, "model", None)
    if given:
        checkpoint = Path(given).expanduser().absolute()
        stem = _model_stem(checkpoint)
    else:
        stem = f"{args.arch}-w{args.width:g}-{args.input_size}" + (f"-{recipe}" if recipe else "")
        checkpoint = cache / f"{stem}.pt"
    if not given and not checkpoint.is_file():
        options: dict[str, Any] = {}
        meta: dict[str, Any] = {"input_size": args.input_size}
        if recipe:
            from miner.recipes import get_recipe

            options = get_recipe(recipe).options_for(args.arch)
            meta.update(get_recipe(recipe).record())
        torch.manual_seed(0)
        model = create_model(args.arch, classes=CHESTXRAY14, width=args.width, **options)
        save_checkpoint(checkpoint, model, meta=meta)
    graph = None
    if "onnx2" in cases:
        graph = cache / f"{stem}.onnx"
        if not graph.is_file():
            from miner.export.onnx import export_checkpoint

            print(f"exporting {checkpoint.name} to ONNX (once)", flush=True)
            export_checkpoint(checkpoint, graph)
    return archive, checkpoint, graph


def _archive_config() -> Any:
    """How every case reads the manifests of `_subset`: they lie in a temporary folder and name the archive's files
    by absolute path, outside the manifest's folder, its root under the archive-root rule (`miner.data.confine`);
    read under that rule, every image would be an ``outside_archive`` error row, never decoded. The rule's own cost
    (one ``realpath`` per file) is left out of every case alike."""
    from miner.config import ArchiveConfig

    return ArchiveConfig(allow_outside_archive=True)


def _subset(archive: Path, start: int, stop: int, workdir: Path) -> Path:
    """A manifest of the archive's records [start, stop) (so that every case mines the same images; read it with
    `_archive_config`)."""
    import csv

    from miner.data import read_archive

    arch = read_archive(archive)
    records = arch.records[start:stop]
    manifest = workdir / f"manifest-{start}.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "path", "labels"])
        for r in records:
            writer.writerow([r.image_id, r.path, "|".join(r.labels) or "No Finding"])
    return manifest


def loop_worker(spec_json: str) -> None:
    """The in-process baseline (run in a fresh process): decode + pipeline over every batch; prints JSON."""
    spec = json.loads(spec_json)
    import torch

    from miner.backends import open_backend
    from miner.data import read_archive
    from miner.pipeline import Pipeline, decode_batch

    torch.set_num_threads(spec["threads"])
    arch = read_archive(spec["archive"], config=_archive_config())
    backend = open_backend(spec["model"], backend="torch", device="cpu")
    pipeline = Pipeline(backend, classes=spec["classes"])
    size = backend.meta.input_size
    records = [(r.image_id, r.path, r.labels) for r in arch.records]
    events = []
    started = time.time()
    for lo in range(0, len(records), spec["batch_size"]):
        t0 = time.time()
        batch = decode_batch(records[lo:lo + spec["batch_size"]], input_size=size)
        out = pipeline.run(batch)
        events.append([t0, out.finished, len(batch) + len(batch.errors)])
    print(json.dumps({"events": events, "seconds": time.time() - started}))


def _run_loop(manifest: Path, checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    from miner.job import BatchEvent, steady_window
    from miner.job.cluster import worker_env

    threads = os.cpu_count() or 1
    spec = {"archive": str(manifest), "model": str(checkpoint), "classes": args.classes, "threads": threads,
            "batch_size": args.batch_size}
    env = {**os.environ, **worker_env(threads=threads, malloc="tuned")}
    code = "import sys; from miner.bench.mine import loop_worker; loop_worker(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"loop worker failed:\n{result.stderr[-3000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    events = [BatchEvent(0, s, f, n) for s, f, n in data["events"]]
    images = sum(e.images for e in events)
    return {"window": steady_window(events), "images": images, "seconds": data["seconds"],
            "label": f"loop in one process, torch, {threads} threads"}


class _ModelClock:
    """CPU and wall seconds spent in a backend's own calls (``run``, and ``recompute``, which on the torch backend
    runs the backbone for heads that recompute maps of erased features), timed where the pipeline makes them: the
    model's share of `miner.pipeline.Pipeline.run`, without a second forward."""

    def __init__(self, backend: Any) -> None:
        self.cpu = self.wall = 0.0
        for name in ("run", "recompute"):
            setattr(backend, name, self._timed(getattr(backend, name)))

    def _timed(self, call: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.cpu += time.process_time() - c0
                self.wall += time.perf_counter() - w0

        return timed

    def reset(self) -> None:
        self.cpu = self.wall = 0.0


def bound_worker(spec_json: str) -> None:
    """The ``bound`` case (run in a fresh process with a model actor's environment): decode and pipeline of every
    batch at 1 thread, each timed; prints JSON ``{"batches": [[images, decode, model, pipeline, decode_wall,
    model_wall, pipeline_wall], ...]}`` (seconds; `BOUND_FIELDS`)."""
    spec = json.loads(spec_json)
    from miner.backends import open_backend
    from miner.data import read_archive
    from miner.job.actors import set_threads
    from miner.pipeline import Pipeline, decode_batch

    set_threads(1)  # torch intra-op 1, inter-op 1, OpenCV 1: as a 1-CPU model actor and a decode task
    arch = read_archive(spec["archive"], config=_archive_config())
    backend = open_backend(spec["model"], backend="torch", device="cpu")
    pipeline = Pipeline(backend, classes=spec["classes"])
    clock = _ModelClock(backend)
    size = backend.meta.input_size
    records = [(r.image_id, r.path, tuple(r.labels), r.root) for r in arch.records]  # as the job's decode tasks
    batches = []
    decoded = 0
    for lo in range(0, len(records), spec["batch_size"]):
        c0, w0 = time.process_time(), time.perf_counter()
        batch = decode_batch(records[lo:lo + spec["batch_size"]], input_size=size)
        c1, w1 = time.process_time(), time.perf_counter()
        clock.reset()
        pipeline.run(batch)
        c2, w2 = time.process_time(), time.perf_counter()
        batches.append([len(batch) + len(batch.errors), c1 - c0, clock.cpu, c2 - c1, w1 - w0, clock.wall, w2 - w1])
        decoded += len(batch)
    print(json.dumps({"batches": batches, "decoded": decoded}))


def bound_totals(batches: list[list[float]], *, skip: int = 1) -> dict[str, float]:
    """Sums over the timed batches of the ``bound`` case (rows of `BOUND_FIELDS`), the first `skip` left out
    (warm-up): ``images`` and seconds of ``decode``, ``model``, ``mining`` (= pipeline - model) in CPU time, and
    ``wall`` (decode + pipeline, wall clock)."""
    totals = {"images": 0.0, "decode": 0.0, "model": 0.0, "mining": 0.0, "wall": 0.0}
    for row in batches[skip:]:
        b = dict(zip(BOUND_FIELDS, row))
        totals["images"] += b["images"]
        totals["decode"] += b["decode"]
        totals["model"] += b["model"]
        totals["mining"] += b["pipeline"] - b["model"]
        totals["wall"] += b["decode_wall"] + b["pipeline_wall"]
    return totals


def per_image(totals: dict[str, float]) -> dict[str, float]:
    """`bound_totals` (or their sums over rounds) as seconds per image (empty when no image was timed)."""
    n = totals.get("images", 0)
    return {k: v / n for k, v in totals.items() if k != "images"} if n else {}


def bound_rate(*, decode: float, model: float, mining: float, cores: int) -> float:
    """The machine's bound on the job (images/s): `cores` busy with nothing but decode, model and mining, whose
    core-seconds per image are given."""
    seconds = decode + model + mining
    if seconds <= 0 or cores < 1:
        raise ValueError(f"bound_rate: need positive seconds per image and cores (got {seconds}, {cores})")
    return cores / seconds


def _run_bound(manifest: Path, checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    from miner.job.cluster import worker_env

    spec = {"archive": str(manifest), "model": str(checkpoint), "classes": args.classes,
            "batch_size": args.batch_size}
    env = {**os.environ, **worker_env(threads=1, malloc="tuned")}
    code = "import sys; from miner.bench.mine import bound_worker; bound_worker(sys.argv[1])"
    started = time.time()
    result = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bound worker failed:\n{result.stderr[-3000:]}")
    data = json.loads(result.stdout.strip().splitlines()[-1])
    batches = data["batches"]
    if not data["decoded"]:
        raise RuntimeError(f"bound worker: none of the {len(batches)} batches' images decoded")
    return {"totals": bound_totals(batches), "images": int(sum(b[0] for b in batches)),
            "seconds": time.time() - started, "window": None,
            "label": f"bound: {os.cpu_count() or 1} cores / decode+model+mining"}


def _run_job(manifest: Path, model: Path, args: argparse.Namespace, *, workers: int, backend: str, malloc: str,
             workdir: Path, name: str, decode: str = "auto") -> dict[str, Any]:
    from miner.config import JobConfig
    from miner.job import run_job, steady_window

    config = JobConfig(shard_size=args.shard_size, batch_size=args.batch_size, backend=backend,
                       classes=args.classes, workers=workers, cpus_per_worker=1, malloc=malloc, decode=decode)
    summary = run_job(manifest, model, workdir / name, config=config, progress=False, log=lambda text: None,
                      archive_config=_archive_config())
    if summary.processed == 0 and summary.images_run:
        raise RuntimeError(f"{name}: the job mined none of its {summary.images_run} images (every one an error row)")
    return {"window": steady_window(summary.events), "images": summary.images_run, "seconds": summary.seconds,
            "label": f"job, {workers} CPU actor{'s' if workers > 1 else ''} x 1 CPU, {backend}"
                     + (", default malloc" if malloc == "default" else "")
                     + (", decode tasks" if decode == "tasks" else "")}


def _describe_model(args: argparse.Namespace) -> str:
    """The model part of the header line; a `--model` that is no usable checkpoint is refused here, in one line,
    before anything is made (`miner.backends.check_model`, as `miner mine` checks its model)."""
    from miner.errors import UsageError

    if not getattr(args, "model", None):
        return f"{args.arch} (width {args.width:g}) at {args.input_size} px" + (
            f", recipe {args.recipe}" if getattr(args, "recipe", None) else "")
    from miner.backends import check_model

    checkpoint = Path(args.model).expanduser()
    if not checkpoint.is_file():
        raise UsageError(f"--model: {args.model} is not a file; give a checkpoint (.pt), e.g. "
                         "miner/assets/default_model.pt")
    meta = check_model(checkpoint, backend="torch")
    h, w = meta.input_size
    recipe = (getattr(meta, "inference", None) or {}).get("recipe")
    return (f"{checkpoint.name} ({meta.arch or 'model'} at {h}x{w} px" + (f", recipe {recipe}" if recipe else "")
            + ", its own settings)")


def run(args: argparse.Namespace) -> int:
    from miner.errors import UsageError

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise UsageError(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.rounds < 1 or args.images // args.rounds < 4 * args.batch_size:
        raise UsageError("--rounds: each round needs at least 4 batches of images per case")
    described = _describe_model(args)
    archive, checkpoint, graph = _prepare(args, cases)
    totals: dict[str, dict[str, Any]] = {case: {"images": 0, "window_images": 0, "window_seconds": 0.0,
                                                "seconds": 0.0, "loads": []} for case in cases}
    bound_sums: dict[str, float] = {}
    per_round = args.images // args.rounds
    cores = os.cpu_count() or 1
    print(f"miner bench mine: {per_round * args.rounds} phantom images ({args.image_size} px) -> "
          f"{described}, batch {args.batch_size}, shards of {args.shard_size}, "
          f"--classes {args.classes}; {cores} cores; {args.rounds} rounds of {per_round} images, every case in "
          "every round (rotating order), so that load changes hit all cases alike", flush=True)
    session = None
    with tempfile.TemporaryDirectory(prefix="bench-mine-") as tmp:
        workdir = Path(tmp)
        try:
            for k in range(args.rounds):
                manifest = _subset(archive, k * per_round, (k + 1) * per_round, workdir)
                order = cases[k % len(cases):] + cases[:k % len(cases)]
                for case in order:
                    before = os.getloadavg()[0]
                    if case == "loop":
                        result = _run_loop(manifest, checkpoint, args)
                    elif case == "bound":
                        result = _run_bound(manifest, checkpoint, args)
                        for key, value in result["totals"].items():
                            bound_sums[key] = bound_sums.get(key, 0.0) + value
                    else:
                        if session is None:
                            from miner.job.cluster import connect

                            session = connect(None, num_cpus=cores)
                            session.__enter__()
                        result = _run_job(manifest, graph if case == "onnx2" else checkpoint, args,
                                          workers=1 if case == "job1" else 2,
                                          backend="onnxruntime" if case == "onnx2" else "torch",
                                          malloc="default" if case == "default2" else "tuned", workdir=workdir,
                                          name=f"{case}-{k}", decode="tasks" if case == "tasks2" else "auto")
                    total = totals[case]
                    total["label"] = result["label"]
                    total["images"] += result["images"]
                    total["seconds"] += result["seconds"]
                    if result["window"]:
                        total["window_images"] += result["window"][0]
                        total["window_seconds"] += result["window"][1]
                    total["loads"] += [before, os.getloadavg()[0]]
                    if case == "bound":
                        t = per_image(result["totals"])
                        rate = bound_rate(decode=t["decode"], model=t["model"], mining=t["mining"],
                                          cores=cores) if t else float("nan")
                        what = "bound  "
                    else:
                        rate = result["window"][0] / result["window"][1] if result["window"] else float("nan")
                        what = "steady "
                    print(f"  round {k + 1} {case:9s} {what}{rate:7.2f} img/s  (load {before:.1f} -> "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
        finally:
            if session is not None:
                session.__exit__(None, None, None)

    bound = per_image(bound_sums) if bound_sums else {}
    bound_img_s = bound_rate(decode=bound["decode"], model=bound["model"], mining=bound["mining"],
                             cores=cores) if bound else None

    def steady(case: str) -> float | None:
        if case == "bound":
            return bound_img_s
        t = totals.get(case)
        return t["window_images"] / t["window_seconds"] if t and t["window_seconds"] > 0 else None

    def wall(case: str) -> float:
        if case == "bound":  # the same bound from wall-clock seconds (lower where the worker waited: load, I/O)
            return cores / bound["wall"] if bound else float("nan")
        t = totals[case]
        return t["images"] / t["seconds"] if t["seconds"] > 0 else float("nan")

    print("case      what                                             steady img/s   wall img/s   load (min-max)")
    for case in cases:
        t = totals[case]
        rate = steady(case)
        print(f"{case:9s} {t['label']:48s} {rate if rate else float('nan'):12.2f} {wall(case):12.2f}"
              f"   {min(t['loads']):.1f}-{max(t['loads']):.1f}")
    if bound:
        ms = {k: 1000 * v for k, v in bound.items()}
        print(f"bound     ms per image (CPU time, 1 thread): decode {ms['decode']:.1f} + model {ms['model']:.1f} + "
              f"mining {ms['mining']:.1f} = {ms['decode'] + ms['model'] + ms['mining']:.1f} (wall {ms['wall']:.1f}); "
              f"{cores} cores / that = {bound_img_s:.2f} img/s; {int(bound_sums['images'])} images timed, the "
              f"first batch of each round left out")

    def ratio(a: str, b: str) -> str:
        ra, rb = steady(a), steady(b)
        return f"{ra / rb:.2f}x" if ra and rb else "n/a"

    job_bound = steady("job2"), steady("bound")
    print("side by side (steady-state images/s):")
    print(f"  job (2 actors) / loop:             {ratio('job2', 'loop')}   (goal >= 0.90x)")
    print(f"  2 actors / 1 actor:                {ratio('job2', 'job1')}")
    print(f"  onnxruntime / torch (2 actors):    {ratio('onnx2', 'job2')}")
    print(f"  tuned / default malloc (2 actors): {ratio('job2', 'default2')}")
    print(f"  decode in actors / in tasks:       {ratio('job2', 'tasks2')}")
    print("  job (2 actors) / bound: "
          + (f"{job_bound[0] / job_bound[1]:.2f}" if job_bound[0] and job_bound[1] else "n/a") + " (goal >= 0.90)")
    if job_bound[0] and bound:  # on a loaded machine the job's rate falls and the CPU-time bound does not
        print(f"  job (2 actors) / wall-clock bound: {job_bound[0] / wall('bound'):.2f} (the bound from the bound "
              "worker's wall time; the two bounds agree on a quiet machine)")
    return 0
