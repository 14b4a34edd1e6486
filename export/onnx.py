"""`miner export onnx`: one ONNX graph per model that outputs the logits and the maps of every class.

    result = export_checkpoint("model.pt", "model.onnx")                  # method from the model
    result = export_model(model, "model.onnx", method="gradcam", input_size=(512, 512))

The graph computes exactly `miner.cam.class_maps(model, images, method=..., layer=...)`: it is the trace of
the same pure function (`miner.cam.maps_function`), autograd included:

- GAP + linear heads (CAM, or any gradient method at the feature layer): the maps come from the feature map
  and the branch weights in the graph (the analytic gradient w_c / (h w)); no backward operator.
- any other head (a non-linear head, a U-Net for Seg-Grad-CAM, the pyramid of a DC-FPN for Pyramid
  Grad-CAM): the graph holds the forward pass and the backward pass from each class score to the layer,
  traced by `miner.export.grad_graph` and exported with a translation of `convolution_backward`.

Inputs: ``images`` float32 [B, in_chans, H, W] in [0, 1] (the graph normalises), plus ``masks`` float32
[B, C, h, w] on graphs for attention mining with heads where erasing features does not commute with the
map (non-linear heads: see `miner.export` README section); outputs ``logits`` [B, C] and ``maps``
[B, C, h, w]; the batch is dynamic. The model's record (classes, method, layer, input size, normalisation,
hash) is stored in ``metadata_props`` (`miner.export.metadata.GraphMeta`).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from miner.errors import ExportError, ModelError, UsageError
from miner.export.metadata import GraphMeta, file_hash, state_dict_hash
from miner.export.parity import DEFAULT_ATOL, ParityReport, check_inputs, compare, ort_session, run_session

MIN_OPSET, MAX_OPSET = 17, 23


@dataclass
class ExportResult:
    """What `export_model` wrote and how it checked."""

    path: Path
    meta: GraphMeta
    parity: ParityReport | None
    seconds: float
    size_bytes: int

    def summary(self) -> str:
        m = self.meta
        mb = self.size_bytes / 1e6
        line = (
            f"{self.path} ({mb:.1f} MB, {self.seconds:.1f} s): {m.arch or 'model'} {m.input_size[0]}x{m.input_size[1]}, "
            f"{m.num_classes} classes, {m.method} maps at {m.layer} {m.map_size[0]}x{m.map_size[1]}"
            + (", masks input" if m.masks_input else "")
        )
        if self.parity is not None:
            line += f"; check {'ok' if self.parity.ok else 'FAILED'}: {self.parity.line()}"
        return line


def default_method(model: nn.Module) -> str:
    """The map method a model's graph gets when none is named.

    ``cam`` for a GAP + linear head, ``seg-gradcam`` for a segmentation net, ``pyramid-gradcam`` for a
    model with a feature pyramid (DC-FPN), else ``gradcam``.
    """
    if getattr(model, "task", "classification") == "segmentation":
        return "seg-gradcam"
    if getattr(model, "pyramid_layers", None):
        return "pyramid-gradcam"
    if getattr(model, "head_is_linear", False):
        return "cam"
    return "gradcam"


def parse_size(value: int | str | Sequence[int] | None) -> tuple[int, int] | None:
    """``512``, ``"512"``, ``"512x384"``, ``[512, 384]`` -> (H, W); None stays None."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = [int(p) for p in value.lower().replace("*", "x").split("x")]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(v) for v in value]
    except ValueError:
        raise UsageError(f"input size must be S or HxW (e.g. 512 or 512x512), got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8:
        raise UsageError(f"input size must be S or HxW with sides >= 8, got {value!r}")
    return parts[0], parts[1]


class MapGraph:
    """The traceable function a graph is made of, and its eager reference.

    Args:
        model: a `miner.models` classifier or segmentation net (eval mode, frozen parameters while tracing).
        method, layer, target, scales: as `miner.cam.class_maps`.
        masks_input: add the class-wise erasure ``masks`` input; None = where erasure changes the maps
            (`ClassMapper.shortcut_exact` is False) and the mapper works at the feature layer.
        stage_weights: per-finding stage weights of the maps (`miner.cam.ClassMapper`), built into the graph.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str,
        layer: str | Sequence[str] | None = None,
        masks_input: bool | None = None,
        target: Any = None,
        scales: Sequence[int] | str | None = None,
        stage_weights: Any = None,
    ) -> None:
        from miner.cam import maps_function

        self.model = model
        self.mapper = maps_function(model, method, layer, target=target, scales=scales, stage_weights=stage_weights)
        self.method = self.mapper.method.name
        self.layers = list(self.mapper.layers)
        can_erase = self.mapper.mode in ("analytic", "split")
        if masks_input is None:
            masks_input = can_erase and not self.mapper.shortcut_exact
        if masks_input and not can_erase:
            raise UsageError(
                f"a masks input needs maps at the model's feature layer ({getattr(model, 'feature_layer', None)!r}); "
                f"{self.method} at {', '.join(self.layers)} cannot recompute erased features"
            )
        self.masks_input = bool(masks_input)

    def __call__(self, images: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(logits Tensor[B, C], maps Tensor[B, C, h, w]); with a masks input, maps of the erased features."""
        if not self.masks_input:
            return self.mapper(images)
        if masks is None:
            raise ValueError("this graph takes masks")
        features = self.mapper.features(images)
        with torch.no_grad():
            logits = self.model.forward_head(features)
        return logits, self.mapper.erased_maps(features, masks)

    def reference(self, images: Tensor, masks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Eager PyTorch for the parity check: `class_maps` itself when nothing is erased."""
        if masks is None or bool((masks == 1).all()):
            from miner.cam import class_maps

            layer = self.layers if self.mapper.method.pyramid else self.layers[0]
            return class_maps(self.model, images, method=self.method, layer=layer, target=self.mapper.target,
                              stage_weights=self.mapper.stage_weights)
        return self(images, masks)

    @property
    def input_names(self) -> list[str]:
        return ["images", "masks"] if self.masks_input else ["images"]

    def describe(self, input_size: tuple[int, int], map_size: tuple[int, int], *, model_hash: str,
                 inference: Mapping[str, Any] | None = None) -> GraphMeta:
        """What this graph computes: the record its ONNX file carries, and what the torch backend reports.

        `inference` is the checkpoint's recipe record (`miner.recipes.recorded`), carried into the graph so that
        mining an exported model uses the settings it was trained and calibrated with.
        """
        import miner

        model = self.model
        return GraphMeta(
            classes=tuple(getattr(model, "classes", ())),
            method=self.method,
            layer=",".join(self.layers),
            input_size=(int(input_size[0]), int(input_size[1])),
            in_chans=int(getattr(model, "in_chans", 1)),
            mean=tuple(float(v) for v in getattr(model, "mean", ())),
            std=tuple(float(v) for v in getattr(model, "std", ())),
            head_is_linear=bool(getattr(model, "head_is_linear", False)),
            map_size=(int(map_size[0]), int(map_size[1])),
            masks_input=self.masks_input,
            shortcut_exact=self.mapper.shortcut_exact,
            arch=str(getattr(model, "arch", type(model).__name__)),
            model_hash=model_hash,
            miner_version=miner.__version__,
            task=str(getattr(model, "task", "classification")),
            cell_origin=str(getattr(model, "cell_origin", "centre")),
            inference=self._record(inference),
        )

    def _record(self, inference: Mapping[str, Any] | None) -> dict[str, Any]:
        """The recipe record with the stage weights this graph's maps really use (none: no entry)."""
        record = {k: v for k, v in dict(inference or {}).items() if k != "stage_weights"}
        if self.mapper.stage_weights:
            record["stage_weights"] = {f: dict(w) for f, w in self.mapper.stage_weights.items()}
        return record


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
        masks_input: see `MapGraph`.
        external_data: weights in ``<path>.data`` (None: only above ~1.8 GB; else one self-contained file).
        check: compare ONNX Runtime (CPU) with eager `class_maps` on a random batch and a phantom image; a
            difference above `atol` raises `ExportError` (exit 1) (the graph is left on disk for inspection).
        atol: tolerance of the check (scaled by the output's magnitude where that exceeds 1).
        trace_batch: batch of the tracing example (>= 2).
        model_hash: recorded in the metadata (default: a hash of the state_dict).
        target, scales: segmentation pixel set / pyramid scales, as `miner.cam.class_maps`.
        inference: the model's recipe record (`miner.recipes.recorded`) for the metadata.
        stage_weights: per-finding stage weights of the maps (`miner.cam.ClassMapper`; a calibrated checkpoint's
            ``stage_weights``), built into the graph.

    Returns:
        an `ExportResult` (path, metadata, parity report, seconds, size).
    """
    from miner.cam import inference_state
    from miner.export.grad_graph import export_graph, quiet, trace_graph

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


def check_graph(path: str | Path, graph: MapGraph, meta: GraphMeta, *, atol: float = DEFAULT_ATOL) -> ParityReport:
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
    file's sha256; the checkpoint's recipe record (recipe, mining and box settings) goes into the metadata, and
    its calibrated stage weights into the maps (not with `plain_maps`).
    """
    from miner.models import load_checkpoint
    from miner.recipes import recorded

    checkpoint = Path(checkpoint)
    model, ckpt_meta = load_checkpoint(checkpoint)
    size = parse_size(input_size) or parse_size(ckpt_meta.get("input_size"))
    if size is None:
        raise UsageError(f"{checkpoint} records no input_size: pass --input-size HxW")
    options.setdefault("inference", recorded(ckpt_meta))
    if not plain_maps:
        options.setdefault("stage_weights", ckpt_meta.get("stage_weights"))
    if options.get("method") is None and options.get("layer") is None and ckpt_meta.get("method"):
        options["method"] = ckpt_meta["method"]  # the recipe's map method
    return export_model(model, path, input_size=size, model_hash=file_hash(checkpoint), **options)
