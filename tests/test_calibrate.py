"""Per-finding box levels (miner calibrate): a hand-made case where each finding's lesions have a known extent
relative to its map's peak, the written checkpoint, and the command line."""
from __future__ import annotations

import numpy as np
import torch

from miner.backends.base import Backend, BackendMeta
from miner.calibrate import BoxedSet, calibrate_levels, write_calibrated
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
        self.meta = BackendMeta(classes=CLASSES, input_size=(SIZE, SIZE), in_chans=1, method="cam", layer="x",
                                mean=(0.5,), std=(0.5,), head_is_linear=True, map_size=(16, 16), shortcut_exact=True,
                                inference={"recipe": "peaks", "mining": {"steps": 1}, "boxes": {"upsample": 1}})

    def _run(self, images, masks):
        index = images[:, 0, 0, 0].round().long()  # the test writes the image's index into pixel (0, 0)
        return torch.zeros(len(index), 2), self.table[index]


def boxed_set() -> tuple[BoxedSet, ConeBackend]:
    """Six images; Mass lesions span the map's region above 0.85 of its peak (3 x 3 cells), Nodule lesions the
    region above 0.6 (7 x 7 cells). Every map reaches 0 (min-max normalisation keeps the levels)."""
    rng = np.random.default_rng(0)
    maps, gt, ids = [], {}, []
    for i in range(6):
        cy, cx = (int(v) for v in rng.integers(5, 11, size=2))
        maps.append(torch.stack([cone(cy, cx), cone(cy, cx)]))
        image_id = f"{i:03d}.png"
        ids.append(image_id)
        gt[(image_id, "Mass")] = [((cx - 1) * 4.0, (cy - 1) * 4.0, 12.0, 12.0)]
        gt[(image_id, "Nodule")] = [((cx - 3) * 4.0, (cy - 3) * 4.0, 28.0, 28.0)]
    images = np.zeros((6, 1, SIZE, SIZE), np.float32)
    images[:, 0, 0, 0] = np.arange(6)
    batch = DecodedBatch(ids, ids, [CLASSES] * 6, images, np.full((6, 2), SIZE, np.int32))
    return BoxedSet([batch], gt, 6), ConeBackend(torch.stack(maps))


def test_each_finding_gets_the_level_its_lesions_have():
    data, backend = boxed_set()
    result = calibrate_levels(backend, data, levels=(0.5, 0.6, 0.7, 0.85, 0.95), iou=0.7, min_boxes=1)
    assert result.levels == {"Mass": 0.85, "Nodule": 0.6}
    assert result.table["Mass"][0.85] == 1.0 and result.table["Nodule"][0.6] == 1.0
    assert result.table["Mass"][0.5] == 0.0  # a 9x9 box around a 3x3 lesion: IoU 1/9
    assert result.boxes == {"Mass": 6, "Nodule": 6}
    # findings with too few boxes keep the recipe's level
    assert calibrate_levels(backend, data, levels=(0.6, 0.85), iou=0.7, min_boxes=7).levels == {}


def test_the_calibrated_checkpoint_records_the_levels_and_mines_with_them(tmp_path):
    from miner.models import create_model, read_checkpoint, save_checkpoint
    from miner.pipeline import Pipeline
    from miner.backends import open_backend

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


def test_calibrate_cli_end_to_end_and_its_errors(tmp_path, capsys):
    from miner.cli import main
    from miner.data import make_phantoms
    from miner.models import create_model, read_checkpoint, save_checkpoint

    archive = make_phantoms(tmp_path / "val", images=24, size=64, seed=11).root
    src = tmp_path / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(src, create_model("resnet18_msa", width=0.125, msa_stride=8,
                                      classes=("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass",
                                               "Nodule", "Pneumonia", "Pneumothorax")),
                    meta={"input_size": 64})
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "cal.pt"), "--recipe", "peaks",
                 "--min-boxes", "1", "--levels", "0.5,0.9"]) == 0
    text = capsys.readouterr().out
    assert "miner calibrate: wrote" in text and "chosen" in text
    record = read_checkpoint(tmp_path / "cal.pt")
    assert record["recipe"] == "peaks" and set(record["boxes"]["finding_levels"].values()) <= {0.5, 0.9}
    # the seed's recipe reads boxes by levels of H_f: nothing to calibrate
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "x.pt")]) == 2
    assert "'levels' rule" in capsys.readouterr().err
    assert main(["calibrate", str(src), str(archive), "--out", str(tmp_path / "x.pt"), "--levels", "1.5"]) == 2
    assert "--levels" in capsys.readouterr().err
    empty = make_phantoms(tmp_path / "none", images=4, size=64, seed=1, findings=("Nodule",)).root
    (empty / "BBox_List_2017.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
    assert main(["calibrate", str(src), str(empty), "--out", str(tmp_path / "x.pt"), "--recipe", "peaks"]) == 2
    assert "no labelled image with ground-truth boxes" in capsys.readouterr().err
