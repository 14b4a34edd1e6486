"""Data-parallel training on CPU: 2 gloo processes give the weights of one process on the whole batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from miner.models import create_model

SCRIPT = Path(__file__).with_name("ddp_step.py")


def test_two_gloo_processes_equal_one_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    one = tmp_path / "one.pt"
    subprocess.run([sys.executable, str(SCRIPT), str(one)], check=True, env=env, timeout=120)
    two = tmp_path / "two.pt"
    # --standalone: the rendezvous store binds a port the OS picks (localhost:0), so no other process (a Ray
    # cluster left by an earlier test, another job) can take a port chosen beforehand (the failure of
    # --master-port free_port() in two clean CI runs)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(SCRIPT), str(two)], env=env, timeout=180, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
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
