"""ONNX Runtime backend: runs a graph from `miner export onnx` with explicitly chosen execution providers.

Providers are asked for in the order TensorRT EP, CUDA EP, CPU (``provider="auto"``) or exactly as
named. ONNX Runtime silently falls back to the CPU when a GPU provider cannot load (missing CUDA or
TensorRT libraries, no GPU); this backend checks ``session.get_providers()`` after creating the
session and raises `BackendUnavailable` when a provider that was asked for by name is not the one
that runs. `provider` always names the provider that runs.

On a GPU provider, inputs and outputs stay on the GPU (I/O binding on torch CUDA tensors); on the
CPU, outputs are torch tensors sharing the arrays ONNX Runtime returned.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from miner.backends.base import Backend
from miner.errors import BackendUnavailable, ModelError, UsageError
from miner.models.meta import read_onnx_metadata

TENSORRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

#: provider names accepted by `OnnxRuntimeBackend` -> the ONNX Runtime provider chain asked for
PROVIDER_CHAINS: dict[str, tuple[str, ...]] = {
    "tensorrt": (TENSORRT_EP, CUDA_EP, CPU_EP),
    "cuda": (CUDA_EP, CPU_EP),
    "cpu": (CPU_EP,),
}
PROVIDERS = ("auto", *PROVIDER_CHAINS)


def available_threads() -> int:
    """CPU cores this process may use (affinity mask, e.g. a container's or a Ray actor's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def session_options(*, intra_op_threads: int | None = None, spinning: bool = True) -> Any:
    """Session options for inference: all graph optimisations, sequential execution, explicit threads.

    `intra_op_threads` None uses every core of the affinity mask (ONNX Runtime's own default counts the
    machine's cores, oversubscribing a container or a Ray actor); inter-op parallelism is off (the graph
    is one chain of convolutions). `spinning=False` stops idle worker threads from busy-waiting, for
    processes that share cores with other work.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(intra_op_threads or available_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: its errors reach the user as our one-line errors, once
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _provider_entry(name: str, device_id: int, options: dict[str, Any]) -> Any:
    if name == CPU_EP:
        return name
    opts = {"device_id": device_id}
    opts.update(options.get(name, {}))
    return (name, opts)


class OnnxRuntimeBackend(Backend):
    """Run an exported map graph with ONNX Runtime.

    Args:
        path: the ``.onnx`` file (with its ``.onnx.data`` beside it if the weights are external).
        provider: ``auto`` (TensorRT EP, then CUDA EP, then CPU: the first that loads), ``tensorrt``,
            ``cuda`` or ``cpu``. A named provider that does not run raises `BackendUnavailable`.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (the GPU for GPU providers); None = from the provider.
        intra_op_threads: CPU threads (None: the cores of this process's affinity mask).
        provider_options: extra options per ONNX Runtime provider name, e.g.
            ``{"TensorrtExecutionProvider": {"trt_fp16_enable": True}}``.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        provider: str = "auto",
        device: str | torch.device | None = None,
        intra_op_threads: int | None = None,
        spinning: bool = True,
        provider_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        import onnxruntime as ort

        if provider not in PROVIDERS:
            raise UsageError(f"unknown onnxruntime provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
        self.path = Path(path)
        self.source = str(self.path)
        # the record, and the graph's declared inputs and outputs checked against it (one line if they disagree)
        self.meta = read_onnx_metadata(self.path)
        ort.set_default_logger_severity(4)
        dev = torch.device(device) if device is not None else None
        if dev is not None and dev.type == "cpu" and provider in ("tensorrt", "cuda"):
            raise UsageError(f"provider {provider!r} runs on a GPU, but device {dev} was asked for")
        if provider == "auto":
            if dev is not None and dev.type == "cpu":
                chain = PROVIDER_CHAINS["cpu"]
            elif torch.cuda.is_available():
                chain = PROVIDER_CHAINS["tensorrt"]
            else:  # no usable GPU: asking for GPU providers would only print load failures
                chain = PROVIDER_CHAINS["cpu"]
        else:
            chain = PROVIDER_CHAINS[provider]
        available = set(ort.get_available_providers())
        if provider != "auto" and chain[0] not in available:
            raise BackendUnavailable(
                f"onnxruntime provider {chain[0]} is not in this build (available: {', '.join(sorted(available))})"
            )
        chain = tuple(p for p in chain if p in available)
        device_id = dev.index or 0 if dev is not None and dev.type == "cuda" else 0
        entries = [_provider_entry(p, device_id, provider_options or {}) for p in chain]
        options = session_options(intra_op_threads=intra_op_threads, spinning=spinning)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=entries)
        except Exception as err:  # ORT raises its own Fail/InvalidGraph/... types
            raise ModelError(f"{self.path}: ONNX Runtime cannot load this graph ({str(err).splitlines()[0]})") from None
        running = self.session.get_providers()
        self.provider = running[0]
        if provider != "auto" and self.provider != chain[0]:
            raise BackendUnavailable(
                f"onnxruntime provider {chain[0]} was asked for but {self.provider} runs "
                "(missing GPU, CUDA or TensorRT libraries); use --backend auto or provider 'cpu' to accept that"
            )
        self.requested_provider = provider
        self.providers = tuple(running)
        if self.provider == CPU_EP:
            self.device = torch.device("cpu")
            self.intra_op_threads = options.intra_op_num_threads
        else:
            self.device = torch.device("cuda", device_id)
            self.intra_op_threads = None
        self._input_names = [i.name for i in self.session.get_inputs()]

    def _run(self, images: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.meta.masks_input and masks is None:
            h, w = self.meta.map_size
            masks = torch.ones(images.shape[0], self.meta.num_classes, h, w, device=self.device)
        if self.device.type == "cpu":
            feeds = {"images": images.numpy()}
            if masks is not None:
                feeds["masks"] = masks.numpy()
            logits, maps = self.session.run(["logits", "maps"], feeds)
            return torch.from_numpy(logits), torch.from_numpy(maps)
        return self._run_bound(images, masks)

    def _run_bound(self, images: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        """GPU providers: bind torch CUDA tensors so nothing crosses to the host."""
        b = images.shape[0]
        h, w = self.meta.map_size
        logits = torch.empty(b, self.meta.num_classes, device=self.device)
        maps = torch.empty(b, self.meta.num_classes, h, w, device=self.device)
        binding = self.session.io_binding()
        index = self.device.index or 0
        inputs = [("images", images)] + ([("masks", masks)] if masks is not None else [])
        for name, t in inputs:
            binding.bind_input(name, "cuda", index, np.float32, list(t.shape), t.data_ptr())
        for name, t in (("logits", logits), ("maps", maps)):
            binding.bind_output(name, "cuda", index, np.float32, list(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        # ONNX Runtime writes an output of another shape than the bound buffer's into a buffer of its own (with
        # a warning only), leaving ours unwritten: compare what it produced with what was bound
        for (name, t), value in zip((("logits", logits), ("maps", maps)), binding.get_outputs()):
            shape = [int(d) for d in value.shape()]
            if shape != list(t.shape):
                raise ModelError(f"{self.path}: the model returned {name} of shape {shape} for a batch of {b}, its "
                                 f"metadata promises {list(t.shape)}; {self.remedy}")
        return logits, maps
