"""The training driver: stages, epochs, validation AUC, checkpoints and resume.

Stages (Cai et al. Sec. 3.1-3.2), each written to its own checkpoint ``OUT.<stage>.pt`` after every epoch:

- ``base``: plain training of the backbone with its GAP head (for ``*_msa`` archs: the ResNet without MSA,
  i.e. ``resnet50`` for ``resnet50_msa``); ``--init`` loads ImageNet weights into its trunk.
- ``msa-init`` (``*_msa`` only): MSA + a new head on top of the base trunk, everything below MSA frozen
  (its BatchNorm statistics too).
- ``end2end`` (``*_msa`` only): the whole ResNet-MSA.
- ``am``: attention-mining fine-tuning (erased features per branch) with KP-Vanilla or KP (`miner.train.step`).

``stages=("all",)`` runs the arch's sequence. A stage whose checkpoint is marked complete is skipped with
``resume``; an incomplete one continues at its next epoch (optimizer, schedule and KP reference restored).
The final model is also written to OUT itself, with the test-split AUC per finding in its meta.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from miner.config import TrainConfig
from miner.errors import MinerError, UsageError
from miner.models import build_from_meta, create_model, load_pretrained, read_checkpoint, save_checkpoint
from miner.train import distributed as D
from miner.train.auc import roc_auc_per_class
from miner.train.dataset import ArchiveDataset, augment, collate, split_validation, worker_init
from miner.train.losses import class_balance_weights
from miner.train.step import KnowledgePreservation, TrainForward, resolve_kp_layers, training_losses

STAGES = ("base", "msa-init", "end2end", "am")


def is_msa(arch: str) -> bool:
    return arch.endswith("_msa")


def plan_stages(arch: str, stages: tuple[str, ...] | list[str]) -> list[str]:
    """The stage sequence to run: ``all`` expands to the arch's stages; order is always base..am."""
    own = list(STAGES) if is_msa(arch) else ["base", "am"]
    wanted = own if "all" in stages else list(stages)
    for s in wanted:
        if s not in STAGES:
            raise UsageError(f"--stage must be one of {('all',) + STAGES}, got {s!r}")
        if s not in own:
            raise UsageError(f"stage {s!r} applies to *_msa models only (arch {arch!r} runs {own})")
    return [s for s in own if s in wanted]


def stage_path(out: Path, stage: str) -> Path:
    return out.with_name(f"{out.stem}.{stage}{out.suffix or '.pt'}")


def stage_epochs(cfg: TrainConfig, stage: str) -> int:
    return {"base": cfg.base_epochs, "msa-init": cfg.msa_init_epochs, "end2end": cfg.end2end_epochs,
            "am": cfg.am_epochs}[stage]


def stage_lr(cfg: TrainConfig, stage: str) -> float:
    return cfg.lr if stage in ("base", "msa-init") else cfg.finetune_lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_train_mode(model: nn.Module, stage: str, cfg: TrainConfig) -> None:
    """train() with BatchNorm frozen where the stage wants it (eval-mode BN keeps its running statistics)."""
    model.train()
    frozen_bn = cfg.freeze_bn or (stage == "am" and cfg.am_freeze_bn)
    if frozen_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    if stage == "msa-init":
        for name in model.trunk_modules():
            model.get_submodule(name).eval()


def make_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    raise UsageError(f"--optimizer must be sgd or adamw, got {cfg.optimizer!r}")


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    if cfg.schedule == "cosine":
        total = max(1, total_steps)
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        )
    raise UsageError(f"--schedule must be cosine or constant, got {cfg.schedule!r}")


def abbreviate(name: str) -> str:
    return name[:4]


@dataclass
class TrainResult:
    out: Path
    stages: list[str]
    classes: tuple[str, ...]
    test_auc: dict[str, float]
    mean_test_auc: float
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Runs the planned stages on one archive (one process, or one rank of a torchrun job)."""

    def __init__(self, archive: str | Path | Sequence[str | Path], out: str | Path, cfg: TrainConfig, *,
                 resume: bool = False, start_from: str | Path | None = None) -> None:
        self.archive_paths = [Path(a) for a in ([archive] if isinstance(archive, (str, Path)) else archive)]
        if not self.archive_paths:
            raise UsageError("miner train needs at least one archive")
        self.archive_path = self.archive_paths[0]
        self.out = Path(out)
        self.cfg = cfg
        self.resume = resume
        self.start_from = Path(start_from) if start_from else None
        self.history: list[dict[str, Any]] = []
        from miner.recipes import get_recipe

        self.recipe = get_recipe(cfg.recipe)

    # ------------------------------------------------------------------ set-up
    def log(self, message: str) -> None:
        """One line on stdout from rank 0 (progress bars, on stderr, are closed before it is printed)."""
        if self.rt.main:
            print(message, flush=True)

    def _data(self) -> None:
        from miner.data import read_archive

        cfg = self.cfg
        records = []
        for k, path in enumerate(self.archive_paths):
            archive = read_archive(path, classes=cfg.classes if k == 0 else self.classes)
            if not archive.has_labels:
                raise UsageError(f"{path}: archive has no labels to train on")
            if k == 0:
                self.classes = archive.classes
            elif archive.classes != self.classes:
                raise UsageError(f"{path}: its classes {list(archive.classes)} differ from {self.archive_path}'s "
                                 f"{list(self.classes)}: pass --classes")
            if len(self.archive_paths) > 1:  # several archives: names and patients stay apart (phantoms reuse names)
                archive.records = [dataclasses.replace(r, image_id=f"{k}:{r.image_id}",
                                                       patient_id=f"{k}:{r.patient_id or r.image_id}")
                                   for r in archive.records]
            records += archive.records
        pool = [r for r in records if r.split != "test"]
        test = [r for r in records if r.split == "test"]
        train, val = split_validation(pool, cfg.val_fraction, seed=cfg.seed)
        if len(train) < 2:
            raise UsageError(f"{self.archive_path}: {len(train)} training image(s); need at least 2")
        self.train_ds = ArchiveDataset(train, self.classes, cfg.input_size, cache=cfg.cache)
        self.val_ds = ArchiveDataset(val, self.classes, cfg.input_size, cache=cfg.cache) if val else None
        self.test_ds = ArchiveDataset(test, self.classes, cfg.input_size, cache=cfg.cache) if test else None
        if cfg.cache:
            for ds in (self.train_ds, self.val_ds, self.test_ds):
                if ds is not None:
                    ds.preload(workers=cfg.workers, progress=cfg.progress and self.rt.main)
        if cfg.batch_size % self.rt.world:
            raise UsageError(f"--batch-size {cfg.batch_size} must divide evenly over {self.rt.world} processes")
        self.local_batch = min(cfg.batch_size // self.rt.world, len(train) // self.rt.world)
        self.w_pos = self.w_neg = None
        if cfg.class_weights == "balanced":
            wp, wn = class_balance_weights(self.train_ds.targets.numpy())
            self.w_pos, self.w_neg = torch.from_numpy(wp).to(self.rt.device), torch.from_numpy(wn).to(self.rt.device)
        elif cfg.class_weights != "none":
            raise UsageError(f"--class-weights must be none or balanced, got {cfg.class_weights!r}")
        self.log(f"miner train: {len(train)} train / {len(val)} val / {len(test)} test images, "
                 f"{len(self.classes)} findings, {self.rt.world} process(es) on {self.rt.device}")

    def _loader(self, ds: ArchiveDataset, *, train: bool, epoch: int = 0) -> DataLoader:
        sampler = DistributedSampler(ds, num_replicas=self.rt.world, rank=self.rt.rank, shuffle=train,
                                     seed=self.cfg.seed, drop_last=train)
        sampler.set_epoch(epoch)
        workers = 0 if ds.images is not None else self.cfg.workers
        return DataLoader(ds, batch_size=self.local_batch if train else max(1, 2 * self.local_batch),
                          sampler=sampler, num_workers=workers, collate_fn=collate, drop_last=train,
                          pin_memory=self.rt.device.type == "cuda", worker_init_fn=worker_init,
                          persistent_workers=False)

    # ------------------------------------------------------------------ models per stage
    def _options(self, arch: str) -> dict[str, Any]:
        """Constructor options of `arch`: the recipe's (those the arch takes), then `model_options` over them."""
        from miner.models.registry import constructor

        opts = {**self.recipe.options_for(arch), **self.cfg.model_options}
        accepted = set(inspect.signature(constructor(arch)).parameters)
        if arch != self.cfg.arch:  # the plain trunk of an *_msa arch (base stage): MSA options do not apply
            opts = {k: v for k, v in opts.items() if k in accepted}
        return opts

    def _stage_model(self, stage: str, prev: Path | None) -> nn.Module:
        cfg = self.cfg
        opts = self._options(cfg.arch)
        if stage == "base" or (stage == "msa-init" and prev is None and cfg.init):
            arch = cfg.arch
            if stage == "base" and is_msa(arch):
                arch = arch[: -len("_msa")]
                opts = self._options(arch)
            model = create_model(arch, classes=self.classes, **opts)
            if getattr(model, "task", "classification") != "classification":
                raise UsageError(f"--arch {arch}: miner train trains classifiers; {arch} is a {model.task} net")
            if cfg.init:
                report = load_pretrained(model, cfg.init)
                self.log(f"  init: {len(report['loaded'])} tensors from {cfg.init}")
            return model
        if prev is None:
            before = STAGES[STAGES.index(stage) - 1] if stage != "am" else ("end2end" if is_msa(cfg.arch) else "base")
            raise UsageError(f"stage {stage!r} starts from the {before!r} checkpoint "
                             f"({stage_path(self.out, before)}): run that stage first or pass --from CKPT")
        record = read_checkpoint(prev)
        if tuple(record["classes"]) != tuple(self.classes):
            raise UsageError(f"{prev}: trained for classes {record['classes']}, archive has {list(self.classes)}")
        if stage == "msa-init":
            model = create_model(cfg.arch, classes=self.classes, **opts)
            trunk = {k: v for k, v in record["state_dict"].items() if not k.startswith(("fc.", "head_conv."))}
            missing, unexpected = model.load_state_dict(trunk, strict=False)
            bad = [k for k in missing if not k.startswith(("msa.", "fc.", "head_conv."))] + list(unexpected)
            if bad:
                raise UsageError(f"{prev}: trunk does not fit {cfg.arch}: {bad[:3]}")
            return model
        model = build_from_meta(record)
        model.load_state_dict(record["state_dict"])
        return model

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, model: nn.Module, ds: ArchiveDataset) -> tuple[np.ndarray, np.ndarray]:
        """Sigmoid probabilities (np.ndarray[N, C]) and labels of `ds`, gathered over ranks."""
        model.eval()
        index, probs = [], []
        for batch in self._loader(ds, train=False):
            if batch is None:
                continue
            images, _, idx = batch
            with self._autocast():
                logits = model(images.to(self.rt.device, non_blocking=True))
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
            index.append(idx.numpy())
        local = (np.concatenate(index) if index else np.zeros(0, int),
                 np.concatenate(probs) if probs else np.zeros((0, len(self.classes)), np.float32))
        parts = D.all_gather_objects(local, self.rt)
        idx = np.concatenate([p[0] for p in parts])
        pr = np.concatenate([p[1] for p in parts])
        idx, first = np.unique(idx, return_index=True)  # DistributedSampler pads by repeating
        return pr[first], ds.targets.numpy()[idx]

    def _autocast(self):
        if not self.cfg.amp:
            return torch.autocast(self.rt.device.type, enabled=False)
        dtype = torch.float16 if self.rt.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.rt.device.type, dtype=dtype)

    def auc_line(self, auc: np.ndarray) -> str:
        return " ".join(f"{abbreviate(c)} {a:.3f}" for c, a in zip(self.classes, auc))

    # ------------------------------------------------------------------ one stage
    def run_stage(self, stage: str, model: nn.Module, record: dict | None) -> nn.Module:
        cfg, rt = self.cfg, self.rt
        epochs = stage_epochs(cfg, stage)
        model.to(rt.device)
        if stage == "msa-init":
            for name in model.trunk_modules():
                for p in model.get_submodule(name).parameters():
                    p.requires_grad_(False)
        train_state = (record or {}).get("train_state") or {}
        kp = None
        if stage == "am":
            if cfg.kp == "kp":
                explicit = tuple(cfg.kp_layers) != TrainConfig.kp_layers
                layers = resolve_kp_layers(model, cfg.kp_layers, explicit=explicit)
                kp = KnowledgePreservation(model, layers, norm=cfg.kp_norm,
                                           reference_state=train_state.get("kp_reference"))
                self.log(f"  KP on {', '.join(layers)} (lambda {cfg.kp_lambda}, norm {cfg.kp_norm})")
            elif cfg.kp not in ("none", "vanilla"):
                raise UsageError(f"--kp must be none, vanilla or kp, got {cfg.kp!r}")
        forward = TrainForward(model, threshold=cfg.am_threshold, connectivity=cfg.am_connectivity)
        if rt.distributed:
            forward = nn.parallel.DistributedDataParallel(
                forward, device_ids=[rt.device] if rt.device.type == "cuda" else None)
        steps_per_epoch = len(self.train_ds) // (self.local_batch * rt.world)
        if cfg.max_steps:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
        opt = make_optimizer(model.parameters(), cfg, stage_lr(cfg, stage))
        sched = make_schedule(opt, cfg, epochs * steps_per_epoch)
        scaler = torch.amp.GradScaler(rt.device.type, enabled=cfg.amp and rt.device.type == "cuda")
        start = int(train_state.get("epoch", 0))
        if train_state.get("optimizer"):
            opt.load_state_dict(train_state["optimizer"])
            sched.load_state_dict(train_state["schedule"])
            self.log(f"  resuming {stage} at epoch {start + 1}/{epochs}")
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + STAGES.index(stage))
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            generator.manual_seed(cfg.seed * 1000 + STAGES.index(stage) * 100 + epoch)
            stats = self._train_epoch(stage, model, forward, opt, sched, scaler, kp, epoch, epochs,
                                      steps_per_epoch, generator)
            line = f"[{stage}] epoch {epoch + 1}/{epochs}: loss {stats['loss']:.4f} (cls {stats['cls']:.4f}"
            line += f", kp {stats['kp']:.4f})" if kp is not None else ")"
            entry = {"stage": stage, "epoch": epoch + 1, **stats}
            if self.val_ds is not None:
                probs, labels = self.predict(model, self.val_ds)
                auc = roc_auc_per_class(probs, labels)
                entry["val_auc"] = [float(a) for a in auc]
                line += f" | val AUC {np.nanmean(auc):.3f}: {self.auc_line(auc)}"
            entry["seconds"] = time.perf_counter() - t0
            self.history.append(entry)
            self.log(line + f" | {entry['seconds']:.1f} s")
            if rt.main:
                state = {"epoch": epoch + 1, "optimizer": opt.state_dict(), "schedule": sched.state_dict()}
                if kp is not None:
                    state["kp_reference"] = kp.reference_state()
                save_checkpoint(stage_path(self.out, stage), model, meta=self._meta(stage, epoch + 1, epochs),
                                train_state=state)
            D.barrier(rt)
        if epochs == 0 and rt.main:
            save_checkpoint(stage_path(self.out, stage), model, meta=self._meta(stage, 0, 0))
        if kp is not None:
            kp.remove()
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def _meta(self, stage: str, epoch: int, epochs: int) -> dict[str, Any]:
        """A checkpoint's meta: where training stands, and the settings record (`miner.settings`) of the recipe
        at the training size."""
        settings = dataclasses.replace(self.recipe.settings, input_size=self.cfg.input_size)
        return {"stage": stage, "epoch": epoch, "stage_complete": epoch >= epochs,
                "config": dataclasses.asdict(self.cfg), "history": self.history, **settings.to_record()}

    def _train_epoch(self, stage, model, forward, opt, sched, scaler, kp, epoch, epochs, steps, generator):
        cfg, rt = self.cfg, self.rt
        set_train_mode(model, stage, cfg)
        loader = self._loader(self.train_ds, train=True, epoch=epoch)
        bar = None
        if cfg.progress and rt.main:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"{stage} {epoch + 1}/{epochs}", unit="batch", leave=False)
        sums = {"loss": 0.0, "cls": 0.0, "kp": 0.0}
        done = 0
        for batch in loader:
            if done >= steps:
                break
            if batch is None:
                if rt.distributed:
                    raise MinerError("a whole batch failed to decode; with several processes, rerun with --cache "
                                     "(undecodable images are then left out up front)")
                continue
            images, targets, _ = batch
            images = images.to(rt.device, non_blocking=True)
            targets = targets.to(rt.device, non_blocking=True)
            if cfg.augment:
                images = augment(images, generator)
            depth = 1 + (epoch * steps + done) % max(1, cfg.am_steps)
            with self._autocast():
                losses = training_losses(
                    forward, images, targets, am=stage == "am", kp_mode=cfg.kp, fraction=cfg.am_fraction,
                    depth=depth, kp=kp, kp_lambda=cfg.kp_lambda, w_pos=self.w_pos, w_neg=self.w_neg)
            if not torch.isfinite(losses.loss.detach()):
                raise MinerError(f"[{stage}] epoch {epoch + 1} step {done + 1}: loss is {float(losses.loss)}; "
                                 f"lower the learning rate (--lr / --finetune-lr) or use --optimizer adamw")
            opt.zero_grad(set_to_none=True)
            scaler.scale(losses.loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            done += 1
            sums["loss"] += float(losses.loss.detach())
            sums["cls"] += float(losses.cls.detach())
            sums["kp"] += float(losses.kp.detach()) if losses.kp is not None else 0.0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] / done:.4f}")
        if bar is not None:
            bar.close()
        return {k: v / max(1, done) for k, v in sums.items()} | {"steps": done}

    # ------------------------------------------------------------------ all stages
    def run(self) -> TrainResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        self.rt = D.setup(cfg.device, threads=cfg.threads)
        try:
            seed_everything(cfg.seed)
            self._data()
            plan = plan_stages(cfg.arch, cfg.stages)
            prev = self.start_from
            model = None
            for i, stage in enumerate(plan):
                path = stage_path(self.out, stage)
                record = read_checkpoint(path) if self.resume and path.is_file() else None
                if record is not None and record.get("stage_complete"):
                    self.log(f"[{stage}] complete in {path}: skipped")
                    self.history = list(record.get("history") or self.history)
                    prev = path
                    continue
                seed_everything(cfg.seed + i)
                if record is not None:
                    model = build_from_meta(record)
                    model.load_state_dict(record["state_dict"])
                    self.history = list(record.get("history") or [])
                else:
                    model = self._stage_model(stage, prev)
                self.log(f"[{stage}] {model.arch} ({sum(p.numel() for p in model.parameters()):,} parameters), "
                         f"{stage_epochs(cfg, stage)} epoch(s), lr {stage_lr(cfg, stage)}")
                model = self.run_stage(stage, model, record)
                prev = path
            if model is None:  # every stage was complete already
                record = read_checkpoint(prev)
                model = build_from_meta(record)
                model.load_state_dict(record["state_dict"])
                model.to(self.rt.device)
            result = self._finish(model, plan, t0)
            D.teardown(synchronize=True)
            return result
        finally:
            D.teardown()

    def _finish(self, model: nn.Module, plan: list[str], t0: float) -> TrainResult:
        ds, split = (self.test_ds, "test") if self.test_ds is not None else (self.val_ds, "validation")
        auc = np.full(len(self.classes), np.nan)
        if ds is not None:
            probs, labels = self.predict(model, ds)
            auc = roc_auc_per_class(probs, labels)
            if self.rt.main:
                width = max(len(c) for c in self.classes)
                print(f"{split} AUC per finding ({len(ds)} images):")
                for c, a, pos in zip(self.classes, auc, labels.sum(axis=0)):
                    print(f"  {c:<{width}}  {a:.4f}  ({int(pos)} positive)")
                print(f"  {'mean':<{width}}  {np.nanmean(auc):.4f}")
        test_auc = {c: float(a) for c, a in zip(self.classes, auc)}
        mean = float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")
        seconds = time.perf_counter() - t0
        if self.rt.main:
            last = stage_epochs(self.cfg, plan[-1])
            meta = self._meta(plan[-1], last, last) | {f"{split}_auc": test_auc, "train_seconds": seconds}
            save_checkpoint(self.out, model, meta=meta)
            print(f"miner train: wrote {self.out} ({', '.join(plan)}; {split} mean AUC {mean:.4f}) in {seconds:.1f} s")
        D.barrier(self.rt)
        return TrainResult(self.out, plan, self.classes, test_auc, mean, seconds, self.history)


def train(archive: str | Path | Sequence[str | Path], out: str | Path, cfg: TrainConfig | None = None, *,
          resume: bool = False, start_from: str | Path | None = None) -> TrainResult:
    """Train on `archive` (or on the union of several archives: their test splits are tested together) and
    write `out` (plus ``out.<stage>.pt`` per stage). See `Trainer`."""
    return Trainer(archive, out, cfg or TrainConfig(), resume=resume, start_from=start_from).run()
