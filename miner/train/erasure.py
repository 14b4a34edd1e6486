"""Erasure masks for attention-mining (AM) training, by the inference rule (Cai et al. Sec. 3.2).

For each image and class, starting from M_0 = 1: H_t = class map of X * M_{t-1}; normalise H_t to [0, 1]
(min-max per map); binarise at `threshold`; M_t = M_{t-1} with the connected component that holds the
maximum set to 0 (`miner.kernels.erase_components`). The masks are computed without gradient from the
current model's features.

Class map: CAM (w_c . X) for a linear head. For a non-linear head the CAM weights do not exist, so the
map is HiRes-CAM of the head, sum_d X_d * d logit_c / d X_d, which equals CAM / (h w) for a linear head
(same normalised map) and costs C backward passes through the head only.
"""
from __future__ import annotations

import torch
from torch import Tensor


def head_class_maps(model, feats: Tensor, masks: Tensor | None = None) -> Tensor:
    """Class maps of erased features, no gradient kept.

    Args:
        model: a `miner.models.Classifier`.
        feats: X (Tensor[B, D, h, w]).
        masks: M (Tensor[B, C, h, w]) or None (no erasure).

    Returns:
        maps (Tensor[B, C, h, w], float32): CAM of X * M_c (linear head) or its HiRes-CAM (other heads).
    """
    feats = feats.detach()
    if model.head_is_linear:
        with torch.no_grad():
            cams = torch.einsum("bdhw,cd->bchw", feats.float(), model.head_weight.detach().float())
            return cams if masks is None else cams * masks.float()
    b, _, h, w = feats.shape
    if masks is None:
        masks = feats.new_ones(b, model.num_classes, h, w)
    out = []
    with torch.enable_grad():
        x = feats.float().requires_grad_(True)
        logits = model.forward_head(x, masks=masks.float())
        for c in range(model.num_classes):
            (grad,) = torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c + 1 < model.num_classes)
            out.append((grad * x).sum(dim=1))
    return torch.stack(out, dim=1).detach()


def normalise_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map of (Tensor[B, C, h, w]) to [0, 1]; a flat map becomes 0."""
    flat = maps.flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.view_as(maps)


def erasure_masks(
    model, feats: Tensor, *, steps: int, threshold: float = 0.5, connectivity: int = 8
) -> Tensor:
    """M_steps for every image and class.

    Args:
        model: a `miner.models.Classifier` (its head makes the class maps).
        feats: X (Tensor[B, D, h, w]) of the current model.
        steps: number of erasures t >= 1.

    Returns:
        masks (Tensor[B, C, h, w], float32, 1 = keep, 0 = erased); no gradient.
    """
    from miner.kernels import erase_components

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    b, _, h, w = feats.shape
    c = model.num_classes
    masks = feats.new_ones(b, c, h, w, dtype=torch.float32)
    for _ in range(steps):
        maps = normalise_maps(head_class_maps(model, feats, masks))
        erased = erase_components(maps.reshape(b * c, h, w).contiguous(), threshold=threshold,
                                  connectivity=connectivity)
        masks = masks * (~erased).reshape(b, c, h, w).to(masks.dtype)
    return masks
