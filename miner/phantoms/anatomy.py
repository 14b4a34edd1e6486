"""A synthetic frontal chest radiograph: the background of phantom images.

Everything is drawn in *canonical* coordinates (u, v) in [0, 1] (u to the image's right = the patient's
left, v down), mapped to pixels through a small random thorax transform (scale, shift, tilt) so that no two
chests line up. Intensity is density (bright = dense), as in the ChestX-ray14 PNGs:

- body soft tissue, dark air outside it, bright shoulders and abdomen below the diaphragm domes;
- two lung fields (superellipses cut by the mediastinum and the domes), dark;
- mediastinum, spine with vertebral bodies, the heart shadow (its size is a parameter: the Cardiomegaly
  finding enlarges it), clavicles, posterior ribs as curved bands over the lungs;
- vascular lung texture (a separate layer, so a pneumothorax can remove it), low-frequency exposure variation.

`Chest.lung` holds the lung masks in pixels; lesions are placed inside them (`miner.phantoms.lesions`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

# canonical lung shapes: centre (u, v), half-width, half-height; index 0 = image left (patient's right)
LUNG_CENTRES = ((0.295, 0.465), (0.705, 0.475))
LUNG_HALF = ((0.170, 0.315), (0.165, 0.31))
LUNG_POWER = 2.4  # superellipse exponent
DOME_HEIGHT = 0.055  # how far the diaphragm dome rises above the lung's lowest point
NORMAL_HEART = dict(cx=0.55, cy=0.615, w=0.33, h=0.29)  # canonical heart: centre and full width/height

# densities of the tissues (before noise and contrast)
AIR, SOFT, LUNG_DROP, MEDIASTINUM, SPINE, HEART, BONE, RIB = 0.06, 0.56, 0.34, 0.22, 0.06, 0.24, 0.16, 0.06


@dataclass
class Heart:
    """Heart shadow in canonical coordinates: centre and full width/height (fractions of the image)."""

    cx: float
    cy: float
    w: float
    h: float


@dataclass
class Chest:
    """One rendered chest (all arrays [S, S] float32 or bool)."""

    size: int
    u: np.ndarray  # canonical coordinates of each pixel
    v: np.ndarray
    density: np.ndarray  # anatomy without lung texture
    texture: np.ndarray  # vascular markings (signed), weighted to the lungs
    lung: tuple[np.ndarray, np.ndarray]  # bool masks, image-left lung first
    heart: Heart
    heart_mask: np.ndarray
    transform: np.ndarray = field(repr=False)  # 2x3 affine canonical -> pixel coordinates


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return (xs + 0.5) / size, (ys + 0.5) / size


def lung_shape(u: np.ndarray, v: np.ndarray, side: int, *, shrink: float = 0.0,
               anchor: tuple[float, float] | None = None) -> np.ndarray:
    """Implicit superellipse value of a lung (<= 1 inside), optionally shrunk by `shrink` towards `anchor`."""
    (cu, cv), (a, b) = LUNG_CENTRES[side], LUNG_HALF[side]
    if shrink:
        au, av = anchor if anchor is not None else (cu, cv)
        cu, cv = au + (cu - au) * (1 - shrink), av + (cv - av) * (1 - shrink)
        a, b = a * (1 - shrink), b * (1 - shrink)
    return np.abs((u - cu) / a) ** LUNG_POWER + np.abs((v - cv) / b) ** LUNG_POWER


def dome(u: np.ndarray, side: int) -> np.ndarray:
    """v of the diaphragm dome under a lung (the lung lies above it)."""
    (cu, cv), (a, b) = LUNG_CENTRES[side], LUNG_HALF[side]
    t = np.clip((u - cu) / a, -1.0, 1.0)
    return cv + b - DOME_HEIGHT * (1.0 - t * t) - 0.02


def mediastinum_half_width(v: np.ndarray) -> np.ndarray:
    return 0.05 + 0.03 * np.clip((v - 0.15) / 0.5, 0.0, 1.0)


def heart_shape(u: np.ndarray, v: np.ndarray, heart: Heart) -> np.ndarray:
    """Implicit ellipse value of the heart shadow (<= 1 inside)."""
    return ((u - heart.cx) / (heart.w / 2)) ** 2 + ((v - heart.cy) / (heart.h / 2)) ** 2


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: `cells` x `cells` normals upsampled bicubically."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def sample_transform(rng: np.random.Generator) -> np.ndarray:
    """2x3 affine from canonical (u, v) to image fractions: scale 0.94-1.04, shift +-2.5 %, tilt +-2.5 deg."""
    sx, sy = rng.uniform(0.94, 1.04, size=2)
    tx, ty = rng.uniform(-0.025, 0.025, size=2)
    angle = np.deg2rad(rng.uniform(-2.5, 2.5))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = rotation @ np.diag([sx, sy])
    offset = np.array([0.5 + tx, 0.5 + ty]) - linear @ np.array([0.5, 0.5])
    return np.hstack([linear, offset[:, None]])


def canonical_grid(size: int, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of every pixel centre, [S, S] float32 each, for a canonical -> image transform."""
    x, y = _pixel_grid(size)
    inv = cv2.invertAffineTransform(transform)
    u = (inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]).astype(np.float32)
    v = (inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]).astype(np.float32)
    return u, v


def to_pixels(transform: np.ndarray, u: float, v: float, size: int) -> tuple[float, float]:
    x = transform[0, 0] * u + transform[0, 1] * v + transform[0, 2]
    y = transform[1, 0] * u + transform[1, 1] * v + transform[1, 2]
    return float(x * size), float(y * size)


def lung_masks(u: np.ndarray, v: np.ndarray, heart_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mediastinum = np.abs(u - 0.5) < mediastinum_half_width(v)
    out = []
    for side in (0, 1):
        inside = (lung_shape(u, v, side) <= 1.0) & (v < dome(u, side)) & ~mediastinum & ~heart_mask
        out.append(inside)
    return out[0], out[1]


def render_chest(rng: np.random.Generator, size: int, *, heart: Heart | None = None) -> Chest:
    """Draw one synthetic chest at `size` x `size` pixels (see the module docstring)."""
    transform = sample_transform(rng)
    u, v = canonical_grid(size, transform)
    if heart is None:
        heart = Heart(cx=NORMAL_HEART["cx"] + rng.normal(0, 0.008), cy=NORMAL_HEART["cy"] + rng.normal(0, 0.01),
                      w=rng.uniform(0.30, 0.35), h=rng.uniform(0.26, 0.31))
    blur = max(size / 256.0, 0.6)

    # body: a wide superellipse, shoulders up to the top edge, dark air at the sides
    body = (np.abs((u - 0.5) / 0.47) ** 3 + np.abs((v - 0.62) / 0.62) ** 3) <= 1.0
    density = np.where(body, np.float32(SOFT), np.float32(AIR))
    density += (0.08 * np.clip(np.abs(u - 0.5) / 0.47, 0, 1) ** 4) * body  # tangential soft tissue at the walls
    density = cv2.GaussianBlur(density, (0, 0), 2.0 * blur)

    heart_mask = heart_shape(u, v, heart) <= 1.0
    lungs = lung_masks(u, v, heart_mask)
    lung_soft = cv2.GaussianBlur((lungs[0] | lungs[1]).astype(np.float32), (0, 0), 2.5 * blur)
    # lungs are darkest in the middle third, a little denser at apex and bases
    depth = (1.0 - 0.25 * np.clip(np.abs(v - 0.47) / 0.32, 0, 1) ** 2
             - 0.2 * np.clip((np.abs(u - 0.5) - 0.25) / 0.2, 0, 1))  # denser towards the chest wall
    density -= LUNG_DROP * lung_soft * depth

    # mediastinum, spine with vertebral bodies, heart shadow
    mediastinum = np.clip(1.0 - (np.abs(u - 0.5) - mediastinum_half_width(v)) / 0.01, 0, 1) * (v > 0.08)
    density += MEDIASTINUM * cv2.GaussianBlur(mediastinum.astype(np.float32), (0, 0), 1.5 * blur)
    spine = np.clip(1.0 - np.abs(u - 0.5) / 0.032, 0, 1) ** 0.5
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * (v - rng.uniform(0, 0.046)) / 0.046)
    density += SPINE * spine * vertebrae
    heart_soft = cv2.GaussianBlur(heart_mask.astype(np.float32), (0, 0), 1.5 * blur)
    density += HEART * heart_soft * np.clip(1.0 - mediastinum, 0, 1)

    # abdomen below the domes (liver on the image left is higher and denser)
    below = np.where(u < 0.5, v > dome(u, 0) + 0.005, v > dome(u, 1) + 0.005) & body
    density += 0.08 * cv2.GaussianBlur(below.astype(np.float32), (0, 0), 2.0 * blur)

    # posterior ribs: bands at v = v0 + k * spacing + 0.35 |u - 0.5|^1.6 (they slope down laterally)
    lateral = np.abs(u - 0.5)
    spacing = rng.uniform(0.058, 0.066)
    phase = (v - 0.11 - 0.55 * lateral ** 1.6 - rng.uniform(-0.01, 0.01)) / spacing
    thickness = 0.008 + 0.004 * np.clip(lateral / 0.4, 0, 1)  # wider laterally
    ribs = np.exp(-(((phase - np.round(phase)) * spacing) / thickness) ** 2)
    ribs *= (phase > -0.5) & (phase < 9.5) & (lateral > 0.045) & (lateral < 0.44)
    density += RIB * ribs.astype(np.float32) * (0.4 + 0.6 * lung_soft)

    # clavicles: bands from the manubrium out to the shoulders
    for sign in (-1.0, 1.0):
        t = np.clip((sign * (u - 0.5) - 0.05) / 0.28, 0, 1)
        centre = 0.165 - 0.07 * t
        clavicle = np.exp(-((v - centre) / 0.011) ** 2) * (sign * (u - 0.5) > 0.05) * (sign * (u - 0.5) < 0.36)
        density += BONE * clavicle.astype(np.float32)

    # vascular markings: ridged noise, denser near the hila
    noise = _smooth_noise(rng, size, max(8, size // 12)) + 0.5 * _smooth_noise(rng, size, max(16, size // 5))
    ridges = np.clip(1.0 - np.abs(noise) / 0.45, 0, 1) ** 2
    hilum = np.exp(-(np.minimum(np.abs(u - 0.38), np.abs(u - 0.62)) / 0.16) ** 2)
    texture = (0.07 * ridges * (0.45 + 0.55 * hilum) * lung_soft).astype(np.float32)

    # exposure variation over the whole image
    density += 0.035 * _smooth_noise(rng, size, 3)
    return Chest(size=size, u=u, v=v, density=density.astype(np.float32), texture=texture, lung=lungs,
                 heart=heart, heart_mask=heart_mask, transform=transform)
