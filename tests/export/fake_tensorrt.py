"""A stand-in for the `tensorrt` module: the builder API `miner.export.trt.define_network` calls, recording calls.

Names and signatures follow TensorRT 10's Python API (trt.Builder, create_network(flags), OnnxParser
(network, logger).parse_from_file, get_error, num_errors, create_builder_config, set_memory_pool_limit
(MemoryPoolType.WORKSPACE, bytes), set_flag/clear_flag(BuilderFlag.*), create_optimization_profile,
IOptimizationProfile.set_shape(name, min, opt, max), add_optimization_profile, build_serialized_network).
The parser reads the real ONNX file with `onnx` and exposes its inputs with -1 for symbolic dimensions, as
TensorRT's parser does.
"""
from __future__ import annotations

import enum
import types
from typing import Any


class _Flag(enum.IntEnum):
    pass


def make_fake_tensorrt(*, version: str = "10.9.0", parse_errors: tuple[str, ...] = ()) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # (what, args) in call order

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag(_Flag):
        EXPLICIT_BATCH = 0
        STRONGLY_TYPED = 1

    class BuilderFlag(_Flag):
        FP16 = 0
        INT8 = 1
        TF32 = 7

    class MemoryPoolType(_Flag):
        WORKSPACE = 0

    class TensorView:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[TensorView] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> TensorView:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors = list(parse_errors)

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            import onnx

            trt.calls.append(("parse_from_file", path))
            if self.errors:
                return False
            model = onnx.load(path, load_external_data=False)
            for value in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                self.network.inputs.append(TensorView(value.name, dims))
            return True

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, min: Any, opt: Any, max: Any) -> None:
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags = {BuilderFlag.TF32}  # TensorRT's default
            self.pools: dict[Any, int] = {}
            self.profiles: list[OptimizationProfile] = []

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pools[pool] = size

        def set_flag(self, flag: Any) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            self.flags.discard(flag)

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            trt.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> BuilderConfig:
            return BuilderConfig()

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            trt.calls.append(("build_serialized_network", network, config))
            return b"fake-engine:" + ",".join(t.name for t in network.inputs).encode()

    for name, value in list(locals().items()):
        if isinstance(value, type):
            setattr(trt, name, value)
    return trt
