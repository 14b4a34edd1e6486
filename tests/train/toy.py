"""A tiny labelled archive in the ChestX-ray14 release layout, for training tests (no phantom generator needed).

Two findings with plain visual signatures on a noisy grey background: ``Mass`` = a bright disc, ``Effusion``
= a bright band along the bottom edge. Labels are independent, each present with probability 0.5.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ("Mass", "Effusion")
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def write_toy_archive(root: Path, *, images: int, size: int = 64, seed: int = 0, test_fraction: float = 0.25) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rows, train, test = [], [], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(images):
        img = 0.35 + 0.08 * rng.standard_normal((size, size))
        labels = [c for c in CLASSES if rng.random() < 0.5]
        if "Mass" in labels:
            r = size * rng.uniform(0.08, 0.14)
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] += 0.4
        if "Effusion" in labels:
            img[int(size * rng.uniform(0.75, 0.85)):, :] += 0.3
        name = f"{i + 1:08d}_000.png"
        cv2.imwrite(str(root / "images" / name), (np.clip(img, 0, 1) * 255).astype(np.uint8))
        finding = "|".join(labels) or "No Finding"
        rows.append(f"{name},{finding},0,{i + 1},50,M,PA,{size},{size},0.143,0.143,")
        (test if i >= images * (1 - test_fraction) else train).append(name)
    (root / "Data_Entry_2017.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    return root
