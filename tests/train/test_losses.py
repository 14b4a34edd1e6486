from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from miner.train.losses import class_balance_weights, classification_loss, kp_layer_loss, kp_loss


def test_classification_loss_is_mean_branch_bce():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    terms = [-math.log(s(0.0)), -math.log(1 - s(2.0)), -math.log(1 - s(-1.0)), -math.log(s(1.0))]
    assert float(classification_loss(logits, y)) == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_class_balanced_weights():
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    w_pos, w_neg = class_balance_weights(labels)
    np.testing.assert_allclose(w_pos, [4 / 2, 4 / 2])  # N / (2 |P|)
    np.testing.assert_allclose(w_neg, [4 / 6, 4 / 6])  # N / (2 |N|)
    logits = torch.zeros(4, 2)
    y = torch.from_numpy(labels)
    # every term is log 2; weights sum to N per class, so the weighted mean is log 2 again
    got = classification_loss(logits, y, w_pos=torch.from_numpy(w_pos), w_neg=torch.from_numpy(w_neg))
    assert float(got) == pytest.approx(math.log(2), rel=1e-6)


def test_kp_layer_loss_readings():
    a = torch.zeros(2, 3, 2, 2)
    b = torch.zeros(2, 3, 2, 2)
    b[0, 0] = 3.0  # GAP difference (3, 0, 0) for image 0
    b[1, 1] = 4.0  # (0, 4, 0) for image 1
    # per image: ||.|| = 3 and 4 -> mean 3.5 ; whole matrix: sqrt(9 + 16) / 2 = 2.5
    assert float(kp_layer_loss(a, b, norm="image")) == pytest.approx(3.5)
    assert float(kp_layer_loss(a, b, norm="batch")) == pytest.approx(2.5)
    logits_a, logits_b = torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    # L_KP = mean over layers: (3.5 + 0.5) / 2
    assert float(kp_loss({"layer4": a, "logits": logits_a}, {"layer4": b, "logits": logits_b})) == pytest.approx(2.0)


def test_kp_gradient_is_finite_at_zero_distance():
    b = torch.zeros(2, 3, requires_grad=True)
    loss = kp_layer_loss(torch.zeros(2, 3), b)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(b.grad).all()
