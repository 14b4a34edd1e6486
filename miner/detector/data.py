"""The detector's training data: what ``miner labels`` writes, read as a user's trainer reads it.

Two layouts (the folder of one ``miner labels`` export, or of anything written the same way):

- **YOLO** (``DIR/data.yaml``, the Ultralytics layout): the list file that data.yaml's ``train`` key names (or
  ``images.txt`` for ``split="all"``, ``<split>.txt`` otherwise) holds one image path per line, relative to the
  folder of data.yaml; each image's labels are ``labels/<stem>.txt`` beside ``images/`` (the Ultralytics rule:
  ``/images/`` -> ``/labels/``, suffix -> ``.txt``), one ``class cx cy w h`` line per box, normalised to [0, 1];
  an empty file is an image without objects. Class names: data.yaml's ``names``.
- **COCO** (``DIR/annotations.json``, or ``annotations_<split>.json``): ``images`` with ``file_name`` relative to
  ``info.image_root`` (as ``miner labels`` writes it) or to the JSON's folder, ``width`` / ``height``;
  ``annotations`` with ``bbox`` = x, y, w, h in pixels; ``categories`` in id order.

Everything here is untrusted input: a malformed line is one `ArchiveError` naming FILE:LINE (exit 2). With an
archive root (``--archive``), an image whose file resolves outside it is refused (the archive-root rule,
`miner.data.confine`); the YOLO layout's images are symbolic links to the archive's files, resolved first.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from miner.errors import ArchiveError, ImageError, MinerWarning, UsageError
from miner.io import shown

_MAX_LABEL_BYTES = 1 << 20  # one image's label file
_MAX_LIST_BYTES = 256 << 20


@dataclass
class LabelledImage:
    """One training image: its file, its name in the label set, its boxes (x0, y0, x1, y1 as fractions of the
    image's width and height) and their 0-based class indices."""

    name: str
    path: str
    boxes: np.ndarray  # [n, 4] float32
    classes: np.ndarray  # [n] int64


@dataclass
class LabelSet:
    """A label set: the class names (index order), its images, what it was read from."""

    classes: tuple[str, ...]
    images: list[LabelledImage]
    source: str
    layout: str
    files: list[str] = field(default_factory=list)

    @property
    def boxes(self) -> int:
        return int(sum(len(i.boxes) for i in self.images))

    def fingerprint(self) -> str:
        """sha256 over the class names and every image's name and boxes (what a resumed training must match)."""
        import hashlib

        digest = hashlib.sha256(json.dumps(list(self.classes)).encode())
        for image in self.images:
            digest.update(image.name.encode() + b"\0")
            digest.update(np.round(image.boxes.astype(np.float64), 6).tobytes())
            digest.update(image.classes.astype(np.int64).tobytes())
        return digest.hexdigest()


def _read_text(path: Path, limit: int, what: str) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise ArchiveError(f"{shown(path)}: {what} of {size} bytes, more than {limit}; is it the right file?")
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ArchiveError(f"{shown(path)}: {what} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ArchiveError(f"{shown(path)}: cannot read the {what} ({err.strerror or err})") from None


def read_labels(folder: str | Path, *, split: str = "train", archive: str | Path | None = None) -> LabelSet:
    """The label set in `folder` (module docstring): YOLO where data.yaml is there, else COCO.

    Args:
        split: ``train`` (YOLO: data.yaml's ``train`` list; COCO: ``annotations_train.json`` where written, else
            ``annotations.json``), ``all`` (every exported image), or another split name.
        archive: the archive's root; images resolving outside it are refused (None: no check).
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UsageError(f"{shown(folder)}: not a folder; give the --to folder of miner labels")
    if (root / "data.yaml").is_file():
        labels = _read_yolo(root, split)
    elif any((root / n).is_file() for n in ("annotations.json", f"annotations_{split}.json")):
        labels = _read_coco(root, split)
    else:
        raise UsageError(f"{shown(root)}: neither data.yaml (miner labels --format yolo) nor annotations.json "
                         "(--format coco) is there")
    if archive is not None:
        from miner.data.confine import check_inside, resolve_root

        where = resolve_root(archive)
        for image in labels.images:
            try:
                image.path = check_inside(image.path, where)
            except ImageError as err:
                raise ArchiveError(f"{image.name}: {err.detail or err}; the label set names a file outside the "
                                   f"archive {shown(where)}") from None
    if not labels.images:
        raise ArchiveError(f"{shown(root)}: the {split} split lists no images to train on")
    return labels


# -- YOLO ----------------------------------------------------------------------------------------------------

def _yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(_read_text(path, 1 << 20, "data.yaml"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ArchiveError(f"{shown(path)}{line}: not YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise ArchiveError(f"{shown(path)}: not a mapping of keys (path, train, val, nc, names)")
    return data


def _names(data: dict, path: Path) -> tuple[str, ...]:
    names = data.get("names")
    if isinstance(names, dict):
        if not all(isinstance(k, int) for k in names) or sorted(names) != list(range(len(names))):
            raise ArchiveError(f"{shown(path)}: names must be numbered 0..n-1")
        names = [names[k] for k in range(len(names))]
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        raise ArchiveError(f"{shown(path)}: names must list the class names")
    if len(set(names)) != len(names):
        raise ArchiveError(f"{shown(path)}: names lists a class twice")
    nc = data.get("nc", len(names))
    if nc != len(names):
        raise ArchiveError(f"{shown(path)}: nc is {nc} but names lists {len(names)} classes")
    return tuple(names)


def _read_yolo(root: Path, split: str) -> LabelSet:
    yaml_path = root / "data.yaml"
    data = _yaml(yaml_path)
    classes = _names(data, yaml_path)
    if split == "all":
        list_name = "images.txt"
    elif split in ("train", "val") and isinstance(data.get(split), str):
        list_name = data[split]
    else:
        list_name = f"{split}.txt"
    list_path = (root / list_name)
    if os.path.isabs(list_name) or ".." in Path(list_name).parts:
        raise ArchiveError(f"{shown(yaml_path)}: the {split} list {list_name!r} is not a file in the label folder")
    if not list_path.is_file():
        raise UsageError(f"{shown(root)}: no list of the {split} split ({list_name}); choose --split among the "
                         f"lists there ({', '.join(sorted(p.name for p in root.glob('*.txt'))) or 'none'})")
    images = []
    seen: set[str] = set()
    for number, line in enumerate(_read_text(list_path, _MAX_LIST_BYTES, "image list").splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        rel = Path(entry)
        if rel.is_absolute() or ".." in rel.parts or "images" not in rel.parts:
            raise ArchiveError(f"{shown(list_path)}:{number}: {entry!r} is not a path under the folder's images/")
        if entry in seen:
            continue
        seen.add(entry)
        image_path = root / rel
        parts = list(rel.parts)
        at = len(parts) - 1 - parts[::-1].index("images")
        parts[at] = "labels"
        label_path = root.joinpath(*parts).with_suffix(".txt")
        if not os.path.lexists(image_path):
            raise ArchiveError(f"{shown(list_path)}:{number}: {entry} is not there")
        boxes, labels = _yolo_boxes(label_path, len(classes))
        images.append(LabelledImage(name=rel.name, path=os.path.realpath(image_path), boxes=boxes, classes=labels))
    return LabelSet(classes=classes, images=images, source=str(root), layout="yolo",
                    files=[str(yaml_path), str(list_path)])


def _yolo_boxes(path: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise ArchiveError(f"{shown(path)}: the image's label file is missing (an image without objects has an "
                           "empty one)")
    boxes, labels = [], []
    for number, line in enumerate(_read_text(path, _MAX_LABEL_BYTES, "label file").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{shown(path)}:{number}"
        if len(fields) != 5:
            raise ArchiveError(f"{where}: {len(fields)} fields; a YOLO box is 'class cx cy w h'")
        try:
            k = int(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise ArchiveError(f"{where}: {line.strip()[:80]!r} is not 'class cx cy w h' (an integer, four "
                               "numbers)") from None
        if not 0 <= k < classes:
            raise ArchiveError(f"{where}: class {k} is not among data.yaml's {classes} names")
        if not all(math.isfinite(v) for v in (cx, cy, w, h)) or w <= 0 or h <= 0:
            raise ArchiveError(f"{where}: a box needs finite centre and a width and height above 0")
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        if min(x0, y0) < -1e-3 or max(x1, y1) > 1 + 1e-3:
            raise ArchiveError(f"{where}: the box leaves the image (coordinates are fractions in [0, 1])")
        boxes.append([max(x0, 0.0), max(y0, 0.0), min(x1, 1.0), min(y1, 1.0)])
        labels.append(k)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


# -- COCO ----------------------------------------------------------------------------------------------------

def _read_coco(root: Path, split: str) -> LabelSet:
    path = root / f"annotations_{split}.json"
    if split == "all" or not path.is_file():
        path = root / "annotations.json"
        if split not in ("all", "train") and not (root / f"annotations_{split}.json").is_file():
            raise UsageError(f"{shown(root)}: no annotations_{split}.json; choose --split among the splits there")
    try:
        data = json.loads(_read_text(path, _MAX_LIST_BYTES, "COCO file"))
    except json.JSONDecodeError as err:
        raise ArchiveError(f"{shown(path)}:{err.lineno}: not JSON ({err.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ArchiveError(f"{shown(path)}: not a COCO file (images, annotations and categories lists)")
    categories = data["categories"]
    try:
        ordered = sorted((int(c["id"]), str(c["name"])) for c in categories)
    except (KeyError, TypeError, ValueError):
        raise ArchiveError(f"{shown(path)}: categories need an integer id and a name") from None
    if not ordered or len({i for i, _ in ordered}) != len(ordered):
        raise ArchiveError(f"{shown(path)}: categories are empty or repeat an id")
    index = {cid: k for k, (cid, _) in enumerate(ordered)}
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    image_root = Path(info["image_root"]) if isinstance(info.get("image_root"), str) else root
    images: dict[int, tuple[str, str, float, float]] = {}
    for n, image in enumerate(data["images"]):
        try:
            iid, name = int(image["id"]), str(image["file_name"])
            width, height = float(image["width"]), float(image["height"])
        except (KeyError, TypeError, ValueError):
            raise ArchiveError(f"{shown(path)}: images[{n}] needs id, file_name, width and height") from None
        if not (width >= 1 and height >= 1) or iid in images:
            raise ArchiveError(f"{shown(path)}: images[{n}] has no size or repeats id {iid}")
        images[iid] = (name, str(image_root / name), width, height)
    per_image: dict[int, list[tuple[list[float], int]]] = {i: [] for i in images}
    for n, ann in enumerate(data.get("annotations") or []):
        try:
            iid, cid = int(ann["image_id"]), int(ann["category_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise ArchiveError(f"{shown(path)}: annotations[{n}] needs image_id, category_id and bbox") from None
        if iid not in images or cid not in index:
            raise ArchiveError(f"{shown(path)}: annotations[{n}] names an unknown image or category")
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            raise ArchiveError(f"{shown(path)}: annotations[{n}] has a box without finite size")
        _, _, width, height = images[iid]
        per_image[iid].append(([max(x / width, 0.0), max(y / height, 0.0), min((x + w) / width, 1.0),
                                min((y + h) / height, 1.0)], index[cid]))
    out = []
    for iid, (name, file, _, _) in images.items():
        pairs = per_image[iid]
        boxes = np.asarray([p[0] for p in pairs], np.float32).reshape(-1, 4)
        out.append(LabelledImage(name=name, path=file, boxes=boxes,
                                 classes=np.asarray([p[1] for p in pairs], np.int64)))
    return LabelSet(classes=tuple(name for _, name in ordered), images=out, source=str(root), layout="coco",
                    files=[str(path)])


# -- pixels --------------------------------------------------------------------------------------------------

def decoded(paths: Sequence[str], size: int, *, progress: bool = False) -> tuple[np.ndarray, list[int], list[str]]:
    """Every file of `paths` decoded (`miner.data.load_image`) and resized to size x size, as uint8 [N, S, S].

    Returns:
        (pixels of the images that decoded, their indices in `paths`, one line per file that did not).
    """
    import cv2

    from miner.data.image import load_image

    pixels, kept, failed = [], [], []
    iterator = enumerate(paths)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(paths), desc="decoding", unit="img", leave=False)
    for n, path in iterator:
        try:
            image, _ = load_image(path)
        except ImageError as err:
            failed.append(str(err))
            continue
        small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        pixels.append(np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8))
        kept.append(n)
    if failed:
        warnings.warn(f"{len(failed)} of {len(paths)} images could not be read and are left out (first: "
                      f"{failed[0]})", MinerWarning, stacklevel=2)
    stack = np.stack(pixels) if pixels else np.zeros((0, size, size), np.uint8)
    return stack, kept, failed
