"""MaxBoxAccV2 and PxAP on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from miner.config import BoxConfig
from miner.metrics.wsol import max_box_acc_v2, pxap


def test_pxap_hand_computed():
    # scores 0.9 (pos), 0.6 (neg), 0.3 (pos), 0.1 (neg): going down the thresholds
    # tau in (0.6, 0.9]: P = 1, R = 1/2; (0.3, 0.6]: P = 1/2, R = 1/2;
    # (0.1, 0.3]: P = 2/3, R = 1; <= 0.1: P = 1/2, R = 1
    # AP = 1 * 1/2 + 2/3 * 1/2
    s = np.array([[0.9, 0.6], [0.3, 0.1]])
    m = np.array([[1, 0], [1, 0]])
    assert pxap([s], [m], normalise=False) == pytest.approx(0.5 + 1 / 3)
    # a perfect map scores 1, and pooling two images pools their pixels
    assert pxap([m.astype(float)], [m]) == pytest.approx(1.0)
    assert pxap([s, m.astype(float)], [m, m], normalise=False) == pytest.approx(
        # pooled: pos {0.9, 0.3, 1, 1}, neg {0.6, 0.1, 0, 0}
        # (0.6, 1]: TP 3 (1, 1, 0.9), FP 0 -> P 1, R 3/4; then 0.6 adds an FP (R same);
        # (0.1, 0.3]: TP 4, FP 1 -> P 4/5, R 1
        1 * 0.75 + 0.8 * 0.25)


def test_max_box_acc_v2_hand_computed():
    # image 0: one square blob exactly on its GT box -> IoU 1 at every tau that isolates the blob
    # image 1: blob at the wrong place -> best IoU with its GT is 0 except at tau = 0 (the whole image)
    maps = torch.zeros(2, 8, 8)
    maps[0, 2:6, 2:6] = 1.0
    maps[1, 0:2, 0:2] = 1.0
    gt = [np.array([[20, 20, 40, 40]]), np.array([[40, 40, 40, 40]])]  # original images 80x80 (10 px per cell)
    res = max_box_acc_v2(maps, gt, [(80, 80), (80, 80)], config=BoxConfig(upsample=1))
    # tau = 0: whole-image box for both: IoU 0.25 (image 0: 1600/6400), 0.25 (image 1: 1600/6400)
    assert res.curve[0].tolist() == [0.0, 0.0, 0.0]
    # tau > 0: image 0 hits at every delta, image 1 never -> BoxAcc 0.5
    assert res.curve[1:].max(axis=0).tolist() == [0.5, 0.5, 0.5]
    assert res.value == pytest.approx(0.5) and res.best[0.5] == (0.5, 0.01)
    assert res.images == 2


def test_max_box_acc_v2_uses_every_region():
    """V2 counts the best of all regions: a second, weaker blob on the GT still counts."""
    maps = torch.zeros(1, 10, 10)
    maps[0, 0:2, 0:2] = 1.0     # strongest region, wrong place
    maps[0, 6:9, 6:9] = 0.6     # weaker region on the GT box
    gt = [np.array([[6, 6, 3, 3]])]
    res = max_box_acc_v2(maps, gt, [(10, 10)], config=BoxConfig(upsample=1), iou_levels=(0.7,))
    hit = res.curve[:, 0]
    taus = np.array(res.cam_thresholds)
    assert hit[(taus > 0) & (taus <= 0.6)].min() == 1.0 and hit[taus > 0.6].max() == 0.0
