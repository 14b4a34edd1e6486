"""Fixtures of the job tests: one phantom archive with bad files, one tiny model, Ray processes cleaned up by
session id (never `ray stop`, which would kill every Ray process on the machine, other tests' included)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

IMAGES = 200
INPUT_SIZE = 64


@pytest.fixture(scope="session")
def short_tmp():
    """A short folder for Ray's sockets (Unix socket paths are limited to 107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="amj", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def job_archive(tmp_path_factory):
    """200 phantom images plus one bad file of each kind: (root, {kind: image_id})."""
    from miner.phantoms import make_phantoms
    from miner.phantoms.bad_files import inject_bad_files

    root = tmp_path_factory.mktemp("archive200")
    make_phantoms(root, images=IMAGES, size=128, seed=7)
    bad = inject_bad_files(root, seed=7)
    return root, bad


@pytest.fixture(scope="session")
def job_model(tmp_path_factory):
    """A tiny ResNet-MSA checkpoint at 64 px (4x4 maps)."""
    import torch

    from miner.findings import CHESTXRAY14
    from miner.models import create_model
    from miner.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet18_msa", classes=CHESTXRAY14, width=0.125)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model, meta={"input_size": INPUT_SIZE})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Processes of session `sid` (a process started with start_new_session=True and all it spawned: Ray's
    node processes and workers keep their session even when they change process group)."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid:
                pids.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def kill_session(sid: int, *, grace: float = 5.0) -> None:
    """SIGTERM every process of session `sid`, then SIGKILL what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and _alive(session_pids(sid)):
            time.sleep(0.2)
        if not _alive(session_pids(sid)):
            return


def _alive(pids: list[int]) -> bool:
    import psutil

    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            continue
    return False
