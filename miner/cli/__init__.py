"""`miner <verb>`: one verb per job.

Each verb lives in its own module of this package and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``, and optionally ``resume_hint(args) -> str`` (what to do
after the verb was stopped by a signal). Numeric options take a range-checked type of `miner.cli._options`.
Verb modules import heavy libraries inside ``run`` so that ``miner --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from miner import __version__
from miner.cli._options import Parser, guard_numbers, one_line, show_ranges
from miner.errors import MinerError, MinerWarning

#: `miner --help`'s table of exit codes (README "Exit codes"; `miner.errors`)
EXIT_CODES = """\
exit codes:
  0    done
  2    fix what you gave: an option (one line names it), an archive, label file, model file or Parquet
       folder that cannot be used, an output folder that is a file or holds another job
  74   the output cannot be written (full disk, quota, read-only): free space and rerun the same command
  1    another failure that is not the input's fault (a cluster that cannot be reached, a missing backend)
  130  stopped by SIGINT (Ctrl-C); 143 stopped by SIGTERM (kill, `ray job stop`): rerun to resume
"""

# verb -> module (in the order `miner --help` lists them)
VERBS: dict[str, str] = {
    "phantoms": "miner.cli.phantoms",
    "inspect": "miner.cli.inspect",
    "train": "miner.cli.train",
    "calibrate": "miner.cli.calibrate",
    "eval": "miner.cli.eval",
    "labels": "miner.cli.labels",
    "detector": "miner.cli.detector",
    "show": "miner.cli.show",
    "report": "miner.cli.report",
    "bench": "miner.cli.bench",
    "export": "miner.cli.export",
    "mine": "miner.cli.mine",
    "demo": "miner.cli.demo",
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every verb. A usage error is one line naming the option (`miner.cli._options.Parser`); every
    numeric option is range-checked while parsing, and its ``--help`` shows the range."""
    parser = Parser(
        prog="miner",
        description="Harvest lesion boxes from labelled medical-image archives (class maps + attention mining).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"attention-miner {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, module_name in VERBS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(verb, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _parser=p, _resume=getattr(module, "resume_hint", None))
    guard_numbers(parser)
    show_ranges(parser)
    return parser


def _print_warnings(verb: str) -> None:
    """Print each `MinerWarning` as one line, ``miner VERB: warning: ...``, once per message, whatever
    PYTHONWARNINGS says (it is addressed to the user, not a developer); other warnings as Python prints them."""
    import warnings

    python_way = getattr(warnings.showwarning, "python_way", warnings.showwarning)  # installed once per process

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MinerWarning):
            print(f"miner {verb}: warning: {message}", file=sys.stderr, flush=True)
        else:
            python_way(message, category, filename, lineno, file, line)

    show.python_way = python_way
    warnings.showwarning = show
    warnings.filterwarnings("default", category=MinerWarning)


def _resume_hint(args: argparse.Namespace | None) -> str:
    """What to do after a command was stopped: the verb's own `resume_hint(args)`, else run it again."""
    if args is not None and getattr(args, "_resume", None) is not None:
        return args._resume(args)
    if args is not None and hasattr(args, "overwrite"):
        return "run the same command again (with --overwrite if it refuses what this run left)"
    return "run the same command again"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit code (see `EXIT_CODES`; a usage error's too, after its one line). SIGINT and
    SIGTERM interrupt the verb at any moment (`miner.runtime.interrupt_on_signals`) and end it with 130 / 143 and
    one line saying what to do."""
    from miner import runtime

    words = sys.argv[1:] if argv is None else list(argv)
    name = next((f"miner {w}" for w in words if w in VERBS), "miner")  # until the parser says it
    args = None
    interrupted = False
    with runtime.interrupt_on_signals():
        try:
            try:
                parser = build_parser()
                try:
                    args = parser.parse_args(argv)
                except SystemExit as done:  # --help, --version, or a usage error (its one line is printed)
                    return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
                name = f"miner {args.verb}"
                _print_warnings(args.verb)
                code = int(args._run(args) or 0)
            finally:
                runtime.quiet_signals()  # from here on a signal is only recorded: the last line is not cut
        except MinerError as err:
            code = err.exit_code
            if runtime.signal_received() is None:  # else the error is the interrupt's doing: say that instead
                print(f"{name}: error: {one_line(str(err))}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted = True
            code = 128 + signal.SIGINT
        except Exception:
            if runtime.signal_received() is None:
                raise  # an internal bug: its traceback
            code = 1  # what the interrupt broke on its way (an import, a library's wait): the signal says it
        signum = runtime.signal_received()
        if signum is None and interrupted:
            signum = signal.SIGINT  # a KeyboardInterrupt that no handler of ours raised
        if signum is not None:
            code = 128 + int(signum)
            if not runtime.reported():
                print(f"{name}: stopped by {signal.Signals(signum).name}; {_resume_hint(args)}", file=sys.stderr,
                      flush=True)
    return code
