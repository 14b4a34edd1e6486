"""Reading a mining job's output folder back: mined images, their sizes and probabilities, error rows, the archive.

`miner eval` and `miner labels` take ``OUT`` (what `miner mine` wrote, `miner.io`): `read_output` gathers the
``images/`` and ``errors/`` datasets and the manifest, and `JobOutput.archive` reads the mined archive again as
the job read it (its recorded path and `miner.config.ArchiveConfig` options).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from miner.errors import UsageError

if TYPE_CHECKING:
    from miner.data.archives import Archive


@dataclass
class JobOutput:
    """What a finished (or resumed) job wrote.

    Attributes:
        root: the output folder.
        manifest: ``_manifest.json`` as a dict.
        classes: the model's classes (the order of ``probs``).
        image_ids: the mined images (rows of ``images/``), in file order.
        sizes: image_id -> (height, width) of the original image.
        box_counts: image_id -> number of boxes the job wrote for it.
        probs: np.ndarray[N, C] float32, row n = image_ids[n].
        errors: one dict per error row (image_id, path, kind, error).
    """

    root: Path
    manifest: dict[str, Any]
    classes: tuple[str, ...]
    image_ids: list[str]
    sizes: dict[str, tuple[int, int]]
    box_counts: dict[str, int]
    probs: np.ndarray
    errors: list[dict[str, str]] = field(default_factory=list)

    def archive(self, *, path: str | Path | None = None, uncertain: str | None = None) -> Archive:
        """The mined archive, read as the job read it: `path` overrides the recorded place (e.g. after a move),
        `uncertain` the recorded uncertainty policy."""
        from dataclasses import fields

        from miner.config import ArchiveConfig
        from miner.data import read_archive

        recorded = self.manifest.get("archive", {})
        where = path or recorded.get("path")
        if not where:
            raise UsageError(f"{self.root}/_manifest.json names no archive; pass --archive")
        if path is None and not Path(where).exists():
            raise UsageError(f"{self.root}: the mined archive {where} is not there any more; pass --archive with "
                             "its new place")
        names = {f.name for f in fields(ArchiveConfig)}
        options = {k: v for k, v in (recorded.get("options") or {}).items() if k in names}
        if uncertain is not None:
            options["uncertain"] = uncertain
        return read_archive(where, config=ArchiveConfig(**options))


def is_output(path: str | Path) -> bool:
    """Whether `path` is a job's output folder (it has ``_manifest.json`` and ``images/``)."""
    path = Path(path)
    return path.is_dir() and (path / "_manifest.json").is_file() and (path / "images").is_dir()


def read_output(path: str | Path) -> JobOutput:
    """Read ``OUT`` (module docstring).

    Raises:
        UsageError: `path` is not a job's output folder.
        ContractError: its manifest or a part of ``images/`` or ``errors/`` breaks the output contract
            (`miner.io.read_part`).
    """
    import pyarrow.compute as pc

    from miner.io import ContractError, read_folder, read_manifest, shown

    root = Path(path)
    if root.name in ("boxes", "images", "errors") and is_output(root.parent):
        root = root.parent
    if not is_output(root):
        raise UsageError(f"{shown(path)}: not a mining job's output folder (no _manifest.json and images/); give "
                         "the OUT of miner mine")
    manifest = read_manifest(root) or {}
    classes = tuple(manifest.get("model", {}).get("classes") or ())
    table = read_folder(root / "images", "images")  # every part checked against the contract
    ids = table.column("image_id").to_pylist()
    heights, widths = table.column("height").to_pylist(), table.column("width").to_pylist()
    counts = table.column("boxes").to_pylist()
    lengths = sorted(set(pc.list_value_length(table.column("probs")).to_pylist()))
    if len(lengths) > 1 or (ids and classes and lengths != [len(classes)]):
        raise ContractError(f"{shown(root / 'images')}: the probs lists hold {' or '.join(map(str, lengths))} "
                            f"values where the manifest names {len(classes)} classes; the output folder is damaged: "
                            "rerun miner mine with --overwrite")
    probs = (np.asarray(table.column("probs").to_pylist(), dtype=np.float32).reshape(len(ids), lengths[0]) if ids
             else np.zeros((0, len(classes)), np.float32))
    errors = []
    if (root / "errors").is_dir():
        errors = read_folder(root / "errors", "errors").to_pylist()
    return JobOutput(root=root, manifest=manifest, classes=classes, image_ids=ids,
                     sizes={i: (int(h), int(w)) for i, h, w in zip(ids, heights, widths)},
                     box_counts=dict(zip(ids, (int(c) for c in counts))), probs=probs, errors=errors)
