"""`miner bench NAME`: measured comparisons, printed side by side."""
from __future__ import annotations

import argparse
import importlib

from miner.bench import BENCHES
from miner.cli._options import BATCH, EPOCHS, IMAGES, SEED, SIDE, STEPS, THREADS, integer, real, restrict

#: ranges of the benchmarks' numeric options, by name (their parsers are built in miner.bench)
RANGES = {
    "--size": SIDE, "--image-size": SIDE, "--input-size": SIDE, "--big": SIDE,
    "--batch": BATCH, "--batch-size": BATCH, "--shard-size": integer(1, 1_000_000),
    "--classes": integer(1, 1000), "--findings": integer(1, 1000), "--maps": integer(1, 10_000_000),
    "--images": IMAGES, "--train-images": IMAGES, "--eval-images": IMAGES,
    "--repeats": integer(1, 1000), "--rounds": integer(1, 1000), "--threads": THREADS, "--steps": STEPS,
    "--seed": SEED, "--real-seed": SEED, "--eval-seed": SEED, "--connectivity": integer(4, 8),
    "--width": real(0.0, 16.0, lo_open=True),
    "--epochs": EPOCHS, "--msa-init-epochs": EPOCHS, "--end2end-epochs": EPOCHS, "--am-epochs": EPOCHS,
    "--max-steps": integer(1, 1_000_000_000),
    "--calibration-images": integer(1, 100_000), "--check-images": integer(1, 100_000),
}
#: where one benchmark's option means something else (kernels: --size is the side of a class map, not an image)
BENCH_RANGES = {"kernels": {"--size": integer(2, 4096)},
                "detector": {"--epochs": integer(1, 10_000), "--agree-iou": real(0.0, 1.0), "--weight": real(0.0, 1.0)}}

HELP = "run a benchmark and print its figures side by side"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="NAME")
    sub.required = True
    for name, module_name in BENCHES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        restrict(p, {**RANGES, **BENCH_RANGES.get(name, {})})
        p.set_defaults(_bench_run=module.run, _parser=p)


def run(args: argparse.Namespace) -> int:
    return args._bench_run(args)
