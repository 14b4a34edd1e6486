from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from miner.backends import open_backend
from miner.boxes import boxes_from_maps
from miner.cam import class_maps
from miner.config import BoxConfig, MiningConfig
from miner.data import load_image, to_model_input
from miner.findings import CHESTXRAY14
from miner.io import BOXES_SCHEMA, ERRORS_SCHEMA, IMAGES_SCHEMA
from miner.mining import attention_mining
from miner.models import create_model
from miner.models.checkpoint import load_checkpoint, save_checkpoint
from miner.phantoms import make_phantoms
from miner.phantoms.bad_files import inject_bad_files
from miner.pipeline import DecodedBatch, Pipeline, decode_batch

SIZE = 96


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    make_phantoms(root, images=12, size=160, seed=3)
    bad = inject_bad_files(root, seed=1)
    from miner.data import read_archive

    return read_archive(root), bad


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("resnet18_msa", classes=CHESTXRAY14, width=0.125)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", model, meta={"input_size": SIZE})


def _records(arch):
    return [(r.image_id, r.path, r.labels) for r in arch.records]


def test_decode_batch_keeps_order_and_reports_each_bad_file(archive):
    arch, bad = archive
    batch = decode_batch(_records(arch), input_size=SIZE)
    bad_ids = set(bad.values())
    good = [r for r in arch.records if r.image_id not in bad_ids]
    assert batch.image_ids == [r.image_id for r in good]
    assert batch.images.shape == (len(good), 1, SIZE, SIZE) and batch.images.dtype == np.float32
    # pixels are exactly the one resize of the data module; sizes are the original ones
    image, original = load_image(good[0].path)
    np.testing.assert_array_equal(batch.images[0], to_model_input(image, SIZE))
    assert tuple(batch.sizes[0]) == original == (160, 160)
    assert {row["image_id"]: row["kind"] for row in batch.errors} == {v: k for k, v in bad.items()}


def _reference_rows(checkpoint, batch: DecodedBatch, chosen: np.ndarray, mining: MiningConfig, boxes: BoxConfig):
    """Boxes computed without the pipeline: the checkpoint's model through miner.cam directly."""
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    logits, maps = class_maps(model, torch.from_numpy(batch.images.copy()), method="cam")
    probs = torch.sigmoid(logits).detach().numpy()
    mined = attention_mining(maps.detach(), steps=mining.steps, threshold=mining.threshold)
    per_image = boxes_from_maps(mined.fused, original_sizes=[tuple(s) for s in batch.sizes.tolist()],
                                classes=chosen, config=boxes)
    rows = []
    for b, found in enumerate(per_image):
        for box in found:
            c = box["class_index"]
            rows.append((batch.image_ids[b], CHESTXRAY14[c], c, box["rank"], float(box["x"]), float(box["y"]),
                         float(box["w"]), float(box["h"]), float(box["score"]), float(probs[b, c])))
    return probs, rows


@pytest.mark.parametrize("mode", ["labels", "all"])
def test_pipeline_rows_match_the_parts(archive, checkpoint, mode):
    arch, _ = archive
    batch = decode_batch(_records(arch), input_size=SIZE)
    backend = open_backend(checkpoint, backend="torch", device="cpu", method="cam")
    mining, boxes = MiningConfig(steps=2), BoxConfig()
    out = Pipeline(backend, mining=mining, boxes=boxes, classes=mode).run(batch)
    assert out.boxes.schema == BOXES_SCHEMA and out.errors.schema == ERRORS_SCHEMA
    assert out.images.schema == IMAGES_SCHEMA
    if mode == "all":
        chosen = np.ones((len(batch), len(CHESTXRAY14)), bool)
    else:
        chosen = np.array([[name in labels for name in CHESTXRAY14] for labels in batch.labels])
        assert chosen.any() and not chosen.all()  # the phantom archive has labelled and unlabelled images
    probs, expected = _reference_rows(checkpoint, batch, chosen, mining, boxes)
    got = out.boxes.to_pydict()
    rows = list(zip(*(got[k] for k in ("image_id", "finding", "class_index", "rank", "x", "y", "w", "h", "score",
                                       "prob"))))
    assert len(rows) == len(expected) > 0
    for row, ref in zip(rows, expected):
        assert row[:4] == ref[:4]
        np.testing.assert_allclose(row[4:], ref[4:], rtol=1e-5, atol=1e-5)
    # every (image, finding) with boxes was selected; images rows count them and carry all probabilities
    assert all(chosen[batch.image_ids.index(i), c] for i, c in zip(got["image_id"], got["class_index"]))
    images = out.images.to_pydict()
    assert images["image_id"] == batch.image_ids
    assert images["boxes"] == [got["image_id"].count(i) for i in batch.image_ids]
    np.testing.assert_allclose(np.array(images["probs"]), probs, rtol=1e-5, atol=1e-6)
    assert out.errors.num_rows == len(batch.errors) == 5


class _FlakyBackend:
    """Wraps a backend; raises for any batch holding an image whose mean is above `limit`."""

    def __init__(self, inner, limit):
        self.inner, self.limit, self.meta = inner, limit, inner.meta

    def run(self, images):
        if (images.mean(dim=(1, 2, 3)) > self.limit).any():
            raise RuntimeError("poisoned image")
        return self.inner.run(images)

    def recompute(self, images):
        return self.inner.recompute(images)


def test_pipeline_contains_a_failing_image(archive, checkpoint):
    arch, _ = archive
    batch = decode_batch(_records(arch)[:6], input_size=SIZE)
    backend = open_backend(checkpoint, backend="torch", device="cpu")
    means = batch.images.mean(axis=(1, 2, 3))
    worst = int(np.argmax(means))
    flaky = _FlakyBackend(backend, limit=float(np.sort(means)[-2]) + 1e-6)
    out = Pipeline(flaky, classes="all").run(batch)
    errors = out.errors.to_pydict()
    model_errors = [(i, k) for i, k in zip(errors["image_id"], errors["kind"]) if k == "model"]
    assert model_errors == [(batch.image_ids[worst], "model")]
    assert "poisoned image" in errors["error"][errors["kind"].index("model")]
    assert out.images.column("image_id").to_pylist() == [i for j, i in enumerate(batch.image_ids) if j != worst]
    # the other images' rows equal a run without the poisoned one (up to float rounding: they ran one by one)
    clean = Pipeline(backend, classes="all").run(batch.take([j for j in range(len(batch)) if j != worst]))
    got, ref = out.boxes.to_pydict(), clean.boxes.to_pydict()
    for key in ("image_id", "finding", "class_index", "rank"):
        assert got[key] == ref[key]
    for key in ("x", "y", "w", "h", "score", "prob", "threshold"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-5)
    # when every image fails alone the fault is not the images': the batch raises
    with pytest.raises(RuntimeError, match="poisoned"):
        Pipeline(_FlakyBackend(backend, limit=-1.0), classes="all").run(batch)


def test_pipeline_without_selection_gives_images_rows_only(archive, checkpoint):
    arch, _ = archive
    unlabelled = [(r.image_id, r.path, ()) for r in arch.records[:3]]
    batch = decode_batch(unlabelled, input_size=SIZE)
    backend = open_backend(checkpoint, backend="torch", device="cpu")
    out = Pipeline(backend, classes="labels").run(batch)
    assert out.boxes.num_rows == 0
    assert out.images.column("boxes").to_pylist() == [0] * len(batch)
    strict = Pipeline(backend, classes="predicted", prob_threshold=1.01).run(batch)
    assert strict.boxes.num_rows == 0
    every = Pipeline(backend, mining=replace(MiningConfig(), steps=1), classes="predicted",
                     prob_threshold=0.0).run(batch)
    assert set(every.boxes.column("class_index").to_pylist()) <= set(range(len(CHESTXRAY14)))
    assert every.boxes.num_rows > 0


MARK = np.float32(0.123456)  # a pixel value no decoded phantom holds at (0, 0): marks the image to poison


def _marked(images) -> torch.Tensor:
    return images[:, 0, 0, 0] == torch.tensor(MARK, dtype=images.dtype, device=images.device)


def _poisoned_model(model):
    """`model`, whose features (and so logits and maps) are NaN for every image marked with MARK at pixel (0, 0)."""
    base = type(model)

    class Poisoned(base):
        def forward_features(self, x):
            features = base.forward_features(self, x)
            return torch.where(_marked(x).view(-1, 1, 1, 1), torch.full_like(features, float("nan")), features)

    model.__class__ = Poisoned
    return model


def _same_boxes(got, want):
    """Box rows of the same images, findings and ranks, at the same places (float rounding of other batches)."""
    got, want = got.to_pydict(), want.to_pydict()
    for key in ("image_id", "finding", "class_index", "rank"):
        assert got[key] == want[key]
    for key in ("x", "y", "w", "h", "score", "prob", "threshold"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-4)


def test_an_image_with_nan_maps_gets_its_own_error_row_and_its_neighbours_keep_their_boxes(archive, checkpoint):
    from miner.backends.torch_backend import TorchBackend

    arch, _ = archive
    batch = decode_batch(_records(arch)[:6], input_size=SIZE)
    assert len(batch) >= 3
    poisoned_index = 1
    batch.images[poisoned_index, 0, 0, 0] = MARK
    model, _ = load_checkpoint(checkpoint)
    backend = TorchBackend(_poisoned_model(model), input_size=(SIZE, SIZE), device="cpu")
    _, maps = backend.run(torch.from_numpy(batch.images))
    assert torch.isnan(maps[poisoned_index]).all() and torch.isfinite(maps[[0, 2]]).all()  # the model's doing

    out = Pipeline(backend, classes="all").run(batch)
    poisoned = batch.image_ids[poisoned_index]
    rows = [r for r in out.errors.to_pylist() if r["kind"] == "non_finite"]
    assert [(r["image_id"], r["path"]) for r in rows] == [(poisoned, batch.paths[poisoned_index])]
    assert "the model's logits and maps for this image are NaN or infinite" in rows[0]["error"]
    assert out.errors.num_rows == len(batch.errors) + 1  # the decode errors, and this one
    others = [i for i in range(len(batch)) if i != poisoned_index]
    assert out.images.column("image_id").to_pylist() == [batch.image_ids[i] for i in others]  # no images row
    assert poisoned not in out.boxes.column("image_id").to_pylist()
    # the neighbours' rows are those of a clean model on the batch without the poisoned image
    clean = Pipeline(open_backend(checkpoint, backend="torch", device="cpu"), classes="all").run(batch.take(others))
    assert out.boxes.num_rows > 0
    _same_boxes(out.boxes, clean.boxes)
    np.testing.assert_allclose(np.array(out.images.column("probs").to_pylist()),
                               np.array(clean.images.column("probs").to_pylist()), rtol=1e-5, atol=1e-6)


class _UnstableRecompute:
    """Wraps a backend; its maps of erased features (mining steps >= 2) are +inf for images marked with MARK."""

    def __init__(self, inner):
        self.inner, self.meta = inner, inner.meta

    def run(self, images, masks=None):
        return self.inner.run(images, masks=masks)

    def recompute(self, images):
        inner = self.inner.recompute(images)
        marked = _marked(images)

        def recompute(masks):
            maps = inner(masks)
            return torch.where(marked.view(-1, 1, 1, 1), torch.full_like(maps, float("inf")), maps)

        return recompute


def test_an_image_whose_recomputed_maps_overflow_gets_an_error_row():
    """A non-linear head (maps of erased features recomputed at every mining step): finite first maps, infinite
    recomputed ones for one image -> that image is a non_finite row, the others are untouched."""
    from miner.backends.torch_backend import TorchBackend

    torch.manual_seed(0)
    model = create_model("resnet18", classes=CHESTXRAY14, width=0.125, head="mlp")
    backend = TorchBackend(model, input_size=(64, 64), method="gradcam", device="cpu")
    assert backend.meta.masks_input
    rng = np.random.default_rng(0)
    images = rng.random((3, 1, 64, 64), dtype=np.float32)
    images[2, 0, 0, 0] = MARK
    batch = DecodedBatch(["a", "b", "c"], ["a.png", "b.png", "c.png"], [()] * 3, images,
                         np.full((3, 2), 64, np.int32))
    mining = replace(MiningConfig(), steps=2)
    out = Pipeline(_UnstableRecompute(backend), mining=mining, classes="all").run(batch)
    assert [(r["image_id"], r["kind"]) for r in out.errors.to_pylist()] == [("c", "non_finite")]
    assert "maps of erased features for this image are NaN or infinite" in out.errors.to_pylist()[0]["error"]
    assert out.images.column("image_id").to_pylist() == ["a", "b"]
    clean = Pipeline(backend, mining=mining, classes="all").run(batch.take([0, 1]))
    _same_boxes(out.boxes, clean.boxes)
