"""Classifiers and segmentation nets that expose their map-producing features.

    from miner.models import create_model, list_models, save_checkpoint, load_checkpoint
    model = create_model("resnet50_msa", classes=archive.classes, upsample="bilinear")
    X = model.forward_features(images)            # [B, 768, S/16, S/16], images in [0, 1]
    logits = model.forward_head(X, masks=M)       # branch c sees X * M[:, c]

Every classifier follows `miner.models.base.Classifier`; see docs/training.md.
"""
from __future__ import annotations

from miner.models import dcfpn as _dcfpn  # noqa: F401  (registers dcfpn)
from miner.models import resnet as _resnet  # noqa: F401  (registers resnet18/50, resnet18_msa/50_msa)
from miner.models import unet as _unet  # noqa: F401  (registers unet)
from miner.models.base import Classifier, Normalised, default_normalisation
from miner.models.checkpoint import build_from_meta, load_checkpoint, model_meta, read_checkpoint, save_checkpoint
from miner.models.inference import fold_batchnorm, prepare_for_inference
from miner.models.pretrained import load_pretrained, read_state_dict
from miner.models.registry import create_model, list_models, register_model

__all__ = [
    "Classifier",
    "Normalised",
    "build_from_meta",
    "create_model",
    "default_normalisation",
    "fold_batchnorm",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "model_meta",
    "prepare_for_inference",
    "read_checkpoint",
    "read_state_dict",
    "register_model",
    "save_checkpoint",
]
