"""The model registry: named constructors, as in timm (`create_model("resnet50_msa")`, `list_models()`).

A constructor is registered with `@register_model("name")` and called as
``fn(*, classes: tuple[str, ...], in_chans: int, **options) -> nn.Module``. `create_model` resolves the class
list, checks the options against the constructor's signature (a misspelt option is a usage error, not a
silent default) and records ``arch`` and ``options`` on the model so a checkpoint can rebuild it.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from miner.errors import UsageError
from miner.findings import CHESTXRAY14

_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a model constructor under `name`."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def constructor(name: str) -> Callable[..., Any]:
    """The registered constructor of `name` (UsageError for an unknown name)."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return _REGISTRY[name]


def default_classes(num_classes: int) -> tuple[str, ...]:
    """The ChestX-ray14 list (or its first `num_classes` names); ``class_0..`` beyond 14 classes."""
    if num_classes <= len(CHESTXRAY14):
        return CHESTXRAY14[:num_classes]
    return tuple(f"class_{i}" for i in range(num_classes))


def create_model(
    name: str,
    *,
    num_classes: int = 14,
    classes: Sequence[str] | None = None,
    in_chans: int = 1,
    **options: Any,
):
    """Build a registered model.

    Args:
        name: a name from `list_models()` (``resnet18``, ``resnet50``, ``resnet18_msa``, ``resnet50_msa``,
            ``dcfpn``, ``unet``).
        num_classes: number of outputs when `classes` is not given (the first names of ChestX-ray14).
        classes: the class list (its order is the output order); overrides `num_classes`.
        in_chans: 1 (grey) or 3 input channels.
        options: constructor options (``width``, ``head``, ``upsample``, ...); unknown names raise `UsageError`.

    Returns:
        the model (``torch.nn.Module``) with ``arch`` and ``options`` attributes set.
    """
    if name not in _REGISTRY:
        raise UsageError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    if classes is not None:
        classes = tuple(str(c) for c in classes)
        if num_classes not in (14, len(classes)):
            raise UsageError(f"num_classes={num_classes} disagrees with {len(classes)} class names")
        if len(set(classes)) != len(classes):
            raise UsageError(f"class list has duplicates: {classes}")
    else:
        classes = default_classes(int(num_classes))
    if not classes:
        raise UsageError("a model needs at least one class")
    if in_chans not in (1, 3):
        raise UsageError(f"in_chans must be 1 or 3, got {in_chans}")
    fn = _REGISTRY[name]
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            allowed = sorted(k for k in params if k not in ("classes", "in_chans"))
            raise UsageError(f"model {name!r} has no option(s) {unknown}; options: {allowed}")
    model = fn(classes=classes, in_chans=in_chans, **options)
    model.arch = name
    model.options = dict(options)
    return model
