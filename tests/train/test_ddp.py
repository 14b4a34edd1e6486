"""Data-parallel training on CPU: 2 gloo processes give the weights of one process on the whole batch."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from miner.models import create_model

SCRIPT = Path(__file__).with_name("ddp_step.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    one = tmp_path / "one.pt"
    subprocess.run([sys.executable, str(SCRIPT), str(one)], check=True, env=env, timeout=120)
    two = tmp_path / "two.pt"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
                    "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(SCRIPT), str(two)],
                   check=True, env=env, timeout=180, capture_output=True)
    a = torch.load(one, weights_only=True)
    b = torch.load(two, weights_only=True)
    torch.manual_seed(0)
    init = create_model("resnet18_msa", width=0.125, num_classes=3).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # the steps did change the weights (trunk, MSA and head alike)
    for k in ("conv1.weight", "layer3.0.conv1.weight", "msa.reduce4.0.weight", "fc.weight"):
        assert (a[k] - init[k]).abs().max() > 1e-3, k
