"""Losses: per-branch sigmoid cross-entropy (Cai et al. Eq. 2-3) and knowledge preservation (Eq. 4-5).

Reading of Eq. 4, L^k = 1/(N-n) * ||g(X_A(k)) - g(X_B(k))||_2 with g(X) in R^{(N-n) x D}:
the 1/(N-n) factor only makes sense as an average over images (a Frobenius norm of the whole matrix divided
by N-n would shrink as 1/sqrt(N-n) with the batch size), so by default (``norm="image"``) L^k is the mean over
the N-n un-erased images of the per-image L2 distance ||g_A,i - g_B,i||_2 (docs/design.md, the KP equation:
"mean L2 distance").
``norm="batch"`` gives the literal matrix reading ||G_A - G_B||_F / (N-n) for comparison.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F


def class_balance_weights(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wang et al. (ChestX-ray8) W-CEL weights from a label matrix (np.ndarray[N, C] in {0, 1}).

    Returns:
        (w_pos, w_neg) (np.ndarray[C] each): N / (2 |P_c|) and N / (2 |N_c|), so a class's positives and
        negatives carry equal total weight and the mean weight over the set is 1. A class without
        positives (or negatives) gets weight 1 on the side that exists.
    """
    labels = np.asarray(labels, dtype=np.float64)
    n = labels.shape[0]
    pos = labels.sum(axis=0)
    neg = n - pos
    w_pos = np.where(pos > 0, n / (2.0 * np.maximum(pos, 1)), 1.0)
    w_neg = np.where(neg > 0, n / (2.0 * np.maximum(neg, 1)), 1.0)
    return w_pos.astype(np.float32), w_neg.astype(np.float32)


def classification_loss(
    logits: Tensor, targets: Tensor, *, w_pos: Tensor | None = None, w_neg: Tensor | None = None
) -> Tensor:
    """L_cls = 1/C sum_c 1/N sum_i h(sigma(logit_ic), y_ic) (Eq. 2-3), optionally class-balanced.

    Args:
        logits: (Tensor[N, C]) branch outputs (erased or not).
        targets: (Tensor[N, C], {0, 1} float).
        w_pos, w_neg: (Tensor[C]) weights of positive / negative terms, or None (plain BCE).
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    if w_pos is None and w_neg is None:
        return F.binary_cross_entropy_with_logits(logits, targets)
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    wp = w_pos.to(per) if w_pos is not None else torch.ones_like(per[0])
    wn = w_neg.to(per) if w_neg is not None else torch.ones_like(per[0])
    weights = targets * wp + (1 - targets) * wn
    return (per * weights).mean()


def gap(x: Tensor) -> Tensor:
    """g(.): global average pooling of [N, D, h, w] to [N, D]; [N, D] (logits) passes through."""
    return x.float().mean(dim=(2, 3)) if x.dim() == 4 else x.float()


def kp_layer_loss(a: Tensor, b: Tensor, *, norm: str = "image") -> Tensor:
    """L^k of Eq. 4 between the frozen network's output `a` and the trained one's `b` at one layer.

    Args:
        a, b: (Tensor[N-n, D, h, w] or Tensor[N-n, D]) outputs of layer k for the un-erased images.
        norm: ``image`` (mean of per-image L2 distances) or ``batch`` (Frobenius norm / (N-n)).
    """
    diff = gap(b) - gap(a).detach()
    m = diff.shape[0]
    if m == 0:
        return diff.sum() * 0.0
    if norm == "image":
        return torch.linalg.vector_norm(diff, dim=1).mean()
    if norm == "batch":
        return torch.linalg.vector_norm(diff) / m
    raise ValueError(f"kp norm must be 'image' or 'batch', got {norm!r}")


def kp_loss(a: Mapping[str, Tensor], b: Mapping[str, Tensor], *, norm: str = "image") -> Tensor:
    """L_KP = 1/|K| sum_k L^k (Eq. 5) over the layers present in both mappings (layer name -> output)."""
    if set(a) != set(b) or not a:
        raise ValueError(f"KP layers differ or are empty: {sorted(a)} vs {sorted(b)}")
    losses = [kp_layer_loss(a[k], b[k], norm=norm) for k in a]
    return torch.stack(losses).mean()
