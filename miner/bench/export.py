"""`miner bench export`: ONNX Runtime (fp32 and int8) vs torch eager on the same model, images and threads.

Measures, in one process and interleaved round by round (so machine noise hits every backend alike):

- torch eager `miner.cam.class_maps` (logits + all maps),
- ONNX Runtime CPU on the graph `miner export onnx` writes for the same model,
- ONNX Runtime CPU on its int8 QDQ version (`miner.export.quantize`, static; calibrated on the first ``--archive``
  as ``miner export onnx --int8 --calibration`` does, else on phantom chests),
- ONNX Runtime CPU on the fp32 graph with the int8 graph's exact layout rewrites (merged Transposes, pooling as
  GlobalAveragePool), so that the int8 speed-up can be split into what int8 gives and what the rewrites give,

and how far the int8 maps move from fp32: max abs and relative difference, Spearman rank correlation per
map, and the IoU of the rank-1 box of each image and class when `miner.boxes` is present. With ``--archive``
(repeatable) the int8 graph is also checked as ``miner export onnx --int8`` checks it, per archive (calibrated
on that archive's images): rank-1 box IoU vs fp32 over the held-out images' labelled findings, and Acc at
T(IoU) 0.3 of both against the archive's boxes (`miner.bench.int8.box_agreement`). The figures of issue 26
(embedded model, unseen phantoms)::

    miner phantoms --images 400 --seed 99 runs/int8/plain
    miner phantoms --images 400 --seed 99 --real-background runs/int8/real
    miner bench export --checkpoint miner/assets/default_model.pt --batch 16 --threads 1 --repeats 15 \
        --archive runs/int8/plain --archive runs/int8/real

glibc's malloc must be tuned before the process starts (NOTES.md: a page-fault storm otherwise makes
torch eager ~2.5x slower on CPU), so the benchmark re-executes itself with the MALLOC_* variables set when
they are missing, and says so.
"""
from __future__ import annotations

import argparse
import os

from miner.runtime import MALLOC_TUNED, OMP_PASSIVE, malloc_tuned, reexec_with

HELP = "onnxruntime (fp32, int8) vs torch eager throughput with all class maps, and int8 map drift"

_REEXEC_FLAG = "MINER_BENCH_EXPORT_REEXEC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="resnet50_msa", help="model (default resnet50_msa)")
    parser.add_argument("--checkpoint", default=None,
                        help="trained checkpoint to use instead of random weights (BN statistics adapted)")
    parser.add_argument("--size", type=int, default=None,
                        help="input side (default: the checkpoint's, else 512)")
    parser.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    parser.add_argument("--classes", type=int, default=14, help="classes, i.e. maps per image (default 14)")
    parser.add_argument("--method", default=None, help="map method (default: the checkpoint's, else cam)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per backend (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="threads for every backend (default: all cores)")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the int8 graph")
    parser.add_argument("--calibrate", default="minmax", choices=("minmax", "percentile", "entropy"),
                        help="int8 activation calibration (default minmax)")
    parser.add_argument("--archive", action="append", default=[], metavar="ARCHIVE",
                        help="check the int8 graph's boxes against fp32 on this archive (repeatable; calibrated on "
                             "its own images, as `miner export onnx --int8 --calibration` does)")
    parser.add_argument("--calibration-images", type=int, default=64,
                        help="--archive: calibration images per archive (default 64)")
    parser.add_argument("--check-images", type=int, default=256,
                        help="--archive: held-out images mined with both graphs per archive (default 256)")
    parser.add_argument("--workdir", default=None, help="where the graphs go (default: a temporary folder)")
    parser.add_argument("--omp-wait", choices=("passive", "default"), default="passive",
                        help="OpenMP wait policy of the torch side: passive (as the mining job's workers run; an "
                             "active 2-thread team stalls on a busy machine) or the library default")
    parser.add_argument("--no-reexec", dest="reexec", action="store_false",
                        help="do not restart with tuned MALLOC_* variables (measure the environment as it is)")


def _reexec(args: argparse.Namespace) -> None:
    """Restart this command with the MALLOC_* (and OpenMP wait) variables: both are read once, at start-up."""
    wanted = dict(MALLOC_TUNED, **(OMP_PASSIVE if args.omp_wait == "passive" else {}))
    if args.reexec:
        reexec_with(wanted, guard=_REEXEC_FLAG, reason="set before torch starts")


def run(args: argparse.Namespace) -> int:
    _reexec(args)
    import statistics
    import tempfile
    import time
    from pathlib import Path

    import torch

    from miner.backends import open_backend
    from miner.backends.onnxruntime_backend import available_threads
    from miner.bench.int8 import TARGET_SPEEDUP, archive_split, box_agreement, rank_correlation
    from miner.cam import class_maps
    from miner.export.onnx import export_checkpoint, export_model
    from miner.export.parity import phantom_image
    from miner.export.quantize import calibration_images, float_record, layout_rewritten, quantize_onnx
    from miner.models import create_model, load_checkpoint
    from miner.settings import InferenceSettings

    threads = args.threads or available_threads()
    torch.set_num_threads(threads)
    settings = InferenceSettings()  # random weights: no record
    if args.checkpoint:
        model, ckpt_meta = load_checkpoint(args.checkpoint)
        settings = InferenceSettings.from_checkpoint(ckpt_meta, source=str(args.checkpoint))
    recorded = settings.input_size
    side = args.size or (max(recorded) if isinstance(recorded, (list, tuple)) else recorded) or 512
    size = (int(side), int(side))
    args.method = args.method or settings.method or "cam"
    print(f"malloc: {'tuned' if malloc_tuned() else 'glibc default'}; "
          f"OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'default')}; threads: {threads}; "
          f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    if args.checkpoint:
        weights = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        model = create_model(args.arch, num_classes=args.classes)
        _adapt_batchnorm(model, [phantom_image(size, seed=500 + i) for i in range(8)])
        weights = "random weights, BN statistics adapted on 8 phantoms"
    model.eval()
    images = torch.cat([phantom_image(size, in_chans=model.in_chans, seed=i) for i in range(args.batch)])
    print(f"model: {getattr(model, 'arch', args.arch)} ({weights}), {size[0]}x{size[1]}, batch {args.batch}, "
          f"{len(model.classes)} classes, {args.method} maps")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="miner-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.checkpoint:  # the checkpoint's recipe record and stage weights, as `miner export onnx` writes it
        result = export_checkpoint(args.checkpoint, work / "model.onnx", input_size=size, method=args.method,
                                   check=False)
    else:
        result = export_model(model, work / "model.onnx", input_size=size, method=args.method, check=False)
    print(f"export fp32: {time.perf_counter() - t0:.1f} s, {result.size_bytes / 1e6:.1f} MB")
    stage_weights = settings.stage_weights or None  # the checkpoint's maps, as the graph computes them
    runners = {"torch eager": lambda: class_maps(model, images, method=args.method, stage_weights=stage_weights)}
    # the product's torch backend: the same eager maps on an inference copy (BatchNorm folded, channels_last)
    from miner.backends.torch_backend import TorchBackend

    torch_backend = TorchBackend(model, input_size=size, method=args.method, device="cpu",
                                 stage_weights=stage_weights)

    def run_torch_backend():
        with torch.inference_mode():
            return torch_backend.run(images)

    runners["torch backend"] = run_torch_backend
    def ort(graph):
        # spinning off: idle ORT threads would otherwise busy-wait into the next backend's timed run
        return open_backend(graph, backend="onnxruntime", provider="cpu", intra_op_threads=threads, spinning=False)

    fp32 = ort(result.path)
    runners["onnxruntime fp32"] = lambda: fp32.run(images)
    splits = {}
    if args.int8:
        from miner.models.meta import read_onnx_metadata

        meta = read_onnx_metadata(result.path)
        for archive in args.archive:
            splits[archive] = archive_split(archive, size, calibration=args.calibration_images,
                                            held_out=args.check_images, classes=meta.classes)
        first = splits[args.archive[0]] if args.archive else None
        t0 = time.perf_counter()
        if first is not None:
            cal = [first.calibration[i : i + 1] for i in range(len(first.calibration))]
            where = f"{len(cal)} images of {args.archive[0]}"
        else:
            cal = calibration_images(size, model.in_chans, count=16)
            where = "16 phantoms"
        kind = quantize_onnx(result.path, work / "model.int8.onnx", calibrate=args.calibrate, images=cal,
                             calibration=where)
        kept = float_record(work / "model.int8.onnx")
        print(f"quantize int8 ({kind} QDQ, U8S8; {args.calibrate} calibration on {where}; kept float: "
              f"{', '.join(kept.get('parts', [])) or 'nothing'}): {time.perf_counter() - t0:.1f} s")
        int8 = ort(work / "model.int8.onnx")
        runners["onnxruntime int8"] = lambda: int8.run(images)
        layout_rewritten(result.path, work / "model.layout.onnx")
        fp32_layout = ort(work / "model.layout.onnx")
        runners["ort fp32, int8 layout"] = lambda: fp32_layout.run(images)

    outputs = {name: fn() for name, fn in runners.items()}  # warm-up (and the outputs compared below)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["torch eager"])
    print()
    print("vs torch: median over rounds of torch's time / this backend's time in the same round (load drift between "
          "rounds cancels); ratio of medians beside it")
    print(f"{'backend':<18} {'ms/batch':>9} {'min':>8} {'images/s':>9} {'vs torch':>9} {'(medians)':>10}")
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = statistics.median(t / u for t, u in zip(times["torch eager"], ts))
        print(f"{name:<18} {med * 1e3:9.1f} {min(ts) * 1e3:8.1f} {args.batch / med:9.2f} {paired:8.2f}x "
              f"{base / med:9.2f}x")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if "onnxruntime int8" in times:
        for ref in ("onnxruntime fp32", "ort fp32, int8 layout"):
            ratio = statistics.median(t / u for t, u in zip(times[ref], times["onnxruntime int8"]))
            note = (f" (target >= {TARGET_SPEEDUP:g}x: {'met' if ratio >= TARGET_SPEEDUP else 'missed'})"
                    if ref == "onnxruntime fp32" else " (the share int8 itself gives)")
            print(f"int8 images/s over {ref}: {ratio:.2f}x, median of {args.repeats} paired rounds{note}")

    print()
    pairs = [("torch backend", "torch eager"), ("onnxruntime fp32", "torch eager")]
    if "ort fp32, int8 layout" in outputs:
        pairs.append(("ort fp32, int8 layout", "onnxruntime fp32"))
    if "onnxruntime int8" in outputs:
        pairs.append(("onnxruntime int8", "onnxruntime fp32"))
    for name, ref_name in pairs:
        (logits, maps), (ref_logits, ref_maps) = outputs[name], outputs[ref_name]
        dl = float((logits - ref_logits).abs().max())
        dm = float((maps - ref_maps).abs().max())
        peak = float(ref_maps.abs().max())
        rho = rank_correlation(maps.flatten(0, 1), ref_maps.flatten(0, 1))
        line = (f"{name} vs {ref_name}: logits max|diff| {dl:.3g}; maps max|diff| {dm:.3g} (relative to the largest "
                f"map value {dm / peak:.3g}); rank correlation per map mean {float(rho.mean()):.4f} "
                f"min {float(rho.min()):.4f}")
        iou = _rank1_box_iou(ref_maps, maps, size)
        if iou is not None:
            line += (f"; rank-1 box IoU (mining T=3 + miner.boxes; every class of the batch, present or not) mean "
                     f"{iou[0]:.3f} min {iou[1]:.3f}, >= 0.5 for {iou[3]:.0%} of {iou[2]} boxes")
        print(line)
    for archive, split in splits.items():
        if archive == args.archive[0]:
            graph = work / "model.int8.onnx"
        else:  # calibrated on this archive's own images
            graph = work / f"model.int8.{len(list(work.glob('model.int8.*.onnx')))}.onnx"
            quantize_onnx(result.path, graph, calibrate=args.calibrate,
                          images=[split.calibration[i : i + 1] for i in range(len(split.calibration))],
                          calibration=f"{len(split.calibration)} images of {archive}")
        int8_archive = ort(graph)
        agreement = box_agreement(fp32, int8_archive, split.held_out, split.gt)
        print(f"int8 vs fp32 on {archive} ({split.describe()}): {agreement.line()}; "
              f"{'meets' if agreement.ok() else 'MISSES'} the box target")
    return 0


def _adapt_batchnorm(model, images) -> None:
    """Re-estimate BatchNorm running statistics on `images` (random weights: keeps activations in range)."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 2):
            model(torch.cat(images[i : i + 2]))
    model.eval()


def _rank1_box_iou(ref_maps, maps, size):
    """(mean, min, count, fraction >= 0.5) IoU of the rank-1 boxes of each image and class, after mining (T=3)
    and `miner.boxes`.

    None where `miner.mining` / `miner.boxes` are absent. A class boxed in one map set but not the other
    counts IoU 0.
    """
    try:
        from miner.boxes import boxes_from_maps
        from miner.mining import attention_mining
    except ImportError:
        return None

    def rank1(m):
        fused = attention_mining(m).fused  # linear head: the exact masking shortcut
        rows = boxes_from_maps(fused, original_sizes=[size] * m.shape[0])
        return {(i, int(r["class_index"])): (r["x"], r["y"], r["x"] + r["w"], r["y"] + r["h"])
                for i, image_rows in enumerate(rows) for r in image_rows if int(r["rank"]) == 1}

    a, b = rank1(ref_maps), rank1(maps)
    ious = []
    for key in set(a) | set(b):
        if key not in a or key not in b:
            ious.append(0.0)
            continue
        p, q = a[key], b[key]
        ix = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        iy = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = ix * iy
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        ious.append(inter / union if union > 0 else 0.0)
    if not ious:
        return None
    return sum(ious) / len(ious), min(ious), len(ious), sum(v >= 0.5 for v in ious) / len(ious)
