"""What an exported graph records about itself, so a backend can run it without the checkpoint.

Stored as ONNX ``metadata_props`` (string key/value pairs, keys prefixed ``miner.``); a TensorRT engine
carries the same record in a JSON side file ``<engine>.json`` written by `miner export trt`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from miner.errors import ModelError

PREFIX = "miner."
#: bumped when the meaning of a key changes
FORMAT_VERSION = 1


@dataclass(frozen=True)
class GraphMeta:
    """The contract of a map-producing graph.

    Inputs: ``images`` (float32 [B, in_chans, H, W] in [0, 1], H x W = `input_size`) and, when
    `masks_input`, ``masks`` (float32 [B, C, h, w]; 1 keeps a feature, 0 erases it for that class).
    Outputs: ``logits`` [B, C] and ``maps`` [B, C, h, w] (`map_size` = (h, w)).
    """

    classes: tuple[str, ...]
    method: str
    layer: str
    input_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    head_is_linear: bool
    map_size: tuple[int, int]
    masks_input: bool = False
    #: masking the first maps equals recomputing them on erased features (GAP + linear head, maps at its input)
    shortcut_exact: bool = False
    arch: str = ""
    model_hash: str = ""
    miner_version: str = ""
    task: str = "classification"
    #: ``corner``: a stride-s map cell i is centred on input pixel s * i (ResNets); ``centre``: at s * i + (s - 1) / 2
    cell_origin: str = "centre"
    #: the model's recipe record (`miner.recipes`: recipe name, mining and box settings); {} = made before recipes
    inference: dict = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (all values strings; lists as JSON)."""
        props = {f"{PREFIX}format": str(FORMAT_VERSION)}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra":
                for k, v in value.items():
                    props[f"{PREFIX}extra.{k}"] = str(v)
                continue
            if isinstance(value, (tuple, list, bool, int, float, dict)):
                value = json.dumps(list(value) if isinstance(value, tuple) else value)
            props[PREFIX + f.name] = str(value)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, source: str = "graph") -> GraphMeta:
        """Inverse of `to_props`; `source` names the file in the error of a graph without the record."""
        if f"{PREFIX}classes" not in props:
            raise ModelError(f"{source}: no miner metadata (export it with `miner export onnx`)")
        kwargs: dict[str, Any] = {}
        extra: dict[str, str] = {}
        names = {f.name for f in fields(cls)}
        for key, value in props.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :]
            if name.startswith("extra."):
                extra[name[len("extra.") :]] = value
            elif name in names:
                kwargs[name] = value
        try:
            return cls(
                classes=tuple(json.loads(kwargs["classes"])),
                method=kwargs["method"],
                layer=kwargs["layer"],
                input_size=tuple(int(v) for v in json.loads(kwargs["input_size"])),  # type: ignore[arg-type]
                in_chans=int(json.loads(kwargs["in_chans"])),
                mean=tuple(float(v) for v in json.loads(kwargs["mean"])),
                std=tuple(float(v) for v in json.loads(kwargs["std"])),
                head_is_linear=bool(json.loads(kwargs["head_is_linear"])),
                map_size=tuple(int(v) for v in json.loads(kwargs["map_size"])),  # type: ignore[arg-type]
                masks_input=bool(json.loads(kwargs.get("masks_input", "false"))),
                # graphs written before the key existed: assume the default export (maps at the feature layer)
                shortcut_exact=bool(json.loads(kwargs.get("shortcut_exact", kwargs["head_is_linear"]))),
                arch=kwargs.get("arch", ""),
                model_hash=kwargs.get("model_hash", ""),
                miner_version=kwargs.get("miner_version", ""),
                task=kwargs.get("task", "classification"),
                cell_origin=kwargs.get("cell_origin", "centre"),
                inference=dict(json.loads(kwargs.get("inference", "{}"))),
                extra=extra,
            )
        except (KeyError, ValueError, TypeError) as err:
            raise ModelError(f"{source}: unreadable miner metadata ({err})") from None

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str = "metadata") -> GraphMeta:
        try:
            data = json.loads(text)
            data["classes"] = tuple(data["classes"])
            data["input_size"] = tuple(data["input_size"])
            data["map_size"] = tuple(data["map_size"])
            data["mean"] = tuple(data["mean"])
            data["std"] = tuple(data["std"])
            return cls(**data)
        except (KeyError, ValueError, TypeError) as err:
            raise ModelError(f"{source}: unreadable miner metadata ({err})") from None


def read_onnx_metadata(path: str | Path) -> GraphMeta:
    """The `GraphMeta` of an exported ``.onnx`` file (reads the graph structure only, not the weights)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    return GraphMeta.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))


def engine_metadata_path(engine_path: str | Path) -> Path:
    """The JSON side file that carries a TensorRT engine's `GraphMeta`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def file_hash(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def state_dict_hash(model: Any) -> str:
    """``sha256:<hex>`` over a model's state_dict (sorted keys, dtypes, shapes and bytes).

    Used when a model is exported from memory; `miner export onnx CKPT` records the checkpoint's file hash.
    """
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        digest.update(t.numpy().tobytes())
    return "sha256:" + digest.hexdigest()
