"""Recipes: one name for how a model is built and how its maps become boxes.

A recipe fixes the choices that decide what the harvested boxes look like:

- the model's map-making options (MSA stride, pooling of the per-position class scores), applied by ``miner train
  --recipe`` to any architecture that takes them (`Recipe.options_for`);
- attention mining at inference (`miner.config.MiningConfig`) and the box rule (`miner.config.BoxConfig`).

A checkpoint records the recipe it was trained with and its mining and box settings (``meta["recipe"]``,
``meta["mining"]``, ``meta["boxes"]``: per-finding box levels fixed on a validation split travel this way,
`miner.calibrate`); ONNX graphs and engines carry the same record. ``miner mine`` uses the model's own settings
unless told otherwise (``--recipe`` or single options). A model without a record (made before recipes existed)
is mined the seed's way, ``cai2018``.

``cai2018`` is Cai et al. (MICCAI 2018) as the first version of this project reproduced it: ResNet-MSA at stride 16
with global average pooling; T = 3 steps erasing the component of H_t >= 0.5 at the maximum; the fused map of
Eq. 8; boxes of H_f at levels 0.3 / 0.5 / 0.7 ranked by the mean H_f inside the box. It reproduces the seed's
Tables 2-3 (docs/results/seed-tables.md; `tests/bench/test_paper.py`).

The default recipe (`miner.config.DEFAULT_RECIPE`, ``peaks``) is the best combination measured by ``miner bench
localize`` (docs/results/box-quality.md): finer maps (MSA at stride 8, GAP), LayerCAM maps (at a GAP + linear head's
input: the CAM of the positive branch weights only), attention mining that erases only the core of each peak, one
box per mining step sized relative to its own peak (per finding where calibrated) and ranked by its heat, boxes
placed on the cells' receptive-field centres. Log-sum-exp and top-k pooling were measured and did not gain.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from miner.config import DEFAULT_RECIPE, BoxConfig, MiningConfig, to_plain
from miner.errors import UsageError


@dataclass(frozen=True)
class Recipe:
    """A named recipe (module docstring).

    Attributes:
        name: what ``--recipe`` takes and checkpoints record.
        summary: one line for ``--help`` and README.
        model_options: constructor options of the classifier (e.g. ``{"msa_stride": 8, "pooling": "lse"}``);
            each applies to the architectures whose constructor takes it.
        train: `miner.config.TrainConfig` fields the recipe sets (e.g. the AM training erasure level).
        method: the class-map method (`miner.cam.list_methods`) a checkpoint's maps are computed with by the torch
            backend and baked into its ONNX graph unless ``--method`` / ``--maps`` says otherwise.
        mining: attention mining at inference.
        boxes: the box rule and its levels.
    """

    name: str
    summary: str
    model_options: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    method: str = "cam"
    mining: MiningConfig = field(default_factory=MiningConfig)
    boxes: BoxConfig = field(default_factory=BoxConfig)

    def options_for(self, arch: str) -> dict[str, Any]:
        """The recipe's model options that `arch`'s constructor takes."""
        from miner.models.registry import constructor

        accepted = set(inspect.signature(constructor(arch)).parameters)
        return {k: v for k, v in self.model_options.items() if k in accepted}

    def record(self) -> dict[str, Any]:
        """What a checkpoint or graph stores: the name and the inference settings (JSON-ready)."""
        return {"recipe": self.name, "method": self.method, "mining": asdict(self.mining),
                "boxes": to_plain(asdict(self.boxes))}


SEED_RECIPE = "cai2018"

RECIPES: dict[str, Recipe] = {
    "cai2018": Recipe(
        name="cai2018",
        summary="Cai et al. 2018 as reproduced: MSA stride 16, GAP, erase H_t >= 0.5, Eq. 8 fusion, boxes of H_f at "
                "0.3/0.5/0.7",
        model_options={"msa_stride": 16, "pooling": "avg"},
        mining=MiningConfig(steps=3, threshold=0.5),
        boxes=BoxConfig(rule="levels", thresholds=(0.3, 0.5, 0.7), align_cells=False),
    ),
    "peaks": Recipe(
        name="peaks",
        summary="MSA stride 8, GAP, LayerCAM maps (CAM of the positive branch weights), erase each peak's core "
                "(H_t >= 0.8), one box per step at 0.85 of its peak (per finding where calibrated), ranked by its "
                "H_1 heat, cells at their receptive-field centres",
        model_options={"msa_stride": 8, "pooling": "avg"},
        method="layercam",
        mining=MiningConfig(steps=3, threshold=0.8),
        boxes=BoxConfig(rule="steps", step_level=0.85, dedup_iou=0.5, dedup_iobb=0.8, align_cells=True),
    ),
}


def list_recipes() -> list[str]:
    return list(RECIPES)


def default_recipe() -> Recipe:
    """The recipe `miner train` uses unless told otherwise (`miner.config.DEFAULT_RECIPE`)."""
    return RECIPES[DEFAULT_RECIPE]


def get_recipe(name: str) -> Recipe:
    """The recipe called `name` (UsageError naming the known ones otherwise)."""
    try:
        return RECIPES[name]
    except KeyError:
        raise UsageError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}") from None


def _config(cls: type, values: Mapping[str, Any] | None, base: Any) -> Any:
    """A `cls` from recorded `values` over `base` (unknown keys ignored: a newer writer's extras)."""
    if not values:
        return base
    names = {f.name for f in fields(cls)}
    known = {k: (tuple(v) if isinstance(v, list) and k == "thresholds" else v)
             for k, v in values.items() if k in names}
    return replace(base, **known)


def settings_with(base: Any, overrides: Mapping[str, Any] | None) -> Any:
    """`base` (a `MiningConfig` or `BoxConfig`) with `overrides` (a dict of its fields; None or {} = none)."""
    if overrides is None:
        return base
    names = {f.name for f in fields(type(base))}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UsageError(f"unknown {type(base).__name__} option(s) {unknown}; options: {sorted(names)}")
    return _config(type(base), overrides, base)


def recorded(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The recipe record of a checkpoint's meta (recipe, method, mining, boxes and the maps' calibrated
    stage_weights; {} for a model made before recipes)."""
    meta = meta or {}
    out = {k: meta[k] for k in ("recipe", "method", "mining", "boxes") if meta.get(k) is not None}
    if meta.get("stage_weights"):
        out["stage_weights"] = meta["stage_weights"]
    return out


def inference_settings(meta: Mapping[str, Any] | None) -> tuple[str, MiningConfig, BoxConfig]:
    """(recipe name, mining, boxes) a model's record asks for; ``cai2018``'s settings for a model without one."""
    meta = meta or {}
    name = str(meta.get("recipe") or SEED_RECIPE)
    base = RECIPES.get(name, RECIPES[SEED_RECIPE])
    return name, _config(MiningConfig, meta.get("mining"), base.mining), _config(BoxConfig, meta.get("boxes"),
                                                                                  base.boxes)
