"""Inference backends with one interface: ``run(images) -> (logits, maps)`` (see `miner.backends.base`).

    from miner.backends import open_backend
    backend = open_backend("model.onnx")              # backend="auto": by file type, best provider
    print(backend.describe())                         # which backend and provider actually run
    logits, maps = backend.run(images)                # images [B, in_chans, S, S] in [0, 1]

File types: ``.pt``/``.pth``/``.ckpt`` checkpoints -> ``torch``; ``.onnx`` -> ``onnxruntime``;
``.engine``/``.plan`` -> ``tensorrt``. Importing this package imports torch but neither onnxruntime nor
tensorrt (each backend module imports its runtime when opened). Every backend reports what its model computes
as one record, `miner.models.meta.ModelMeta` (``backend.meta``), the record graphs and engines carry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from miner.backends.base import BACKENDS, Backend
from miner.errors import ModelError, UsageError
from miner.models.meta import ModelMeta, read_engine_metadata

__all__ = ["BACKENDS", "Backend", "backend_for_path", "check_model", "open_backend"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def backend_for_path(path: str | Path) -> str:
    """The backend a model file is opened with under ``backend="auto"``."""
    suffix = Path(path).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "torch"
    if suffix in ONNX_SUFFIXES:
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    raise UsageError(
        f"{path}: unknown model file type {suffix or '(none)'}; expected a checkpoint "
        f"({', '.join(CHECKPOINT_SUFFIXES)}), an ONNX graph (.onnx) or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})"
    )


def open_backend(
    model_path: str | Path,
    *,
    backend: str | None = None,
    device: str | None = None,
    provider: str | None = None,
    intra_op_threads: int | None = None,
    spinning: bool | None = None,
    compile: bool | None = None,
    method: str | None = None,
    layer: str | None = None,
    input_size: Any = None,
    plain_maps: bool | None = None,
    config: Any = None,
) -> Backend:
    """Open a model file with the backend that runs it.

    Every option left at None takes its value from `config` (a `miner.config.BackendConfig`; default
    ``BackendConfig()``), so ``open_backend(path)`` means backend ``auto``, provider ``auto``.

    Args:
        model_path: a checkpoint, ``.onnx`` graph or TensorRT engine.
        backend: ``auto`` (by file type; for ``.onnx`` the best onnxruntime provider that loads: TensorRT EP,
            CUDA EP, then CPU) or ``torch``, ``onnxruntime``, ``tensorrt`` (must fit the file type).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: the backend's best).
        provider: onnxruntime provider (``auto``, ``tensorrt``, ``cuda``, ``cpu``). A provider asked for by name
            that does not load raises `BackendUnavailable`.
        intra_op_threads, spinning: onnxruntime CPU threads (see `session_options`); torch threads are left
            to the process.
        compile: torch backend: `torch.compile` the traced map graph.
        method, layer, input_size: torch backend: the map method/layer and image size (defaults from the
            model and checkpoint). Graphs and engines carry their own.
        plain_maps: torch backend: maps without the checkpoint's calibrated stage weights (`miner.calibrate`);
            a graph or engine has them built in (export it with ``--plain-maps`` instead).
        config: defaults for the options above.

    Returns:
        the `Backend`; ``backend.describe()`` says which backend and provider run.
    """
    from miner.config import BackendConfig

    cfg = config if config is not None else BackendConfig()
    backend = backend if backend is not None else cfg.backend
    device = device if device is not None else cfg.device
    provider = provider if provider is not None else cfg.provider
    intra_op_threads = intra_op_threads if intra_op_threads is not None else cfg.intra_op_threads
    spinning = spinning if spinning is not None else cfg.spinning
    compile = compile if compile is not None else cfg.torch_compile
    method = method if method is not None else cfg.method
    layer = layer if layer is not None else cfg.layer
    plain_maps = plain_maps if plain_maps is not None else cfg.plain_maps
    path = Path(model_path)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    kind = backend_for_path(path)
    if backend != "auto" and backend != kind:
        hint = {"torch": "a checkpoint", "onnxruntime": "an .onnx graph (miner export onnx)",
                "tensorrt": "an engine (miner export trt)"}[backend]
        raise UsageError(f"{path}: backend {backend!r} needs {hint}, not a {path.suffix} file")
    if kind != "torch" and (method or layer or input_size):
        raise UsageError(f"{path}: method/layer/input size are fixed in the {kind} model; "
                         "export it again to change them")
    if kind != "torch" and plain_maps:
        raise UsageError(f"{path}: the maps' stage weights are built into the {kind} model; export the checkpoint "
                         "again with --plain-maps")
    if kind == "torch":
        from miner.backends.torch_backend import TorchBackend

        return TorchBackend.from_checkpoint(
            path, input_size=input_size, method=method, layer=layer, device=device, compile=compile,
            plain_maps=bool(plain_maps),
        )
    if kind == "onnxruntime":
        from miner.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            path, provider=provider, device=device, intra_op_threads=intra_op_threads, spinning=spinning
        )
    from miner.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(path, device=device)


def check_model(model_path: str | Path, *, backend: str = "auto", **options: Any) -> ModelMeta:
    """Check a model file before a job starts: what `miner mine`'s driver runs before Ray and before OUT.

    A checkpoint or ONNX graph is opened on this machine's CPU (its record, its declared inputs and outputs
    against the record) and run once on a fixed test batch (`Backend.probe`: output shapes as promised, finite
    values). An engine needs its GPU: here only its side file's record is read and checked; its model actors
    check the rest when they open it. `options` are the job's other `open_backend` options (``method``,
    ``layer``, ``plain_maps``); options that do not fit the file (a method for a graph) fail here too.

    Returns:
        the model's `ModelMeta`.

    Raises:
        ModelError, UsageError: one line naming the file (or option), what is wrong and what to do.
    """
    path = Path(model_path)
    kind = backend_for_path(path)
    if kind == "tensorrt" and backend in ("auto", "tensorrt"):
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        return read_engine_metadata(path)
    options = {k: v for k, v in options.items() if v is not None}
    options.update(device="cpu", provider="cpu" if kind == "onnxruntime" else None, spinning=False, compile=False)
    opened = open_backend(path, backend=backend, **options)
    opened.probe()
    return opened.meta
