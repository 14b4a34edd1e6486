"""INT8 graphs with explicit Q/DQ nodes, for CPU nodes (VNNI) and for TensorRT's explicit quantization.

`quantize_onnx` runs ONNX Runtime's static post-training quantization in QDQ format: a calibration pass
over chest-like phantom images records activation ranges, then QuantizeLinear/DequantizeLinear pairs
are inserted around the quantized operators. The head (Gemm/MatMul), the map einsum and the MSA upsampling
(matrix products) stay float32, so the maps are computed from int8 features with float branch weights.

- ``target="cpu"``: the backbone's Conv, Relu, Add, MaxPool, Concat and GlobalAveragePool, int8 weights per
  output channel and *unsigned* int8 activations (U8S8). ONNX Runtime's x86 kernels (VNNI `vpdpbusd` is
  u8 x s8) then run whole int8 chains; measured here on ResNet-50-MSA at 512 px: signed activations (S8S8) or
  quantizing only the convolutions (float Relu/Add between Q/DQ pairs) made the int8 graph slower than fp32
  (3.7-4.1 s and 1.7 s vs 1.3 s per batch of 4), U8S8 over the whole backbone faster (0.97 s).
- ``target="tensorrt"``: Q/DQ at the convolutions' inputs only (TensorRT's recommended placement), signed
  symmetric activations (zero point 0), which TensorRT requires.

If static quantization fails on a graph (an operator the calibrator cannot handle), ``fallback="dynamic"``
retries with dynamic quantization (weights int8, activation scales computed per batch at run time: no
calibration data, slower, and not loadable by TensorRT). The graph records which one was used in its
metadata (``miner.extra.quantization``).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miner.errors import ModelError, UsageError
from miner.export.metadata import GraphMeta, read_onnx_metadata
from miner.export.parity import phantom_image


#: operators quantized for ONNX Runtime on CPU (everything of the backbone; not the head's MatMul/Gemm)
CPU_OPS = ("Conv", "Relu", "Add", "MaxPool", "Concat", "GlobalAveragePool")
#: Q/DQ placement for TensorRT: the inputs of the weighted operators
TENSORRT_OPS = ("Conv",)


def calibration_images(
    input_size: tuple[int, int], in_chans: int, *, count: int = 16, seed: int = 1000
) -> list[np.ndarray]:
    """`count` chest-like phantom images [1, in_chans, H, W] float32 in [0, 1] (distinct seeds).

    Seeds start at 1000 so calibration images differ from the images the parity checks use.
    """
    return [phantom_image(input_size, in_chans=in_chans, seed=seed + i).numpy() for i in range(count)]


class _Reader:
    """An ONNX Runtime `CalibrationDataReader` over a list of images (batches of `batch`)."""

    def __init__(self, images: Sequence[np.ndarray], meta: GraphMeta, *, batch: int = 4) -> None:
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


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    images: Sequence[np.ndarray] | None = None,
    target: str = "cpu",
    op_types: Sequence[str] | None = None,
    per_channel: bool = True,
    calibrate: str = "minmax",
    fallback: str | None = "dynamic",
) -> str:
    """Write an int8 (QDQ) version of the exported graph `src` to `dst`; returns ``"static"`` or ``"dynamic"``.

    Args:
        src, dst: fp32 graph from `miner export onnx`; output path.
        images: calibration images ([1 or n, in_chans, H, W] float32 in [0, 1]); default 16 phantoms.
        target: ``cpu`` or ``tensorrt`` (symmetric activations); see the module doc.
        op_types: ONNX operators to quantize (default: the target's, see the module doc).
        per_channel: per-output-channel weight scales.
        calibrate: ``minmax``, ``entropy`` or ``percentile``.
        fallback: ``dynamic`` to retry with dynamic quantization when static fails, or None to raise.
    """
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
    dst.parent.mkdir(parents=True, exist_ok=True)
    prepared = dst.with_name(dst.stem + ".prep.onnx")
    if op_types is None:
        op_types = CPU_OPS if target == "cpu" else TENSORRT_OPS
    activation = QuantType.QUInt8 if target == "cpu" else QuantType.QInt8
    extra: dict[str, Any] = {"ActivationSymmetric": target == "tensorrt", "WeightSymmetric": True}
    try:
        # shape inference + graph optimisation before quantization (ONNX Runtime's recommended step)
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
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
                extra_options=extra,
            )
            kind = "static"
        except Exception as err:  # the calibrator raises many kinds
            if fallback != "dynamic":
                raise ModelError(f"{src}: static int8 quantization failed ({type(err).__name__}: {err})") from None
            quantize_dynamic(
                str(prepared),
                str(dst),
                op_types_to_quantize=list(op_types),
                per_channel=per_channel,
                weight_type=QuantType.QInt8,
            )
            kind = "dynamic"
    finally:
        if prepared.exists():
            prepared.unlink()
        for leftover in dst.parent.glob(dst.stem + ".prep*"):
            leftover.unlink()
    _copy_metadata(dst, meta, kind=kind, target=target)
    return kind


def _copy_metadata(path: Path, meta: GraphMeta, *, kind: str, target: str) -> None:
    """Quantization drops metadata_props: write the source graph's record back, marked int8."""
    import onnx

    model = onnx.load(str(path))
    extra = dict(meta.extra)
    extra.update({"quantization": f"int8-{kind}", "quantization_target": target})
    del model.metadata_props[:]
    record = GraphMeta(**{**meta.__dict__, "extra": extra})
    for key, value in record.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(model, str(path))


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps: a, b (Tensor[N, h, w]) -> Tensor[N].

    Ties get arbitrary distinct ranks (maps are continuous, ties are rare outside all-zero regions).
    """
    def ranks(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        order = flat.argsort(dim=1)
        r = torch.empty_like(flat)
        r.scatter_(1, order, torch.arange(flat.shape[1], dtype=flat.dtype).expand_as(flat).contiguous())
        return r

    ra, rb = ranks(a.double()), ranks(b.double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    return (ra * rb).sum(dim=1) / denom.clamp_min(1e-12)
