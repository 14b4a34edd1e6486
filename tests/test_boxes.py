"""Boxes from fused maps: hand-made cases, a literal per-map transcription, selection, the Parquet columns."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from torch.nn import functional as F

from miner.boxes import (
    WANG_THRESHOLDS,
    box_columns,
    boxes_from_maps,
    resolve_thresholds,
    select_classes,
    work_size,
)
from miner.config import BoxConfig
from miner.errors import UsageError


def test_plateau_gives_one_exact_box_in_original_pixels():
    fused = torch.zeros(1, 1, 8, 8)
    fused[0, 0, 2:5, 3:7] = 0.8  # rows 2..4, cols 3..6
    out = boxes_from_maps(fused, original_sizes=[(80, 160)], config=BoxConfig(upsample=1))
    assert len(out[0]) == 1  # the three levels find the same box: duplicates removed
    box = out[0][0]
    # working pixels x0=3, y0=2, x1=7, y1=5 (exclusive); scale x 160/8 = 20, y 80/8 = 10
    assert (box["x"], box["y"], box["w"], box["h"]) == (60.0, 20.0, 80.0, 30.0)
    assert box["rank"] == 1 and box["class_index"] == 0
    assert box["score"] == pytest.approx(0.8) and box["threshold"] == pytest.approx(0.3)
    assert all(isinstance(box[k], np.float32) for k in ("x", "y", "w", "h", "score", "threshold"))


def test_upsampling_keeps_cell_centres():
    """Bilinear with align_corners=False: a single hot cell gives a box centred on that cell's centre."""
    fused = torch.zeros(1, 1, 4, 4)
    fused[0, 0, 1, 2] = 1.0
    (box,) = boxes_from_maps(fused, original_sizes=[(400, 400)], config=BoxConfig(upsample=4, thresholds=(0.5,)))[0]
    assert box["x"] + box["w"] / 2 == pytest.approx(250.0)  # cell 2 spans 200..300
    assert box["y"] + box["h"] / 2 == pytest.approx(150.0)  # cell 1 spans 100..200


def test_two_regions_ranked_by_mean_heat():
    fused = torch.zeros(1, 1, 10, 10)
    fused[0, 0, 1:3, 1:3] = 0.5
    fused[0, 0, 6:9, 5:9] = 1.0
    out = boxes_from_maps(fused, original_sizes=[(10, 10)],
                          config=BoxConfig(upsample=1, thresholds=(0.3,)))[0]
    assert [(b["rank"], b["x"], b["y"], b["w"], b["h"]) for b in out] == [(1, 5, 6, 4, 3), (2, 1, 1, 2, 2)]
    assert out[0]["score"] == pytest.approx(1.0) and out[1]["score"] == pytest.approx(0.5)


def _literal(fused: torch.Tensor, sizes, chosen, cfg: BoxConfig):
    """Per map, with scipy: levels -> components -> boxes -> mean heat in the box -> greedy de-duplication."""
    levels = resolve_thresholds(cfg.thresholds)
    b, c, h, w = fused.shape
    hw, ww = work_size((h, w), cfg)
    structure = np.ones((3, 3), bool) if cfg.connectivity == 8 else ndi.generate_binary_structure(2, 1)
    out = [[] for _ in range(b)]
    for bi in range(b):
        for ci in range(c):
            if not chosen[bi, ci]:
                continue
            m = F.interpolate(fused[bi, ci][None, None].float(), size=(hw, ww), mode="bilinear",
                              align_corners=False)[0, 0].double().numpy()
            span = m.max() - m.min()
            norm = (m - m.min()) / span if span > 0 else np.zeros_like(m)
            cands = []
            for tau in levels:
                lab, _ = ndi.label(norm >= np.float32(tau), structure=structure)
                for k, sl in enumerate(ndi.find_objects(lab)):
                    if (lab == k + 1).sum() < max(1.0, cfg.min_area * (hw / h) * (ww / w)):
                        continue
                    y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
                    cands.append((m[y0:y1, x0:x1].mean(), (x0, y0, x1, y1), tau))
            cands.sort(key=lambda t: -t[0])  # stable: level order, then label order
            kept = []
            for score, box, tau in cands:
                if all(_iou(box, k[1]) <= cfg.dedup_iou for k in kept):
                    kept.append((score, box, tau))
                if len(kept) == cfg.max_boxes:
                    break
            H, W = sizes[bi]
            for r, (score, (x0, y0, x1, y1), tau) in enumerate(kept, 1):
                out[bi].append((ci, r, x0 * W / ww, y0 * H / hw, (x1 - x0) * W / ww, (y1 - y0) * H / hw, score, tau))
    return out


def _iou(a, b):
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.parametrize("cfg", [
    BoxConfig(),
    BoxConfig(thresholds="wang", connectivity=4, dedup_iou=0.5),
    BoxConfig(upsample=2, min_area=0.5, max_boxes=5, thresholds=(0.2, 0.4, 0.6, 0.8)),
])
def test_equals_literal_transcription_on_random_maps(cfg):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(3, 5, 12, 12, generator=g)
    fused = F.avg_pool2d(noise, 3, stride=1, padding=1)  # smooth maps with several local regions
    fused[1, 2] = 0.25  # a constant map: no signal, no box
    chosen = torch.rand(3, 5, generator=g) > 0.3
    sizes = [(1024, 1024), (700, 900), (512, 640)]
    got = boxes_from_maps(fused, original_sizes=sizes, classes=chosen.numpy(), config=cfg)
    ref = _literal(fused, sizes, chosen.numpy(), cfg)
    total = 0
    for bi in range(3):
        assert [(d["class_index"], d["rank"]) for d in got[bi]] == [(r[0], r[1]) for r in ref[bi]]
        for d, r in zip(got[bi], ref[bi]):
            np.testing.assert_allclose([d["x"], d["y"], d["w"], d["h"]], r[2:6], rtol=1e-6)
            assert d["score"] == pytest.approx(r[6], abs=1e-5) and d["threshold"] == pytest.approx(r[7])
            total += 1
    assert total > 10
    assert not any(d["class_index"] == 2 for d in got[1])
    assert any(len([d for d in got[b] if d["class_index"] == c]) > 1 for b in range(3) for c in range(5))


def test_no_selection_or_no_signal_gives_no_boxes():
    fused = torch.rand(2, 3, 6, 6)
    assert boxes_from_maps(fused, original_sizes=[(6, 6)] * 2, classes=np.zeros((2, 3), bool)) == [[], []]
    assert boxes_from_maps(torch.zeros(2, 3, 6, 6), original_sizes=[(6, 6)] * 2) == [[], []]


def test_working_resolution():
    cfg = BoxConfig()
    assert work_size((16, 16), cfg) == (64, 64)
    assert work_size((32, 32), cfg) == (128, 128)
    assert work_size((128, 128), cfg) == (256, 256)
    assert work_size((512, 512), cfg) == (512, 512)  # full-resolution maps stay as they are


def test_thresholds_and_selection():
    assert resolve_thresholds("wang") == WANG_THRESHOLDS == (60 / 255, 180 / 255)
    assert resolve_thresholds("0.2,0.6") == (0.2, 0.6)
    with pytest.raises(UsageError):
        resolve_thresholds((0.0, 0.5))
    probs = np.array([[0.2, 0.7], [0.5, 0.1]])
    labels = np.array([[1, 0], [0, 0]], np.float32)
    assert select_classes("predicted", probs=probs).tolist() == [[False, True], [True, False]]
    assert select_classes("predicted", probs=probs, prob_threshold=0.6).tolist() == [[False, True], [False, False]]
    assert select_classes("labels", labels=labels).tolist() == [[True, False], [False, False]]
    assert select_classes("all", probs=probs).all()
    with pytest.raises(UsageError):
        select_classes("some", probs=probs)
    # the same modes straight through boxes_from_maps
    fused = torch.zeros(2, 2, 4, 4)
    fused[:, :, 1, 1] = 1.0
    sizes = [(4, 4), (4, 4)]

    def pairs(rows):
        return sorted({(b, d["class_index"]) for b, r in enumerate(rows) for d in r})

    assert pairs(boxes_from_maps(fused, original_sizes=sizes, classes="predicted", probs=torch.tensor(probs))) == [
        (0, 1), (1, 0)]
    assert pairs(boxes_from_maps(fused, original_sizes=sizes, classes="labels", labels=labels)) == [(0, 0)]
    assert len(pairs(boxes_from_maps(fused, original_sizes=sizes, classes="all"))) == 4


def test_box_columns_follow_the_parquet_contract():
    fused = torch.zeros(2, 2, 8, 8)
    fused[0, 1, 2:4, 2:4] = 1
    fused[1, 0, 5:7, 1:3] = 1
    per_image = boxes_from_maps(fused, original_sizes=[(8, 8), (16, 16)], config=BoxConfig(upsample=1))
    cols = box_columns(per_image, image_ids=["a.png", "b.png"], classes=("Mass", "Nodule"),
                       probs=np.array([[0.1, 0.9], [0.8, 0.2]]))
    assert list(cols) == ["image_id", "finding", "class_index", "rank", "x", "y", "w", "h", "score", "prob",
                          "threshold"]
    assert cols["image_id"].tolist() == ["a.png", "b.png"] and cols["finding"].tolist() == ["Nodule", "Mass"]
    assert cols["class_index"].dtype == np.int16 and cols["rank"].dtype == np.int8
    assert cols["x"].dtype == np.float32 and cols["prob"].tolist() == pytest.approx([0.9, 0.8])
    assert cols["x"].tolist() == [2.0, 2.0] and cols["y"].tolist() == [2.0, 10.0] and cols["w"].tolist() == [2.0, 4.0]
