"""`miner export onnx|trt`: map-producing ONNX graphs and TensorRT engines."""
from __future__ import annotations

import argparse

from miner.cli._options import BATCH, integer, out_file, real

#: ONNX opsets the export writes (export/onnx.py MIN_OPSET..MAX_OPSET; tests/hostile/test_numbers.py checks)
OPSET = integer(17, 23)

HELP = "export a checkpoint to an ONNX graph of logits + all class maps, or build a TensorRT engine"
DESCRIPTION = (
    "onnx: one ONNX graph that outputs the logits and the maps of every class (gradient-based maps "
    "included), checked against eager PyTorch; with --int8 also its int8 version for CPU nodes, checked against "
    "it. trt: a TensorRT engine from such a graph."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from miner.config import ExportConfig

    d = ExportConfig()
    sub = parser.add_subparsers(dest="target", metavar="{onnx,trt}")
    sub.required = True

    p = sub.add_parser("onnx", help="checkpoint -> ONNX graph (logits [B,C], maps [B,C,h,w], dynamic batch)",
                       description="Export a checkpoint to one ONNX graph with logits and all class maps.")
    p.set_defaults(_parser=p)  # names "miner export onnx" in a usage error
    p.add_argument("checkpoint", help="model checkpoint (.pt) from `miner train`")
    p.add_argument("out", type=out_file, help="ONNX file to write (weights embedded below ~1.8 GB)")
    p.add_argument("--maps", dest="method", default=d.method, metavar="METHOD",
                   help="map method (cam, gradcam, hirescam, gradcam++, xgradcam, layercam, seg-gradcam, "
                        "seg-hirescam, pyramid-gradcam); default: cam for linear heads, gradcam otherwise")
    p.add_argument("--layer", default=d.layer, metavar="NAME",
                   help="layer the maps are taken at (default: the model's feature layer; pyramid: "
                        "comma-separated layers)")
    p.add_argument("--plain-maps", action="store_true",
                   help="maps without the checkpoint's calibrated stage weights (miner calibrate)")
    p.add_argument("--opset", type=OPSET, default=d.opset, metavar="N", help=f"ONNX opset (default {d.opset})")
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help="image size of the graph (default: the checkpoint's input_size)")
    p.add_argument("--masks", dest="masks_input", action=argparse.BooleanOptionalAction, default=d.masks_input,
                   help="add the class-wise erasure masks input for attention mining (default: where the head "
                        "needs it)")
    p.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=d.external_data,
                   help="weights in OUT.data beside the graph (default: only above ~1.8 GB)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=d.check,
                   help=f"compare ONNX Runtime with eager PyTorch (max abs diff <= {d.atol:g}); on by default")
    p.add_argument("--atol", type=real(0.0, 1.0, lo_open=True), default=d.atol,
                   help=f"tolerance of the check (default {d.atol:g}; scaled by outputs larger than 1)")
    p.add_argument("--int8", action="store_true",
                   help="also write OUT.int8.onnx: static int8 (QDQ, U8S8) for ONNX Runtime on CPU nodes, checked "
                        "against the fp32 graph (rank-1 boxes, Acc at IoU 0.3, images/s); refused when its boxes move "
                        "(median rank-1 IoU < 0.9 or Acc at 0.3 down by more than 0.02)")
    p.add_argument("--calibration", default=None, metavar="ARCHIVE",
                   help="--int8: calibrate on this archive's images (as `miner mine` reads them) and check on other "
                        "images of it (default: phantom chests)")
    p.add_argument("--calibration-images", type=integer(1, 100_000), default=64, metavar="N",
                   help="--int8: images the calibration reads (default 64)")
    p.add_argument("--int8-check-images", type=integer(1, 100_000), default=256, metavar="N",
                   help="--int8: images the check against fp32 mines with both graphs (default 256)")
    p.add_argument("--int8-float", default="map-output", metavar="PARTS",
                   help="--int8: comma-separated parts kept in float32: map-output (the map product's output and what "
                        "follows it; the default), map (the whole map branch: boxes closer to fp32, ~15 %% slower), "
                        "stem, coarsest, or node names; 'none' for none")
    p.add_argument("--int8-force", action="store_true",
                   help="--int8: keep the int8 graph even when its boxes miss the target (with a warning)")

    t = sub.add_parser("trt", help="ONNX graph -> TensorRT engine (needs TensorRT and an NVIDIA GPU)",
                       description="Build a TensorRT engine (with OUT.json metadata) from a graph of "
                                   "`miner export onnx`.")
    t.set_defaults(_parser=t)
    t.add_argument("onnx", help="ONNX graph from `miner export onnx`")
    t.add_argument("engine", type=out_file, help="engine file to write (.engine or .plan)")
    t.add_argument("--fp16", action="store_true", help="allow half-precision layers")
    t.add_argument("--int8", action="store_true",
                   help="int8 from the graph's explicit Q/DQ nodes (a quantized graph); no calibration")
    t.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="let FP32 layers use TF32 tensor cores (TensorRT's default; --no-tf32 for exact float32)")
    t.add_argument("--min-batch", type=BATCH, default=d.min_batch, metavar="N")
    t.add_argument("--opt-batch", type=BATCH, default=d.opt_batch, metavar="N")
    t.add_argument("--max-batch", type=BATCH, default=d.max_batch, metavar="N")
    t.add_argument("--workspace", type=real(0.0, 1024.0, lo_open=True), default=d.workspace_gb, metavar="GB",
                   help=f"workspace memory pool limit in GiB (default {d.workspace_gb:g})")
    t.add_argument("--verbose", action="store_true", help="TensorRT's verbose build log")


def run(args: argparse.Namespace) -> int:
    if args.target == "onnx":
        return _run_onnx(args)
    return _run_trt(args)


def _run_onnx(args: argparse.Namespace) -> int:
    from miner.export.onnx import export_checkpoint

    layer = args.layer
    if layer and "," in layer:
        layer = [s.strip() for s in layer.split(",") if s.strip()]
    # a failed check raises ExportError: one line with the differences, exit code 1
    result = export_checkpoint(
        args.checkpoint,
        args.out,
        input_size=args.input_size,
        method=args.method,
        layer=layer,
        opset=args.opset,
        masks_input=args.masks_input,
        external_data=args.external_data,
        check=args.check,
        atol=args.atol,
        plain_maps=args.plain_maps,
    )
    print(result.summary())
    if args.int8:
        return _run_int8(args, result.path)
    return 0


def _run_int8(args: argparse.Namespace, fp32: object) -> int:
    """`--int8`: the int8 graph beside OUT, its agreement with OUT, and a refusal when its boxes move."""
    import sys

    from miner.bench.int8 import export_int8
    from miner.errors import ExportError

    parts = [] if args.int8_float.strip().lower() == "none" else [
        p.strip() for p in args.int8_float.split(",") if p.strip()]
    result = export_int8(fp32, archive=args.calibration, calibration=args.calibration_images,
                         check_images=args.int8_check_images, keep_float=parts)
    for line in result.lines():
        print(line)
    if not result.ok:
        if args.int8_force:
            print(f"warning: {result.path} moves the boxes beyond the target; kept because of --int8-force",
                  file=sys.stderr)
            return 0
        result.path.unlink(missing_ok=True)
        why = ("static quantization failed and the dynamic fallback is no drop-in" if result.kind != "static"
               else f"the int8 graph moves the boxes ({result.agreement.line()})")
        raise ExportError(f"{result.path}: {why}; not written. Calibrate on your own archive (--calibration ARCHIVE), "
                          "keep more of the map float (--int8-float map), or keep it anyway with --int8-force")
    return 0


def _run_trt(args: argparse.Namespace) -> int:
    import time

    from miner.export.trt import EngineSettings, build_engine

    settings = EngineSettings(
        fp16=args.fp16,
        int8=args.int8,
        tf32=args.tf32,
        min_batch=args.min_batch,
        opt_batch=args.opt_batch,
        max_batch=args.max_batch,
        workspace_gb=args.workspace,
    )
    start = time.perf_counter()
    path = build_engine(args.onnx, args.engine, settings, verbose=args.verbose)
    precision = "+".join(p for p, on in (("fp16", args.fp16), ("int8", args.int8)) if on) or "fp32"
    print(
        f"{path} ({path.stat().st_size / 1e6:.1f} MB, {precision}, batch {settings.min_batch}/{settings.opt_batch}/"
        f"{settings.max_batch}) built in {time.perf_counter() - start:.1f} s"
    )
    return 0
