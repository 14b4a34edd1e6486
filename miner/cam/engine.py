"""All class maps of every image in one call: `class_maps`, and the pure function behind it (`maps_function`).

How the maps are computed (`ClassMapper.mode`):

``analytic``  a linear head at its input (``model.head_is_linear`` and layer = ``model.feature_layer``):
              one forward pass of ``forward_features``; the logits are ``forward_head(X)``, CAM uses the branch
              weights w_c, and with GAP (``model.head_pooling == "avg"``) every gradient method uses its analytic
              gradient dy_c / dX(i, j) = w_c / (h w). No backward pass. With another pooling (log-sum-exp,
              top-k) the gradient depends on the scores, so only CAM is analytic; gradient methods run ``split``.
``split``     any other head at the feature layer: X = ``forward_features(images)`` (no graph), then
              ``forward_head`` on X as a leaf and one `torch.autograd.grad` per requested class on that small
              graph (retain_graph). With class-wise erasure masks, the C erased copies of X go through the head
              as one [B * C] batch and one backward pass.
``hook``      any named layer(s) (``model.get_submodule``), segmentation nets, Pyramid Grad-CAM: one full
              forward pass with forward hooks that take the layer outputs as the start of the graph, then one
              `torch.autograd.grad` per requested class, each giving the gradients of every hooked layer.

Never one forward pass per class. Every path is a pure function of the images built from torch operations
only (no ``.item()``, no numpy, no branch on values, hooks only read and re-route the layer output), so
``ClassMapper.__call__`` traces with ``make_fx(tracing_mode="symbolic")`` for export (see `maps_function`).
Parameters need not be frozen, but `class_maps` freezes them for the call (no weight gradients are ever
built) and puts the model in eval mode; both are restored afterwards.

**Stage weights** (``stage_weights=``, `stage_scale`): a class's map may read the channels of X that come from
one backbone stage with a weight other than 1 (``model.feature_stages``; e.g. the MSA's stride-32 part at 0.5:
that part is upsampled x4 and blurs the map around small lesions). The gradient (the head weight on the
analytic path) of those channels is scaled before the method combines it, so CAM, Grad-CAM, HiRes-CAM,
XGrad-CAM and LayerCAM stay sums of per-channel terms, and erasure still commutes with the map on the analytic
path; the logits are the model's own.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from miner.cam.base import CamMethod, get_method
from miner.cam.pyramid import select_scales
from miner.cam.segmentation import PixelSet, pixel_set_scores
from miner.errors import UsageError

ClassSpec = Sequence[int | str] | None


def resolve_classes(model: nn.Module, classes: ClassSpec) -> list[int]:
    """Class indices for `classes` (indices or names; None: every class of the model)."""
    names = tuple(getattr(model, "classes", ()) or ())
    if classes is None:
        if not names:
            raise UsageError("the model has no class list: pass classes= as indices")
        return list(range(len(names)))
    out = []
    for c in classes:
        if isinstance(c, str):
            if c not in names:
                raise UsageError(f"unknown class {c!r}: the model's classes are {', '.join(names)}")
            out.append(names.index(c))
        else:
            i = int(c)
            if names and not 0 <= i < len(names):
                raise UsageError(f"class index {i} out of range 0..{len(names) - 1}")
            out.append(i)
    if not out:
        raise UsageError("classes= selects no class")
    return out


#: finding name -> {backbone stage name -> weight}
StageWeights = Mapping[str, Mapping[str, float]]


def stage_scale(model: nn.Module, classes: Sequence[int], stage_weights: StageWeights) -> Tensor:
    """Per-channel weights of each requested class's map (Tensor[C, K] float32): 1, except the channels of X
    from a stage that ``stage_weights[finding]`` names (``model.feature_stages``: stage -> channel range).

    For a GAP + linear head the class-c map becomes sum_s a_cs * CAM_c^(s), CAM_c^(s) the part of the CAM from
    stage s's channels: the map still is a per-position class score (of reweighted branches), erasure still
    commutes with it (CAM(X * M) = M * CAM(X) for any channel weights), and the logits are untouched.
    """
    stages = dict(getattr(model, "feature_stages", {}) or {})
    names = list(getattr(model, "classes", ()) or ())
    if not stages:
        raise UsageError(f"{type(model).__name__}'s feature channels do not split by backbone stage "
                         "(model.feature_stages): stage weights do not apply to it")
    unknown = sorted(set(stage_weights) - set(names))
    if unknown:
        raise UsageError(f"stage weights name finding(s) {', '.join(unknown)} that the model does not have "
                         f"(its classes: {', '.join(names)})")
    dim = max(end for _, end in stages.values())
    scale = torch.ones(len(classes), dim, dtype=torch.float32)
    for row, c in enumerate(classes):
        for stage, weight in (stage_weights.get(names[c]) or {}).items():
            if stage not in stages:
                raise UsageError(f"stage weights of {names[c]}: the model has no stage {stage!r} "
                                 f"(its stages: {', '.join(stages)})")
            if not (math.isfinite(weight) and weight >= 0):
                raise UsageError(f"stage weights of {names[c]}: {stage} must be a number >= 0, got {weight!r}")
            first, end = stages[stage]
            scale[row, first:end] = float(weight)
    return scale


def _is_segmentation(model: nn.Module) -> bool:
    return getattr(model, "task", "classification") == "segmentation"


def _has_split(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


class ClassMapper:
    """Logits and raw class maps of one model, method, layer and class subset, as a pure function of images.

    Args:
        model: a `miner.models` classifier (``forward_features`` / ``forward_head``, ``feature_layer``,
            ``head_is_linear``) or segmentation net (``task == "segmentation"``); any ``nn.Module`` with
            ``classes`` works in ``hook`` mode with an explicit `layer`.
        method: a name from `list_methods()` or a `CamMethod`.
        layer: module name (``model.get_submodule(layer)``); default ``model.feature_layer``. For Pyramid
            Grad-CAM a sequence of names (default ``model.pyramid_layers``, restricted by `scales`).
        classes: class indices or names (default: all).
        target: segmentation pixel set (see `miner.cam.segmentation`); default ``"predicted"``.
        scales: Pyramid Grad-CAM scales, 1-based, finest first (default: all).
        stage_weights: finding name -> {backbone stage -> weight >= 0} (`stage_scale`): class c's map reads the
            channels of X that come from a stage (``model.feature_stages``) with that weight, the others with 1.
            The logits are the model's own. Maps at the feature layer only, with a method whose map is a sum of
            per-channel terms (``stage_weightable``); None or {} = the method's maps as they are.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str | CamMethod = "cam",
        layer: str | Sequence[str] | None = None,
        classes: ClassSpec = None,
        target: PixelSet = None,
        scales: Sequence[int] | str | None = None,
        stage_weights: StageWeights | None = None,
    ) -> None:
        self.model = model
        self.method = get_method(method)
        self.classes = resolve_classes(model, classes)
        self.segmentation = _is_segmentation(model)
        self.target = target
        if self.method.segmentation and not self.segmentation:
            raise UsageError(f"{self.method.name} needs a segmentation net (model.task == 'segmentation')")
        if target is not None and not self.segmentation:
            raise UsageError("target= (a pixel set) applies to segmentation nets only")
        self.layers = self._resolve_layers(layer, scales)
        feature_layer = getattr(model, "feature_layer", None)
        at_features = len(self.layers) == 1 and self.layers[0] == feature_layer and _has_split(model)
        linear = bool(getattr(model, "head_is_linear", False))
        gap = getattr(model, "head_pooling", "avg") == "avg"
        if at_features and not self.segmentation and linear and (gap or not self.method.needs_gradients):
            self.mode = "analytic"
        elif at_features and not self.segmentation:
            self.mode = "split"
        else:
            self.mode = "hook"
        self.stage_weights = {str(f): {str(k): float(v) for k, v in w.items()}
                              for f, w in (stage_weights or {}).items() if w}
        self.channel_scale = None
        if self.stage_weights:
            if self.mode == "hook":
                raise UsageError(
                    f"stage weights apply to maps at the model's feature layer ({feature_layer!r}), not at "
                    f"{', '.join(self.layers)}: take maps there or drop the stage weights (miner mine --plain-maps)")
            if not self.method.stage_weightable:
                raise UsageError(f"stage weights need a map that is a sum of per-channel terms (cam, gradcam, "
                                 f"hirescam, xgradcam, layercam); {self.method.name} is not")
            self.channel_scale = stage_scale(model, self.classes, self.stage_weights)
        if not self.method.needs_gradients and self.mode != "analytic":
            head = "linear" if getattr(model, "head_is_linear", False) else "non-linear"
            raise UsageError(
                f"{self.method.name} needs a linear head at its input (layer {feature_layer!r}); got layer "
                f"{', '.join(self.layers)} of a {head} head: use gradcam or hirescam"
            )

    def _resolve_layers(self, layer: str | Sequence[str] | None, scales: Sequence[int] | str | None) -> list[str]:
        model = self.model
        if self.method.pyramid:
            if layer is None:
                pyramid = tuple(getattr(model, "pyramid_layers", ()) or ())
                if not pyramid:
                    raise UsageError(
                        f"{type(model).__name__} names no pyramid layers (model.pyramid_layers): "
                        "pass layer= as a list of layer names, finest first"
                    )
            else:
                pyramid = (layer,) if isinstance(layer, str) else tuple(layer)
            layers = select_scales(pyramid, scales)
        else:
            if scales is not None:
                raise UsageError("scales= applies to pyramid-gradcam only")
            if layer is None:
                layer = getattr(model, "feature_layer", None)
                if not layer:
                    raise UsageError(f"{type(model).__name__} has no feature_layer: pass layer=")
            if not isinstance(layer, str):
                raise UsageError(f"{self.method.name} takes one layer name, got {layer!r}")
            layers = [layer]
        for name in layers:
            try:
                sub = model.get_submodule(name)
            except AttributeError:
                known = ", ".join(getattr(model, "map_layers", ()) or ())
                hint = f" (map layers: {known})" if known else ""
                raise UsageError(f"the model has no layer {name!r}{hint}") from None
            if sub is model:
                raise UsageError("layer= must name a submodule, not the model itself")
        return layers

    # ------------------------------------------------------------------ the pure functions
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (Tensor[B, in_chans, S, S], float in [0, 1]) -> (logits Tensor[B, C_all], maps Tensor[B, C, h, w]).

        For a segmentation net the "logits" are the pixel-set scores y^c (Tensor[B, K]).
        """
        if self.mode == "analytic":
            with torch.no_grad():
                x = self.model.forward_features(images)
                return self.model.forward_head(x), self._analytic(x, None)
        with _grad_enabled():
            if self.mode == "split":
                with torch.no_grad():
                    x = self.model.forward_features(images)
                leaf = x.detach().requires_grad_(True)
                logits = self.model.forward_head(leaf)
                maps = self._gradient_maps(logits, [leaf])
                return logits.detach(), maps
            with _capture(self.model, self.layers) as store:
                output = self.model(images)
            acts = [store[name] for name in self.layers]
            scores = pixel_set_scores(output, self.target) if self.segmentation else output
            maps = self._gradient_maps(scores, acts)
            return scores.detach(), maps

    def features(self, images: Tensor) -> Tensor:
        """X = ``forward_features(images)`` (Tensor[B, K, h, w]); ``analytic`` and ``split`` modes only."""
        self._need_features("features")
        with torch.no_grad():
            return self.model.forward_features(images)

    def erased_maps(self, features: Tensor, masks: Tensor) -> Tensor:
        """Raw maps of the class-wise erased features (Cai et al. Eq. 1 and 7): class c sees X * M_c.

        Args:
            features: X (Tensor[B, K, h, w]) from `features`.
            masks: M (Tensor[B, C, h, w], 1 = keep; C = the requested classes, in order).

        Returns:
            maps (Tensor[B, C, h, w]): the method's maps recomputed on X * M_c (gradients included).
        """
        self._need_features("erased_maps")
        b, _, h, w = features.shape
        c = len(self.classes)
        if masks.shape != (b, c, h, w):
            raise ValueError(f"masks must be {(b, c, h, w)}, got {tuple(masks.shape)}")
        if self.mode == "analytic":
            with torch.no_grad():
                erased = features.unsqueeze(1) * masks.to(features.dtype).unsqueeze(2)  # [B, C, K, h, w]
                return self._analytic(features, erased)
        with _grad_enabled():
            if features.is_inference():  # computed under inference mode: an ordinary copy can start a graph
                features, masks = features.clone(), masks.clone()
            erased = features.detach().unsqueeze(1) * masks.to(features.dtype).unsqueeze(2)  # [B, C, K, h, w]
            leaf = erased.reshape(b * c, *features.shape[1:]).requires_grad_(True)
            logits = self.model.forward_head(leaf).view(b, c, -1)
            index = torch.tensor(self.classes, device=logits.device).view(1, c, 1).expand(b, c, 1)
            y = logits.gather(2, index).sum()
            (grad,) = torch.autograd.grad(y, leaf)
            acts = leaf.detach().view(b, c, *features.shape[1:])
            return self.method.combine(acts, self._scaled(grad.view(b, c, *features.shape[1:])))

    @property
    def shortcut_exact(self) -> bool:
        """True when masking the first map equals recomputing it on erased features (no `erased_maps` needed)."""
        return self.mode == "analytic" and self.method.mask_equivariant

    # ------------------------------------------------------------------ internals
    def _need_features(self, what: str) -> None:
        if self.mode == "hook":
            raise UsageError(
                f"{what} needs the model's feature layer {getattr(self.model, 'feature_layer', None)!r} "
                f"(forward_features / forward_head); this mapper works at {', '.join(self.layers)}"
            )

    def _scaled(self, grads: Tensor, index: int | None = None) -> Tensor:
        """Gradients (Tensor[B, C, K, h, w], or [B, K, h, w] of class `index`) times the stage weights."""
        if self.channel_scale is None:
            return grads
        scale = self.channel_scale.to(device=grads.device, dtype=grads.dtype)
        if index is None:
            return grads * scale[None, :, :, None, None]
        return grads * scale[index][None, :, None, None]

    def _analytic(self, x: Tensor, erased: Tensor | None) -> Tensor:
        h, w = x.shape[-2:]
        weight = self.model.head_weight[self.classes].to(x.dtype)  # [C, K]
        if self.channel_scale is not None:
            weight = weight * self.channel_scale.to(device=weight.device, dtype=weight.dtype)
        if self.method.needs_gradients:
            weight = weight / (h * w)
        grads = weight[None, :, :, None, None]
        acts = x.unsqueeze(1) if erased is None else erased
        return self.method.combine(acts, grads)

    def _gradient_maps(self, scores: Tensor, acts: list[Tensor]) -> Tensor:
        """One `autograd.grad` per class on the graph from the hooked activations to the scores."""
        per_layer: list[list[Tensor]] = [[] for _ in acts]
        n = len(self.classes)
        for i, c in enumerate(self.classes):
            grads = torch.autograd.grad(scores[:, c].sum(), acts, retain_graph=i < n - 1, allow_unused=True)
            for j, (a, g) in enumerate(zip(acts, grads)):
                g = torch.zeros_like(a) if g is None else self._scaled(g, i)
                per_layer[j].append(self.method.combine(a.detach().unsqueeze(1), g.unsqueeze(1)))
        maps = [torch.cat(m, dim=1) for m in per_layer]
        if self.method.pyramid:
            return self.method.fuse(maps)
        return maps[0]


@contextlib.contextmanager
def _grad_enabled() -> Iterator[None]:
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextlib.contextmanager
def _capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Forward hooks that make each named layer's output a start of the autograd graph.

    The stored activation is the layer output itself when it already requires grad (a later layer downstream
    of an earlier hooked one: its gradient then includes every path), else a detached leaf. The network goes
    on with a clone, so in-place operations after the layer touch neither.
    """
    store: dict[str, Tensor] = {}
    calls: dict[str, int] = {}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: object) -> Tensor:
            if not isinstance(output, Tensor) or output.dim() != 4:
                raise UsageError(f"layer {name!r} must output one Tensor[B, K, h, w] to take a class map at")
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise UsageError(f"layer {name!r} runs more than once per forward pass (a shared module): pick another")
            act = output if output.requires_grad else output.detach().requires_grad_(True)
            store[name] = act
            return act.clone()

        return hook

    handles = [model.get_submodule(name).register_forward_hook(make_hook(name)) for name in names]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in store]
    if missing:
        raise UsageError(f"layer(s) {', '.join(missing)} did not run in the forward pass")


@contextlib.contextmanager
def inference_state(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the block (no weight gradients are built); both restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def maps_function(
    model: nn.Module,
    method: str | CamMethod = "cam",
    layer: str | Sequence[str] | None = None,
    classes: ClassSpec = None,
    *,
    target: PixelSet = None,
    scales: Sequence[int] | str | None = None,
    stage_weights: StageWeights | None = None,
) -> ClassMapper:
    """The pure function ``images -> (logits, maps)`` behind `class_maps`, for tracing and export.

    The returned `ClassMapper` is callable; gradient methods call `torch.autograd.grad` inside, which
    ``make_fx(fn, tracing_mode="symbolic")`` records as backward operators. Freeze the parameters and set
    eval mode around tracing (`inference_state`).
    """
    return ClassMapper(model, method=method, layer=layer, classes=classes, target=target, scales=scales,
                       stage_weights=stage_weights)


def class_maps(
    model: nn.Module,
    images: Tensor,
    *,
    method: str | CamMethod = "cam",
    layer: str | Sequence[str] | None = None,
    classes: ClassSpec = None,
    target: PixelSet = None,
    scales: Sequence[int] | str | None = None,
    stage_weights: StageWeights | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits and raw class maps of every requested class of every image, in one call.

    Args:
        model: see `ClassMapper`.
        images: Tensor[B, in_chans, S, S], float in [0, 1] (the model normalises).
        method: ``cam``, ``gradcam``, ``hirescam``, ``gradcam++``, ``xgradcam``, ``layercam``, ``seg-gradcam``,
            ``seg-hirescam``, ``pyramid-gradcam`` (`list_methods()`).
        layer: module name (default ``model.feature_layer``; pyramid: ``model.pyramid_layers``).
        classes: class indices or names (default: all).
        target: segmentation pixel set (``"predicted"``, ``"all"``, a mask, or ``(row, col)``).
        scales: Pyramid Grad-CAM scales, 1-based, finest first (default: all).
        stage_weights: finding -> {stage -> weight} (`ClassMapper`).

    Returns:
        (logits Tensor[B, C_all], maps Tensor[B, C, h, w] float32): raw maps, the method's own output (CAM has
        no ReLU; gradient methods end with ReLU), not normalised, on the images' device. For a segmentation net
        the logits are the pixel-set scores y^c.
    """
    mapper = maps_function(model, method, layer, classes, target=target, scales=scales, stage_weights=stage_weights)
    # eager only: no autograd at all on the analytic path (inference mode skips version counters too)
    quiet = torch.inference_mode() if mapper.mode == "analytic" else contextlib.nullcontext()
    with inference_state(model), quiet:
        logits, maps = mapper(images)
    if mapper.mode == "analytic" and not torch.is_inference_mode_enabled():
        logits, maps = logits.clone(), maps.clone()  # ordinary tensors again (small: no feature map)
    return logits, maps
