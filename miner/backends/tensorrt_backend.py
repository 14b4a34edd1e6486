"""TensorRT backend: runs a serialized engine from `miner export trt` on torch CUDA tensors.

Inputs and outputs are torch tensors on the GPU whose addresses are handed to the execution context
(TensorRT 10's name-based I/O: `set_input_shape`, `set_tensor_address`, `execute_async_v3` on torch's
current stream), so a batch never leaves the device. The engine's `miner.models.meta.ModelMeta` is read from the
JSON side file written next to it (``<engine>.json``). `import_tensorrt` and `require_gpu` guard both running
engines here and building them (`miner.export.trt`).
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from miner.backends.base import Backend
from miner.errors import BackendUnavailable, ModelError, UsageError
from miner.models.meta import REMEDY, TensorSpec, check_io, read_engine_metadata


def import_tensorrt() -> ModuleType:
    """The `tensorrt` module, or `BackendUnavailable` with one line saying how to get it."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailable(
            "TensorRT is not installed here (pip install tensorrt on a machine with an NVIDIA GPU and CUDA; "
            "the deploy/ image has it); use the onnxruntime backend instead"
        ) from None
    return tensorrt


def require_gpu() -> None:
    """`BackendUnavailable` unless torch sees a CUDA device (TensorRT builds and runs only on one)."""
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU with CUDA, and none is visible here")


def engine_io(engine: Any, trt: Any) -> tuple[list[Any], list[Any]]:
    """The engine's inputs and outputs as `miner.models.meta.TensorSpec` (-1 = a dynamic axis)."""
    dtypes = {getattr(trt, name, None): name for name in ("float32", "float16", "bfloat16", "int8", "int32",
                                                             "int64", "bool", "uint8")}
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dims = tuple(int(d) if int(d) >= 0 else None for d in engine.get_tensor_shape(name))
        dtype = engine.get_tensor_dtype(name)
        spec = TensorSpec(name, dims, dtypes.get(dtype, str(dtype)))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    return inputs, outputs


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
        trt = import_tensorrt()
        require_gpu()
        self.path = Path(path)
        self.source = str(self.path)
        self.remedy = REMEDY["engine"]
        self.nan_remedy = ("build it again (miner export trt) from a graph whose outputs are finite (without --fp16 "
                           "where half precision overflows)")
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such TensorRT engine")
        self.meta = read_engine_metadata(self.path)
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
        inputs, outputs = engine_io(self.engine, trt)
        self._inputs = [s.name for s in inputs]
        self._outputs = [s.name for s in outputs]
        check_io(self.meta, inputs, outputs, source=self.source, remedy=self.remedy, dynamic_batch=False)
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
