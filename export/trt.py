"""TensorRT engines from exported map graphs (the TensorRT Python builder, one optimisation profile).

    plan = define_network(trt, "model.onnx", settings)     # parse + profile + flags: no GPU work
    engine = plan.builder.build_serialized_network(plan.network, plan.config)

`define_network` takes the `tensorrt` module as an argument, so everything up to the build call (parsing
the ONNX, the min/opt/max batch shapes of every input, precision flags, workspace limit) is plain code that
the tests drive with a fake module. `build_engine` is the guarded entry point: it imports TensorRT, checks
for a GPU, builds, and writes the engine plus its metadata side file (`<engine>.json`).

Precision:
- default FP32 (TF32 where the GPU has it, TensorRT's default);
- ``fp16=True`` sets `BuilderFlag.FP16` (layers may run in half precision);
- ``int8=True`` only for graphs with explicit QuantizeLinear/DequantizeLinear nodes (from
  `miner.export.quantize`): implicit INT8 calibration is deprecated since TensorRT 10.1. Such a network is
  created *strongly typed* (the Q/DQ nodes fix every precision; TensorRT's recommended mode). With
  ``fp16=True`` as well it is created weakly typed with the INT8 and FP16 flags, so the layers between Q/DQ
  pairs may also run in half precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from miner.backends.tensorrt_backend import import_tensorrt, require_gpu
from miner.errors import ModelError, UsageError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class EngineSettings:
    """What `miner export trt` asks of the builder.

    Attributes:
        fp16, int8: precision (see the module doc).
        tf32: let FP32 layers use TF32 tensor cores (TensorRT's default; ~1e-3 relative error). Off for
            bit-faithful float32 (the engine-vs-eager parity check).
        min_batch, opt_batch, max_batch: the optimisation profile's batch range (opt is what TensorRT tunes).
        workspace_gb: the workspace memory pool limit in GiB (scratch memory for tactics).
    """

    fp16: bool = False
    int8: bool = False
    tf32: bool = True
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_gb: float = 4.0

    def validate(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UsageError(
                f"--min-batch {self.min_batch} <= --opt-batch {self.opt_batch} <= --max-batch {self.max_batch} "
                "must hold"
            )
        if not self.workspace_gb > 0:
            raise UsageError(f"--workspace must be positive (GiB), got {self.workspace_gb}")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gb * (1 << 30))


@dataclass
class NetworkPlan:
    """Everything `build_serialized_network` needs, plus what was decided on the way."""

    builder: Any
    network: Any
    config: Any
    profile: Any
    parser: Any
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    strongly_typed: bool


def has_qdq(onnx_path: str | Path) -> bool:
    """True when the graph (or a function it calls) has QuantizeLinear/DequantizeLinear nodes."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    nodes = list(model.graph.node)
    for fn in model.functions:
        nodes.extend(fn.node)
    return any(n.op_type in QDQ_OPS for n in nodes)


def _dims(shape: Any) -> list[int]:
    return [int(d) for d in shape]


def define_network(
    trt: ModuleType, onnx_path: str | Path, settings: EngineSettings, *, logger: Any = None
) -> NetworkPlan:
    """Parse `onnx_path` into a TensorRT network and configure the build (no engine is built).

    Every network input gets min/opt/max shapes with the batch dimension set from `settings` and the
    other dimensions taken from the graph (they must be static: the graphs `miner export onnx` writes have
    a fixed image size and map size).

    Args:
        trt: the `tensorrt` module (or a stand-in with the same API).
        onnx_path: the graph; external weights (``.onnx.data``) are read from beside it.
        settings: precision, batch range and workspace.
        logger: a ``trt.ILogger``; default ``trt.Logger(trt.Logger.WARNING)``.

    Returns:
        a `NetworkPlan` ready for ``plan.builder.build_serialized_network(plan.network, plan.config)``.
    """
    settings.validate()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: no such ONNX file")
    qdq = has_qdq(onnx_path)
    if settings.int8 and not qdq:
        raise UsageError(
            f"{onnx_path}: --int8 needs a graph with explicit Q/DQ nodes (implicit INT8 calibration is deprecated "
            "in TensorRT); quantize it first with `miner.export.quantize.quantize_onnx` or drop --int8"
        )
    logger = logger if logger is not None else trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = bool(
        settings.int8 and not settings.fp16 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    )
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    major = int(str(getattr(trt, "__version__", "10")).split(".")[0])
    if major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        # TensorRT 8.x: implicit batch is the default there and cannot express a dynamic batch profile
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ModelError(f"{onnx_path}: TensorRT cannot parse this graph: {'; '.join(errors) or 'unknown error'}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    if not settings.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if not strongly_typed:
        if settings.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        if settings.int8:
            config.set_flag(trt.BuilderFlag.INT8)

    profile = builder.create_optimization_profile()
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = _dims(tensor.shape)
        if not dims or any(d < 0 for d in dims[1:]):
            raise ModelError(
                f"{onnx_path}: input {tensor.name!r} has shape {dims}; only the batch dimension may be dynamic"
            )
        rest = tuple(dims[1:])
        shape = tuple((b, *rest) for b in (settings.min_batch, settings.opt_batch, settings.max_batch))
        if dims[0] >= 0 and any(s[0] != dims[0] for s in shape):
            raise ModelError(f"{onnx_path}: input {tensor.name!r} has a fixed batch of {dims[0]}; export it again")
        profile.set_shape(tensor.name, *shape)
        shapes[tensor.name] = shape  # type: ignore[assignment]
    config.add_optimization_profile(profile)
    return NetworkPlan(builder, network, config, profile, parser, shapes, strongly_typed)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    settings: EngineSettings = EngineSettings(),
    *,
    trt: ModuleType | None = None,
    verbose: bool = False,
) -> Path:
    """Build a serialized TensorRT engine from an exported graph and write it with ``<engine>.json``.

    Raises:
        BackendUnavailable: TensorRT or a GPU is missing.
        UsageError: bad settings (batch range, ``int8`` without Q/DQ nodes).
        ModelError: the graph cannot be parsed or built.
    """
    from miner.models.meta import engine_metadata_path, read_onnx_metadata

    settings.validate()
    meta = read_onnx_metadata(onnx_path)  # fail on a foreign graph before the (slow) build
    if trt is None:
        trt = import_tensorrt()
        require_gpu()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    plan = define_network(trt, onnx_path, settings, logger=logger)
    serialized = plan.builder.build_serialized_network(plan.network, plan.config)
    if serialized is None:
        raise ModelError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT log above)")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as fh:
        fh.write(memoryview(serialized))
    record = meta.to_json()
    import json

    data = json.loads(record)
    data.setdefault("extra", {}).update(
        {
            "trt_version": str(getattr(trt, "__version__", "")),
            "fp16": str(settings.fp16).lower(),
            "int8": str(settings.int8).lower(),
            "tf32": str(settings.tf32).lower(),
            "batch_range": f"{settings.min_batch},{settings.opt_batch},{settings.max_batch}",
            "source_onnx": str(Path(onnx_path).name),
        }
    )
    engine_metadata_path(engine_path).write_text(json.dumps(data, indent=2))
    return engine_path
