"""ONNX translations for the backward operators that gradient-based class maps leave in a traced graph.

`torch.onnx.export(dynamo=True)` has no translation for `aten.convolution_backward`, the operator that
carries a gradient back through every convolution between the map layer and the logits. Only the
gradient with respect to the convolution's *input* is ever used by a class map (parameters are frozen),
and that gradient is itself a convolution:

- for a convolution, ``grad_input = ConvTranspose(grad_output, weight)`` with the same strides, pads,
  dilations and groups, plus an ``output_padding`` that restores the input size when the forward stride
  dropped rows or columns;
- for a transposed convolution, ``grad_input = Conv(grad_output, weight)``.

The weight and bias gradients are never consumed, but the exporter needs a value for every output of
the node: they are emitted as ``Identity(weight)`` placeholders (``None`` crashes the exporter) and the
optimiser removes them because nothing reads them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def _per_dim(value: Sequence[int] | int, dims: int) -> list[int]:
    if isinstance(value, int):
        return [value] * dims
    value = [int(v) for v in value]
    return value * dims if len(value) == 1 else value


def _static_dims(shape: Any, start: int) -> list[int] | None:
    """The spatial sizes of an onnxscript value's shape when all are known integers, else None."""
    if shape is None:
        return None
    dims = list(shape)[start:]
    if any(not isinstance(d, int) for d in dims):
        return None
    return [int(d) for d in dims]


def _make_convolution_backward() -> Callable:
    from onnxscript import opset18 as op

    def convolution_backward(
        grad_output,
        input,
        weight,
        bias_sizes=None,
        stride: Sequence[int] = (1,),
        padding: Sequence[int] = (0,),
        dilation: Sequence[int] = (1,),
        transposed: bool = False,
        output_padding: Sequence[int] = (0,),
        groups: int = 1,
        output_mask: Sequence[bool] = (True, True, True),
    ):
        dims = len(weight.shape) - 2
        strides = _per_dim(stride, dims)
        pads = _per_dim(padding, dims)
        dilations = _per_dim(dilation, dims)
        kernel = _static_dims(weight.shape, 2)
        extra = {"kernel_shape": kernel} if kernel is not None else {}
        if transposed:
            # y = ConvTranspose(x, w): dL/dx = Conv(dL/dy, w) with the forward's strides/pads/dilations.
            grad_input = op.Conv(
                grad_output, weight, strides=strides, pads=pads + pads, dilations=dilations, group=groups, **extra
            )
        else:
            # y = Conv(x, w): dL/dx = ConvTranspose(dL/dy, w); the rows a strided conv skipped at the end
            # come back as output_padding (zeros there: they never reached the output).
            in_dims = _static_dims(input.shape, 2)
            out_dims = _static_dims(grad_output.shape, 2)
            if in_dims is None or out_dims is None or kernel is None:
                raise NotImplementedError(
                    "convolution_backward translation needs static spatial sizes; export with a fixed input size"
                )
            out_pad = [
                in_dims[i] - ((out_dims[i] - 1) * strides[i] - 2 * pads[i] + dilations[i] * (kernel[i] - 1) + 1)
                for i in range(dims)
            ]
            if any(p < 0 or p >= max(strides[i], dilations[i]) for i, p in enumerate(out_pad)):
                raise NotImplementedError(f"convolution_backward: unsupported output padding {out_pad}")
            grad_input = op.ConvTranspose(
                grad_output,
                weight,
                strides=strides,
                pads=pads + pads,
                dilations=dilations,
                group=groups,
                output_padding=out_pad,
                **extra,
            )
        # Frozen parameters: nothing reads these two; the optimiser drops them.
        return grad_input, op.Identity(weight), op.Identity(weight)

    return convolution_backward


def translation_table() -> dict[Callable, Callable]:
    """The `custom_translation_table` for `torch.onnx.export(dynamo=True)` of a traced gradient graph."""
    import torch

    return {torch.ops.aten.convolution_backward.default: _make_convolution_backward()}
