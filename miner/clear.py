"""CLEAR pictures (Kumar et al., CLass-Enhanced Attentive Response maps): which finding the model sees where.

Given the class maps R(x | c) of every class c of one image (Eq. 3 of the seed note; here the raw class maps
of `miner.cam` / a backend, one per finding, upsampled to the picture's size), the CLEAR picture shows at
each pixel x

- the **dominant class** C(x) = argmax_c R(x | c) (Eq. 4) as **hue**: H = F(C(x)), F giving the C classes
  evenly spaced hues, F(c) = 360 * c / C degrees (class 0 red);
- its **response** D(x) = R(x | C(x)) (Eq. 5) as **value**: V = max(D(x), 0) / max_x D(x), so the strongest
  response of the image is at full brightness and pixels where no class responds positively are black;
- full saturation, S = 1 (Eq. 6), converted from HSV to RGB.

Ties go to the lower class index (np.argmax). Pictures are BGR uint8 (OpenCV), as `miner.show` draws them.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

WHITE = (255, 255, 255)


def finding_hues(count: int) -> np.ndarray:
    """F: the hue (degrees in [0, 360)) of each of `count` classes, evenly spaced from 0 (red)."""
    if count < 1:
        raise ValueError(f"CLEAR needs at least one class, got {count}")
    return np.arange(count, dtype=np.float64) * (360.0 / count)


def hsv_to_bgr(hue: np.ndarray, saturation: np.ndarray | float, value: np.ndarray | float) -> np.ndarray:
    """HSV (hue in degrees, saturation and value in [0, 1]) to BGR uint8: the shape of the broadcast inputs plus
    a last axis of 3. The textbook sextant formula, exact at the sextant borders (180 degrees at V = 1 gives
    (255, 255, 0) BGR, not OpenCV's float rounding of it)."""
    h, s, v = np.broadcast_arrays(np.asarray(hue, np.float64) % 360.0, np.asarray(saturation, np.float64),
                                  np.asarray(value, np.float64))
    h6 = h / 60.0
    sextant = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r = np.choose(sextant, [v, q, p, p, t, v])
    g = np.choose(sextant, [t, v, v, q, p, p])
    b = np.choose(sextant, [p, p, t, v, v, q])
    bgr = np.stack([b, g, r], axis=-1)
    return np.clip(np.floor(bgr * 255 + 0.5), 0, 255).astype(np.uint8)


def hue_colour(hue: float) -> tuple[int, int, int]:
    """The BGR colour of `hue` at full saturation and value (a legend swatch)."""
    b, g, r = (int(v) for v in hsv_to_bgr(np.asarray([hue]), 1.0, 1.0)[0])
    return b, g, r


def hue_hex(hue: float) -> str:
    """``#rrggbb`` of `hue` at full saturation and value (the report's legend)."""
    b, g, r = hue_colour(hue)
    return f"#{r:02x}{g:02x}{b:02x}"


def dominant(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4-5: the dominant class C(x) (np.ndarray[H, W] int64) and its response D(x) (float32) of
    `maps` (np.ndarray[C, H, W])."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or maps.shape[0] < 1:
        raise ValueError(f"maps must be np.ndarray[C, H, W] with C >= 1, got shape {maps.shape}")
    cls = np.argmax(maps, axis=0)
    response = np.take_along_axis(maps, cls[None], axis=0)[0]
    return cls, response


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Every map of np.ndarray[C, h, w] resized to `size` = (H, W) with bilinear interpolation
    (cv2.INTER_LINEAR, pixel centres aligned like ``align_corners=False``): np.ndarray[C, H, W] float32."""
    maps = np.asarray(maps, np.float32)
    height, width = int(size[0]), int(size[1])
    if maps.shape[1:] == (height, width):
        return maps
    return np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])


def clear_picture(maps: np.ndarray, *, size: tuple[int, int] | None = None,
                  hues: Sequence[float] | None = None) -> np.ndarray:
    """The CLEAR picture of one image (module docstring): np.ndarray[H, W, 3] uint8 BGR.

    Args:
        maps: np.ndarray[C, h, w], the class maps of every class (raw responses, any scale; one scale for all
            classes, as the maps of one model are).
        size: (H, W) of the picture: the maps are resized first (bilinear), so that class borders stay sharp
            instead of blending two hues into a third; None = the maps' own size.
        hues: one hue per class in degrees (default `finding_hues(C)`).
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be np.ndarray[C, h, w], got shape {maps.shape}")
    if size is not None:
        maps = resize_maps(maps, size)
    hue_of = np.asarray(finding_hues(maps.shape[0]) if hues is None else hues, np.float64)
    if hue_of.shape != (maps.shape[0],):
        raise ValueError(f"{len(hue_of)} hues for {maps.shape[0]} class maps")
    cls, response = dominant(maps)
    positive = np.maximum(response, 0.0)
    peak = float(positive.max())
    value = positive / peak if peak > 0 else np.zeros_like(positive)
    return hsv_to_bgr(hue_of[cls], 1.0, value)


def legend(names: Sequence[str], *, width: int, hues: Sequence[float] | None = None, row: int = 16) -> np.ndarray:
    """A legend (np.ndarray[H', width, 3] uint8 BGR, black): a swatch of each class's hue and its name,
    in as many columns as fit in `width` (at least one)."""
    hue_of = finding_hues(len(names)) if hues is None else list(hues)
    column = 120
    columns = max(1, width // column)
    rows = -(-len(names) // columns)
    strip = np.zeros((rows * row + 4, width, 3), np.uint8)
    for i, name in enumerate(names):
        x = (i % columns) * column + 4
        y = (i // columns) * row + 2
        cv2.rectangle(strip, (x, y + 2), (x + row - 6, y + row - 4), hue_colour(hue_of[i]), -1)
        cv2.putText(strip, str(name), (x + row - 1, y + row - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, WHITE, 1,
                    cv2.LINE_AA)
    return strip
