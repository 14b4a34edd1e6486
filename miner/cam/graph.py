"""The map graph: a model's logits and the maps of every class in one pass, as one traceable function.

    graph = MapGraph(model, method="gradcam")              # images -> (logits, maps), a pure function
    logits, maps = graph(images)
    meta = graph.describe(input_size, map_size, model_hash=...)   # its `miner.models.meta.ModelMeta`
    gm = trace_graph(graph, [images])                      # one FX graph of plain ATen ops, gradients included

`MapGraph` is what a checkpoint runs as (`miner.backends.torch_backend`, eager or through `torch.compile` of its
trace) and what `miner export onnx` writes (`miner.export.onnx` traces it and exports the trace). It computes
exactly `miner.cam.class_maps`, with a class-wise erasure ``masks`` input where erasing features does not commute
with the map (non-linear heads).

**Tracing** (`trace_graph`). ONNX stores no gradients, and every exporter fails on `torch.autograd.grad` inside
`forward()` (see NOTES.md). The route that works: with the parameters frozen, run the function under `make_fx`
with symbolic shapes and the Python dispatcher, so autograd executes *while tracing* and the graph records the
backward operators it ran (`convolution_backward`, `threshold_backward`, ...) as ordinary ops. The graph is then
a pure function of the images (and masks): `torch.compile` takes it as it is, and `torch.onnx.export
(dynamo=True)` exports it given a translation of `aten.convolution_backward` (`miner.export.translations`).
Symbolic tracing keeps the batch size a symbol, so views such as ``[B * C, D, h, w]`` stay batch generic.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from miner.cam.engine import class_maps, maps_function
from miner.errors import UsageError
from miner.models.meta import ModelMeta
from miner.settings import InferenceSettings


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
            layer = self.layers if self.mapper.method.pyramid else self.layers[0]
            return class_maps(self.model, images, method=self.method, layer=layer, target=self.mapper.target,
                              stage_weights=self.mapper.stage_weights)
        return self(images, masks)

    @property
    def input_names(self) -> list[str]:
        return ["images", "masks"] if self.masks_input else ["images"]

    def describe(self, input_size: tuple[int, int], map_size: tuple[int, int], *, model_hash: str,
                 inference: InferenceSettings | Mapping[str, Any] | None = None) -> ModelMeta:
        """What this graph computes: the `ModelMeta` the torch backend reports and its ONNX file carries.

        `inference` is the checkpoint's settings (`miner.settings.InferenceSettings`, or its record; None: a model
        without one), carried into the graph so that mining an exported model uses the settings it was trained
        and calibrated with. Its record there (`ModelMeta.inference`) holds the stage weights this graph's maps
        really use and no input size (the graph's own is `input_size`).
        """
        import miner

        model = self.model
        return ModelMeta(
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
            inference=self._settings(inference).to_record(),
        )

    def _settings(self, inference: InferenceSettings | Mapping[str, Any] | None) -> InferenceSettings:
        """The settings a graph records: with the stage weights its maps really use, without input sizes."""
        settings = inference if isinstance(inference, InferenceSettings) else InferenceSettings.from_record(inference)
        return replace(settings.without_sizes(), stage_weights=dict(self.mapper.stage_weights) or None)


def checkpoint_options(ckpt_meta: Mapping[str, Any] | InferenceSettings, options: dict[str, Any], *,
                       plain_maps: bool = False, source: str | None = None) -> dict[str, Any]:
    """A map graph's options (`MapGraph`, `miner.export.onnx.export_model`, the torch backend) completed from a
    checkpoint's settings (its meta dict, read with `miner.settings.InferenceSettings.from_checkpoint`; `source`
    names the file in its errors): the settings as ``inference``, their calibrated ``stage_weights`` (not with
    `plain_maps`) and their recorded map method where neither a method nor a layer is given. Options already set
    win. Returns `options`, changed in place.
    """
    settings = ckpt_meta if isinstance(ckpt_meta, InferenceSettings) else \
        InferenceSettings.from_checkpoint(ckpt_meta, source=source)
    if plain_maps:
        settings = replace(settings, stage_weights=None)
    options.setdefault("stage_weights", settings.stage_weights)
    options.setdefault("inference", settings)
    if options.get("method") is None and options.get("layer") is None and settings.method:
        options["method"] = settings.method  # the recipe's map method
    return options


# ------------------------------------------------------------------------------------------ tracing


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
