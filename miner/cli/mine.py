"""`miner mine ARCHIVE --model MODEL --out OUT`: mine a whole archive into Parquet boxes on Ray."""
from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import fields

from miner.cli._options import BATCH, CPUS, FRACTION, OPEN_FRACTION, RANK, STEPS, integer, numbers, out_folder, real
from miner.config import UNCERTAIN_POLICIES, ArchiveConfig, JobConfig

HELP = "mine a whole archive into Parquet boxes (Ray actors; resumable)"
DESCRIPTION = """\
Mine every image of ARCHIVE with MODEL: decode (Ray CPU tasks), class maps, T-step attention mining and
ranked boxes (Ray model actors: one per GPU, or CPU actors), written as Parquet under OUT as the job goes:
OUT/boxes/, OUT/errors/ (one row per file that failed), OUT/images/ (one row per mined image) and
OUT/_manifest.json. Rerunning the same command on the same OUT resumes (finished shards are skipped); a
different archive, model or output option on the same OUT is refused unless --overwrite.

Attaches to a Ray cluster given by --address or RAY_ADDRESS (as `ray job submit` sets it), else starts a
local one. ARCHIVE and MODEL must be readable on every node; OUT is written by the driver.

Exit codes: 0 done; 2 bad option or input; 74 OUT cannot be written (full disk, quota, read-only: free space
and rerun the same command); 130/143 stopped by Ctrl-C/SIGTERM (`ray job stop`; rerun to resume); 1 other
failures.
"""

_DEFAULTS = {f.name: f.default for f in fields(JobConfig)}

#: ranges of the job's own numbers (the shared ones are in miner.cli._options)
MAX_PIXELS = integer(1, 1 << 34)  # 2^34 pixels = 64 GiB as float32: beyond any machine
SHARD = integer(1, 1_000_000)  # the driver holds a shard's rows until it is written
WORKERS = integer(1, 4096)
GPUS = real(0.0, 64.0)  # fractions share a GPU
DECODE_CPUS = real(0.0, 1024.0)  # 0: decode tasks are not counted against the cluster's CPUs
PREFETCH = integer(1, 1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", metavar="ARCHIVE",
                        help="release folder (ChestX-ray14 layout), CSV/Parquet manifest, or image folder")
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="a checkpoint (.pt), an ONNX graph (.onnx) or a TensorRT engine")
    parser.add_argument("--out", required=True, metavar="OUT", type=out_folder,
                        help="output folder (created; resumed if it exists)")
    what = parser.add_argument_group("what to mine")
    what.add_argument("--backend", default=_DEFAULTS["backend"], choices=("auto", "torch", "onnxruntime", "tensorrt"),
                      help="inference backend (default: %(default)s, by file type and device)")
    what.add_argument("--method", default=None,
                      help="map method of a checkpoint (cam, gradcam, hirescam, ...; default: the model's); "
                           "ONNX graphs and engines carry their own")
    what.add_argument("--layer", default=None, help="layer of a checkpoint's maps (default: the model's)")
    what.add_argument("--recipe", default=None,
                      help="mine with this named recipe's mining and box settings (miner.recipes: peaks, cai2018) "
                           "instead of the model's own (the settings it was trained and calibrated with)")
    what.add_argument("--steps", type=STEPS, default=None,
                      help="attention-mining steps T (default: the model's recipe, 3)")
    what.add_argument("--mining-threshold", type=OPEN_FRACTION, default=None,
                      help="level of each normalised step map whose component at the peak is erased (default: the "
                           "model's recipe: 0.8 for peaks, 0.5 for cai2018)")
    what.add_argument("--box-rule", default=None, choices=("steps", "levels"),
                      help="boxes: one per mining step around its peak (steps), or components of the fused map at "
                           "fixed levels (levels, the seed's) (default: the model's recipe)")
    what.add_argument("--box-thresholds", default=None, type=numbers(OPEN_FRACTION, words=("wang",)),
                      help="levels rule: levels on the normalised fused map, or 'wang' (cai2018: 0.3,0.5,0.7)")
    what.add_argument("--step-level", type=OPEN_FRACTION, default=None,
                      help="steps rule: a step's box is where its map is >= this fraction of its peak, for every "
                           "finding (default: the model's calibrated per-finding levels, else 0.85)")
    what.add_argument("--plain-boxes", action="store_true",
                      help="boxes as read from the maps, without the model's calibrated per-finding box shapes "
                           "and box regressors (boxes.finding_shapes, boxes.regressors, miner calibrate)")
    what.add_argument("--plain-maps", action="store_true",
                      help="class maps without the model's calibrated stage weights (stage_weights, miner "
                           "calibrate); checkpoints only: a graph or engine has them built in")
    what.add_argument("--max-boxes", type=RANK, default=None,
                      help="boxes per image and finding (default: 3)")
    what.add_argument("--classes", default=_DEFAULTS["classes"], choices=("labels", "predicted", "all"),
                      help="findings that get boxes: the image's labels, the predicted ones, or all "
                           "(default: %(default)s)")
    what.add_argument("--prob-threshold", type=FRACTION, default=_DEFAULTS["prob_threshold"],
                      help="probability at which a finding counts as predicted (default: %(default)s)")
    what.add_argument("--max-pixels", type=MAX_PIXELS, default=_DEFAULTS["max_pixels"],
                      help="largest image, in pixels (height x width x frames) read from the file header before "
                           "decoding; larger files become 'too_large' error rows (default: %(default)s = 2^28)")
    what.add_argument("--uncertain", default=ArchiveConfig.uncertain, choices=UNCERTAIN_POLICIES,
                      help="CheXpert's uncertain (-1) labels: ignore (unknown: no boxes under --classes labels), "
                           "zeros (negative) or ones (positive) (default: %(default)s)")
    what.add_argument("--allow-outside-archive", action="store_true",
                      help="also mine image files that resolve outside the archive's root (symbolic links "
                           "followed; e.g. a manifest of absolute paths into a mounted store); without it such a "
                           "file is never opened and becomes an 'outside_archive' error row. Part of the job's "
                           "identity")
    scale = parser.add_argument_group("scale")
    scale.add_argument("--batch-size", type=BATCH, default=_DEFAULTS["batch_size"],
                       help="images per model call (default: %(default)s)")
    scale.add_argument("--shard-size", type=SHARD, default=_DEFAULTS["shard_size"],
                       help="images per shard, the unit of output files and of resume (default: %(default)s)")
    scale.add_argument("--workers", type=WORKERS, default=None,
                       help="model actors (default: one per GPU, else one per --cpus-per-worker CPUs)")
    scale.add_argument("--cpus-per-worker", type=CPUS, default=_DEFAULTS["cpus_per_worker"],
                       help="CPUs (and compute threads) of each model actor (default: %(default)s)")
    scale.add_argument("--gpus-per-worker", type=GPUS, default=None,
                       help="GPUs of each model actor (default: 1 where the cluster has GPUs, else 0)")
    scale.add_argument("--decode", default=_DEFAULTS["decode"], choices=("auto", "actor", "tasks"),
                       help="where images are decoded: in the model actor (no pixels through Ray's object store), "
                            "in Ray tasks beside it (overlapping a GPU's work), or auto: tasks for GPU actors, the "
                            "actor for CPU actors (default: %(default)s)")
    scale.add_argument("--decode-cpus", type=DECODE_CPUS, default=_DEFAULTS["decode_cpus"],
                       help="CPUs each decode task reserves under --decode tasks (default: %(default)s: not "
                            "reserved, decoding runs beside its actor, --prefetch batches ahead)")
    scale.add_argument("--prefetch", type=PREFETCH, default=None,
                       help="batches queued per actor (default: 2 on CPU, 8 on GPU)")
    scale.add_argument("--malloc", default=_DEFAULTS["malloc"], choices=("tuned", "default"),
                       help="glibc malloc thresholds of the workers (default: %(default)s; 'default' is for "
                            "comparisons: torch on CPU page-faults much more)")
    ray_group = parser.add_argument_group("Ray")
    ray_group.add_argument("--address", default=None,
                           help="Ray cluster to attach to (default: RAY_ADDRESS, else start a local one)")
    ray_group.add_argument("--num-cpus", type=CPUS, default=None,
                           help="logical CPUs of a local cluster (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="discard what OUT holds and start afresh")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def resume_hint(args: argparse.Namespace) -> str:
    """What to do after a stop (`miner.cli.main`)."""
    return f"the shards complete in {args.out} are kept: rerun the same command to resume"


def run(args: argparse.Namespace) -> int:
    from miner import runtime

    try:
        with runtime.interrupt_on_signals():  # shared with miner.cli.main's when it runs there
            return _run(args)
    except (KeyboardInterrupt, Exception) as err:  # an error the interrupt caused on its way out: the signal says it
        signum = runtime.signal_received()
        if signum is None:
            if not isinstance(err, KeyboardInterrupt):
                raise
            signum = int(signal.SIGINT)  # a KeyboardInterrupt that no handler of ours raised
        runtime.quiet_signals()
        runtime.mark_reported()
        print(f"miner mine: stopped by {signal.Signals(signum).name}; {resume_hint(args)}", file=sys.stderr,
              flush=True)
        return 128 + signum


def mining_overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    """The mining and box options given on the command line, as overrides of the model's (or --recipe's)
    settings (`miner.settings.InferenceSettings.with_overrides`, as `miner.pipeline.Pipeline` applies them)."""
    from miner.boxes import resolve_thresholds
    from miner.errors import UsageError

    mining = {k: v for k, v in (("steps", args.steps), ("threshold", args.mining_threshold)) if v is not None}
    boxes: dict = {}
    if args.box_rule is not None:
        boxes["rule"] = args.box_rule
    if args.box_thresholds is not None:
        boxes["thresholds"] = resolve_thresholds(args.box_thresholds)
    if args.step_level is not None:
        if not 0 < args.step_level <= 1:
            raise UsageError(f"--step-level must lie in (0, 1], got {args.step_level}")
        boxes["step_level"] = args.step_level
        boxes["finding_levels"] = None  # one level for every finding, as asked
    if args.plain_boxes:
        boxes["finding_shapes"] = None
        boxes["regressors"] = None
    if args.max_boxes is not None:
        boxes["max_boxes"] = args.max_boxes
    if args.recipe is not None:
        from miner.settings import InferenceSettings

        InferenceSettings.for_recipe(args.recipe)  # an unknown name is a usage error before Ray starts
    return mining, boxes


def backend_options(args: argparse.Namespace) -> dict:
    """The model actors' `miner.backends.open_backend` options (None: the model's own; the job's manifest records
    the others, so a rerun with different ones is refused)."""
    return {"method": args.method, "layer": args.layer, "plain_maps": True if args.plain_maps else None}


def _run(args: argparse.Namespace) -> int:
    from miner.job import run_job

    config = JobConfig(
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        backend=args.backend,
        classes=args.classes,
        prob_threshold=args.prob_threshold,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        decode=args.decode,
        decode_cpus=args.decode_cpus,
        prefetch=args.prefetch,
        malloc=args.malloc,
        max_pixels=args.max_pixels,
    )
    mining, boxes = mining_overrides(args)
    summary = run_job(args.archive, args.model, args.out, config=config,
                      backend_options=backend_options(args),
                      pipeline_options={"recipe": args.recipe, "mining": mining, "boxes": boxes},
                      address=args.address, num_cpus=args.num_cpus, overwrite=args.overwrite,
                      progress=not args.no_progress,
                      archive_config=ArchiveConfig(uncertain=args.uncertain,
                                                   allow_outside_archive=args.allow_outside_archive))
    print(summary.line(), flush=True)
    return 0
