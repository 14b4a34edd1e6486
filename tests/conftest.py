from __future__ import annotations

import os

import pytest

# Quiet, deterministic Ray in tests (set before anything imports ray).
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# idle OpenMP threads sleep (set before torch loads): a spinning team stalls at every barrier when the
# machine is busy (miner.runtime); subprocesses inherit it
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _package_dir(name: str):
    """The folder of an installed package, found without importing it (torchxrayvision imports torchvision)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{name} is not installed: run README's set-up command (it installs the test data packages)")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def nih_data_entry():
    """Path of the real NIH ChestX-ray14 label file (Data_Entry_2017_v2020.csv.gz, 112,120 rows) from
    torchxrayvision."""
    return _package_dir("torchxrayvision") / "data" / "Data_Entry_2017_v2020.csv.gz"


@pytest.fixture(scope="session")
def nih_bbox_list():
    """Path of the real NIH BBox_List_2017.csv.gz (984 boxes on 880 images) from torchxrayvision."""
    return _package_dir("torchxrayvision") / "data" / "BBox_List_2017.csv.gz"


@pytest.fixture(scope="session")
def rg1_dicom():
    """The real chest radiograph of pydicom-data: {"RG1_UNCR"|"RG1_UNCI"|"RG1_J2KR"|"RG1_J2KI": path}.

    1955 rows x 1841 columns, MONOCHROME1, 15 bits stored; UNCR/J2KR lossless, UNCI/J2KI lossy (UNCI is J2KI
    decompressed).
    """
    folder = _package_dir("data_store") / "data"
    return {name: folder / f"{name}.dcm" for name in ("RG1_UNCR", "RG1_UNCI", "RG1_J2KR", "RG1_J2KI")}


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
