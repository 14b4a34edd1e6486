"""The batched CPU path against scipy, exactly (labels, counts, erasure, bbox, area) and to float64 rounding (sum)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from miner.errors import UsageError
from miner.kernels import ComponentStats, component_stats, erase_components, label_components
from tests.kernels import cases


@pytest.mark.parametrize("connectivity", [4, 8])
def test_label_random_maps_equal_scipy(connectivity):
    rng = np.random.default_rng(connectivity)
    for h, w in [(1, 1), (1, 7), (7, 1), (5, 9), (16, 16), (31, 17), (64, 48)]:
        for density in (0.05, 0.25, 0.5, 0.75, 0.95):
            mask = rng.random((6, h, w)) < density
            labels, counts = label_components(torch.from_numpy(mask), connectivity=connectivity)
            ref, ref_counts = cases.scipy_label(mask, connectivity)
            assert labels.dtype == torch.int32 and counts.dtype == torch.int32
            np.testing.assert_array_equal(labels.numpy(), ref)
            np.testing.assert_array_equal(counts.numpy(), ref_counts)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (13, 13), (12, 17), (33, 8)])
def test_label_patterns_equal_scipy(connectivity, shape):
    mask = cases.mixed_batch(np.random.default_rng(1), *shape)
    labels, counts = label_components(torch.from_numpy(mask), connectivity=connectivity)
    ref, ref_counts = cases.scipy_label(mask, connectivity)
    np.testing.assert_array_equal(labels.numpy(), ref)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)


def test_checkerboard_differs_between_connectivities():
    mask = torch.from_numpy(cases.checkerboard(6, 5)[None])
    _, c8 = label_components(mask, connectivity=8)
    _, c4 = label_components(mask, connectivity=4)
    assert c8.tolist() == [1]
    assert c4.tolist() == [15]  # every on-pixel of a 6x5 checkerboard alone


def test_label_hand_case_and_leading_dims():
    m = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.uint8)
    labels, counts = label_components(m.expand(2, 3, 3, 3), connectivity=4)
    assert labels.shape == (2, 3, 3, 3) and counts.shape == (2, 3)
    assert labels[1, 2].tolist() == [[1, 0, 2], [0, 3, 0], [4, 0, 0]]
    labels8, counts8 = label_components(m, connectivity=8)
    assert labels8.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 0]] and counts8.tolist() == 1


def test_label_large_batch_spans_several_chunks(monkeypatch):
    from miner.kernels import _cpu

    monkeypatch.setattr(_cpu, "_CHUNK_PIXELS", 300)  # ~9 maps of 8x4 per chunk
    rng = np.random.default_rng(5)
    mask = rng.random((40, 8, 4)) < 0.5
    labels, counts = label_components(torch.from_numpy(mask))
    ref, ref_counts = cases.scipy_label(mask, 8)
    np.testing.assert_array_equal(labels.numpy(), ref)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    values = rng.random(mask.shape).astype(np.float32)
    _check_stats(ref, values, int(ref_counts.max()), component_stats(labels, torch.from_numpy(values)))
    maps = torch.from_numpy(values)
    np.testing.assert_array_equal(erase_components(maps).numpy(), cases.scipy_erase(values, 0.5, 8))


def test_label_one_big_batch_multithreaded_cv2_call():
    rng = np.random.default_rng(6)
    mask = rng.random((3000, 32, 32)) < 0.45
    for connectivity in (4, 8):
        labels, counts = label_components(torch.from_numpy(mask), connectivity=connectivity)
        ref, ref_counts = cases.scipy_label(mask, connectivity)
        np.testing.assert_array_equal(counts.numpy(), ref_counts)
        np.testing.assert_array_equal(labels.numpy(), ref)


def test_threaded_chunks_give_the_same_results(monkeypatch):
    from miner.kernels import _cpu

    monkeypatch.setattr(_cpu, "_CHUNK_PIXELS", 2000)  # ~16 maps of 11x11 per chunk, 13 chunks
    rng = np.random.default_rng(11)
    maps = torch.from_numpy(np.stack([cases.blobs(rng, 11, 11, sigma=1.0) for _ in range(200)]))
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            labels, counts = label_components(maps >= 0.4)
            results.append((erase_components(maps), labels, counts, component_stats(labels, maps)))
    finally:
        torch.set_num_threads(old)
    (e1, l1, c1, s1), (e2, l2, c2, s2) = results
    assert torch.equal(e1, e2) and torch.equal(l1, l2) and torch.equal(c1, c2)
    assert all(torch.equal(a, b) for a, b in zip(s1, s2))
    np.testing.assert_array_equal(l1.numpy(), cases.scipy_label(maps.numpy() >= np.float32(0.4), 8)[0])


def test_sauf_numbers_in_raster_order_here_and_fallback_agrees(monkeypatch):
    from miner.kernels import _cpu

    assert _cpu._sauf_is_raster(4) and _cpu._sauf_is_raster(8)
    monkeypatch.setattr(_cpu, "_SAUF_RASTER", {4: False, 8: False})  # as on an OpenCV that numbers otherwise
    rng = np.random.default_rng(9)
    mask = np.concatenate([rng.random((30, 21, 13)) < 0.5, cases.mixed_batch(rng, 21, 13)])
    for connectivity in (4, 8):
        labels, counts = label_components(torch.from_numpy(mask), connectivity=connectivity)
        ref, ref_counts = cases.scipy_label(mask, connectivity)
        np.testing.assert_array_equal(labels.numpy(), ref)
        np.testing.assert_array_equal(counts.numpy(), ref_counts)


def test_renumber_fallback_gives_raster_order():
    from miner.kernels import _cpu

    shuffled = np.array([[3, 0, 1], [3, 2, 0], [0, 0, 2]], np.int32)
    assert not _cpu._is_raster_ordered(shuffled)
    np.testing.assert_array_equal(
        _cpu._renumber_by_first_pixel(shuffled), [[1, 0, 2], [1, 3, 0], [0, 0, 3]]
    )


@pytest.mark.parametrize("connectivity", [4, 8])
def test_erase_equals_scipy(connectivity):
    rng = np.random.default_rng(10 + connectivity)
    maps = np.stack([cases.blobs(rng, 24, 20, sigma=s) for s in (0.7, 1.5, 3.0) for _ in range(20)])
    maps = np.concatenate([maps, rng.random((20, 24, 20)).astype(np.float32)])
    for threshold in (0.3, 0.5, 0.8):
        got = erase_components(torch.from_numpy(maps), threshold=threshold, connectivity=connectivity)
        np.testing.assert_array_equal(got.numpy(), cases.scipy_erase(maps, threshold, connectivity))


def test_erase_ties_pick_first_maximum_and_below_threshold_is_empty():
    maps = torch.zeros(3, 4, 5)
    maps[0, 0, 4] = maps[0, 3, 0] = 1.0  # tie: the first in raster order (row 0) wins
    maps[1] = 0.2  # maximum below the threshold: nothing to erase
    maps[2, 1:3, 1:4] = 0.9
    maps[2, 0, 0] = 0.6  # diagonal to the blob: joined under 8-connectivity only
    out = erase_components(maps, threshold=0.5)
    assert out[0].nonzero().tolist() == [[0, 4]]
    assert not out[1].any()
    assert out[2].sum() == 7 and out[2, 0, 0]
    out4 = erase_components(maps, threshold=0.5, connectivity=4)
    assert out4[2].sum() == 6 and not out4[2, 0, 0]


def test_erase_keeps_leading_dims_and_accepts_half():
    maps = torch.rand(2, 3, 8, 8)
    out = erase_components(maps.half())
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.bool
    ref = cases.scipy_erase(maps.half().float().reshape(6, 8, 8).numpy(), 0.5, 8)
    np.testing.assert_array_equal(out.reshape(6, 8, 8).numpy(), ref)


def _check_stats(labels: np.ndarray, values: np.ndarray, k: int, st: ComponentStats) -> None:
    bbox, area, total = cases.scipy_stats(labels, values, k)
    np.testing.assert_array_equal(st.bbox.numpy(), bbox)
    np.testing.assert_array_equal(st.area.numpy(), area)
    np.testing.assert_allclose(st.sum.numpy(), total, rtol=1e-6, atol=1e-6)
    mean = np.divide(total, area, out=np.zeros_like(total), where=area > 0)
    np.testing.assert_allclose(st.mean.numpy(), mean, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 1), (9, 14), (32, 32)])
def test_stats_equal_find_objects_and_sum_labels(shape):
    rng = np.random.default_rng(20)
    mask = np.concatenate([cases.mixed_batch(rng, *shape), rng.random((5, *shape)) < 0.4])
    labels, counts = label_components(torch.from_numpy(mask))
    values = rng.random(mask.shape).astype(np.float32)
    st = component_stats(labels, torch.from_numpy(values))
    k = int(counts.max())
    assert st.bbox.shape == (len(mask), k, 4) and st.bbox.dtype == torch.int32
    assert st.area.dtype == torch.int32 and st.sum.dtype == torch.float32 and st.mean.dtype == torch.float32
    np.testing.assert_array_equal(st.area.sum(1).numpy(), mask.reshape(len(mask), -1).sum(1))
    _check_stats(labels.numpy(), values, k, st)


def test_stats_num_labels_pads_and_truncates():
    labels = torch.tensor([[[1, 1, 0], [0, 2, 2], [3, 0, 2]]], dtype=torch.int32)
    values = torch.arange(9, dtype=torch.float32).reshape(1, 3, 3)
    st = component_stats(labels, values, num_labels=5)
    assert st.bbox[0].tolist() == [[0, 0, 2, 1], [1, 1, 3, 3], [0, 2, 1, 3], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert st.area[0].tolist() == [2, 3, 1, 0, 0]
    assert st.sum[0].tolist() == [1.0, 17.0, 6.0, 0.0, 0.0]
    assert st.mean[0].tolist() == pytest.approx([0.5, 17 / 3, 6.0, 0.0, 0.0])
    st2 = component_stats(labels, values, num_labels=2)
    assert st2.area[0].tolist() == [2, 3]
    empty = component_stats(torch.zeros(2, 3, 3, dtype=torch.int32), torch.ones(2, 3, 3))
    assert empty.bbox.shape == (2, 0, 4)


def test_stats_non_finite_value_stays_in_its_component():
    labels = torch.tensor([[[1, 1, 0, 2], [0, 0, 0, 2]], [[3, 0, 1, 1], [3, 0, 0, 0]]], dtype=torch.int32)
    values = torch.ones(2, 2, 4)
    values[0, 0, 0] = float("nan")
    values[1, 0, 0] = float("inf")
    st = component_stats(labels, values, num_labels=3)
    assert torch.isnan(st.sum[0, 0]) and st.sum[0, 1] == 2.0 and st.sum[0, 2] == 0.0
    assert st.sum[1, 0] == 2.0 and st.sum[1, 1] == 0.0 and torch.isinf(st.sum[1, 2])
    assert st.area.tolist() == [[2, 2, 0], [2, 0, 2]]


def test_bad_inputs_raise_usage_errors():
    with pytest.raises(UsageError, match="connectivity"):
        label_components(torch.zeros(1, 2, 2, dtype=torch.bool), connectivity=6)
    with pytest.raises(UsageError, match="floating"):
        erase_components(torch.zeros(1, 2, 2, dtype=torch.int64))
    with pytest.raises(UsageError, match="shape"):
        component_stats(torch.zeros(1, 2, 2, dtype=torch.int32), torch.zeros(1, 2, 3))
    with pytest.raises(UsageError, match=r"\[..., H, W\]"):
        label_components(torch.zeros(4, dtype=torch.bool))


def test_ops_are_registered_torch_ops_with_fake_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert hasattr(torch.ops.miner, "label_components")
    with FakeTensorMode():
        mask = torch.empty(3, 5, 7, dtype=torch.bool)
        labels, counts = torch.ops.miner.label_components(mask, 8)
        bbox, area, total, mean = torch.ops.miner.component_stats(labels, torch.empty(3, 5, 7), 4)
        erased = torch.ops.miner.erase_components(torch.empty(3, 5, 7), 0.5, 8)
    assert labels.shape == (3, 5, 7) and counts.shape == (3,) and bbox.shape == (3, 4, 4)
    assert area.shape == total.shape == mean.shape == (3, 4) and erased.dtype == torch.bool
    torch.library.opcheck(torch.ops.miner.label_components.default, (torch.rand(2, 4, 4) > 0.5, 8))
    torch.library.opcheck(torch.ops.miner.erase_components.default, (torch.rand(2, 4, 4), 0.5, 4))
    torch.library.opcheck(
        torch.ops.miner.component_stats.default,
        (torch.randint(0, 3, (2, 4, 4), dtype=torch.int32), torch.rand(2, 4, 4), 3),
    )


def test_import_and_first_call_stay_light():
    """`import miner.kernels` does not import triton; the first CPU call imports neither triton nor torch._dynamo."""
    import subprocess
    import sys

    code = (
        "import sys, torch, miner.kernels as k\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "k.erase_components(torch.rand(2, 4, 4))\n"
        "assert 'triton' not in sys.modules and 'torch._dynamo' not in sys.modules, 'heavy import on first call'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
