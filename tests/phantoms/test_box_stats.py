from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from miner.data.archives.nih import read_bbox_list
from miner.phantoms.box_stats import NIH_BOX_STATS, derive_box_stats, sample_box


def test_constants_are_the_real_nih_statistics(nih_bbox_list):
    derived = derive_box_stats(read_bbox_list(nih_bbox_list))
    assert set(derived) == set(NIH_BOX_STATS)
    for finding, stats in NIH_BOX_STATS.items():
        got = dataclasses.astuple(derived[finding])
        want = dataclasses.astuple(stats)
        assert got[0] == want[0], finding
        np.testing.assert_allclose(np.hstack(got[1:]), np.hstack(want[1:]), atol=5e-4 + 1e-9, err_msg=finding)


def test_sampled_boxes_follow_the_statistics():
    rng = np.random.default_rng(0)
    stats = NIH_BOX_STATS["Mass"]
    draws = np.array([sample_box(stats, rng)[:4] for _ in range(20000)])
    log_w, log_h = np.log(draws[:, 2]), np.log(draws[:, 3])
    assert log_w.mean() == pytest.approx(stats.log_w[0], abs=0.02)
    assert log_h.std() == pytest.approx(stats.log_h[1], abs=0.02)
    assert np.corrcoef(log_w, log_h)[0, 1] == pytest.approx(stats.corr, abs=0.02)
    assert (draws[:, 0] < 0.5).mean() == pytest.approx(stats.p_left, abs=0.02)
    assert draws[:, 1].mean() == pytest.approx(stats.cy[0], abs=0.01)
