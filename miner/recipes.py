"""Recipes: one name for how a model is built and how its maps become boxes.

A recipe fixes the choices that decide what the harvested boxes look like:

- the model's map-making options (MSA stride, pooling of the per-position class scores), applied by ``miner train
  --recipe`` to any architecture that takes them (`Recipe.options_for`);
- the map method, attention mining at inference (`miner.config.MiningConfig`) and the box rule
  (`miner.config.BoxConfig`): its inference settings (`Recipe.settings`, a `miner.settings.InferenceSettings`),
  whose values live with every other default in `miner.config.RECIPE_SETTINGS`.

A checkpoint records the recipe it was trained with and its inference settings (the settings record,
`miner.settings`: per-finding box levels fixed on a validation split travel this way, `miner.calibrate`); ONNX graphs
and engines carry the same record. ``miner mine`` uses the model's own settings unless told otherwise (``--recipe``
or single options). A model without a record (made before recipes existed) is mined the seed's way, ``cai2018``.

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
from dataclasses import dataclass, field
from typing import Any

from miner.config import DEFAULT_RECIPE, SEED_RECIPE, BoxConfig, MiningConfig
from miner.errors import UsageError
from miner.settings import InferenceSettings


@dataclass(frozen=True)
class Recipe:
    """A named recipe (module docstring).

    Attributes:
        name: what ``--recipe`` takes and checkpoints record.
        summary: one line for ``--help`` and README.
        model_options: constructor options of the classifier (e.g. ``{"msa_stride": 8, "pooling": "lse"}``);
            each applies to the architectures whose constructor takes it.
        train: `miner.config.TrainConfig` fields the recipe sets (e.g. the AM training erasure level).

    Its inference settings (`settings`: ``method``, ``mining``, ``boxes``) are `miner.config.RECIPE_SETTINGS`'s.
    """

    name: str
    summary: str
    model_options: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> InferenceSettings:
        """The recipe's inference settings: what a checkpoint trained with it records."""
        return InferenceSettings.for_recipe(self.name)

    @property
    def method(self) -> str:
        """The class-map method (`miner.cam.list_methods`) a checkpoint's maps are computed with by the torch
        backend and baked into its ONNX graph unless ``--method`` / ``--maps`` says otherwise."""
        return str(self.settings.method)

    @property
    def mining(self) -> MiningConfig:
        """Attention mining at inference."""
        return self.settings.mining

    @property
    def boxes(self) -> BoxConfig:
        """The box rule and its levels."""
        return self.settings.boxes

    def options_for(self, arch: str) -> dict[str, Any]:
        """The recipe's model options that `arch`'s constructor takes."""
        from miner.models.registry import constructor

        accepted = set(inspect.signature(constructor(arch)).parameters)
        return {k: v for k, v in self.model_options.items() if k in accepted}

    def record(self) -> dict[str, Any]:
        """What a checkpoint or graph stores: the settings record of `settings` (`miner.settings`)."""
        return self.settings.to_record()


RECIPES: dict[str, Recipe] = {
    SEED_RECIPE: Recipe(
        name=SEED_RECIPE,
        summary="Cai et al. 2018 as reproduced: MSA stride 16, GAP, erase H_t >= 0.5, Eq. 8 fusion, boxes of H_f at "
                "0.3/0.5/0.7",
        model_options={"msa_stride": 16, "pooling": "avg"},
    ),
    "peaks": Recipe(
        name="peaks",
        summary="MSA stride 8, GAP, LayerCAM maps (CAM of the positive branch weights), erase each peak's core "
                "(H_t >= 0.8), one box per step at 0.85 of its peak (per finding where calibrated), ranked by its "
                "H_1 heat, cells at their receptive-field centres",
        model_options={"msa_stride": 8, "pooling": "avg"},
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


def recorded(meta: Mapping[str, Any] | None, *, source: str | None = None) -> dict[str, Any]:
    """The settings record of a checkpoint's meta as a graph carries it (without the input sizes; {} for a model
    made before recipes): `miner.settings.InferenceSettings.from_checkpoint`, then `to_record`."""
    return InferenceSettings.from_checkpoint(meta, source=source).without_sizes().to_record()


def inference_settings(meta: Mapping[str, Any] | None, *,
                       source: str | None = None) -> tuple[str, MiningConfig, BoxConfig]:
    """(recipe name, mining, boxes) of a checkpoint's settings record (`miner.settings.InferenceSettings.
    from_checkpoint`: ``cai2018``'s for a model without one; `source` names the file in its errors)."""
    settings = InferenceSettings.from_checkpoint(meta, source=source)
    return settings.recipe, settings.mining, settings.boxes
