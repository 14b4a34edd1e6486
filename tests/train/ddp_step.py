"""Two training steps (a plain step, then an attention-mining step) on a fixed batch of 8 images.

Run as one process (the whole batch) or under torchrun with K processes (rank r takes its 8/K images); the
final weights are written to argv[1] by rank 0. Used by test_ddp.py.
"""
from __future__ import annotations

import sys

import torch

from miner.config import TrainConfig
from miner.models import create_model
from miner.train import distributed as D
from miner.train.step import TrainForward, training_losses
from miner.train.trainer import set_train_mode


def main(out: str) -> None:
    rt = D.setup("cpu", threads=1)
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, num_classes=3)
    # BatchNorm in eval mode: with DDP each process would otherwise normalise its own half of the batch
    # with its own batch statistics, which one process on the whole batch cannot reproduce.
    set_train_mode(model, "base", TrainConfig(freeze_bn=True))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 1, 64, 64, generator=g)
    targets = (torch.rand(8, 3, generator=g) > 0.5).float()
    per = 8 // rt.world
    mine = slice(rt.rank * per, (rt.rank + 1) * per)
    forward = TrainForward(model)
    if rt.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(forward)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    # step 1: classification; step 2: AM with every image erased (masks are per image, so the split is exact)
    for am in (False, True):
        losses = training_losses(forward, images[mine], targets[mine], am=am, kp_mode="none", depth=1)
        opt.zero_grad()
        losses.loss.backward()
        opt.step()
    if rt.main:
        torch.save(model.state_dict(), out)
    D.teardown(synchronize=True)


if __name__ == "__main__":
    main(sys.argv[1])
