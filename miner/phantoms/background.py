"""A real chest radiograph as phantom background (`miner phantoms --real-background`).

The radiograph is ``RG1_UNCR.dcm`` of the ``pydicom-data`` package (1955 x 1841, MONOCHROME1, frontal chest).
Each phantom image shows a random square crop of it (85-100 % of its width) under a small random affine warp
(tilt, scale, shear) and gamma. The lung fields were outlined by hand once (`LUNG_POLYGONS`, fractions of the
image's width and height); they are warped with the image so that lesions land inside the lungs. The
synthetic lesions are drawn over it exactly as over the synthetic chest.

Note: this radiograph itself shows several round opacities (it is a real patient's film), so with a real
background "No Finding" phantom images are not normal chests; use it to test robustness to real anatomy,
not to measure detection of Nodule or Mass.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from miner.errors import UsageError
from miner.phantoms import anatomy
from miner.phantoms.anatomy import Chest, Heart

RADIOGRAPH = "RG1_UNCR.dcm"
# lung outlines traced on RG1 (x, y as fractions of width and height); image-left lung first
LUNG_POLYGONS = (
    ((120, 45), (95, 60), (70, 95), (55, 140), (45, 200), (42, 260), (45, 310), (55, 345), (90, 350), (130, 335),
     (165, 330), (180, 320), (185, 250), (190, 180), (190, 110), (182, 60), (160, 42)),
    ((300, 45), (330, 45), (370, 65), (395, 100), (410, 150), (420, 220), (425, 290), (420, 350), (400, 370),
     (370, 350), (330, 330), (300, 300), (275, 240), (262, 190), (255, 140), (258, 80), (275, 55)),
)
_TRACED_ON = (460.0, 489.0)  # the (width, height) the outlines were traced at
_HEART_GAIN = 0.24  # density an enlarged heart adds over the lung it covers
_TRIM = 0.02  # the film's outer 2 % (collimator edges) are cut off


def radiograph_path() -> Path:
    """Where pydicom-data keeps RG1_UNCR.dcm; a UsageError naming the fix when it is not installed."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("--real-background needs the pydicom-data package (pip install pydicom-data); "
                         "it is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / RADIOGRAPH
    if not path.is_file():
        raise UsageError(f"--real-background: {path} is missing; reinstall pydicom-data")
    return path


def _fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 least-squares affine mapping src points [N, 2] onto dst points [N, 2]."""
    ones = np.ones((len(src), 1))
    solution, *_ = np.linalg.lstsq(np.hstack([src, ones]), dst, rcond=None)
    return solution.T


@dataclass
class RealBackground:
    image: np.ndarray  # [H, W] float32 in [0, 1], bright = dense
    lungs: np.ndarray  # [H, W] uint8: 1 = image-left lung, 2 = image-right lung
    canonical: np.ndarray  # 2x3 affine: canonical (u, v) -> fractions of this image
    _sizes: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls) -> RealBackground:
        return _load(str(radiograph_path()))

    def _scaled(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        """The radiograph and its lung labels resized so that its width is about `side` / 0.85 pixels."""
        if side in self._sizes:
            return self._sizes[side]
        h, w = self.image.shape
        width = max(int(round(side / 0.85)), 8)
        height = max(int(round(h * width / w)), 8)
        image = cv2.resize(self.image, (width, height), interpolation=cv2.INTER_AREA)
        lungs = cv2.resize(self.lungs, (width, height), interpolation=cv2.INTER_NEAREST)
        self._sizes[side] = image, lungs
        return image, lungs

    def chest(self, rng: np.random.Generator, size: int, *, heart: Heart | None = None) -> Chest:
        """A random crop and warp of the radiograph as a `Chest` (lesions are then drawn on it as usual)."""
        image, lungs = self._scaled(size)
        h, w = image.shape
        crop = rng.uniform(0.85, 1.0) * w
        x0 = rng.uniform(0, w - crop)
        y0 = rng.uniform(0, max(h - crop, 0.0)) if h > crop else -(crop - h) / 2
        angle = np.deg2rad(rng.uniform(-4, 4))
        scale = rng.uniform(0.96, 1.04, size=2)
        shear = rng.uniform(-0.03, 0.03)
        # output pixel p -> source pixel: centre, undo warp, crop
        linear = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        linear = linear @ np.array([[scale[0], shear], [0.0, scale[1]]]) * (crop / size)
        centre_out = np.array([size / 2, size / 2])
        centre_src = np.array([x0 + crop / 2, y0 + crop / 2])
        to_src = np.hstack([linear, (centre_src - linear @ centre_out)[:, None]])
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        out = cv2.warpAffine(image, to_src, (size, size), flags=flags, borderMode=cv2.BORDER_REFLECT)
        # this film is bright (lungs ~0.55): a gamma of 1.5-2 brings its lungs near the synthetic chest's
        out = np.clip(out, 0, 1) ** np.float32(rng.uniform(1.5, 2.0))
        labels = cv2.warpAffine(lungs, to_src, (size, size), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)

        # canonical (u, v) of every output pixel: output pixel -> source pixel -> source fraction -> canonical
        src_frac = np.diag([1.0 / w, 1.0 / h]) @ to_src
        src_frac = np.vstack([src_frac, [0, 0, 1]])
        to_canonical = np.linalg.inv(np.vstack([self.canonical, [0, 0, 1]])) @ src_frac
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
        u = (to_canonical[0, 0] * xs + to_canonical[0, 1] * ys + to_canonical[0, 2]).astype(np.float32)
        v = (to_canonical[1, 0] * xs + to_canonical[1, 1] * ys + to_canonical[1, 2]).astype(np.float32)
        pixel_of_canonical = np.linalg.inv(to_canonical)[:2] / size

        enlarged = heart is not None
        heart = heart or Heart(**anatomy.NORMAL_HEART)
        heart_mask = anatomy.heart_shape(u, v, heart) <= 1.0
        if enlarged:  # draw the larger heart shadow over the lung it pushes into
            soft = cv2.GaussianBlur((heart_mask & (labels > 0)).astype(np.float32), (0, 0), max(size / 60, 0.6))
            out = out + np.float32(_HEART_GAIN) * soft
        # split fine detail (vessels, and this film's own nodules) into the texture layer
        smooth = cv2.GaussianBlur(out, (0, 0), max(size / 80, 1.0))
        lung_any = labels > 0
        texture = ((out - smooth) * lung_any).astype(np.float32)
        lung = (labels == 1) & ~heart_mask, (labels == 2) & ~heart_mask
        return Chest(size=size, u=u, v=v, density=(out - texture).astype(np.float32), texture=texture,
                     lung=lung, heart=heart, heart_mask=heart_mask, transform=pixel_of_canonical)


@lru_cache(maxsize=1)
def _load(path: str) -> RealBackground:
    from miner.data.image import load_image

    image, (h, w) = load_image(path)
    small = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    th, tw = int(small.shape[0] * _TRIM), int(small.shape[1] * _TRIM)
    sh, sw = small.shape
    lungs = np.zeros((sh, sw), np.uint8)
    scale = np.array([sw / _TRACED_ON[0], sh / _TRACED_ON[1]])
    corners_src, corners_dst = [], []
    for label, polygon in enumerate(LUNG_POLYGONS, start=1):
        points = np.array(polygon, np.float64)
        cv2.fillPoly(lungs, [np.round(points * scale).astype(np.int32)], label)
        # canonical lung box corners <-> traced lung box corners (fractions of the image)
        (cu, cv), (a, b) = anatomy.LUNG_CENTRES[label - 1], anatomy.LUNG_HALF[label - 1]
        lo, hi = points.min(0) / _TRACED_ON, points.max(0) / _TRACED_ON
        corners_src += [(cu - a, cv - b), (cu + a, cv + b), (cu - a, cv + b), (cu + a, cv - b)]
        corners_dst += [tuple(lo), tuple(hi), (lo[0], hi[1]), (hi[0], lo[1])]
    canonical = _fit_affine(np.array(corners_src), np.array(corners_dst))
    # trimming shifts and rescales fractions: x' = (x - t) / (1 - 2 t)
    k = 1 / (1 - 2 * _TRIM)
    trim = np.array([[k, 0, -_TRIM * k], [0, k, -_TRIM * k], [0, 0, 1]])
    canonical = (trim @ np.vstack([canonical, [0, 0, 1]]))[:2]
    return RealBackground(image=np.ascontiguousarray(small[th:sh - th, tw:sw - tw], dtype=np.float32),
                          lungs=np.ascontiguousarray(lungs[th:sh - th, tw:sw - tw]), canonical=canonical)
