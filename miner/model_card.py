"""The description of a packaged model (``miner/assets/default_model.json``), written beside it.

    python -m miner.model_card card CKPT JSON --command "scripts/train_default_model.sh" --seconds 900 \\
        --load 2.1,3.4 --eval-dir runs/default_model/check

The card records what a user of the embedded model needs without loading it (classes, input size, map
method and size, architecture), how it was made (command, training time and the machine's load average,
training data) and what it does on unseen phantoms: its test-split AUC from training and the localisation
accuracy (Acc-AFP with Wang et al.'s AFP bounds at T(IoU) 0.1 and 0.3, T = 1 and 3) of the boxes it mines on a
fresh phantom archive (``eval_images`` images, seed ``eval_seed``, never seen in training).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EVAL_IMAGES = 400
EVAL_SEED = 7


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def localisation(checkpoint: Path, workdir: Path, *, images: int = EVAL_IMAGES, seed: int = EVAL_SEED,
                 steps: Sequence[int] = (1, 3), real_background: bool = False) -> dict[str, Any]:
    """Acc/AFP per finding at T(IoU) 0.1 and 0.3 of the boxes `checkpoint` mines (its own recipe settings), at each
    T of `steps`, on a fresh phantom archive of `images` images (seed `seed`; drawn on the real radiograph with
    `real_background`) written under `workdir`: with Wang et al.'s AFP bounds (``T=t``) and with every box
    (``T=t, every box``)."""
    from miner.bench.paper import mine_boxes
    from miner.config import EvalConfig
    from miner.data import read_archive
    from miner.metrics import BoxTable, default_bounds, ground_truth_table, localization_table, no_bounds
    from miner.metrics.job import multi_lesion_counts
    from miner.models import read_checkpoint
    from miner.phantoms import make_phantoms
    from miner.pipeline import decode_batch

    meta = read_checkpoint(checkpoint)
    size = int(meta["input_size"])
    root = workdir / (f"phantoms_{images}_{size}_{seed}" + ("_real" if real_background else ""))
    if not (root / "Data_Entry_2017.csv").is_file():
        make_phantoms(root, images=images, size=size, seed=seed, overwrite=True, real_background=real_background)
    archive = read_archive(root)
    records = [(r.image_id, r.path, tuple(r.labels)) for r in archive.records if r.labels]
    batches = [decode_batch(records[i:i + 32], input_size=size) for i in range(0, len(records), 32)]
    gt = ground_truth_table(archive.boxes)
    findings = [f for f in meta["classes"] if f in set(gt.finding.tolist())]
    cfg = EvalConfig(iou_thresholds=(0.1, 0.3), iobb_thresholds=())
    result: dict[str, Any] = {"archive": {"images": images, "size": size, "seed": seed,
                                          "real_background": real_background,
                                          "multi_lesion_images": multi_lesion_counts(archive.boxes)},
                              "bounds": default_bounds().source}
    for t in steps:
        pred = BoxTable.from_arrow(mine_boxes(checkpoint, batches, steps=t))
        for key, bounds in ((f"T={t}", default_bounds()), (f"T={t}, every box", no_bounds())):
            cells = localization_table(pred, gt, config=cfg, findings=findings, bounds=bounds)
            result[key] = {f"iou={r.threshold:g}": {} for r in cells}
            for r in cells:
                result[key][f"iou={r.threshold:g}"][r.finding] = {"acc": round(r.acc, 4), "afp": round(r.afp, 4)}
    return result


def write_card(checkpoint: str | Path, out: str | Path, *, command: str, seconds: float,
               load: Sequence[float], eval_dir: str | Path) -> dict[str, Any]:
    """Write the card of `checkpoint` to `out` (module docstring) and return it."""
    import torch

    from miner.backends import open_backend
    from miner.io import json_safe
    from miner.models import read_checkpoint

    checkpoint = Path(checkpoint)
    meta = read_checkpoint(checkpoint)
    backend = open_backend(checkpoint, backend="torch", device="cpu")
    config = meta.get("config") or {}
    data = ("phantom archives: miner phantoms --images 2000 --size 256 --seed 0, and --seed 3 --real-background"
            if meta.get("recipe") else "phantom archive: miner phantoms --images 2000 --size 256 --seed 0")
    card = {
        "file": checkpoint.name,
        "sha256": sha256(checkpoint),
        "bytes": checkpoint.stat().st_size,
        "format": meta.get("format"),
        "arch": meta["arch"],
        "options": meta.get("options", {}),
        "parameters": sum(int(v.numel()) for k, v in meta["state_dict"].items()
                          if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))),
        "classes": list(meta["classes"]),
        "input_size": int(meta["input_size"]),
        "trained_input_size": int(meta.get("trained_input_size") or meta["input_size"]),
        "in_chans": int(meta["in_chans"]),
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "method": backend.meta.method,
        "layer": backend.meta.layer,
        "map_size": list(backend.meta.map_size),
        "stage": meta.get("stage"),
        "kp": config.get("kp"),
        "recipe": meta.get("recipe", "cai2018"),
        "mining": meta.get("mining"),
        "boxes": meta.get("boxes"),
        "stage_weights": meta.get("stage_weights") or {},
        "calibration": meta.get("calibration"),
        "training": {
            "command": command,
            "seconds": round(float(seconds), 1),
            "load_average": [float(v) for v in load],
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, torch {torch.__version__} "
                       f"({torch.get_num_threads()} threads), Python {platform.python_version()}",
            "data": data,
            "config": config,
        },
        "test_auc": meta.get("test_auc"),
        "localisation": localisation(checkpoint, Path(eval_dir)),
        "localisation_real_background": localisation(checkpoint, Path(eval_dir), seed=EVAL_SEED + 1,
                                                     real_background=True),
    }
    Path(out).write_text(json.dumps(json_safe(card), indent=1) + "\n")
    return card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miner.model_card", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command_name", required=True)
    p = sub.add_parser("card", help="write the card of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--command", required=True, help="the command that made the checkpoint")
    p.add_argument("--seconds", type=float, required=True, help="how long it took")
    p.add_argument("--load", default="nan,nan", help="load average at the start and the end, comma-separated")
    p.add_argument("--eval-dir", required=True, help="folder for the fresh phantom archive of the check")
    args = parser.parse_args(argv)
    card = write_card(args.checkpoint, args.out, command=args.command, seconds=args.seconds,
                      load=[float(v) for v in args.load.split(",")], eval_dir=args.eval_dir)
    check = card["localisation"]["T=3, every box"]["iou=0.3"]
    print(f"{args.out}: {card['arch']} {card['parameters']:,} parameters, {card['bytes'] / 1e6:.2f} MB; "
          "Acc at T(IoU)=0.3 (every box), T=3: " + ", ".join(f"{k} {v['acc']:.2f}" for k, v in check.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
