"""Pyramid Grad-CAM (Lee et al. 2018, Eq. 3): the sum of Grad-CAMs over the scales of a feature pyramid.

    PG-CAM_c = sum_{p in scales} up( ReLU( sum_k mean_ij(dy_c / dA^p_k) A^p_k ) )

A^p is the output of pyramid layer p of a DC-FPN (``model.pyramid_layers``, finest scale first: scale 1 is the
finest, as in the paper's Fig. 3), y_c the class logit, and ``up`` bilinear upsampling (align_corners=False)
to the finest selected scale. Every scale's gradient is the full gradient through the dense connections (one
backward pass gives all scales). ``scales`` picks the pyramid levels: all (default) or e.g. (1, 4), the
combination Lee et al. report best in their Table 2.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torch.nn import functional as F

from miner.cam.base import register
from miner.cam.gradient import GradCAM
from miner.errors import UsageError


@register
class PyramidGradCAM(GradCAM):
    name = "pyramid-gradcam"
    pyramid = True
    stage_weightable = False
    mask_equivariant = False

    def fuse(self, maps: Sequence[Tensor]) -> Tensor:
        """Sum per-scale maps (each Tensor[B, C, h_p, w_p]) at the largest size: Tensor[B, C, h, w]."""
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        out = None
        for m in maps:
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            out = m if out is None else out + m
        return out


def select_scales(layers: Sequence[str], scales: Sequence[int] | str | None) -> list[str]:
    """The pyramid layer names for 1-based `scales` (None or ``"all"``: every layer)."""
    if scales is None or (isinstance(scales, str) and scales == "all"):
        return list(layers)
    if isinstance(scales, str):
        scales = [int(s) for s in scales.replace("&", ",").split(",") if s.strip()]
    picked = []
    for s in scales:
        if not 1 <= int(s) <= len(layers):
            raise UsageError(f"pyramid scale {s} out of range 1..{len(layers)} (layers {', '.join(layers)})")
        picked.append(layers[int(s) - 1])
    if not picked:
        raise UsageError("no pyramid scale selected")
    return picked

