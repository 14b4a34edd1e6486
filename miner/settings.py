"""The settings record: how a model is mined, typed (`InferenceSettings`), with its one reader and one writer.

A model carries the settings it was trained and calibrated with, so that every backend mines it the same way: the
recipe's name, the map method, the maps' stage weights, attention mining (`miner.config.MiningConfig`), the box rule
(`miner.config.BoxConfig`: levels, per-finding levels and shapes, ...) and, in a checkpoint, the input size. On
disk it is a plain JSON-ready dict, the *record*::

    {"recipe": "peaks", "method": "layercam", "mining": {...}, "boxes": {...},
     "stage_weights": {finding: {stage: weight}}, "input_size": 320, "trained_input_size": 256}

Its keys sit among a checkpoint's meta (`miner train`, `miner calibrate`), in an ONNX graph's ``miner.inference``
metadata and an engine's ``ENGINE.json`` (``inference``; a graph's input size is fixed in the graph itself,
`miner.models.meta.ModelMeta.input_size`, so its record leaves the sizes out). `InferenceSettings.to_record` is
the only writer of the record and `InferenceSettings.from_record` the only reader; `with_overrides` applies what
``miner mine --recipe/--steps/...`` and the pipeline's options ask for. docs/design.md, "The settings record".

The defaults (the seed's recipe and the product's) live in `miner.config` (`RECIPE_SETTINGS`, `MiningConfig`,
`BoxConfig`, `DEFAULT_RECIPE`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from miner.config import RECIPE_SETTINGS, SEED_RECIPE, BoxConfig, MiningConfig, to_plain
from miner.errors import ModelError, UsageError

#: the keys of the record, in the order `InferenceSettings.to_record` writes them
RECORD_KEYS = ("recipe", "method", "mining", "boxes", "stage_weights", "input_size", "trained_input_size")

#: `BoxConfig` fields added after records were first written, with the value that leaves boxes as before: a
#: record leaves one out where it has that value and so has its recipe (which `from_record` then reads back), so a
#: model that does not use it keeps the record it had, and older miners, which refuse unknown keys, still read it
LATER_BOX_FIELDS: dict[str, Any] = {"drop_nested": 0.0, "regressors": None}

#: what to do about a record this miner cannot read (the end of each of `from_record`'s errors)
REMEDY = "mine it with the version of miner that wrote it"


@dataclass(frozen=True)
class InferenceSettings:
    """How a model is mined: the typed form of the settings record (module docstring).

    Rules of the record (`from_record` / `to_record`; docs/design.md, "The settings record"):

    - A record without a recipe (a model made before recipes, ``{}``) reads as the seed's recipe, ``cai2018``: its
      mining and box settings (`miner.config.MiningConfig()`, `BoxConfig()`), no map method (the model's own
      default, `miner.cam.graph.default_method`), no stage weights. These settings write back as ``{}``.
    - ``mining`` and ``boxes`` may list only some fields: the others are the recorded recipe's.
    - A key the record may not hold, at the top or inside ``mining`` / ``boxes``, and a recipe name that this miner
      does not know are errors: one-line `ModelError` naming the file (`source`) where the caller knows it, exit
      code 2. A key whose value is None counts as absent.
    - `to_record` writes every setting that differs from the empty record: recipe, method (where recorded),
      mining and boxes in full (less a later box field at its neutral value, `LATER_BOX_FIELDS`), stage weights
      where there are any, the input sizes where known. It reads back
      equal (`from_record(s.to_record()) == s`), and a record it wrote is rewritten identically.

    Attributes:
        recipe: the recipe's name (`miner.recipes`); the base of ``mining`` and ``boxes``.
        method: the class-map method the model's maps are computed with (`miner.cam.list_methods`); None: not
            recorded (the model's default method).
        mining: attention mining at inference.
        boxes: the box rule and its levels, per-finding levels and shapes.
        stage_weights: finding -> {backbone stage -> weight} of the maps (`miner.calibrate`,
            `miner.cam.ClassMapper`); None: plain maps.
        input_size: the image side (or (H, W)) a checkpoint's maps are computed at (`miner.calibrate` may choose
            one above the training size); None: not recorded here (a graph's size is the graph's).
        trained_input_size: the side it was trained at, where calibration chose another ``input_size``.
    """

    recipe: str = SEED_RECIPE
    method: str | None = None
    mining: MiningConfig = field(default_factory=MiningConfig)
    boxes: BoxConfig = field(default_factory=BoxConfig)
    stage_weights: dict[str, dict[str, float]] | None = None
    input_size: int | tuple[int, int] | None = None
    trained_input_size: int | tuple[int, int] | None = None

    # -- the named recipes ------------------------------------------------------------------------------------
    @classmethod
    def for_recipe(cls, name: str) -> InferenceSettings:
        """The settings of the recipe called `name` (`miner.config.RECIPE_SETTINGS`; an unknown name, given as
        an option, is a `UsageError` naming the known ones)."""
        values = RECIPE_SETTINGS.get(name)
        if values is None:
            raise UsageError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPE_SETTINGS)}")
        # copies: the table's configs stay as they are whatever a caller does with its settings
        return cls(recipe=name, method=values["method"], mining=replace(values["mining"]),
                   boxes=replace(values["boxes"]))

    # -- the one reader ---------------------------------------------------------------------------------------
    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None, *, source: str | None = None) -> InferenceSettings:
        """The settings a record holds (class docstring: the rules); `source` names its file in the errors."""
        where = f"{source}: its" if source else "the model's"

        def bad(what: str) -> ModelError:
            return ModelError(f"{where} settings record {what}; {REMEDY}")

        if record is None:
            record = {}
        if not isinstance(record, Mapping):
            raise bad(f"is a {type(record).__name__}, not an object")
        values = {k: v for k, v in record.items() if v is not None}
        unknown = sorted(str(k) for k in set(values) - set(RECORD_KEYS))
        if unknown:
            raise bad(f"holds unknown key(s) {unknown} (known: {', '.join(RECORD_KEYS)})")
        name = values.get("recipe", SEED_RECIPE)
        if not isinstance(name, str) or name not in RECIPE_SETTINGS:
            raise bad(f"names recipe {name!r}, which this miner does not know (known: {', '.join(RECIPE_SETTINGS)})")
        base = RECIPE_SETTINGS[name]  # `_config` copies: the table's configs are never handed out
        method = values.get("method")
        if method is not None and not isinstance(method, str):
            raise bad(f"gives method {method!r}, not a name")
        mining = _config(MiningConfig, values.get("mining"), base["mining"], bad=bad, what="mining")
        boxes = _config(BoxConfig, values.get("boxes"), base["boxes"], bad=bad, what="boxes")
        return cls(recipe=name, method=method, mining=mining, boxes=boxes,
                   stage_weights=_stage_weights(values.get("stage_weights"), bad=bad),
                   input_size=_size(values.get("input_size"), bad=bad, what="input_size"),
                   trained_input_size=_size(values.get("trained_input_size"), bad=bad, what="trained_input_size"))

    @classmethod
    def from_checkpoint(cls, meta: Mapping[str, Any] | None, *, source: str | None = None) -> InferenceSettings:
        """The settings of a checkpoint's meta dict, whose record keys (`RECORD_KEYS`) sit among its others (arch,
        classes, history, calibration, ...): `from_record` of those keys."""
        meta = meta or {}
        return cls.from_record({k: meta[k] for k in RECORD_KEYS if k in meta}, source=source)

    # -- the one writer ---------------------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """The record (JSON-ready: lists, str keys), keys in `RECORD_KEYS` order (class docstring: the rules)."""
        record: dict[str, Any] = {}
        if (self.recipe, self.method, self.mining, self.boxes) != (SEED_RECIPE, None, MiningConfig(), BoxConfig()):
            record["recipe"] = self.recipe
            if self.method is not None:
                record["method"] = self.method
            record["mining"] = to_plain(asdict(self.mining))
            base = RECIPE_SETTINGS.get(self.recipe, {}).get("boxes")
            record["boxes"] = {k: v for k, v in to_plain(asdict(self.boxes)).items() if not _left_out(k, v, base)}
        if self.stage_weights:
            record["stage_weights"] = {f: dict(w) for f, w in self.stage_weights.items()}
        if self.input_size is not None:
            record["input_size"] = to_plain(self.input_size)
        if self.trained_input_size is not None:
            record["trained_input_size"] = to_plain(self.trained_input_size)
        return record

    def into_checkpoint(self, meta: Mapping[str, Any]) -> dict[str, Any]:
        """A checkpoint's meta dict holding this record: its other keys kept, record keys that `to_record` does
        not write (no stage weights any more, ...) dropped."""
        record = self.to_record()
        out = {k: v for k, v in meta.items() if k not in RECORD_KEYS or k in record}
        out.update(record)
        return out

    # -- options ----------------------------------------------------------------------------------------------
    def with_overrides(self, *, recipe: str | None = None, mining: MiningConfig | Mapping[str, Any] | None = None,
                       boxes: BoxConfig | Mapping[str, Any] | None = None) -> InferenceSettings:
        """These settings as a user's options change them (``miner mine``, `miner.pipeline.Pipeline`).

        Args:
            recipe: take the mining and box settings of this named recipe (method, stage weights and sizes stay:
                they are the model's maps).
            mining: a `MiningConfig` (used as it is) or a dict of its fields that override single fields
                (None or {}: none). An unknown field is a `UsageError` naming the known ones.
            boxes: a `BoxConfig` or a dict of its fields, likewise.
        """
        out = self
        if recipe:
            named = InferenceSettings.for_recipe(recipe)
            out = replace(out, recipe=named.recipe, mining=named.mining, boxes=named.boxes)
        if mining is not None:
            out = replace(out, mining=mining if isinstance(mining, MiningConfig) else _override(out.mining, mining))
        if boxes is not None:
            out = replace(out, boxes=boxes if isinstance(boxes, BoxConfig) else _override(out.boxes, boxes))
        return out

    def without_sizes(self) -> InferenceSettings:
        """These settings for a graph or engine, whose input size is the graph's own."""
        return replace(self, input_size=None, trained_input_size=None)


def _left_out(name: str, value: Any, base: BoxConfig | None) -> bool:
    """Whether `to_record` leaves box field `name` out: a later field at its neutral value, which is also the
    recipe's (`base`), so that `from_record` reads the same value back."""
    return (name in LATER_BOX_FIELDS and base is not None
            and value == LATER_BOX_FIELDS[name] == getattr(base, name, LATER_BOX_FIELDS[name]))


def _values(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Recorded `values` of `cls`'s fields as the dataclass holds them (JSON lists of thresholds back to tuples)."""
    return {k: (tuple(v) if isinstance(v, list) and k == "thresholds" else v) for k, v in values.items()}


def _config(cls: type, values: Any, base: Any, *, bad: Any, what: str) -> Any:
    """A `cls` from a record's `values` over `base` (the recipe's; a copy of it where `values` set nothing)."""
    if values is None:
        return replace(base)
    if not isinstance(values, Mapping):
        raise bad(f"gives {what} as a {type(values).__name__}, not an object")
    names = [f.name for f in fields(cls)]
    unknown = sorted(str(k) for k in set(values) - set(names))
    if unknown:
        raise bad(f"holds unknown {what} key(s) {unknown} (known: {', '.join(names)})")
    return replace(base, **_values(cls, values))


def _override(base: Any, overrides: Mapping[str, Any]) -> Any:
    """`base` (a `MiningConfig` or `BoxConfig`) with `overrides` (a dict of its fields, from options)."""
    names = {f.name for f in fields(type(base))}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(f"unknown {type(base).__name__} option(s) {unknown}; options: {sorted(names)}")
    return replace(base, **_values(type(base), overrides)) if overrides else base


def _stage_weights(values: Any, *, bad: Any) -> dict[str, dict[str, float]] | None:
    if not values:
        return None
    try:
        return {str(f): {str(s): float(v) for s, v in w.items()} for f, w in values.items()}
    except (AttributeError, TypeError, ValueError):
        raise bad("gives stage_weights that are not {finding: {stage: weight}}") from None


def _size(value: Any, *, bad: Any, what: str) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise bad(f"gives {what} {value!r}, not a side or [height, width]")
