"""``miner detector train``: Faster R-CNN (`miner.detector.model`) on a label set (`miner.detector.data`).

The recipe (one budget for every label set a benchmark compares): SGD with momentum 0.9 and weight decay 1e-4,
a linear warm-up over the first 50 iterations then a cosine decay to 0 over ``epochs`` x ceil(images / batch)
iterations, images resized to ``size`` x ``size``, horizontal flips (p = 0.5) unless ``flip=False``. The trunk
starts from a classifier checkpoint (default: the embedded model) with frozen batch norms.

DIR holds what the run writes, and only that (``miner-detector.json`` lists it): ``train.json`` (the options and
the label set's fingerprint), ``last.pt`` (after every epoch: weights, optimizer, epoch, random state; resuming
starts from it), ``log.jsonl`` (one line per epoch: losses, learning rate, seconds), ``detector.pt`` (the final
model, what ``miner detector predict`` takes). Running the same command again resumes where it stopped; other
options or another label set on the same DIR are refused unless ``overwrite`` (which replaces only these files).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miner.config import DetectorTrainConfig
from miner.detector.data import LabelSet, decoded, read_labels
from miner.detector.model import (
    build_detector,
    detector_meta,
    read_detector,
    save_detector,
    trunk_from_checkpoint,
)
from miner.errors import UsageError
from miner.io import atomic_write_bytes, shown, writing

LISTING = "miner-detector.json"
FILES = ("train.json", "last.pt", "log.jsonl", "detector.pt", LISTING)
WARMUP = 50


@dataclass
class TrainResult:
    to: Path
    detector: Path
    epochs: int
    images: int
    boxes: int
    seconds: float
    resumed_from: int
    last_loss: float

    def line(self) -> str:
        start = f" (resumed after epoch {self.resumed_from})" if self.resumed_from else ""
        return (f"miner detector train: {self.detector}: {self.epochs} epochs on {self.images} images, {self.boxes} "
                f"boxes{start}; last epoch's loss {self.last_loss:.3f}; {self.seconds:.0f} s")


def _backbone_path(name: str) -> Path | None:
    if name == "none":
        return None
    if name == "embedded":
        from importlib import resources

        return Path(str(resources.files("miner") / "assets" / "default_model.pt"))
    return Path(name).expanduser()


def _owned(to: Path) -> set[str]:
    listing = to / LISTING
    if not listing.is_file():
        raise UsageError(f"--to: {shown(to)} holds no earlier detector training ({LISTING}); --overwrite replaces "
                         "only a training's files: give a new folder")
    return set(FILES)


def _schedule(step: int, total: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.5 * (1 + math.cos(math.pi * min(step - WARMUP, total - WARMUP) / max(total - WARMUP, 1)))


def _targets(labels: LabelSet, kept: list[int], size: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for n in kept:
        image = labels.images[n]
        boxes = torch.from_numpy(image.boxes.astype(np.float32) * size)
        out.append({"boxes": boxes.reshape(-1, 4), "labels": torch.from_numpy(image.classes + 1)})
    return out


def train_detector(
    labels_dir: str | Path,
    to: str | Path,
    *,
    config: DetectorTrainConfig | None = None,
    archive: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda line: None,
) -> TrainResult:
    """Train a detector on the label set in `labels_dir` into folder `to` (module docstring)."""
    cfg = config or DetectorTrainConfig()
    labels = read_labels(labels_dir, split=cfg.split, archive=archive)
    backbone = _backbone_path(cfg.backbone)
    if backbone is not None and not backbone.is_file():
        raise UsageError(f"--backbone: {shown(backbone)} is not a file; give a classifier checkpoint (.pt), "
                         "'embedded' or 'none'")
    to = Path(to).expanduser().resolve()
    identity = {"config": asdict(cfg), "labels": labels.fingerprint(), "classes": list(labels.classes)}
    resume: dict[str, Any] | None = None
    if to.is_dir() and (to / "train.json").is_file() and not overwrite:
        try:
            recorded = json.loads((to / "train.json").read_text())
        except (OSError, ValueError):
            raise UsageError(f"--to: {shown(to / 'train.json')} is damaged; pass --overwrite to start afresh") \
                from None
        if recorded != identity:
            differs = next((k for k in ("labels", "classes") if recorded.get(k) != identity[k]), None)
            what = "another label set" if differs else "other options"
            raise UsageError(f"--to: {shown(to)} holds a training on {what}; give a new folder or pass --overwrite")
        if (to / "last.pt").is_file():
            resume = read_detector(to / "last.pt")
    else:
        from miner.outdir import check_out_folder, prepare_out

        check_out_folder(to)
        prepare_out(to, overwrite=overwrite, where=f"--to: {shown(to)}", not_folder="give a new folder",
                    not_empty="is not empty; give a new folder or pass --overwrite (it replaces only the files of "
                              "an earlier training)", owned_by=_owned)
        with writing(to, to):
            to.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                (to / name).unlink(missing_ok=True)
            atomic_write_bytes(to / "train.json", (json.dumps(identity, indent=1) + "\n").encode())
            atomic_write_bytes(to / LISTING, (json.dumps({"written_by": "miner detector train",
                                                          "files": list(FILES)}, indent=1) + "\n").encode())

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if backbone is not None:
        classifier, spec = trunk_from_checkpoint(backbone)
    else:
        from miner.models.registry import create_model

        classifier = create_model("resnet18", classes=labels.classes, in_chans=1, width=0.375)
        spec = {"trunk": {"arch": "resnet18", "options": {"width": 0.375}, "in_chans": 1},
                "mean": [0.449], "std": [0.226]}
    meta = detector_meta(labels.classes, size=cfg.size, trunk=spec["trunk"], mean=spec["mean"], std=spec["std"],
                         fpn_channels=cfg.fpn_channels, frozen_bn=backbone is not None,
                         backbone=str(backbone) if backbone is not None else None)
    model = build_detector(meta, classifier=classifier)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=1e-4)

    pixels, kept, _ = decoded([i.path for i in labels.images], cfg.size, progress=progress)
    if not kept:
        raise UsageError(f"{shown(labels_dir)}: none of its images could be read")
    targets = _targets(labels, kept, cfg.size)
    per_epoch = math.ceil(len(kept) / cfg.batch)
    total = per_epoch * cfg.epochs
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch = int(resume["epoch"])
        if isinstance(resume.get("rng"), torch.Tensor):
            torch.set_rng_state(resume["rng"])  # the samplers of the RPN and box heads go on as if never stopped
    meta.update(labels=labels.source, layout=labels.layout, images=len(kept), boxes=labels.boxes,
                epochs=cfg.epochs, seed=cfg.seed)

    started = time.perf_counter()
    last_loss = float("nan")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start_epoch * per_epoch, desc="training", unit="it")
    model.train()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
            flips = torch.rand(len(kept), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 7))
            sums: dict[str, float] = {}
            epoch_start = time.perf_counter()
            for b in range(per_epoch):
                step = epoch * per_epoch + b
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * _schedule(step, total)
                batch = order[b * cfg.batch:(b + 1) * cfg.batch].tolist()
                images, batch_targets = [], []
                for n in batch:
                    image = torch.from_numpy(pixels[n]).float().div_(255.0)[None]
                    target = {k: v.clone() for k, v in targets[n].items()}
                    if cfg.flip and flips[n] < 0.5:
                        image = image.flip(-1)
                        boxes = target["boxes"]
                        target["boxes"] = torch.stack([cfg.size - boxes[:, 2], boxes[:, 1], cfg.size - boxes[:, 0],
                                                       boxes[:, 3]], dim=1)
                    images.append(image)
                    batch_targets.append(target)
                losses = model(images, batch_targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise UsageError(f"the training diverged at epoch {epoch + 1} (loss {float(loss)}); rerun with "
                                     "--overwrite and a lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                optimizer.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
            means = {k: v / per_epoch for k, v in sums.items()}
            last_loss = sum(means.values())
            record = {"epoch": epoch + 1, "loss": round(last_loss, 5), **{k: round(v, 5) for k, v in means.items()},
                      "lr_end": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - epoch_start, 2)}
            save_detector(to / "last.pt", model, {**meta, "epoch": epoch + 1},
                          extra={"optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                                 "rng": torch.get_rng_state()})
            with writing(to, to / "log.jsonl"), open(to / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {last_loss:.3f}")
    finally:
        if bar is not None:
            bar.close()
    if math.isnan(last_loss) and (to / "log.jsonl").is_file():
        lines = (to / "log.jsonl").read_text().splitlines()
        last_loss = json.loads(lines[-1])["loss"] if lines else float("nan")
    model.eval()
    save_detector(to / "detector.pt", model, {**meta, "epoch": cfg.epochs})
    return TrainResult(to=to, detector=to / "detector.pt", epochs=cfg.epochs, images=len(kept), boxes=labels.boxes,
                       seconds=time.perf_counter() - started, resumed_from=start_epoch, last_loss=last_loss)
