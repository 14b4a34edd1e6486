"""`miner export onnx`: one ONNX graph per model that outputs the logits and the maps of every class.

    result = export_checkpoint("model.pt", "model.onnx")                  # method from the model
    result = export_model(model, "model.onnx", method="gradcam", input_size=(512, 512))

The graph computes exactly `miner.cam.class_maps(model, images, method=..., layer=...)`: it is the trace
(`miner.cam.graph.trace_graph`) of the map graph a checkpoint runs as (`miner.cam.graph.MapGraph`), autograd
included, exported by `export_graph`:

- GAP + linear heads (CAM, or any gradient method at the feature layer): the maps come from the feature map
  and the branch weights in the graph (the analytic gradient w_c / (h w)); no backward operator.
- any other head (a non-linear head, a U-Net for Seg-Grad-CAM, the pyramid of a DC-FPN for Pyramid
  Grad-CAM): the graph holds the forward pass and the backward pass from each class score to the layer,
  traced by `miner.cam.graph.trace_graph` and exported with a translation of `convolution_backward`.

Inputs: ``images`` float32 [B, in_chans, H, W] in [0, 1] (the graph normalises), plus ``masks`` float32
[B, C, h, w] on graphs for attention mining with heads where erasing features does not commute with the
map (non-linear heads: see `miner.export` README section); outputs ``logits`` [B, C] and ``maps``
[B, C, h, w]; the batch is dynamic. The model's record (classes, method, layer, input size, normalisation,
hash) is stored in ``metadata_props`` (`miner.models.meta.ModelMeta`).
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from miner.cam.graph import MapGraph, checkpoint_options, default_method
from miner.errors import ExportError, ModelError, UsageError
from miner.export.parity import DEFAULT_ATOL, ParityReport, check_inputs, compare, ort_session, run_session
from miner.export.translations import translation_table
from miner.models.meta import ModelMeta, file_hash, parse_size, state_dict_hash

MIN_OPSET, MAX_OPSET = 17, 23
#: a graph at or above this size is saved with its weights in a side file (`<name>.onnx.data`):
#: protobuf cannot serialise a single message past 2 GiB.
EMBED_LIMIT_BYTES = 1_800_000_000


@dataclass
class ExportResult:
    """What `export_model` wrote and how it checked."""

    path: Path
    meta: ModelMeta
    parity: ParityReport | None
    seconds: float
    size_bytes: int

    def summary(self) -> str:
        m = self.meta
        mb = self.size_bytes / 1e6
        line = (
            f"{self.path} ({mb:.1f} MB, {self.seconds:.1f} s): {m.arch or 'model'} "
            f"{m.input_size[0]}x{m.input_size[1]}, "
            f"{m.num_classes} classes, {m.method} maps at {m.layer} {m.map_size[0]}x{m.map_size[1]}"
            + (", masks input" if m.masks_input else "")
        )
        if self.parity is not None:
            line += f"; check {'ok' if self.parity.ok else 'FAILED'}: {self.parity.line()}"
        return line


def _on_cpu_float32(fn: Callable[..., ExportResult]) -> Callable[..., ExportResult]:
    """``fn(model, ...)`` runs with the model on the CPU in float32; the caller's model goes back where it was."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, *args: Any, **kwargs: Any) -> ExportResult:
        first = next(iter(model.parameters()), None)
        restore = (first.device, first.dtype) if first is not None else None
        try:
            return fn(model.to("cpu", torch.float32), *args, **kwargs)
        finally:
            if restore is not None:
                model.to(*restore)

    return wrapper


@_on_cpu_float32
def export_model(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: int | str | Sequence[int],
    method: str | None = None,
    layer: str | Sequence[str] | None = None,
    opset: int = 18,
    masks_input: bool | None = None,
    external_data: bool | None = None,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    trace_batch: int = 2,
    model_hash: str | None = None,
    target: Any = None,
    scales: Sequence[int] | str | None = None,
    inference: Mapping[str, Any] | None = None,
    stage_weights: Any = None,
) -> ExportResult:
    """Export `model`'s logits and all class maps to one ONNX graph with a dynamic batch.

    Args:
        model: a `miner.models` model (exported on the CPU in float32; put back on its device afterwards).
        path: the ``.onnx`` file to write.
        input_size: the image size the graph takes (S or (H, W)).
        method: map method (default `default_method(model)`).
        layer: map layer (default: the method's, usually ``model.feature_layer``).
        opset: ONNX opset (17..23).
        masks_input: see `miner.cam.graph.MapGraph`.
        external_data: weights in ``<path>.data`` (None: only above ~1.8 GB; else one self-contained file).
        check: compare ONNX Runtime (CPU) with eager `class_maps` on a random batch and a phantom image; a
            difference above `atol` raises `ExportError` (exit 1) (the graph is left on disk for inspection).
        atol: tolerance of the check (scaled by the output's magnitude where that exceeds 1).
        trace_batch: batch of the tracing example (>= 2).
        model_hash: recorded in the metadata (default: a hash of the state_dict).
        target, scales: segmentation pixel set / pyramid scales, as `miner.cam.class_maps`.
        inference: the model's settings record (`miner.settings.InferenceSettings.to_record`) for the metadata.
        stage_weights: per-finding stage weights of the maps (`miner.cam.ClassMapper`; a calibrated checkpoint's
            ``stage_weights``), built into the graph.

    Returns:
        an `ExportResult` (path, metadata, parity report, seconds, size).
    """
    from miner.cam import inference_state
    from miner.cam.graph import trace_graph

    start = time.perf_counter()
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise UsageError(f"--opset must be within {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    size = parse_size(input_size)
    assert size is not None
    if trace_batch < 2:
        raise UsageError("trace_batch must be >= 2 (the graph's batch stays dynamic)")
    path = Path(path)
    method = method or default_method(model)
    graph = MapGraph(model, method=method, layer=layer, masks_input=masks_input, target=target, scales=scales,
                     stage_weights=stage_weights)
    in_chans = int(getattr(model, "in_chans", 1))
    classes = tuple(getattr(model, "classes", ()))
    gen = torch.Generator().manual_seed(0)
    example = [torch.rand(trace_batch, in_chans, *size, generator=gen)]
    with inference_state(model):
        if graph.masks_input:
            map_size = tuple(int(v) for v in graph.mapper.features(example[0]).shape[-2:])
            example.append(torch.ones(trace_batch, len(classes), *map_size))
        else:
            map_size = tuple(int(v) for v in graph.mapper(example[0])[1].shape[-2:])
        meta = graph.describe(size, map_size, model_hash=model_hash or state_dict_hash(model), inference=inference)
        with quiet() as log:
            try:
                gm = trace_graph(graph, example)
                export_graph(
                    gm,
                    example,
                    path,
                    input_names=graph.input_names,
                    output_names=["logits", "maps"],
                    opset=opset,
                    external_data=external_data,
                    metadata=meta.to_props(),
                )
            except (UsageError, ModelError, ExportError):
                raise
            except Exception as err:
                tail = " | ".join(log.getvalue().strip().splitlines()[-3:])
                raise ExportError(
                    f"{path}: export of {meta.method} maps of {meta.arch} failed: {type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}" + (f" [{tail}]" if tail else "")
                ) from err
        report = check_graph(path, graph, meta, atol=atol) if check else None
    data = path.with_name(path.name + ".data")
    nbytes = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    result = ExportResult(path, meta, report, time.perf_counter() - start, nbytes)
    if report is not None and not report.ok:
        raise ExportError(f"{path}: parity check failed: {report.line()}")
    return result


def check_graph(path: str | Path, graph: MapGraph, meta: ModelMeta, *, atol: float = DEFAULT_ATOL) -> ParityReport:
    """ONNX Runtime (CPU) vs eager PyTorch on a random batch of 3 and a phantom image (plus random masks).

    The reference is eager float32 first. Where that differs by more than `atol`, eager PyTorch runs again in
    float64 and decides: deep gradient graphs (a U-Net's Seg-Grad-CAM sums ~10^5 pixel scores, then cancels
    channel contributions) carry float32 rounding of ~1e-4 relative in *both* runtimes, and the question
    the check answers is whether the graph computes the same function, not whether two float32 roundings
    agree. The report says which reference decided and what float32 gave.
    """
    session = ort_session(path)
    cases: list[tuple[str, Tensor, Tensor | None]] = []
    for name, images in check_inputs(meta.input_size, meta.in_chans, batch=3):
        cases.append((name, images, None))
    if meta.masks_input:
        gen = torch.Generator().manual_seed(1)
        images = cases[0][1]
        masks = (torch.rand(images.shape[0], meta.num_classes, *meta.map_size, generator=gen) > 0.3).float()
        cases.append(("random masks", images, masks))

    def run(images: Tensor, masks: Tensor | None) -> tuple[Any, Any]:
        if meta.masks_input and masks is None:
            masks = torch.ones(images.shape[0], meta.num_classes, *meta.map_size)
        return run_session(session, images, masks)

    report = compare(run, graph.reference, cases, atol=atol)
    if report.ok:
        return report
    import copy

    exact = MapGraph(copy.deepcopy(graph.model).double(), method=graph.method,
                     layer=graph.layers if graph.mapper.method.pyramid else graph.layers[0],
                     masks_input=graph.masks_input, target=graph.mapper.target)

    def reference64(images: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        return exact.reference(images.double(), None if masks is None else masks.double())

    report64 = compare(run, reference64, cases, atol=atol, reference_name="eager float64")
    report64.note = "eager float32: " + ", ".join(f"{k} max|diff| {v:.2g}" for k, v in report.max_abs.items())
    return report64


def export_checkpoint(
    checkpoint: str | Path,
    path: str | Path,
    *,
    input_size: int | str | Sequence[int] | None = None,
    plain_maps: bool = False,
    **options: Any,
) -> ExportResult:
    """`export_model` for a checkpoint from `miner.models.save_checkpoint`.

    The input size defaults to the checkpoint's ``input_size``; the recorded model hash is the checkpoint
    file's sha256; the checkpoint's settings record (`miner.settings.InferenceSettings`: recipe, mining and box
    settings) goes into the metadata, and its calibrated stage weights into the maps (not with `plain_maps`).
    """
    from miner.models import load_checkpoint

    checkpoint = Path(checkpoint)
    model, ckpt_meta = load_checkpoint(checkpoint)
    size = parse_size(input_size) or parse_size(ckpt_meta.get("input_size"))
    if size is None:
        raise UsageError(f"{checkpoint} records no input_size: pass --input-size HxW")
    checkpoint_options(ckpt_meta, options, plain_maps=plain_maps)
    return export_model(model, path, input_size=size, model_hash=file_hash(checkpoint), **options)


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
