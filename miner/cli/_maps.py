"""Shared by `miner show` and `miner eval`: a checkpoint's fused heatmaps for image files (eager PyTorch)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def open_checkpoint(path: str | Path, *, size: int | None = None) -> tuple[Any, Any, tuple[int, int]]:
    """(model in eval mode, its `miner.settings.InferenceSettings`, input (H, W)) of a `miner.models` checkpoint;
    `size` overrides the recorded input size."""
    from miner.errors import UsageError
    from miner.models import load_checkpoint
    from miner.settings import InferenceSettings

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--model: {path} does not exist")
    model, meta = load_checkpoint(path)
    settings = InferenceSettings.from_checkpoint(meta, source=str(path))
    value = size or settings.input_size
    if value is None:
        raise UsageError(f"--model: {path} records no input_size: pass --size")
    hw = (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[-1]))
    return model, settings, hw


def default_method(model: Any, settings: Any = None) -> str:
    """The map method of the model's settings record (`miner.settings.InferenceSettings`), else ``cam`` for a
    linear head (the seed's maps) and ``gradcam`` otherwise."""
    if settings is not None and settings.method:
        return str(settings.method)
    return "cam" if bool(getattr(model, "head_is_linear", False)) else "gradcam"


def mining_config(settings: Any, steps: int | None = None) -> Any:
    """The model's recorded mining settings (`miner.settings.InferenceSettings.mining`), T overridden by `steps`."""
    from dataclasses import replace

    return settings.mining if steps is None else replace(settings.mining, steps=steps)


def fused_maps(
    model: Any,
    paths: Sequence[str | Path],
    *,
    input_size: tuple[int, int],
    classes: Sequence[str],
    method: str,
    config: Any = None,
    batch_size: int = 8,
    stage_weights: Any = None,
) -> tuple[Any, Any, list[tuple[int, int]]]:
    """Fused maps H_f of `classes` for every image file (maps with `stage_weights`: a checkpoint's record).

    Returns:
        (probs np.ndarray[N, C_all], fused Tensor[N, len(classes), h, w] on the CPU, original (H, W) per image).
    """
    import numpy as np
    import torch

    from miner.data import load_image, to_model_input
    from miner.mining import mine

    probs, fused, sizes = [], [], []
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start : start + batch_size]:
            image, size = load_image(path)
            sizes.append(tuple(int(v) for v in size))
            batch.append(to_model_input(image, input_size))
        images = torch.from_numpy(np.stack(batch))  # grey; a 3-channel model replicates it itself
        logits, result = mine(model, images, method=method, classes=list(classes), config=config,
                              stage_weights=stage_weights)
        probs.append(torch.sigmoid(logits).numpy())
        fused.append(result.fused)
    return np.concatenate(probs), torch.cat(fused), sizes
