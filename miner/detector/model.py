"""The detector: torchvision's Faster R-CNN with a feature pyramid on the ResNet stages of a product classifier.

The trunk is the classifier's stem and ``layer1..layer4`` (`miner.models.resnet.ResNet.stages`); layer2, layer3
and layer4 (strides 8, 16, 32) feed torchvision's `FeaturePyramidNetwork` (plus its max-pooled level, stride 64),
whose levels feed the RPN and a small two-layer box head. Started from a trained checkpoint (``--backbone``, by
default the embedded model), the trunk's batch norms are frozen (`FrozenBatchNorm2d`, as torchvision does for a
pretrained backbone: a detector's batches are too small to estimate them); from scratch (``--backbone none``) they
train. No weights are downloaded.

A detector checkpoint is a plain dict read with ``weights_only=True``::

    {"format": "attention-miner-detector/1", "meta": {classes, size, mean, std, trunk, fpn_channels, anchors,
     backbone, labels, epoch, ...}, "state_dict": {...}}
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from miner.detector import require_torchvision
from miner.errors import ModelError

FORMAT = "attention-miner-detector/1"
#: anchor sizes (pixels of the detector's input) per pyramid level, strides 8, 16, 32, 64
ANCHORS: tuple[tuple[int, ...], ...] = ((12, 20), (32, 48), (64, 96), (128, 192))
RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)


class Trunk(nn.Module):
    """The stem and the four stages of a `miner.models.resnet.ResNet` (its head and MSA left out)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(classifier, name))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return c2, c3, self.layer4(c3)


class TrunkFPN(nn.Module):
    """Trunk -> FPN levels ``"0"``..``"2"`` and ``"pool"`` with `out_channels` each (torchvision's backbone API)."""

    def __init__(self, trunk: Trunk, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body = trunk
        self.fpn = FeaturePyramidNetwork(list(channels), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        c2, c3, c4 = self.body(x)
        return self.fpn(OrderedDict([("0", c2), ("1", c3), ("2", c4)]))


def _stage_channels(trunk: Trunk) -> list[int]:
    def out_channels(layer: nn.Sequential) -> int:
        block = layer[-1]
        last = getattr(block, "conv3", None) or block.conv2
        return int(last.out_channels)

    return [out_channels(trunk.layer2), out_channels(trunk.layer3), out_channels(trunk.layer4)]


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d of `module` replaced by torchvision's FrozenBatchNorm2d with its statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)
    return module


def detector_meta(classes: Sequence[str], *, size: int, trunk: Mapping[str, Any], mean: Sequence[float],
                  std: Sequence[float], fpn_channels: int = 64, frozen_bn: bool = True,
                  backbone: str | None = None) -> dict[str, Any]:
    """What a detector checkpoint records to rebuild the model (`build_detector`)."""
    return {"classes": list(classes), "size": int(size), "mean": [float(v) for v in mean],
            "std": [float(v) for v in std], "trunk": dict(trunk), "fpn_channels": int(fpn_channels),
            "frozen_bn": bool(frozen_bn), "anchors": [list(a) for a in ANCHORS], "ratios": list(RATIOS),
            "backbone": backbone}


def build_detector(meta: Mapping[str, Any], *, classifier: nn.Module | None = None) -> nn.Module:
    """Faster R-CNN from `meta` (`detector_meta`); `classifier` gives the trunk's starting weights."""
    require_torchvision()
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    from miner.models.registry import create_model

    spec = meta["trunk"]
    if classifier is None:
        classifier = create_model(spec["arch"], classes=tuple(spec.get("classes") or ("x",)),
                                  in_chans=int(spec.get("in_chans", 1)), **dict(spec.get("options") or {}))
    trunk = Trunk(classifier)
    if meta.get("frozen_bn", True):
        _freeze_batchnorm(trunk)
    channels = int(meta["fpn_channels"])
    backbone = TrunkFPN(trunk, _stage_channels(trunk), channels)
    anchors = AnchorGenerator(sizes=tuple(tuple(int(s) for s in a) for a in meta["anchors"]),
                              aspect_ratios=(tuple(float(r) for r in meta["ratios"]),) * len(meta["anchors"]))
    pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    hidden = 256
    size = int(meta["size"])
    model = FasterRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=pool,
        box_head=TwoMLPHead(channels * 7 * 7, hidden),
        box_predictor=FastRCNNPredictor(hidden, len(meta["classes"]) + 1),
        min_size=size, max_size=size, image_mean=list(meta["mean"]), image_std=list(meta["std"]),
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150, rpn_batch_size_per_image=128, box_batch_size_per_image=128,
        box_score_thresh=0.001, box_detections_per_img=100,
    )
    return model


def trunk_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A trained classifier's model and the trunk record of `detector_meta` (arch, options, in_chans)."""
    from miner.models.checkpoint import load_checkpoint

    classifier, meta = load_checkpoint(path)
    if not all(hasattr(classifier, n) for n in ("conv1", "layer1", "layer2", "layer3", "layer4")):
        raise ModelError(f"{path}: a {meta.get('arch')} has no ResNet stages for the detector's trunk; give a "
                         "resnet18/resnet50 (or _msa) checkpoint, or --backbone none")
    trunk = {"arch": meta["arch"], "options": {k: v for k, v in (meta.get("options") or {}).items()
                                               if k not in ("mean", "std")},
             "in_chans": int(meta["in_chans"])}
    return classifier, {"trunk": trunk, "mean": list(meta["mean"]), "std": list(meta["std"])}


def save_detector(path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any],
                  extra: Mapping[str, Any] | None = None) -> Path:
    """Write a detector checkpoint atomically (temp file, fsync, rename); `extra` holds resume state."""
    from miner.io import atomic_write_bytes

    path = Path(path)
    record = {"format": FORMAT, "meta": dict(meta), "state_dict": model.state_dict(), **dict(extra or {})}
    import io

    buffer = io.BytesIO()
    torch.save(record, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_detector(path: str | os.PathLike) -> dict[str, Any]:
    """The raw detector checkpoint (``weights_only=True``), checked; one-line `ModelError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such detector checkpoint; give the detector.pt that miner detector train "
                         "wrote")
    from miner.models.checkpoint import _load_error

    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of many kinds; code to run is refused by the restricted unpickler
        raise ModelError(f"{path}: not a readable checkpoint ({_load_error(err)[:300]}); give the detector.pt "
                         "that miner detector train wrote") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelError(f"{path}: not a detector checkpoint of miner detector train (no format {FORMAT!r})")
    meta = record.get("meta")
    if not isinstance(meta, dict) or not isinstance(record.get("state_dict"), dict):
        raise ModelError(f"{path}: a detector checkpoint without its meta or weights")
    problem = _meta_problem(meta)
    if problem:
        raise ModelError(f"{path}: its record {problem}; write it again with miner detector train")
    return record


def _meta_problem(meta: Mapping[str, Any]) -> str:
    classes = meta.get("classes")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        return "names no classes"
    if not (isinstance(meta.get("size"), int) and 32 <= meta["size"] <= 4096):
        return "has no input size in [32, 4096]"
    for key in ("mean", "std"):
        values = meta.get(key)
        if not (isinstance(values, list) and values and all(isinstance(v, (int, float)) for v in values)):
            return f"has no {key}"
    trunk = meta.get("trunk")
    if not (isinstance(trunk, dict) and isinstance(trunk.get("arch"), str)):
        return "names no trunk"
    if not (isinstance(meta.get("fpn_channels"), int) and 1 <= meta["fpn_channels"] <= 4096):
        return "has no FPN width"
    anchors = meta.get("anchors")
    if not (isinstance(anchors, list) and len(anchors) == 4 and all(isinstance(a, list) and a for a in anchors)):
        return "has no anchors for the four pyramid levels"
    return ""


def load_detector(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The detector of `path` in eval mode, and its meta."""
    record = read_detector(path)
    meta = record["meta"]
    try:
        model = build_detector(meta)
        model.load_state_dict(record["state_dict"], strict=True)
    except ModelError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ModelError(f"{path}: the weights do not fit the detector its record describes ({first})") from None
    return model.eval(), meta
