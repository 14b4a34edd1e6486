"""Property-based fuzzing of the CLI's numeric options (hypothesis, the "hostile" profile of conftest.py:
derandomized, so every run tries the same examples; budget: 100 values per numeric option, about 130 options,
and 200 command lines per verb).

For every numeric option of every verb (found by walking `miner.cli.build_parser()`, so a new option is fuzzed
the day it is added), random text, integers and floats go through ``parse_args`` in-process, with the rest of a
valid command line: the value is either accepted and lies in the option's range, or refused with SystemExit(2)
and exactly one line on stderr naming the option. Never another exception, never a second line. A second property
throws random words at every verb's parser: the same two outcomes."""
from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miner.cli import build_parser
from miner.cli._options import Number, numeric_actions

PARSER = build_parser()


def _subparsers(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(words that select it, parser) for `parser` and every subparser below it."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*words, name))


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """A minimal command line for `parser`: its positionals and required options with harmless values."""
    argv: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.dest in ("help", "version"):
            continue
        value = str(action.choices[0]) if action.choices else "x"
        if not action.option_strings:
            argv.append(value)
        elif action.required:
            argv += [action.option_strings[-1], value]
    return argv


def _lists(parser):
    """Options whose type is a list of numbers (`miner.cli._options.numbers`)."""
    for action in parser._actions:
        if hasattr(action.type, "each"):
            yield action


CASES = []
for words, sub in _subparsers(PARSER):
    if not words or any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
        continue
    for action in sub._actions:
        if isinstance(action.type, Number) or hasattr(action.type, "each"):
            CASES.append(pytest.param(list(words), sub, action, id=f"{' '.join(words)} {action.option_strings[0]}"))


def _parse(argv: list[str]) -> tuple[argparse.Namespace | None, int | None, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return PARSER.parse_args(argv), None, err.getvalue()
        except SystemExit as done:
            return None, done.code, err.getvalue()


NUMBER_TEXT = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-20, max_value=5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-2, max_value=2).map(str),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e309", "-0", "0x10", "1_000", " 3 ", "\u0663", "3.0", "1e3",
                     "9" * 5000, "", " ", "0,5", "wang", "\x00", "1\n2", "\u202e1"]),
    st.text(max_size=30),
    st.lists(st.floats(min_value=-1, max_value=2).map(str), min_size=0, max_size=4).map(",".join),
)


def test_every_numeric_option_is_fuzzed():
    assert len(CASES) > 100


@pytest.mark.parametrize("words, sub, action", CASES)
@settings(max_examples=100)  # x ~130 options: 13,000 command lines
@given(text=NUMBER_TEXT)
def test_numeric_option_in_range_or_one_line(words, sub, action, text):
    flag = action.option_strings[0] if action.option_strings else None
    argv = [*words, *_required(sub), f"{flag}={text}"]
    args, code, err = _parse(argv)
    if args is not None:
        value = getattr(args, action.dest)
        if isinstance(action.type, Number):
            assert value in action.type, (argv, value)
        else:  # a list of numbers: the text as given, each number in range (or a word such as 'wang')
            assert value == text
            parts = [p for p in text.split(",") if p.strip()]
            assert text.strip().lower() == "wang" or all(action.type.each(p) in action.type.each for p in parts)
        assert err == ""
    else:
        assert code == 2, (argv, code, err)
        lines = err.splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith(f"{sub.prog}: error: argument {flag}: "), (argv, err)
        assert lines[0].endswith(f"; see `{sub.prog} --help`"), (argv, err)


WORD = st.one_of(
    st.sampled_from(["--steps", "--out", "--model", "--images", "--to", "--format", "coco", "-x", "--", "-1",
                     "--size=0", "=", "nan", "onnx", "trt", "kernels"]),
    st.text(max_size=12).filter(lambda w: not w.startswith(("-h", "--h", "--v"))),  # --help, --version
)


@pytest.mark.parametrize("verb", [name for name in PARSER._subparsers._group_actions[0].choices])
@given(words=st.lists(WORD, max_size=8))
def test_any_command_line_parses_or_is_one_line(verb, words):
    argv = [verb, *words]
    args, code, err = _parse(argv)
    if args is None:
        assert code == 2, (argv, code, err)
        assert len(err.splitlines()) == 1 and err.startswith("miner"), (argv, err)
        assert "Traceback" not in err
    else:  # every number it took lies in its option's range
        for _, action in numeric_actions(args._parser):
            value = getattr(args, action.dest, None)
            if value is not None and value != action.default:
                assert value in action.type, (argv, action.dest, value)
