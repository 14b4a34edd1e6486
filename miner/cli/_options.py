"""What the CLI checks while it parses: numbers within their meaningful range, outputs that a file or folder is
not in the way of, and usage errors as one line.

Every numeric option of every verb takes a `Number` as its argparse ``type`` (`integer(lo, hi)`,
`real(lo, hi)`): a value outside its interval, a word, ``nan`` or ``inf`` is refused before anything runs,
as one line ``miner VERB: error: argument --steps: must be an integer in [1, 10], got '1000'; see `miner
VERB --help``` with exit code 2; ``--help`` shows each option's interval. `Parser` is the
`argparse.ArgumentParser` whose usage errors are that one line (argparse's own prints the usage block too).
`guard_numbers` gives any numeric option still typed plain ``int`` or ``float`` a fallback check (finite, and
for integers >= 0), so that no option can crash or hang the CLI (tests assert that none is left to it).
Input paths are not checked here: a command line submitted to a cluster names files that exist there (each verb
refuses a missing or unusable input in one line when it reads it).
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn


def one_line(text: str) -> str:
    """`text` with line breaks and other control or bidirectional-formatting characters escaped (``\\n``,
    ``\\u202e``), so that a message naming what the user typed stays one line and shows what it holds."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def echo(text: Any, *, limit: int = 40) -> str:
    """What the user typed, quoted, escaped (`one_line`) and cut to about `limit` characters."""
    text = str(text)
    return one_line(repr(text if len(text) <= limit else text[: limit - 3] + "..."))


class Parser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors are one line on stderr, naming the option, and exit 2.

    Subparsers made with ``add_subparsers`` are of the same class (argparse's default), so every verb's are.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see `{self.prog} --help`\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        """As argparse's, but an unknown argument is refused by the (sub)parser that was parsing it (its name in
        the line: ``miner mine: error: unrecognized arguments: ...``), which a verb records as ``_parser``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            owner = getattr(parsed, "_parser", None)
            (owner if isinstance(owner, argparse.ArgumentParser) else self).error(
                f"unrecognized arguments: {' '.join(extras)}")
        return parsed


# --- numbers ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """An argparse ``type``: text -> an int or float within ``[lo, hi]`` (an end that is ``None`` is open-ended;
    ``lo_open``/``hi_open`` exclude that end). Anything else raises `argparse.ArgumentTypeError` (argparse turns
    it into the one-line usage error of `Parser`)."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    #: set by `guard_numbers` on options that kept a plain int/float (the tests require none)
    fallback: bool = False

    @property
    def __name__(self) -> str:  # argparse names a type by it in some messages
        return "integer" if self.kind is int else "number"

    @property
    def interval(self) -> str:
        """The range as an interval: ``[1, 10]``, ``(0, 1]``, ``>= 1``."""
        if self.lo is not None and self.hi is not None:
            return (f"{'(' if self.lo_open else '['}{_show(self.lo)}, {_show(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_show(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_show(self.hi)}"
        return "any finite value"

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.lo is None and self.hi is None:
            return f"{noun} (finite)"
        interval = self.interval
        return f"{noun} in {interval}" if interval[0] in "[(" else f"{noun} {interval}"

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            return False
        return True

    def __call__(self, text: str) -> int | float:
        value: int | float | None
        try:
            value = self.kind(text.strip()) if isinstance(text, str) else None
        except (ValueError, OverflowError):  # not a number; an int of more than 4300 digits
            value = None
        if value is None or value not in self:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {echo(text)}")
        return value


def _show(value: float) -> str:
    if isinstance(value, int) and abs(value) >= 1 << 20 and value & (value - 1) == 0:
        return f"2^{value.bit_length() - 1}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def integer(lo: int | None = None, hi: int | None = None) -> Number:
    """Integers in ``[lo, hi]``."""
    return Number(int, lo, hi)


def real(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> Number:
    """Finite floats in ``[lo, hi]`` (``lo_open``/``hi_open``: that end excluded)."""
    return Number(float, lo, hi, lo_open, hi_open)


#: the ranges most options share
FRACTION = real(0.0, 1.0)                 # thresholds, probabilities, shares of a set
OPEN_FRACTION = real(0.0, 1.0, lo_open=True)  # levels and IoU thresholds: 0 would mean "everything"
STEPS = integer(1, 10)                    # attention-mining steps T (3 in the seed; maps are empty by 10)
SEED = integer(0, 2**32 - 1)              # numpy's seed range
BATCH = integer(1, 4096)                  # images per model call
IMAGES = integer(1, 10_000_000)           # images to generate
RANK = integer(1, 100)                    # boxes per image and finding
SIDE = integer(32, 8192)                  # an image or model input side in pixels (ResNet stride 32)
PANEL = integer(32, 8192)                 # a drawn panel's side in pixels
THREADS = integer(1, 1024)                # threads or processes of one machine
CPUS = integer(1, 4096)                   # logical CPUs (a cluster's, an actor's)
EPOCHS = integer(0, 100_000)              # epochs of one training stage (0 skips it)
COUNT = integer(0, 1_000_000)             # counts of things listed or drawn (0: none)


def numbers(each: Number, *, words: tuple[str, ...] = (), at_least: int = 1) -> Any:
    """An argparse ``type``: a comma-separated list of at least `at_least` numbers, each `each` (or one of
    `words`, such as ``wang``). Returns the text as given: the verb parses it as before."""
    def check(text: str) -> str:
        if isinstance(text, str) and text.strip().lower() in words:
            return text
        parts = [p for p in str(text).split(",") if p.strip()]
        try:
            values = [each(p) for p in parts]
        except argparse.ArgumentTypeError:
            values = None
        if values is None or len(values) < at_least:
            alt = f" or {' or '.join(repr(w) for w in words)}" if words else ""
            raise argparse.ArgumentTypeError(f"must be comma-separated numbers, each {each.describe()}{alt}, "
                                             f"got {echo(text)}")
        return text

    check.__name__ = "list"
    check.each = each  # type: ignore[attr-defined]
    return check


def guard_numbers(parser: argparse.ArgumentParser) -> None:
    """Give every option of `parser` (and its subparsers) still typed plain ``int``/``float`` a fallback check:
    finite, integers >= 0. Marks them `Number.fallback`; `numeric_actions` lists what is checked."""
    for _, action in numeric_actions(parser, include_plain=True):
        if action.type is int:
            action.type = Number(int, 0, None, fallback=True)
        elif action.type is float:
            action.type = Number(float, fallback=True)


def numeric_actions(parser: argparse.ArgumentParser, *, include_plain: bool = False
                    ) -> Iterator[tuple[argparse.ArgumentParser, argparse.Action]]:
    """(parser, action) for every option of `parser` and its subparsers, at any depth, whose type is a
    `Number` (and with `include_plain`, plain ``int``/``float``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for sub in action.choices.values():
                if id(sub) not in seen:  # aliases share a parser
                    seen.add(id(sub))
                    yield from numeric_actions(sub, include_plain=include_plain)
        elif isinstance(action.type, Number) or (include_plain and action.type in (int, float)):
            yield parser, action


def show_ranges(parser: argparse.ArgumentParser) -> None:
    """Append each numeric option's interval to its ``--help`` text (``...; range [1, 10]``)."""
    for _, action in numeric_actions(parser):
        if action.help == argparse.SUPPRESS:
            continue
        text = f"range {action.type.interval}".replace("%", "%%")
        action.help = f"{action.help}; {text}" if action.help else text


def restrict(parser: argparse.ArgumentParser, ranges: Mapping[str, Number]) -> None:
    """Give the options of `parser` named in `ranges` (``"--size": SIDE``) that range as their type (for
    parsers built elsewhere: the benchmarks')."""
    for action in parser._actions:
        for flag in action.option_strings:
            if flag in ranges and action.type in (int, float):
                action.type = ranges[flag]


# --- paths --------------------------------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def out_folder(text: str) -> str:
    """An argparse ``type``: a folder to write: an existing folder, or a path whose nearest existing part is a
    folder (it is created later). A regular file, or a file in its way, is refused here, before anything runs."""
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{echo(text)} is not a path")
    path = _expanded(text).absolute()
    nearest = _nearest_existing(path)
    if nearest == path and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{one_line(text)} is a file, not a folder; give a folder (new, or one "
                                         "this verb wrote)")
    if not nearest.is_dir():
        raise argparse.ArgumentTypeError(f"cannot make the folder {one_line(text)}: {one_line(str(nearest))} is a "
                                         "file; give another path")
    return text


def out_file(text: str) -> str:
    """An argparse ``type``: a file to write: not a folder, in a folder that exists or can be made."""
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{echo(text)} is not a path")
    path = _expanded(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{one_line(text)} is a folder; give a file name")
    parent = _nearest_existing(path.absolute().parent)
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {one_line(text)}: {one_line(str(parent))} is a file, "
                                         "not a folder")
    return text


out_folder.__name__ = "folder"
out_file.__name__ = "file"


__all__ = ["BATCH", "COUNT", "CPUS", "EPOCHS", "FRACTION", "IMAGES", "Number", "OPEN_FRACTION", "PANEL", "Parser",
           "RANK", "SEED", "SIDE", "STEPS", "THREADS", "echo", "guard_numbers", "integer",
           "numbers", "numeric_actions", "one_line", "out_file", "out_folder", "real", "restrict", "show_ranges"]


def _expanded(text: str) -> Path:
    """`text` with a leading ``~`` / ``~user`` expanded; kept as written where that user has no home (``~0``:
    Path.expanduser raises RuntimeError), as the shell does."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        return Path(text)
