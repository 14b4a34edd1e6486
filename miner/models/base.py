"""The classifier interface every map-producing model implements.

A `Classifier` takes images in [0, 1] (normalisation happens inside `forward_features`), produces a feature
tensor X [B, D, h, w] at the module named by `feature_layer`, and scores every class with its own binary
branch on the global average of X (Cai et al. Eq. 1-3):

    logit_c = w_c . GAP(X * M_c) + b_c          (linear head, ``head="linear"``)
    logit_c = w_c . GAP(relu(W1 (X * M_c) + b1)) + b_c    (``head="mlp"``: 1x1 conv, ReLU, GAP, branch)

The C branches are the rows of one ``nn.Linear`` named ``fc`` (so a ResNet's keys stay torchvision's).

GAP is the default pooling (``pooling="avg"``). ``pooling="lse"`` / ``"topk"`` pool the per-position class scores
instead (`miner.models.pooling`): logit_c = pool(w_c . (X * M_c)) + b_c for the linear head; for the mlp head the
per-position scores are w_c . relu(W1 (X * M_c) + b1).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from miner.errors import ModelError, UsageError
from miner.models.pooling import check_pooling, pool_scores

#: ImageNet normalisation (torchvision's); grey images use the mean of the three channels.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
GREY_MEAN: tuple[float] = (0.449,)
GREY_STD: tuple[float] = (0.226,)

HEADS = ("linear", "mlp")

# elements of the [B, k, hidden, h, w] activation the mlp head materialises per class chunk under masks
_MLP_CHUNK_ELEMENTS = 1 << 25


def default_normalisation(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per input channel: ImageNet's for 3 channels, their channel mean for 1."""
    return (GREY_MEAN, GREY_STD) if in_chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)


class Normalised(nn.Module):
    """Holds `classes`, `in_chans`, `mean`, `std` and maps [0, 1] inputs to the network's range.

    mean/std are non-persistent buffers: they travel with ``.to(device)`` but stay out of the state_dict
    (which keeps torchvision's key list); checkpoints store them as metadata.
    """

    task = "classification"

    def __init__(
        self,
        *,
        classes: Sequence[str],
        in_chans: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.classes: tuple[str, ...] = tuple(classes)
        self.in_chans = int(in_chans)
        dmean, dstd = default_normalisation(self.in_chans)
        mean = tuple(float(v) for v in (dmean if mean is None else mean))
        std = tuple(float(v) for v in (dstd if std is None else std))
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise UsageError(f"mean/std need {self.in_chans} value(s), got {mean} / {std}")
        if min(std) <= 0:
            raise UsageError(f"std must be positive, got {std}")
        self.register_buffer("_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self._mean.flatten().tolist())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self._std.flatten().tolist())

    def normalise(self, x: Tensor) -> Tensor:
        """x (Tensor[B, in_chans or 1, S, S], in [0, 1]) -> normalised Tensor[B, in_chans, S, S].

        A grey batch (1 channel) fed to a 3-channel model is replicated across the channels.
        """
        if x.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            if x.shape[1] == 1 and self.in_chans == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ValueError(f"model takes {self.in_chans} channel(s), got {x.shape[1]}")
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)


class Classifier(Normalised):
    """Base class: subclasses build their trunk, call `_build_head(D)` and implement `_features`.

    Attributes:
        classes, in_chans, mean, std: see `Normalised`.
        feature_layer: name of the module whose output is X (``model.get_submodule(feature_layer)``).
        map_layers: names of the modules a class map may be taken at (finest scale first where it matters).
        head_is_linear: True when each branch scores every position linearly, s_c = w_c . X(i, j) (CAM exists);
            the logit is then pool(s_c) + b_c.
        head_pooling: ``avg`` (GAP: the logit is an affine function of GAP(X)), ``lse`` or ``topk``
            (`miner.models.pooling`).
    """

    feature_layer: str = ""
    map_layers: tuple[str, ...] = ()
    #: where a map cell sits on the input: ``centre`` (cell i of stride s spans [s i, s (i + 1))) or ``corner``
    #: (centred on input pixel s i, as in ResNets); `miner.boxes.cell_shift`
    cell_origin: str = "centre"

    def _build_head(self, dim: int, *, head: str = "linear", hidden: int | None = None, pooling: str = "avg",
                    pool_r: float = 10.0, pool_k: float = 0.1, pool_alpha: float = 0.0) -> None:
        if head not in HEADS:
            raise UsageError(f"head must be one of {HEADS}, got {head!r}")
        check_pooling(pooling, r=pool_r, k=pool_k, alpha=pool_alpha)
        self.head_kind = head
        self.head_pooling = pooling
        self.pool_r, self.pool_k, self.pool_alpha = float(pool_r), float(pool_k), float(pool_alpha)
        self.feature_dim = int(dim)
        if head == "linear":
            self.fc = nn.Linear(dim, self.num_classes)
        else:
            hidden = int(hidden or max(dim // 2, 8))
            self.head_conv = nn.Conv2d(dim, hidden, kernel_size=1)
            self.head_act = nn.ReLU()
            self.fc = nn.Linear(hidden, self.num_classes)

    @property
    def head_is_linear(self) -> bool:
        return self.head_kind == "linear"

    def pool_maps(self, scores: Tensor) -> Tensor:
        """Per-position class scores (Tensor[B, C, h, w], no bias) -> pooled (Tensor[B, C])."""
        return pool_scores(scores, self.head_pooling, r=self.pool_r, k=self.pool_k, alpha=self.pool_alpha)

    @property
    def feature_stages(self) -> dict[str, tuple[int, int]]:
        """The backbone stage each channel of X comes from: stage name -> (first channel, end), coarsest first;
        {} where X's channels do not split by stage (a stage-weighted class map, `miner.cam.ClassMapper`,
        needs them)."""
        return {}

    @property
    def head_weight(self) -> Tensor:
        """w (Tensor[C, D]): row c is branch c's weights on GAP(X). Linear heads only."""
        if not self.head_is_linear:
            raise ModelError(f"{type(self).__name__} has a non-linear head ({self.head_kind}): no CAM weights")
        return self.fc.weight

    @property
    def head_bias(self) -> Tensor:
        """b (Tensor[C])."""
        if not self.head_is_linear:
            raise ModelError(f"{type(self).__name__} has a non-linear head ({self.head_kind}): no CAM weights")
        return self.fc.bias

    def _features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_features(self, x: Tensor) -> Tensor:
        """x (Tensor[B, in_chans, S, S], float in [0, 1]) -> X (Tensor[B, D, h, w])."""
        return self._features(self.normalise(x))

    def forward_head(self, features: Tensor, *, masks: Tensor | None = None) -> Tensor:
        """Class logits from X, optionally with class-wise erasure.

        Args:
            features: X (Tensor[B, D, h, w]).
            masks: M (Tensor[B, C, h, w], 1 = keep, 0 = erase; float or bool) or None. Branch c sees X * M_c.

        Returns:
            logits (Tensor[B, C]).

        Cost with masks: linear head, one einsum to the C class maps (B*C*h*w values, never B*C*D*h*w);
        mlp head, the 1x1 conv runs once (W1 (X*M) = M * (W1 X) for a pointwise conv) but the ReLU sees one
        copy per class: B*C*hidden*h*w values, processed in class chunks of ~32M elements.
        """
        if masks is None:
            if self.head_pooling == "avg":
                if self.head_is_linear:
                    return self.fc(features.mean(dim=(2, 3)))
                return self.fc(self.head_act(self.head_conv(features)).mean(dim=(2, 3)))
            b, _, h, w = features.shape
            masks = features.new_ones(b, self.num_classes, h, w)
        b, _, h, w = features.shape
        if masks.shape != (b, self.num_classes, h, w):
            raise ValueError(f"masks must be {(b, self.num_classes, h, w)}, got {tuple(masks.shape)}")
        masks = masks.to(features.dtype)
        if self.head_is_linear:
            # GAP(X * M_c) . w_c == mean over (h, w) of M_c * (w_c . X): the class maps, masked, pooled.
            cams = torch.einsum("bdhw,cd->bchw", features, self.fc.weight.to(features.dtype))
            return self.pool_maps(cams * masks) + self.fc.bias.to(features.dtype)
        z = F.conv2d(features, self.head_conv.weight.to(features.dtype))  # [B, hidden, h, w], no bias
        bias1 = self.head_conv.bias.to(features.dtype).view(1, 1, -1, 1, 1)
        hidden = z.shape[1]
        step = max(1, _MLP_CHUNK_ELEMENTS // max(1, b * hidden * h * w))
        out = []
        for c0 in range(0, self.num_classes, step):
            m = masks[:, c0 : c0 + step, None]  # [B, k, 1, h, w]
            act = self.head_act(z[:, None] * m + bias1)  # [B, k, hidden, h, w]
            wc = self.fc.weight[c0 : c0 + step].to(features.dtype)  # [k, hidden]
            if self.head_pooling == "avg":
                pooled = (act.mean(dim=(3, 4)) * wc).sum(-1)
            else:
                pooled = self.pool_maps(torch.einsum("bkdhw,kd->bkhw", act, wc))
            out.append(pooled + self.fc.bias[c0 : c0 + step].to(features.dtype))
        return torch.cat(out, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[B, in_chans, S, S] in [0, 1]) -> logits (Tensor[B, C])."""
        return self.forward_head(self.forward_features(x))

    def trunk_modules(self) -> list[str]:
        """Names of the top-level modules below the MSA/head (frozen in the ``msa-init`` stage)."""
        return []
