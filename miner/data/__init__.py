"""Archives and images: reading the ChestX-ray14 release layout, manifests and DICOM; phantom archives.

Public API (see docs in each module):

- `read_archive(path, *, classes=None) -> Archive` (`miner.data.archive`)
- `Record`, `GroundTruthBox` (`miner.data.records`)
- `load_image(path) -> (image [H, W] float32 in [0, 1], (H, W))`, `to_model_input(image, size)`
  (`miner.data.image`)
- `make_phantoms(out, *, images, size, seed, masks=False, ...) -> Archive` (`miner.data.phantoms`)
"""
from __future__ import annotations

from miner.data.archive import Archive, read_archive
from miner.data.image import load_image, probe_image, to_model_input
from miner.data.records import GroundTruthBox, Record

__all__ = [
    "Archive",
    "GroundTruthBox",
    "Record",
    "load_image",
    "make_phantoms",
    "probe_image",
    "read_archive",
    "to_model_input",
]


def __getattr__(name: str):
    if name == "make_phantoms":  # keeps `import miner.data` free of the generator's imports
        from miner.data.phantoms import make_phantoms

        return make_phantoms
    raise AttributeError(f"module 'miner.data' has no attribute {name!r}")
