"""Initialise a model from a local torchvision-layout state_dict (ImageNet weights; never downloaded here).

Rules (`load_pretrained`):
- every trunk key of the model must be in the file with the same shape (strict), except
- ``fc.weight`` / ``fc.bias``: torchvision's ImageNet ``fc`` is [1000, D]; our ``fc`` rows are the C binary
  branches, so the 1000-class head is dropped and the branches keep their fresh initialisation (a file whose
  ``fc`` already has shape [C, D] is loaded as is);
- ``conv1.weight`` [64, 3, 7, 7] into a one-channel model is summed over the RGB dimension (a grey image
  replicated on three channels gives the same stem response);
- modules the file cannot know (``msa.*``, ``head_conv.*``) keep their initialisation;
- ``num_batches_tracked`` buffers absent from old torchvision files are tolerated.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from miner.errors import ModelError

_NEW_MODULES = ("msa.", "head_conv.", "fc.")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state_dict from a ``.pth`` file (``weights_only=True``); unwraps ``{"state_dict": ...}``/``{"model": ...}``
    and a DataParallel ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelError(f"{path}: expected a state_dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_pretrained(model: nn.Module, weights: str | os.PathLike | Mapping[str, Tensor]) -> dict[str, list[str]]:
    """Copy matching weights into `model` (see the module doc for the rules).

    Returns:
        {"loaded": [...], "initialised": [...] (model keys kept at init), "dropped": [...] (file keys unused)}.
    Raises:
        ModelError when a trunk key is missing from the file or has another shape.
    """
    state = read_state_dict(weights) if not isinstance(weights, Mapping) else dict(weights)
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    initialised, dropped, problems = [], [], []
    for key, target in own.items():
        src = state.get(key)
        if src is None:
            if key.startswith(_NEW_MODULES) or key.endswith("num_batches_tracked"):
                initialised.append(key)
            else:
                problems.append(f"{key} missing")
            continue
        if key == "conv1.weight" and src.dim() == 4 and src.shape[1] == 3 and target.shape[1] == 1:
            src = src.sum(dim=1, keepdim=True)
        if src.shape != target.shape:
            if key.startswith("fc."):
                initialised.append(key)
                dropped.append(key)
                continue
            problems.append(f"{key} {tuple(src.shape)} != {tuple(target.shape)}")
            continue
        out[key] = src.to(target.dtype)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; ... ({len(problems)} in all)" if len(problems) > 3 else "")
        raise ModelError(f"weights do not fit {getattr(model, 'arch', type(model).__name__)}: {shown}")
    dropped += sorted(k for k in state if k not in own)
    model.load_state_dict(out, strict=False)
    return {"loaded": sorted(out), "initialised": initialised, "dropped": dropped}
