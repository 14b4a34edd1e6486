"""The record a map-producing model carries, so that any backend can run it and any tool can check it.

One record (`ModelMeta`) for every form of a model: the torch backend describes a checkpoint with it
(`miner.cam.graph.MapGraph.describe`), `miner export onnx` stores it in the graph's ``metadata_props`` (string
key/value pairs, keys prefixed ``miner.``), `miner export trt` writes it to the JSON side file ``<engine>.json``,
and every backend reports it as ``backend.meta``. The checks of a model file against its record (`check_io`,
`check_outputs`) live here too, beside the readers (`read_onnx_metadata`, `read_engine_metadata`).

Imports neither `miner.backends` nor `miner.export` (both use it); onnx is imported only by the functions that
read a graph.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from miner.errors import ModelError, UsageError
from miner.settings import InferenceSettings

PREFIX = "miner."
#: bumped when the meaning of a key changes
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelMeta:
    """What a map-producing model computes: the contract of a checkpoint's map graph, an ONNX graph or an engine.

    Inputs: ``images`` (float32 [B, in_chans, H, W] in [0, 1], H x W = `input_size`) and, when
    `masks_input`, ``masks`` (float32 [B, C, h, w]; 1 keeps a feature, 0 erases it for that class).
    Outputs: ``logits`` [B, C] and ``maps`` [B, C, h, w] (`map_size` = (h, w)).

    Attributes:
        classes: class names in output order (C of them).
        method: the map method (``cam``, ``gradcam``, ...); layer: the module(s) the maps are taken at.
        input_size: (H, W) the model takes; in_chans: its image channels (grey batches are replicated).
        mean, std: normalisation applied inside the model (inputs are in [0, 1]).
        head_is_linear: GAP + linear head (mining masks the first map; no recompute needed).
        map_size: (h, w) of the maps.
        masks_input: the graph takes class-wise erasure masks (a backend's `recompute` is available).
        shortcut_exact: masking the first maps equals recomputing them on erased features, so mining needs no
            recompute. Without it or `masks_input`, mining beyond one step would be an approximation:
            `check_mining` refuses it.
        cell_origin: where a map cell sits on the input (`miner.boxes.cell_shift`).
        inference: the model's settings record (`miner.settings.InferenceSettings.to_record`, without input
            sizes: the graph's is `input_size`): the recipe, map method, stage weights, mining and box settings it
            was trained and calibrated with ({} for models made before recipes: the seed's settings). Checked when
            the record is read from a file (`validated`).
        extra: free-form string entries (quantization, TensorRT build settings).

    The field names, their order and the encodings of `to_props` and `to_json` are the stored format of every
    exported graph and engine: keep them.
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
    #: the model's settings record (`miner.settings`: recipe name, method, mining and box settings); {} = made before
    #: recipes
    inference: dict = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_mining(self, steps: int) -> None:
        """Refuse attention mining beyond one step where neither the shortcut nor a recompute is exact."""
        if steps > 1 and not (self.shortcut_exact or self.masks_input):
            raise UsageError(
                f"{self.method} maps at {self.layer} change under feature erasure and this model cannot recompute "
                f"them (no masks input): mine with --steps 1, or export maps at the model's feature layer"
            )

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
    def from_props(cls, props: Mapping[str, str], *, source: str = "graph") -> ModelMeta:
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
            ).validated(source)
        except (KeyError, ValueError, TypeError) as err:
            raise ModelError(f"{source}: unreadable miner metadata ({err}); export the model again "
                             "(miner export onnx)") from None

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str = "metadata") -> ModelMeta:
        try:
            data = json.loads(text)
            data["classes"] = tuple(data["classes"])
            data["input_size"] = tuple(data["input_size"])
            data["map_size"] = tuple(data["map_size"])
            data["mean"] = tuple(data["mean"])
            data["std"] = tuple(data["std"])
            meta = cls(**data)
        except (KeyError, ValueError, TypeError) as err:
            raise ModelError(f"{source}: unreadable miner metadata ({err}); build the engine again "
                             "(miner export trt)") from None
        return meta.validated(source, remedy=REMEDY["engine"])

    def validated(self, source: str = "graph", *, remedy: str | None = None) -> ModelMeta:
        """This record, after `check_meta` (a `ModelError` naming `source` where it contradicts itself) and with a
        settings record that this miner reads (`miner.settings.InferenceSettings.from_record`: a `ModelError`
        naming `source` for an unknown recipe or key)."""
        check_meta(self, source=source, remedy=remedy or REMEDY["onnx"])
        InferenceSettings.from_record(self.inference, source=source)
        return self


#: what to do about a model file whose graph and record disagree, by kind of file
REMEDY = {
    "onnx": "export it again with `miner export onnx CHECKPOINT`",
    "engine": "build it again with `miner export trt` from a graph of `miner export onnx`",
    "checkpoint": "train or save it again with miner's own tools",
}


def check_meta(meta: Any, *, source: str = "graph", remedy: str = REMEDY["onnx"]) -> None:
    """Refuse a record that contradicts itself (one-line `ModelError` naming `source`).

    `meta` is a `ModelMeta` or anything with its fields. Checked: at least one class, class names distinct
    non-empty strings; input size and channels positive; one mean and std per channel (or one for all), std > 0,
    all finite; the map grid (h, w) within the input size and a plausible stride of it (the two axes' strides
    H / h and W / w within a factor of 2: boxes are read back through it);
    a known cell origin.
    """
    import math

    def bad(what: str) -> ModelError:
        return ModelError(f"{source}: its miner metadata is inconsistent: {what}; {remedy}")

    classes = tuple(meta.classes)
    if not classes:
        raise bad("it lists no classes")
    if not all(isinstance(c, str) and c.strip() for c in classes):
        raise bad(f"class names must be non-empty strings, got {list(classes)[:20]!r}")
    if len(set(classes)) != len(classes):
        twice = sorted({c for c in classes if classes.count(c) > 1})
        raise bad(f"class names repeat ({', '.join(twice)})")
    size, grid = tuple(meta.input_size), tuple(meta.map_size)
    for name, value in (("input size", size), ("map size", grid)):
        if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise bad(f"{name} must be two positive integers, got {list(value)}")
    in_chans = meta.in_chans
    if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
        raise bad(f"in_chans must be a positive integer, got {in_chans!r}")
    for name in ("mean", "std"):
        values = tuple(getattr(meta, name))
        if len(values) not in (1, in_chans) or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                       for v in values):
            raise bad(f"{name} must hold 1 or {in_chans} finite numbers, got {list(values)}")
    if not all(v > 0 for v in meta.std):
        raise bad(f"std must be positive, got {list(meta.std)}")
    if grid[0] > size[0] or grid[1] > size[1]:
        raise bad(f"maps of {grid[0]}x{grid[1]} cells are finer than the {size[0]}x{size[1]} input")
    strides = (size[0] / grid[0], size[1] / grid[1])
    if max(strides) > 2 * min(strides):
        raise bad(f"maps of {grid[0]}x{grid[1]} cells do not fit a {size[0]}x{size[1]} input at one stride "
                  f"({strides[0]:g} down, {strides[1]:g} across)")
    if getattr(meta, "cell_origin", "centre") not in ("centre", "corner"):
        raise bad(f"cell_origin must be 'centre' or 'corner', got {meta.cell_origin!r}")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as a graph or engine declares it.

    dims: one entry per axis, an int where the size is fixed, None (or a name) where it is dynamic;
    dtype: numpy's name of the element type (``float32``, ``float16``, ``int64``, ...).
    """

    name: str
    dims: tuple[int | str | None, ...]
    dtype: str

    def text(self) -> str:
        return "[" + ", ".join("?" if not isinstance(d, int) else str(d) for d in self.dims) + f"] {self.dtype}"


def expected_io(meta: Any) -> tuple[dict[str, tuple[int | None, ...]], dict[str, tuple[int | None, ...]]]:
    """The inputs and outputs `meta` promises, name -> dims (None for the batch): ``images`` [B, in_chans, H, W]
    (and ``masks`` [B, C, h, w] where `masks_input`) in; ``logits`` [B, C] and ``maps`` [B, C, h, w] out."""
    c, (h, w), (hi, wi) = len(meta.classes), tuple(meta.map_size), tuple(meta.input_size)
    inputs: dict[str, tuple[int | None, ...]] = {"images": (None, int(meta.in_chans), hi, wi)}
    if meta.masks_input:
        inputs["masks"] = (None, c, h, w)
    return inputs, {"logits": (None, c), "maps": (None, c, h, w)}


def check_io(meta: Any, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, source: str,
             remedy: str = REMEDY["onnx"], dynamic_batch: bool = True) -> None:
    """Refuse a graph or engine whose declared inputs and outputs disagree with its record `meta`.

    Checked: exactly the inputs and outputs of `expected_io` by name, each float32, of the right rank, every
    fixed size equal to the promised one (the class axis = ``len(classes)``, the map grid = `map_size`, the
    image = `input_size` and `in_chans`). Dynamic axes pass here and are checked on every batch
    (`miner.backends.Backend.run`). With `dynamic_batch` the batch axis of the inputs must be dynamic (an ONNX
    graph with a fixed batch cannot run the job's batches; an engine's batch range is its profile's).
    """
    want_in, want_out = expected_io(meta)
    promise = (f"{len(meta.classes)} classes, {meta.input_size[0]}x{meta.input_size[1]} input, "
               f"{meta.map_size[0]}x{meta.map_size[1]} maps")
    for role, specs, want in (("inputs", inputs, want_in), ("outputs", outputs, want_out)):
        names = [s.name for s in specs]
        if sorted(names) != sorted(want):
            raise ModelError(f"{source}: the graph's {role} are {names or 'none'}, its metadata promises "
                             f"{list(want)}; {remedy}")
        for spec in specs:
            dims = want[spec.name]
            shown = "[" + ", ".join("B" if d is None else str(d) for d in dims) + "]"
            if spec.dtype != "float32":
                raise ModelError(f"{source}: the graph's {role[:-1]} {spec.name!r} is {spec.dtype}, miner runs "
                                 f"float32 {shown}; {remedy}")
            wrong = len(spec.dims) != len(dims) or any(
                isinstance(got, int) and expected is not None and got != expected
                for got, expected in zip(spec.dims, dims))
            if not wrong and dynamic_batch and role == "inputs" and isinstance(spec.dims[0], int):
                raise ModelError(f"{source}: the graph's input {spec.name!r} has a fixed batch of {spec.dims[0]} "
                                 f"({spec.text()}); miner runs batches of any size: {remedy}")
            if wrong:
                raise ModelError(f"{source}: the graph's {role[:-1]} {spec.name!r} is {spec.text()}, its metadata "
                                 f"promises {shown} ({promise}); {remedy}")


def check_outputs(meta: Any, logits: Any, maps: Any, *, batch: int, source: str,
                  remedy: str = REMEDY["onnx"]) -> None:
    """Refuse outputs of one batch whose actual shapes break the record (dynamic axes can lie where static
    ones pass `check_io`): logits [B, C], maps [B, C, h, w], floating point."""
    _, want = expected_io(meta)
    for name, value in (("logits", logits), ("maps", maps)):
        shape = tuple(int(d) for d in value.shape)
        dims = (batch, *want[name][1:])
        if shape != dims:
            raise ModelError(f"{source}: the model returned {name} of shape {list(shape)} for a batch of {batch}, "
                             f"its metadata promises {list(dims)} ({len(meta.classes)} classes, "
                             f"{meta.map_size[0]}x{meta.map_size[1]} maps); {remedy}")
        if not value.is_floating_point():
            raise ModelError(f"{source}: the model returned {name} as {value.dtype}, not floats; {remedy}")


def onnx_io(model: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The declared inputs (initializers left out) and outputs of a loaded `onnx.ModelProto`."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        t = value.type.tensor_type
        try:
            dtype = str(helper.tensor_dtype_to_np_dtype(t.elem_type))
        except (KeyError, ValueError, TypeError):  # undefined or non-numeric element types (strings, ...)
            dtype = f"element type {t.elem_type}"
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        return TensorSpec(value.name, dims, dtype)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def read_onnx_metadata(path: str | Path, *, check: bool = True) -> ModelMeta:
    """The `ModelMeta` of an exported ``.onnx`` file (reads the graph structure only, not the weights).

    With `check`, the graph's declared inputs and outputs must agree with the record (`check_io`): a graph
    edited after export, or one from elsewhere with miner's metadata pasted in, fails here with one line.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    meta = ModelMeta.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
    if check:
        inputs, outputs = onnx_io(model)
        check_io(meta, inputs, outputs, source=str(path))
    return meta


def engine_metadata_path(engine_path: str | Path) -> Path:
    """The JSON side file that carries a TensorRT engine's `ModelMeta`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def read_engine_metadata(engine_path: str | Path) -> ModelMeta:
    """The `ModelMeta` of a TensorRT engine, from its side file (`engine_metadata_path`); one `ModelError` line
    where the side file is missing, unreadable or inconsistent."""
    engine_path = Path(engine_path)
    side = engine_metadata_path(engine_path)
    if not side.is_file():
        raise ModelError(f"{engine_path}: metadata {side.name} is missing (build engines with `miner export trt`)")
    try:
        text = side.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"{side}: cannot read the engine's metadata ({err}); build the engine again "
                         "(miner export trt)") from None
    return ModelMeta.from_json(text, source=str(side))


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


def parse_size(value: int | str | Sequence[int] | None) -> tuple[int, int] | None:
    """An input size as options and checkpoints give it: ``512``, ``"512"``, ``"512x384"``, ``[512, 384]`` ->
    (H, W); None stays None."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            parts = [int(p) for p in value.lower().replace("*", "x").split("x")]
        elif isinstance(value, int):
            parts = [value]
        else:
            parts = [int(v) for v in value]
    except ValueError:
        raise UsageError(f"input size must be S or HxW (e.g. 512 or 512x512), got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8:
        raise UsageError(f"input size must be S or HxW with sides >= 8, got {value!r}")
    return parts[0], parts[1]
