"""Batched CPU path of the component operations: the reference the kernels are tested against.

No Python loop runs per map. A batch of N maps of H x W is written into ONE tall uint8 image of N * (H + 1) rows
and W columns (each map followed by one zero row, so no component crosses from one map into the next, for either
connectivity) and labelled by a single ``cv2.connectedComponentsWithAlgorithm`` call per chunk of about
``_CHUNK_PIXELS`` pixels.

Raster order. OpenCV's SAUF (Wu) algorithm numbers labels in the order their first pixel is met in a raster scan
(its union-find keeps the smaller provisional label as the root, and provisional labels grow with the scan; the
parallel variant labels stripes with increasing label ranges and merges with the same rule). In the tall image the
raster order is map-major, then row, then column, so the global labels of map n are exactly
``offset[n] + 1 .. offset[n] + count[n]`` in the map's own raster order, with ``offset[n]`` the number of components
in maps before n. Subtracting the offset therefore gives scipy.ndimage.label's numbering exactly. This property is
checked on every call by a cheap monotonicity test; if it ever fails (another OpenCV build), the labels are
renumbered by first pixel (``_renumber_by_first_pixel``), so the result never depends on it.

Statistics are vectorised reductions over the foreground pixels keyed by ``n * K + label - 1``: ``np.bincount`` for
area and sum (sum accumulated in float64, then rounded to float32) and ``np.minimum.at``/``np.maximum.at`` for the
bounding boxes.
"""
from __future__ import annotations

import cv2
import numpy as np

# Pixels per cv2 call: bounds the int32 label image of one chunk to ~64 MiB.
_CHUNK_PIXELS = 1 << 24


def _chunks(n: int, pixels_per_map: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_PIXELS // max(1, pixels_per_map))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _stack(mask: np.ndarray) -> np.ndarray:
    """mask (ndarray[n, H, W], bool) -> ndarray[n * (H + 1), W] uint8 with a zero row after every map."""
    n, h, w = mask.shape
    tall = np.zeros((n, h + 1, w), np.uint8)
    tall[:, :h] = mask
    return tall.reshape(n * (h + 1), w)


def _cv2_label(tall: np.ndarray, connectivity: int, *, raster: bool) -> np.ndarray:
    algorithm = cv2.CCL_SAUF if raster else cv2.CCL_SPAGHETTI
    _, labels = cv2.connectedComponentsWithAlgorithm(tall, connectivity, cv2.CV_32S, algorithm)
    return labels


def _is_raster_ordered(labels: np.ndarray) -> bool:
    """True if labels (any shape, raster order = C order) first appear in the order 1, 2, 3, ..."""
    fg = labels[labels > 0]
    if fg.size == 0:
        return True
    running = np.maximum.accumulate(fg)
    return bool(running[0] == 1 and np.all(np.diff(running) <= 1))


def _renumber_by_first_pixel(labels: np.ndarray) -> np.ndarray:
    """Renumber arbitrary positive labels 1..k by the raster position of their first pixel (slow path)."""
    flat = labels.ravel()
    pos = np.flatnonzero(flat)
    if pos.size == 0:
        return labels.copy()
    lab = flat[pos]
    first = np.full(int(lab.max()) + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, lab, pos)
    present = np.flatnonzero(first != np.iinfo(np.int64).max)
    order = present[np.argsort(first[present], kind="stable")]
    lut = np.zeros(first.size, np.int32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return lut[labels]


def label_cpu(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Label every map of a batch; see ``miner.kernels.label_components``.

    mask (ndarray[N, H, W], bool) -> (labels ndarray[N, H, W] int32, counts ndarray[N] int32)
    """
    n, h, w = mask.shape
    labels = np.zeros((n, h, w), np.int32)
    counts = np.zeros(n, np.int32)
    if n == 0 or h == 0 or w == 0:
        return labels, counts
    for s, e in _chunks(n, (h + 1) * w):
        glob = _cv2_label(_stack(mask[s:e]), connectivity, raster=True)
        if not _is_raster_ordered(glob):  # pragma: no cover - defensive, never seen with OpenCV 4.x/5.x SAUF
            glob = _renumber_by_first_pixel(glob)
        glob3 = glob.reshape(e - s, h + 1, w)
        top = glob3.reshape(e - s, -1).max(axis=1)
        # labels grow map after map: the offset of map i is the largest label of any earlier map
        offset = np.zeros(e - s, np.int32)
        if e - s > 1:
            offset[1:] = np.maximum.accumulate(top)[:-1]
        counts[s:e] = np.maximum(top - offset, 0)
        out = labels[s:e]
        np.subtract(glob3[:, :h], offset[:, None, None], out=out)
        np.maximum(out, 0, out=out)
    return labels, counts


def erase_cpu(maps: np.ndarray, threshold: float, connectivity: int) -> np.ndarray:
    """Component of ``maps >= threshold`` holding each map's argmax; see ``miner.kernels.erase_components``.

    maps (ndarray[N, h, w], float32) -> ndarray[N, h, w] bool
    """
    n, h, w = maps.shape
    out = np.zeros((n, h, w), bool)
    if n == 0 or h == 0 or w == 0:
        return out
    thr = np.float32(threshold) if maps.dtype == np.float32 else threshold
    for s, e in _chunks(n, (h + 1) * w):
        chunk = maps[s:e]
        seed = chunk.reshape(e - s, -1).argmax(axis=1)  # first maximum in raster order, as torch.argmax
        glob = _cv2_label(_stack(chunk >= thr), connectivity, raster=False)
        glob3 = glob.reshape(e - s, h + 1, w)
        seed_label = glob3.reshape(e - s, -1)[np.arange(e - s), seed]
        # label 0 (max below threshold, or NaN) matches background: clear it
        seed_label[seed_label == 0] = -1
        np.equal(glob3[:, :h], seed_label[:, None, None], out=out[s:e])
    return out


def stats_cpu(
    labels: np.ndarray, values: np.ndarray, num_labels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-component statistics; see ``miner.kernels.component_stats``.

    labels (ndarray[N, H, W], int32), values (ndarray[N, H, W], float32) ->
    (bbox ndarray[N, K, 4] int32, area ndarray[N, K] int32, sum ndarray[N, K] float32, mean ndarray[N, K] float32)
    """
    n, h, w = labels.shape
    k = int(num_labels)
    bbox = np.zeros((n, k, 4), np.int32)
    area = np.zeros((n, k), np.int32)
    total = np.zeros((n, k), np.float32)
    mean = np.zeros((n, k), np.float32)
    if n == 0 or k == 0 or h == 0 or w == 0:
        return bbox, area, total, mean
    flat = labels.reshape(-1)
    pos = np.flatnonzero((flat > 0) & (flat <= k))
    if pos.size == 0:
        return bbox, area, total, mean
    lab = flat[pos].astype(np.int64)
    per_map = h * w
    m = pos // per_map
    pix = pos - m * per_map
    y = pix // w
    x = pix - y * w
    key = m * k + lab - 1
    cells = n * k
    cnt = np.bincount(key, minlength=cells)
    acc = np.bincount(key, weights=values.reshape(-1)[pos].astype(np.float64), minlength=cells)
    x0 = np.full(cells, w, np.int64)
    y0 = np.full(cells, h, np.int64)
    x1 = np.full(cells, -1, np.int64)
    y1 = np.full(cells, -1, np.int64)
    np.minimum.at(x0, key, x)
    np.minimum.at(y0, key, y)
    np.maximum.at(x1, key, x)
    np.maximum.at(y1, key, y)
    present = cnt > 0
    box = np.stack([x0, y0, x1 + 1, y1 + 1], axis=1)
    box[~present] = 0
    bbox[:] = box.reshape(n, k, 4)
    area[:] = cnt.reshape(n, k)
    total[:] = acc.reshape(n, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean[:] = np.where(present, acc / np.maximum(cnt, 1), 0.0).reshape(n, k)
    return bbox, area, total, mean
