"""Tiny models with the `miner.models` interface, so the class-map tests run in milliseconds.

- `TinyClassifier`: stem -> layer1 (residual, in-place ReLU) -> layer2 (stride 2) = X; GAP + linear head or
  the "mlp" head (1x1 conv, ReLU, GAP, branch) with class-wise erasure masks in `forward_head`.
- `TinySegNet`: a two-level U-Net (``task = "segmentation"``), output Tensor[B, K, S, S].
- `TinyPyramid`: a three-scale densely connected pyramid (DC-FPN-like) with ``pyramid_layers`` finest first.

Each also exposes a plain-function forward that returns its intermediate activations, used by the literal
transcriptions in the tests (no hooks, no `miner.cam` code).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

CLASSES = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms (fresh BN is the identity and hides folding errors);
    returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


class TinyClassifier(nn.Module):
    task = "classification"
    feature_layer = "layer2"
    map_layers = ("layer1", "layer2")

    def __init__(self, head: str = "linear", classes: tuple[str, ...] = CLASSES, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.classes = classes
        self.in_chans = 1
        self.head_kind = head
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, stride=2)
        dim = 2 * width
        if head == "mlp":
            self.head_conv = nn.Conv2d(dim, dim, 1)
            self.head_act = nn.ReLU()
            self.fc = nn.Linear(dim, len(classes))
        else:
            self.fc = nn.Linear(dim, len(classes))
        randomise_bn(self, seed)
        self.eval()

    @property
    def head_is_linear(self) -> bool:
        return self.head_kind == "linear"

    @property
    def head_weight(self) -> Tensor:
        return self.fc.weight

    @property
    def head_bias(self) -> Tensor:
        return self.fc.bias

    def forward_features(self, x: Tensor) -> Tensor:
        return self.layer2(self.layer1(self.stem(x - 0.5)))

    def forward_head(self, features: Tensor, *, masks: Tensor | None = None) -> Tensor:
        if masks is None:
            if self.head_is_linear:
                return self.fc(features.mean(dim=(2, 3)))
            return self.fc(self.head_act(self.head_conv(features)).mean(dim=(2, 3)))
        outs = []
        for c in range(len(self.classes)):  # literal Eq. 1-2: branch c sees X * M_c
            xc = features * masks[:, c : c + 1].to(features.dtype)
            outs.append(self.forward_head(xc)[:, c])
        return torch.stack(outs, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def activations(self, x: Tensor) -> dict[str, Tensor]:
        """Plain forward keeping every named stage (for literal transcriptions)."""
        s = self.stem(x - 0.5)
        l1 = self.layer1(s)
        return {"stem": s, "layer1": l1}


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinySegNet(nn.Module):
    task = "segmentation"
    feature_layer = "bottleneck"

    def __init__(
        self, classes: tuple[str, ...] = ("background", "lesion", "organ"), width: int = 6, seed: int = 0
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.classes = classes
        self.enc1 = conv_block(1, width)
        self.bottleneck = conv_block(width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = conv_block(2 * width, width)
        self.out = nn.Conv2d(width, len(classes), 1)
        randomise_bn(self, seed)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        return self.decode(e1, self.bottleneck(F.max_pool2d(e1, 2)))

    def decode(self, e1: Tensor, b: Tensor) -> Tensor:
        return self.out(self.dec1(torch.cat([e1, self.up(b)], dim=1)))


class TinyPyramid(nn.Module):
    """enc1 (S) -> enc2 (S/2) -> enc3 (S/4); dec2 = f(up(enc3), enc2); dec1 = g(up(dec2), enc1);
    fuse = concat(dec1, up(dec2), up(enc3)) -> GAP -> linear."""

    task = "classification"
    feature_layer = "fuse"
    pyramid_layers = ("dec1", "dec2", "enc3")

    def __init__(self, classes: tuple[str, ...] = CLASSES, width: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.classes = classes
        self.enc1 = conv_block(1, width)
        self.enc2 = conv_block(width, 2 * width)
        self.enc3 = conv_block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = conv_block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = conv_block(2 * width, width)
        self.fuse = nn.Identity()
        self.fc = nn.Linear(7 * width, len(classes))
        randomise_bn(self, seed)
        self.eval()

    def scales(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        return e1, e2, e3

    def finish(self, e1: Tensor, d2: Tensor, e3: Tensor, d1: Tensor | None = None) -> Tensor:
        if d1 is None:
            d1 = self.dec1(torch.cat([e1, self.up1(d2)], dim=1))
        size = d1.shape[-2:]
        fused = self.fuse(torch.cat([
            d1,
            F.interpolate(d2, size=size, mode="bilinear", align_corners=False),
            F.interpolate(e3, size=size, mode="bilinear", align_corners=False),
        ], dim=1))
        return self.fc(fused.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        e1, e2, e3 = self.scales(x)
        d2 = self.dec2(torch.cat([e2, self.up2(e3)], dim=1))
        return self.finish(e1, d2, e3)
