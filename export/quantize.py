"""INT8 graphs with explicit Q/DQ nodes, for CPU nodes (VNNI) and for TensorRT's explicit quantization.

`quantize_onnx` runs ONNX Runtime's static post-training quantization in QDQ format: a calibration pass
over images records activation ranges, then QuantizeLinear/DequantizeLinear pairs are inserted around the
quantized operators. Calibration images are the user's own archive where one is given (read through the mining
job's decode path by `miner.bench.int8.archive_split`), else chest-like phantoms (`calibration_images`).

- ``target="cpu"``: the backbone's Conv, Relu, Add, MaxPool, Concat, the MSA's upsampling (MatMul with the
  interpolation matrices and the Transpose/Reshape/Unsqueeze around it) and the pooling; int8 weights per output
  channel and *unsigned* int8 activations (U8S8). ONNX Runtime's x86 kernels (VNNI `vpdpbusd` is u8 x s8) then run
  whole int8 chains; measured on ResNet-50-MSA at 512 px: signed activations (S8S8) or quantizing only the
  convolutions (float Relu/Add between Q/DQ pairs) made the int8 graph slower than fp32 (3.7-4.1 s and 1.7 s vs
  1.3 s per batch of 4), U8S8 over the whole backbone faster (0.97 s).
- ``target="tensorrt"``: Q/DQ at the convolutions' inputs only (TensorRT's recommended placement), signed
  symmetric activations (zero point 0), which TensorRT requires.

**Parts kept float** (`keep_float`, resolved on the graph by `graph_parts`):

- ``map-output`` (the default for ``cpu``): the map product (the MatMul of class weights and features) reads int8
  inputs and accumulates in int32 but writes float32 (its output's Q/DQ pair is removed: ONNX Runtime runs it as
  MatMulIntegerToFloat), and the Reshape/Relu after it stay float: the maps are not rounded to 256 levels. Rounding
  them (nothing kept float) moved the boxes most (embedded model: rank-1 IoU median 0.95 vs 0.97, Acc at 0.3
  +0.03 off fp32, map rank correlation min 0.92) for no speed.
- ``map``: the whole map branch float, from the convolutions that make the map's features (the MSA's three 1x1
  convolutions) to the maps, Concat and upsampling included: the closest boxes (median 0.99 / 0.98 on plain / real
  phantoms) but 2.8x fp32 instead of 3.3x.
- ``stem``: the first convolution and its Relu; ``coarsest``: the convolutions, Relus and Adds at the coarsest
  resolution (layer4). Measured, not defaults: with either float the int8 graph ran at 2.1x (stem: ONNX Runtime's
  float MaxPool after it is slow) and 2.4x (layer4) fp32 instead of 3.3x, with the same boxes (medians 0.97).

**Exact rewrites before quantizing** (``cpu``; the same sums, in forms ONNX Runtime's int8 kernels run faster):
the stride-2 stem convolution of the one-channel image as SpaceToDepth(2) + a stride-1 convolution over four
channels (`_stem_space_to_depth`: 14 vs 23 ms per batch of 16 at 320 px in int8; float gains nothing, the fp32
graph keeps its form), Transposes of the MSA's upsampling with size-1 axes merged (`_collapse_transposes`: 1.0 vs
4.4 ms each; the fp32 graph gains ~5 % from the same, `layout_rewritten` writes that reference) and the spatial
ReduceMean as GlobalAveragePool (`_mean_as_global_pool`, which runs on uint8).

If static quantization fails on a graph (an operator the calibrator cannot handle), ``fallback="dynamic"``
retries with dynamic quantization (weights int8, activation scales computed per batch at run time: no
calibration data, slower, and not loadable by TensorRT). The graph records which one was used in its
metadata (``miner.extra.quantization``), what was kept float (``quantization_float``: the parts and node
names, JSON), the calibration (``quantization_calibration``) and, from `miner.bench.int8.export_int8`, the
agreement with fp32 (``quantization_agreement``).

Whether an int8 graph keeps the boxes (both graphs mining the same held-out images through the product's
pipeline) is checked above this package, in `miner.bench.int8` (``miner export onnx --int8``, ``miner bench
export --archive``): quantizing a graph does not depend on the mining job.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from miner.errors import ModelError, UsageError
from miner.export.parity import phantom_image
from miner.models.meta import ModelMeta, read_onnx_metadata

#: operators quantized for ONNX Runtime on CPU: the backbone, the MSA's upsampling (MatMul with the interpolation
#: matrices, and the Transpose/Reshape/Unsqueeze around it, which then move uint8 instead of float32) and the pooling;
#: not the logits' Gemm
CPU_OPS = ("Conv", "Relu", "Add", "MaxPool", "Concat", "GlobalAveragePool", "MatMul", "Transpose", "Reshape",
           "Unsqueeze")
#: Q/DQ placement for TensorRT: the inputs of the weighted operators
TENSORRT_OPS = ("Conv",)
#: parts of a graph `keep_float` can name (module doc)
FLOAT_PARTS = ("map-output", "map", "stem", "coarsest")
#: parts kept float by default, per target (module doc)
DEFAULT_KEEP_FLOAT = {"cpu": ("map-output",), "tensorrt": ()}
#: nodes between the map product and the ``maps`` output that only reshape or rectify it
_MAP_TAIL_OPS = ("Relu", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")
#: operators that compute the maps from features and class weights
_MAP_PRODUCT_OPS = ("MatMul", "Gemm", "Einsum", "Conv")


def calibration_images(
    input_size: tuple[int, int], in_chans: int, *, count: int = 16, seed: int = 1000
) -> list[np.ndarray]:
    """`count` chest-like phantom images [1, in_chans, H, W] float32 in [0, 1] (distinct seeds).

    Seeds start at 1000 so calibration images differ from the images the parity checks use.
    """
    return [phantom_image(input_size, in_chans=in_chans, seed=seed + i).numpy() for i in range(count)]


class _Reader:
    """An ONNX Runtime `CalibrationDataReader` over a list of images (batches of `batch`)."""

    def __init__(self, images: Sequence[np.ndarray], meta: ModelMeta, *, batch: int = 4) -> None:
        self._batches: list[dict[str, np.ndarray]] = []
        for i in range(0, len(images), batch):
            x = np.concatenate(images[i : i + batch]).astype(np.float32)
            feed = {"images": x}
            if meta.masks_input:
                feed["masks"] = np.ones((x.shape[0], meta.num_classes, *meta.map_size), np.float32)
            self._batches.append(feed)
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


# ------------------------------------------------------------------------------------------ parts of a graph


def graph_parts(model: Any) -> dict[str, list[str]]:
    """Node names of each part of `FLOAT_PARTS` in an exported map graph (an `onnx.ModelProto`); module doc.

    ``map-output`` is what follows the map product (`map_product`) up to the ``maps`` output (its Reshape and
    Relu); ``map`` walks back from ``maps`` through non-Conv nodes and stops at (includes) the Convs it reaches;
    ``stem`` walks forward from the ``images`` input to the first Convs and takes them and the Relu right after
    each; ``coarsest`` takes the Conv, Relu and Add nodes whose output has the smallest spatial extent among the
    Convs' outputs (ONNX shape inference; empty when shapes are unknown).
    """
    nodes = list(model.graph.node)
    order = {n.name: k for k, n in enumerate(nodes)}
    by_name = {n.name: n for n in nodes}
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)

    def is_conv(n: Any) -> bool:
        return n.op_type in ("Conv", "ConvTranspose")

    def walk(start: Sequence[str], *, backward: bool) -> list[str]:
        """Nodes reached from the tensors `start`, not walking past a Conv."""
        seen: set[str] = set()
        todo = list(start)
        while todo:
            tensor = todo.pop()
            reached = ([producer[tensor]] if tensor in producer else []) if backward else consumers.get(tensor, [])
            for n in reached:
                if n.name in seen:
                    continue
                seen.add(n.name)
                if not is_conv(n):
                    todo.extend(n.input if backward else n.output)
        return sorted(seen, key=order.__getitem__)

    outputs = [o.name for o in model.graph.output]
    maps = "maps" if "maps" in outputs else outputs[-1]
    parts: dict[str, list[str]] = {"map-output": map_product(model)[1], "map": walk([maps], backward=True)}
    stem = [name for name in walk([model.graph.input[0].name], backward=False) if is_conv(by_name[name])]
    for name in list(stem):
        follow = consumers.get(by_name[name].output[0], [])
        if len(follow) == 1 and follow[0].op_type in ("Relu", "Clip"):
            stem.append(follow[0].name)
    parts["stem"] = stem
    extents = _extents(model)
    conv_extents = [extents[n.output[0]] for n in nodes if is_conv(n) and n.output[0] in extents]
    smallest = min(conv_extents) if conv_extents else None
    parts["coarsest"] = [n.name for n in nodes if smallest is not None and n.op_type in ("Conv", "Relu", "Add")
                         and extents.get(n.output[0]) == smallest]
    return parts


def map_product(model: Any) -> tuple[str | None, list[str]]:
    """(the node that computes the maps from features and class weights, the nodes after it up to ``maps``).

    Walks back from the ``maps`` output through Relu/Reshape-like nodes to the first MatMul, Gemm, Einsum or Conv
    (None when another operator comes first).
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = [o.name for o in model.graph.output]
    tensor = "maps" if "maps" in outputs else outputs[-1]
    tail: list[str] = []
    while tensor in producer:
        n = producer[tensor]
        if n.op_type in _MAP_PRODUCT_OPS:
            return n.name, tail[::-1]
        if n.op_type not in _MAP_TAIL_OPS:
            break
        tail.append(n.name)
        tensor = n.input[0]
    return None, tail[::-1]


def _extents(model: Any) -> dict[str, int]:
    """Tensor name -> H * W of the 4-D tensors whose spatial sizes ONNX shape inference knows."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort here
        return {}
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            out[v.name] = int(dims[2].dim_value) * int(dims[3].dim_value)
    return out


def resolve_keep_float(model: Any, keep_float: Sequence[str]) -> dict[str, list[str]]:
    """{part or node name: node names} for `keep_float` (parts of `FLOAT_PARTS`, or node names of the graph)."""
    parts = graph_parts(model)
    names = {n.name for n in model.graph.node}
    out: dict[str, list[str]] = {}
    for item in keep_float:
        if item in parts:
            out[item] = parts[item]
        elif item in names:
            out[item] = [item]
        else:
            raise UsageError(f"keep float: {item!r} is neither a part ({', '.join(FLOAT_PARTS)}) nor a node of "
                             "the graph")
    return out


# ------------------------------------------------------------------------------------------ quantization


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    images: Sequence[np.ndarray] | None = None,
    target: str = "cpu",
    op_types: Sequence[str] | None = None,
    per_channel: bool = True,
    calibrate: str = "minmax",
    keep_float: Sequence[str] | None = None,
    symmetric: bool | None = None,
    fallback: str | None = "dynamic",
    calibration: str | None = None,
    extra_options: dict[str, Any] | None = None,
    rewrite_stem: bool = True,
    collapse_transposes: bool = True,
) -> str:
    """Write an int8 (QDQ) version of the exported graph `src` to `dst`; returns ``"static"`` or ``"dynamic"``.

    Args:
        src, dst: fp32 graph from `miner export onnx`; output path.
        images: calibration images ([1 or n, in_chans, H, W] float32 in [0, 1]); default 16 phantoms.
        target: ``cpu`` or ``tensorrt`` (symmetric activations); see the module doc.
        op_types: ONNX operators to quantize (default: the target's, see the module doc).
        per_channel: per-output-channel weight scales.
        calibrate: ``minmax``, ``entropy`` or ``percentile``.
        keep_float: parts (`FLOAT_PARTS`) or node names left in float32; None: the target's default
            (`DEFAULT_KEEP_FLOAT`).
        symmetric: symmetric activation ranges (zero point in the middle); None: only for ``tensorrt``.
        fallback: ``dynamic`` to retry with dynamic quantization when static fails, or None to raise.
        calibration: what the images were, for the metadata (default: "N phantoms" / "N images").
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if target not in ("cpu", "tensorrt"):
        raise UsageError(f"quantization target must be 'cpu' or 'tensorrt', got {target!r}")
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # the optimiser's notes on unused initializers are not the user's business
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if calibrate not in methods:
        raise UsageError(f"calibration method must be one of {', '.join(methods)}, got {calibrate!r}")
    src, dst = Path(src), Path(dst)
    meta = read_onnx_metadata(src)
    if images is None:
        images = calibration_images(meta.input_size, meta.in_chans)
        calibration = calibration or f"{len(images)} phantoms"
    calibration = calibration or f"{sum(int(a.shape[0]) for a in images)} images"
    keep = tuple(DEFAULT_KEEP_FLOAT[target] if keep_float is None else keep_float)
    dst.parent.mkdir(parents=True, exist_ok=True)
    prepared = dst.with_name(dst.stem + ".prep.onnx")
    if op_types is None:
        op_types = CPU_OPS if target == "cpu" else TENSORRT_OPS
    activation = QuantType.QUInt8 if target == "cpu" else QuantType.QInt8
    sym = target == "tensorrt" if symmetric is None else bool(symmetric)
    extra: dict[str, Any] = {"ActivationSymmetric": sym, "WeightSymmetric": True}
    if calibrate == "percentile":
        extra["CalibPercentile"] = 99.999
    kept: dict[str, list[str]] = {}
    try:
        # shape inference + graph optimisation before quantization (ONNX Runtime's recommended step)
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        rewritten = _mean_as_global_pool(graph) if "GlobalAveragePool" in op_types else 0
        if target == "cpu" and rewrite_stem and "stem" not in keep:
            rewritten += len(_stem_space_to_depth(graph))
        if target == "cpu" and collapse_transposes:
            rewritten += _collapse_transposes(graph)
        if rewritten:
            onnx.save_model(graph, str(prepared))
        kept = resolve_keep_float(graph, keep)
        excluded = sorted({n for names in kept.values() for n in names})
        # MatMul weights (the MSA's interpolation matrices) per tensor: QLinearMatMul takes no per-column scales of a
        # batched [1, K, N] weight
        inits = {t.name for t in graph.graph.initializer}
        overrides = {i: [{"symmetric": True}] for n in graph.graph.node if n.op_type == "MatMul"
                     for i in n.input if i in inits}
        if overrides and "MatMul" in op_types:
            extra["TensorQuantOverrides"] = overrides
        extra.update(extra_options or {})
        # map-output: the map product reads int8 features and class weights but writes float maps (its output's
        # Q/DQ pair is removed below; ONNX Runtime then runs it as MatMulIntegerToFloat)
        product = map_product(graph)[0] if "map-output" in keep else None
        try:
            quantize_static(
                str(prepared),
                str(dst),
                _Reader(images, meta),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                activation_type=activation,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[calibrate],
                nodes_to_exclude=excluded,
                extra_options=extra,
            )
            kind = "static"
        except Exception as err:  # noqa: BLE001 - the calibrator raises many kinds
            if fallback != "dynamic":
                raise ModelError(f"{src}: static int8 quantization failed ({type(err).__name__}: {err})") from None
            quantize_dynamic(
                str(prepared),
                str(dst),
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
            )
            kind = "dynamic"
        if kind == "static":
            quantized = onnx.load(str(dst))
            changed = _float_between_float_nodes(quantized, excluded)
            if product is not None and _float_output(quantized, product):
                kept["map-output"] = [*kept.get("map-output", []), f"{product} (output)"]
                changed = True
            if changed:
                onnx.save_model(quantized, str(dst))
    finally:
        if prepared.exists():
            prepared.unlink()
        for leftover in dst.parent.glob(dst.stem + ".prep*"):
            leftover.unlink()
    floats = sorted({n for v in kept.values() for n in v if not n.endswith(" (output)")})
    float_outputs = sorted({n[: -len(" (output)")] for v in kept.values() for n in v if n.endswith(" (output)")})
    record = {
        "quantization": f"int8-{kind}",
        "quantization_target": target,
        "quantization_float": json.dumps({"parts": list(keep), "nodes": floats, "float_outputs": float_outputs}),
        "quantization_calibration": json.dumps({"images": calibration, "method": calibrate,
                                                "per_channel": per_channel, "symmetric_activations": sym}),
    }
    write_int8_metadata(dst, meta, record)
    return kind


def _float_between_float_nodes(model: Any, float_names: Sequence[str]) -> bool:
    """Float nodes read float nodes' results unrounded: where ONNX Runtime's quantizer rounded a tensor for an int8
    consumer (Q -> DQ) and handed the rounded copy to a float consumer as well, that consumer reads the tensor
    itself again (the map's Concat feeds the int8 pooling and the float map product). Unused Q/DQ nodes go."""
    nodes = list(model.graph.node)
    floats = set(float_names)
    producer = {o: n for n in nodes for o in n.output}
    changed = False
    for n in nodes:
        if n.name not in floats:
            continue
        for k, name in enumerate(n.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            source = producer.get(q.input[0])
            if source is not None and source.name in floats:
                n.input[k] = q.input[0]
                changed = True
    if changed:
        _drop_unused(model, ("QuantizeLinear", "DequantizeLinear"))
    return changed


def _drop_unused(model: Any, op_types: Sequence[str]) -> None:
    """Remove nodes of `op_types` whose outputs nothing reads (repeatedly: a Q left without its DQ goes too)."""
    while True:
        nodes = list(model.graph.node)
        read = {i for n in nodes for i in n.input} | {o.name for o in model.graph.output}
        unused = [n for n in nodes if n.op_type in op_types and not any(o in read for o in n.output)]
        if not unused:
            return
        drop = {id(n) for n in unused}
        kept = [n for n in nodes if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(kept)


def _float_output(model: Any, node_name: str) -> bool:
    """Drop the QuantizeLinear -> DequantizeLinear pair on the first output of `node_name` (its consumers read the
    float result). Returns whether there was one."""
    nodes = list(model.graph.node)
    node = next((n for n in nodes if n.name == node_name), None)
    if node is None:
        return False
    out = node.output[0]
    graph_outputs = {o.name for o in model.graph.output}
    drop: set[int] = set()
    for q in (n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == out):
        dqs = [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]
        if any(d.output[0] in graph_outputs for d in dqs) or any(
                q.output[0] in n.input for n in nodes if n.op_type != "DequantizeLinear"):
            continue  # a quantized consumer or a graph output: leave the pair
        for dq in dqs:
            for n in nodes:
                for k, name in enumerate(n.input):
                    if name == dq.output[0]:
                        n.input[k] = out
            drop.add(id(dq))
        drop.add(id(q))
    if not drop:
        return False
    kept = [n for n in nodes if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return True


def _stem_space_to_depth(model: Any) -> list[str]:
    """Rewrite a stride-2 convolution of the graph's input with few channels as SpaceToDepth(2) + a stride-1
    convolution over 4x the channels (the same sums: each output pixel reads the same input pixels with the same
    weights, rearranged). Returns the rewritten nodes' names.

    ONNX Runtime's int8 convolution of a one-channel image gathers an im2col row of 49 single bytes per output
    pixel for a 7x7 kernel; on four channels the rows are 16 runs of 4 bytes: 14 vs 23 ms per batch of 16 at
    320 px here (the float convolution gains nothing from it: 30 vs 25 ms, so the fp32 graph keeps its form).
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    shapes = _shapes(model)
    graph_input = model.graph.input[0].name
    done: list[str] = []
    new_nodes = []
    for n in model.graph.node:
        rewritten = None
        if n.op_type == "Conv" and len(n.input) >= 2 and n.input[1] in inits and _from_input(n, producer, graph_input):
            rewritten = _s2d_conv(numpy_helper.to_array(inits[n.input[1]]), shapes.get(n.input[0]),
                                  {a.name: helper.get_attribute_value(a) for a in n.attribute})
        if rewritten is None:
            new_nodes.append(n)
            continue
        weight, pads = rewritten
        name = n.name
        w_name = n.input[1] + "_s2d"
        model.graph.initializer.append(numpy_helper.from_array(weight, w_name))
        s2d_out = n.input[0] + "_s2d"
        new_nodes.append(helper.make_node("SpaceToDepth", [n.input[0]], [s2d_out], name=name + "_s2d", blocksize=2))
        new_nodes.append(helper.make_node("Conv", [s2d_out, w_name, *n.input[2:]], list(n.output), name=name,
                                          kernel_shape=list(weight.shape[2:]), strides=[1, 1], pads=pads))
        done.append(name)
    if done:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return done


def _from_input(node: Any, producer: dict[str, Any], graph_input: str) -> bool:
    """Whether `node`'s first input is computed from the graph input by elementwise nodes only (normalisation)."""
    tensor = node.input[0]
    for _ in range(8):
        if tensor == graph_input:
            return True
        n = producer.get(tensor)
        if n is None or n.op_type not in ("Sub", "Div", "Mul", "Add", "Cast", "Identity"):
            return False
        tensor = n.input[0]
    return False


def _s2d_conv(weight: np.ndarray, shape: list[int | None] | None,
              attrs: dict[str, Any]) -> tuple[np.ndarray, list[int]] | None:
    """(weight [O, 4C, k', k'], pads) of the stride-1 convolution after SpaceToDepth(2) equal to the stride-2
    convolution with `weight` and `attrs` on an input of `shape`, or None
    where the rewrite does not apply (not stride 2, dilated, grouped, more than 3 channels, odd or unknown sizes)."""
    if weight.ndim != 4 or attrs.get("group", 1) != 1 or list(attrs.get("strides", [1, 1])) != [2, 2]:
        return None
    if any(d != 1 for d in attrs.get("dilations", [1, 1])) or attrs.get("auto_pad", b"NOTSET") not in (
        b"NOTSET",
        "NOTSET",
    ):
        return None
    if not shape or len(shape) != 4 or shape[2] is None or shape[3] is None or shape[2] % 2 or shape[3] % 2:
        return None
    out_c, in_c, kh, kw = weight.shape
    if in_c > 3:
        return None
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    axes = []
    for axis, (k, size) in enumerate(((kh, shape[2]), (kw, shape[3]))):
        begin, end = pads[axis], pads[axis + 2]
        taps = [(u, r, (u - r - begin) // 2) for u in range(k) for r in (0, 1) if (u - r - begin) % 2 == 0]
        lo = min(d for _, _, d in taps)
        span = max(d for _, _, d in taps) - lo + 1
        out = (size + begin + end - k) // 2 + 1
        new_begin = -lo
        new_end = out - 1 + span - size // 2 - new_begin
        if new_begin < 0 or new_end < 0:
            return None
        axes.append((taps, lo, span, new_begin, new_end))
    (ty, loy, ky, by, ey), (tx, lox, kx, bx, ex) = axes
    new = np.zeros((out_c, 4 * in_c, ky, kx), dtype=weight.dtype)
    for uy, ry, dy in ty:
        for ux, rx, dx in tx:
            for c in range(in_c):
                new[:, (ry * 2 + rx) * in_c + c, dy - loy, dx - lox] = weight[:, c, uy, ux]
    return new, [by, bx, ey, ex]


def _shapes(model: Any) -> dict[str, list[int | None]]:
    """Tensor name -> dims (None where unknown), where ONNX shape inference knows the rank."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is best effort here
        return {}
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
            for v in values if v.type.tensor_type.HasField("shape")}


def _collapse_transposes(model: Any) -> int:
    """Rewrite Transposes over tensors with size-1 axes, or with axes that stay neighbours, as Reshape -> Transpose of
    the merged axes -> Reshape (the same bytes in the same order). Returns how many were rewritten.

    The MSA's upsampling is exported as matrix products with six-axis Transposes between them (``[40, 1, B, C, 1,
    10] -> [B, C, 40, 10, 1, 1]``); ONNX Runtime moves those element by element (4.4 ms for 1.2 M uint8 values here)
    but the same move as ``[40, B*C, 10] -> [B*C, 40, 10]`` in blocks (1.0 ms).
    """
    from onnx import helper, numpy_helper

    shapes = _shapes(model)
    done = 0
    new_nodes = []
    for n in model.graph.node:
        dims = shapes.get(n.input[0]) if n.op_type == "Transpose" else None
        perm = next((list(helper.get_attribute_value(a)) for a in n.attribute if a.name == "perm"), None)
        plan = _merged_transpose(dims, perm) if dims and perm else None
        if plan is None:
            new_nodes.append(n)
            continue
        in_shape, merged_perm, out_shape = plan
        names = [f"{n.name}_collapse_{k}" for k in range(4)]
        model.graph.initializer.extend([numpy_helper.from_array(np.asarray(in_shape, np.int64), names[0]),
                                        numpy_helper.from_array(np.asarray(out_shape, np.int64), names[1])])
        new_nodes += [
            helper.make_node("Reshape", [n.input[0], names[0]], [names[2]], name=n.name + "_in"),
            helper.make_node("Transpose", [names[2]], [names[3]], name=n.name, perm=merged_perm),
            helper.make_node("Reshape", [names[3], names[1]], [n.output[0]], name=n.name + "_out"),
        ]
        done += 1
    if done:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return done


def _merged_transpose(dims: list[int | None], perm: list[int]) -> tuple[list[int], list[int], list[int]] | None:
    """(input shape, perm, output shape) of the same Transpose with size-1 axes dropped and neighbouring axes merged;
    None when that removes no axis or more than one size is unknown. The unknown size becomes -1."""
    if len(dims) != len(perm) or sum(d is None for d in dims) > 1:
        return None
    kept = [a for a in perm if dims[a] != 1]  # axes of the output order that carry data
    groups: list[list[int]] = []
    for a in kept:
        # a neighbour of the group's last axis in the input (only size-1 axes between) joins the group
        if groups and groups[-1][-1] < a and all(dims[b] == 1 for b in range(groups[-1][-1] + 1, a)):
            groups[-1].append(a)
        else:
            groups.append([a])
    if len(groups) >= len(dims) or len(groups) < 2:
        return None

    def size(group: list[int]) -> int:
        if any(dims[a] is None for a in group):
            return -1
        return int(np.prod([dims[a] for a in group]))

    by_input = sorted(range(len(groups)), key=lambda g: groups[g][0])
    in_shape = [size(groups[g]) for g in by_input]
    merged_perm = [by_input.index(g) for g in range(len(groups))]
    out_shape = [-1 if dims[a] is None else int(dims[a]) for a in perm]
    if merged_perm == sorted(merged_perm):
        return None
    return in_shape, merged_perm, out_shape


def _mean_as_global_pool(model: Any) -> int:
    """Rewrite ``ReduceMean`` over the spatial axes of a 4-D tensor as ``GlobalAveragePool`` (+ ``Flatten``).

    The same mean, as an operator ONNX Runtime runs on uint8 (``QLinearGlobalAveragePool``): the MSA's pooled
    features then leave the int8 domain as [B, C] instead of being dequantized at [B, C, h, w] for the logits.
    Returns how many nodes were rewritten.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    shapes = {k: len(v) for k, v in _shapes(model).items()}
    done = 0
    new_nodes = []
    for n in model.graph.node:
        if n.op_type == "ReduceMean" and shapes.get(n.input[0]) == 4:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            axes = attrs.get("axes")
            if axes is None and len(n.input) > 1 and n.input[1] in inits:
                axes = numpy_helper.to_array(inits[n.input[1]]).tolist()
            if axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]:
                keep = int(attrs.get("keepdims", 1))
                pooled = n.output[0] if keep else n.output[0] + "_pooled"
                new_nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [pooled], name=n.name))
                if not keep:
                    new_nodes.append(helper.make_node("Flatten", [pooled], [n.output[0]], name=n.name + "_flatten",
                                                      axis=1))
                done += 1
                continue
        new_nodes.append(n)
    if done:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return done


def layout_rewritten(src: str | Path, dst: str | Path) -> Path:
    """The fp32 graph `src` with the exact layout rewrites `quantize_onnx` makes before quantizing (ONNX Runtime's
    pre-processing, merged Transposes, spatial ReduceMean as GlobalAveragePool; not the stem's SpaceToDepth, which
    makes float slower), written to `dst`: the reference that tells the int8 speed-up from the rewrites' share
    (`miner bench export`)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ort.set_default_logger_severity(3)
    src, dst = Path(src), Path(dst)
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    graph = onnx.load(str(dst))
    _collapse_transposes(graph)
    _mean_as_global_pool(graph)
    onnx.save_model(graph, str(dst))
    write_int8_metadata(dst, read_onnx_metadata(src), {})
    return dst


def write_int8_metadata(path: str | Path, meta: ModelMeta, record: dict[str, str]) -> None:
    """Quantization drops metadata_props: write the source graph's record back, with `record` in its extra."""
    import onnx

    model = onnx.load(str(path))
    extra = dict(meta.extra)
    extra.update(record)
    del model.metadata_props[:]
    full = ModelMeta(**{**meta.__dict__, "extra": extra})
    for key, value in full.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(path))


def float_record(path: str | Path) -> dict[str, Any]:
    """What `quantize_onnx` kept float in an int8 graph (its metadata): ``parts``, ``nodes`` (float nodes) and
    ``float_outputs`` (nodes with int8 inputs and a float output); empty for other graphs."""
    value = read_onnx_metadata(path).extra.get("quantization_float")
    return json.loads(value) if value else {}
