"""The report's galleries: which boxes are shown, and their pictures, drawn as `miner show` draws them.

Per finding two galleries, each bounded whatever the size of the job (`miner.config.ReportConfig`):

- **top**: the ``top`` best-scoring images of the finding, each with its best box (one box per image, so that
  one image's three boxes do not fill the gallery);
- **sample**: ``sample`` boxes drawn uniformly at random (seeded by the config's seed and the finding's name) from
  the finding's other boxes, shown in descending score: what a typical box, and a doubtful one, looks like.

Each entry has a thumbnail (the image with that box in green and the finding's ground-truth boxes in red; with
a model, the fused heatmap H_f under it and the image's CLEAR picture beside it) linking to a full-size picture
(every mined box of the finding on the image with rank and score, ground truth, H_f, and the CLEAR picture with
its legend). Pictures are drawn by `miner.show.render`; with a model, the maps come from a `miner.backends`
backend and `miner.mining.attention_mining` with the job's own mining options, as the job computed them. File
names are the finding's slug and the entry's position, never the image's name.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from miner.config import ReportConfig

Box = tuple[float, float, float, float]


@dataclass
class Entry:
    """One gallery tile.

    Attributes:
        kind: ``top`` or ``sample``; position: 1-based within its gallery.
        row: the box's row in the job's boxes table.
        iou: the box's best IoU with a ground-truth box of the finding on the image (None: no ground truth).
        thumb, picture: paths of the thumbnail and the full-size picture, relative to the report's folder.
        size: (width, height) of the thumbnail once drawn.
        error: why the image could not be drawn ("" when it was).
    """

    kind: str
    position: int
    finding: str
    image_id: str
    row: int
    box: Box
    rank: int
    score: float
    prob: float
    iou: float | None = None
    thumb: str = ""
    picture: str = ""
    size: tuple[int, int] = (0, 0)
    error: str = ""


def select(image_ids: np.ndarray, scores: np.ndarray, rows: np.ndarray, *, finding: str,
           config: ReportConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the top and the sample gallery of one finding.

    Args:
        image_ids, scores: of the finding's boxes (np.ndarray[N] each); rows: their rows in the boxes table.

    Returns:
        (top rows: the best box of each of the ``top`` best images, best first; sample rows: ``sample`` boxes
        drawn uniformly without replacement from the other boxes, best first).
    """
    n = len(rows)
    if n == 0:
        return rows[:0], rows[:0]
    order = np.lexsort((image_ids.astype(str), -scores))  # best score first, ties by image name
    _, first = np.unique(image_ids[order].astype(str), return_index=True)  # each image's best box
    best_per_image = order[np.sort(first)]
    top = best_per_image[: config.top]
    rest = np.setdiff1d(np.arange(n), top)
    rng = np.random.default_rng([config.seed, zlib.crc32(finding.encode())])
    sample = rng.choice(rest, size=min(config.sample, len(rest)), replace=False) if len(rest) else rest
    sample = sample[np.lexsort((image_ids[sample].astype(str), -scores[sample]))]
    return rows[top], rows[sample]


class MapSource:
    """Fused heatmaps H_f and raw class maps of images, from a model through a `miner.backends` backend.

    Args:
        model: a checkpoint, ONNX graph or engine (`miner.backends.open_backend`).
        backend_options: the job's ``backend_options`` (``method``, ``layer`` of a checkpoint's maps).
        mining: the job's mining options (overrides of the model's recipe settings, or all
            `miner.config.MiningConfig` fields as older jobs recorded them); recipe: the job's ``--recipe``.
    """

    def __init__(self, model: str | Path, *, backend_options: Mapping[str, Any] | None = None,
                 mining: Mapping[str, Any] | None = None, recipe: str | None = None) -> None:
        from miner.backends import backend_for_path, open_backend
        from miner.config import MiningConfig
        from miner.pipeline import Pipeline

        options = {}
        if backend_for_path(Path(model)) == "torch":  # graphs and engines carry their own method and layer
            options = {k: v for k, v in dict(backend_options or {}).items()
                       if k in ("method", "layer", "plain_maps")}
        self.backend = open_backend(model, **options)
        known = MiningConfig.__dataclass_fields__
        # the settings the job's pipeline resolved: the model's recipe (or the job's --recipe), then the job's options
        self.mining = Pipeline(self.backend, recipe=recipe,
                               mining={k: v for k, v in dict(mining or {}).items() if k in known}).mining
        self.backend.meta.check_mining(self.mining.steps)
        self.classes = list(self.backend.meta.classes)

    def maps(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(fused H_f np.ndarray[B, C, h, w], raw class maps np.ndarray[B, C, h, w]) of grey images in [0, 1]."""
        import torch

        from miner.data import to_model_input
        from miner.mining import attention_mining

        size = tuple(int(v) for v in self.backend.meta.input_size)
        with torch.inference_mode():
            pixels = torch.from_numpy(np.stack([to_model_input(image, size) for image in images]))
            _, maps = self.backend.run(pixels)
            m = self.mining
            result = attention_mining(maps, steps=m.steps, threshold=m.threshold, connectivity=m.connectivity,
                                      normalize=m.normalize, recompute=self.backend.recompute(pixels))
            return result.fused.float().cpu().numpy(), maps.float().cpu().numpy()


def draw(
    entries: Sequence[Entry],
    root: Path,
    *,
    paths: Mapping[str, Any],
    gt: Mapping[tuple[str, str], list[Box]],
    mined: Callable[[str, str], tuple[list[Box], list[str]]],
    maps: MapSource | None,
    config: ReportConfig,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Draw every entry's thumbnail and full-size picture under `root` (sets `Entry.size` or `Entry.error`).

    Args:
        paths: image id -> image file, or its `miner.data.Record` (its file checked against the archive's root
            right before it is opened: one outside gets the reason instead of pictures, `miner.data.confine`);
            an id without a path gets an error instead of pictures.
        gt: (image id, finding) -> ground-truth boxes.
        mined: (image id, finding) -> (every mined box of the finding on the image, best rank first; labels).
        maps: heatmaps and CLEAR pictures from a model, or None (boxes on the plain image).
        progress: called with the number of images done after each batch.
    """
    import cv2

    from miner.data.confine import load_record
    from miner.errors import ImageError
    from miner.io import visible
    from miner.show import Panel, render

    by_image: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        by_image[entry.image_id].append(entry)
    ids = list(by_image)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)]
    for start in range(0, len(ids), max(1, config.batch_size)):
        batch = ids[start:start + config.batch_size]
        loaded: dict[str, np.ndarray] = {}
        for image_id in batch:
            path = paths.get(image_id)
            if path is None:
                for entry in by_image[image_id]:
                    entry.error = "not in the archive given to the report"
                continue
            try:
                loaded[image_id] = load_record(path)[0]  # a Record: checked against its root right before
            except ImageError as err:
                for entry in by_image[image_id]:
                    entry.error = str(err)
        fused = raw = None
        names = list(loaded)
        if maps is not None and names:
            fused, raw = maps.maps([loaded[i] for i in names])
        for b, image_id in enumerate(names):
            image = loaded[image_id]
            for entry in by_image[image_id]:
                heat = clear = None
                note = ""
                if maps is not None:
                    if entry.finding in maps.classes:
                        heat = fused[b, maps.classes.index(entry.finding)]
                        note = f"H_f, T={maps.mining.steps}"
                    else:
                        note = "not a class of the model"
                    clear = raw[b]
                truth = gt.get((image_id, entry.finding), [])
                name = visible(entry.finding)  # drawn text: controls escaped as on the pages
                small = [Panel(name, heat=heat, gt=truth, mined=[entry.box])]
                boxes, labels = mined(image_id, entry.finding)
                large = [Panel(name, heat=heat, gt=truth, mined=boxes, labels=labels, note=note)]
                if clear is not None:
                    small.append(Panel("CLEAR", clear=clear))
                    large.append(Panel("CLEAR: dominant finding", clear=clear, clear_names=tuple(maps.classes)))
                thumb = render(image, small, panel_size=config.thumb_size, header=False)
                title = f"{visible(image_id)}  ({image.shape[1]}x{image.shape[0]}): ground truth red, mined green"
                # never more pixels than the image has (a 256-px phantom stays 256 px; 256 at the least)
                side = min(config.picture_size, max(max(image.shape[:2]), 256))
                picture = render(image, large, panel_size=side, title=title)
                _write_jpeg(root / entry.thumb, thumb, jpeg)
                _write_jpeg(root / entry.picture, picture, jpeg)
                entry.size = (int(thumb.shape[1]), int(thumb.shape[0]))
        if progress is not None:
            progress(min(start + len(batch), len(ids)))


def _write_jpeg(path: Path, picture: np.ndarray, params: list[int]) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture, params):
        raise OSError(f"{path}: cannot write the picture (is the report folder writable?)")
