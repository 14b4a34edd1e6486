"""Seg-Grad-CAM (Vinogradova et al. 2020) and Seg-HiRes-Grad-CAM (Rheude et al. 2024) for segmentation nets.

A segmentation net outputs per-pixel logits y_c(u, v) (Tensor[B, K, H, W]). For a set P_c of pixels of
interest, class c's score is the sum of its logits over the set (Rheude et al. Eq. 5):

    y^c = sum_{(u, v) in P_c} y_c(u, v)

and the maps are Grad-CAM / HiRes-CAM of that score at a layer of the net (Eq. 5 and Eq. 6):

    Seg-Grad-CAM        ReLU( sum_k mean_ij(dy^c / dA_k) A_k )
    Seg-HiRes-Grad-CAM  ReLU( sum_k (dy^c / dA_k) * A_k )

`pixel_set_scores` builds y^c for the pixel sets a user may ask for (``target=``):

- ``"predicted"`` (default): P_c = pixels whose arg-max class is c (the predicted region of c);
- ``"all"``: every pixel;
- a mask (Tensor[B, H, W] or Tensor[B, K, H, W], bool or float weights): P_c = the mask (per class when K);
- a pixel ``(row, col)``: one pixel, the same for every image and class.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from miner.cam.base import register
from miner.cam.gradient import GradCAM, HiResCAM
from miner.errors import UsageError

#: what ``target=`` may be for a segmentation method
PixelSet = str | Tensor | Sequence[int] | None


@register
class SegGradCAM(GradCAM):
    name = "seg-gradcam"
    segmentation = True


@register
class SegHiResCAM(HiResCAM):
    name = "seg-hirescam"
    segmentation = True


def pixel_set_weights(output: Tensor, target: PixelSet) -> Tensor:
    """The pixel set of interest as weights (Tensor[B or 1, K or 1, H, W]) over a segmentation output.

    Args:
        output: per-pixel logits (Tensor[B, K, H, W]).
        target: see the module docstring; None means ``"predicted"``.
    """
    b, k, h, w = output.shape
    if target is None or (isinstance(target, str) and target == "predicted"):
        pred = output.detach().argmax(dim=1)  # [B, H, W]
        classes = torch.arange(k, device=output.device).view(1, k, 1, 1)
        return (pred.unsqueeze(1) == classes).to(output.dtype)
    if isinstance(target, str):
        if target == "all":
            return output.new_ones(1, 1, h, w)
        raise UsageError(
            f"segmentation target must be 'predicted', 'all', a mask or a (row, col) pixel, got {target!r}")
    if isinstance(target, Tensor):
        mask = target.to(device=output.device, dtype=output.dtype)
        if mask.dim() == 3:
            mask = mask.unsqueeze(1)
        if mask.dim() != 4 or mask.shape[-2:] != (h, w) or mask.shape[1] not in (1, k) or mask.shape[0] not in (1, b):
            raise UsageError(
                f"segmentation target mask must be [B, H, W] or [B, K, H, W] with H, W = {h}, {w}; "
                f"got {tuple(target.shape)}"
            )
        return mask
    pixel = tuple(int(v) for v in target)
    if len(pixel) != 2 or not (0 <= pixel[0] < h and 0 <= pixel[1] < w):
        raise UsageError(f"segmentation target pixel must be (row, col) inside {h}x{w}, got {tuple(target)}")
    mask = output.new_zeros(1, 1, h, w)
    mask[0, 0, pixel[0], pixel[1]] = 1
    return mask


def pixel_set_scores(output: Tensor, target: PixelSet) -> Tensor:
    """y^c = sum over the pixel set of class c's logits: Tensor[B, K] from output (Tensor[B, K, H, W])."""
    return (output * pixel_set_weights(output, target)).sum(dim=(-2, -1))
