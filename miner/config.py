"""Defaults, in one place.

Each part of the product reads its options from one dataclass here; functions take such a config
object or explicit keyword arguments, and the CLI builds configs from flags. Nothing else holds a
default that a user may want to change.
"""
from __future__ import annotations

from dataclasses import dataclass, field


# --- phantom archives (miner.data.phantoms, `miner phantoms`; owner: data) -----------------------------


@dataclass
class PhantomConfig:
    """Defaults for `miner phantoms` / `miner.data.make_phantoms` (README "Archives and phantoms").

    Attributes:
        images: number of images.
        size: side of the square 8-bit PNGs, in pixels.
        seed: the archive is a pure function of (seed, options): same seed, same bytes.
        findings: findings drawn (a subset of the eight that the generator knows; see `miner.data.lesions`).
        no_finding: fraction of images without any finding.
        extra_findings: probabilities of a second and a third finding on a positive image (multi-label).
        multi_lesion: per finding, probability of more than one separate lesion of it in one image
            (Nodule/Mass: 2 or 3 lesions; others: 2; Effusion: bilateral).
        test_fraction: fraction of patients in test_list.txt (the rest in train_val_list.txt).
        images_per_patient: mean number of images per patient (follow-ups).
        contrast: scale of every lesion's density (1 = default visibility; lower = harder).
        noise: standard deviation of the pixel noise (fraction of the full range).
        masks: also write ``masks/<image stem>_<Finding>.png`` (255 on the finding's lesions).
        real_background: use the pydicom-data radiograph (randomly cropped and warped) as the chest.
    """

    images: int = 1000
    size: int = 512
    seed: int = 0
    findings: tuple[str, ...] = (
        "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    )
    no_finding: float = 0.35
    extra_findings: tuple[float, float] = (0.35, 0.1)
    multi_lesion: dict = field(default_factory=lambda: {
        "Nodule": 0.4, "Mass": 0.35, "Atelectasis": 0.2, "Infiltration": 0.2, "Pneumonia": 0.2, "Effusion": 0.25,
    })
    test_fraction: float = 0.25
    images_per_patient: float = 1.8
    contrast: float = 1.0
    noise: float = 0.018
    masks: bool = False
    real_background: bool = False


# --- training (miner.train, `miner train`; owner: models & training) -----------------------------------


@dataclass
class TrainConfig:
    """Defaults for `miner train` (README "Training"). Stages follow Cai et al. Sec. 3.1-3.2."""

    arch: str = "resnet50_msa"
    #: constructor options of the model (width, upsample, head, ...)
    model_options: dict = field(default_factory=dict)
    input_size: int = 512
    #: class list to train (None: the archive's classes.txt, else the 14 ChestX-ray14 findings)
    classes: tuple[str, ...] | None = None
    #: local torchvision-layout weights (ImageNet) for the trunk; never downloaded
    init: str | None = None
    #: stages to run, in order; "all" = base, msa-init, end2end, am for *_msa models, else base, am
    stages: tuple[str, ...] = ("all",)
    base_epochs: int = 10
    msa_init_epochs: int = 3
    end2end_epochs: int = 5
    am_epochs: int = 3
    optimizer: str = "sgd"  # sgd (momentum, nesterov) | adamw
    lr: float = 0.01  # base and msa-init
    finetune_lr: float = 0.001  # end2end and am
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine (per stage, per step) | constant
    batch_size: int = 32
    workers: int = 2
    #: decode every image once into memory (float16) before training; for small archives
    cache: bool = False
    augment: bool = False
    #: fraction of the train split held out (by patient) for per-epoch validation AUC
    val_fraction: float = 0.1
    class_weights: str = "none"  # none | balanced (Wang et al. W-CEL weights from the train split)
    amp: bool = False  # bf16 autocast on CPU, fp16 + GradScaler on CUDA
    seed: int = 0
    threads: int | None = None  # torch intra-op threads per process (None: cores / local processes)
    device: str = "auto"  # auto | cpu | cuda
    #: BatchNorm in eval mode (running statistics frozen) in every stage
    freeze_bn: bool = False
    # attention mining (AM) fine-tuning
    am_steps: int = 2  # erasure depths 1..am_steps, cycled batch by batch (T-1 for inference T=3)
    am_threshold: float = 0.5
    am_connectivity: int = 8
    am_fraction: float = 0.125  # n = max(1, floor(N * fraction)) images of a batch erased (KP-Vanilla / KP)
    #: BatchNorm frozen during AM: the un-erased images must not feel the erased ones through batch statistics
    am_freeze_bn: bool = True
    kp: str = "kp"  # none (erase all N) | vanilla (erase first n) | kp (vanilla + L_KP)
    kp_lambda: float = 0.5
    kp_layers: tuple[str, ...] = ("layer3", "layer4", "msa", "logits")
    kp_norm: str = "image"  # image: mean over images of ||g_A - g_B||_2 | batch: ||G_A - G_B||_F / (N-n)
    #: stop each epoch after this many steps (quick runs, tests); None = whole epoch
    max_steps: int | None = None
    progress: bool = True
