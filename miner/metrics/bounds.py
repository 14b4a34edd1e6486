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

import json
import math
from collections.abc import Mapping
from pathlib import Path

from miner.errors import ArchiveError, UsageError
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


def no_bounds() -> AfpBounds:
    """AFP bounds that select every box of B (the seed's Table 3: "using all of the bboxs in B")."""
    return AfpBounds({"iou": {}, "iobb": {}}, "none: every box of B")


#: the largest bounds file read (a real one is a few kilobytes)
MAX_BOUNDS_BYTES = 1 << 20


def load_bounds(path: str | Path) -> AfpBounds:
    """Bounds from a JSON or CSV file (formats in the module docstring), read as `miner.data.textfile` states
    (UTF-8, or text with a UTF-16 byte-order mark; short lines).

    Raises:
        UsageError: a missing, unreadable or malformed file (the option's file: exit code 2).
    """
    from miner.data.textfile import LabelText, brief, csv_rows, display_path

    path = Path(path)
    where = display_path(path)
    if not path.is_file():
        raise UsageError(f"--afp-bounds: {where} does not exist")
    if path.stat().st_size > MAX_BOUNDS_BYTES:
        raise UsageError(f"--afp-bounds: {where} is larger than {MAX_BOUNDS_BYTES >> 20} MiB; a bounds file holds "
                         "a few dozen numbers")
    table: dict[str, dict[float, dict[str, float | None]]] = {"iou": {}, "iobb": {}}
    try:
        if path.suffix.lower() == ".json":
            with LabelText(path) as text:
                data = json.loads("".join(text))
            for metric, levels in data.items():
                _check_metric(metric, where)
                for level, findings in levels.items():
                    for finding, value in findings.items():
                        table[metric].setdefault(_finite(level), {})[canonical(finding)] = (
                            None if value is None else _finite(value))
        else:
            with csv_rows(path) as rows:
                first = next(rows, None)
                names = [c.strip() for c in first[1]] if first is not None else []
                need = {"metric", "threshold", "finding", "afp"}
                if not need <= set(names):
                    raise UsageError(f"--afp-bounds: {where} needs the CSV columns {', '.join(sorted(need))}")
                at = {name: names.index(name) for name in need}
                for line, row in rows:
                    if not "".join(row).strip():
                        continue
                    row = row + [""] * (len(names) - len(row))
                    metric = row[at["metric"]].strip().lower()
                    _check_metric(metric, f"{where}:{line}")
                    value = row[at["afp"]].strip()
                    table[metric].setdefault(_finite(row[at["threshold"]]), {})[canonical(row[at["finding"]])] = (
                        _finite(value) if value else None)
    except ArchiveError as err:
        raise UsageError(f"--afp-bounds: {err}") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise UsageError(f"--afp-bounds: {where} is not a valid bounds file ({brief(err)})") from None
    return AfpBounds(table, str(path))


def _finite(value: object) -> float:
    """A finite float of a bounds file's value (ValueError / TypeError otherwise)."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a number")
    out = float(value)  # type: ignore[arg-type]
    if not math.isfinite(out):
        raise ValueError(f"{value!r} is not a finite number")
    return out


def _check_metric(metric: object, where: str) -> None:
    if metric not in ("iou", "iobb"):
        raise UsageError(f"--afp-bounds: {where}: metric must be iou or iobb, got {str(metric)[:40]!r}")
