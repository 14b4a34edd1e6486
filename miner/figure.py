"""Cai et al.'s Fig. 2: the heatmaps of every attention-mining step, ground truth in red, mined boxes in green.

One row per (image, finding) case, panels left to right::

    image + GT | H_1 | H_2 | ... | H_T | H_f + mined boxes

H_t is the normalised map of step t (0 where earlier steps erased, `miner.mining`), drawn in JET colours over
the image; the component that step t erases (the one holding H_t's maximum, binarised at the mining threshold)
is outlined in white, so a reader sees what the next step is forced to look away from. Every panel shows the
ground-truth boxes of the finding in red; the last one shows the fused map H_f (Eq. 8) and the boxes mined from
it in green, labelled with their rank.

`mining_cases` computes the cases through a `miner.backends.Backend` with exactly the steps the mining job runs
(`backend.run` -> `attention_mining` -> `boxes_from_mining`, with the settings `miner.pipeline.Pipeline` resolves),
so the green boxes are the boxes the job writes.
Drawing is OpenCV only (BGR uint8).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from miner.show import GREEN, RED, WHITE, draw_boxes, heatmap_overlay

Box = tuple[float, float, float, float]  # x, y, w, h in original pixels


@dataclass
class MiningCase:
    """One image and finding through T mining steps (maps on the model's map grid, boxes in original pixels).

    Attributes:
        step_maps: np.ndarray[T, h, w] float, the normalised H_1..H_T.
        erased: np.ndarray[T, h, w] bool, the component step t erased (all False where nothing was erased).
        fused: np.ndarray[h, w] float, H_f.
    """

    image_id: str
    finding: str
    image: np.ndarray  # np.ndarray[H, W] float32 in [0, 1], the original image
    prob: float
    step_maps: np.ndarray
    erased: np.ndarray
    fused: np.ndarray
    gt: list[Box] = field(default_factory=list)
    mined: list[Box] = field(default_factory=list)
    caption: str = ""


def mining_cases(
    backend: Any,
    items: Sequence[tuple[str, str, str, Sequence[Box]]],
    *,
    mining: Any = None,
    boxes: Any = None,
    batch_size: int = 16,
) -> list[MiningCase]:
    """Mine each ``(image_id, path, finding, gt_boxes)`` item with `backend` and keep every step.

    Args:
        backend: a `miner.backends.Backend` whose classes include every item's finding.
        items: the cases; an image may appear with several findings.
        mining, boxes: as `miner.pipeline.Pipeline` takes them (None = the model's own settings; a config object;
            or a dict of overrides), so the boxes drawn are the boxes the mining job writes.

    Returns:
        one `MiningCase` per item, in order.
    """
    import torch

    from miner.boxes import boxes_from_mining
    from miner.data import load_image, to_model_input
    from miner.errors import UsageError
    from miner.mining import attention_mining
    from miner.pipeline import Pipeline

    settings = Pipeline(backend, mining=mining, boxes=boxes)
    mining, boxes = settings.mining, settings.box_config
    classes = list(backend.meta.classes)
    for _, _, finding, _ in items:
        if finding not in classes:
            raise UsageError(f"{finding!r} is not a class of the model ({', '.join(classes)})")
    cases: list[MiningCase] = []
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        originals, inputs, sizes = [], [], []
        for _, path, _, _ in chunk:
            image, size = load_image(path)
            originals.append(image)
            sizes.append(tuple(int(v) for v in size))
            inputs.append(to_model_input(image, backend.meta.input_size))
        with torch.inference_mode():
            images = torch.from_numpy(np.stack(inputs))
            logits, maps = backend.run(images)
            result = attention_mining(maps, steps=mining.steps, threshold=mining.threshold,
                                      connectivity=mining.connectivity, normalize=mining.normalize,
                                      recompute=backend.recompute(images))
            chosen = np.zeros(tuple(maps.shape[:2]), dtype=bool)
            for b, (_, _, finding, _) in enumerate(chunk):
                chosen[b, classes.index(finding)] = True
            found = boxes_from_mining(result, original_sizes=sizes, classes=chosen, config=boxes,
                                      class_names=classes, shift=settings.shift, images=images)
            probs = torch.sigmoid(logits.float()).cpu().numpy()
            step_maps = result.step_maps.float().cpu().numpy()  # [T, B, C, h, w]
            kept = result.masks.cpu().numpy()  # [T, B, C, h, w], True = kept after step t
            fused = result.fused.float().cpu().numpy()
        before = np.concatenate([np.ones_like(kept[:1]), kept[:-1]])
        erased = before & ~kept
        for b, (image_id, _, finding, gt) in enumerate(chunk):
            c = classes.index(finding)
            mined = sorted((r for r in found[b] if r["class_index"] == c), key=lambda r: r["rank"])
            cases.append(MiningCase(
                image_id=image_id, finding=finding, image=originals[b], prob=float(probs[b, c]),
                step_maps=step_maps[:, b, c], erased=erased[:, b, c], fused=fused[b, c],
                gt=[tuple(float(v) for v in box) for box in gt],
                mined=[(float(r["x"]), float(r["y"]), float(r["w"]), float(r["h"])) for r in mined],
            ))
    return cases


def _outline(canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Draw the outline of a map-grid mask (np.ndarray[h, w] bool) scaled to `canvas`, in place."""
    if not mask.any():
        return
    big = cv2.resize(mask.astype(np.uint8), (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(canvas, contours, -1, colour, 1, cv2.LINE_8)


def _head(text: str, width: int, height: int = 22) -> np.ndarray:
    head = np.zeros((height, width, 3), np.uint8)
    cv2.putText(head, text, (5, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.42, WHITE, 1, cv2.LINE_AA)
    return head


def render_case(case: MiningCase, *, panel_size: int = 224) -> np.ndarray:
    """One row of panels for `case` (np.ndarray[H', W', 3] uint8 BGR; see the module docstring)."""
    height, width = case.image.shape[:2]
    scale = panel_size / max(height, width)
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    small = cv2.resize(np.asarray(case.image, np.float32), size, interpolation=cv2.INTER_AREA)
    panels: list[tuple[str, np.ndarray]] = []
    plain = heatmap_overlay(small, None)
    draw_boxes(plain, case.gt, RED, scale=scale)
    panels.append((f"{case.image_id} {case.finding} p={case.prob:.2f}", plain))
    for t in range(case.step_maps.shape[0]):
        tile = heatmap_overlay(small, case.step_maps[t])
        _outline(tile, case.erased[t], WHITE)
        draw_boxes(tile, case.gt, RED, scale=scale)
        panels.append((f"H_{t + 1}" + (" (erased: white)" if case.erased[t].any() else ""), tile))
    tile = heatmap_overlay(small, case.fused)
    draw_boxes(tile, case.gt, RED, scale=scale)
    draw_boxes(tile, case.mined, GREEN, scale=scale, labels=[str(i + 1) for i in range(len(case.mined))])
    panels.append((f"H_f (T={case.step_maps.shape[0]}), {len(case.mined)} boxes", tile))
    tiles = [np.vstack([_head(text, tile.shape[1]), tile]) for text, tile in panels]
    gap = np.full((tiles[0].shape[0], 3, 3), 255, np.uint8)
    row = tiles[0]
    for tile in tiles[1:]:
        row = np.hstack([row, gap, tile])
    if case.caption:
        row = np.vstack([_head(case.caption, row.shape[1]), row])
    return row


def steps_figure(cases: Sequence[MiningCase], *, panel_size: int = 224, title: str = "") -> np.ndarray:
    """The rows of `cases` stacked (np.ndarray[H', W', 3] uint8 BGR), with an optional title line."""
    if not cases:
        raise ValueError("steps_figure needs at least one case")
    rows = [render_case(case, panel_size=panel_size) for case in cases]
    width = max(r.shape[1] for r in rows)
    rows = [np.hstack([r, np.zeros((r.shape[0], width - r.shape[1], 3), np.uint8)]) if r.shape[1] < width else r
            for r in rows]
    parts: list[np.ndarray] = []
    if title:
        parts.append(_head(title, width, 26))
    for i, row in enumerate(rows):
        if i:
            parts.append(np.full((4, width, 3), 255, np.uint8))
        parts.append(row)
    return np.vstack(parts)


def write_png(path: Any, picture: np.ndarray) -> None:
    """Write a BGR picture as PNG (raises OSError naming the path when OpenCV cannot)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"{path}: cannot write the PNG (a .png name in a writable folder is needed)")
