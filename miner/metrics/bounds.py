"""AFP bounds of the ChestX-ray14 protocol: where the ranked list B stops, per finding and overlap level.

Cai et al. (MICCAI 2018) select boxes from B "until the AFP reaches its upper bound, which is the corresponding
AFP value reported in [Wang et al., CVPR 2017]". Wang et al.'s table itself is not among the seed documents;
the numbers below are recovered from Cai et al.'s Table 2 (seed 000, cells "Acc.-AFP"), whose text extraction
is partly garbled:

- **Pneumonia**: all three rows survived; the bound is the ``ref.`` row's AFP (Wang et al.'s own value):
  1.02, 1.08, 1.11, 1.12, 1.13, 1.13, 1.13 at T(IoU) = 0.1 .. 0.7.
- **The other seven findings**: one "Acc - AFP" cell per level survived (the bold, best entry, i.e. Cai et al.'s
  own result, whose AFP their selection kept at or just below Wang et al.'s). Its AFP is used as the bound:
  at most about 0.02 below Wang et al.'s value, so these bounds are slightly conservative.
- **Atelectasis at T(IoU) = 0.3** reads 1.38, which cannot be right: AFP cannot fall as T rises (0.97 at
  0.2, 1.06 at 0.4, for the same boxes). It is replaced by 1.06, the largest value consistent with its
  neighbours (`REPAIRED` lists it).
- **T(IoBB)**: the seed reports none; the default is no bound (every box of B, as Cai et al.'s Table 3 uses).

Every bound can be replaced with ``miner eval --afp-bounds FILE`` (`load_bounds`): a JSON file
``{"iou": {"0.1": {"Atelectasis": 0.88, ...}, ...}, "iobb": {...}}`` or a CSV file with the columns
``metric,threshold,finding,afp`` (an empty afp means no bound). A finding or level missing from a file has no
bound.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path

from miner.errors import UsageError
from miner.findings import canonical

_FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax")

# rows: T(IoU) 0.1 .. 0.7; columns in _FINDINGS order (Cai et al. Table 2)
_TABLE2_AFP = {
    0.1: (0.88, 0.08, 0.82, 0.61, 0.65, 0.59, 1.02, 0.48),
    0.2: (0.97, 0.08, 0.90, 0.67, 0.68, 0.61, 1.08, 0.50),
    0.3: (1.06, 0.12, 0.93, 0.71, 0.69, 0.61, 1.11, 0.52),
    0.4: (1.06, 0.15, 0.95, 0.73, 0.71, 0.61, 1.12, 0.53),
    0.5: (1.07, 0.39, 0.97, 0.74, 0.71, 0.61, 1.13, 0.53),
    0.6: (1.08, 0.60, 0.99, 0.75, 0.71, 0.61, 1.13, 0.53),
    0.7: (1.08, 0.84, 0.99, 0.75, 0.71, 0.61, 1.13, 0.53),
}

#: (metric, level, finding) -> (value as extracted, value used) for cells that were corrected
REPAIRED = {("iou", 0.3, "Atelectasis"): (1.38, 1.06)}

#: the built-in bounds: {metric: {level: {finding: afp}}}
WANG_AFP: dict[str, dict[float, dict[str, float]]] = {
    "iou": {t: dict(zip(_FINDINGS, row)) for t, row in _TABLE2_AFP.items()},
    "iobb": {},
}


class AfpBounds:
    """AFP bounds by metric (``iou``/``iobb``), level and finding; `bound` is None where there is none."""

    def __init__(self, table: Mapping[str, Mapping[float, Mapping[str, float | None]]], source: str) -> None:
        self.table = {m: {round(float(t), 6): dict(v) for t, v in levels.items()} for m, levels in table.items()}
        self.source = source

    def bound(self, metric: str, level: float, finding: str) -> float | None:
        value = self.table.get(metric, {}).get(round(float(level), 6), {}).get(finding)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def default_bounds() -> AfpBounds:
    """Wang et al.'s AFP as recovered from Cai et al.'s Table 2 (module docstring); none for T(IoBB)."""
    return AfpBounds(WANG_AFP, "built-in: Wang et al. 2017 AFP via Cai et al. 2018 Table 2")


def load_bounds(path: str | Path) -> AfpBounds:
    """Bounds from a JSON or CSV file (formats in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--afp-bounds: {path} does not exist")
    table: dict[str, dict[float, dict[str, float | None]]] = {"iou": {}, "iobb": {}}
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            for metric, levels in data.items():
                _check_metric(metric, path)
                for level, findings in levels.items():
                    for finding, value in findings.items():
                        table[metric].setdefault(float(level), {})[canonical(finding)] = (
                            None if value is None else float(value))
        else:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                need = {"metric", "threshold", "finding", "afp"}
                if not reader.fieldnames or not need <= set(reader.fieldnames):
                    raise UsageError(f"--afp-bounds: {path} needs the CSV columns {', '.join(sorted(need))}")
                for row in reader:
                    metric = row["metric"].strip().lower()
                    _check_metric(metric, path)
                    value = row["afp"].strip()
                    table[metric].setdefault(float(row["threshold"]), {})[canonical(row["finding"])] = (
                        float(value) if value else None)
    except (ValueError, AttributeError, json.JSONDecodeError) as err:
        raise UsageError(f"--afp-bounds: {path} is not a valid bounds file ({err})") from None
    return AfpBounds(table, str(path))


def _check_metric(metric: str, path: Path) -> None:
    if metric not in ("iou", "iobb"):
        raise UsageError(f"--afp-bounds: {path}: metric must be iou or iobb, got {metric!r}")
