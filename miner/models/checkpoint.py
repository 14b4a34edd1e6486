"""Checkpoints: weights plus everything needed to rebuild and use the model, read with ``weights_only=True``.

Layout (a plain dict of tensors and primitives, so the restricted unpickler accepts it)::

    {"format": "attention-miner/1",
     "arch": "resnet50_msa", "options": {...}, "classes": [...], "in_chans": 1,
     "mean": [...], "std": [...], "input_size": 512, "stage": "am", "epoch": 3, ...   (meta)
     "state_dict": {...},
     "train_state": {...} | absent   (optimizer / scheduler state, KP reference weights: for resuming)}
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from miner.config import to_plain
from miner.errors import ModelError
from miner.models.registry import create_model

FORMAT = "attention-miner/1"
_RESERVED = ("format", "state_dict", "train_state")


def model_meta(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint needs to rebuild `model`: arch, options, classes, in_chans, mean, std, task."""
    arch = getattr(model, "arch", None)
    if arch is None:
        raise ModelError(f"{type(model).__name__} was not built by create_model(): no arch to record")
    return {
        "arch": arch,
        "options": to_plain(dict(getattr(model, "options", {}))),
        "classes": list(model.classes),
        "in_chans": int(model.in_chans),
        "mean": list(model.mean),
        "std": list(model.std),
        "task": getattr(model, "task", "classification"),
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    meta: Mapping[str, Any] | None = None,
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` to `path` atomically (temp file + rename).

    Args:
        meta: extra metadata (input_size, stage, epoch, metrics, ...); the model's own arch, options, classes,
            in_chans, mean and std are added (and win over same-named keys given here).
        train_state: optimizer/scheduler/KP state for resuming training (left out of `load_checkpoint`'s meta).
    """
    path = Path(path)
    module = getattr(model, "module", model)  # unwrap DDP
    record: dict[str, Any] = {k: to_plain(v) for k, v in dict(meta or {}).items() if k not in _RESERVED}
    record.update(model_meta(module))
    record["format"] = FORMAT
    record["state_dict"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    if train_state is not None:
        record["train_state"] = dict(train_state)
    return write_record(path, record)


def write_record(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write a checkpoint record (as `read_checkpoint` returns it) to `path` atomically (temp file + rename)."""
    path = Path(path)
    if record.get("format") != FORMAT or "state_dict" not in record:
        raise ModelError(f"{path}: not an attention-miner checkpoint record")
    record = {k: (v if k in _RESERVED else to_plain(v)) for k, v in record.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(record, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _load_error(err: Exception) -> str:
    """One line for why `torch.load` refused a file (torch's own message runs to several lines)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:  # the restricted unpickler met code to run: never loaded
        return (f"it holds pickled Python objects ({refused.group(1)}), which are never loaded; give a checkpoint "
                "of plain weights, as miner train writes")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def read_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict (``weights_only=True``); raises `ModelError` for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle/zip errors of many kinds
        raise ModelError(f"{path}: not a readable checkpoint ({_load_error(err)})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelError(f"{path}: not an attention-miner checkpoint (no format {FORMAT!r}); "
                         "for ImageNet weights use --init")
    return record


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from `path` and load its weights (strictly).

    Returns:
        (model in eval mode on `map_location`, meta dict: arch, options, classes, in_chans, mean, std,
        task, and whatever the trainer recorded: input_size, stage, epoch, metrics, ...).
    """
    record = read_checkpoint(path, map_location=map_location)
    model = build_from_meta(record)
    try:
        model.load_state_dict(record["state_dict"], strict=True)
    except RuntimeError as err:
        raise ModelError(f"{path}: weights do not fit {record['arch']}: {str(err).splitlines()[0]}") from None
    model.to(map_location).eval()
    meta = {k: v for k, v in record.items() if k not in _RESERVED}
    return model, meta


def build_from_meta(meta: Mapping[str, Any]) -> nn.Module:
    """A fresh model from a checkpoint's meta (arch, options, classes, in_chans, mean, std)."""
    options = dict(meta.get("options") or {})
    for key in ("mean", "std"):
        if key in meta and key not in options:
            options[key] = tuple(meta[key])
    return create_model(meta["arch"], classes=tuple(meta["classes"]), in_chans=int(meta["in_chans"]), **options)
