"""`miner.figure`: the per-step cases equal the mining pipeline's own computation; the drawing puts things where
they belong."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from miner.figure import MiningCase, mining_cases, render_case, steps_figure
from miner.show import GREEN, RED, WHITE

SIZE = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from miner.backends.torch_backend import TorchBackend
    from miner.models import create_model
    from miner.phantoms import make_phantoms

    root = tmp_path_factory.mktemp("figure")
    archive = make_phantoms(root / "archive", images=12, size=96, seed=5, workers=1)
    torch.manual_seed(0)
    model = create_model("resnet18_msa", width=0.125, classes=archive.classes).eval()
    backend = TorchBackend(model, input_size=(SIZE, SIZE))
    paths = {r.image_id: r.path for r in archive.records}
    gt: dict[tuple[str, str], list] = {}
    for b in archive.boxes:
        gt.setdefault((b.image_id, b.finding), []).append((b.x, b.y, b.w, b.h))
    items = [(i, paths[i], f, g) for (i, f), g in sorted(gt.items())][:5]
    return archive, backend, items


def test_cases_equal_the_pipeline(setup):
    """Step maps, masks and boxes of each case are those of attention_mining + the job's Pipeline."""
    from miner.config import MiningConfig
    from miner.mining import attention_mining
    from miner.pipeline import Pipeline, decode_batch

    archive, backend, items = setup
    cases = mining_cases(backend, items, mining=MiningConfig(steps=3), batch_size=2)
    assert [(c.image_id, c.finding) for c in cases] == [(i, f) for i, _, f, _ in items]
    labels = {r.image_id: r.labels for r in archive.records}
    for case, (image_id, path, finding, gt) in zip(cases, items):
        batch = decode_batch([(image_id, path, (finding,))], input_size=SIZE)
        images = torch.from_numpy(batch.images)
        _, maps = backend.run(images)
        c = list(backend.meta.classes).index(finding)
        ref = attention_mining(maps, steps=3)
        np.testing.assert_allclose(case.step_maps, ref.step_maps[:, 0, c].numpy(), atol=1e-5)
        np.testing.assert_allclose(case.fused, ref.fused[0, c].numpy(), atol=1e-5)
        kept = ref.masks[:, 0, c].numpy()
        np.testing.assert_array_equal(case.erased[0], ~kept[0])
        np.testing.assert_array_equal(case.erased[1], kept[0] & ~kept[1])
        assert case.gt == [tuple(map(float, b)) for b in gt]
        # the boxes the job writes for this (image, finding)
        rows = Pipeline(backend, classes="labels").run(batch).boxes.to_pylist()
        expected = [(r["x"], r["y"], r["w"], r["h"]) for r in sorted(rows, key=lambda r: r["rank"])]
        np.testing.assert_allclose(np.asarray(case.mined).reshape(-1, 4), np.asarray(expected).reshape(-1, 4),
                                   atol=1e-4)
        assert finding in labels[image_id]


def _case(steps: int = 3) -> MiningCase:
    h = w = 8
    maps = np.zeros((steps, h, w), np.float32)
    maps[0, 5:7, 1:3] = 1.0  # pixels 50..69 (rows) x 10..29 (columns) of an 80-pixel panel
    erased = np.zeros((steps, h, w), bool)
    erased[0, 5:7, 1:3] = True
    return MiningCase(image_id="x.png", finding="Nodule", image=np.full((80, 80), 0.5, np.float32), prob=0.9,
                      step_maps=maps, erased=erased, fused=maps[0], gt=[(10.0, 10.0, 20.0, 20.0)],
                      mined=[(50.0, 50.0, 20.0, 20.0)])


def test_render_case_layout_and_colours():
    panel, header, gap = 80, 22, 3
    row = render_case(_case(), panel_size=panel)
    assert row.shape == (panel + header, 5 * panel + 4 * gap, 3)  # image, H_1..H_3, H_f
    tile = row[header:, :panel]
    assert tuple(tile[10, 10]) == RED  # ground-truth corner on the plain image
    h1 = row[header:, panel + gap: 2 * panel + gap]
    assert tuple(h1[50, 15]) == WHITE and tuple(h1[60, 10]) == WHITE  # the erased component's outline
    assert tuple(h1[60, 20]) != WHITE
    hf = row[header:, -panel:]
    assert tuple(hf[50, 50]) == GREEN and tuple(hf[10, 10]) == RED


def test_steps_figure_stacks_rows():
    fig = steps_figure([_case(), _case()], panel_size=64, title="t")
    one = render_case(_case(), panel_size=64)
    assert fig.shape == (26 + 2 * one.shape[0] + 4, one.shape[1], 3)
    with pytest.raises(ValueError):
        steps_figure([])
