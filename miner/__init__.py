"""attention-miner: harvest lesion boxes from labelled medical-image archives.

Image-level labels only: a classifier's class activation maps, refined by T-step attention mining
(erase the connected component at the map's maximum, look again), give ranked boxes per image and
finding. See README.md for the verbs and docs/design.md for the data flow and the contracts.

Importing `miner` is cheap: torch, ray, triton and tensorrt are imported by the modules that need them.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
