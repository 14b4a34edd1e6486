from __future__ import annotations

import itertools

import numpy as np
import pytest

from miner.train.auc import roc_auc, roc_auc_per_class


def test_hand_computed_case():
    # positives 0.35, 0.8; negatives 0.1, 0.4. Pairs (pos > neg): (0.35>0.1), (0.8>0.1), (0.8>0.4) = 3 of 4
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_ties_count_half():
    # pairs: (0.5 vs 0.5) tie -> 0.5, (0.9 vs 0.5) -> 1 ; AUC = 1.5 / 2
    assert roc_auc(np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])) == pytest.approx(0.75)
    assert roc_auc(np.ones(4), np.array([0, 1, 0, 1])) == pytest.approx(0.5)


def test_matches_pairwise_definition_and_nan_for_one_class():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((50, 3)), 1)  # rounding makes ties
    labels = (rng.random((50, 3)) < 0.3).astype(np.float32)
    labels[:, 2] = 0
    got = roc_auc_per_class(scores, labels)
    for c in range(2):
        pos, neg = scores[labels[:, c] == 1, c], scores[labels[:, c] == 0, c]
        pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
        assert got[c] == pytest.approx(np.mean(pairs))
    assert np.isnan(got[2])
