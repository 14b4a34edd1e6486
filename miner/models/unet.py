"""A small U-Net (Ronneberger et al.) for the segmentation maps (Seg-Grad-CAM, Seg-HiRes-Grad-CAM).

    enc1 (S, c) -> pool -> enc2 (S/2, 2c) -> ... -> enc{depth} -> pool -> bottleneck (S/2^depth, c*2^depth)
    dec{p} = block(concat(up{p}(dec{p+1} or bottleneck), enc{p}))      p = depth .. 1
    out    = 1x1 conv -> logits (Tensor[B, K, S, S])

``feature_layer = "bottleneck"`` (the deepest layer, the usual Seg-Grad-CAM choice); every named layer in
``map_layers`` can be hooked with ``model.get_submodule(name)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from miner.errors import UsageError
from miner.models.base import Normalised
from miner.models.dcfpn import conv_block
from miner.models.registry import register_model


class UNet(Normalised):
    """Segmentation net: images in [0, 1] -> per-pixel logits of K classes (Tensor[B, K, S, S])."""

    task = "segmentation"
    feature_layer = "bottleneck"

    def __init__(
        self,
        *,
        classes: Sequence[str],
        in_chans: int = 1,
        channels: int = 16,
        depth: int = 4,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(classes=classes, in_chans=in_chans, mean=mean, std=std)
        if depth < 1 or channels < 1:
            raise UsageError(f"unet needs depth >= 1 and channels >= 1, got {depth}, {channels}")
        self.depth = int(depth)
        widths = [channels * 2**p for p in range(depth + 1)]
        self.pool = nn.MaxPool2d(2)
        for p in range(depth):
            setattr(self, f"enc{p + 1}", conv_block(in_chans if p == 0 else widths[p - 1], widths[p]))
        self.bottleneck = conv_block(widths[depth - 1], widths[depth])
        for p in range(depth, 0, -1):
            setattr(self, f"up{p}", nn.ConvTranspose2d(widths[p], widths[p - 1], kernel_size=2, stride=2))
            setattr(self, f"dec{p}", conv_block(2 * widths[p - 1], widths[p - 1]))
        self.out = nn.Conv2d(widths[0], self.num_classes, kernel_size=1)
        self.map_layers: tuple[str, ...] = (
            tuple(f"enc{p}" for p in range(1, depth + 1)) + ("bottleneck",)
            + tuple(f"dec{p}" for p in range(depth, 0, -1))
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """x (Tensor[B, in_chans, S, S] in [0, 1]) -> logits (Tensor[B, K, S, S])."""
        x = self.normalise(x)
        skips = []
        for p in range(self.depth):
            x = getattr(self, f"enc{p + 1}")(x if p == 0 else self.pool(x))
            skips.append(x)
        y = self.bottleneck(self.pool(x))
        for p in range(self.depth, 0, -1):
            up = getattr(self, f"up{p}")(y)
            skip = skips[p - 1]
            if up.shape[-2:] != skip.shape[-2:]:
                up = F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = getattr(self, f"dec{p}")(torch.cat([skip, up], dim=1))
        return self.out(y)


@register_model("unet")
def unet(*, classes, in_chans=1, channels=16, depth=4, mean=None, std=None) -> UNet:
    """Small U-Net: options channels (first-level width, 16), depth (poolings, 4)."""
    return UNet(classes=classes, in_chans=in_chans, channels=channels, depth=depth, mean=mean, std=std)
