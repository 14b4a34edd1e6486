"""Archive readers: one module per archive format, the kind detection, and the entry `read_archive`.

Layout (each module imports only modules listed before it; nothing imports `read` but this package's `__init__`):

- `rle`: SIIM-ACR's run-length masks;
- `archive`: `Archive` (records, boxes, class list, masks) and `confine` (the archive-root rule applied to it);
- `classes`: the class list (``classes=``, ``classes.txt``, each kind's default); `rows`: a label CSV's rows;
- `kinds`: which archive kind a label file is, from its header (detection only: it reads no archive);
- the formats: `nih` (the ChestX-ray14 release: `read_release`), `manifest` (`read_manifest`), `folder`
  (`read_folder`), and the kinds `vindr`, `rsna`, `siim`, `chexpert`, `padchest`, `google` (each
  ``read(files, *, classes, config) -> Archive``);
- `read`: `read_archive`, which picks the format, runs its reader and applies the rules every kind shares;
- `survey`: what an archive holds and which of its files cannot be used (`miner inspect`).

Below this package: `miner.data.records`, `miner.data.textfile`, `miner.data.image` (and its DICOM modules) and
`miner.data.confine`, none of which imports it. Above it: `miner.phantoms`.
"""
from __future__ import annotations

from miner.data.archives.archive import Archive
from miner.data.archives.read import read_archive

__all__ = ["Archive", "read_archive"]
