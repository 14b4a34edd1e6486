"""What an archive holds and which of its files cannot be used (`miner inspect`).

`survey_archive` counts images per finding and split, boxes per finding, and checks the image files:
cheaply by default (existence, size, format magic, PNG/JPEG end marker, size from the header: no pixel
decode; `miner.data.image.probe_image`), or by a full decode with ``deep=True`` (`load_image`), which also
catches corrupt pixel data behind an intact header. A file that resolves outside the archive's root
(`miner.data.confine`) is never opened: every such record is counted and listed as ``outside_archive``, whether
sampled or not; the others are checked again right before they are opened.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from miner.data.archives.archive import Archive
from miner.data.archives.kinds import TITLES
from miner.data.confine import check_inside, outside_records
from miner.data.image import load_image, probe_image
from miner.errors import ImageError

#: how many problems a survey lists in full (all are counted)
MAX_LISTED = 1000


def _check_one(path: str, root: str | None,
               deep: bool) -> tuple[str | None, tuple[int, int] | None, ImageError | None]:
    try:
        path = check_inside(path, root)
        if deep:
            _, size = load_image(path)
            fmt = probe_image(path)[0]
            return fmt, size, None
        fmt, size = probe_image(path)
        return fmt, size, None
    except ImageError as err:
        return None, None, err


def survey_archive(
    archive: Archive,
    *,
    deep: bool = False,
    sample: int | None = None,
    seed: int = 0,
    workers: int = 8,
    progress: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Counts and file checks of an archive, as a JSON-ready dict.

    Args:
        archive: from `read_archive`.
        deep: decode every checked file fully (slower; finds corrupt pixel data).
        sample: check only this many files, drawn at random with `seed` (None: every file).
        workers: threads checking files (I/O bound; decoding releases the GIL).
        progress: show a progress bar.

    Returns:
        dict with ``images``, ``splits``, ``no_finding``, ``findings`` (per finding: images per split and
        boxes), ``boxes``, ``sizes``, ``formats``, ``checked``, ``problems`` (image_id, path, kind,
        detail; at most `MAX_LISTED`), ``problem_counts`` and box consistency counts.
    """
    records = archive.records
    order = {"train": 0, "test": 1, "none": 3}
    split_names = sorted({r.split or "none" for r in records}, key=lambda s: (order.get(s, 2), s))
    splits = Counter(r.split or "none" for r in records)
    findings: dict[str, dict] = {}
    no_finding: Counter = Counter()
    if archive.has_labels:
        names = list(archive.classes) + sorted({lab for r in records for lab in r.labels} - set(archive.classes))
        findings = {name: {"images": 0, **{s: 0 for s in split_names}, "boxes": 0, "images_with_boxes": 0}
                    for name in names}
        for r in records:
            if not r.labels:
                no_finding["images"] += 1
                no_finding[r.split or "none"] += 1
            for lab in r.labels:
                findings[lab]["images"] += 1
                findings[lab][r.split or "none"] += 1
    by_id = {r.image_id: r for r in records}
    boxed_images: dict[str, set] = {}
    for b in archive.boxes:
        entry = findings.setdefault(b.finding, {"images": 0, **{s: 0 for s in split_names}, "boxes": 0,
                                                "images_with_boxes": 0})
        entry["boxes"] += 1
        boxed_images.setdefault(b.finding, set()).add(b.image_id)
    for finding, ids in boxed_images.items():
        findings[finding]["images_with_boxes"] = len(ids)

    beyond = outside_records(records, archive.confined_to)  # outside the archive's root: never opened
    beyond_ids = {id(r) for r, _ in beyond}
    indices = np.asarray([i for i, r in enumerate(records) if id(r) not in beyond_ids], dtype=np.int64)
    if sample is not None and sample < len(indices):
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=sample, replace=False))
    paths = [records[i].path for i in indices]
    roots = [records[i].root for i in indices]
    results = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        iterator = pool.map(lambda p, r: _check_one(p, r, deep), paths, roots,
                            chunksize=64 if len(paths) > 1000 else 1)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(paths), desc="checking", unit="file")
        for n, result in enumerate(iterator, start=1):
            results.append(result)
            if on_progress is not None:
                on_progress(n)

    sizes: Counter = Counter()
    formats: Counter = Counter()
    problems = []
    kinds: Counter = Counter()
    size_of: dict[str, tuple[int, int]] = {}
    for record, real in beyond:
        kinds["outside_archive"] += 1
        if len(problems) < MAX_LISTED:
            problems.append({"image_id": record.image_id, "path": record.path, "kind": "outside_archive",
                             "detail": f"resolves to {real}, outside the archive's root; not opened"})
    for i, (fmt, size, err) in zip(indices, results):
        record = records[i]
        if err is not None:
            kinds[err.kind] += 1
            if len(problems) < MAX_LISTED:
                problems.append({"image_id": record.image_id, "path": record.path, "kind": err.kind,
                                 "detail": err.detail})
            continue
        formats[fmt] += 1
        if size is not None:
            sizes[size] += 1
            size_of[record.image_id] = size
        else:
            sizes["unknown"] += 1

    outside = 0
    for b in archive.boxes:
        size = size_of.get(b.image_id)
        if size is not None and (b.x < 0 or b.y < 0 or b.x + b.w > size[1] + 1e-6 or b.y + b.h > size[0] + 1e-6):
            outside += 1
    known = [s for s in sizes if s != "unknown"]
    return {
        "archive": str(archive.root),
        "source": archive.source,
        "kind": TITLES.get(archive.source, archive.source),
        "label_files": [str(p) for p in archive.label_files],
        "details": archive.details,
        "exhaustive": archive.exhaustive,
        "masks": len(archive.mask_rle or {}) if archive.mask_rle is not None else None,
        "unknown_labels": sum(len(r.unknown) for r in records),
        "classes": list(archive.classes),
        "labelled": archive.has_labels,
        "images": len(records),
        "splits": {s: splits[s] for s in split_names},
        "no_finding": {"images": no_finding["images"], **{s: no_finding[s] for s in split_names}}
        if archive.has_labels else None,
        "findings": findings,
        "boxes": len(archive.boxes),
        "images_with_boxes": len({b.image_id for b in archive.boxes}),
        "boxes_without_image": sum(1 for b in archive.boxes if b.image_id not in by_id),
        "boxes_outside_image": outside,
        "check": "deep: full decode" if deep else "cheap: existence, size, format, end marker, header",
        "checked": len(paths) + len(beyond),
        "root": str(archive.confined_to) if archive.confined_to is not None else None,
        "duplicates": {"images": len(archive.duplicates),
                       "rows dropped": sum(n - 1 for n in archive.duplicates.values()),
                       "first": dict(list(archive.duplicates.items())[:10])},
        "formats": dict(formats.most_common()),
        "sizes": {
            "distinct": [{"height": h, "width": w, "images": n} for (h, w), n in
                         sorted(((s, n) for s, n in sizes.items() if s != "unknown"), key=lambda t: -t[1])[:20]],
            "unknown": sizes.get("unknown", 0),
            "min": [min(h for h, _ in known), min(w for _, w in known)] if known else None,
            "max": [max(h for h, _ in known), max(w for _, w in known)] if known else None,
        },
        "problem_counts": dict(kinds.most_common()),
        "problems": problems,
    }
