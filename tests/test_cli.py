from __future__ import annotations

import subprocess
import sys

from miner import __version__
from miner.cli import VERBS, main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert capsys.readouterr().out.strip() == f"attention-miner {__version__}"


def test_every_verb_has_help():
    for verb in VERBS:
        result = subprocess.run([sys.executable, "-m", "miner", verb, "--help"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert f"usage: miner {verb}" in result.stdout


def test_no_verb_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "miner"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == "miner: error: the following arguments are required: VERB; see `miner --help`\n"


def test_import_miner_is_light():
    code = ("import sys, miner, miner.cli; "
            "print(sorted(m for m in ('torch','ray','triton','tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mine_box_overrides_one_level_and_plain_boxes():
    """--step-level drops the model's per-finding levels; --plain-boxes its per-finding box shapes and regressors."""
    import argparse

    from miner.cli.mine import add_arguments, mining_overrides

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["archive", "--model", "m.pt", "--out", "out"]
    assert mining_overrides(parser.parse_args(base)) == ({}, {})
    assert mining_overrides(parser.parse_args(base + ["--step-level", "0.7"]))[1] == {
        "step_level": 0.7, "finding_levels": None}
    assert mining_overrides(parser.parse_args(base + ["--plain-boxes"]))[1] == {"finding_shapes": None,
                                                                               "regressors": None}


def test_mine_plain_maps_reaches_the_model_actors():
    """--plain-maps: the actors open the checkpoint without its stage weights (miner.backends.open_backend)."""
    import argparse

    from miner.cli.mine import add_arguments, backend_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["archive", "--model", "m.pt", "--out", "out"]
    assert backend_options(parser.parse_args(base)) == {"method": None, "layer": None, "plain_maps": None}
    assert backend_options(parser.parse_args(base + ["--plain-maps"]))["plain_maps"] is True
