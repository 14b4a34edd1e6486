"""Image-level ROC AUC of a mining job's probabilities against an archive's labels, where their findings meet.

Archives without boxes (CheXpert, PadChest, Google's relabels) still say which images show a finding: `label_auc`
scores the classifier's probability of every finding that both the model and the archive know (canonical names,
`miner.findings`) over the mined images, leaving out images whose label is unknown (`Record.unknown`: CheXpert's
uncertain labels under ``--uncertain ignore``, PadChest rows without labels). AUC itself is
`miner.train.auc.roc_auc` (Mann-Whitney U with midranks).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from miner.data.archives import Archive


@dataclass
class AucResult:
    """AUC of one finding: images scored (label known), positives among them, images left out as unknown."""

    finding: str
    images: int
    positives: int
    unknown: int
    auc: float


def label_auc(
    probs: np.ndarray,
    classes: Sequence[str],
    image_ids: Sequence[str],
    archive: Archive,
    *,
    findings: Sequence[str] | None = None,
) -> list[AucResult]:
    """AUC per finding in ``classes`` (the model's, the columns of `probs`) that `archive`'s class list holds.

    Args:
        probs: np.ndarray[N, C] of the mined images' probabilities (row n = ``image_ids[n]``).
        classes: the model's classes (C).
        image_ids: the mined images; ids the archive does not list are left out.
        archive: a `miner.data.Archive`.
        findings: only these (default: every finding both know, in the model's order).
    """
    from miner.train.auc import roc_auc

    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(image_ids), len(classes)):
        raise ValueError(f"probs {probs.shape} does not match {len(image_ids)} images x {len(classes)} classes")
    by_id = {r.image_id: r for r in archive.records}
    rows = [n for n, i in enumerate(image_ids) if i in by_id]
    records = [by_id[image_ids[n]] for n in rows]
    wanted = [f for f in classes if f in set(archive.classes) and (findings is None or f in findings)]
    out = []
    for finding in wanted:
        c = list(classes).index(finding)
        known = np.array([finding not in r.unknown for r in records], dtype=bool)
        labels = np.array([finding in r.labels for r in records], dtype=bool)
        scores = probs[rows, c] if rows else np.zeros(0)
        auc = roc_auc(scores[known], labels[known]) if known.any() else math.nan
        out.append(AucResult(finding=finding, images=int(known.sum()), positives=int(labels[known].sum()),
                             unknown=int((~known).sum()), auc=auc))
    return out


def format_auc(results: Sequence[AucResult]) -> str:
    """One row per finding: images scored, positives, unknown labels left out, AUC (``-`` where undefined)."""
    head = ["finding", "images", "positives", "unknown", "AUC"]
    rows = [[r.finding, str(r.images), str(r.positives), str(r.unknown), "-" if math.isnan(r.auc) else f"{r.auc:.3f}"]
            for r in results]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row) for row in [head, *rows])


def results_json(results: Sequence[AucResult]) -> list[dict]:
    """Plain dicts (for ``--json``)."""
    return [asdict(r) for r in results]
