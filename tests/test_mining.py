"""Attention mining: erasure order, Eq. 8 against a literal transcription, the linear-head shortcut."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from miner.cam import ClassMapper, inference_state
from miner.errors import UsageError
from miner.mining import attention_mining, normalize_kept
from tests.cam.tiny import TinyClassifier

EIGHT = np.ones((3, 3), bool)
FOUR = ndi.generate_binary_structure(2, 1)


def _blob(h, w, cy, cx, peak, sigma=1.2):
    y, x = np.mgrid[0:h, 0:w]
    return peak * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def test_two_blobs_erased_in_order_of_their_maxima():
    h = w = 16
    raw = _blob(h, w, 4, 4, 1.0) + _blob(h, w, 11, 11, 0.7) - 0.2  # a raw CAM: negative background
    maps = torch.tensor(raw, dtype=torch.float32)[None, None]
    res = attention_mining(maps, steps=3)
    norm1 = (raw - raw.min()) / (raw.max() - raw.min())
    lab, _ = ndi.label(norm1 >= 0.5, structure=EIGHT)
    big = lab == lab[4, 4]
    assert big.sum() > 1 and not big[11, 11]
    m1 = res.masks[0, 0, 0].numpy()
    np.testing.assert_array_equal(~m1, big)  # step 1 erased exactly the component of the global maximum
    m2 = res.masks[1, 0, 0].numpy()
    erased2 = m1 & ~m2
    assert erased2[11, 11] and not erased2[4, 4]  # step 2: the other blob
    kept_vals = np.where(m1, raw, np.nan)
    norm2 = (kept_vals - np.nanmin(kept_vals)) / (np.nanmax(kept_vals) - np.nanmin(kept_vals))
    lab2, _ = ndi.label(np.nan_to_num(norm2, nan=0) >= 0.5, structure=EIGHT)
    np.testing.assert_array_equal(erased2, lab2 == lab2[11, 11])
    # the fused map keeps both blobs: each erased position is filled from the step that erased it
    fused = res.fused[0, 0].numpy()
    assert fused[4, 4] == pytest.approx(1.0) and fused[11, 11] > 0.9


def _literal(raw: np.ndarray, steps: int, threshold: float, structure: np.ndarray, mode: str):
    """Cai et al. Eq. 7-8 written out per map with numpy/scipy: normalise over kept positions (erased = 0),
    erase the thresholded component at the global maximum, fuse with the double sum of Eq. 8."""
    hs, ms = [], []
    kept = np.ones(raw.shape, bool)
    for _t in range(steps):
        ht = np.zeros(raw.shape)
        vals = raw * kept
        if mode == "relu-max":
            vals = np.maximum(vals, 0)
            lo, hi = 0.0, vals.max()
        else:
            lo, hi = vals[kept].min() if kept.any() else 0.0, vals[kept].max() if kept.any() else 0.0
        if hi > lo:
            ht[kept] = (vals[kept] - lo) / (hi - lo)
        if ht.max() >= threshold:
            lab, _ = ndi.label(ht >= threshold, structure=structure)
            peak = np.unravel_index(np.argmax(ht), ht.shape)
            kept = kept & ~(lab == lab[peak])
        hs.append(ht)
        ms.append(kept.copy())
    fused = np.zeros(raw.shape)
    for t in range(steps):
        fill = sum((hs[s] * (1 - ms[s]) for s in range(t)), np.zeros(raw.shape))
        fused += hs[t] + fill
    return fused / steps, np.stack(ms), np.stack(hs)


@pytest.mark.parametrize("mode", ["minmax", "relu-max"])
@pytest.mark.parametrize("connectivity", [8, 4])
def test_fusion_equals_literal_eq8_on_random_maps(mode, connectivity):
    g = torch.Generator().manual_seed(0)
    # smooth random maps (several local blobs), raw CAM-like with negative values
    noise = torch.randn(3, 4, 12, 12, generator=g)
    maps = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1) * 3 - 0.3
    res = attention_mining(maps, steps=4, threshold=0.5, connectivity=connectivity, normalize=mode)
    structure = EIGHT if connectivity == 8 else FOUR
    for b in range(3):
        for c in range(4):
            fused, ms, hs = _literal(maps[b, c].double().numpy(), 4, 0.5, structure, mode)
            np.testing.assert_array_equal(res.masks[:, b, c].numpy(), ms)
            np.testing.assert_allclose(res.step_maps[:, b, c].numpy(), hs, atol=1e-6)
            np.testing.assert_allclose(res.fused[b, c].numpy(), fused, atol=1e-6)
    # more than one component got erased somewhere (the test exercises the fill-in)
    assert int((~res.masks[-1]).flatten(2).any(-1).sum()) > 0
    assert ((res.masks[0] != res.masks[1]).flatten(2).any(-1)).any()


def test_erased_positions_are_exactly_zero_in_step_maps():
    maps = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 1.0
    res = attention_mining(maps, steps=3)
    for t in range(1, 3):
        assert bool((res.step_maps[t][~res.masks[t - 1]] == 0).all())
    assert float(res.fused.min()) >= 0 and float(res.fused.max()) <= 1


@pytest.mark.parametrize("method", ["cam", "gradcam", "hirescam", "layercam"])
def test_linear_head_shortcut_equals_recomputation(method):
    """H_t = H_1 * M_{t-1} equals the method's map recomputed on the erased features X * M (Eq. 7)."""
    model = TinyClassifier(head="linear", seed=12)
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    mapper = ClassMapper(model, method=method)
    assert mapper.shortcut_exact
    with inference_state(model):
        x = mapper.features(images)
        _, maps = mapper(images)
        shortcut = attention_mining(maps, steps=3)
        recomputed = attention_mining(maps, steps=3, recompute=lambda m: mapper.erased_maps(x, m))
        # the head's own erasure (forward_head with masks) sees exactly the masked CAM: Eq. 1-2 and 7 agree
        if method == "cam":
            logits = model.forward_head(x, masks=shortcut.masks[0].float())
            torch.testing.assert_close(logits, (maps * shortcut.masks[0]).mean(dim=(2, 3)) + model.head_bias,
                                       atol=1e-5, rtol=1e-5)
    assert int((~shortcut.masks[-1]).sum()) > 0
    torch.testing.assert_close(recomputed.step_maps, shortcut.step_maps, atol=1e-6, rtol=1e-5)
    assert torch.equal(recomputed.masks, shortcut.masks)
    torch.testing.assert_close(recomputed.fused, shortcut.fused, atol=1e-6, rtol=1e-5)


def test_nonlinear_head_needs_recomputation():
    """With the mlp head the maps of erased features are not the masked first map: the recompute path matters."""
    model = TinyClassifier(head="mlp", seed=12)
    images = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    mapper = ClassMapper(model, method="gradcam")
    assert not mapper.shortcut_exact
    with inference_state(model):
        x = mapper.features(images)
        _, maps = mapper(images)
        res = attention_mining(maps, steps=2, recompute=lambda m: mapper.erased_maps(x, m))
        masked = normalize_kept(maps * res.masks[0], res.masks[0])
    assert not torch.allclose(res.step_maps[1], masked, atol=1e-4)


@pytest.mark.parametrize("value", [0.0, 5.0, -3.0])
def test_constant_maps_give_no_nan_and_erase_nothing(value):
    maps = torch.full((2, 3, 8, 8), value)
    res = attention_mining(maps, steps=3)
    assert torch.isfinite(res.fused).all() and float(res.fused.abs().max()) == 0
    assert bool(res.masks.all())


def test_one_step_is_the_normalised_map():
    maps = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(3))
    res = attention_mining(maps, steps=1)
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(res.fused, (maps - lo) / (hi - lo))


def test_connectivity_four_splits_diagonal_neighbours():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 1, 1] = 1.0
    maps[0, 0, 2, 2] = 0.9
    eight = attention_mining(maps, steps=1, connectivity=8).masks[0, 0, 0]
    four = attention_mining(maps, steps=1, connectivity=4).masks[0, 0, 0]
    assert not eight[1, 1] and not eight[2, 2]
    assert not four[1, 1] and four[2, 2]


def test_bad_arguments():
    with pytest.raises(UsageError, match="steps"):
        attention_mining(torch.zeros(1, 1, 4, 4), steps=0)
    with pytest.raises(UsageError, match="connectivity"):
        attention_mining(torch.zeros(1, 1, 4, 4), connectivity=6)
    with pytest.raises(UsageError, match="Tensor\\[B, C, h, w\\]"):
        attention_mining(torch.zeros(4, 4))


def test_post_processing_threads_are_restored_and_recompute_keeps_the_callers():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []

        def recompute(masks):
            seen.append(torch.get_num_threads())
            return torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))

        attention_mining(torch.rand(1, 2, 6, 6), steps=3, recompute=recompute)
        assert seen == [2, 2]  # the model pass runs with the caller's threads, the small ops with one
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
