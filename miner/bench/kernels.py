"""`miner bench kernels`: the batched component operations vs a per-map OpenCV loop, side by side in one run.

Workloads (smooth heatmaps normalised to [0, 1]: Gaussian-blurred noise, as class maps look):

1. mining: ``--maps`` maps of ``--size`` x ``--size`` (default 10,000 of 32x32)
   - erase: ``erase_components(maps)`` vs a loop doing argmax, threshold, ``cv2.connectedComponents`` and
     ``labels == labels[seed]`` per map;
   - label + stats: ``label_components(maps >= 0.5)`` + ``component_stats(labels, maps)`` vs a loop doing
     ``cv2.connectedComponentsWithStats`` and a weighted ``np.bincount`` (sum, mean) per map.
2. boxes: ``--thresholds`` x ``--findings`` x ``--images`` maps of ``--big`` x ``--big`` (default 3 x 14 x 32 at
   256x256: maps made at 16x16 and upsampled bilinearly, like CAMs brought to a working resolution), every
   threshold's masks labelled and measured in one batched call vs one ``connectedComponentsWithStats`` per mask.

Each figure is the best of ``--repeats`` rounds (as ``timeit`` recommends: on a machine shared with other jobs the
minimum is the least disturbed measurement; the median is printed too); the contenders alternate within every round
so machine noise hits all of them. Outputs are compared (same components: areas and boxes as multisets, per map)
before anything is printed.
With a CUDA device the Triton path is timed too (synchronised).
"""
from __future__ import annotations

import argparse

HELP = "batched component erase/label/stats (CPU path, CUDA) vs a per-map OpenCV loop"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--maps", type=int, default=10_000, help="maps in the mining workload (default 10000)")
    parser.add_argument("--size", type=int, default=32, help="side of the mining maps (default 32)")
    parser.add_argument("--images", type=int, default=32, help="images in the boxes workload (default 32)")
    parser.add_argument("--findings", type=int, default=14, help="findings per image (default 14)")
    parser.add_argument("--big", type=int, default=256, help="side of the boxes maps (default 256)")
    parser.add_argument("--thresholds", default="0.3,0.5,0.7", help="box thresholds (default 0.3,0.5,0.7)")
    parser.add_argument("--connectivity", type=int, choices=(4, 8), default=8, help="default 8")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for OpenCV and torch (default: their own defaults)")
    parser.add_argument("--seed", type=int, default=0)


def smooth_maps(n: int, side: int, *, base: int | None = None, seed: int = 0):
    """Tensor[n, side, side] float32 heatmaps in [0, 1] (max exactly 1): blurred noise, made at `base` and
    upsampled bilinearly when given."""
    import cv2
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    small = base or side
    noise = rng.standard_normal((n, small, small)).astype(np.float32)
    sigma = max(small / 10, 0.8)
    # blur all maps at once: lay them side by side (one cv2 call), with padding so maps do not bleed
    pad = int(3 * sigma) + 1
    tiles = np.pad(noise, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    wide = tiles.transpose(1, 0, 2).reshape(small + 2 * pad, -1)
    blurred = cv2.GaussianBlur(wide, (0, 0), sigma).reshape(small + 2 * pad, n, small + 2 * pad).transpose(1, 0, 2)
    maps = torch.from_numpy(np.ascontiguousarray(blurred[:, pad:-pad, pad:-pad]))
    if base and base != side:
        maps = torch.nn.functional.interpolate(maps[:, None], size=(side, side), mode="bilinear",
                                               align_corners=False)[:, 0]
    flat = maps.reshape(n, -1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(n, side, side).contiguous()


def _loop_erase(maps, threshold: float, connectivity: int):
    import cv2
    import numpy as np

    out = np.zeros(maps.shape, bool)
    thr = np.float32(threshold)
    for i, m in enumerate(maps):
        seed = int(m.argmax())
        _, labels = cv2.connectedComponents((m >= thr).view(np.uint8), connectivity=connectivity)
        lab = labels.flat[seed]
        if lab:
            np.equal(labels, lab, out=out[i])
    return out


def _loop_label_stats(masks, values, connectivity: int):
    """Per map: cv2.connectedComponentsWithStats + weighted bincount. Returns [(stats[k, 5], sums[k])]."""
    import cv2
    import numpy as np

    out = []
    for m, v in zip(masks, values):
        k, labels, stats, _ = cv2.connectedComponentsWithStats(m.view(np.uint8), connectivity=connectivity)
        sums = np.bincount(labels.ravel(), weights=v.ravel(), minlength=k)
        out.append((stats[1:], sums[1:] / np.maximum(stats[1:, 4], 1)))
    return out


def _same_components(loop, stats, counts, check: int) -> None:
    """The first `check` maps: identical multisets of (x0, y0, x1, y1, area) and means within float32 rounding."""
    import numpy as np

    bbox, area, mean = stats.bbox.cpu().numpy(), stats.area.cpu().numpy(), stats.mean.cpu().numpy()
    for i in range(min(check, len(loop))):
        cv_stats, cv_mean = loop[i]
        k = int(counts[i])
        ours = np.concatenate([bbox[i, :k], area[i, :k, None]], axis=1)
        theirs = np.stack([cv_stats[:, 0], cv_stats[:, 1], cv_stats[:, 0] + cv_stats[:, 2],
                           cv_stats[:, 1] + cv_stats[:, 3], cv_stats[:, 4]], axis=1)
        a, b = ours[np.lexsort(ours.T[::-1])], theirs[np.lexsort(theirs.T[::-1])]
        if a.shape != b.shape or not (a == b).all():
            raise AssertionError(f"map {i}: components differ from OpenCV's")
        if not np.allclose(np.sort(mean[i, :k]), np.sort(cv_mean), rtol=1e-5, atol=1e-6):
            raise AssertionError(f"map {i}: means differ from OpenCV's")


def _best_ms(samples: list[float]) -> float:
    return min(samples) * 1e3


def _median_ms(samples: list[float]) -> float:
    import statistics

    return statistics.median(samples) * 1e3


def run(args: argparse.Namespace) -> int:
    import os
    import time

    import cv2
    import numpy as np
    import torch

    from miner.kernels import component_stats, erase_components, label_components

    if args.threads:
        cv2.setNumThreads(args.threads)
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    conn = args.connectivity
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    cuda = torch.cuda.is_available()

    def timed(fn, n_threads: int | None = None):
        if n_threads is not None:
            torch.set_num_threads(n_threads)
        try:
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            result = fn()
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t, result
        finally:
            torch.set_num_threads(threads)

    def ours_label_stats(mask, values):
        labels, counts = label_components(mask, connectivity=conn)
        k = int(counts.max()) if counts.numel() else 0
        return counts, component_stats(labels, values, num_labels=k)

    def measure(name, loop_fn, ours_fn, check, cuda_args):
        """Alternate the loop, the batched path on 1 thread and on all threads within every round; then CUDA."""
        times: dict[str, list[float]] = {"loop": [], "1": [], "n": [], "cuda": []}
        timed(ours_fn)  # warm-up: first-call costs (thread pool, OpenCV probe) are not part of the figures
        for _ in range(args.repeats):
            dt, ref = timed(loop_fn)
            times["loop"].append(dt)
            dt, got = timed(ours_fn, 1)
            times["1"].append(dt)
            check(ref, got)
            if threads > 1:
                dt, got = timed(ours_fn)
                times["n"].append(dt)
                check(ref, got)
        if cuda:
            gpu_inputs = [a.cuda() for a in cuda_args]
            ours_fn(*gpu_inputs)  # compile
            for _ in range(args.repeats):
                dt, got = timed(lambda: ours_fn(*gpu_inputs))
                times["cuda"].append(dt)
            check(ref, got)
        rows.append((name, *(_best_ms(times[k]) if times[k] else None for k in ("loop", "1", "n", "cuda"))))
        medians.append((name, *(_median_ms(times[k]) if times[k] else None for k in ("loop", "1", "n", "cuda"))))

    print(f"miner bench kernels: {os.cpu_count()} CPU cores, cv2 {cv2.__version__} with {cv2.getNumThreads()} "
          f"threads, torch {torch.__version__} with {threads} threads, connectivity {conn}, best of "
          f"{args.repeats} rounds" + (f", CUDA: {torch.cuda.get_device_name()}" if cuda else ", no CUDA"))
    rows: list[tuple] = []
    medians: list[tuple] = []

    # 1. mining workload
    maps = smooth_maps(args.maps, args.size, seed=args.seed)
    maps_np = maps.numpy()
    masks_np = maps_np >= np.float32(0.5)
    masks = torch.from_numpy(masks_np)

    def check_erase(ref, got):
        if not np.array_equal(got.cpu().numpy(), ref):
            raise AssertionError("erase: batched path differs from the OpenCV loop")

    measure(f"erase, {args.maps} maps {args.size}x{args.size}",
            lambda: _loop_erase(maps_np, 0.5, conn),
            lambda m=maps: erase_components(m, threshold=0.5, connectivity=conn),
            check_erase, [maps])

    def check_small(ref, got):
        _same_components(ref, got[1], got[0].cpu().numpy(), check=500)

    measure(f"label+stats, {args.maps} maps {args.size}x{args.size}",
            lambda: _loop_label_stats(masks_np, maps_np, conn),
            lambda m=masks, v=maps: ours_label_stats(m, v),
            check_small, [masks, maps])

    # 2. boxes workload: every threshold of every map in one batch
    n_maps = args.images * args.findings
    big = smooth_maps(n_maps, args.big, base=16, seed=args.seed + 1)
    big_np = big.numpy()
    big_masks_np = np.concatenate([big_np >= np.float32(t) for t in thresholds])
    big_values_np = np.concatenate([big_np] * len(thresholds))
    big_masks, big_values = torch.from_numpy(big_masks_np), torch.from_numpy(big_values_np)

    def check_big(ref, got):
        _same_components(ref, got[1], got[0].cpu().numpy(), check=len(ref))

    measure(f"label+stats, {len(thresholds)} thr x {args.findings} x {args.images} maps {args.big}x{args.big}",
            lambda: _loop_label_stats(big_masks_np, big_values_np, conn),
            lambda m=big_masks, v=big_values: ours_label_stats(m, v),
            check_big, [big_masks, big_values])

    width = max(len(r[0]) for r in rows)
    for title, table in (("best of rounds", rows), ("median of rounds", medians)):
        head = f"{title:<{width}}  {'OpenCV loop':>11}  {'batched, 1 thread':>23}"
        if threads > 1:
            head += f"  {f'batched, {threads} threads':>23}"
        if cuda:
            head += f"  {'CUDA (Triton)':>21}"
        print(head)
        for name, loop_ms, one_ms, n_ms, cuda_ms in table:
            line = f"{name:<{width}}  {loop_ms:>8.1f} ms  {one_ms:>8.1f} ms ({loop_ms / one_ms:>5.2f}x)"
            if n_ms is not None:
                line += f"  {n_ms:>8.1f} ms ({loop_ms / n_ms:>5.2f}x)"
            if cuda_ms is not None:
                line += f"  {cuda_ms:>7.2f} ms ({loop_ms / cuda_ms:>6.1f}x)"
            print(line)
    print("speed-ups are against the OpenCV loop; outputs checked: erase masks identical, components (boxes, areas) "
          "identical as multisets, means within float32 rounding")
    return 0
