"""`miner <verb>`: one verb per job.

Each verb lives in its own module of this package and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Verb modules import heavy libraries inside
``run`` so that ``miner --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from miner import __version__
from miner.errors import MinerError

# verb -> module (in the order `miner --help` lists them)
VERBS: dict[str, str] = {
    "phantoms": "miner.cli.phantoms",
    "inspect": "miner.cli.inspect",
    "train": "miner.cli.train",
    "calibrate": "miner.cli.calibrate",
    "eval": "miner.cli.eval",
    "labels": "miner.cli.labels",
    "show": "miner.cli.show",
    "report": "miner.cli.report",
    "bench": "miner.cli.bench",
    "export": "miner.cli.export",
    "mine": "miner.cli.mine",
    "demo": "miner.cli.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miner",
        description="Harvest lesion boxes from labelled medical-image archives (class maps + attention mining).",
    )
    parser.add_argument("--version", action="version", version=f"attention-miner {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except MinerError as err:
        print(f"miner {args.verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"miner {args.verb}: interrupted", file=sys.stderr)
        return 130
