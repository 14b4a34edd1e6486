"""``miner detector`` and ``miner bench detector`` through the real CLI: the optional extra stays optional (the
core never imports torchvision; without it the verb is one line, exit 1), bad input is one line with exit 2, and
the quick benchmark prints the table (a) / (b) / (c) / (r) with the ratio (b)/(a)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.detector._extra import needs_torchvision

ROOT = Path(__file__).resolve().parents[2]
MINER = [sys.executable, "-m", "miner"]
#: the only modules that may import torchvision (the optional extra)
OPTIONAL = {"miner/detector", "miner/bench/detector.py", "miner/cli/detector.py"}


def _run(args, env=None, timeout=600):
    return subprocess.run([*MINER, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_never_imports_torchvision():
    offenders = []
    for folder in ("miner", "export", "kernels"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if any(rel == o or rel.startswith(o + "/") for o in OPTIONAL):
                continue
            if "torchvision" in _imports(path):
                offenders.append(rel)
    assert offenders == []
    # and the parser of every verb, the detector's included, builds without it
    code = ("import sys; from miner.cli import build_parser; build_parser(); "
            "print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_without_torchvision_one_line_exit_1(tmp_path):
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torchvision')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for args in (["detector", "train", str(tmp_path), "--to", str(tmp_path / "d")],
                 ["detector", "predict", "x.pt", str(tmp_path), "--out", str(tmp_path / "o")],
                 ["bench", "detector", "--quick", "--out", str(tmp_path / "b")]):
        done = _run(args, env=env, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1, done.stderr
        assert len(lines) == 1 and "needs torchvision" in lines[0] and "attention-miner[detector]" in lines[0]
    assert not (tmp_path / "d").exists() and not (tmp_path / "o").exists()


@needs_torchvision
def test_bad_input_is_one_line(tmp_path, phantom_archive):
    not_labels = tmp_path / "empty"
    not_labels.mkdir()
    fake = tmp_path / "fake.pt"
    fake.write_bytes(b"not a checkpoint")
    cases = [
        (["detector", "train", str(not_labels), "--to", str(tmp_path / "d")], "neither data.yaml"),
        (["detector", "train", str(not_labels), "--to", str(tmp_path / "d"), "--epochs", "0"], "--epochs"),
        (["detector", "predict", str(fake), str(phantom_archive), "--out", str(tmp_path / "o")],
         "not a readable checkpoint"),
        (["detector", "refine", str(not_labels), str(not_labels), "--out", str(tmp_path / "r")],
         "not a mining job's output folder"),
    ]
    for args, message in cases:
        done = _run(args, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, (args, done.stderr)
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert not any((tmp_path / n).exists() for n in ("d", "o", "r"))


@needs_torchvision
@pytest.mark.ray
def test_quick_bench_prints_the_table(tmp_path):
    env = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    done = _run(["bench", "detector", "--quick", "--out", str(tmp_path / "bench")], env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    for needle in ("(a) true boxes", "(b) mined boxes", "(c) mined, direct", "(r) refined (b)", "(b)/(a)", "AP50:",
                   "Acc@0.5:", "plain: (b)/(a) AP50 macro", "refined - mined"):
        assert needle in text, needle
    tables = (tmp_path / "bench" / "tables.txt").read_text()
    assert tables in text
    import json

    result = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert {r["name"] for r in result["rows"]} == {"a", "b", "c", "r"}
    # the (b) row's detector trained on what miner labels --format yolo wrote, through the loader a user has
    labels = tmp_path / "bench" / "plain" / "labels-mined-top3"
    assert (labels / "data.yaml").is_file() and (labels / "miner-labels.json").is_file()
    train = json.loads((tmp_path / "bench" / "plain" / "detectors" / "b-top3-seed0" / "train.json").read_text())
    from miner.detector.data import read_labels

    assert train["labels"] == read_labels(labels, split="train").fingerprint()
