"""Fixtures of the hostile-input tests: a small phantom archive and a tiny model, made once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.harness import snapshot


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny ResNet-MSA checkpoint at 64 px (the job tests' model)."""
    import torch

    from miner.findings import CHESTXRAY14
    from miner.models import create_model
    from miner.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet18_msa", classes=CHESTXRAY14, width=0.125)
    return save_checkpoint(tmp_path_factory.mktemp("hostile_model") / "tiny.pt", model, meta={"input_size": 64})


@pytest.fixture(scope="session")
def clean_archive(tmp_path_factory) -> Path:
    """12 phantom images of 96 px in the ChestX-ray14 layout (read-only for the tests: copy before changing)."""
    from miner.phantoms import make_phantoms

    root = tmp_path_factory.mktemp("hostile_archive")
    make_phantoms(root, images=12, size=96, seed=3)
    return root


@pytest.fixture
def archive(clean_archive, tmp_path) -> Path:
    """A private copy of the clean archive that a test may make hostile."""
    import shutil

    root = tmp_path / "archive"
    shutil.copytree(clean_archive, root)
    return root


@pytest.fixture
def watched(tmp_path):
    """`watched(out)`: snapshot of the test's folder with OUT left out; call again after the run to compare."""
    def take(*exclude: Path) -> dict[str, tuple]:
        return snapshot([tmp_path], exclude=exclude)
    return take


# Property-based fuzzing (hypothesis): a fixed, reproducible budget in every run, CI's included. Each property
# runs `max_examples` derandomized examples (the same ones every run, so a failure reproduces), no deadline
# (2 shared cores). A property that needs fewer or more sets its own max_examples with @settings.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("hostile", max_examples=100, derandomize=True, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.load_profile("hostile")
except ImportError:  # README's set-up installs it (the dev extra); without it the fuzz tests fail to import
    pass
