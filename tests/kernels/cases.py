"""Map generators and scipy references shared by the CPU, interpreter and GPU kernel tests."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: np.ones((3, 3), bool)}


def spiral(h: int, w: int) -> np.ndarray:
    """A 1-pixel-wide square spiral walked inwards from the top-left corner with 1-pixel gaps between its arms:
    one long winding component (the worst case for label propagation)."""
    m = np.zeros((h, w), bool)
    steps = ((0, 1), (1, 0), (0, -1), (-1, 0))

    def free(y: int, x: int) -> bool:
        return 0 <= y < h and 0 <= x < w and not m[y, x]

    y = x = d = 0
    m[0, 0] = True
    turns = 0
    while turns < 2:
        dy, dx = steps[d]
        ny, nx = y + dy, x + dx
        # step on if the cell is free and the one after it is not part of the spiral (keeps the 1-pixel gap)
        ahead_taken = 0 <= ny + dy < h and 0 <= nx + dx < w and m[ny + dy, nx + dx]
        if free(ny, nx) and not ahead_taken:
            y, x = ny, nx
            m[y, x] = True
            turns = 0
        else:
            d = (d + 1) % 4
            turns += 1
    return m


def checkerboard(h: int, w: int, *, phase: int = 0) -> np.ndarray:
    """Diagonal neighbours only: one component under 8-connectivity, one per pixel under 4."""
    yy, xx = np.mgrid[:h, :w]
    return (yy + xx + phase) % 2 == 0


def border_frame(h: int, w: int) -> np.ndarray:
    """Components touching every border: the corners, the edges' midpoints and a ring one pixel inside."""
    m = np.zeros((h, w), bool)
    m[0, 0] = m[0, w - 1] = m[h - 1, 0] = m[h - 1, w - 1] = True
    m[0, w // 2] = m[h - 1, w // 2] = m[h // 2, 0] = m[h // 2, w - 1] = True
    if h > 4 and w > 4:
        m[2 : h - 2, 2] = m[2 : h - 2, w - 3] = True
        m[2, 2 : w - 2] = m[h - 3, 2 : w - 2] = True
    return m


def random_map(rng: np.random.Generator, h: int, w: int, density: float) -> np.ndarray:
    return rng.random((h, w)) < density


def blobs(rng: np.random.Generator, h: int, w: int, *, sigma: float = 2.0) -> np.ndarray:
    """A smooth heatmap normalised to [0, 1] (what mining and boxes see)."""
    import cv2

    noise = rng.standard_normal((h, w)).astype(np.float32)
    m = cv2.GaussianBlur(noise, (0, 0), sigma)
    m -= m.min()
    top = m.max()
    return m / top if top > 0 else m


def mixed_batch(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One batch of every pattern at one size: random densities, spiral, checkerboards, frame, empty, full."""
    maps = [random_map(rng, h, w, d) for d in (0.05, 0.3, 0.5, 0.7, 0.95)]
    maps += [spiral(h, w), checkerboard(h, w), checkerboard(h, w, phase=1), border_frame(h, w)]
    maps += [np.zeros((h, w), bool), np.ones((h, w), bool)]
    return np.stack(maps)


def scipy_label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-map scipy.ndimage.label: (labels [N, H, W] int32, counts [N] int32)."""
    labels = np.zeros(mask.shape, np.int32)
    counts = np.zeros(mask.shape[0], np.int32)
    for i, m in enumerate(mask):
        lab, k = ndimage.label(m, STRUCTURE[connectivity])
        labels[i], counts[i] = lab, k
    return labels, counts


def scipy_erase(maps: np.ndarray, threshold: float, connectivity: int) -> np.ndarray:
    """Per-map reference erasure with scipy: component of maps >= threshold holding the first maximum."""
    out = np.zeros(maps.shape, bool)
    for i, m in enumerate(maps):
        lab, _ = ndimage.label(m >= np.float32(threshold), STRUCTURE[connectivity])
        seed = lab.flat[int(np.argmax(m))]
        if seed:
            out[i] = lab == seed
    return out


def scipy_stats(labels: np.ndarray, values: np.ndarray, k: int):
    """Per-map stats from find_objects / sum_labels: (bbox [N,K,4], area [N,K], sum [N,K] float64)."""
    n = labels.shape[0]
    bbox = np.zeros((n, k, 4), np.int32)
    area = np.zeros((n, k), np.int32)
    total = np.zeros((n, k), np.float64)
    index = np.arange(1, k + 1)
    for i in range(n):
        for j, sl in enumerate(ndimage.find_objects(labels[i], max_label=k)):
            if sl is not None:
                bbox[i, j] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        if k:
            area[i] = ndimage.sum_labels(np.ones_like(values[i]), labels[i], index)
            total[i] = ndimage.sum_labels(values[i].astype(np.float64), labels[i], index)
    return bbox, area, total


# Batches the kernels are checked on, shared by the interpreter and GPU tests: (id, mask [N, H, W] bool).
# Sizes cover 1x1, single rows/columns, non-square, one block (<= 1024 px) and several blocks of 1024 lanes.
LABEL_SHAPES = [(1, 1), (1, 17), (17, 1), (7, 12), (32, 32), (45, 37)]
DENSITIES = (0.05, 0.15, 0.3, 0.45, 0.55, 0.6, 0.7, 0.85, 0.95)


def label_batches(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = [(f"mixed{h}x{w}", mixed_batch(rng, h, w)) for h, w in LABEL_SHAPES]
    out.append(("densities24x40", np.stack([random_map(rng, 24, 40, d) for d in DENSITIES])))
    out.append(("spiral64x64+checker", np.stack([spiral(64, 64), checkerboard(64, 64), border_frame(64, 64)])))
    return out


def erase_batches(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(id, maps [N, H, W] float32 in [0, 1]): smooth heatmaps, noise, ties, flat and spiral-shaped maps."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in [(1, 1), (3, 11), (16, 16), (32, 32), (40, 33)]:
        maps = [blobs(rng, h, w, sigma=s) for s in (0.5, 1.0, 2.0, 4.0)]
        maps.append(rng.random((h, w)).astype(np.float32))
        maps.append(np.zeros((h, w), np.float32))  # flat: argmax 0, every pixel below 0.5
        tie = np.full((h, w), 0.7, np.float32)  # all tied: one component, the whole map
        maps.append(tie)
        two = rng.random((h, w)).astype(np.float32) * 0.4
        two.flat[-1] = two.flat[0] = 1.0  # tie between the first and the last pixel
        maps.append(two)
        sp = spiral(h, w).astype(np.float32) * 0.6
        sp.flat[int(np.flatnonzero(sp)[-1])] = 1.0  # maximum at the spiral's inner end
        maps.append(sp)
        out.append((f"maps{h}x{w}", np.stack(maps)))
    return out
