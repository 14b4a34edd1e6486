"""`miner bench maps`: all class maps in one call vs pytorch-grad-cam and torchcam; mining + boxes vs the forward.

Measured side by side in one process on the same model (ResNet-50, random weights, 14 classes by default),
the same images (batch 4 at 512 x 512) and the same threads:

- **forward**: ``model(images)`` under inference mode (logits only) -- the unit every figure is divided by;
- **here**: `miner.cam.class_maps` with all 14 classes (``cam`` and ``gradcam``; for a GAP + linear head both
  come from one forward pass and the head weights);
- **pytorch-grad-cam** the way its users compute 14 maps: one ``GradCAM(model, [layer4])`` call per class, each a
  full forward and backward pass (parameters require grad, as in a user's model). When the ``grad-cam`` package
  is not installed, a faithful re-implementation of one such call (`miner.bench.oracles.reimplemented_gradcam`)
  is timed instead and labelled so;
- **torchcam** the way its API allows: one forward pass, then 14 ``GradCAM`` extractor calls with
  ``retain_graph=True`` (each a gradient to layer4);
- **mining + boxes**: `miner.mining.attention_mining` (T = 3) and `miner.boxes.boxes_from_maps` for all 14
  findings of the batch, as a share of the forward time.

Goals (issue 4): here >= 40x faster than pytorch-grad-cam, >= 1.15x faster than torchcam, mining + boxes <=
3 % of the forward time. The maps of the three implementations are also compared (max difference after the
same normalisation), so the speed-up is between equal outputs.

glibc's malloc must be tuned at process start (NOTES.md: with its defaults torch eager inference is ~2.5x
slower from page faults), so the command re-executes itself with the MALLOC_* variables when they are
missing, and says so.
"""
from __future__ import annotations

import argparse
import os

from miner.runtime import MALLOC_TUNED, malloc_tuned, reexec_with

HELP = "all class maps here vs pytorch-grad-cam and torchcam; mining + boxes vs the forward pass"

_REEXEC_FLAG = "MINER_BENCH_MAPS_REEXEC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="resnet50", help="model (default resnet50, random weights)")
    parser.add_argument("--size", type=int, default=512, help="input side (default 512)")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    parser.add_argument("--classes", type=int, default=14, help="classes = maps per image (default 14)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of the fast measurements (default 5)")
    parser.add_argument("--full-pgc", action="store_true",
                        help="also time pytorch-grad-cam's 14 calls back to back once (about 45 forward passes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--steps", type=int, default=3, help="attention-mining steps T (default 3)")
    parser.add_argument("--no-reexec", dest="reexec", action="store_false",
                        help="do not restart with tuned MALLOC_* variables (measure the environment as it is)")


def _reexec(args: argparse.Namespace) -> None:
    if args.reexec:
        reexec_with(MALLOC_TUNED, guard=_REEXEC_FLAG, reason="glibc malloc tuned for torch: NOTES.md")


def run(args: argparse.Namespace) -> int:
    _reexec(args)
    import statistics
    import time

    import numpy as np
    import torch

    from miner.bench.oracles import import_pytorch_grad_cam, reimplemented_gradcam
    from miner.boxes import boxes_from_maps
    from miner.cam import class_maps, normalize_maps
    from miner.config import BoxConfig
    from miner.mining import attention_mining
    from miner.models import create_model

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=args.classes).eval()
    layer_name = model.feature_layer
    layer = model.get_submodule(layer_name)
    images = torch.rand(args.batch, model.in_chans, args.size, args.size, generator=torch.Generator().manual_seed(1))
    n_cls = len(model.classes)
    malloc = "tuned" if malloc_tuned() else "glibc defaults"
    print(f"{args.arch}, random weights, {n_cls} classes, batch {args.batch} x {model.in_chans} x {args.size} x "
          f"{args.size}, layer {layer_name}, torch {torch.__version__}, {threads} threads, malloc {malloc}")

    cpu_used: dict[str, list[float]] = {}

    def timed(fn, repeats, key=None):
        """Median wall time of `repeats` calls (and the process CPU time per call, kept under `key`)."""
        times, cpus = [], []
        out = None
        for _ in range(repeats):
            c0, t0 = time.process_time(), time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        if key:
            cpu_used.setdefault(key, []).append(statistics.median(cpus))
        return statistics.median(times), out

    def forward():
        with torch.inference_mode():
            return model(images)

    def here(method):
        return lambda: class_maps(model, images, method=method)

    # the product's torch backend on the same weights: an inference copy with BatchNorm folded into the
    # convolutions and channels_last memory (miner.models.inference); same maps up to float rounding
    from miner.backends.torch_backend import TorchBackend

    backend = TorchBackend(model, input_size=(args.size, args.size), method="gradcam", device="cpu")

    def here_backend():
        with torch.inference_mode():
            return backend.run(images)

    import torchcam.methods as tc

    def torchcam_all():
        with tc.GradCAM(model, target_layer=layer_name) as extractor:
            scores = model(images)
            maps = [extractor(class_idx=c, scores=scores, retain_graph=c < n_cls - 1)[0] for c in range(n_cls)]
        return torch.stack(maps, 1)

    try:
        pgc = import_pytorch_grad_cam()
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pgc_label = f"pytorch-grad-cam: {n_cls} GradCAM calls"

        def pgc_one(c):
            with pgc.GradCAM(model=model, target_layers=[layer]) as cam:
                return cam(input_tensor=images, targets=[ClassifierOutputTarget(c)] * args.batch)
    except ImportError:
        pgc_label = f"pytorch-grad-cam re-implemented: {n_cls} calls"
        print("pytorch-grad-cam is NOT INSTALLED (pip install --no-deps grad-cam ttach): timing a faithful "
              "re-implementation of its GradCAM call (miner.bench.oracles.reimplemented_gradcam) instead")

        def pgc_one(c):
            return reimplemented_gradcam(model, layer, images, c)

    def pgc_all():
        return np.stack([pgc_one(c) for c in range(n_cls)], 1)

    # warm-up (first-call allocations, lazy imports) -- not timed
    forward()
    class_maps(model, images, method="cam")
    box_cfg = BoxConfig()
    sizes = [(1024, 1024)] * args.batch

    def post(maps):
        mined = attention_mining(maps, steps=args.steps)
        return boxes_from_maps(mined.fused, original_sizes=sizes, config=box_cfg)

    results: dict[str, list[float]] = {"forward": [], "cam": [], "gradcam": [], "backend": [], "torchcam": [],
                                       "post": []}
    maps_cam = maps_grad = tc_maps = None
    for _ in range(args.repeats):  # interleaved rounds: machine noise hits every implementation alike
        results["forward"].append(timed(forward, 1, "forward")[0])
        t, (_, maps_cam) = timed(here("cam"), 1, "cam")
        results["cam"].append(t)
        t, (_, maps_grad) = timed(here("gradcam"), 1, "gradcam")
        results["gradcam"].append(t)
        t, (_, maps_backend) = timed(here_backend, 1, "backend")
        results["backend"].append(t)
        t, tc_maps = timed(torchcam_all, 1, "torchcam")
        results["torchcam"].append(t)
        results["post"].append(timed(lambda m=maps_cam: post(m), 5, "post")[0])
        # one pytorch-grad-cam call per round (every call costs the same: a full forward + backward); its
        # 14-call time is 14 x the median call, measured under the same conditions as the rest of the round
        c = len(results["forward"]) - 1
        t, _ = timed(lambda c=c: pgc_one(c % n_cls), 1, "pgc_call")
        results.setdefault("pgc_call", []).append(t)
    med = {k: statistics.median(v) for k, v in results.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_used.items()}
    med["pgc"], cpu["pgc"] = n_cls * med["pgc_call"], n_cls * cpu["pgc_call"]
    if args.full_pgc:
        t_full, pgc_maps = timed(pgc_all, 1)
    else:
        t_full, pgc_maps = None, None
    t_pgc = med["pgc"]
    boxes = post(maps_cam)

    # the maps agree (same normalisation: ReLU, min-max; pytorch-grad-cam's resize to the input size)
    ours_tc = normalize_maps(maps_grad, eps=1e-8)
    diff_tc = float((ours_tc - tc_maps).abs().max())
    diff_backend = float((normalize_maps(maps_backend, eps=1e-8) - tc_maps).abs().max())
    import cv2

    check = list(range(n_cls)) if pgc_maps is not None else [0, n_cls - 1]
    if pgc_maps is None:
        pgc_maps = np.zeros((args.batch, n_cls, args.size, args.size), np.float32)
        for c in check:
            pgc_maps[:, c] = pgc_one(c)
    ours_pgc = np.zeros_like(pgc_maps)
    for b in range(args.batch):
        for c in check:
            m = np.maximum(maps_grad[b, c].numpy(), 0)
            m = m - m.min()
            m = cv2.resize(np.float32(m / (1e-7 + m.max())), (args.size, args.size))
            m = m - m.min()
            ours_pgc[b, c] = m / (1e-7 + m.max())
    diff_pgc = float(np.abs(ours_pgc - pgc_maps).max())

    f = med["forward"]
    best = med["gradcam"]  # the same method as theirs (for this head it costs what cam costs)
    n_boxes = sum(len(v) for v in boxes)
    print(f"{'':52s} {'wall':>10s} {'x forward':>10s} {'CPU time':>10s} {'x forward':>10s}")
    rows = [
        ("forward pass (logits only)", "forward"),
        (f"here: all {n_cls} maps, cam", "cam"),
        (f"here: all {n_cls} maps, gradcam", "gradcam"),
        (f"here: all {n_cls} maps, gradcam, torch backend", "backend"),
        (f"torchcam: 1 forward + {n_cls} gradient calls", "torchcam"),
        (f"{pgc_label} ({n_cls} x median call)", "pgc"),
        (f"mining (T={args.steps}) + boxes, {args.batch}x{n_cls} maps", "post"),
    ]
    for label, key in rows:
        t, c = med[key], cpu[key]
        print(f"{label:52s} {t * 1e3:8.1f}ms {t / f:9.2f}x {c * 1e3:8.1f}ms {c / cpu['forward']:9.2f}x")
    # paired ratios: each round's own measurements, taken seconds apart, so slow drifts in the machine's load
    # cancel; the median over rounds is the headline figure (the ratios of the medians are printed beside it)
    def paired(num: str, den: str, scale: float = 1.0) -> float:
        return statistics.median(scale * a / b for a, b in zip(results[num], results[den]))

    vs_pgc = paired("pgc_call", "gradcam", n_cls)
    vs_tc = paired("torchcam", "gradcam")
    vs_tc_backend = paired("torchcam", "backend")
    share = paired("post", "forward")
    print(f"speed-up vs pytorch-grad-cam: {vs_pgc:6.1f}x   (goal >= 40x)   ratio of medians {t_pgc / best:.1f}x, "
          f"max map difference {diff_pgc:.1e}")
    print(f"speed-up vs torchcam:         {vs_tc:6.2f}x   (goal >= 1.15x) ratio of medians "
          f"{med['torchcam'] / best:.2f}x, max map difference {diff_tc:.1e} (class_maps on the model as given)")
    print(f"speed-up vs torchcam:         {vs_tc_backend:6.2f}x   (goal >= 1.15x) ratio of medians "
          f"{med['torchcam'] / med['backend']:.2f}x, max map difference {diff_backend:.1e} (the torch backend: "
          "BatchNorm folded, channels_last)")
    print(f"mining + boxes / forward:     {100 * share:6.2f} %  (goal <= 3 %)   ratio of medians "
          f"{100 * med['post'] / f:.2f} %, {n_boxes} boxes")
    print(f"speed-ups in process CPU time: {cpu['pgc'] / cpu['gradcam']:.1f}x vs pytorch-grad-cam, "
          f"{cpu['torchcam'] / cpu['gradcam']:.2f}x vs torchcam, "
          f"mining + boxes {100 * cpu['post'] / cpu['forward']:.2f} %"
          " (less sensitive to other processes on the machine)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if t_full is not None:
        print(f"pytorch-grad-cam, {n_cls} calls back to back once: {t_full * 1e3:.1f} ms = {t_full / f:.2f}x forward")
    print(f"headline: median over {args.repeats} interleaved rounds of each round's ratio (one pytorch-grad-cam "
          "call per round, x classes); "
          f"mining + boxes: median of 5 calls per round; load average at the end {load:.1f} on {os.cpu_count()} cores")
    return 0
