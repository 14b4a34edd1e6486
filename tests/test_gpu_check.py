"""scripts/gpu_check.sh and its checks, tested here up to the point where they need a GPU."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^gpu_check: (\S+)\s+(PASS|FAIL|SKIP)  (.+) \[\d+ s\]$")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_a_gpu_the_script_says_so_in_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 69  # EX_UNAVAILABLE
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: no NVIDIA GPU on this machine (nvidia-smi lists none); run it where one is lent"]
    assert list(tmp_path.iterdir()) == []  # it installed and wrote nothing


def _rehearse(tmp_path: Path, *only: str) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Run the checks with --device cpu --quick (the named ones, else all): their lines and {name: (status, text)}."""
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_AUTH_MODE": "disabled"}
    names = [a for name in only for a in ("--only", name)]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--workdir", str(tmp_path), *names], capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    return lines, {m.group(1): (m.group(2), m.group(3)) for m in map(LINE.match, lines[:-1]) if m}


def _check_shared(parsed: dict[str, tuple[str, str]]) -> None:
    """What both rehearsals show: the GPU-only checks skipped with their reason, onnxruntime vs torch parity of
    the embedded model within 1e-3 with the same rank-1 boxes, the kernels equal to the CPU path."""
    assert parsed["pytest-gpu"] == ("SKIP", "the gpu-marked tests need a CUDA device")
    assert parsed["tensorrt"][0] == "SKIP" and "tensorrt is not installed" in parsed["tensorrt"][1]
    status, text = parsed["ort-cuda"]
    assert status == "PASS" and "CPUExecutionProvider" in text
    d_logits, d_maps, iou = re.search(r"logits \|d\| (\S+), maps \|d\|/max (\S+), rank-1 box IoU median (\S+)",
                                      text).groups()
    assert float(d_logits) <= 1e-3 and float(d_maps) <= 1e-3 and float(iou) >= 0.9
    assert parsed["kernels"][0] == "PASS" and "== CPU path" in parsed["kernels"][1]


def test_rehearsal_without_the_job(tmp_path):
    """The quick rehearsal CI runs: every check but the job (whose failure path the test below runs, and whose
    success the slow rehearsal checks), one line each."""
    lines, parsed = _rehearse(tmp_path, "env", "pytest-gpu", "kernels", "ort-cuda", "tensorrt")
    assert lines[-1] == "gpu_check: 3 passed, 0 failed, 2 skipped"
    assert list(parsed) == ["env", "pytest-gpu", "kernels", "ort-cuda", "tensorrt"], lines
    _check_shared(parsed)


@pytest.mark.slow
def test_rehearsal_on_cpu_runs_every_check_to_the_gpu(tmp_path):
    """Every check with --device cpu, a real `miner mine` job with its images/s included."""
    lines, parsed = _rehearse(tmp_path)
    assert lines[-1] == "gpu_check: 4 passed, 0 failed, 2 skipped"
    assert list(parsed) == ["env", "pytest-gpu", "kernels", "ort-cuda", "tensorrt", "job"], lines
    _check_shared(parsed)
    status, text = parsed["job"]
    assert status == "PASS" and re.search(r"24 phantoms of 128 px on cpu: [\d.]+ images/s", text)


def test_a_failing_check_is_a_line_not_a_traceback(tmp_path):
    """A check that fails prints FAIL with the cause on its line, and the script exits 1: here the job check
    finds its phantom archive already there but empty, so `miner mine` refuses it."""
    (tmp_path / "phantoms24").mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--only", "job", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    first, last = proc.stdout.strip().splitlines()
    assert LINE.match(first).groups()[:2] == ("job", "FAIL")
    assert "miner mine exited 2" in first and "no Data_Entry_2017.csv, manifest or image files" in first
    assert last == "gpu_check: 0 passed, 1 failed, 0 skipped"
    assert "Traceback" not in proc.stdout + proc.stderr
