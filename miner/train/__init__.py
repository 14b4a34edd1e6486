"""Training: classification, MSA initialisation, attention mining with knowledge preservation.

    from miner.train import train
    from miner.config import TrainConfig
    result = train("archive/", "model.pt", TrainConfig(arch="resnet18_msa", input_size=128))

Modules: `trainer` (stages, epochs, checkpoints, resume), `step` (one AM/KP forward), `erasure` (training
masks by the inference rule), `losses` (Eq. 2-5), `dataset` (archive Dataset, validation split,
augmentation), `distributed` (torchrun / DDP set-up), `auc` (ROC AUC in numpy).
"""
from __future__ import annotations

from miner.train.auc import roc_auc, roc_auc_per_class
from miner.train.trainer import STAGES, Trainer, TrainResult, plan_stages, stage_path, train

__all__ = ["STAGES", "TrainResult", "Trainer", "plan_stages", "roc_auc", "roc_auc_per_class", "stage_path", "train"]
