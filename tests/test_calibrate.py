"""Per-finding box levels (miner calibrate): a hand-made case where each finding's lesions have a known extent
relative to its map's peak, the written checkpoint, and the command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from miner.backends.base import Backend
from miner.calibrate import BoxedSet, calibrate_input_size, calibrate_levels, calibrate_maps, write_calibrated
from miner.errors import UsageError
from miner.models.meta import ModelMeta
from miner.pipeline import DecodedBatch

CLASSES = ("Mass", "Nodule")
SIZE = 64  # image side; maps are 16 x 16 (one cell = 4 px)


def cone(cy: int, cx: int, radius: float = 8.0) -> torch.Tensor:
    """A map falling linearly from 1 at cell (cy, cx) to 0 at `radius` cells (Chebyshev distance): the region
    >= L x peak is the square of half-width (1 - L) x radius around the peak."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    d = torch.maximum((yy - cy).abs(), (xx - cx).abs())
    return (1 - d / radius).clamp(min=0)


class ConeBackend(Backend):
    """Maps from a table: image i -> (Mass map, Nodule map); a "peaks" record with T = 1 (one box per map)."""

    name = "torch"
    provider = "test"

    def __init__(self, maps: torch.Tensor) -> None:
        self.device = torch.device("cpu")
        self.table = maps
        self.meta = ModelMeta(classes=CLASSES, input_size=(SIZE, SIZE), in_chans=1, method="cam", layer="x",
                              mean=(0.5,), std=(0.5,), head_is_linear=True, map_size=(16, 16), shortcut_exact=True,
                              inference={"recipe": "peaks", "mining": {"steps": 1}, "boxes": {"upsample": 1}})

    def _run(self, images, masks):
        index = images[:, 0, 0, 0].round().long()  # the test writes the image's index into pixel (0, 0)
        return torch.zeros(len(index), 2), self.table[index]


def boxed_set(seed: int = 0, mass=None) -> tuple[BoxedSet, ConeBackend]:
    """Six images; Mass lesions span the map's region above 0.85 of its peak (3 x 3 cells), Nodule lesions the
    region above 0.6 (7 x 7 cells). Every map reaches 0 (min-max normalisation keeps the levels). `mass(cy, cx)`
    gives other Mass lesions (x, y, w, h in pixels) around a map peaked at cell (cy, cx)."""
    rng = np.random.default_rng(seed)
    maps, gt, ids = [], {}, []
    for i in range(6):
        cy, cx = (int(v) for v in rng.integers(5, 11, size=2))
        maps.append(torch.stack([cone(cy, cx), cone(cy, cx)]))
        image_id = f"{i:03d}.png"
        ids.append(image_id)
        gt[(image_id, "Mass")] = [mass(cy, cx) if mass else ((cx - 1) * 4.0, (cy - 1) * 4.0, 12.0, 12.0)]
        gt[(image_id, "Nodule")] = [((cx - 3) * 4.0, (cy - 3) * 4.0, 28.0, 28.0)]
    images = np.zeros((6, 1, SIZE, SIZE), np.float32)
    images[:, 0, 0, 0] = np.arange(6)
    batch = DecodedBatch(ids, ids, [CLASSES] * 6, images, np.full((6, 2), SIZE, np.int32))
    return BoxedSet([batch], gt, 6), ConeBackend(torch.stack(maps))


def test_each_finding_gets_the_level_its_lesions_have():
    data, backend = boxed_set()
    result = calibrate_levels(backend, data, levels=(0.5, 0.6, 0.7, 0.85, 0.95), iou=0.7, min_boxes=1, shapes=False)
    assert result.levels == {"Mass": 0.85, "Nodule": 0.6}
    assert result.table["Mass"][0.85] == 1.0 and result.table["Nodule"][0.6] == 1.0
    assert result.table["Mass"][0.5] == 0.0  # a 9x9 box around a 3x3 lesion: IoU 1/9
    assert result.boxes == {"Mass": 6, "Nodule": 6}
    # findings with too few boxes keep the recipe's level
    assert calibrate_levels(backend, data, levels=(0.6, 0.85), iou=0.7, min_boxes=7).levels == {}
    # boxes that already fit their lesions get no shape
    assert calibrate_levels(backend, data, levels=(0.5, 0.6, 0.7, 0.85, 0.95), iou=0.7, min_boxes=1).shapes == {}


def test_a_box_shape_is_fitted_where_the_map_sits_off_the_lesion():
    """Mass lesions one cell (4 px) right of their maps' peaks. By hand, at T(IoU) = 0.7: the 3x3-cell box at level
    0.85 overlaps the 12-px lesion 8 of 12 px wide (IoU 96/192 = 0.5); no level's plain box reaches 0.7. Moved
    right by 0.2 of its width (2.4 px) it overlaps 10.4 px (IoU 124.8/163.2 = 0.76); by 0.1, 9.2 px (0.62).
    So the shape is (1, 1, 0.2, 0) at level 0.85 (1.0 at every level that reaches it: the recipe's level wins),
    and Nodule, whose boxes fit, keeps none."""
    from miner.calibrate import fit_shape, mine_set, shape_candidates
    from miner.pipeline import Pipeline

    data, backend = boxed_set()
    data.gt = {k: [(x + 4.0, y, w, h) for x, y, w, h in v] if k[1] == "Mass" else v for k, v in data.gt.items()}
    result = calibrate_levels(backend, data, levels=(0.6, 0.85, 0.95), iou=0.7, min_boxes=1)
    assert result.plain["Mass"] == {0.6: 0.0, 0.85: 0.0, 0.95: 0.0}
    assert result.levels["Mass"] == 0.85 and result.table["Mass"][0.85] == 1.0
    assert result.shapes == {"Mass": (1.0, 1.0, 0.2, 0.0)}
    assert result.box_config.finding_shapes == {"Mass": [1.0, 1.0, 0.2, 0.0]}
    assert result.macro == 1.0 and result.plain_macro == 0.5
    assert any("shape w x1 h x1 centre +0.2w +0h (plain boxes 0.00)" in line for line in result.lines())
    # fit_shape on its own: boxes found with the shape and without
    pipeline = Pipeline(backend)
    rows = mine_set(pipeline, data)
    cand = shape_candidates(rows, data)["Mass"]
    assert fit_shape(cand, 0.7) == ((1.0, 1.0, 0.2, 0.0), 6, 0)
    # the fit counts hits as the benchmark does (miner.metrics.hits), for every finding and threshold
    from miner.metrics.hits import found_per_finding, group_boxes
    identity = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    for level in (0.1, 0.3, 0.5, 0.7):
        counted = found_per_finding(group_boxes((r[0], r[1], r[2], r[4]) for r in rows), data.gt, level)
        assert {f: (int(c.hits(identity, level)[0]), c.boxes) for f, c in shape_candidates(rows, data).items()} \
            == counted
    # the pipeline of the calibrated settings finds every lesion
    from miner.metrics.hits import found_per_finding, group_boxes
    pipeline.box_config = result.box_config
    rows = mine_set(pipeline, data)
    assert found_per_finding(group_boxes((r[0], r[1], r[2], r[4]) for r in rows), data.gt, 0.7) == {
        "Mass": (6, 6), "Nodule": (6, 6)}
    # a gain below min_gain keeps the plain boxes
    assert calibrate_levels(backend, data, levels=(0.85,), iou=0.7, min_boxes=1, min_gain=1.01).shapes == {}


def test_the_calibrated_checkpoint_records_the_levels_and_mines_with_them(tmp_path):
    from miner.backends import open_backend
    from miner.models import create_model, read_checkpoint, save_checkpoint
    from miner.pipeline import Pipeline

    data, backend = boxed_set()
    result = calibrate_levels(backend, data, levels=(0.6, 0.85), iou=0.7, min_boxes=1)
    src = tmp_path / "m.pt"
    save_checkpoint(src, create_model("resnet18_msa", classes=CLASSES, width=0.125, msa_stride=8),
                    meta={"input_size": SIZE})
    out = write_calibrated(src, tmp_path / "cal.pt", result, source={"archives": ["val"], "split": None})
    record = read_checkpoint(out)
    assert record["recipe"] == "peaks" and record["boxes"]["finding_levels"] == {"Mass": 0.85, "Nodule": 0.6}
    assert record["calibration"]["levels"] == {"Mass": 0.85, "Nodule": 0.6}
    assert torch.equal(record["state_dict"]["fc.weight"], read_checkpoint(src)["state_dict"]["fc.weight"])
    pipeline = Pipeline(open_backend(out, backend="torch", device="cpu"))
    assert pipeline.box_config.finding_levels == {"Mass": 0.85, "Nodule": 0.6}


def test_the_input_size_with_the_best_macro_acc_is_chosen_and_recorded(tmp_path):
    """Two candidate sizes: at one the maps peak on the lesions (macro Acc 1), at the other 3 cells to the right
    of them. By hand, at T(IoU) = 0.7: the 3x3-cell Mass lesion and a 3x3 (level 0.85) or 7x7 (0.6) box 3 cells
    off overlap 0 or 6 cells (IoU 6/52); the 7x7 Nodule lesion and a 7x7 box 3 cells off, 28 cells (IoU 28/70):
    macro 0. The checkpoint records the better size and keeps the one it was trained at."""
    from miner.models import create_model, read_checkpoint, save_checkpoint

    data, good = boxed_set()
    bad = ConeBackend(torch.roll(good.table, shifts=3, dims=-1))  # every peak 3 cells (12 px) to the right
    seen = []
    search = calibrate_input_size(lambda size, weights: good if size == 96 else bad, lambda size: data, (64, 96),
                                  trained=64, on_size=lambda size, result: seen.append(size),
                                  levels=(0.6, 0.85), iou=0.7, min_boxes=1, shapes=False, coarse_weights=(1.0,))
    assert seen == [64, 96] and search.size == 96 and search.trained == 64
    assert search.results[96].macro == 1.0
    assert search.results[64].table == {"Mass": {0.6: 0.0, 0.85: 0.0}, "Nodule": {0.6: 0.0, 0.85: 0.0}}
    assert search.results[64].macro == 0.0
    assert search.calibration is search.results[96]
    assert any(line.split()[:1] == ["96"] and "chosen" in line for line in search.lines())
    # equal macro Acc: the size the model was trained at, then the smaller; with a tolerance, the smallest
    opts = dict(levels=(0.6, 0.85), iou=0.7, min_boxes=1, shapes=False, coarse_weights=(1.0,))
    assert calibrate_input_size(lambda size, weights: good, lambda size: data, (64, 96, 128), trained=96,
                                **opts).size == 96
    assert calibrate_input_size(lambda size, weights: good, lambda size: data, (64, 128), trained=96,
                                **opts).size == 64
    assert calibrate_input_size(lambda size, weights: good, lambda size: data, (96, 64, 128), trained=96,
                                tolerance=0.01, **opts).size == 64
    # a larger size within the tolerance of the best loses to a smaller one: macro 5/6 at 64 (one image off) vs 1
    half = ConeBackend(torch.cat([good.table[:5], torch.roll(good.table[5:], shifts=3, dims=-1)]))
    picks = {tol: calibrate_input_size(lambda size, weights: good if size == 96 else half, lambda size: data, (64, 96),
                                       trained=64, tolerance=tol, **opts).size for tol in (0.0, 0.01, 0.2)}
    assert picks == {0.0: 96, 0.01: 96, 0.2: 64}

    src = tmp_path / "m.pt"
    save_checkpoint(src, create_model("resnet18_msa", classes=CLASSES, width=0.125, msa_stride=8),
                    meta={"input_size": 64})
    out = write_calibrated(src, tmp_path / "cal.pt", search.calibration, source={"archives": ["val"]}, sizes=search)
    record = read_checkpoint(out)
    assert record["input_size"] == 96 and record["trained_input_size"] == 64
    assert record["calibration"]["input_sizes"] == {"64": search.results[64].macro, "96": 1.0}
    # calibrating the calibrated copy again keeps the size it was trained at
    again = write_calibrated(out, tmp_path / "cal2.pt", search.results[64], source={},
                             sizes=type(search)(64, 64, search.results))
    assert read_checkpoint(again)["input_size"] == 64 and read_checkpoint(again)["trained_input_size"] == 64


class StagedConeBackend(ConeBackend):
    """ConeBackend whose Nodule maps depend on the weight of a model's coarse stage (`miner.calibrate
    .coarse_stage` reads ``model.feature_stages``): on the lesions at a weight <= 0.5, 3 cells off them above."""

    class model:  # noqa: N801 - stands in for the backend's torch model
        feature_stages = {"layer4": (0, 4), "layer2": (4, 6)}

    def __init__(self, good: torch.Tensor, bad: torch.Tensor, weights: dict) -> None:
        self.weight = float(weights.get("Nodule", {}).get("layer4", 1.0))
        table = good.clone()
        if self.weight > 0.5:
            table[:, 1] = bad[:, 1]
        super().__init__(table)


def test_each_finding_gets_the_coarse_weight_that_finds_its_boxes(tmp_path):
    """Nodule's maps sit 3 cells off its lesions unless the coarse stage weighs <= 0.5 (Acc 0 -> 1 at T(IoU)
    = 0.7, hand-computed in the input-size test); Mass's maps do not depend on it. Nodule takes 0.5 (0.5 and
    0.25 tie: the weight nearest 1), Mass keeps the plain maps; the levels are those of the chosen maps. The
    record carries the weights; calibrating again with the single candidate 1 drops them."""
    from miner.models import create_model, read_checkpoint, save_checkpoint

    data, good = boxed_set()
    bad = torch.roll(good.table, shifts=3, dims=-1)
    asked = []

    def backend_with(weights):
        asked.append(weights)
        return StagedConeBackend(good.table, bad, weights)

    opts = dict(levels=(0.6, 0.85), iou=0.7, min_boxes=1, shapes=False)
    result = calibrate_maps(backend_with, data, coarse_weights=(1.0, 0.5, 0.25), **opts)
    assert asked[0] == {} and asked[1] == {"Mass": {"layer4": 0.5}, "Nodule": {"layer4": 0.5}}
    assert result.stage == "layer4"
    assert result.stage_weights == {"Nodule": {"layer4": 0.5}}
    assert result.weight_table == {"Mass": {1.0: 1.0, 0.5: 1.0, 0.25: 1.0}, "Nodule": {1.0: 0.0, 0.5: 1.0, 0.25: 1.0}}
    assert result.levels == {"Mass": 0.85, "Nodule": 0.6} and result.macro == 1.0
    assert any("map with layer4 x0.5" in line for line in result.lines())
    # the candidate 1 is always there; a gain below min_gain keeps the plain maps
    assert calibrate_maps(backend_with, data, coarse_weights=(0.5,), **opts).stage_weights == {
        "Nodule": {"layer4": 0.5}}
    assert calibrate_maps(backend_with, data, coarse_weights=(1.0, 0.5), min_gain=1.01, **opts).stage_weights == {}
    plain = calibrate_maps(backend_with, data, coarse_weights=(1.0,), **opts)
    assert plain.stage_weights == {} and plain.weight_table == {} and plain.levels == calibrate_levels(
        StagedConeBackend(good.table, bad, {}), data, **opts).levels
    with pytest.raises(UsageError, match="no coarse stage"):
        calibrate_maps(lambda weights: ConeBackend(good.table), data, coarse_weights=(1.0, 0.5), **opts)
    with pytest.raises(UsageError, match=">= 0"):
        calibrate_maps(backend_with, data, coarse_weights=(1.0, -0.5), **opts)

    src = tmp_path / "m.pt"
    save_checkpoint(src, create_model("resnet18_msa", classes=CLASSES, width=0.125, msa_stride=8),
                    meta={"input_size": 64})
    record = read_checkpoint(write_calibrated(src, tmp_path / "cal.pt", result, source={}))
    assert record["stage_weights"] == {"Nodule": {"layer4": 0.5}}
    assert record["calibration"]["stage_weight_acc"]["acc"]["Nodule"] == {"1": 0.0, "0.5": 1.0, "0.25": 1.0}
    again = read_checkpoint(write_calibrated(tmp_path / "cal.pt", tmp_path / "cal2.pt", plain, source={}))
    assert "stage_weights" not in again and "stage_weight_acc" not in again["calibration"]


def test_calibrate_cli_end_to_end_and_its_errors(tmp_path, capsys):
    from miner.cli import main
    from miner.models import create_model, read_checkpoint, save_checkpoint
    from miner.phantoms import make_phantoms

    archive = make_phantoms(tmp_path / "val", images=24, size=64, seed=11).root
    src = tmp_path / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(src, create_model("resnet18_msa", width=0.125, msa_stride=8,
                                      classes=("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
                                               "Nodule", "Pneumonia", "Pneumothorax")),
                    meta={"input_size": 64})
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "cal.pt"), "--recipe", "peaks",
                 "--min-boxes", "1", "--levels", "0.5,0.9", "--weights-by", "boxes"]) == 0
    text = capsys.readouterr().out
    assert "miner calibrate: wrote" in text and "chosen" in text
    record = read_checkpoint(tmp_path / "cal.pt")
    assert record["recipe"] == "peaks" and set(record["boxes"]["finding_levels"].values()) <= {0.5, 0.9}
    # box regressors by default, for every finding with boxes, and their validation Acc before and after
    assert "box regressors at (64, 64) px" in text
    # (a random model: only findings with two or more candidates on a lesion get one)
    assert record["boxes"]["regressors"]
    assert set(record["boxes"]["regressors"]) <= set(record["calibration"]["regressors"]["before"])
    assert set(record["boxes"]["regressors"]) <= set(record["boxes"]["finding_levels"])
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "plain.pt"), "--recipe", "peaks",
                 "--min-boxes", "1", "--levels", "0.5,0.9", "--no-regressors"]) == 0
    assert "box regressors" not in capsys.readouterr().out
    plain = read_checkpoint(tmp_path / "plain.pt")
    assert "regressors" not in plain["boxes"] and "regressors" not in plain["calibration"]
    # the refined boxes chose the stage weights (--weights-by boxes), the levels without regressors; where the two
    # chose the same weight, the same levels
    assert record["calibration"]["stage_weight_acc"]["chosen_by"] == "boxes"
    assert plain["calibration"]["stage_weight_acc"]["chosen_by"] == "levels"
    weight = {k: {f: w.get(f, {}).get("layer4", 1.0) for f in r["boxes"]["finding_levels"]}
              for k, r, w in (("boxes", record, record.get("stage_weights") or {}),
                              ("levels", plain, plain.get("stage_weights") or {}))}
    same = [f for f in plain["boxes"]["finding_levels"] if weight["boxes"].get(f) == weight["levels"][f]]
    assert same and all(plain["boxes"]["finding_levels"][f] == record["boxes"]["finding_levels"][f] for f in same)
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "x.pt"), "--no-refine",
                 "--weights-by", "boxes"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--weights-by boxes" in err and len(err.splitlines()) == 1 and not (tmp_path / "x.pt").exists()
    # the seed's recipe reads boxes by levels of H_f: nothing to calibrate
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "x.pt")]) == 2
    assert "'levels' rule" in capsys.readouterr().err
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "x.pt"), "--levels", "1.5"]) == 2
    assert "--levels" in capsys.readouterr().err
    # --input-sizes: every candidate is calibrated and the best one recorded as the model's input size
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "sized.pt"), "--recipe", "peaks",
                 "--min-boxes", "1", "--levels", "0.5,0.9", "--input-sizes", "64,96"]) == 0
    text = capsys.readouterr().out
    assert "at 64 px" in text and "at 96 px" in text and "macro mean" in text
    record = read_checkpoint(tmp_path / "sized.pt")
    assert record["trained_input_size"] == 64 and record["input_size"] in (64, 96)
    assert set(record["calibration"]["input_sizes"]) == {"64", "96"}
    assert f"at input size {record['input_size']}" in text
    from miner.backends import open_backend
    assert open_backend(tmp_path / "sized.pt", backend="torch", device="cpu").meta.input_size == (
        (record["input_size"],) * 2)
    for bad in ("64,x", "8"):
        assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "x.pt"), "--recipe", "peaks",
                     "--input-sizes", bad]) == 2
        assert "--input-sizes" in capsys.readouterr().err
    # --coarse-weights: every finding's weight of the coarse stage is chosen among them
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "w.pt"), "--recipe", "peaks",
                 "--min-boxes", "1", "--levels", "0.5,0.9", "--coarse-weights", "1,0.25"]) == 0
    text = capsys.readouterr().out
    assert "best Acc per weight of layer4 in the map" in text
    record = read_checkpoint(tmp_path / "w.pt")
    assert all(w == {"layer4": 0.25} for w in record.get("stage_weights", {}).values())
    assert set(record["calibration"]["stage_weight_acc"]["acc"]["Nodule"]) == {"1", "0.25"}
    for bad in ("1,x", "-1"):
        assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "x.pt"), "--recipe", "peaks",
                     "--coarse-weights", bad]) == 2
        assert "--coarse-weights" in capsys.readouterr().err
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "x.pt"), "--recipe", "peaks",
                 "--input-sizes", "64,96", "--size-tolerance", "-0.1"]) == 2
    assert "argument --size-tolerance: must be a number in [0, 1)" in capsys.readouterr().err
    empty = make_phantoms(tmp_path / "none", images=4, size=64, seed=1, findings=("Nodule",)).root
    (empty / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    assert main(["calibrate", str(src), str(empty), "--out", str(tmp_path / "x.pt"), "--recipe", "peaks"]) == 2
    assert "no labelled image with ground-truth boxes" in capsys.readouterr().err


def _sample(truth, box, fold, *, hit_move=None):
    """A `RefineSample` of one box (its 81 moves) on lesions `truth` (list of x0, y0, x1, y1), whose features read
    each move's IoU with the nearest lesion in their first column (a move choice fitted on them picks the best
    move); `box` None: a pair the first stage boxed nowhere."""
    from miner.box_regression import REFINE_NAMES, box_iou, refine_moves
    from miner.calibrate import RefineSample

    truth = torch.tensor(truth, dtype=torch.float64)
    boxes = torch.zeros(0, 4, dtype=torch.float64) if box is None else torch.tensor([box], dtype=torch.float64)
    moves = refine_moves(boxes)
    iou = box_iou(moves.reshape(-1, 4), truth).amax(1).reshape(len(boxes), -1) if len(boxes) else moves[..., 0]
    features = torch.zeros(*iou.shape, len(REFINE_NAMES), dtype=torch.float64)
    features[..., 0] = iou
    k = len(boxes)
    first = torch.ones(k, dtype=torch.bool)
    return RefineSample(features, iou, torch.full((k,), 0.5, dtype=torch.float64), first, first, fold, moves, truth)


def test_the_refined_boxes_are_scored_out_of_fold_per_lesion():
    """By hand, T(IoU) 0.5: a move choice that reads each move's IoU picks each box's best move. Fold 0: a 10 x 10
    lesion with a box 1.25 x too wide (its x 0.8 move is exact: found) and a lesion with no box (missed); fold 1: a
    box of four times the lesion's side (its smallest move, x 0.8, still reaches only 100 / 32^2: missed), a pair of
    two lesions whose box covers one (found; the other missed) and another 1.25 x wide box (found). Acc = 3 / 6:
    every lesion once, a pair without a box included. Unmoved (a choice that reads nothing keeps each box), the wide
    boxes reach IoU 0.8: found at 0.5, not at 0.85."""
    from miner.calibrate import refinement_oof

    samples = {"Mass": [
        _sample([[0, 0, 10, 10]], [-1.25, 0, 11.25, 10], 0),
        _sample([[30, 30, 40, 40]], None, 0),
        _sample([[0, 0, 10, 10]], [-15, -15, 25, 25], 1),
        _sample([[0, 0, 10, 10], [50, 50, 60, 60]], [-1.25, 0, 11.25, 10], 1),
        _sample([[20, 20, 30, 30]], [18.75, 20, 31.25, 30], 1),
    ]}
    assert refinement_oof(samples) == {"Mass": pytest.approx(3 / 6)}
    # a single fold: in-sample, the same choice here
    one = {"Mass": [replace_fold(s, 0) for s in samples["Mass"]]}
    assert refinement_oof(one) == {"Mass": pytest.approx(3 / 6)}
    flat = {"Mass": [replace_features(s) for s in samples["Mass"]]}
    assert refinement_oof(flat) == {"Mass": pytest.approx(3 / 6)}
    assert refinement_oof(flat, iou=0.85) == {"Mass": 0.0}


def replace_fold(sample, fold):
    from dataclasses import replace

    return replace(sample, fold=fold)


def replace_features(sample):
    from dataclasses import replace

    return replace(sample, features=torch.zeros_like(sample.features))


def test_the_refined_boxes_choose_each_findings_coarse_weight(tmp_path, monkeypatch):
    """The levels give Nodule the weight 0.5 and Mass 1 (the coarse-weight test's maps); the refined boxes' out-of-
    fold Acc (stood in for: Mass 0.50 / 0.70 / 0.52 at 1 / 0.5 / 0.25, Nodule 0.90 / 0.80 / 0.85) moves Mass to
    0.5 (+0.20, over the 1 box in 6 that min_gain 0.02 asks) and keeps Nodule's 0.5 (1 gains 0.10: less than a
    box). Each weight's regressors are fitted on its own maps under its own levels; a finding keeps the levels,
    shapes and regressors of its weight; the record says the boxes chose."""
    import miner.calibrate as cal
    from miner.calibrate import RegressorFit, calibrate_box_weights
    from miner.models import create_model, read_checkpoint, save_checkpoint

    data, good = boxed_set()
    bad = torch.roll(good.table, shifts=3, dims=-1)
    opts = dict(levels=(0.6, 0.85), iou=0.7, min_boxes=1, shapes=False)
    levels = calibrate_maps(lambda w: StagedConeBackend(good.table, bad, w), data, coarse_weights=(1.0, 0.5, 0.25),
                            **opts)
    assert levels.stage_weights == {"Nodule": {"layer4": 0.5}} and sorted(levels.by_weight) == [0.25, 0.5, 1.0]
    oof = {1.0: (0.50, 0.90), 0.5: (0.70, 0.80), 0.25: (0.52, 0.85)}
    seen = []

    def fake(backend, data_, calibration, **kw):
        w = backend.weight
        assert calibration is levels.by_weight[w] and kw["score"] and data_.maps  # its maps, its levels
        assert torch.equal(data_.maps[0][1], backend.table)
        seen.append(w)
        return RegressorFit({"Mass": {"w": w}, "Nodule": {"w": w}}, {"Mass": {"0.3": w}, "Nodule": {"0.3": w}},
                            {"Mass": {"0.3": w}, "Nodule": {"0.3": w}}, {"Mass": 6, "Nodule": 6},
                            dict(zip(("Mass", "Nodule"), oof[w])))

    monkeypatch.setattr(cal, "calibrate_regressors", fake)
    result, fit = calibrate_box_weights(lambda w: StagedConeBackend(good.table, bad, w), data, levels, min_boxes=1)
    assert seen == [1.0, 0.5, 0.25] and data.maps == []
    assert result.stage_weights == {"Mass": {"layer4": 0.5}, "Nodule": {"layer4": 0.5}}
    assert result.levels == {"Mass": levels.by_weight[0.5].levels["Mass"], "Nodule": levels.levels["Nodule"]}
    assert result.weight_table == levels.weight_table
    assert result.box_weight_table == {"Mass": {1.0: 0.50, 0.5: 0.70, 0.25: 0.52},
                                       "Nodule": {1.0: 0.90, 0.5: 0.80, 0.25: 0.85}}
    assert fit.regressors == {"Mass": {"w": 0.5}, "Nodule": {"w": 0.5}} and fit.oof == {"Mass": 0.70, "Nodule": 0.80}
    assert any("refined boxes' out-of-fold Acc" in line for line in result.lines())
    # a larger min_gain keeps the levels' weights
    seen.clear()
    kept, _ = calibrate_box_weights(lambda w: StagedConeBackend(good.table, bad, w), data, levels, min_boxes=1,
                                    min_gain=0.5)
    assert kept.stage_weights == levels.stage_weights
    src = tmp_path / "m.pt"
    save_checkpoint(src, create_model("resnet18_msa", classes=CLASSES, width=0.125, msa_stride=8),
                    meta={"input_size": 64})
    record = read_checkpoint(write_calibrated(src, tmp_path / "cal.pt", result, source={}))
    assert record["stage_weights"] == {"Mass": {"layer4": 0.5}, "Nodule": {"layer4": 0.5}}
    chosen = record["calibration"]["stage_weight_acc"]
    assert chosen["chosen_by"] == "boxes" and chosen["boxes_acc"]["acc"]["Mass"] == {"1": 0.5, "0.5": 0.7, "0.25": 0.52}
    assert read_checkpoint(write_calibrated(src, tmp_path / "lv.pt", levels, source={}))["calibration"][
        "stage_weight_acc"]["chosen_by"] == "levels"


def test_with_one_candidate_weight_the_boxes_choose_nothing_but_are_scored():
    """A calibration without candidate weights (levels only): the regressors are fitted at its maps as
    `calibrate_regressors` fits them, with the out-of-fold Acc beside; the calibration is returned as it was."""
    from miner.calibrate import calibrate_box_weights, calibrate_regressors

    data, backend = boxed_set()
    levels = calibrate_levels(backend, data, levels=(0.6, 0.85), iou=0.3, min_boxes=1, shapes=False)
    asked = []
    result, fit = calibrate_box_weights(lambda w: asked.append(w) or backend, data, levels, min_boxes=1)
    assert result is levels and asked == [{}] and data.maps == []
    plain = calibrate_regressors(backend, data, levels, min_boxes=1)
    assert fit.regressors == plain.regressors and set(fit.oof) == set(plain.regressors)
    assert all(0.0 <= v <= 1.0 for v in fit.oof.values())
