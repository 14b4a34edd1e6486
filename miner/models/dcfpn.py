"""DC-FPN: a densely connected encoder-decoder feature pyramid classifier (Lee et al., Pyramid Grad-CAM).

Layout (``depth`` scales, ``channels`` c at the finest; scale p has c * 2^(p-1) channels at stride 2^(p-1)):

    enc1 (S) -> pool -> enc2 (S/2) -> ... -> enc{depth} (the coarsest scale, the bottleneck)
    dec{p} = block(BN(concat(deconv(dec{p+1} or enc{depth}), enc{p})))          p = depth-1 .. 1
    fuse   = BN(concat(dec1, up(dec2), ..., up(dec{depth-1}), up(enc{depth})))   at full resolution
    logits = fc(GAP(fuse))                       (one binary branch per class, as every Classifier)

Every joint is a concatenation followed by BatchNorm (the paper's remedy for the differing activation
statistics of the concatenated maps). Every scale is densely connected to the classifier through `fuse`
(bilinear upsampling to the finest scale), so Pyramid Grad-CAM can take one Grad-CAM per scale at
``pyramid_layers = ("dec1", "dec2", ..., "enc{depth}")`` (finest first) and sum them (Eq. 3). The decoder
itself follows U-Net (adjacent scale by a 2x2 transposed convolution, plus the encoder skip); the dense links
are the per-scale paths into `fuse`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from miner.errors import UsageError
from miner.models.base import Classifier
from miner.models.registry import register_model


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers (padding 1: the spatial size is kept)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class ConcatBN(nn.Module):
    """A dense joint: resize every input to the first one's size (bilinear), concatenate, BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, *xs: Tensor) -> Tensor:
        size = xs[0].shape[-2:]
        xs = [x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
              for x in xs]
        return self.bn(torch.cat(xs, dim=1))


class DCFPN(Classifier):
    """Densely connected feature pyramid classifier; X = `fuse` (Tensor[B, c * (2^depth - 1), S, S])."""

    feature_layer = "fuse"

    def __init__(
        self,
        *,
        classes: Sequence[str],
        in_chans: int = 1,
        channels: int = 32,
        depth: int = 4,
        head: str = "linear",
        head_hidden: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(classes=classes, in_chans=in_chans, mean=mean, std=std)
        if depth < 2:
            raise UsageError(f"dcfpn depth must be >= 2, got {depth}")
        if channels < 1:
            raise UsageError(f"dcfpn channels must be >= 1, got {channels}")
        self.depth = int(depth)
        widths = [channels * 2**p for p in range(depth)]
        self.scale_channels = tuple(widths)
        self.pool = nn.MaxPool2d(2)
        for p in range(depth):
            setattr(self, f"enc{p + 1}", conv_block(in_chans if p == 0 else widths[p - 1], widths[p]))
        for p in range(depth - 1, 0, -1):  # decoder scale p (1-based) gets its coarser neighbour
            setattr(self, f"up{p}", nn.ConvTranspose2d(widths[p], widths[p - 1], kernel_size=2, stride=2))
            setattr(self, f"join{p}", ConcatBN(2 * widths[p - 1]))
            setattr(self, f"dec{p}", conv_block(2 * widths[p - 1], widths[p - 1]))
        self.fuse = ConcatBN(sum(widths))
        self.pyramid_layers: tuple[str, ...] = tuple(f"dec{p}" for p in range(1, depth)) + (f"enc{depth}",)
        self.map_layers = self.pyramid_layers + ("fuse",)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._build_head(sum(widths), head=head, hidden=head_hidden)

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """Normalised input -> per-scale features, finest first ([dec1, dec2, ..., enc{depth}])."""
        enc = []
        for p in range(self.depth):
            x = getattr(self, f"enc{p + 1}")(x if p == 0 else self.pool(x))
            enc.append(x)
        scales = [enc[-1]]
        y = enc[-1]
        for p in range(self.depth - 1, 0, -1):
            up = getattr(self, f"up{p}")(y)
            skip = enc[p - 1]
            if up.shape[-2:] != skip.shape[-2:]:  # sizes not divisible by 2^(depth-1)
                up = F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = getattr(self, f"dec{p}")(getattr(self, f"join{p}")(skip, up))
            scales.insert(0, y)
        return scales

    def _features(self, x: Tensor) -> Tensor:
        return self.fuse(*self.pyramid(x))

    def trunk_modules(self) -> list[str]:
        return [n for n, _ in self.named_children() if n not in ("fc", "head_conv", "head_act")]


@register_model("dcfpn")
def dcfpn(*, classes, in_chans=1, channels=32, depth=4, head="linear", head_hidden=None, mean=None,
          std=None) -> DCFPN:
    """DC-FPN classifier (Lee et al.): options channels (finest-scale width, 32), depth (scales, 4), head."""
    return DCFPN(classes=classes, in_chans=in_chans, channels=channels, depth=depth, head=head,
                 head_hidden=head_hidden, mean=mean, std=std)
