"""Process-group set-up for data-parallel training (torch DDP launched by ``torchrun``; one process alike).

``torchrun --nproc-per-node K -m miner train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE;
without them the run is a single process and no process group is created. Backend: NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from miner.errors import UsageError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda:<local rank> when CUDA is available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available here; use --device cpu")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")


def setup(device: str = "auto", *, threads: int | None = None) -> Runtime:
    """Join the torchrun process group when launched by torchrun; set torch's thread count.

    Threads: `threads`, else the machine's cores divided by the processes on this node.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, threads or cores // max(1, local_world)))
    return Runtime(dev, rank, world, local_rank, local_world)


def teardown(*, synchronize: bool = False) -> None:
    """Leave the process group. With `synchronize` (a normal end, every rank gets here) wait for the others first:
    a rank that destroys its gloo group while a peer still works (rank 0 saving) can abort that peer at exit
    ("terminate called without an active exception"). Never after an error: a peer that died would hold the
    barrier until the group's timeout."""
    if dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(obj, runtime: Runtime) -> list:
    """[obj of rank 0, obj of rank 1, ...] (a one-element list without a process group)."""
    if not runtime.distributed:
        return [obj]
    out = [None] * runtime.world
    dist.all_gather_object(out, obj)
    return out


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, runtime: Runtime) -> bool:
    """Rank 0's boolean, on every rank."""
    if not runtime.distributed:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])
