"""Archives and images: reading archives (`miner.data.archives`), decoding images, the archive-root rule.

Public API (see docs in each module):

- `read_archive(path, *, classes=None, config=None) -> Archive` (`miner.data.archives`: one reader per format)
- `Record`, `GroundTruthBox` (`miner.data.records`)
- `load_image(path) -> (image [H, W] float32 in [0, 1], (H, W))`, `probe_image(path)`, `to_model_input(image, size)`
  (`miner.data.image`; DICOM in `miner.data.dicom`, its decompression bounds in `miner.data.dicom_bounds`)

Also here: `miner.data.textfile` (label text files read as untrusted input) and `miner.data.confine` (the
archive-root rule). These modules never import `miner.data.archives`; phantom archives are `miner.phantoms`.
"""
from __future__ import annotations

from miner.data.archives import Archive, read_archive
from miner.data.image import load_image, probe_image, to_model_input
from miner.data.records import GroundTruthBox, Record

__all__ = [
    "Archive",
    "GroundTruthBox",
    "Record",
    "load_image",
    "probe_image",
    "read_archive",
    "to_model_input",
]
