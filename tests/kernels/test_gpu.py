"""The same cases on CUDA tensors through the public API (Triton kernels), compared with the CPU path and scipy."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from miner.kernels import component_stats, erase_components, label_components
from tests.kernels import cases

pytestmark = pytest.mark.gpu

LABEL = cases.label_batches()
ERASE = cases.erase_batches()


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("case", LABEL, ids=[c[0] for c in LABEL])
def test_label_on_cuda_equals_scipy(case, connectivity):
    _, mask = case
    labels, counts = label_components(torch.from_numpy(mask).cuda(), connectivity=connectivity)
    assert labels.is_cuda and counts.is_cuda
    ref, ref_counts = cases.scipy_label(mask, connectivity)
    np.testing.assert_array_equal(labels.cpu().numpy(), ref)
    np.testing.assert_array_equal(counts.cpu().numpy(), ref_counts)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("case", ERASE, ids=[c[0] for c in ERASE])
def test_erase_on_cuda_equals_scipy(case, connectivity):
    _, maps = case
    for threshold in (0.5, 0.25):
        out = erase_components(torch.from_numpy(maps).cuda(), threshold=threshold, connectivity=connectivity)
        assert out.is_cuda and out.dtype == torch.bool
        np.testing.assert_array_equal(out.cpu().numpy(), cases.scipy_erase(maps, threshold, connectivity))


@pytest.mark.parametrize("case", LABEL, ids=[c[0] for c in LABEL])
def test_stats_on_cuda_equals_cpu(case):
    _, mask = case
    labels, counts = label_components(torch.from_numpy(mask))
    values = torch.rand(mask.shape, generator=torch.Generator().manual_seed(0))
    k = int(counts.max()) + 1
    cpu = component_stats(labels, values, num_labels=k)
    gpu = component_stats(labels.cuda(), values.cuda(), num_labels=k)
    assert torch.equal(gpu.bbox.cpu(), cpu.bbox) and torch.equal(gpu.area.cpu(), cpu.area)
    torch.testing.assert_close(gpu.sum.cpu(), cpu.sum, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gpu.mean.cpu(), cpu.mean, rtol=1e-5, atol=1e-5)


def test_large_maps_on_cuda():
    """Maps up to 1024x1024: random densities near percolation, a spiral and smooth blobs, both connectivities."""
    rng = np.random.default_rng(7)
    mask = np.stack([cases.spiral(1024, 1024), rng.random((1024, 1024)) < 0.59,
                     cases.blobs(rng, 1024, 1024, sigma=8) > 0.5, cases.checkerboard(1024, 1024)])
    for connectivity in (4, 8):
        labels, counts = label_components(torch.from_numpy(mask).cuda(), connectivity=connectivity)
        ref, ref_counts = cases.scipy_label(mask, connectivity)
        np.testing.assert_array_equal(counts.cpu().numpy(), ref_counts)
        np.testing.assert_array_equal(labels.cpu().numpy(), ref)
        st = component_stats(labels, torch.from_numpy(mask.astype(np.float32)).cuda(), num_labels=int(ref_counts.max()))
        ref_bbox, ref_area, _ = cases.scipy_stats(ref, mask.astype(np.float32), int(ref_counts.max()))
        np.testing.assert_array_equal(st.bbox.cpu().numpy(), ref_bbox)
        np.testing.assert_array_equal(st.area.cpu().numpy(), ref_area)


def test_cuda_results_are_deterministic_across_runs():
    rng = np.random.default_rng(8)
    mask = torch.from_numpy(rng.random((64, 256, 256)) < 0.55).cuda()
    first, _ = label_components(mask)
    for _ in range(5):
        again, _ = label_components(mask)
        assert torch.equal(first, again)
