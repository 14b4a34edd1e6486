"""Phantom archives: synthetic chest radiographs with known lesions, in the exact ChestX-ray14 release layout.

``make_phantoms(out, images=N, size=S, seed=K)`` writes::

    OUT/images/00000001_000.png ...   8-bit grey S x S PNGs, named <patient id>_<follow-up>.png
    OUT/Data_Entry_2017.csv           the 2017 header; Finding Labels joined with "|", "No Finding"
    OUT/BBox_List_2017.csv            "Image Index,Finding Label,Bbox [x,y,w,h],,,"; one row per lesion;
                                      "Infiltrate" spelling; boxes in pixels, tight around each lesion
    OUT/train_val_list.txt, OUT/test_list.txt   patient-disjoint
    OUT/masks/<stem>_<Finding>.png    with masks=True: 255 on that finding's lesions (union of its boxes'
                                      lesions), one file per positive image and finding

Every labelled finding has at least one box, every box one lesion; Nodule and Mass images often hold two
or three separate lesions. The archive is a pure function of the options: image i is drawn from its own
generator seeded with (seed, i), so the same seed gives the same bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from miner.config import PhantomConfig
from miner.data.archives import Archive, read_archive
from miner.data.archives.nih import (
    BBOX_LIST_NAME,
    TEST_LIST_NAME,
    TRAIN_LIST_NAME,
    EntryRow,
    write_bbox_list,
    write_data_entry,
    write_split_list,
)
from miner.data.records import GroundTruthBox
from miner.errors import UsageError
from miner.phantoms.anatomy import render_chest
from miner.phantoms.lesions import DRAWERS, PHANTOM_FINDINGS, Canvas, Lesion, enlarged_heart, heart_lesion

PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 3]
#: findings whose extra lesions come as 2 or 3 (others: 2)
UP_TO_THREE = ("Nodule", "Mass")


@dataclass
class PlannedImage:
    """What one phantom image will show (drawn before any pixel)."""

    index: int
    image_id: str
    patient_id: int
    follow_up: int
    split: str
    age: int
    gender: str
    view: str
    lesions: dict[str, int] = field(default_factory=dict)  # finding -> number of lesions wanted


def _plan_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0x5EED])


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator image `index` is drawn from (independent of every other image)."""
    return np.random.default_rng([int(seed), 1, int(index)])


def plan_archive(config: PhantomConfig) -> list[PlannedImage]:
    """Patients, follow-ups, splits and per-image findings (with lesion counts) of an archive."""
    rng = _plan_rng(config.seed)
    findings = list(config.findings)
    plans: list[PlannedImage] = []
    patient = 0
    p_more = 1.0 - 1.0 / max(config.images_per_patient, 1.0)
    patients_split: dict[int, str] = {}
    while len(plans) < config.images:
        patient += 1
        n = 1
        while rng.random() < p_more and n < 8:
            n += 1
        split = "test" if rng.random() < config.test_fraction else "train"
        patients_split[patient] = split
        age, gender = int(rng.integers(18, 86)), ("M" if rng.random() < 0.55 else "F")
        for follow_up in range(min(n, config.images - len(plans))):
            wanted: dict[str, int] = {}
            if findings and rng.random() >= config.no_finding:
                k = 1 + int(rng.random() < config.extra_findings[0])
                k += int(k == 2 and rng.random() < config.extra_findings[1] / max(config.extra_findings[0], 1e-9))
                for name in rng.choice(findings, size=min(k, len(findings)), replace=False):
                    name = str(name)
                    count = 1
                    if rng.random() < config.multi_lesion.get(name, 0.0):
                        count = 2 + int(name in UP_TO_THREE and rng.random() < 0.3)
                    wanted[name] = count
            plans.append(PlannedImage(
                index=len(plans), image_id=f"{patient:08d}_{follow_up:03d}.png", patient_id=patient,
                follow_up=follow_up, split=split, age=min(age + follow_up // 3, 95), gender=gender,
                view="PA" if rng.random() < 0.75 else "AP", lesions=wanted,
            ))
    # both splits non-empty whenever there are two patients or more
    splits = set(patients_split.values())
    if patient >= 2 and len(splits) == 1:
        flip = "test" if "train" in splits else "train"
        for plan in plans:
            if plan.patient_id == patient:
                plan.split = flip
    return plans


def render_image(plan: PlannedImage, config: PhantomConfig, *, background=None) -> tuple[np.ndarray, list[Lesion]]:
    """Draw one planned image.

    Returns:
        image (np.ndarray[S, S] uint8) and its lesions (each finding of the plan with at least one lesion
        unless no room could be found for it, which the caller treats as the finding being absent).
    """
    rng = image_rng(config.seed, plan.index)
    heart = enlarged_heart(rng) if "Cardiomegaly" in plan.lesions else None
    if background is not None:
        chest = background.chest(rng, config.size, heart=heart)
    else:
        chest = render_chest(rng, config.size, heart=heart)
    canvas = Canvas(chest, rng, contrast=config.contrast)
    found: list[Lesion] = []
    for finding in sorted(plan.lesions):
        if finding == "Cardiomegaly":
            found.append(heart_lesion(canvas))
            continue
        drawer = DRAWERS[finding]
        for _ in range(plan.lesions[finding]):
            for _attempt in range(6):
                lesion = drawer(canvas)
                if lesion is not None:
                    found.append(lesion)
                    break
    image = chest.density + chest.texture
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(config.noise)
    # exposure: contrast, brightness and gamma vary a little between images
    image = (image - 0.5) * np.float32(rng.uniform(0.9, 1.1)) + np.float32(0.5 + rng.uniform(-0.03, 0.03))
    np.clip(image, 0.0, 1.0, out=image)
    image **= np.float32(rng.uniform(0.85, 1.15))
    return (image * 255.0 + 0.5).astype(np.uint8), found


def _draw_and_write(
    plan: PlannedImage, config: PhantomConfig, out: Path
) -> tuple[tuple[str, ...], list[GroundTruthBox]]:
    """Render one image, write it (and its masks); return its labels and boxes. Runs in worker processes."""
    background = None
    if config.real_background:
        from miner.phantoms.background import RealBackground

        background = RealBackground.load()  # cached per process
    image, found = render_image(plan, config, background=background)
    _write_png(out / "images" / plan.image_id, image)
    labels = tuple(sorted({lesion.finding for lesion in found}))
    boxes = [GroundTruthBox(plan.image_id, lesion.finding, *lesion.box) for lesion in found]
    if config.masks:
        stem = Path(plan.image_id).stem
        for finding in labels:
            mask = np.zeros((config.size, config.size), dtype=bool)
            for lesion in found:
                if lesion.finding == finding:
                    lesion.paste(mask)
            _write_png(out / "masks" / f"{stem}_{finding}.png", mask.astype(np.uint8) * 255)
    return labels, boxes


def _draw_chunk(args: tuple[list[PlannedImage], PhantomConfig, Path]) -> list:
    plans, config, out = args
    return [_draw_and_write(plan, config, out) for plan in plans]


def _prepare_out(out: Path, overwrite: bool) -> None:
    """OUT new or empty, or with `overwrite` its images/ and masks/ folders removed (`miner.outdir.prepare_out`)."""
    from miner.outdir import prepare_out

    prepare_out(out, overwrite=overwrite, where=f"{out}:", not_folder="give a new folder for the phantom archive",
                not_empty="folder is not empty; give a new folder or pass --overwrite", remove=("images/", "masks/"))
    (out / "images").mkdir(parents=True, exist_ok=True)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image, PNG_OPTIONS)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    path.write_bytes(data.tobytes())


def make_phantoms(
    out: str | os.PathLike,
    *,
    images: int = PhantomConfig.images,
    size: int = PhantomConfig.size,
    seed: int = PhantomConfig.seed,
    masks: bool = False,
    real_background: bool = False,
    findings: tuple[str, ...] | None = None,
    config: PhantomConfig | None = None,
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
) -> Archive:
    """Write a phantom archive in the ChestX-ray14 release layout (see the module docstring).

    Args:
        out: a new (or empty) folder.
        images, size, seed, masks, real_background, findings: as in `miner.config.PhantomConfig`; they override
            the fields of `config` (whose other fields tune prevalence, lesion counts, contrast and noise).
        overwrite: allow a non-empty `out` (its images/ and masks/ are replaced).
        progress: show a progress bar.
        workers: processes drawing images (None: `config.workers`; 0 there = one per CPU for 200 images or
            more, else 1). The bytes do not depend on it.

    Returns:
        the archive as `read_archive(out)` reads it back.
    """
    base = config or PhantomConfig()
    config = replace(base, images=images, size=size, seed=seed, masks=masks,
                     workers=base.workers if workers is None else workers,
                     real_background=real_background,
                     findings=tuple(findings) if findings is not None else base.findings)
    if config.images < 1:
        raise UsageError(f"--images must be at least 1, got {config.images}")
    if config.size < 32:
        raise UsageError(f"--size must be at least 32 pixels, got {config.size}")
    unknown = [f for f in config.findings if f not in PHANTOM_FINDINGS]
    if unknown:
        raise UsageError(f"cannot draw findings {unknown}; choose from {', '.join(PHANTOM_FINDINGS)}")
    if config.real_background:
        from miner.phantoms.background import radiograph_path

        radiograph_path()  # a clear error before anything is written
    out = Path(out)
    _prepare_out(out, overwrite)
    if config.masks:
        (out / "masks").mkdir(exist_ok=True)

    plans = plan_archive(config)
    workers = config.workers or (min(os.cpu_count() or 1, 8) if config.images >= 200 else 1)
    chunk = 16
    chunks = [(plans[i:i + chunk], config, out) for i in range(0, len(plans), chunk)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plans), desc="phantoms", unit="img")
    results: list[tuple[tuple[str, ...], list[GroundTruthBox]]] = []
    if workers > 1 and len(chunks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: safe whatever the caller has started (threads, torch); images do not depend on the worker
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for part in pool.map(_draw_chunk, chunks):
                results += part
                if bar is not None:
                    bar.update(len(part))
    else:
        for item in chunks:
            part = _draw_chunk(item)
            results += part
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()

    spacing = 0.143 * 1024 / config.size
    rows: list[EntryRow] = []
    boxes: list[GroundTruthBox] = []
    for plan, (labels, image_boxes) in zip(plans, results, strict=True):
        boxes += image_boxes
        rows.append(EntryRow(
            image_id=plan.image_id, labels=labels, follow_up=plan.follow_up, patient_id=str(plan.patient_id),
            age=plan.age, gender=plan.gender, view=plan.view, width=config.size, height=config.size,
            spacing_x=spacing, spacing_y=spacing,
        ))
    write_data_entry(out / "Data_Entry_2017.csv", rows)
    write_bbox_list(out / BBOX_LIST_NAME, boxes)
    write_split_list(out / TRAIN_LIST_NAME, [p.image_id for p in plans if p.split == "train"])
    write_split_list(out / TEST_LIST_NAME, [p.image_id for p in plans if p.split == "test"])
    return read_archive(out)


__all__ = ["PlannedImage", "make_phantoms", "plan_archive", "render_image"]
