"""IoU and IoBB on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from miner.metrics import iobb, iou


def test_hand_computed_iou_and_iobb():
    gt = np.array([[10, 10, 20, 20]])  # covers [10, 30) x [10, 30): area 400
    pred = np.array([
        [10, 10, 20, 20],   # identical
        [20, 20, 20, 20],   # overlap [20, 30)^2 = 100; union 700
        [15, 10, 10, 20],   # inside gt: inter 200 = its area; union 400
        [0, 0, 40, 40],     # contains gt: inter 400; union 1600; iobb 400 / 1600
        [30, 10, 10, 10],   # touches the edge only: 0
        [50, 50, 0, 0],     # empty box
    ])
    np.testing.assert_allclose(iou(pred, gt)[:, 0], [1.0, 100 / 700, 0.5, 0.25, 0.0, 0.0])
    np.testing.assert_allclose(iobb(pred, gt)[:, 0], [1.0, 100 / 400, 1.0, 0.25, 0.0, 0.0])


def test_pairwise_shape_and_symmetry():
    a = np.array([[0, 0, 4, 4], [2, 2, 4, 4]], float)
    b = np.array([[1, 1, 2, 2], [0, 0, 4, 4], [3, 3, 1, 1]], float)
    m = iou(a, b)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, iou(b, a).T)
    assert m[0, 1] == 1.0 and m[1, 0] == pytest.approx(1 / 19)  # inter [2,3)^2 = 1; union 16 + 4 - 1
    # IoBB divides by the predicted box: a small box inside a big one scores 1, the reverse its area ratio
    assert iobb(b[:1], a[:1])[0, 0] == 1.0 and iobb(a[:1], b[:1])[0, 0] == pytest.approx(4 / 16)


def test_negative_size_rejected():
    with pytest.raises(ValueError):
        iou(np.array([[0, 0, -1, 2]]), np.array([[0, 0, 1, 1]]))
