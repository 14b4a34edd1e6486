"""The one small base class every class-map method derives from, and the method registry.

A method turns the activation A of a layer and the gradient G of each class score with respect to A into one
map per class. The engine (`miner.cam.engine`) computes A and G for every requested class at once; a method
supplies only its channel weights (`CamMethod.weights`) or, for element-wise methods, its whole map
(`CamMethod.combine`), as pytorch-grad-cam's `BaseCAM` does.

Shapes used throughout (K = channels of the layer, C = requested classes):

    acts   (Tensor[B, 1 or C, K, h, w])       A, shared by every class (1) or erased class-wise (C)
    grads  (Tensor[B or 1, C, K, h or 1, w or 1])  dy_c / dA; size-1 spatial dims mean "the same at every
                                              position" (a GAP + linear head at its input: G = w_c / (h w))
    maps   (Tensor[B, C, h, w])               raw maps (each method's own output, not normalised)
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from miner.errors import UsageError

_REGISTRY: dict[str, type[CamMethod]] = {}


def register(cls: type[CamMethod]) -> type[CamMethod]:
    """Class decorator: add a method to the registry under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} missing or registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Registered method names, sorted (``cam``, ``gradcam``, ``hirescam``, ...)."""
    return sorted(_REGISTRY)


def get_method(name: str | CamMethod) -> CamMethod:
    """The method instance registered under `name` (case-insensitive; ``_`` and ``-`` are the same)."""
    if isinstance(name, CamMethod):
        return name
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UsageError(f"unknown class-map method {name!r}: choose one of {', '.join(list_methods())}")
    return _REGISTRY[key]()


_ALIASES = {
    "grad-cam": "gradcam",
    "hires-cam": "hirescam",
    "hiresgradcam": "hirescam",
    "gradcampp": "gradcam++",
    "grad-cam++": "gradcam++",
    "xgrad-cam": "xgradcam",
    "layer-cam": "layercam",
    "seg-grad-cam": "seg-gradcam",
    "seg-hires-grad-cam": "seg-hirescam",
    "seg-hires-gradcam": "seg-hirescam",
    "pyramid-grad-cam": "pyramid-gradcam",
    "pg-cam": "pyramid-gradcam",
}


def spatial_sum(t: Tensor, size: tuple[int, int]) -> Tensor:
    """Sum over the two trailing (spatial) dims of a map of `size`; size-1 dims stand for a constant."""
    h, w = size
    factor = (h if t.shape[-2] == 1 else 1) * (w if t.shape[-1] == 1 else 1)
    s = t.sum(dim=(-2, -1))
    return s * factor if factor != 1 else s


def weighted_sum(weights: Tensor, acts: Tensor) -> Tensor:
    """sum_k weights[b, c, k] * acts[b, c, k, i, j] -> Tensor[B, C, h, w].

    weights (Tensor[B or 1, C, K]); acts (Tensor[B, 1 or C, K, h, w]). Shared activations go through one
    batched matrix product (no [B, C, K, h, w] temporary).
    """
    b, ca, k, h, w = acts.shape
    c = weights.shape[1]
    if ca == 1:
        wts = weights.expand(b, c, k)
        return torch.bmm(wts, acts.reshape(b, k, h * w)).reshape(b, c, h, w)
    return torch.einsum("bck,bckhw->bchw", weights.expand(b, c, k), acts)


class CamMethod:
    """Base class of a class-map method.

    Class attributes:
        name: registry name.
        needs_gradients: False only for CAM (head weights, no gradient).
        relu: apply ReLU to the weighted sum (part of every gradient method's definition; not of CAM's).
        mask_equivariant: for a gradient that does not depend on A (a GAP + linear head at its input), the
            map of the erased activation A * M equals M * (map of A) -- so attention mining may mask the first
            map instead of recomputing it (Cai et al.'s shortcut). True for CAM, Grad-CAM, HiRes-CAM, LayerCAM;
            False for Grad-CAM++ and XGrad-CAM, whose weights are normalised by sums of A.
        segmentation: scores are pixel-set sums of a segmentation output (Seg-Grad-CAM family).
        pyramid: one map per pyramid layer, summed (Pyramid Grad-CAM).
        stage_weightable: the map is a sum over channels of terms each positively homogeneous in its channel's
            gradient (CAM, Grad-CAM, HiRes-CAM, XGrad-CAM, LayerCAM), so scaling G_k by a >= 0 scales channel
            k's contribution by a: stage weights (`miner.cam.ClassMapper`) apply. False for Grad-CAM++.
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    relu: ClassVar[bool] = True
    mask_equivariant: ClassVar[bool] = False
    segmentation: ClassVar[bool] = False
    pyramid: ClassVar[bool] = False
    stage_weightable: ClassVar[bool] = False

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        """Channel weights (Tensor[B or 1, C, K]). Methods that are not channel-weighted override `combine`."""
        raise TypeError(f"{type(self).__name__} defines combine(), not weights()")

    def combine(self, acts: Tensor, grads: Tensor) -> Tensor:
        """Raw maps (Tensor[B, C, h, w]) from acts and grads (shapes in the module docstring)."""
        maps = weighted_sum(self.weights(acts, grads), acts)
        return torch.relu(maps) if self.relu else maps

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
