"""pytorch-grad-cam for the tests: imported through `miner.bench.oracles` (stand-ins for torchvision names)."""
from __future__ import annotations

from miner.bench.oracles import import_pytorch_grad_cam, reimplemented_gradcam

__all__ = ["import_pytorch_grad_cam", "reimplemented_gradcam"]
