"""Box regressors (miner.box_regression): candidates read by hand from a cone-shaped map, the ridge fit against an
independent formula, a fitted regressor that turns each map's box into its lesion's, one box per lesion, and
malformed records."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from miner.box_regression import (
    FEATURE_LEVELS,
    FEATURE_NAMES,
    FEATURES_ID,
    Regressor,
    _ridge,
    candidates,
    decode,
    encode,
    fit_regressor,
    read_regressors,
    regressed_boxes,
)
from miner.errors import ModelError, UsageError
from miner.mining import attention_mining
from tests.test_calibrate import boxed_set, cone

NF = len(FEATURE_NAMES)


def feature(cand, name: str, pair: int = 0, step: int = 0) -> float:
    return float(cand.features[pair, step, FEATURE_NAMES.index(name)])


def test_candidate_features_of_a_cone_by_hand():
    """A cone of radius 8 cells at (row 6, col 9) on a 16 x 16 map (work = map size): the region >= L x peak is the
    square of half-width floor((1 - L) x 8) cells: 0 at 0.9 (the peak's cell), 1 at 0.8 (3 x 3 cells), 3 at 0.6
    (7 x 7), 4 at 0.4 (9 x 9). Reference box (level 0.8): x 8..11, y 5..8 (exclusive ends); centre (9.5, 6.5);
    the peak's cell centre is the same point."""
    maps = cone(6, 9).view(1, 1, 16, 16)
    mined = attention_mining(maps, steps=1, threshold=0.8)
    image = torch.zeros(1, 1, 16, 16)
    image[..., 5:8, 8:11] = 1.0  # a bright 3 x 3 square under the reference box
    cand = candidates(mined.step_maps, mined.masks, torch.tensor([[0, 0]]), (16, 16), image)
    assert cand.features.shape == (1, 1, NF) and len(FEATURE_NAMES) == 7 * len(FEATURE_LEVELS) + 11
    assert cand.ref[0, 0].tolist() == [8.0, 5.0, 11.0, 8.0] and bool(cand.live[0, 0])
    assert feature(cand, "log_w@0.4") == pytest.approx(math.log(9 / 3))
    assert feature(cand, "log_h@0.6") == pytest.approx(math.log(7 / 3))
    assert feature(cand, "log_w@0.9") == pytest.approx(math.log(1 / 3)) and feature(cand, "dx@0.4") == pytest.approx(0)
    assert feature(cand, "log_w_ref") == pytest.approx(math.log(3 / 16))
    assert feature(cand, "cx_ref") == pytest.approx(9.5 / 16 - 0.5)
    assert feature(cand, "cy_ref") == pytest.approx(6.5 / 16 - 0.5)
    assert feature(cand, "peak_dx") == pytest.approx(0.0) and feature(cand, "peak_dy") == pytest.approx(0.0)
    assert feature(cand, "step1") == 1.0 and feature(cand, "step2") == 0.0 and feature(cand, "peak_h1") == 1.0
    assert feature(cand, "touches_erased") == 0.0
    # mean H_1 in the 3 x 3 region: the peak 1 and 8 cells at Chebyshev distance 1 (1 - 1/8)
    assert feature(cand, "heat@0.8") == pytest.approx((1 + 8 * 7 / 8) / 9)
    # the image standardised (p = 9/256 of it is 1): (1 - p) / sd inside the square, -p / sd outside; the ring
    # around the 3 x 3 box (grown by 1.5 px a side: pixels 6..12 x 3..9) is all outside, so the contrast is 1 / sd
    p = 9 / 256
    sd = math.sqrt(p * (1 - p) * 256 / 255)  # torch.std: the unbiased estimate
    assert feature(cand, "inside@0.8") == pytest.approx((1 - p) / sd)
    assert feature(cand, "contrast@0.8") == pytest.approx(1 / sd)
    # the 9 x 9 box at 0.4 holds the square and 72 dark pixels; its 15 x 15 ring (2..17, clipped: 2..16) is dark
    assert feature(cand, "inside@0.4") == pytest.approx((9 * (1 - p) - 72 * p) / 81 / sd)


def test_a_later_step_next_to_an_erased_core_is_marked():
    """Step 2 of a single cone: its peak sits on the ring around step 1's erased core."""
    mined = attention_mining(cone(8, 8).view(1, 1, 16, 16), steps=2, threshold=0.8)
    cand = candidates(mined.step_maps, mined.masks, torch.tensor([[0, 0]]), (16, 16), torch.rand(1, 1, 16, 16))
    assert feature(cand, "touches_erased", step=1) == 1.0 and feature(cand, "step2", step=1) == 1.0
    assert feature(cand, "peak_h1", step=1) == pytest.approx(6 / 8)  # step 1 erased the 3 x 3 cells >= 0.8


def test_decode_inverts_encode():
    ref = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 4.0, 2.0]], dtype=torch.float64)
    boxes = torch.tensor([[12.0, 18.0, 40.0, 50.0], [1.0, 1.0, 2.0, 9.0]], dtype=torch.float64)
    assert torch.allclose(decode(encode(boxes, ref), ref), boxes)
    assert encode(ref, ref).abs().max() == 0


def test_ridge_matches_the_augmented_least_squares_formula():
    """min |Zw + b - y|^2 + p |w|^2 equals ordinary least squares on Z stacked over sqrt(p) I (intercept free)."""
    rng = np.random.default_rng(0)
    z, y, p = rng.normal(size=(40, 5)), rng.normal(size=(40, 2)), 3.0
    got = _ridge(torch.from_numpy(z), torch.from_numpy(y), p).numpy()
    a = np.vstack([np.c_[z, np.ones(40)], np.c_[math.sqrt(p) * np.eye(5), np.zeros(5)]])
    want = np.linalg.lstsq(a, np.vstack([y, np.zeros((5, 2))]), rcond=None)[0]
    assert np.allclose(got, want, atol=1e-10)


def cone_archive(shift_cells: float = 1.0, scale: float = 2.0):
    """Six images whose Mass lesions are the cone's level-0.8 box (3 x 3 cells = 12 px) scaled x `scale` and moved
    `shift_cells` right (a map that sits off, and is tighter than, its lesion); Nodule lesions as in
    tests/test_calibrate.py."""
    side = 12.0 * scale

    def mass(cy: int, cx: int) -> tuple[float, float, float, float]:
        mx, my = (cx + 0.5 + shift_cells) * 4.0, (cy + 0.5) * 4.0  # centre of the cone's cell, in pixels
        return mx - side / 2, my - side / 2, side, side

    return boxed_set(seed=1, mass=mass)


def test_a_fitted_regressor_turns_each_map_box_into_its_lesion():
    from miner.calibrate import calibrate_levels, calibrate_regressors, mine_set
    from miner.metrics.hits import found_share, group_boxes
    from miner.pipeline import Pipeline

    data, backend = cone_archive()
    calibration = calibrate_levels(backend, data, levels=(0.8,), iou=0.3, min_boxes=1, shapes=False)
    fit = calibrate_regressors(backend, data, calibration, min_boxes=1, refine=False)  # blank images: no refinement
    assert set(fit.regressors) == {"Mass", "Nodule"} and fit.candidates == {"Mass": 6, "Nodule": 6}
    # by hand: the 12-px box at 0.8 inside the 24-px lesion 4 px to its right: IoU 144 / 576 = 0.25
    assert fit.before["Mass"] == {"0.3": 0.0, "0.5": 0.0} and fit.after["Mass"] == {"0.3": 1.0, "0.5": 1.0}
    pipeline = Pipeline(backend, boxes={"regressors": fit.regressors, "finding_levels": calibration.levels})
    rows = mine_set(pipeline, data)
    assert {r[2] for r in rows} == {1}  # T = 1: one box per pair, rank 1
    pred = group_boxes((r[0], r[1], r[2], r[4]) for r in rows)
    for key, boxes in pred.items():  # the lesion itself, to rounding (every delta is a constant: the intercept)
        assert np.allclose(boxes[0][1], data.gt[key][0], atol=1e-3), key
    assert found_share(pred, data.gt, 0.9) == {"Mass": 1.0, "Nodule": 1.0}
    # the score is the expected IoU: 1 for a regression that is exact on every candidate
    assert all(r[3] == pytest.approx(1.0, abs=1e-4) for r in rows)


def constant_regressor(quality_by_step=(0.0, 0.0, 0.0)) -> Regressor:
    """Boxes = the reference boxes; quality = the given value per step (weights on the step one-hots, whose
    standardised value is the one-hot itself with mean 0 and scale 1)."""
    box = torch.zeros(NF + 1, 4, dtype=torch.float64)
    quality = torch.zeros(NF + 1, dtype=torch.float64)
    for t, q in enumerate(quality_by_step):
        quality[FEATURE_NAMES.index(("step1", "step2", "step3+")[t])] = q
    return Regressor(torch.zeros(NF, dtype=torch.float64), torch.ones(NF, dtype=torch.float64), box, quality)


def test_one_box_per_lesion_ranked_by_quality():
    """One cone: steps 2 and 3 find its shoulders, whose boxes overlap or hold step 1's -- one box is left. Two
    cones far apart: two boxes. The better-quality step ranks first whatever its step."""
    one = cone(8, 8, radius=6).view(1, 1, 16, 16)
    two = torch.maximum(cone(3, 3, radius=3), 0.9 * cone(12, 12, radius=3)).view(1, 1, 16, 16)
    maps = torch.cat([one, two])
    mined = attention_mining(maps, steps=3, threshold=0.8)
    pairs = torch.tensor([[0, 0], [1, 0]])
    reg = {"Mass": constant_regressor((0.5, 0.9, 0.1))}
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    done, boxes, ok, score = regressed_boxes(mined.step_maps, mined.masks, pairs, work=(16, 16), regressors=reg,
                                             classes=("Mass",), max_boxes=3, dedup_iou=0.5, images=images)
    assert done.tolist() == [True, True]
    assert ok[0].tolist() == [True, False, False]
    assert ok[1].tolist() == [True, True, False]
    # image 1, by hand: step 1 boxes the 3 x 3 core (7..10), step 2 the ring at distance 2 (6..11), step 3 the ring
    # at 3 (5..12); step 2 (quality 0.9) leads, the others nest with it: one box, their quality-weighted mean
    want = (0.9 * torch.tensor([6.0, 6, 11, 11]) + 0.5 * torch.tensor([7.0, 7, 10, 10])
            + 0.1 * torch.tensor([5.0, 5, 12, 12])) / 1.5
    assert torch.allclose(boxes[0, 0], want) and score[0, 0] == pytest.approx(0.9)
    # image 2: step 2 (quality 0.9) found the weaker cone; it ranks above step 1's (0.5); step 3's ring around the
    # first cone's erased peak cell (2..5) holds step 1's box (3..4) and joins it with weight 0.1
    assert score[1, :2].tolist() == pytest.approx([0.9, 0.5])
    assert boxes[1, 0].tolist() == [12.0, 12.0, 13.0, 13.0]
    assert torch.allclose(boxes[1, 1], (0.5 * torch.tensor([3.0, 3, 4, 4]) + 0.1 * torch.tensor([2.0, 2, 5, 5])) / 0.6)
    # a finding without a regressor keeps the rule's boxes
    assert regressed_boxes(mined.step_maps, mined.masks, pairs, work=(16, 16), regressors=reg, classes=("Nodule",),
                           max_boxes=3, dedup_iou=0.5, images=images) is None
    with pytest.raises(UsageError, match="input images"):
        regressed_boxes(mined.step_maps, mined.masks, pairs, work=(16, 16), regressors=reg, classes=("Mass",),
                        max_boxes=3, dedup_iou=0.5, images=None)


def test_records_round_trip_and_malformed_ones_are_refused():
    reg = constant_regressor((0.1, 0.2, 0.3))
    back = read_regressors({"Mass": reg.to_record()})["Mass"]
    assert all(torch.equal(getattr(back, k), getattr(reg, k)) for k in ("mean", "scale", "box", "quality"))
    assert read_regressors(None) == {}
    good = reg.to_record()
    for bad, words in [({**good, "features": "other/9"}, "feature layout"), ({**good, "mean": [0.0]}, "shapes"),
                       ({**good, "scale": [0.0] * NF}, "scale <= 0"), ({**good, "box": "x"}, "not numbers"),
                       ({k: v for k, v in good.items() if k != "quality"}, "incomplete"), ([1, 2], "not an object")]:
        with pytest.raises(UsageError, match=words) as err:
            read_regressors({"Mass": bad})
        assert "'Mass'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="finding -> regressor"):
        read_regressors([good])
    assert good["features"] == FEATURES_ID


def test_the_settings_record_keeps_regressors_and_omits_them_when_absent():
    from miner.config import BoxConfig
    from miner.settings import InferenceSettings

    plain = InferenceSettings.for_recipe("peaks")
    assert "regressors" not in plain.to_record()["boxes"]
    regs = {"Mass": constant_regressor().to_record()}
    settings = InferenceSettings.for_recipe("peaks").with_overrides(boxes={"regressors": regs})
    record = settings.to_record()
    assert record["boxes"]["regressors"] == regs
    assert InferenceSettings.from_record(record) == settings
    assert isinstance(settings.boxes, BoxConfig) and settings.boxes.regressors == regs


def test_fit_needs_two_candidates_on_lesions():
    feats = torch.zeros(3, NF, dtype=torch.float64)
    ref = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3, dtype=torch.float64)
    far = torch.tensor([[20.0, 20.0, 24.0, 24.0]], dtype=torch.float64)
    assert fit_regressor(feats, ref, [far, far, torch.zeros(0, 4)]) is None


def test_findings_without_a_regressor_keep_the_rules_boxes():
    """A regressor for Mass only: Mass gets the same boxes as when every finding has one, Nodule the boxes of the
    plain rule (levels, no regression)."""
    from miner.calibrate import calibrate_levels, calibrate_regressors, mine_set
    from miner.pipeline import Pipeline

    data, backend = cone_archive()
    calibration = calibrate_levels(backend, data, levels=(0.8,), iou=0.3, min_boxes=1, shapes=False)
    regs = calibrate_regressors(backend, data, calibration, min_boxes=1, refine=False).regressors

    def rows(regressors):
        pipeline = Pipeline(backend, boxes={"regressors": regressors, "finding_levels": calibration.levels})
        return {(r[0], r[1], r[2]): (r[3], r[4]) for r in mine_set(pipeline, data)}

    both, mass_only, none = rows(regs), rows({"Mass": regs["Mass"]}), rows(None)
    assert {k: v for k, v in mass_only.items() if k[1] == "Mass"} == {k: v for k, v in both.items() if k[1] == "Mass"}
    assert {k: v for k, v in mass_only.items() if k[1] == "Nodule"} == \
           {k: v for k, v in none.items() if k[1] == "Nodule"}
    assert {k: v for k, v in mass_only.items() if k[1] == "Nodule"} != \
           {k: v for k, v in both.items() if k[1] == "Nodule"}


def test_a_model_with_a_broken_regressor_is_refused_before_mining(tmp_path, capsys):
    """`miner mine` with a checkpoint whose regressor record is cut short: one line naming the file and the finding,
    exit 2, nothing written."""
    from miner.cli import main
    from miner.models import create_model, read_checkpoint, save_checkpoint
    from miner.models.checkpoint import write_record
    from miner.recipes import get_recipe
    from tests.train.toy import CLASSES as TOY
    from tests.train.toy import write_toy_archive

    model = create_model("resnet18_msa", classes=TOY, width=0.125, msa_stride=8)
    path = save_checkpoint(tmp_path / "m.pt", model, meta={"input_size": 64, **get_recipe("peaks").record()})
    record = read_checkpoint(path)
    broken = {**constant_regressor().to_record(), "box": [[0.0] * 4] * 3}
    record["boxes"] = {**record["boxes"], "regressors": {TOY[0]: broken}}
    write_record(path, record)
    archive = write_toy_archive(tmp_path / "archive", images=2, size=64)
    out = tmp_path / "out"
    assert main(["mine", str(archive), "--model", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and f"'{TOY[0]}'" in err and "shapes" in err and "miner calibrate" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_model_with_stale_regressors_can_be_calibrated_again():
    """Regressors of another feature layout are refused for mining, but `miner calibrate` replaces them."""
    from miner.calibrate import calibrate_levels, calibrate_regressors
    from miner.pipeline import Pipeline

    data, backend = cone_archive()
    stale = {**constant_regressor().to_record(), "features": "steps-levels/0"}
    from dataclasses import replace

    backend.meta = replace(backend.meta, inference={**backend.meta.inference,
                                                    "boxes": {"upsample": 1, "regressors": {"Mass": stale}}})
    with pytest.raises(ModelError, match="feature layout"):
        Pipeline(backend)
    calibration = calibrate_levels(backend, data, levels=(0.8,), iou=0.3, min_boxes=1, shapes=False)
    fit = calibrate_regressors(backend, data, calibration, min_boxes=1)
    assert fit.regressors["Mass"]["features"] == FEATURES_ID


def test_a_fused_box_that_then_overlaps_a_better_one_is_merged_into_it():
    """By hand, dedup IoU 0.3: A (quality 0.6) and B (0.595) overlap at IoU 0.18, two lesions; C (0.59) overlaps A at
    IoU 0.43 and joins it, which moves A to x 1.98..11.98 (weights 0.6, 0.59), now at IoU 0.33 with B: one lesion,
    merged with the weights of their candidates (1.19 and 0.595)."""
    from miner.box_regression import one_box_per_lesion

    boxes = torch.tensor([[[0.0, 0, 10, 10], [7.0, 0, 17, 10], [4.0, 0, 14, 10]]], dtype=torch.float64)
    quality = torch.tensor([[0.6, 0.595, 0.59]], dtype=torch.float64)
    out, ok, score = one_box_per_lesion(boxes, quality, torch.ones(1, 3, dtype=torch.bool), 0.3)
    a = (0.6 * 0 + 0.59 * 4) / 1.19
    x0 = (1.19 * a + 0.595 * 7) / 1.785
    assert ok.tolist() == [[True, False, False]] and score[0, 0] == pytest.approx(0.6)
    assert out[0, 0].tolist() == pytest.approx([x0, 0.0, x0 + 10, 10.0])
    # with B alone beside A (no C) the two stay apart
    out, ok, _ = one_box_per_lesion(boxes[:, :2], quality[:, :2], torch.ones(1, 2, dtype=torch.bool), 0.3)
    assert ok.tolist() == [[True, True]] and out[0].tolist() == boxes[0, :2].tolist()


def squares(n: int, seed: int):
    """n 64 x 64 images, each with one bright 16 x 16 square, a blurred 8 x 8 first map peaking near it (as a CAM:
    coarse, a few pixels off), and boxes of it moved by a random one of the refinement's moves (as a map's box sits
    off its lesion)."""
    from miner.box_regression import refine_moves

    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 64, 64)
    maps = torch.zeros(1, n, 1, 8, 8)
    yy, xx = torch.meshgrid(torch.arange(8.0) * 8 + 4, torch.arange(8.0) * 8 + 4, indexing="ij")
    truth, start = [], []
    for i in range(n):
        y, x = (int(v) for v in torch.randint(12, 36, (2,), generator=g))
        images[i, 0, y:y + 16, x:x + 16] = 1.0
        oy, ox = (float(v) for v in torch.randint(-3, 4, (2,), generator=g))
        maps[0, i, 0] = torch.exp(-((yy - y - 8 - oy) ** 2 + (xx - x - 8 - ox) ** 2) / (2 * 10.0 ** 2))
        sq = torch.tensor([x, y, x + 16, y + 16], dtype=torch.float64)
        truth.append(sq)
        start.append(refine_moves(sq)[int(torch.randint(0, 81, (1,), generator=g))])
    return images, maps, torch.stack(truth), torch.stack(start)


def square_moves(n: int, seed: int):
    """`squares` with every move of each box: (images, maps, truth, start, tables, map tables, moves Tensor[n, 81,
    4], their features Tensor[n, 81, R], the IoU each move reaches Tensor[n, 81])."""
    from miner.box_regression import box_iou, image_tables, map_tables, refine_features, refine_moves

    images, maps, truth, start = squares(n, seed)
    tables = image_tables(images)
    mt = map_tables(maps, torch.tensor([[i, 0] for i in range(n)]), (64, 64))
    moved = refine_moves(start)  # [n, 81, 4]
    feats = refine_features(tables, torch.arange(n), mt, torch.arange(n), moved, start.unsqueeze(1))
    iou = torch.stack([box_iou(moved[i], truth[i:i + 1])[:, 0] for i in range(n)])
    return images, maps, truth, start, tables, mt, moved, feats, iou


def test_the_refinement_moves_a_box_onto_the_lesion_the_image_shows():
    """Fitted on 40 images' boxes (every move of each, with the IoU it reaches), the refinement takes boxes of 20
    other images, each one move off its square, back onto it; its score ranks the fits."""
    from miner.box_regression import box_iou, fit_refinement, refine_boxes

    *_, feats, iou = square_moves(40, 0)
    n = len(iou)
    refine = fit_refinement(feats, iou, torch.full((n,), 0.5, dtype=torch.float64), torch.ones(n, dtype=torch.bool),
                            torch.ones(n, dtype=torch.bool))
    _, _, test_truth, test_start, tables, mt, *_ = square_moves(20, 1)
    before = torch.stack([box_iou(test_start[i:i + 1], test_truth[i:i + 1])[0, 0] for i in range(20)])
    picked, score = refine_boxes(refine, tables, torch.arange(20), mt, torch.arange(20), test_start.unsqueeze(1),
                                 torch.full((20, 1), 0.5, dtype=torch.float64))
    after = torch.stack([box_iou(picked[i], test_truth[i:i + 1])[0, 0] for i in range(20)])
    assert float(after.mean()) > float(before.mean()) + 0.15 and float(after.min()) >= 0.5
    assert (after >= 0.9).float().mean() >= 0.6
    assert torch.corrcoef(torch.stack([score[:, 0], after]))[0, 1] > 0.5


def test_the_move_choice_learns_moves_not_boxes_and_the_score_is_a_ridge_regression():
    """The move choice is the ridge regression of IoU on features, both less their mean over each box's moves
    (solved here as augmented least squares), so a box-level shift of the IoU changes nothing; the score weights are
    the ridge regression of the chosen move's IoU on the standardised score features."""
    from miner.box_regression import (
        REFINE_RIDGE,
        SCORE_NAMES,
        SCORE_RIDGE,
        choose_moves,
        fit_refinement,
        score_features,
    )

    *_, feats, iou = square_moves(12, 2)
    n, m, r = feats.shape
    quality = torch.linspace(0.2, 0.8, n, dtype=torch.float64)
    first = torch.arange(n) % 2 == 0
    train = torch.arange(n) != 3  # one box does not train the choice
    fit = fit_refinement(feats, iou, quality, first, train)
    d = (feats - feats.mean(1, keepdim=True))[train].reshape(-1, r)
    t = (iou - iou.mean(1, keepdim=True))[train].reshape(-1)
    scale = d.std(0, unbiased=False)
    scale = torch.where(scale > 1e-9, scale, torch.ones_like(scale))
    z = torch.cat([d / scale, math.sqrt(REFINE_RIDGE) * torch.eye(r, dtype=torch.float64)])
    want = torch.linalg.lstsq(z, torch.cat([t, torch.zeros(r, dtype=torch.float64)]).unsqueeze(1)).solution[:, 0]
    assert torch.allclose(fit.scale, scale) and torch.allclose(fit.choose, want, atol=1e-8)
    shifted = fit_refinement(feats, iou + torch.linspace(0, 0.3, n, dtype=torch.float64).unsqueeze(1), quality,
                             first, train)
    assert torch.allclose(shifted.choose, fit.choose, atol=1e-10)
    # the score: the chosen move's IoU on the score features, standardised, with an unpenalised intercept
    best, choice = choose_moves(fit, feats)
    s = score_features(quality, choice, feats[torch.arange(n), best], first)
    assert s.shape == (n, len(SCORE_NAMES)) and torch.equal(s[:, 0], quality) and torch.equal(s[:, -1], first.double())
    zs = (s - s.mean(0)) / torch.where(s.std(0, unbiased=False) > 1e-9, s.std(0, unbiased=False), torch.ones(1))
    q = len(SCORE_NAMES)
    aug = torch.cat([torch.cat([zs, torch.ones(n, 1, dtype=torch.float64)], 1),
                     torch.cat([math.sqrt(SCORE_RIDGE) * torch.eye(q, dtype=torch.float64),
                                torch.zeros(q, 1, dtype=torch.float64)], 1)])
    target = torch.cat([iou[torch.arange(n), best], torch.zeros(q, dtype=torch.float64)]).unsqueeze(1)
    assert torch.allclose(fit.score, torch.linalg.lstsq(aug, target).solution[:, 0], atol=1e-8)


def test_refinement_records_round_trip_and_a_broken_one_is_refused():
    from miner.box_regression import REFINE_ID, REFINE_NAMES, SCORE_NAMES, Refinement

    r, q = len(REFINE_NAMES), len(SCORE_NAMES)
    reg = constant_regressor()
    refined = Regressor(reg.mean, reg.scale, reg.box, reg.quality,
                        Refinement(torch.ones(r, dtype=torch.float64), torch.arange(r, dtype=torch.float64),
                                   torch.zeros(q, dtype=torch.float64), torch.ones(q, dtype=torch.float64),
                                   torch.arange(q + 1, dtype=torch.float64)))
    record = refined.to_record()
    assert record["refine"]["features"] == REFINE_ID
    back = read_regressors({"Mass": record})["Mass"]
    assert back.refine is not None and torch.equal(back.refine.choose, refined.refine.choose)
    assert torch.equal(back.refine.score, refined.refine.score)
    for bad in ({**record["refine"], "score": [0.0]}, {**record["refine"], "features": "box-image/2"},
                {**record["refine"], "scale": [0.0] * r}, {**record["refine"], "score_scale": [-1.0] * q},
                {k: v for k, v in record["refine"].items() if k != "choose"}):
        with pytest.raises(UsageError, match="refinement"):
            read_regressors({"Mass": {**record, "refine": bad}})


def test_the_refinement_learns_from_boxes_of_a_first_stage_fitted_on_the_other_folds(monkeypatch):
    """The cone archive in three batches of two images (T = 1: one candidate per pair): with 3 folds each finding's
    first stage is fitted once on all six candidates (the regressor kept) and once per fold on the other four, and
    the refinement on the six boxes the fold fits gave; with 1 fold, once, in-sample."""
    import miner.box_regression as br
    from miner.calibrate import BoxedSet, calibrate_levels, calibrate_regressors
    from miner.pipeline import DecodedBatch

    data, backend = cone_archive()
    whole = data.batches[0]
    parts = [DecodedBatch(whole.image_ids[i:i + 2], whole.paths[i:i + 2], whole.labels[i:i + 2],
                          whole.images[i:i + 2], whole.sizes[i:i + 2]) for i in range(0, 6, 2)]
    split = BoxedSet(parts, data.gt, 6)
    calibration = calibrate_levels(backend, split, levels=(0.8,), iou=0.3, min_boxes=1, shapes=False)
    fitted, refined = [], []
    fit_regressor, fit_refinement = br.fit_regressor, br.fit_refinement
    monkeypatch.setattr(br, "fit_regressor", lambda f, *a, **k: fitted.append(len(f)) or fit_regressor(f, *a, **k))
    monkeypatch.setattr(br, "fit_refinement", lambda f, *a, **k: refined.append(len(f)) or fit_refinement(f, *a, **k))
    three = calibrate_regressors(backend, split, calibration, min_boxes=1, folds=3)
    assert fitted == [6, 6] + [4, 4] * 3 and refined == [6, 6]  # Mass and Nodule: all, then each fold's complement
    fitted.clear(), refined.clear()
    one = calibrate_regressors(backend, split, calibration, min_boxes=1, folds=1)
    assert fitted == [6, 6] and refined == [6, 6]
    # the first stage kept is the same either way (fitted on every candidate)
    for finding in ("Mass", "Nodule"):
        a, b = three.regressors[finding], one.regressors[finding]
        assert a["box"] == b["box"] and a["quality"] == b["quality"] and "refine" in a and "refine" in b
