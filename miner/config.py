"""Defaults, in one place.

Each part of the product reads its options from one dataclass here; functions take such a config
object or explicit keyword arguments, and the CLI builds configs from flags. Nothing else holds a
default that a user may want to change.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# --- phantom archives (miner.data.phantoms, `miner phantoms`; owner: data) -----------------------------


@dataclass
class PhantomConfig:
    """Defaults for `miner phantoms` / `miner.data.make_phantoms` (README "Archives and phantoms").

    Attributes:
        images: number of images.
        size: side of the square 8-bit PNGs, in pixels.
        seed: the archive is a pure function of (seed, options): same seed, same bytes.
        findings: findings drawn (a subset of the eight that the generator knows; see `miner.data.lesions`).
        no_finding: fraction of images without any finding.
        extra_findings: probabilities of a second and a third finding on a positive image (multi-label).
        multi_lesion: per finding, probability of more than one separate lesion of it in one image
            (Nodule/Mass: 2 or 3 lesions; others: 2; Effusion: bilateral).
        test_fraction: fraction of patients in test_list.txt (the rest in train_val_list.txt).
        images_per_patient: mean number of images per patient (follow-ups).
        contrast: scale of every lesion's density (1 = default visibility; lower = harder).
        noise: standard deviation of the pixel noise (fraction of the full range).
        masks: also write ``masks/<image stem>_<Finding>.png`` (255 on the finding's lesions).
        real_background: use the pydicom-data radiograph (randomly cropped and warped) as the chest.
    """

    images: int = 1000
    size: int = 512
    seed: int = 0
    findings: tuple[str, ...] = (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    )
    no_finding: float = 0.35
    extra_findings: tuple[float, float] = (0.35, 0.1)
    multi_lesion: dict = field(default_factory=lambda: {
        "Nodule": 0.4, "Mass": 0.35, "Atelectasis": 0.2, "Infiltration": 0.2, "Pneumonia": 0.2, "Effusion": 0.25,
    })
    test_fraction: float = 0.25
    images_per_patient: float = 1.8
    contrast: float = 1.0
    noise: float = 0.018
    masks: bool = False
    real_background: bool = False
