"""The Triton kernels under the interpreter (TRITON_INTERPRET semantics, CPU tensors) against the CPU path and scipy.

The interpreter runs programs one after another, so these tests check the algorithm, not the absence of races (that
is by construction, see miner.kernels._triton_kernels). The kernels are loaded through
``triton_ccl.interpreted_kernels()``, a copy of the kernel module decorated with the interpreter on, so this works in a
process whose triton was imported for the compiler; ``test_env_var_route_matches`` checks the same kernels through
the ordinary ``TRITON_INTERPRET=1`` route in a fresh process.
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from miner.kernels import (
    _cpu,  # noqa: E402
    triton_ccl,  # noqa: E402
)
from tests.kernels import cases  # noqa: E402

LABEL = cases.label_batches()
ERASE = cases.erase_batches()


@pytest.fixture(scope="module")
def kernels():
    return triton_ccl.interpreted_kernels()


def _check_bounds(mask: np.ndarray, counts: np.ndarray, iters: np.ndarray) -> None:
    """The documented worst-case bounds: hook passes <= F - C + 1, jump rounds <= hooks * (ceil(log2 F) + 1)."""
    for m, c, (hooks, jumps) in zip(mask, counts, iters):
        f = int(m.sum())
        assert 1 <= hooks <= f - c + 1 or (f == 0 and hooks == 1)
        assert jumps <= hooks * (math.ceil(math.log2(max(f, 1))) + 1)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("case", LABEL, ids=[c[0] for c in LABEL])
def test_label_kernel_equals_cpu_and_scipy(kernels, case, connectivity):
    _, mask = case
    labels, counts, iters = triton_ccl.label_triton(
        torch.from_numpy(mask), connectivity, kernels=kernels, iterations=True
    )
    ref, ref_counts = cases.scipy_label(mask, connectivity)
    cpu, cpu_counts = _cpu.label_cpu(mask, connectivity)
    np.testing.assert_array_equal(labels.numpy(), ref)
    np.testing.assert_array_equal(counts.numpy(), ref_counts)
    np.testing.assert_array_equal(labels.numpy(), cpu)
    np.testing.assert_array_equal(counts.numpy(), cpu_counts)
    _check_bounds(mask, ref_counts, iters.numpy())


def test_spiral_needs_three_hook_passes(kernels):
    # index order along the spiral has one local minimum per ring: pass 1 builds one tree per ring, pass 2 chains the
    # rings, pass 3 finds nothing left to hook
    for shape in [(64, 64), (45, 37)]:
        mask = cases.spiral(*shape)[None]
        labels, counts, iters = triton_ccl.label_triton(torch.from_numpy(mask), 4, kernels=kernels, iterations=True)
        assert counts.tolist() == [1] and iters[0, 0].item() == 3
        np.testing.assert_array_equal(labels[0].numpy(), mask[0].astype(np.int32))


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("case", ERASE, ids=[c[0] for c in ERASE])
def test_erase_kernel_equals_cpu_and_scipy(kernels, case, connectivity):
    _, maps = case
    for threshold in (0.5, 0.25):
        out = triton_ccl.erase_triton(torch.from_numpy(maps), threshold, connectivity, kernels=kernels)
        assert out.dtype == torch.bool
        np.testing.assert_array_equal(out.numpy(), cases.scipy_erase(maps, threshold, connectivity))
        np.testing.assert_array_equal(out.numpy(), _cpu.erase_cpu(maps, threshold, connectivity))


def test_erase_kernel_nan_map_is_empty_like_cpu(kernels):
    maps = np.full((2, 4, 4), 0.9, np.float32)
    maps[0, 2, 2] = np.nan
    out = triton_ccl.erase_triton(torch.from_numpy(maps), 0.5, 8, kernels=kernels)
    np.testing.assert_array_equal(out.numpy(), _cpu.erase_cpu(maps, 0.5, 8))
    assert not out[0].any() and out[1].all()


@pytest.mark.parametrize("case", LABEL[3:], ids=[c[0] for c in LABEL[3:]])
def test_stats_kernel_equals_cpu_and_scipy(kernels, case):
    _, mask = case
    rng = np.random.default_rng(3)
    labels, counts = _cpu.label_cpu(mask, 8)
    values = rng.random(mask.shape).astype(np.float32)
    k = int(counts.max()) + 2  # two absent labels at the end
    bbox, area, total, mean = triton_ccl.stats_triton(torch.from_numpy(labels), torch.from_numpy(values), k,
                                                      kernels=kernels)
    ref_bbox, ref_area, ref_total = cases.scipy_stats(labels, values, k)
    cpu = _cpu.stats_cpu(labels, values, k)
    np.testing.assert_array_equal(bbox.numpy(), ref_bbox)
    np.testing.assert_array_equal(area.numpy(), ref_area)
    np.testing.assert_array_equal(bbox.numpy(), cpu[0])
    np.testing.assert_array_equal(area.numpy(), cpu[1])
    np.testing.assert_allclose(total.numpy(), ref_total, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean.numpy(), cpu[3], rtol=1e-5, atol=1e-6)


def test_stats_kernel_truncates_labels_above_k(kernels):
    labels = torch.tensor([[[1, 1, 0], [0, 2, 2], [3, 0, 2]]], dtype=torch.int32)
    values = torch.arange(9, dtype=torch.float32).reshape(1, 3, 3)
    bbox, area, total, mean = triton_ccl.stats_triton(labels, values, 2, kernels=kernels)
    assert bbox[0].tolist() == [[0, 0, 2, 1], [1, 1, 3, 3]]
    assert area[0].tolist() == [2, 3] and total[0].tolist() == [1.0, 17.0]
    assert mean[0].tolist() == pytest.approx([0.5, 17 / 3])


_ENV_ROUTE = r"""
import numpy as np, torch
from miner.kernels import triton_ccl
from tests.kernels import cases
k = triton_ccl.compiled_kernels()
assert type(k.label_kernel).__name__ == "InterpretedFunction", type(k.label_kernel)
_, mask = cases.label_batches()[4]
labels, counts = triton_ccl.label_triton(torch.from_numpy(mask), 8, kernels=k)
np.save(__import__("sys").argv[1], labels.numpy())
"""


def test_env_var_route_matches(kernels, tmp_path):
    """The ordinary TRITON_INTERPRET=1 route (set before triton is imported) gives the same labels."""
    import os

    out = tmp_path / "labels.npy"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", _ENV_ROUTE, str(out)], check=True, env=env, cwd=str(_repo_root()))
    _, mask = LABEL[4]
    ours, _ = triton_ccl.label_triton(torch.from_numpy(mask), 8, kernels=kernels)
    np.testing.assert_array_equal(np.load(out), ours.numpy())
    np.testing.assert_array_equal(np.load(out), cases.scipy_label(mask, 8)[0])


def _repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[2]
