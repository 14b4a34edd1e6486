"""TensorRT backend: runs a serialized engine from `miner export trt` on torch CUDA tensors.

Inputs and outputs are torch tensors on the GPU whose addresses are handed to the execution context
(TensorRT 10's name-based I/O: `set_input_shape`, `set_tensor_address`, `execute_async_v3` on torch's
current stream), so a batch never leaves the device. The engine's `GraphMeta` is read from the JSON side
file written next to it (``<engine>.json``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from miner.backends.base import Backend, BackendMeta
from miner.errors import ModelError, UsageError


class TensorRTBackend(Backend):
    """Run a TensorRT engine (``.engine`` / ``.plan``).

    Args:
        path: the engine file, with its ``<path>.json`` metadata beside it.
        device: ``cuda`` or ``cuda:N`` (default: the current CUDA device).

    Raises:
        BackendUnavailable: TensorRT or a GPU is missing.
        ModelError: the engine or its side file cannot be read.
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, *, device: str | torch.device | None = None) -> None:
        from miner.export.metadata import GraphMeta, engine_metadata_path
        from miner.export.trt import import_tensorrt, require_gpu

        trt = import_tensorrt()
        require_gpu()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such TensorRT engine")
        side = engine_metadata_path(self.path)
        if not side.is_file():
            raise ModelError(f"{self.path}: metadata {side.name} is missing (build engines with `miner export trt`)")
        self.meta = BackendMeta.from_graph_meta(GraphMeta.from_json(side.read_text(), source=str(side)))
        self.device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        if self.device.type != "cuda":
            raise UsageError(f"the tensorrt backend runs on a CUDA device, not {self.device}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise ModelError(f"{self.path}: TensorRT cannot load this engine (built by another TensorRT or GPU?)")
            self.context = self.engine.create_execution_context()
        self._trt = trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        if self._inputs[:1] != ["images"] or set(self._outputs) != {"logits", "maps"}:
            raise ModelError(f"{self.path}: engine I/O {names} is not images -> logits, maps")
        low, _, high = self.engine.get_tensor_profile_shape("images", 0)
        self.batch_range = (int(low[0]), int(high[0]))
        self.provider = f"TensorRT {getattr(trt, '__version__', '')}".strip()

    def _run(self, images: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        b = images.shape[0]
        low, high = self.batch_range
        if not low <= b <= high:
            # split into engine-sized chunks rather than failing a large batch
            if b > high:
                parts = [self._run(images[i : i + high], None if masks is None else masks[i : i + high])
                         for i in range(0, b, high)]
                return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            raise UsageError(f"tensorrt backend: batch {b} is below the engine's minimum {low}")
        if self.meta.masks_input and masks is None:
            h, w = self.meta.map_size
            masks = torch.ones(b, self.meta.num_classes, h, w, device=self.device)
        feeds = {"images": images}
        if "masks" in self._inputs:
            feeds["masks"] = masks
        for name, t in feeds.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self._outputs:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ModelError(f"{self.path}: TensorRT execution failed")
        return outputs["logits"], outputs["maps"]
