"""Spatial pooling of per-position class scores into image logits.

A classifier with a linear head scores every position of its feature map X [B, D, h, w] for every class,
s_c(i, j) = w_c . X(i, j) (the class activation map, CAM), and pools the map into the logit of branch c:

    logit_c = pool(s_c) + b_c

- ``avg``: the mean over positions, i.e. w_c . GAP(X) (Zhou et al.'s CAM; Cai et al.'s heads). Every position
  counts alike, so diffuse evidence spread over a lung scores as well as a focal lesion, and the map it is trained
  through stays diffuse.
- ``lse``: log-sum-exp, (1/r) log(mean exp(r s)) (Wang et al., ChestX-ray8, CVPR 2017; Pinheiro & Collobert):
  between the mean (r -> 0) and the maximum (r -> inf). A positive image needs high scores somewhere, not
  everywhere, so training sharpens the map around the lesion.
- ``topk``: the mean of the k highest scores plus alpha times the mean of the k lowest (Durand et al., WILDCAT,
  CVPR 2017; k as a fraction of the positions, at least one).

The map stays the exact per-position class score in every case (pooling acts after the linear map), so CAM is
exact and erasing features commutes with it: CAM(X * M) = M * CAM(X) whatever the pooling (`tests/models`).
Only the gradient of the logit with respect to X depends on the pooling: it is w_c / (h w) for ``avg`` alone,
so gradient methods take the analytic shortcut only there (`miner.cam.engine`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from miner.errors import UsageError

POOLINGS = ("avg", "lse", "topk")


def check_pooling(pooling: str, *, r: float, k: float, alpha: float) -> None:
    """UsageError for an unknown pooling or out-of-range parameters."""
    if pooling not in POOLINGS:
        raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if pooling == "lse" and not r > 0:
        raise UsageError(f"pool_r (the log-sum-exp sharpness) must be positive, got {r}")
    if pooling == "topk" and not 0 < k <= 1:
        raise UsageError(f"pool_k (the top-k fraction of positions) must be in (0, 1], got {k}")
    if pooling == "topk" and not 0 <= alpha <= 1:
        raise UsageError(f"pool_alpha (weight of the k lowest scores) must be in [0, 1], got {alpha}")


def topk_count(positions: int, k: float) -> int:
    """k positions of `positions` for a fraction `k` (at least 1)."""
    return max(1, min(positions, int(round(k * positions))))


def pool_scores(scores: Tensor, pooling: str, *, r: float = 10.0, k: float = 0.1, alpha: float = 0.0) -> Tensor:
    """Pool per-position class scores (Tensor[..., h, w]) into one value per map (Tensor[...]).

    Args:
        scores: s (Tensor[..., h, w]), without the branch bias.
        pooling: ``avg``, ``lse`` or ``topk`` (module docstring).
        r: log-sum-exp sharpness; k: top-k fraction of the positions; alpha: weight of the k lowest (topk).
    """
    flat = scores.flatten(-2)
    n = flat.shape[-1]
    if pooling == "avg":
        return scores.mean(dim=(-2, -1))
    if pooling == "lse":
        return (torch.logsumexp(flat * r, dim=-1) - math.log(n)) / r
    if pooling == "topk":
        kk = topk_count(n, k)
        top = flat.topk(kk, dim=-1).values.mean(dim=-1)
        if alpha == 0:
            return top
        low = (-flat).topk(kk, dim=-1).values.mean(dim=-1)
        return top - alpha * low
    raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
