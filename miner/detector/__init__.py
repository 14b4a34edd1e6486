"""A detector trained on the mined boxes (``miner detector train / predict / refine``, ``miner bench detector``).

An optional part: it needs torchvision (``pip install 'attention-miner[detector]'``; README), and nothing outside
this package, the CLI and the benchmarks imports it. The detector is torchvision's Faster R-CNN with an FPN on the
ResNet stages of one of the product's own classifiers (`miner.detector.model`), trained on what ``miner labels``
writes (`miner.detector.data`: the YOLO layout or COCO JSON, read as a user's trainer would read them), and its
predictions are written in the Parquet contract of ``miner mine`` (`miner.detector.predict`), so ``miner eval``,
``miner labels`` and ``miner report`` take them unchanged. Details: docs/detector.md.
"""
from __future__ import annotations

from miner.errors import MinerError

INSTALL = ("pip install 'attention-miner[detector]' (on a CPU machine: pip install 'torch===2.13.0' "
           "torchvision==0.28.0, the index's own build; README 'Detector')")


class MissingExtra(MinerError):
    """torchvision is not installed (exit code 1: not the input's fault)."""

    exit_code = 1


def require_torchvision():
    """torchvision, or one line saying how to install the extra."""
    try:
        import torchvision
        from torchvision.models.detection import FasterRCNN  # noqa: F401  (its C++ ops load here)
    except Exception as err:  # ImportError, or a build that does not fit this torch (RuntimeError / OSError)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise MissingExtra(f"the detector needs torchvision, which does not import here ({first}); {INSTALL}") \
            from None
    return torchvision
