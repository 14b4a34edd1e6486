"""The rows of an archive: one `Record` per image, one `GroundTruthBox` per annotated lesion."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Record:
    """One image of an archive.

    Attributes:
        image_id: the archive's name for the image, e.g. ``"00000003_000.png"`` (the key of box rows).
        path: absolute path of the image file (not checked for existence when the archive is read).
        labels: canonical finding names (`miner.findings.canonical`), in the order the archive lists
            them; empty for ``No Finding`` (and for unlabelled archives, see `Archive.has_labels`).
        split: ``"train"`` (ChestX-ray14's train_val list), ``"test"``, another archive's own split name
            (CheXpert ``"valid"``, Google's relabels ``"val"``), or None when the archive has no split for it.
        patient_id: the patient's id as the archive writes it (``"3"`` for ``00000003_000.png``), or None.
        follow_up: the follow-up index (``Follow-up #``), or None.
        view: the view position (``PA``/``AP``), or None.
        unknown: findings whose label is not known for this image: left out of label-based scores (CheXpert's
            uncertain ``-1`` under the ``ignore`` policy; every class of a PadChest row without labels).
        root: the resolved folder this image's file must lie under, checked right before the file is opened
            (the archive-root rule, `miner.data.confine`); None = no rule (``--allow-outside-archive``, or a
            record not read by `read_archive`). Set by `read_archive`; not part of equality or repr.
    """

    image_id: str
    path: str
    labels: tuple[str, ...] = ()
    split: str | None = None
    patient_id: str | None = None
    follow_up: int | None = None
    view: str | None = None
    unknown: tuple[str, ...] = ()
    root: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class GroundTruthBox:
    """One annotated box (BBox_List_2017.csv convention): x, y, w, h in original image pixels.

    ``x, y`` is the top-left corner, ``w, h`` the extent; the box covers ``[x, x + w) x [y, y + h)``.
    ``reader`` names the radiologist who drew it where an archive keeps several readers' boxes (VinDr-CXR's
    ``rad_id``), else None; `miner.metrics.readers` turns several readers' boxes into one ground truth.
    """

    image_id: str
    finding: str
    x: float
    y: float
    w: float
    h: float
    reader: str | None = None

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) with x1 = x + w, y1 = y + h (the in-code convention)."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)
