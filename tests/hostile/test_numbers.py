"""Case 6: numbers that hung or crashed. Every numeric option of every verb is checked against its meaningful range
while the command line is parsed (`miner.cli._options`): one line naming the option and its range, exit 2,
nothing created. A local Ray cluster that can never run the job's actors (or its decode tasks) is refused at once
instead of waiting for CPUs that never come."""
from __future__ import annotations

import argparse

import pytest

from miner.cli import build_parser
from miner.cli._options import (
    FRACTION,
    OPEN_FRACTION,
    STEPS,
    Number,
    Parser,
    integer,
    numbers,
    numeric_actions,
    one_line,
    real,
)
from tests.hostile.harness import assert_refused, assert_untouched, run_miner


def _mine(archive, model, out, *extra):
    return ["mine", archive, "--model", model, "--out", out, *extra]


@pytest.mark.parametrize("option, value, expected", [
    ("--num-cpus", "0", "argument --num-cpus: must be an integer in [1, 4096], got '0'"),  # was: hangs forever
    ("--decode-cpus", "-1", "argument --decode-cpus: must be a number in [0, 1024], got '-1'"),  # was: traceback
    ("--prob-threshold", "2", "argument --prob-threshold: must be a number in [0, 1], got '2'"),  # was: accepted
    ("--mining-threshold", "5", "argument --mining-threshold: must be a number in (0, 1], got '5'"),
    ("--steps", "1000", "argument --steps: must be an integer in [1, 10], got '1000'"),
    ("--steps", "0", "argument --steps: must be an integer in [1, 10], got '0'"),
    ("--max-pixels", "nan", "argument --max-pixels: must be an integer in [1, 2^34], got 'nan'"),
    ("--gpus-per-worker", "inf", "argument --gpus-per-worker: must be a number in [0, 64], got 'inf'"),
    ("--box-thresholds", "0.3,1.5", "argument --box-thresholds: must be comma-separated numbers, each a number in "
                                    "(0, 1] or 'wang', got '0.3,1.5'"),
])
def test_mine_refuses_numbers_out_of_range(archive, tiny_model, tmp_path, watched, option, value, expected):
    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(_mine(archive, tiny_model, out, option, value), cwd=tmp_path, timeout=60)
    line = assert_refused(result, 2)
    assert line == f"miner mine: error: {expected}; see `miner mine --help`"
    assert not out.exists()
    assert_untouched(before, watched(out))


@pytest.mark.parametrize("args, option", [
    (["phantoms", "OUT", "--size", "8"], "--size"),
    (["phantoms", "OUT", "--no-finding", "1.5"], "--no-finding"),
    (["train", "ARCH", "--out", "m.pt", "--lr", "nan"], "--lr"),
    (["train", "ARCH", "--out", "m.pt", "--val-fraction", "1"], "--val-fraction"),
    (["eval", "BOXES", "--iou", "0.3,0"], "--iou"),
    (["labels", "OUT", "--format", "coco", "--to", "DIR", "--max-rank", "0"], "--max-rank"),
    (["report", "OUT", "--thumb-size", "-5"], "--thumb-size"),
    (["export", "onnx", "m.pt", "m.onnx", "--opset", "99"], "--opset"),
    (["demo", "OUT", "--images", "3"], "--images"),
    (["bench", "kernels", "--repeats", "0"], "--repeats"),
    (["inspect", "ARCH", "--workers", "0"], "--workers"),
])
def test_every_verb_refuses_numbers_out_of_range(tmp_path, watched, args, option):
    before = watched()
    result = run_miner(args, cwd=tmp_path, timeout=60)
    line = assert_refused(result, 2, contains=[f"argument {option}: must be "])
    prog = "miner " + " ".join(args[:2] if args[0] in ("bench", "export") else args[:1])
    assert line.startswith(f"{prog}: error: ") and line.endswith(f"see `{prog} --help`")
    assert_untouched(before, watched())


def test_local_cluster_too_small_before_ray(archive, tiny_model, tmp_path, watched):
    """--num-cpus smaller than one actor: refused before Ray starts (was: actors waiting for CPUs)."""
    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(_mine(archive, tiny_model, out, "--num-cpus", "1", "--cpus-per-worker", "2"), cwd=tmp_path,
                       timeout=120)
    assert_refused(result, 2, contains=["--cpus-per-worker 2 needs more than the local Ray cluster's --num-cpus 1"])
    assert result.seconds < 60 and not out.exists()
    assert_untouched(before, watched(out))


@pytest.mark.ray
def test_local_cluster_that_can_never_run_the_actors(archive, tiny_model, tmp_path, watched):
    """An actor larger than the local cluster: refused as soon as Ray says what it has, OUT untouched."""
    out = tmp_path / "out"
    before = watched(out)
    result = run_miner(_mine(archive, tiny_model, out, "--cpus-per-worker", "4096"), cwd=tmp_path, timeout=300)
    assert_refused(result, 2, contains=["--cpus-per-worker 4096 needs more CPUs than the local Ray cluster has"])
    assert not out.exists()
    assert_untouched(before, watched(out))


# --- the range types themselves --------------------------------------------------------------------------------


def test_number_ranges_by_hand():
    assert STEPS("3") == 3 and STEPS(" 10 ") == 10
    assert FRACTION("0") == 0.0 and FRACTION("1") == 1.0 and FRACTION("1e-300") == 1e-300
    assert OPEN_FRACTION("1") == 1.0
    for bad in ("0", "-0", "0.0", "1.0000001", "nan", "inf", "-inf", "", "x", "0x1"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be a number in \(0, 1\]"):
            OPEN_FRACTION(bad)
    for bad in ("0", "11", "3.0", "1e1", "nan", "9" * 5000, "3 4"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer in \[1, 10\]"):
            STEPS(bad)
    assert integer(0, None).describe() == "an integer >= 0"
    assert real(0.0, 10.0, lo_open=True).interval == "(0, 10]"
    assert real(0.0, 1.0, hi_open=True).interval == "[0, 1)"
    assert integer(1, 1 << 34).interval == "[1, 2^34]"
    assert real().describe() == "a number (finite)"
    assert 5 in integer(1, 10) and 5.0 not in integer(1, 10) and True not in integer(0, 1)
    # what the user typed is echoed escaped and cut: the message stays one short line
    with pytest.raises(argparse.ArgumentTypeError) as info:
        STEPS("1\n2\u202e" + "9" * 100)
    assert "\n" not in str(info.value) and "\\u202e" in str(info.value) and len(str(info.value)) < 100


def test_number_lists():
    levels = numbers(OPEN_FRACTION, words=("wang",))
    assert levels("0.3,0.5,0.7") == "0.3,0.5,0.7" and levels("wang") == "wang" and levels(" WANG ") == " WANG "
    for bad in ("", ",", "0.3,,nan", "0,0.5", "a,b", "1e999"):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated numbers"):
            levels(bad)


def test_one_line_escapes_what_would_break_the_line():
    assert one_line("plain text: ok") == "plain text: ok"
    assert one_line("a\nb\r\tc\x1b[1m\u202ed\u2066") == "a\\nb\\r\\tc\\x1b[1m\\u202ed\\u2066"


def test_usage_errors_are_one_line(capsys):
    parser = build_parser()
    for argv in (["mine"], ["mine", "a", "--model", "m", "--out", "o", "--bogus", "x\ny"], ["nope"],
                 ["export", "onnx", "a", "b", "--opset"], ["bench", "kernels", "--maps", "-1"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("miner") and err.rstrip().endswith("--help`"), err
    assert isinstance(parser, Parser)


def test_every_numeric_option_has_its_own_range():
    """No numeric option of any verb is left to the fallback check (finite, >= 0) or to plain int/float."""
    parser = build_parser()
    options = list(numeric_actions(parser))
    assert len(options) > 100
    left = [f"{p.prog} {'/'.join(a.option_strings)}" for p, a in options if a.type.fallback]
    assert not left, left
    plain = [f"{p.prog} {a.dest}" for p, a in numeric_actions(parser, include_plain=True)
             if not isinstance(a.type, Number)]
    assert not plain, plain


def test_help_shows_each_range():
    parser = build_parser()
    texts = {a.option_strings[0]: a.help for p, a in numeric_actions(parser) if p.prog == "miner mine"}
    assert texts["--steps"].endswith("; range [1, 10]")
    assert texts["--num-cpus"].endswith("; range [1, 4096]")
    assert texts["--prob-threshold"].endswith("; range [0, 1]")


def test_opset_range_is_the_exports():
    from miner.cli.export import OPSET
    from miner.export.onnx import MAX_OPSET, MIN_OPSET

    assert (OPSET.lo, OPSET.hi) == (MIN_OPSET, MAX_OPSET)
