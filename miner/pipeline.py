"""The per-batch mining pipeline, in process: files -> pixels -> backend -> attention mining -> boxes -> rows.

    batch = decode_batch(records, input_size=backend.meta.input_size)    # CPU; one error row per bad file
    output = Pipeline(backend, mining=MiningConfig(steps=3)).run(batch)  # the backend's device
    output.boxes, output.errors, output.images                          # pyarrow tables (miner.io schemas)

The Ray job runs `decode_batch` in decode tasks and `Pipeline.run` in model actors; the benchmark's baseline
loop and ``miner demo`` call both in one process. Nothing here imports Ray.

Failures are contained per row. A file that does not decode becomes an error row of its `ImageError` kind
(missing, empty, truncated, corrupt, unsupported, too_large; ``decode`` for any other exception, its text
behind a sentence of ours); a file that resolves outside its archive's root is an ``outside_archive`` row,
never opened (`miner.data.confine`). An image whose logits or maps come out NaN or infinite becomes an error row of
kind ``non_finite`` (no boxes, no images row); a model whose outputs break its record raises `ModelError`
(`miner.backends.Backend.run`). If the model stage
raises for a batch, each image is run alone so that only the images that fail alone become error rows
(kind ``model``); when every image of a batch of several fails alone the fault is not the images' (a
broken model, an exhausted device) and the error is raised for the job to stop.
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from miner.config import MAX_PIXELS, BoxConfig, MiningConfig
from miner.io import BOXES_SCHEMA, ERRORS_SCHEMA, IMAGES_SCHEMA, empty_table, table_from_rows

#: findings that get boxes for an image (see `Pipeline`)
CLASS_MODES = ("labels", "predicted", "all")


@dataclass
class DecodedBatch:
    """Images of one batch, decoded and resized, plus an error row per file that did not decode.

    Attributes:
        image_ids, paths, labels: one per decoded image (labels: canonical finding names).
        images: np.ndarray[B, 1, H, W] float32 in [0, 1] (the model's input size).
        sizes: np.ndarray[B, 2] int32, original (height, width).
        errors: rows of `miner.io.ERRORS_SCHEMA` (image_id, path, kind, error).
        seconds: time spent decoding.
    """

    image_ids: list[str]
    paths: list[str]
    labels: list[tuple[str, ...]]
    images: np.ndarray
    sizes: np.ndarray
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.image_ids)

    def take(self, index: Sequence[int]) -> DecodedBatch:
        """The images at `index` (no error rows)."""
        index = list(index)
        return DecodedBatch([self.image_ids[i] for i in index], [self.paths[i] for i in index],
                            [self.labels[i] for i in index], self.images[index], self.sizes[index])


def error_row(image_id: str, path: str, kind: str, error: str) -> dict[str, str]:
    return {"image_id": image_id, "path": path, "kind": kind, "error": error}


def _one_line(err: BaseException) -> str:
    """An exception's text on one line (OpenCV's and others' messages span several)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def decode_batch(records: Sequence[tuple[str, str, Sequence[str]]], *,
                 input_size: tuple[int, int] | int, max_pixels: int | None = MAX_PIXELS) -> DecodedBatch:
    """Decode ``(image_id, path, labels)`` records and resize them for the model (`miner.data.to_model_input`).

    A record may carry a fourth item, the root its file must lie under (`miner.data.Record.root`): the file's
    resolved path is checked right before it is opened, and one outside becomes an ``outside_archive`` error row,
    never opened (`miner.data.confine`). None, or no fourth item: no check.

    Args:
        max_pixels: files whose header announces more pixels become ``too_large`` error rows, undecoded
            (`miner.data.load_image`).

    Returns:
        A `DecodedBatch` of the files that decoded, in record order, and an error row for every other one.
    """
    from miner.data import to_model_input
    from miner.data.confine import load_inside
    from miner.errors import ImageError

    started = time.perf_counter()
    size = (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))
    ids: list[str] = []
    paths: list[str] = []
    labels: list[tuple[str, ...]] = []
    pixels: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    errors: list[dict[str, str]] = []
    for image_id, path, record_labels, *root in records:
        try:
            image, original = load_inside(path, root[0] if root else None, max_pixels=max_pixels)
            pixels.append(to_model_input(image, size))
        except ImageError as err:
            errors.append(error_row(image_id, path, err.kind, str(err)))
            continue
        except Exception as err:  # one bad file never fails the job
            errors.append(error_row(image_id, path, "decode", f"{path}: decoding failed unexpectedly "
                                    f"({type(err).__name__}: {_one_line(err)})"))
            continue
        ids.append(image_id)
        paths.append(path)
        labels.append(tuple(record_labels))
        sizes.append(original)
    images = np.stack(pixels) if pixels else np.zeros((0, 1, *size), np.float32)
    return DecodedBatch(ids, paths, labels, np.ascontiguousarray(images, dtype=np.float32),
                        np.asarray(sizes, dtype=np.int32).reshape(-1, 2), errors,
                        time.perf_counter() - started)


@dataclass
class BatchOutput:
    """Rows of one batch (tables with the `miner.io` schemas) and when it ran (``time.time()`` stamps)."""

    boxes: pa.Table
    errors: pa.Table
    images: pa.Table
    started: float
    finished: float


class Pipeline:
    """Backend -> attention mining -> boxes for decoded batches, on the backend's device.

    Args:
        backend: a `miner.backends.Backend` (its `meta` gives classes, input size, head type, and the model's
            settings record: the mining and box settings it was trained and calibrated with, `miner.settings`).
        mining: `miner.config.MiningConfig` (used as it is), or a dict of fields that override the base settings,
            or None (the base settings).
        boxes: `miner.config.BoxConfig`, a dict of overrides, or None, likewise.
        recipe: take the base settings from this named recipe instead of the model's record.
        classes: which findings of an image get boxes: ``labels`` (the archive's labels of the image that are
            in the model's class list), ``predicted`` (probability >= `prob_threshold`) or ``all``.
        prob_threshold: see `classes`.

    `settings` holds the effective settings (`miner.settings.InferenceSettings`: the model's record with the
    options above, the maps' method and the input size as the backend runs them); `recipe`, `mining` and
    `box_config` are its parts.

    Only images with at least one selected finding go through mining and boxes; every decoded image gets a
    row in ``images`` (its size, number of boxes and the probabilities of all classes).
    """

    def __init__(self, backend: Any, *, mining: Any = None, boxes: Any = None, classes: str = "labels",
                 prob_threshold: float = 0.5, recipe: str | None = None) -> None:
        from miner.boxes import cell_shift
        from miner.errors import UsageError
        from miner.settings import InferenceSettings

        if classes not in CLASS_MODES:
            raise UsageError(f"--classes must be one of {', '.join(CLASS_MODES)} (got {classes!r})")
        self.backend = backend
        meta = backend.meta
        recorded = InferenceSettings.from_record(getattr(meta, "inference", None),
                                                 source=getattr(backend, "source", None))
        size = meta.input_size
        self.settings = replace(recorded.with_overrides(recipe=recipe, mining=mining, boxes=boxes),
                                method=getattr(meta, "method", None) or recorded.method,
                                input_size=(int(size), int(size)) if isinstance(size, int) else
                                (int(size[0]), int(size[1])))
        if self.box_config.regressors:  # box regressors are numbers from a model file: checked before any image
            from miner.box_regression import read_regressors
            from miner.errors import ModelError

            try:
                read_regressors(self.box_config.regressors)
            except UsageError as err:
                where = getattr(backend, "source", None) or "the model"
                raise ModelError(f"{where}: its settings record's {err}") from None
        self.shift = cell_shift(meta.input_size, meta.map_size, getattr(meta, "cell_origin", "centre"))
        if self.mining.steps < 1:
            raise UsageError(f"--steps must be at least 1 (got {self.mining.steps})")
        backend.meta.check_mining(self.mining.steps)
        self.classes = classes
        self.prob_threshold = prob_threshold
        self.class_names: tuple[str, ...] = tuple(backend.meta.classes)
        self._class_index = {name: i for i, name in enumerate(self.class_names)}

    # -- the settings' parts (calibration and benchmarks try other levels and steps on one pipeline) ------------
    @property
    def recipe(self) -> str:
        return self.settings.recipe

    @property
    def mining(self) -> MiningConfig:
        return self.settings.mining

    @mining.setter
    def mining(self, value: MiningConfig) -> None:
        self.settings = replace(self.settings, mining=value)

    @property
    def box_config(self) -> BoxConfig:
        return self.settings.boxes

    @box_config.setter
    def box_config(self, value: BoxConfig) -> None:
        self.settings = replace(self.settings, boxes=value)

    # -- one batch ---------------------------------------------------------------------------------------
    def run(self, batch: DecodedBatch) -> BatchOutput:
        """Rows of `batch`: boxes of its selected findings, one images row per image, and error rows (the
        batch's decode errors plus images the model stage failed on alone)."""
        from miner.errors import MinerError

        started = time.time()
        errors = list(batch.errors)
        boxes: dict[str, np.ndarray] | None = None
        image_rows: list[dict[str, Any]] = []
        if len(batch):
            try:
                boxes, image_rows, lost = self._rows(batch)
                errors += lost
            except MinerError:
                raise
            except Exception as batch_error:
                parts: list[dict[str, np.ndarray]] = []
                failed: list[tuple[int, BaseException]] = []
                for i in range(len(batch)):
                    try:
                        one_boxes, one_images, one_lost = self._rows(batch.take([i]))
                    except Exception as err:  # noqa: BLE001 - contained per row
                        failed.append((i, err))
                        continue
                    parts.append(one_boxes)
                    image_rows += one_images
                    errors += one_lost
                if len(batch) > 1 and len(failed) == len(batch):
                    raise batch_error
                boxes = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else None
                for i, err in failed:
                    last = traceback.format_exception_only(type(err), err)[-1].strip()
                    errors.append(error_row(batch.image_ids[i], batch.paths[i], "model",
                                            f"{batch.paths[i]}: the model stage failed on this image alone "
                                            f"({last})"))
        return BatchOutput(
            boxes=pa.table(boxes, schema=BOXES_SCHEMA) if boxes else empty_table(BOXES_SCHEMA),
            errors=table_from_rows(errors, ERRORS_SCHEMA),
            images=table_from_rows(image_rows, IMAGES_SCHEMA),
            started=started,
            finished=time.time(),
        )

    def select(self, probs: np.ndarray, labels: Sequence[Sequence[str]]) -> np.ndarray:
        """np.ndarray[B, C] bool: which (image, class) pairs get boxes under `classes`."""
        from miner.boxes import select_classes

        matrix = None
        if self.classes == "labels":
            matrix = np.zeros(probs.shape, dtype=bool)
            for b, names in enumerate(labels):
                for name in names:
                    c = self._class_index.get(name)
                    if c is not None:
                        matrix[b, c] = True
        return select_classes(self.classes, probs=probs, labels=matrix, prob_threshold=self.prob_threshold)

    def mine_maps(self, maps: Any, images: Any, chosen: np.ndarray,
                  sizes: Sequence[tuple[int, int]]) -> tuple[Any, list[list[dict[str, Any]]]]:
        """Attention mining and boxes of one batch's maps, with this pipeline's settings.

        Args:
            maps: the backend's maps (Tensor[B, C, h, w]) of `images` (Tensor[B, in_chans, H, W], for recompute).
            chosen: np.ndarray[B, C] bool, the (image, finding) pairs that get boxes.
            sizes: original (height, width) of each image.

        Returns:
            (`miner.mining.MiningResult`, per image a list of box dicts of `miner.boxes.boxes_from_mining`).
        """
        mined, found, _ = self._mine(maps, images, chosen, sizes)
        return mined, found

    def _mine(self, maps: Any, images: Any, chosen: np.ndarray,
              sizes: Sequence[tuple[int, int]]) -> tuple[Any, list[list[dict[str, Any]]], np.ndarray]:
        """`mine_maps`, plus np.ndarray[B] bool: the images whose recomputed maps of erased features (mining
        steps >= 2 of non-linear heads) held a NaN or an infinity (their maps normalise to 0: no boxes)."""
        import torch

        from miner.backends.base import non_finite
        from miner.boxes import boxes_from_mining
        from miner.mining import attention_mining

        m = self.mining
        unstable = torch.zeros(maps.shape[0], dtype=torch.bool, device=maps.device)
        recompute = self.backend.recompute(images)
        if recompute is not None:
            model_recompute = recompute

            def recompute(masks: Any) -> Any:
                raw = model_recompute(masks)
                if raw.shape == maps.shape:
                    unstable.logical_or_(non_finite(raw))
                return raw

        mined = attention_mining(maps, steps=m.steps, threshold=m.threshold, connectivity=m.connectivity,
                                 normalize=m.normalize, recompute=recompute)
        found = boxes_from_mining(mined, original_sizes=sizes, classes=chosen, config=self.box_config,
                                  class_names=self.class_names, shift=self.shift, images=images)
        return mined, found, unstable.cpu().numpy()

    def _rows(self, batch: DecodedBatch, *, select: str | None = None) -> tuple[dict[str, np.ndarray],
                                                                                list[dict[str, Any]],
                                                                                list[dict[str, str]]]:
        """Box columns (`miner.boxes.box_columns`), images rows and ``non_finite`` error rows of one batch
        (`select` overrides `classes`).

        An image whose logits or maps (or recomputed maps of erased features) hold a NaN or an infinity gets an
        error row of kind ``non_finite`` instead of an images row, and no boxes: its maps would normalise to 0
        and say "nothing found" where the model said nothing. The other images of the batch are unaffected
        (every image's outputs depend on that image alone).
        """
        import torch

        from miner.backends.base import non_finite
        from miner.boxes import box_columns

        per_image: list[list[dict[str, Any]]] = [[] for _ in range(len(batch))]
        with torch.inference_mode():
            images = torch.from_numpy(np.require(batch.images, requirements="W"))  # Ray hands read-only arrays
            logits, maps = self.backend.run(images)
            bad_logits = non_finite(logits).cpu().numpy()
            bad_maps = non_finite(maps).cpu().numpy()
            bad_erased = np.zeros(len(batch), dtype=bool)
            probs = torch.sigmoid(logits.float()).cpu().numpy()
            chosen = np.ones(probs.shape, dtype=bool) if select == "all" else self.select(probs, batch.labels)
            chosen[bad_logits | bad_maps] = False
            rows = np.flatnonzero(chosen.any(axis=1))
            if rows.size:
                # mining and boxes only for the images with a selected finding
                index = torch.as_tensor(rows, device=maps.device)
                sub_maps = maps if rows.size == len(batch) else maps.index_select(0, index)
                sub_images = images if rows.size == len(batch) else images[torch.as_tensor(rows)]
                sizes = [tuple(batch.sizes[r].tolist()) for r in rows]
                _, found, unstable = self._mine(sub_maps, sub_images, chosen[rows], sizes)
                for r, boxes, lost in zip(rows, found, unstable):
                    per_image[r] = boxes
                    bad_erased[r] = lost
        bad = bad_logits | bad_maps | bad_erased
        good = [b for b in range(len(batch)) if not bad[b]]
        columns = box_columns([per_image[b] for b in good], image_ids=[batch.image_ids[b] for b in good],
                              classes=self.class_names, probs=probs[good])
        image_rows = [{"image_id": batch.image_ids[b], "height": int(batch.sizes[b, 0]),
                       "width": int(batch.sizes[b, 1]), "boxes": len(per_image[b]),
                       "probs": probs[b].astype(np.float32).tolist()} for b in good]
        errors = []
        for b in np.flatnonzero(bad):
            what = " and ".join(name for name, flags in (("logits", bad_logits), ("maps", bad_maps),
                                                         ("maps of erased features", bad_erased)) if flags[b])
            errors.append(error_row(batch.image_ids[b], batch.paths[b], "non_finite",
                                    f"{batch.paths[b]}: the model's {what} for this image are NaN or infinite, so "
                                    "it has no boxes (an extreme image, or a model that overflows on it)"))
        return columns, image_rows, errors
