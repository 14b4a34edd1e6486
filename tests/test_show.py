"""`miner show` and `miner eval` end to end on a phantom archive with a small random-weight checkpoint."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from miner.boxes import box_columns, boxes_from_maps
from miner.cli import main
from miner.show import GREEN, RED, Panel, draw_boxes, heatmap_overlay, render

SIZE = 64


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    """A phantom archive with masks, a resnet18 (width 1/8) checkpoint, and OUT/boxes mined from it."""
    from miner.data import load_image, to_model_input
    from miner.io import BOXES_SCHEMA
    from miner.mining import mine
    from miner.models import create_model, save_checkpoint
    from miner.phantoms import make_phantoms

    root = tmp_path_factory.mktemp("show")
    archive = make_phantoms(root / "archive", images=10, size=128, seed=3, masks=True)
    torch.manual_seed(0)
    model = create_model("resnet18", width=0.125, classes=archive.classes).eval()
    ckpt = save_checkpoint(root / "model.pt", model, meta={"input_size": SIZE})
    boxed = sorted({b.image_id for b in archive.boxes})
    records = [r for r in archive.records if r.image_id in boxed]
    images = torch.from_numpy(np.stack([to_model_input(load_image(r.path)[0], SIZE) for r in records]))
    logits, result = mine(model, images)
    per_image = boxes_from_maps(result.fused, original_sizes=[(128, 128)] * len(records))
    cols = box_columns(per_image, image_ids=[r.image_id for r in records], classes=archive.classes,
                       probs=torch.sigmoid(logits).numpy())
    (root / "out" / "boxes").mkdir(parents=True)
    pq.write_table(pa.table(cols, schema=BOXES_SCHEMA), root / "out" / "boxes" / "part-000000.parquet")
    return {"root": root, "archive": archive, "ckpt": ckpt, "records": records, "cols": cols}


def test_draw_boxes_colours_the_box_edges():
    canvas = np.zeros((20, 20, 3), np.uint8)
    draw_boxes(canvas, [(2, 3, 10, 5)], RED, thickness=1)
    assert tuple(canvas[3, 2]) == RED and tuple(canvas[7, 11]) == RED  # corners (x1 = 2 + 10 - 1, y1 = 3 + 5 - 1)
    assert tuple(canvas[5, 6]) == (0, 0, 0) and tuple(canvas[8, 11]) == (0, 0, 0)  # inside / outside
    scaled = draw_boxes(np.zeros((40, 40, 3), np.uint8), [(2, 3, 10, 5)], GREEN, scale=2.0, thickness=1)
    assert tuple(scaled[6, 4]) == GREEN and tuple(scaled[15, 23]) == GREEN


def test_heatmap_overlay_puts_hot_colours_on_the_peak():
    image = np.full((32, 32), 0.5, np.float32)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 3] = 1.0
    out = heatmap_overlay(image, heat)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    b, g, r = (int(v) for v in out[2, 29])  # on the peak: JET red
    assert r > b + 40  # JET(1) = dark red (0, 0, 128) blended with grey 128
    b2, g2, r2 = (int(v) for v in out[29, 2])  # far from it: JET blue
    assert b2 > r2 + 40  # JET(0) = dark blue
    np.testing.assert_array_equal(heatmap_overlay(image, None), np.full((32, 32, 3), 128, np.uint8))


def test_render_lays_panels_side_by_side():
    image = np.zeros((100, 200), np.float32)
    pic = render(image, [Panel("Mass", gt=[(10, 10, 50, 50)]), Panel("Nodule")], panel_size=100)
    # each panel 100 x 50 plus a 26-px header; two panels and a 4-px gap
    assert pic.shape == (50 + 26, 100 + 4 + 100, 3)
    assert (pic[26:, :100] == RED).all(axis=-1).any()


def test_show_cli_with_and_without_model(mined, capsys):
    cols = mined["cols"]
    image_id = str(cols["image_id"][0])
    out_dir = mined["root"]
    # without a model: boxes only
    png = out_dir / "plain.png"
    assert main(["show", str(out_dir / "out"), image_id, "--out", str(png), "--archive",
                 str(mined["archive"].root), "--panel-size", "128"]) == 0
    pic = cv2.imread(str(png))
    findings = list(dict.fromkeys([*cols["finding"][cols["image_id"] == image_id],
                                   *(b.finding for b in mined["archive"].boxes if b.image_id == image_id)]))
    assert pic.shape[1] == len(findings) * 128 + 4 * (len(findings) - 1)
    body = pic[52:]
    assert (body == np.array(GREEN)).all(axis=-1).any() and (body == np.array(RED)).all(axis=-1).any()
    # with the model: the heatmap is recomputed (coloured pixels beyond grey, red and green)
    png2 = out_dir / "heat.png"
    assert main(["show", str(out_dir / "out"), image_id, "--out", str(png2), "--archive",
                 str(mined["archive"].root), "--model", str(mined["ckpt"]), "--panel-size", "128"]) == 0
    pic2 = cv2.imread(str(png2))[52:].astype(int)
    chroma = np.abs(pic2[..., 0] - pic2[..., 2])
    assert (chroma > 40).mean() > 0.3  # most of the panel is tinted by the JET heatmap
    assert "heatmaps from" in capsys.readouterr().out


def test_show_cli_errors(mined, capsys):
    out = mined["root"] / "x.png"
    assert main(["show", str(mined["root"] / "out"), "nope.png", "--out", str(out), "--archive",
                 str(mined["archive"].root)]) == 2
    assert "has no image 'nope.png'" in capsys.readouterr().err
    assert main(["show", str(mined["root"] / "out"), "a.png", "--out", str(out)]) == 2


def test_eval_cli_table_and_wsol(mined, capsys):
    root = mined["root"]
    report = root / "eval.json"
    gt_csv = mined["archive"].root / "BBox_List_2017.csv"
    assert main(["eval", str(root / "out"), "--gt", str(gt_csv), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "T(IoU)=0.1" in text and "T(IoBB)=0.9" in text
    data = json.loads(report.read_text())
    cells = data["cells"]
    assert {c["metric"] for c in cells} == {"iou", "iobb"}
    for c in cells:
        assert 0 <= c["acc"] <= 1 and c["afp"] >= 0 and c["selected"] <= c["available"]
        if c["bound"] is not None:
            assert c["afp"] <= c["bound"] + 1e-9
    # the ground truth against itself through the CLI: Acc 1, AFP 0 everywhere
    assert main(["eval", str(gt_csv), "--gt", str(gt_csv)]) == 0
    rows = [ln.split()[1:] for ln in capsys.readouterr().out.split("\n\n")[0].splitlines()[2:]]  # the Acc table
    assert rows and all(cell.rstrip("*") == "1.00-0.00" for row in rows for cell in row)
    # WSOL metrics with the model and the archive's masks
    assert main(["eval", str(root / "out"), "--archive", str(mined["archive"].root), "--model",
                 str(mined["ckpt"]), "--json", str(report), "--iou", "0.3", "--iobb", "0.5"]) == 0
    wsol = json.loads(report.read_text())["wsol"]
    assert wsol and all(0 <= v["maxboxacc_v2"] <= 1 and 0 <= v["pxap"] <= 1 for v in wsol.values())


def test_eval_cli_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing"), "--gt", str(tmp_path / "gt.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "gt.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h]\na.png,Mass,1,2,3,4\n")
    assert main(["eval", str(tmp_path / "gt.csv"), "--gt", str(tmp_path / "gt.csv"), "--iou", "2"]) == 2


def test_show_cli_clear_panel(mined, capsys):
    """--clear adds the CLEAR picture of every class of the model: its pixels are the classes' hues (S = 1),
    scaled by the response, and the legend lists every class."""
    from miner.cam import class_maps
    from miner.clear import clear_picture, finding_hues, hsv_to_bgr
    from miner.data import load_image, to_model_input
    from miner.models import load_checkpoint

    cols = mined["cols"]
    image_id = str(cols["image_id"][0])
    root = mined["root"]
    png = root / "clear.png"
    args = ["show", str(root / "out"), image_id, "--out", str(png), "--archive", str(mined["archive"].root),
            "--panel-size", "128"]
    assert main([*args, "--model", str(mined["ckpt"]), "--clear"]) == 0
    assert "CLEAR picture of" in capsys.readouterr().out
    pic = cv2.imread(str(png))
    findings = list(dict.fromkeys([*cols["finding"][cols["image_id"] == image_id],
                                   *(b.finding for b in mined["archive"].boxes if b.image_id == image_id)]))
    assert pic.shape[1] == (len(findings) + 1) * 128 + 4 * len(findings)  # one more panel
    # the last panel (below the title and its header) is clear_picture of the model's maps at the panel size
    model, _ = load_checkpoint(mined["ckpt"])
    record = next(r for r in mined["records"] if r.image_id == image_id)
    image, _ = load_image(record.path)
    _, maps = class_maps(model, torch.from_numpy(to_model_input(image, SIZE)[None]), method="cam")
    expected = clear_picture(maps[0].numpy(), size=(128, 128))
    tile = pic[52:52 + 128, -128:]
    # boxes are drawn on the CLEAR panel too (and their labels): compare away from them
    box = (tile == np.array(GREEN)).all(axis=-1) | (tile == np.array(RED)).all(axis=-1)
    off = ~cv2.dilate(box.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert off.mean() > 0.3
    np.testing.assert_array_equal(tile[off], expected[off])
    hues = finding_hues(len(model.classes))
    swatches = {tuple(int(v) for v in hsv_to_bgr(np.asarray([h]), 1.0, 1.0)[0]) for h in hues}
    legend_area = pic[52 + 128:, -128:].reshape(-1, 3)
    assert swatches <= {tuple(int(v) for v in px) for px in legend_area}  # every class's swatch
    # --clear without a model is refused with one line
    assert main([*args, "--clear"]) == 2
    assert "--clear needs --model" in capsys.readouterr().err
