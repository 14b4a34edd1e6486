"""Does an int8 graph keep the boxes? Its fp32 graph and it mine the same held-out images through the product.

    result = export_int8("model.onnx", archive="archive/")     # miner export onnx --int8 --calibration archive/
    print(*result.lines(), sep="\n")                           # agreement, speed, and the verdict
    result.ok                                                  # meets the box target (`TARGET_IOU`, ...)

The int8 graph itself is written by `miner.export.quantize.quantize_onnx`; this module checks it the way the
product uses it, so it sits above both the exporter and the mining job (`miner.pipeline`), which the exporter
does not import:

- `archive_split`: calibration images and held-out batches of one archive, decoded, resized and clipped by
  `miner.pipeline.decode_batch` exactly as the mining job feeds the model;
- `box_agreement`: both graphs mine the held-out images (`miner.pipeline.Pipeline`, the graph's own mining and
  box settings) and the rank-1 box of every image-finding is compared (IoU), plus Acc at T(IoU) 0.3 of each
  against the archive's ground-truth boxes;
- `paired_speed`: both graphs timed on the same batch, round by round;
- `export_int8`: ``miner export onnx --int8``: quantize, check, and record the agreement in the graph's metadata.

ONNX Runtime's int8 kernels differ by CPU (VNNI, AVX2's saturating u8 x s8 pairs, ARM): the check is of this
machine's kernels; run ``miner bench export --archive`` on the CPU nodes where they differ.
"""
from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from miner.errors import UsageError

#: the targets of `miner export onnx --int8` (issue 26): rank-1 box IoU vs fp32, median over image-findings, and
#: the largest drop of Acc at T(IoU) 0.3 vs fp32 allowed
TARGET_IOU = 0.9
TARGET_ACC_DROP = 0.02
#: the throughput target, int8 images/s over fp32 images/s (ONNX Runtime CPU, same threads)
TARGET_SPEEDUP = 3.0


# ------------------------------------------------------------------------------------------ archives


@dataclass
class ArchiveSplit:
    """Images of one archive for quantization: calibration images and held-out batches with their ground truth.

    Attributes:
        calibration: np.ndarray[N, in_chans, H, W] float32 in [0, 1], as `miner.pipeline.decode_batch` feeds the
            model.
        held_out: `miner.pipeline.DecodedBatch` list, disjoint from the calibration images.
        gt: (image_id, finding) -> [(x, y, w, h)] ground-truth boxes of the held-out images (may be empty).
        archive: the archive's path; skipped: files that did not decode; calibration_ids: the image ids of
            `calibration`, in order.
    """

    calibration: np.ndarray
    held_out: list[Any]
    gt: dict[tuple[str, str], list[tuple[float, float, float, float]]]
    archive: str
    skipped: int = 0
    calibration_ids: list[str] = field(default_factory=list)

    def describe(self) -> str:
        held = sum(len(b) for b in self.held_out)
        return (f"{len(self.calibration)} images of {self.archive} (calibration), {held} other images of it "
                f"(agreement){f', {self.skipped} files did not decode' if self.skipped else ''}")


def archive_split(archive: str | Path, input_size: tuple[int, int], *, calibration: int = 64,
                  held_out: int = 256, classes: Sequence[str] | None = None, seed: int = 0,
                  batch_size: int = 16) -> ArchiveSplit:
    """`calibration` images of `archive` for the calibration pass and up to `held_out` others to check against.

    Images are drawn in a seeded random order over the whole archive (labelled or not: the images the job will
    mine); the held-out ones are taken preferring images labelled with one of `classes` (the model's findings:
    those get boxes in ``miner mine --classes labels``). Files are decoded by `miner.pipeline.decode_batch`
    (`miner.data.load_image` + `miner.data.to_model_input`: the job's path); files that fail are skipped.
    """
    from miner.data import read_archive
    from miner.pipeline import decode_batch

    arch = read_archive(archive)
    records = list(arch.records)
    if not records:
        raise UsageError(f"{archive}: the archive has no images to calibrate on")
    order = np.random.default_rng(seed).permutation(len(records))
    wanted = set(classes) if classes is not None else None
    pixels: list[np.ndarray] = []
    ids: list[str] = []
    used: set[str] = set()  # calibration images and files that did not decode
    skipped = 0
    k = 0
    while len(pixels) < calibration and k < len(order):
        chunk = [records[i] for i in order[k : k + batch_size]]
        k += len(chunk)
        batch = decode_batch([(r.image_id, r.path, r.labels, r.root) for r in chunk], input_size=input_size)
        skipped += len(batch.errors)
        used.update(e["image_id"] for e in batch.errors)
        take = calibration - len(pixels)
        pixels.extend(batch.images[:take])
        ids.extend(batch.image_ids[:take])
        used.update(batch.image_ids[:take])
    if calibration > 0 and not pixels:
        raise UsageError(f"{archive}: none of its images decoded; nothing to calibrate on")
    rest = [records[i] for i in order if records[i].image_id not in used]
    boxed = [r for r in rest if r.labels and (wanted is None or set(r.labels) & wanted)]
    chosen = (boxed + [r for r in rest if not (r.labels and (wanted is None or set(r.labels) & wanted))])[:held_out]
    batches = [decode_batch([(r.image_id, r.path, r.labels, r.root) for r in chosen[i : i + batch_size]],
                            input_size=input_size) for i in range(0, len(chosen), batch_size)]
    skipped += sum(len(b.errors) for b in batches)
    held = {i for b in batches for i in b.image_ids}
    gt: dict[tuple[str, str], list[tuple[float, float, float, float]]] = defaultdict(list)
    for b in arch.boxes:
        if b.image_id in held:
            gt[(b.image_id, b.finding)].append((b.x, b.y, b.w, b.h))
    cal = np.stack(pixels).astype(np.float32) if pixels else np.zeros((0, 1, *input_size), np.float32)
    return ArchiveSplit(cal, [b for b in batches if len(b)], dict(gt), str(archive), skipped, ids)


# ------------------------------------------------------------------------------------------ agreement


@dataclass
class Agreement:
    """How the int8 graph's boxes and maps compare with the fp32 graph's on the same images.

    Attributes:
        ious: rank-1 box IoU, int8 vs fp32, per image-finding that has a rank-1 box in either (0 when only one has).
        rho: Spearman rank correlation of each compared (image, finding) map.
        acc_fp32, acc_int8: Acc at T(IoU) 0.3 against the ground-truth boxes (macro over findings, every box of the
            ranked list, as `miner bench localize`), None without ground truth.
        images: images compared; selection: ``labels`` (the images' labelled findings, as ``miner mine``'s
            default) or ``top`` (each image's top fp32 class: an archive without labels).
    """

    ious: list[float] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    acc_fp32: float | None = None
    acc_int8: float | None = None
    gt_boxes: int = 0
    #: ground-truth boxes found (IoU >= 0.3) by fp32's boxes only, and by int8's only
    fp32_only: int = 0
    int8_only: int = 0
    images: int = 0
    selection: str = "labels"

    @property
    def pairs(self) -> int:
        return len(self.ious)

    @property
    def median_iou(self) -> float:
        return float(np.median(self.ious)) if self.ious else float("nan")

    @property
    def acc_drop(self) -> float | None:
        if self.acc_fp32 is None or self.acc_int8 is None:
            return None
        return self.acc_fp32 - self.acc_int8

    @property
    def acc_drop_noise(self) -> float:
        """Two standard errors of the paired drop in the share of ground-truth boxes found (McNemar: the boxes
        found by one graph only); 0 without ground truth."""
        if not self.gt_boxes:
            return 0.0
        return 2.0 * float(np.sqrt(self.fp32_only + self.int8_only)) / self.gt_boxes

    def ok(self, *, min_iou: float | None = None, max_acc_drop: float | None = None) -> bool:
        """The median rank-1 IoU reaches `min_iou`, and Acc at 0.3 does not drop by more than `max_acc_drop`
        beyond noise: a drop over `max_acc_drop` counts only where the paired drop in boxes found exceeds two
        standard errors (`acc_drop_noise`; a few dozen true boxes cannot tell 0.02 apart). Defaults: `TARGET_IOU`,
        `TARGET_ACC_DROP`."""
        min_iou = TARGET_IOU if min_iou is None else min_iou
        max_acc_drop = TARGET_ACC_DROP if max_acc_drop is None else max_acc_drop
        drop = self.acc_drop
        paired = (self.fp32_only - self.int8_only) / self.gt_boxes if self.gt_boxes else 0.0
        acc_ok = drop is None or drop <= max_acc_drop + 1e-12 or paired <= self.acc_drop_noise
        return bool(self.ious) and self.median_iou >= min_iou and acc_ok

    def line(self) -> str:
        if not self.ious:
            return f"no image-finding got a box in either graph ({self.images} images)"
        ious = np.asarray(self.ious)
        text = (f"rank-1 box IoU int8 vs fp32 median {np.median(ious):.3f} mean {ious.mean():.3f} "
                f"p10 {np.quantile(ious, 0.1):.3f}, >= 0.5 for {np.mean(ious >= 0.5):.0%} of {len(ious)} "
                f"image-findings ({self.images} images, findings: {self.selection}); map rank correlation mean "
                f"{np.mean(self.rho):.4f} min {np.min(self.rho):.4f}")
        if self.acc_fp32 is not None and self.acc_int8 is not None:
            text += (f"; Acc at T(IoU) 0.3 vs {self.gt_boxes} true boxes: fp32 {self.acc_fp32:.3f}, int8 "
                     f"{self.acc_int8:.3f} ({self.acc_int8 - self.acc_fp32:+.3f}; found by fp32 only "
                     f"{self.fp32_only}, by int8 only {self.int8_only})")
        return text

    def record(self) -> dict[str, Any]:
        """Summary figures for the graph's metadata."""
        out = {"median_iou": round(self.median_iou, 4), "pairs": self.pairs, "images": self.images,
               "rank_correlation": round(float(np.mean(self.rho)), 5) if self.rho else None}
        if self.acc_fp32 is not None:
            out.update(acc_fp32=round(self.acc_fp32, 4), acc_int8=round(float(self.acc_int8), 4))
        return out


def _iou(p: tuple[float, ...], q: tuple[float, ...]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    ix = max(0.0, min(p[0] + p[2], q[0] + q[2]) - max(p[0], q[0]))
    iy = max(0.0, min(p[1] + p[3], q[1] + q[3]) - max(p[1], q[1]))
    inter = ix * iy
    union = p[2] * p[3] + q[2] * q[3] - inter
    return inter / union if union > 0 else 0.0


def box_agreement(fp32: Any, int8: Any, batches: Sequence[Any],
                  gt: dict[tuple[str, str], list[tuple[float, float, float, float]]] | None = None) -> Agreement:
    """Mine `batches` (`miner.pipeline.DecodedBatch`) with both backends and compare (`Agreement`).

    Both run through `miner.pipeline.Pipeline` with the graph's own mining and box settings; the findings boxed
    are each image's labelled ones among the model's classes (``miner mine --classes labels``), or, when no image
    carries such a label, each image's top fp32 class (the same pairs for both graphs either way).
    """
    from miner.metrics.hits import found_share, group_boxes, macro
    from miner.metrics.overlap import iou
    from miner.pipeline import Pipeline

    pipes = {"fp32": Pipeline(fp32), "int8": Pipeline(int8)}
    any_labels = any(set(labels) & set(pipes["fp32"].class_names) for b in batches for labels in b.labels)
    result = Agreement(selection="labels" if any_labels else "top")
    rows: dict[str, list[tuple[str, str, int, tuple[float, ...]]]] = {"fp32": [], "int8": []}
    with torch.inference_mode():
        for batch in batches:
            images = torch.from_numpy(np.require(batch.images, requirements="W"))
            logits, maps = fp32.run(images)
            _, maps8 = int8.run(images)
            probs = torch.sigmoid(logits.float()).numpy()
            if any_labels:
                chosen = pipes["fp32"].select(probs, batch.labels)
            else:
                chosen = np.zeros(probs.shape, dtype=bool)
                chosen[np.arange(len(batch)), probs.argmax(axis=1)] = True
            result.images += len(batch)
            keep = np.flatnonzero(chosen.any(axis=1))
            if not keep.size:
                continue
            b, c = np.nonzero(chosen)
            result.rho += rank_correlation(maps8[b, c].float(), maps[b, c].float()).tolist()
            sizes = [tuple(int(v) for v in s) for s in batch.sizes]
            for name, m in (("fp32", maps), ("int8", maps8)):
                _, found = pipes[name].mine_maps(m, images, chosen, sizes)
                for i, boxes in enumerate(found):
                    for box in boxes:
                        rows[name].append((batch.image_ids[i], pipes[name].class_names[box["class_index"]],
                                           int(box["rank"]), (float(box["x"]), float(box["y"]), float(box["w"]),
                                                              float(box["h"]))))
    first = {name: {(r[0], r[1]): r[3] for r in rs if r[2] == 1} for name, rs in rows.items()}
    for key in sorted(set(first["fp32"]) | set(first["int8"])):
        a, q = first["fp32"].get(key), first["int8"].get(key)
        result.ious.append(_iou(a, q) if a is not None and q is not None else 0.0)
    if gt:
        boxed = {(i, f) for b in batches for i, labels in zip(b.image_ids, b.labels) for f in labels}
        keys = sorted(k for k in gt if k in boxed and k[1] in pipes["fp32"].class_names)
        if keys:
            result.gt_boxes = sum(len(gt[k]) for k in keys)
            grouped = {name: group_boxes(rs) for name, rs in rows.items()}
            acc = {name: macro(found_share(g, gt, 0.3, keys)) for name, g in grouped.items()}
            result.acc_fp32, result.acc_int8 = acc["fp32"], acc["int8"]
            for key in keys:
                truth = np.asarray(gt[key], float).reshape(-1, 4)
                hit = {}
                for name, g in grouped.items():
                    boxes = np.asarray([b for _, b in g.get(key, ())], float).reshape(-1, 4)
                    hit[name] = ((iou(boxes, truth) >= 0.3 - 1e-12).any(axis=0) if len(boxes)
                                 else np.zeros(len(truth), bool))
                result.fp32_only += int((hit["fp32"] & ~hit["int8"]).sum())
                result.int8_only += int((hit["int8"] & ~hit["fp32"]).sum())
    return result


@dataclass
class Speed:
    """Seconds per batch of each graph, timed in the same rounds (`paired_speed`)."""

    fp32: list[float]
    int8: list[float]
    batch: int
    threads: int | None
    load: tuple[float, float, float]

    @property
    def ratio(self) -> float:
        """Median over rounds of fp32 time / int8 time in the same round (load drift between rounds cancels)."""
        return statistics.median(a / b for a, b in zip(self.fp32, self.int8))

    def line(self) -> str:
        f, q = statistics.median(self.fp32), statistics.median(self.int8)
        return (f"images/s int8 {self.batch / q:.1f} vs fp32 {self.batch / f:.1f}: {self.ratio:.2f}x (median of "
                f"{len(self.fp32)} paired rounds, batch {self.batch}, {self.threads or 'all'} threads, load average "
                f"{' '.join(f'{v:.2f}' for v in self.load)})")


def paired_speed(fp32: Any, int8: Any, images: torch.Tensor, *, rounds: int = 7) -> Speed:
    """Time both backends on `images`, alternating within each round (after one warm-up run each)."""
    import os

    runs = {"fp32": fp32, "int8": int8}
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    with torch.inference_mode():
        for backend in runs.values():
            backend.run(images)
        for k in range(rounds):
            for name in (("fp32", "int8") if k % 2 == 0 else ("int8", "fp32")):
                t0 = time.perf_counter()
                runs[name].run(images)
                times[name].append(time.perf_counter() - t0)
    return Speed(times["fp32"], times["int8"], int(images.shape[0]), getattr(fp32, "intra_op_threads", None),
                 tuple(os.getloadavg()))


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps: a, b (Tensor[N, h, w]) -> Tensor[N].

    Ties get arbitrary distinct ranks (maps are continuous, ties are rare outside all-zero regions).
    """
    def ranks(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        order = flat.argsort(dim=1)
        r = torch.empty_like(flat)
        r.scatter_(1, order, torch.arange(flat.shape[1], dtype=flat.dtype).expand_as(flat).contiguous())
        return r

    ra, rb = ranks(a.double()), ranks(b.double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denom = ra.norm(dim=1) * rb.norm(dim=1)
    return (ra * rb).sum(dim=1) / denom.clamp_min(1e-12)


# ------------------------------------------------------------------------------------------ miner export onnx --int8


def int8_path(out: str | Path) -> Path:
    """Where ``miner export onnx OUT --int8`` writes the int8 graph: ``OUT`` with ``.int8`` before its suffix
    (``model.onnx`` -> ``model.int8.onnx``)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.int8{out.suffix or '.onnx'}")


@dataclass
class Int8Result:
    """What `export_int8` wrote and measured."""

    path: Path
    kind: str
    calibration: str
    float_parts: dict[str, Any]
    agreement: Agreement
    speed: Speed | None
    checked_on: str

    @property
    def ok(self) -> bool:
        return self.kind == "static" and self.agreement.ok()

    def lines(self) -> list[str]:
        parts = ", ".join(self.float_parts.get("parts", [])) or "nothing"
        out = [f"{self.path} (int8 QDQ {self.kind}, U8S8 for ONNX Runtime on CPU; calibrated on {self.calibration}; "
               f"kept float: {parts}: {', '.join(self.float_parts.get('nodes', []))}"
               + (f"; int8 in, float out: {', '.join(self.float_parts['float_outputs'])}"
                  if self.float_parts.get("float_outputs") else "") + ")",
               f"int8 vs fp32 on {self.checked_on}: {self.agreement.line()}"]
        if self.speed is not None:
            out.append(f"int8 vs fp32 {self.speed.line()}")
        a = self.agreement
        verdict = (f"{'meets' if self.ok else 'MISSES'} the box target (median rank-1 IoU >= {TARGET_IOU:g}, Acc at "
                   f"0.3 within {TARGET_ACC_DROP:g} of fp32")
        drop = a.acc_drop
        if drop is not None and drop > TARGET_ACC_DROP and a.ok():
            verdict += (f"; its drop of {drop:.3f} is within the noise of {a.gt_boxes} true boxes: "
                        f"{a.fp32_only} found by fp32 only, {a.int8_only} by int8 only")
        verdict += ")"
        if self.speed is not None:
            verdict += (f"; the speed target (>= {TARGET_SPEEDUP:g}x) is "
                        f"{'met' if self.speed.ratio >= TARGET_SPEEDUP else 'missed'} on this machine")
        out.append(verdict)
        return out


def export_int8(src: str | Path, dst: str | Path | None = None, *, archive: str | Path | None = None,
                calibration: int = 64, check_images: int = 128, keep_float: Sequence[str] | None = None,
                calibrate: str = "minmax", threads: int | None = None, speed_rounds: int = 5, seed: int = 0,
                workdir: str | Path | None = None) -> Int8Result:
    """The int8 graph of ``miner export onnx --int8``: quantize the fp32 graph `src` and check it against `src`.

    Calibration reads `calibration` images of `archive` through the job's decode path (`archive_split`); the check
    mines up to `check_images` other images of it with both graphs (`box_agreement`) and times both on one batch
    (`paired_speed`). Without an archive, calibration uses phantom chests (`calibration_images`) and the check a
    phantom archive written to a temporary folder (seed 99, never trained on). The agreement is recorded in the
    graph's metadata (``quantization_agreement``).
    """
    import shutil
    import tempfile

    from miner.backends import open_backend
    from miner.export.quantize import calibration_images, float_record, quantize_onnx, write_int8_metadata
    from miner.models.meta import read_onnx_metadata

    src = Path(src)
    dst = Path(dst) if dst is not None else int8_path(src)
    meta = read_onnx_metadata(src)
    tmp: Path | None = None
    try:
        if archive is not None:
            split = archive_split(archive, meta.input_size, calibration=calibration, held_out=check_images,
                                  classes=meta.classes, seed=seed)
            images = [split.calibration[i : i + 1] for i in range(len(split.calibration))]
            label = f"{len(images)} images of {archive}"
            checked_on = f"{sum(len(b) for b in split.held_out)} other images of {archive}"
        else:
            from miner.phantoms import make_phantoms

            images = calibration_images(meta.input_size, meta.in_chans, count=calibration)
            label = f"{len(images)} phantom chests"
            tmp = Path(tempfile.mkdtemp(prefix="miner-int8-check-", dir=workdir))
            make_phantoms(tmp / "phantoms", images=check_images, size=max(meta.input_size), seed=99, overwrite=True)
            split = archive_split(tmp / "phantoms", meta.input_size, calibration=0, held_out=check_images,
                                  classes=meta.classes)
            checked_on = f"{sum(len(b) for b in split.held_out)} phantom images (seed 99)"
        kind = quantize_onnx(src, dst, images=images, keep_float=keep_float, calibrate=calibrate,
                             calibration=label)
        fp32 = open_backend(src, backend="onnxruntime", provider="cpu", intra_op_threads=threads, spinning=False)
        int8 = open_backend(dst, backend="onnxruntime", provider="cpu", intra_op_threads=threads, spinning=False)
        agreement = box_agreement(fp32, int8, split.held_out, split.gt)
        speed = None
        if speed_rounds and split.held_out:
            speed = paired_speed(fp32, int8, torch.from_numpy(split.held_out[0].images.copy()), rounds=speed_rounds)
        meta8 = read_onnx_metadata(dst)
        record = {"quantization_agreement": json.dumps({**agreement.record(), "on": checked_on,
                                                        **({"speedup": round(speed.ratio, 3)} if speed else {})})}
        write_int8_metadata(dst, meta8, record)
        return Int8Result(dst, kind, label, float_record(dst), agreement, speed, checked_on)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
