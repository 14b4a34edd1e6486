"""`miner demo OUT`: phantom archive -> Ray mining job -> evaluation -> overlays, in about a minute."""
from __future__ import annotations

import argparse

from miner.cli._options import BATCH, SEED, SIDE, STEPS, integer, out_folder
from miner.config import DemoConfig

HELP = "the whole product on a phantom archive: mine it on Ray, evaluate it, draw overlays (about a minute)"
DESCRIPTION = """\
Generate a phantom archive (ChestX-ray14 release layout, multi-lesion images, one broken file of each kind)
under OUT/archive, mine it with the Ray job of `miner mine` (local Ray unless --address/RAY_ADDRESS), evaluate
the boxes as `miner eval` does (Acc-AFP per finding with Wang et al.'s AFP bounds, and with every box of B)
and draw overlays as `miner show` does, plus the heatmaps of every attention-mining step (the seed's Fig. 2).

Writes OUT/boxes/, OUT/errors/, OUT/images/, OUT/_manifest.json (the job's output contract),
OUT/evaluation.txt, OUT/evaluation.json, OUT/overlays/*.png and the report OUT/report/index.html
(miner report). The model defaults to the one embedded in
the package (trained on phantoms by scripts/train_default_model.sh); --model takes any checkpoint, ONNX graph
or engine that `miner mine` takes.
"""

_D = DemoConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", type=out_folder,
                        help="output folder (new or empty; --overwrite redoes a demo)")
    parser.add_argument("--model", default=None, help="model file (default: the embedded phantom model)")
    parser.add_argument("--images", type=integer(8, 1_000_000), default=_D.images,
                        help="phantom images (default: %(default)s)")
    parser.add_argument("--size", type=SIDE, default=None, help="image side in pixels (default: the model's input)")
    parser.add_argument("--seed", type=SEED, default=_D.seed, help="phantom seed (default: %(default)s)")
    parser.add_argument("--steps", type=STEPS, default=_D.steps, help="attention-mining steps T (default: %(default)s)")
    parser.add_argument("--overlays", type=integer(0, 1000), default=_D.overlays,
                        help="images drawn to OUT/overlays (default: %(default)s; 0: none)")
    parser.add_argument("--no-bad-files", action="store_true", help="do not break files in the archive")
    parser.add_argument("--workers", type=integer(1, 4096), default=None, help="model actors (default: one per CPU)")
    parser.add_argument("--batch-size", type=BATCH, default=_D.batch_size, help="images per model call")
    parser.add_argument("--shard-size", type=integer(1, 1_000_000), default=_D.shard_size,
                        help="images per output shard")
    parser.add_argument("--address", default=None, help="Ray cluster to attach to (default: a local Ray)")
    parser.add_argument("--overwrite", action="store_true", help="redo the demo in a non-empty OUT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from miner.demo import run_demo

    config = replace(_D, images=args.images, size=args.size, seed=args.seed, steps=args.steps,
                     overlays=args.overlays, bad_files=not args.no_bad_files, workers=args.workers,
                     batch_size=args.batch_size, shard_size=args.shard_size)
    result = run_demo(args.out, model=args.model, config=config, address=args.address, overwrite=args.overwrite,
                      progress=not args.no_progress)
    print(result.line(), flush=True)
    return 0
