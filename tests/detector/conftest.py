"""Fixtures of the detector tests: a small phantom archive, its true boxes as a job output, and both label layouts
of ``miner labels`` over it. The detector needs the optional extra (torchvision): without it these tests skip,
unless ``MINER_REQUIRE_DETECTOR`` is set (.ci/run installs the extra, so its absence is a failure there)."""
from __future__ import annotations

import os

import pytest

from tests.detector._extra import HAVE_TORCHVISION


def pytest_configure(config):
    if not HAVE_TORCHVISION and os.environ.get("MINER_REQUIRE_DETECTOR"):
        raise pytest.UsageError("torchvision does not import and MINER_REQUIRE_DETECTOR is set: install the detector "
                                "extra (README 'Detector')")


FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax")


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory):
    """24 phantoms of 96 px (seed 7), a third of the patients in the test split."""
    from miner.config import PhantomConfig
    from miner.phantoms import make_phantoms

    root = tmp_path_factory.mktemp("detector") / "archive"
    make_phantoms(root, images=24, size=96, seed=7, config=PhantomConfig(test_fraction=0.34))
    return root


@pytest.fixture(scope="session")
def truth_output(phantom_archive, tmp_path_factory):
    """The archive's true boxes as a complete job output (`miner.bench.detector.write_truth_output`)."""
    from miner.bench.detector import write_truth_output

    return write_truth_output(phantom_archive, tmp_path_factory.mktemp("truth") / "out", classes=FINDINGS)


@pytest.fixture(scope="session")
def label_dirs(truth_output, tmp_path_factory):
    """``miner labels --format yolo`` and ``--format coco`` of the true boxes: {"yolo": DIR, "coco": DIR}."""
    from miner.cli import main

    base = tmp_path_factory.mktemp("labels")
    dirs = {}
    for fmt in ("yolo", "coco"):
        dirs[fmt] = base / fmt
        assert main(["labels", str(truth_output), "--format", fmt, "--to", str(dirs[fmt])]) == 0
    return dirs
