"""Batched CPU path of the component operations: the reference the kernels are tested against.

No Python loop runs per map. A chunk of maps (about ``_CHUNK_PIXELS`` pixels: many small maps, or one large one) is
written into ONE tall uint8 image of n * (H + 1) rows and W columns (each map followed by one zero row, so no
component crosses from one map into the next, for either connectivity) and labelled by a single
``cv2.connectedComponentsWithAlgorithm`` call; every later step is a vectorised numpy pass over the chunk. Chunks are
sized to stay in cache, which is what makes the batch faster than one OpenCV call per map, and chunks run on
``torch.get_num_threads()`` threads (each writes its own output slices), which a loop of tiny OpenCV calls cannot use.

Raster order. OpenCV's SAUF (Wu) algorithm numbers labels in the order their first pixel is met in a raster scan
(its union-find keeps the smaller provisional label as the root, and provisional labels grow with the scan; the
parallel variant labels stripes with increasing label ranges and merges with the same rule). In the tall image the
raster order is map-major, then row, then column, so the global labels of map n are exactly
``offset[n] + 1 .. offset[n] + count[n]`` in the map's own raster order, with ``offset[n]`` the number of components
in maps before n. Subtracting the offset therefore gives scipy.ndimage.label's numbering exactly. The property is
checked once per process on a batch built to break scan orders that are not raster (``_sauf_is_raster``); if an
OpenCV build ever fails it, every call renumbers by first pixel instead (``_renumber_by_first_pixel``, slower), so
the result never depends on it.

Statistics work on horizontal runs (maximal stretches of one label in a row), found with one vectorised comparison
of each pixel with its left neighbour: a run's start holds its smallest x, its end the largest, every row of a
component holds a run, and run value sums come from one float64 ``np.add.reduceat`` over the chunk. Runs are then
reduced per key ``n * K + label - 1`` with ``np.bincount`` (area, sum) and ``np.minimum.at`` / ``np.maximum.at``
(boxes): smooth maps have far fewer runs than pixels, so only three passes touch every pixel. A NaN or inf value
stays inside its own run's sum.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

# Pixels per chunk (one cv2 call and one round of numpy passes): 2**18 keeps a chunk's int32 labels (1 MiB) in cache;
# measured on 2 cores it beat 2**16 (call overhead) and 2**20..2**24 (cache misses) on 32x32 and 256x256 batches.
_CHUNK_PIXELS = 1 << 18


def _chunks(n: int, pixels_per_map: int) -> list[tuple[int, int]]:
    step = max(1, _CHUNK_PIXELS // max(1, pixels_per_map))
    return [(s, min(n, s + step)) for s in range(0, n, step)]


_POOL: ThreadPoolExecutor | None = None


def _for_chunks(work: Callable[[int, int], None], n: int, pixels_per_map: int) -> None:
    """Run ``work(s, e)`` on every chunk of maps; chunks write disjoint output slices, so with several chunks they run
    on ``torch.get_num_threads()`` threads (cv2 and numpy release the GIL; Ray and OMP_NUM_THREADS set that count)."""
    global _POOL
    chunks = _chunks(n, pixels_per_map)
    import torch

    threads = min(torch.get_num_threads(), len(chunks))
    if threads <= 1 or len(chunks) < 4:  # a few chunks finish before a pool pays for itself
        for s, e in chunks:
            work(s, e)
        return
    if _POOL is None or _POOL._max_workers != threads:
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="miner-kernels")
    for future in [_POOL.submit(work, s, e) for s, e in chunks]:
        future.result()


def _stack(mask: np.ndarray) -> np.ndarray:
    """mask (ndarray[n, H, W], bool) -> ndarray[n * (H + 1), W] uint8 with a zero row after every map."""
    n, h, w = mask.shape
    tall = np.zeros((n, (h + 1) * w), np.uint8)
    tall[:, : h * w] = mask.reshape(n, h * w)  # a map's rows are contiguous: copy h * w values at a time
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


_SAUF_RASTER: dict[int, bool] = {}


def _sauf_is_raster(connectivity: int) -> bool:
    """Once per process and connectivity: does this OpenCV's SAUF number a large multi-threaded batch in raster
    order? The probe holds components whose first pixels are on odd rows left of others on even rows (what 2x2-block
    scans number out of order) and is tall enough for OpenCV's parallel stripes."""
    ok = _SAUF_RASTER.get(connectivity)
    if ok is None:
        rng = np.random.default_rng(12345)
        probe = rng.random((2048, 33, 16)) < 0.45
        probe[:, 32] = False
        labels = _cv2_label(probe.reshape(-1, 16).view(np.uint8), connectivity, raster=True)
        ok = _is_raster_ordered(labels)
        _SAUF_RASTER[connectivity] = ok
    return ok


def label_cpu(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Label every map of a batch; see ``miner.kernels.label_components``.

    mask (ndarray[N, H, W], bool) -> (labels ndarray[N, H, W] int32, counts ndarray[N] int32)
    """
    n, h, w = mask.shape
    labels = np.zeros((n, h, w), np.int32)
    counts = np.zeros(n, np.int32)
    if n == 0 or h == 0 or w == 0:
        return labels, counts
    raster = _sauf_is_raster(connectivity)

    def work(s: int, e: int) -> None:
        glob = _cv2_label(_stack(mask[s:e]), connectivity, raster=True)
        if not raster:  # an OpenCV whose SAUF numbering is not raster order
            glob = _renumber_by_first_pixel(glob)
        glob2 = glob.reshape(e - s, (h + 1) * w)  # map i: its h * w pixels, then its zero gap row
        top = glob2.max(axis=1)
        # labels grow map after map: the offset of map i is the largest label of any earlier map
        offset = np.zeros(e - s, np.int32)
        if e - s > 1:
            offset[1:] = np.maximum.accumulate(top)[:-1]
        counts[s:e] = np.maximum(top - offset, 0)
        out = labels[s:e].reshape(e - s, h * w)
        np.subtract(glob2[:, : h * w], offset[:, None], out=out)
        np.maximum(out, 0, out=out)

    _for_chunks(work, n, (h + 1) * w)
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

    def work(s: int, e: int) -> None:
        chunk = maps[s:e]
        seed = chunk.reshape(e - s, -1).argmax(axis=1)  # first maximum in raster order, as torch.argmax
        tall = np.zeros((e - s, (h + 1) * w), np.uint8)
        # threshold straight into the stacked image (a map's rows are contiguous there)
        np.greater_equal(chunk.reshape(e - s, h * w), thr, out=tall[:, : h * w].view(bool))
        glob = _cv2_label(tall.reshape(-1, w), connectivity, raster=False)
        glob2 = glob.reshape(e - s, (h + 1) * w)
        seed_label = glob2[np.arange(e - s), seed]
        # label 0 (max below threshold, or NaN) matches background: clear it
        seed_label[seed_label == 0] = -1
        np.equal(glob2[:, : h * w], seed_label[:, None], out=out[s:e].reshape(e - s, h * w))

    _for_chunks(work, n, (h + 1) * w)
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

    def work(s: int, e: int) -> None:
        _stats_chunk(labels[s:e], values[s:e], k, bbox[s:e], area[s:e], total[s:e], mean[s:e])

    _for_chunks(work, n, h * w)
    return bbox, area, total, mean


def _stats_chunk(
    labels: np.ndarray, values: np.ndarray, k: int, bbox: np.ndarray, area: np.ndarray, total: np.ndarray,
    mean: np.ndarray,
) -> None:
    """stats_cpu on one chunk of maps, written into the given output slices (run-based, see the module docstring)."""
    n, h, w = labels.shape
    lab = labels.reshape(n * h, w)
    # every run (maximal stretch of one label in a row, background included) starts at column 0 or at a change
    flat = lab.reshape(-1)
    first = np.empty(flat.size, bool)  # compared as one 1-D array (fast), then every row start set
    first[0] = True
    np.not_equal(flat[1:], flat[:-1], out=first[1:])
    first.reshape(n * h, w)[:, 0] = True
    start = np.flatnonzero(first)
    stop = np.empty_like(start)  # a run ends where the next one starts (rows start runs, so runs never wrap)
    stop[:-1] = start[1:]
    stop[-1] = lab.size
    run_label = flat[start]
    keep = (run_label >= 1) & (run_label <= k)
    if not keep.any():
        return
    start, stop, run_label = start[keep], stop[keep], run_label[keep].astype(np.int64)
    row = start // w
    x0 = start - row * w
    x1 = stop - row * w
    m = row // h
    y = row - m * h
    key = m * k + run_label - 1
    cells = n * k
    cnt = np.bincount(key, weights=x1 - x0, minlength=cells).astype(np.int64)
    # run sums: one reduceat over [start0, stop0, start1, stop1, ...] (the odd slots are the gaps between runs)
    bounds = np.empty(2 * start.size, np.int64)
    bounds[0::2] = start
    bounds[1::2] = stop
    if bounds[-1] == flat.size:
        bounds = bounds[:-1]
    run_sum = np.add.reduceat(values.reshape(-1), bounds, dtype=np.float64)[0::2]
    acc = np.bincount(key, weights=run_sum, minlength=cells)
    x0_, y0_ = np.full(cells, w, np.int64), np.full(cells, h, np.int64)
    x1_, y1_ = np.zeros(cells, np.int64), np.zeros(cells, np.int64)
    np.minimum.at(x0_, key, x0)
    np.minimum.at(y0_, key, y)
    np.maximum.at(x1_, key, x1)
    np.maximum.at(y1_, key, y + 1)
    present = cnt > 0
    box = np.stack([x0_, y0_, x1_, y1_], axis=1)
    box[~present] = 0
    bbox[:] = box.reshape(n, k, 4)
    area[:] = cnt.reshape(n, k)
    total[:] = acc.reshape(n, k)
    mean[:] = np.where(present, acc / np.maximum(cnt, 1), 0.0).reshape(n, k)
