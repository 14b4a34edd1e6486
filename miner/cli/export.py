"""`miner export onnx|trt`: map-producing ONNX graphs and TensorRT engines."""
from __future__ import annotations

import argparse

HELP = "export a checkpoint to an ONNX graph of logits + all class maps, or build a TensorRT engine"
DESCRIPTION = (
    "onnx: one ONNX graph that outputs the logits and the maps of every class (gradient-based maps "
    "included), checked against eager PyTorch. trt: a TensorRT engine from such a graph."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from miner.config import ExportConfig

    d = ExportConfig()
    sub = parser.add_subparsers(dest="target", metavar="{onnx,trt}")
    sub.required = True

    p = sub.add_parser("onnx", help="checkpoint -> ONNX graph (logits [B,C], maps [B,C,h,w], dynamic batch)",
                       description="Export a checkpoint to one ONNX graph with logits and all class maps.")
    p.add_argument("checkpoint", help="model checkpoint (.pt) from `miner train`")
    p.add_argument("out", help="ONNX file to write (weights embedded below ~1.8 GB)")
    p.add_argument("--maps", dest="method", default=d.method, metavar="METHOD",
                   help="map method (cam, gradcam, hirescam, gradcam++, xgradcam, layercam, seg-gradcam, "
                        "seg-hirescam, pyramid-gradcam); default: cam for linear heads, gradcam otherwise")
    p.add_argument("--layer", default=d.layer, metavar="NAME",
                   help="layer the maps are taken at (default: the model's feature layer; pyramid: "
                        "comma-separated layers)")
    p.add_argument("--plain-maps", action="store_true",
                   help="maps without the checkpoint's calibrated stage weights (miner calibrate)")
    p.add_argument("--opset", type=int, default=d.opset, metavar="N", help=f"ONNX opset (default {d.opset})")
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help="image size of the graph (default: the checkpoint's input_size)")
    p.add_argument("--masks", dest="masks_input", action=argparse.BooleanOptionalAction, default=d.masks_input,
                   help="add the class-wise erasure masks input for attention mining (default: where the head "
                        "needs it)")
    p.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=d.external_data,
                   help="weights in OUT.data beside the graph (default: only above ~1.8 GB)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=d.check,
                   help=f"compare ONNX Runtime with eager PyTorch (max abs diff <= {d.atol:g}); on by default")
    p.add_argument("--atol", type=float, default=d.atol,
                   help=f"tolerance of the check (default {d.atol:g}; scaled by outputs larger than 1)")

    t = sub.add_parser("trt", help="ONNX graph -> TensorRT engine (needs TensorRT and an NVIDIA GPU)",
                       description="Build a TensorRT engine (with OUT.json metadata) from a graph of "
                                   "`miner export onnx`.")
    t.add_argument("onnx", help="ONNX graph from `miner export onnx`")
    t.add_argument("engine", help="engine file to write (.engine or .plan)")
    t.add_argument("--fp16", action="store_true", help="allow half-precision layers")
    t.add_argument("--int8", action="store_true",
                   help="int8 from the graph's explicit Q/DQ nodes (a quantized graph); no calibration")
    t.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="let FP32 layers use TF32 tensor cores (TensorRT's default; --no-tf32 for exact float32)")
    t.add_argument("--min-batch", type=int, default=d.min_batch, metavar="N")
    t.add_argument("--opt-batch", type=int, default=d.opt_batch, metavar="N")
    t.add_argument("--max-batch", type=int, default=d.max_batch, metavar="N")
    t.add_argument("--workspace", type=float, default=d.workspace_gb, metavar="GB",
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
    # a failed check raises ModelError: one line with the differences, exit code 1
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
