"""Torch backend: eager PyTorch on a checkpoint, through its map graph (`miner.cam.graph.MapGraph`: `miner.cam`
itself, the reference the exported graphs match).

With ``compile=True`` the map graph is first traced into one ATen graph (`miner.cam.graph.trace_graph`, the same
graph the ONNX export writes, gradients included) and that graph goes through `torch.compile` (dynamic batch); the
first call of each new batch size compiles.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from miner.backends.base import Backend
from miner.cam.graph import MapGraph, checkpoint_options, default_method, trace_graph
from miner.errors import UsageError
from miner.models.meta import file_hash, parse_size
from miner.settings import InferenceSettings


class TorchBackend(Backend):
    """Eager (or compiled) PyTorch.

    Args:
        model: a `miner.models` model.
        input_size: (H, W) of the images `run` takes.
        method, layer, target, scales: the map method, as `miner.cam.class_maps` (method default:
            `miner.cam.graph.default_method`).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: cuda when available, else cpu).
        compile: trace the map function and run it through `torch.compile`.
        model_hash: recorded in `meta` (e.g. the checkpoint's sha256).
        inference: the model's settings (`miner.settings.InferenceSettings` or its record; None: none recorded),
            reported in `meta` (``meta.inference``, the record).
        stage_weights: per-finding stage weights of the maps (`miner.cam.ClassMapper`; a calibrated checkpoint
            records them, `miner.calibrate`).
    """

    name = "torch"
    remedy = "it is not a model miner can use: save it again with miner's own tools"
    nan_remedy = "its weights may hold NaN or infinities: train it again, or take an earlier checkpoint"

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: tuple[int, int],
        method: str | None = None,
        layer: str | None = None,
        device: str | torch.device | None = None,
        compile: bool = False,
        model_hash: str = "",
        target: Any = None,
        scales: Any = None,
        inference: InferenceSettings | Mapping[str, Any] | None = None,
        stage_weights: Any = None,
    ) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            from miner.errors import BackendUnavailable

            raise BackendUnavailable(f"torch backend: device {self.device} asked for, but no CUDA device is visible")
        from miner.models.inference import prepare_for_inference

        # a frozen eval copy with BatchNorm folded into the convolutions, channels_last (the caller's model is
        # left as it is; outputs equal up to float rounding)
        self.model = prepare_for_inference(model).to(self.device)
        self.graph = MapGraph(self.model, method=method or default_method(model), layer=layer, target=target,
                              scales=scales, stage_weights=stage_weights)
        self.mapper = self.graph.mapper
        self._compiled: Callable[..., tuple[Tensor, Tensor]] | None = None
        self.compile = bool(compile)
        self.provider = "torch.compile" if compile else "torch eager"
        h, w = input_size
        with torch.no_grad():
            probe = torch.zeros(2, int(getattr(model, "in_chans", 1)), h, w, device=self.device)
            map_size = tuple(int(v) for v in self.mapper(probe)[1].shape[-2:])
        self.meta = self.graph.describe((h, w), map_size, model_hash=model_hash, inference=inference)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, input_size: tuple[int, int] | None = None, plain_maps: bool = False,
        **options: Any
    ) -> TorchBackend:
        """Open a checkpoint (`miner.models.save_checkpoint`); input size from its metadata by default. Maps take
        the checkpoint's recorded stage weights unless `plain_maps` (or ``stage_weights=`` says otherwise)."""
        from miner.models import load_checkpoint

        model, meta = load_checkpoint(path, map_location="cpu")
        settings = InferenceSettings.from_checkpoint(meta, source=str(path))
        size = parse_size(input_size) or parse_size(settings.input_size)
        if size is None:
            raise UsageError(f"{path} records no input_size: pass input_size=")
        checkpoint_options(settings, options, plain_maps=plain_maps)
        backend = cls(model, input_size=size, model_hash=file_hash(path), **options)
        backend.source = str(path)
        return backend

    def _run(self, images: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        images = images.contiguous(memory_format=torch.channels_last)
        if self.compile:
            return self._run_compiled(images, masks)
        if masks is None:
            return self.mapper(images)
        features = self.mapper.features(images)
        with torch.no_grad():
            logits = self.model.forward_head(features)
        return logits, self.mapper.erased_maps(features, masks)

    def recompute(self, images: Tensor) -> Callable[[Tensor], Tensor] | None:
        """Maps of erased features, reusing this batch's features (one backbone pass for all mining steps)."""
        if not self.meta.masks_input:
            return None
        images = self._check_images(images).contiguous(memory_format=torch.channels_last)
        features = self.mapper.features(images)
        batch = images.shape[0]

        def recompute(masks: Tensor) -> Tensor:
            return self.mapper.erased_maps(features, self._check_masks(masks, batch))

        return recompute

    def _run_compiled(self, images: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        if self._compiled is None:
            # the traced graph keeps the masks input only where erasure matters
            self.graph.masks_input = self.meta.masks_input
            b = max(2, images.shape[0])
            example = [torch.rand(b, *images.shape[1:], device=self.device)]
            if self.meta.masks_input:
                example.append(torch.ones(b, self.meta.num_classes, *self.meta.map_size, device=self.device))
            gm = trace_graph(self.graph, example)
            self._compiled = torch.compile(gm, dynamic=True)
        args = [images]
        if self.meta.masks_input:
            if masks is None:
                masks = torch.ones(images.shape[0], self.meta.num_classes, *self.meta.map_size, device=self.device)
            args.append(masks)
        logits, maps = self._compiled(*args)
        return logits, maps
