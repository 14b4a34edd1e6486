"""Training data: a torch Dataset over an archive's records, a patient-level validation split, augmentation.

Images go through `miner.data.load_image` + `to_model_input` (the same resize as mining) and stay in [0, 1]:
models normalise inside. An image that cannot be decoded is reported once and left out of its batch.
With ``cache=True`` every image is decoded once (in parallel, through a DataLoader) into one float16 tensor
[N, 1, S, S] before training; batches are then sliced from memory in the main process.
"""
from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from miner.data import Record, to_model_input
from miner.data.confine import load_record
from miner.errors import ImageError


def labels_of(records: Sequence[Record], classes: Sequence[str]) -> np.ndarray:
    """Multi-hot labels (np.ndarray[N, C] float32) of `records` over `classes`."""
    index = {name: c for c, name in enumerate(classes)}
    out = np.zeros((len(records), len(classes)), dtype=np.float32)
    for n, record in enumerate(records):
        for label in record.labels:
            if label in index:
                out[n, index[label]] = 1.0
    return out


def split_validation(records: Sequence[Record], fraction: float, *, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """Hold out about `fraction` of the patients (image id when a record has none) for validation.

    Deterministic (a hash of seed and patient id), so a resumed run validates on the same images, and no
    patient has images on both sides.
    """
    if fraction <= 0:
        return list(records), []
    train, val = [], []
    for record in records:
        key = record.patient_id or record.image_id
        h = int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")
        (val if h / 2**64 < fraction else train).append(record)
    if not train or not val:  # tiny archives: fall back to a split by position
        k = max(1, int(round(len(records) * fraction)))
        return list(records[:-k]), list(records[-k:])
    return train, val


class ArchiveDataset(Dataset):
    """item i -> (image Tensor[1, S, S] float32 in [0, 1], target Tensor[C] float32, i), or None if undecodable."""

    def __init__(self, records: Sequence[Record], classes: Sequence[str], size: int, *, cache: bool = False) -> None:
        self.records = list(records)
        self.classes = tuple(classes)
        self.size = int(size)
        self.targets = torch.from_numpy(labels_of(self.records, self.classes))
        self.images: Tensor | None = None  # the cache, once filled
        self.bad: dict[int, str] = {}
        self.want_cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def decode(self, i: int) -> Tensor | ImageError:
        """Image i as Tensor[1, S, S] float32, or the ImageError that prevented it (reported by the caller)."""
        try:
            image, _ = load_record(self.records[i])  # checked against the archive's root (miner.data.confine)
        except ImageError as err:
            return err
        return torch.from_numpy(to_model_input(image, self.size))

    def __getitem__(self, i: int):
        if self.images is not None:
            if i in self.bad:
                return None
            return self.images[i].float(), self.targets[i], i
        image = self.decode(i)
        if isinstance(image, ImageError):
            print(f"miner train: skipping {image}", file=sys.stderr)
            return None
        return image, self.targets[i], i

    def preload(self, *, workers: int = 0, progress: bool = False) -> None:
        """Decode every image once into memory (float16); undecodable ones are recorded in `bad`."""
        if self.images is not None:
            return
        out = torch.zeros(len(self), 1, self.size, self.size, dtype=torch.float16)
        loader = DataLoader(_Decode(self), batch_size=64, num_workers=workers, collate_fn=list,
                            worker_init_fn=worker_init)
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, desc="decode", unit="batch", leave=False)
        for chunk in loader:
            for i, image in chunk:
                if isinstance(image, ImageError):
                    self.bad[i] = str(image)
                else:
                    out[i] = image.to(torch.float16)
        for message in self.bad.values():
            print(f"miner train: skipping {message}", file=sys.stderr)
        self.images = out


class _Decode(Dataset):
    def __init__(self, ds: ArchiveDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return i, self.ds.decode(i)


def collate(items: list) -> tuple[Tensor, Tensor, Tensor] | None:
    """Stack (image, target, index) items, leaving out undecodable (None) ones; None if none is left."""
    items = [it for it in items if it is not None]
    if not items:
        return None
    images, targets, index = zip(*items)
    return torch.stack(images), torch.stack(targets), torch.tensor(index)


def worker_init(_worker_id: int) -> None:
    """DataLoader workers run torch on one thread each (the processes are the parallelism).

    OpenCV's thread count is left alone: a worker is forked, and `cv2.setNumThreads` in a child forked after the
    parent's OpenCV pool has run (the parallel labelling of `miner.kernels` during attention mining) waits for
    pool threads that the child does not have, forever. OpenCV's own calls in such a child run fine.
    """
    torch.set_num_threads(1)


def augment(images: Tensor, generator: torch.Generator, *, shift: float = 0.05, scale: float = 0.05,
            rotate_deg: float = 5.0, contrast: float = 0.1) -> Tensor:
    """Light augmentation on a batch (Tensor[B, 1, S, S] in [0, 1]), on its device.

    Per image: random affine (translation up to `shift` of the side, zoom 1 +- `scale`, rotation up to
    `rotate_deg`; border replicated) and contrast/brightness jitter of +-`contrast`; no flips (laterality
    matters in chest X-rays).
    """
    b = images.shape[0]
    rnd = torch.rand(b, 5, generator=generator).to(images.device) * 2 - 1  # uniform in [-1, 1]
    angle = rnd[:, 0] * rotate_deg * np.pi / 180
    zoom = 1 + rnd[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, rnd[:, 2] * shift * 2], 1),
                         torch.stack([sin, cos, rnd[:, 3] * shift * 2], 1)], 1).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = (1 + rnd[:, 4] * contrast).view(b, 1, 1, 1).to(images.dtype)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * gain + mean).clamp(0, 1)
