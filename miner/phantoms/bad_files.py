"""Break an archive on purpose: one image of each `ImageError` kind, for tests of the parts that must survive them.

`inject_bad_files` turns listed images of a release-layout archive (e.g. a phantom archive) into a missing, an
empty, a truncated and a corrupt file, and adds an image of an unsupported format (a GIF) listed in
``Data_Entry_2017.csv`` and ``test_list.txt``. Reading the archive still works; decoding those images raises
`miner.errors.ImageError` with the matching kind.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from miner.data.archives import read_archive
from miner.data.archives.nih import TEST_LIST_NAME, find_data_entry
from miner.errors import ArchiveError

BAD_KINDS: tuple[str, ...] = ("missing", "empty", "truncated", "corrupt", "unsupported")

# a valid 1x1 GIF: a format this reader recognises only to refuse it
_GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
        b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def inject_bad_files(archive_root: str | os.PathLike, *, seed: int = 0) -> dict[str, str]:
    """Damage four listed images (chosen with `seed`) and add one unsupported file; return kind -> image_id.

    Kinds: ``missing`` (file deleted), ``empty`` (zero bytes), ``truncated`` (first half kept), ``corrupt``
    (PNG signature, header and end chunk kept, the data between replaced by random bytes), ``unsupported``
    (a new GIF image ``<new patient>_000.gif``, listed in the Data_Entry file as No Finding and in
    test_list.txt).
    """
    root = Path(archive_root)
    data_entry = find_data_entry(root)
    if data_entry is None or data_entry.suffix == ".gz":
        raise ArchiveError(f"{root}: needs a release-layout archive with a plain Data_Entry_2017.csv")
    archive = read_archive(root)
    present = [r for r in archive.records if Path(r.path).is_file() and Path(r.path).stat().st_size > 64]
    if len(present) < 4:
        raise ArchiveError(f"{root}: needs at least 4 readable images to damage, found {len(present)}")
    rng = np.random.default_rng([int(seed), 0xBAD])
    chosen = [present[i] for i in rng.choice(len(present), size=4, replace=False)]
    victims = dict(zip(("missing", "empty", "truncated", "corrupt"), chosen))

    Path(victims["missing"].path).unlink()
    Path(victims["empty"].path).write_bytes(b"")
    path = Path(victims["truncated"].path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    path = Path(victims["corrupt"].path)
    data = path.read_bytes()
    keep_head, keep_tail = 33, 12  # PNG signature + IHDR chunk; IEND chunk (other formats: same idea)
    middle = rng.integers(0, 256, size=len(data) - keep_head - keep_tail, dtype=np.uint8).tobytes()
    path.write_bytes(data[:keep_head] + middle + data[-keep_tail:])

    # the unsupported file: a new patient, listed like any other image
    patients = [int(r.patient_id) for r in archive.records if r.patient_id and r.patient_id.isdigit()]
    image_id = f"{max(patients, default=0) + 1:08d}_000.gif"
    folder = Path(victims["missing"].path).parent
    (folder / image_id).write_bytes(_GIF)
    content = data_entry.read_text(encoding="utf-8")
    header = next(csv.reader(content.splitlines()[:1]))
    row = [""] * len(header)
    names = [h.strip() for h in header]
    row[names.index("Image Index")] = image_id
    row[names.index("Finding Labels")] = "No Finding"
    for name, value in (("Follow-up #", "0"), ("Patient ID", str(max(patients, default=0) + 1))):
        if name in names:
            row[names.index(name)] = value
    with open(data_entry, "a", encoding="utf-8", newline="") as f:
        if content and not content.endswith("\n"):
            f.write("\n")
        f.write(",".join(row) + "\n")
    test_list = root / TEST_LIST_NAME
    with open(test_list, "a", encoding="utf-8") as f:
        f.write(image_id + "\n")
    return {**{kind: record.image_id for kind, record in victims.items()}, "unsupported": image_id}
