"""`miner train ARCHIVE --out CKPT`: train a classifier (stages base, msa-init, end2end, am)."""
from __future__ import annotations

import argparse
import os

from miner.cli._options import (
    BATCH,
    EPOCHS,
    FRACTION,
    OPEN_FRACTION,
    SEED,
    SIDE,
    STEPS,
    THREADS,
    integer,
    out_file,
    real,
)
from miner.config import TrainConfig

HELP = "train a classifier on a labelled archive (MSA, attention mining, knowledge preservation)"
DESCRIPTION = (
    "Train a per-finding binary-branch classifier on ARCHIVE and write CKPT (plus CKPT's stem.<stage>.pt "
    "after every epoch of every stage). Stages: base, msa-init, end2end (ResNet-MSA only), am. "
    "Data-parallel: torchrun --nproc-per-node K -m miner train ... (gloo on CPU, NCCL on GPUs)."
)

_D = TrainConfig()
#: learning rates: positive, at most 10 (Cai et al. used 0.1 with SGD from ImageNet)
LR = real(0.0, 10.0, lo_open=True)


def _option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", metavar="ARCHIVE", nargs="+",
                   help="release folder, Data_Entry file or manifest; several archives train on their union "
                        "(e.g. plain and real-background phantoms)")
    p.add_argument("--out", required=True, metavar="CKPT", type=out_file,
                   help="final checkpoint path (e.g. runs/model.pt)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=_D.arch, help=f"model name (default {_D.arch}; see miner.models.list_models)")
    g.add_argument("--recipe", default=_D.recipe,
                   help=f"named recipe (default {_D.recipe}; cai2018 = the seed's method): its map options (MSA "
                        "stride, pooling) apply where the arch takes them, and the checkpoint records its mining and "
                        "box settings (docs/results/box-quality.md)")
    g.add_argument("--width", type=real(0.0, 16.0, lo_open=True), help="channel-width multiplier (small models: 0.25)")
    g.add_argument("--upsample", choices=("bilinear", "deconv"), help="MSA upsampling (default bilinear)")
    g.add_argument("--head", choices=("linear", "mlp"), help="branch head (default linear)")
    g.add_argument("--model-option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="any other constructor option (repeatable)")
    g.add_argument("--input-size", type=SIDE, default=_D.input_size,
                   help=f"square input side (default {_D.input_size})")
    g.add_argument("--classes", help="comma-separated class list (default: archive's classes.txt or ChestX-ray14)")
    g.add_argument("--init", metavar="PTH", help="local torchvision-layout (ImageNet) weights for the trunk")
    g = p.add_argument_group("stages")
    g.add_argument("--stage", default="all", help="all, or a comma list of base,msa-init,end2end,am (default all)")
    g.add_argument("--resume", action="store_true", help="skip complete stages, continue an incomplete one")
    g.add_argument("--from", dest="start_from", metavar="CKPT", help="checkpoint the first stage starts from")
    g.add_argument("--epochs", type=EPOCHS, default=_D.base_epochs, help=f"base epochs (default {_D.base_epochs})")
    g.add_argument("--msa-init-epochs", type=EPOCHS, default=_D.msa_init_epochs)
    g.add_argument("--end2end-epochs", type=EPOCHS, default=_D.end2end_epochs)
    g.add_argument("--am-epochs", type=EPOCHS, default=_D.am_epochs)
    g.add_argument("--max-steps", type=integer(1, 1_000_000_000), help="cap the steps of each epoch (quick runs)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adamw"), default=_D.optimizer)
    g.add_argument("--lr", type=LR, default=_D.lr, help=f"base and msa-init (default {_D.lr})")
    g.add_argument("--finetune-lr", type=LR, default=_D.finetune_lr, help=f"end2end and am (default {_D.finetune_lr})")
    g.add_argument("--weight-decay", type=FRACTION, default=_D.weight_decay)
    g.add_argument("--schedule", choices=("cosine", "constant"), default=_D.schedule)
    g.add_argument("--batch-size", type=BATCH, default=_D.batch_size, help="global batch (split over processes)")
    g.add_argument("--class-weights", choices=("none", "balanced"), default=_D.class_weights)
    g.add_argument("--freeze-bn", action="store_true", help="BatchNorm in eval mode in every stage")
    g.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    g.add_argument("--seed", type=SEED, default=_D.seed)
    g = p.add_argument_group("attention mining")
    g.add_argument("--kp", choices=("none", "vanilla", "kp"), default=_D.kp,
                   help="none: erase all N images; vanilla: first n = N/8; kp: vanilla + KP loss (default)")
    g.add_argument("--kp-lambda", type=real(0.0, 100.0), default=_D.kp_lambda)
    g.add_argument("--kp-layers", default=",".join(_D.kp_layers), help="comma list of module names and/or logits")
    g.add_argument("--kp-norm", choices=("image", "batch"), default=_D.kp_norm)
    g.add_argument("--am-steps", type=STEPS, default=_D.am_steps, help="erasure depths cycled 1..t")
    g.add_argument("--am-fraction", type=OPEN_FRACTION, default=_D.am_fraction)
    g.add_argument("--am-threshold", type=OPEN_FRACTION, default=_D.am_threshold)
    g.add_argument("--am-freeze-bn", action="store_true", help="BatchNorm in eval mode during AM")
    g = p.add_argument_group("data and machine")
    g.add_argument("--workers", type=integer(0, 256), default=_D.workers, help="decode processes per training process")
    g.add_argument("--cache", action="store_true", help="decode every image once into memory (small archives)")
    g.add_argument("--augment", action="store_true", help="light affine + contrast augmentation")
    g.add_argument("--val-fraction", type=real(0.0, 1.0, hi_open=True), default=_D.val_fraction)
    g.add_argument("--device", default=_D.device, help="auto | cpu | cuda")
    g.add_argument("--threads", type=THREADS, help="torch threads per process")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def resume_hint(args: argparse.Namespace) -> str:
    """What to do after a stop (`miner.cli.main`)."""
    return "rerun the same command with --resume to continue from the last complete epoch"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    options = dict(args.model_option)
    for key in ("width", "upsample", "head"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return TrainConfig(
        arch=args.arch, recipe=args.recipe, model_options=options, input_size=args.input_size,
        classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None,
        init=args.init, stages=tuple(s.strip() for s in args.stage.split(",") if s.strip()),
        base_epochs=args.epochs, msa_init_epochs=args.msa_init_epochs, end2end_epochs=args.end2end_epochs,
        am_epochs=args.am_epochs, optimizer=args.optimizer, lr=args.lr, finetune_lr=args.finetune_lr,
        weight_decay=args.weight_decay, schedule=args.schedule, batch_size=args.batch_size, workers=args.workers,
        cache=args.cache, augment=args.augment, val_fraction=args.val_fraction, class_weights=args.class_weights,
        amp=args.amp, seed=args.seed, threads=args.threads, device=args.device, freeze_bn=args.freeze_bn,
        am_steps=args.am_steps, am_threshold=args.am_threshold, am_fraction=args.am_fraction,
        am_freeze_bn=args.am_freeze_bn, kp=args.kp, kp_lambda=args.kp_lambda,
        kp_layers=tuple(s.strip() for s in args.kp_layers.split(",") if s.strip()), kp_norm=args.kp_norm,
        max_steps=args.max_steps, progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    # OpenMP threads that sleep instead of spinning while they wait: on a machine whose cores are shared,
    # spinning threads made training ~10x slower (42 s vs 7.6 s for one test run on 2 busy cores); it must
    # be set before torch (libgomp) is loaded, and a value in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from miner.train import train

    result = train(args.archive, args.out, config_from_args(args), resume=args.resume, start_from=args.start_from)
    return 0 if result.out.is_file() else 1
