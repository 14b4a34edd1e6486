"""Class activation maps for every class in one pass.

    from miner.cam import class_maps, list_methods
    logits, maps = class_maps(model, images, method="gradcam", layer="layer3")

`class_maps` returns raw maps (each method's own output); `maps_function` returns the same computation as a
pure, traceable function of the images; `ClassMapper.erased_maps` recomputes maps on class-wise erased features
(attention mining with a non-linear head). `miner.cam.graph.MapGraph` is a model's logits and all its maps as one
such function, with its record (`miner.models.meta.ModelMeta`) and its trace (`trace_graph`): what the torch
backend runs and what `miner export onnx` exports.
"""
from __future__ import annotations

from miner.cam import activation, gradient, pyramid, segmentation  # noqa: F401  (register the methods)
from miner.cam.base import CamMethod, get_method, list_methods, register
from miner.cam.engine import (
                               ClassMapper,
                               StageWeights,
                               class_maps,
                               inference_state,
                               maps_function,
                               resolve_classes,
                               stage_scale,
)
from miner.cam.normalize import normalize_maps

__all__ = [
    "CamMethod",
    "ClassMapper",
    "class_maps",
    "get_method",
    "inference_state",
    "list_methods",
    "maps_function",
    "stage_scale",
    "StageWeights",
    "normalize_maps",
    "register",
    "resolve_classes",
]
