"""The run-length encoding of the SIIM-ACR Pneumothorax challenge (``train-rle.csv``'s ``EncodedPixels``).

The masks are 1024 x 1024. Pixels are numbered **column-major** (down the first column, then the next:
flat index = column * height + row, the transposed raster order of the challenge's ``mask_functions.py``),
and the string holds pairs ``start length`` where the first start is absolute and every later start is
counted from the end of the previous run (``rle2mask`` adds it to the current position). ``-1`` means an
empty mask (no pneumothorax). `rle_encode` writes exactly the strings of the challenge's ``mask2rle``, so a
decoded and re-encoded mask gives back its string.
"""
from __future__ import annotations

import numpy as np

from miner.errors import ArchiveError

#: the side of every SIIM-ACR mask (the challenge's DICOMs are 1024 x 1024)
SIIM_MASK_SIZE: tuple[int, int] = (1024, 1024)
EMPTY = "-1"


def is_empty(text: str) -> bool:
    """Whether an ``EncodedPixels`` value means "no mask" (``-1``, possibly with spaces)."""
    return text.strip() == EMPTY


def rle_runs(text: str, *, size: int, where: str = "EncodedPixels") -> np.ndarray:
    """np.ndarray[R, 2] int64 of absolute (start, stop) flat indices (column-major) of the runs of `text`.

    Raises:
        ArchiveError: not pairs of non-negative integers, or a run outside the `size` pixels.
    """
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise ArchiveError(f"{where}: {text[:40]!r} is not a run-length string (pairs of integers)") from None
    if values.size % 2 or (values < 0).any():
        raise ArchiveError(f"{where}: a run-length string holds pairs of non-negative integers, got "
                           f"{values.size} values starting {text[:40]!r}")
    pairs = values.reshape(-1, 2)
    ends = np.cumsum(pairs[:, 0] + pairs[:, 1])  # stop of each run (exclusive)
    starts = ends - pairs[:, 1]
    if ends.size and ends[-1] > size:
        raise ArchiveError(f"{where}: a run ends at pixel {int(ends[-1])}, beyond the mask's {size} pixels")
    return np.stack([starts, ends], axis=1)


def rle_decode(text: str, shape: tuple[int, int] = SIIM_MASK_SIZE, *, where: str = "EncodedPixels") -> np.ndarray:
    """A SIIM run-length string -> mask np.ndarray[H, W] bool (``-1`` -> all False)."""
    height, width = shape
    flat = np.zeros(height * width, dtype=bool)
    if not is_empty(text):
        runs = rle_runs(text, size=flat.size, where=where)
        for start, stop in runs.tolist():
            flat[start:stop] = True
    return flat.reshape(width, height).T  # column-major: flat index = column * height + row


def rle_encode(mask: np.ndarray) -> str:
    """mask np.ndarray[H, W] (nonzero = on) -> the challenge's run-length string (``-1`` when empty).

    As the challenge's ``mask2rle``: a run still open at the last pixel is not written.
    """
    mask = np.asarray(mask)
    flat = (mask if mask.dtype == np.bool_ else mask != 0).T.ravel()  # column-major
    if not flat.any():
        return EMPTY
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # first pixel of every change
    if flat[0]:
        edges = np.concatenate([[0], edges])
    starts, stops = edges[0::2], edges[1::2]
    starts = starts[: len(stops)]  # mask2rle drops a run that reaches the end of the image
    if not len(starts):
        return EMPTY
    previous = np.concatenate([[0], stops[:-1]])
    pairs = np.stack([starts - previous, stops - starts], axis=1)
    return " ".join(str(int(v)) for v in pairs.ravel())


def rle_box(text: str, shape: tuple[int, int] = SIIM_MASK_SIZE, *,
            where: str = "EncodedPixels") -> tuple[float, float, float, float] | None:
    """The box (x, y, w, h in pixels, covering every pixel of the mask) of one run-length mask; None if empty.

    Computed from the runs without drawing the mask: a run covers rows ``start % H .. (stop - 1) % H`` of
    columns ``start // H .. (stop - 1) // H`` (all rows of the columns strictly between).
    """
    if is_empty(text):
        return None
    height, width = shape
    runs = rle_runs(text, size=height * width, where=where)
    runs = runs[runs[:, 1] > runs[:, 0]]
    if not runs.size:
        return None
    first, last = runs[:, 0], runs[:, 1] - 1
    col0, col1 = first // height, last // height
    row0, row1 = first % height, last % height
    spans = col1 > col0  # runs over a column boundary cover the top of the next column and the bottom of this
    top = np.where(spans, 0, row0).min()
    bottom = np.where(spans, height - 1, row1).max()
    x0, x1 = int(col0.min()), int(col1.max())
    return float(x0), float(top), float(x1 - x0 + 1), float(bottom - top + 1)
