"""Trace a map-producing function (forward + autograd gradients) into one exportable FX graph.

ONNX stores no gradients, and every exporter fails on `torch.autograd.grad` inside `forward()` (see
NOTES.md). The route that works: with the parameters frozen, run the function under `make_fx` with
symbolic shapes and the Python dispatcher, so autograd executes *while tracing* and the graph records
the backward operators it ran (`convolution_backward`, `threshold_backward`, ...) as ordinary ops.
The graph is then a pure function of the images (and masks) and exports with `torch.onnx.export
(dynamo=True)`, given a translation of `aten.convolution_backward` (`miner.export.translations`).

Symbolic tracing keeps the batch size a symbol, so views such as ``[B * C, D, h, w]`` stay batch
generic; the ONNX export then marks only the batch dimension dynamic and specialises the rest.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from miner.export.translations import translation_table

#: a graph at or above this size is saved with its weights in a side file (`<name>.onnx.data`):
#: protobuf cannot serialise a single message past 2 GiB.
EMBED_LIMIT_BYTES = 1_800_000_000


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence the exporter's progress prints, warnings and log lines; yields what was printed.

    `torch.onnx.export` prints its steps and warns about unrelated registries (torchvision ops); the
    captured text is kept for error messages.
    """
    buffer = io.StringIO()
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "torch._dynamo", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _decompositions() -> dict[Any, Callable]:
    """Rewrites applied while tracing, for backward ops whose stock decomposition is not functional."""
    aten = torch.ops.aten

    def diagonal_backward(grad: Tensor, input_sizes: Sequence[int], offset: int, dim1: int, dim2: int) -> Tensor:
        # grad of x.diagonal(offset, dim1, dim2): scatter onto the diagonal via a 0/1 mask
        # (the stock decomposition writes in place with copy_, which torch.export rejects).
        out = grad.new_zeros(input_sizes)
        n1, n2 = out.shape[dim1], out.shape[dim2]
        rows = torch.arange(n1, device=grad.device).view(-1, 1)
        cols = torch.arange(n2, device=grad.device).view(1, -1)
        mask = (cols - rows) == offset  # [n1, n2]
        moved = out.movedim((dim1, dim2), (-2, -1))
        length = grad.shape[-1]
        if offset >= 0:
            spread = torch.nn.functional.pad(grad, (0, n1 - length)).unsqueeze(-1)  # value at row i
        else:
            spread = torch.nn.functional.pad(grad, (0, n2 - length)).unsqueeze(-2)  # value at column j
        moved = torch.where(mask, spread.expand_as(moved), moved)
        return moved.movedim((-2, -1), (dim1, dim2))

    return {aten.diagonal_backward.default: diagonal_backward}


def _axis_matrix(n_in: int, *, size: int | None, scale: float | None, align_corners: bool | None,
                 recompute: bool | None) -> Tensor:
    """The [n_out, n_in] matrix of 1-D bilinear interpolation along one axis, from PyTorch's own kernel.

    Interpolating the basis vectors with the same size/scale arguments gives exactly the weights the
    forward kernel uses (scale factors and align_corners included).
    """
    basis = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
    if size is not None:
        out = torch.nn.functional.interpolate(basis, size=(size, 1), mode="bilinear", align_corners=align_corners)
    else:
        out = torch.nn.functional.interpolate(
            basis, scale_factor=(scale, 1.0), mode="bilinear", align_corners=align_corners,
            recompute_scale_factor=recompute,
        )
    return out[:, 0, :, 0].t().contiguous()


class SeparableUpsample(torch.overrides.TorchFunctionMode):
    """While tracing, bilinear `F.interpolate` on [B, C, H, W] becomes ``Wh @ x @ Ww^T`` with constant matrices.

    Traced as-is, bilinear upsampling (and its backward) decomposes into gathers and index_put scatters
    with one int64 index tensor per output pixel, which the ONNX optimiser folds into constants for every
    backward copy (hundreds of MB for a DC-FPN with 14 classes). Two matrix products express the same
    linear map, their backward is two matrix products with the transposed matrices, and the constants are
    [H_out, H] and [W, W_out] floats. Matches the kernel to float32 rounding (~1e-7 relative).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.interpolate:
            result = self._interpolate(*args, **kwargs)
            if result is not None:
                return result
        return func(*args, **kwargs)

    @staticmethod
    def _interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                     recompute_scale_factor=None, antialias=False):
        if mode != "bilinear" or antialias or not isinstance(input, Tensor) or input.dim() != 4:
            return None
        from torch._subclasses.fake_tensor import unset_fake_temporarily
        from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

        h, w = int(input.shape[-2]), int(input.shape[-1])  # spatial sizes are fixed in the exported graph
        sizes = [None, None] if size is None else ([size, size] if isinstance(size, int) else list(size))
        scales = [None, None] if scale_factor is None else (
            [scale_factor, scale_factor] if isinstance(scale_factor, (int, float)) else list(scale_factor)
        )
        with disable_proxy_modes_tracing(), unset_fake_temporarily():
            mh = _axis_matrix(h, size=None if sizes[0] is None else int(sizes[0]), scale=scales[0],
                              align_corners=align_corners, recompute=recompute_scale_factor)
            mw = _axis_matrix(w, size=None if sizes[1] is None else int(sizes[1]), scale=scales[1],
                              align_corners=align_corners, recompute=recompute_scale_factor)
            mh = mh.to(input.dtype)
            mwt = mw.t().contiguous().to(input.dtype)
        return torch.matmul(torch.matmul(mh, input), mwt)


def trace_graph(fn: Callable[..., Any], example_inputs: Sequence[Tensor]) -> torch.fx.GraphModule:
    """Trace `fn(*example_inputs)`, autograd included, into an FX graph of plain ATen ops.

    Args:
        fn: a pure function of tensors (images, optionally masks) returning a tuple of tensors; it may call
            `torch.autograd.grad` on intermediate values. Model parameters must be frozen
            (`miner.cam.inference_state`).
        example_inputs: tensors with a batch of at least 2 (a batch of 1 would be specialised).

    Returns:
        the traced ``torch.fx.GraphModule`` (weights held as constants).
    """
    from torch.fx.experimental import _config as fx_config
    from torch.fx.experimental.proxy_tensor import make_fx

    if any(int(t.shape[0]) < 2 for t in example_inputs):
        raise ValueError("trace with a batch of at least 2: a batch of 1 is specialised by symbolic tracing")
    # No duck shaping: by default equal sizes share one symbol, so a batch of 2 beside 2 channels (or a 2x2
    # map) would be tied to them and specialised when the weights fix the channels.
    with fx_config.patch(use_duck_shape=False), torch._dispatch.python.enable_python_dispatcher(), SeparableUpsample():
        gm = make_fx(
            fn,
            decomposition_table=_decompositions(),
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
        )(*example_inputs)
    return gm


def export_graph(
    gm: torch.fx.GraphModule,
    example_inputs: Sequence[Tensor],
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = 18,
    external_data: bool | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export a traced graph to ONNX with a dynamic batch dimension (dim 0 of every input).

    Args:
        gm: from `trace_graph`.
        example_inputs: the tensors it was traced with.
        path: the ``.onnx`` file to write.
        input_names, output_names: ONNX names, in order.
        opset: ONNX opset (17..23).
        external_data: True writes weights to ``<path>.data``; False embeds them; None (default) embeds
            them below `EMBED_LIMIT_BYTES` (one self-contained file) and writes a side file above.
        metadata: ``metadata_props`` to record (string keys and values).

    Returns:
        the written path.
    """
    import onnx

    path = Path(path)
    batch = torch.export.Dim("batch", min=1, max=65536)
    gm.eval()  # a GraphModule starts in training mode; the traced ops do not depend on it
    with quiet():
        program = torch.onnx.export(
            gm,
            tuple(example_inputs),
            dynamo=True,
            dynamic_shapes=tuple({0: batch} for _ in example_inputs),
            custom_translation_table=translation_table(),
            opset_version=int(opset),
            input_names=list(input_names),
            output_names=list(output_names),
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    static = [v.name for v in model.graph.input if v.type.tensor_type.shape.dim[0].HasField("dim_value")]
    if static:
        raise RuntimeError(
            f"the batch dimension of {', '.join(static)} was specialised during export (an operation tied it to a "
            "fixed size); the graph would only run at the traced batch"
        )
    # One symbol for the batch on every input and output (TensorRT's parser and ONNX Runtime's shape
    # inference then know they are the same dimension).
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim
        if len(dim) and not dim[0].HasField("dim_value"):
            dim[0].dim_param = "batch"
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if external_data is None:
        external_data = size >= EMBED_LIMIT_BYTES
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    if external_data:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_path.name,
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path
