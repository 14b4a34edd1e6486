"""ROC AUC per finding in numpy (no scikit-learn dependency).

AUC = P(score of a random positive > score of a random negative) + 0.5 * P(tie), computed from midranks
(the Mann-Whitney U statistic): AUC = (sum of positive ranks - P (P + 1) / 2) / (P * N).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of one finding.

    Args:
        scores: (np.ndarray[N], float) higher = more likely positive.
        labels: (np.ndarray[N], {0, 1}).

    Returns:
        the AUC in [0, 1], or NaN when all labels are equal (undefined).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ")
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # midranks for ties
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def roc_auc_per_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """scores, labels (np.ndarray[N, C]) -> AUC (np.ndarray[C], NaN for classes with one label value)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"expected matching [N, C] arrays, got {scores.shape} and {labels.shape}")
    return np.array([roc_auc(scores[:, c], labels[:, c]) for c in range(scores.shape[1])], dtype=np.float64)
