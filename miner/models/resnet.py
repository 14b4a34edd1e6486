"""ResNet-18/50 with torchvision's module names and shapes, and ResNet-MSA (Cai et al. Sec. 2.3).

The state_dict of ``create_model("resnet50")`` has exactly the keys and shapes of torchvision's
``resnet50(num_classes=C)`` (stride on the 3x3 conv, "ResNet v1.5"); `fc` holds the C binary branches, so
ImageNet weights load with `miner.models.pretrained.load_pretrained` (which drops the 1000-class `fc` and,
for one input channel, sums ``conv1.weight`` over its RGB dimension).

``width`` scales every channel count (64 * width at the stem; MSA's 512/256 likewise) for small test
models: ``create_model("resnet18_msa", width=0.125)`` is a few hundred thousand parameters.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from miner.errors import UsageError
from miner.models.base import Classifier
from miner.models.registry import register_model


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class ResNet(Classifier):
    """ResNet trunk (conv1, bn1, relu, maxpool, layer1-4) + GAP + one binary branch per class.

    X = layer4's output (stride 32); ``feature_layer = "layer4"``.
    """

    feature_layer = "layer4"
    map_layers = ("layer1", "layer2", "layer3", "layer4")
    #: a stride-s cell i is centred on input pixel s * i ('same'-padded strided layers; `miner.boxes.cell_shift`)
    cell_origin = "corner"

    def __init__(
        self,
        block: str,
        depths: Sequence[int],
        *,
        classes: Sequence[str],
        in_chans: int = 1,
        width: float = 1.0,
        head: str = "linear",
        head_hidden: int | None = None,
        pooling: str = "avg",
        pool_r: float = 10.0,
        pool_k: float = 0.1,
        pool_alpha: float = 0.0,
        zero_init_residual: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(classes=classes, in_chans=in_chans, mean=mean, std=std)
        if not width > 0:
            raise UsageError(f"width must be positive, got {width}")
        blk = _BLOCKS[block]
        self.width = float(width)
        self.inplanes = _scaled(64, width)
        self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(blk, _scaled(64, width), depths[0])
        self.layer2 = self._make_layer(blk, _scaled(128, width), depths[1], stride=2)
        self.layer3 = self._make_layer(blk, _scaled(256, width), depths[2], stride=2)
        self.layer4 = self._make_layer(blk, _scaled(512, width), depths[3], stride=2)
        self.stage_channels = (
            _scaled(64, width) * blk.expansion,
            _scaled(128, width) * blk.expansion,
            _scaled(256, width) * blk.expansion,
            _scaled(512, width) * blk.expansion,
        )
        self._init_trunk(zero_init_residual)
        self._build_head(self._head_dim(), head=head, hidden=head_hidden, pooling=pooling, pool_r=pool_r,
                         pool_k=pool_k, pool_alpha=pool_alpha)

    def _head_dim(self) -> int:
        return self.stage_channels[3]

    def _make_layer(self, blk: type[nn.Module], planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * blk.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * blk.expansion, stride), nn.BatchNorm2d(planes * blk.expansion)
            )
        layers = [blk(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * blk.expansion
        layers += [blk(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_trunk(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Normalised input -> outputs of layer1..layer4 (strides 4, 8, 16, 32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return c1, c2, c3, c4

    def _features(self, x: Tensor) -> Tensor:
        return self.stages(x)[3]

    @property
    def feature_stages(self) -> dict[str, tuple[int, int]]:
        return {"layer4": (0, self.feature_dim)}

    def trunk_modules(self) -> list[str]:
        return ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


class MSA(nn.Module):
    """Multi-scale aggregation (Cai et al. Sec. 2.3, Fig. 1).

    X_k (stage 4, [B, C4, S/32, S/32]) -> 1x1 conv to `hi` channels (+BN, ReLU) -> x2 upsampling
    (bilinear, or a 3x3 transposed convolution with stride 2 followed by BN, ReLU);
    X_{k-1} (stage 3, [B, C3, S/16, S/16]) -> 1x1 conv to `lo` channels (+BN, ReLU);
    output = concat([hi, lo]) (Tensor[B, hi + lo, S/16, S/16]).

    BN + ReLU after each 1x1 conv is our choice (the paper gives only the conv shapes): it keeps X
    non-negative like the ResNet features CAM was designed on, and trains stably from random init.
    """

    def __init__(self, c4: int, c3: int, *, hi: int = 512, lo: int = 256, upsample: str = "bilinear") -> None:
        super().__init__()
        if upsample not in ("bilinear", "deconv"):
            raise UsageError(f"upsample must be 'bilinear' or 'deconv', got {upsample!r}")
        self.upsample_mode = upsample
        self.reduce4 = nn.Sequential(conv1x1(c4, hi), nn.BatchNorm2d(hi), nn.ReLU(inplace=True))
        self.reduce3 = nn.Sequential(conv1x1(c3, lo), nn.BatchNorm2d(lo), nn.ReLU(inplace=True))
        if upsample == "deconv":
            self.up = nn.Sequential(
                nn.ConvTranspose2d(hi, hi, kernel_size=3, stride=2, padding=1, output_padding=1, bias=False),
                nn.BatchNorm2d(hi),
                nn.ReLU(inplace=True),
            )
        else:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.out_channels = hi + lo
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, c4: Tensor, c3: Tensor) -> Tensor:
        up = self.up(self.reduce4(c4))
        lo = self.reduce3(c3)
        if up.shape[-2:] != lo.shape[-2:]:  # odd stage-3 sizes: align to stage 3
            up = F.interpolate(up, size=lo.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([up, lo], dim=1)


def upsample_cells(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling that keeps strided cells on their centres: x (Tensor[B, K, h, w]) -> Tensor[B, K, H, W].

    A ResNet's stride-s cell i is centred on input pixel s * i (every stride-2 layer, the 7x7 stem included, has
    'same' padding, so its output j is centred on input 2 j). Output cell m of a grid f = H / h times finer must
    therefore read input cell m / f -- not (m + 0.5) / f - 0.5 as ``align_corners=False`` does, which moves the
    coarse grid (f - 1) / 2 fine cells down and right of the fine one (4 px for stage 3 and 12 px for stage 4 on
    the stride-8 grid). Beyond the last cell the value is held. Two small interpolation matrices (an exact,
    exportable MatMul pair).
    """
    h, w = x.shape[-2:]
    return torch.einsum("Hh,bkhw,Ww->bkHW", _cell_matrix(size[0], h, x), x, _cell_matrix(size[1], w, x))


def _cell_matrix(out: int, inp: int, like: Tensor) -> Tensor:
    """U [out, inp] with U[m, i] = max(0, 1 - |min(m * inp / out, inp - 1) - i|)."""
    src = (torch.arange(out, dtype=torch.float64) * (inp / out)).clamp(max=inp - 1)
    weight = (1 - (src.view(-1, 1) - torch.arange(inp, dtype=torch.float64).view(1, -1)).abs()).clamp(min=0)
    return weight.to(device=like.device, dtype=like.dtype)


class MSA8(nn.Module):
    """Multi-scale aggregation at stride 8: Cai et al.'s MSA extended down to stage 2.

    X_k (stage 4, S/32) -> 1x1 conv to `hi` channels (+BN, ReLU), bilinear x4; X_{k-1} (stage 3, S/16) -> 1x1 conv
    to `mid` channels (+BN, ReLU), bilinear x2; X_{k-2} (stage 2, S/8) -> 1x1 conv to `lo` channels (+BN, ReLU);
    output = concat([hi, mid, lo]) (Tensor[B, hi + mid + lo, S/8, S/8]); with `fuse`, a 3x3 conv (+BN, ReLU) to
    `fuse` channels on top. The upsampling keeps every stage's cells on their centres (`upsample_cells`).

    A linear map commutes with bilinear upsampling, so the CAM of this X is up4(CAM of stage 4's part) +
    up2(CAM of stage 3's part) + CAM of stage 2's part: the coarse stages say which finding, the stage-2 part
    can say where at 8-px cells (a 17-px nodule at 256 px spans two cells instead of one at stride 16).
    """

    def __init__(self, c4: int, c3: int, c2: int, *, hi: int = 512, mid: int = 256, lo: int = 128,
                 fuse: int = 0) -> None:
        super().__init__()
        self.upsample_mode = "bilinear"
        self.reduce4 = nn.Sequential(conv1x1(c4, hi), nn.BatchNorm2d(hi), nn.ReLU(inplace=True))
        self.reduce3 = nn.Sequential(conv1x1(c3, mid), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.reduce2 = nn.Sequential(conv1x1(c2, lo), nn.BatchNorm2d(lo), nn.ReLU(inplace=True))
        self.out_channels = hi + mid + lo
        self.fuse = None
        if fuse:
            self.fuse = nn.Sequential(conv3x3(self.out_channels, fuse), nn.BatchNorm2d(fuse), nn.ReLU(inplace=True))
            self.out_channels = fuse
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, c4: Tensor, c3: Tensor, c2: Tensor) -> Tensor:
        size = (int(c2.shape[-2]), int(c2.shape[-1]))
        up4 = upsample_cells(self.reduce4(c4), size)
        up3 = upsample_cells(self.reduce3(c3), size)
        x = torch.cat([up4, up3, self.reduce2(c2)], dim=1)
        return x if self.fuse is None else self.fuse(x)


MSA_STRIDES = (16, 8)


class ResNetMSA(ResNet):
    """ResNet + MSA: X = concat(up2(conv1x1(layer4)), conv1x1(layer3)) at stride 16 (768 channels at width 1);
    with ``msa_stride=8``, concat(up4(conv1x1(layer4)), up2(conv1x1(layer3)), conv1x1(layer2)) at stride 8
    (896 channels at width 1, `MSA8`)."""

    feature_layer = "msa"
    map_layers = ("layer3", "layer4", "msa")

    def __init__(self, block: str, depths: Sequence[int], *, upsample: str = "bilinear", msa_stride: int = 16,
                 msa_fuse: int = 0, **kwargs) -> None:
        if msa_stride not in MSA_STRIDES:
            raise UsageError(f"msa_stride must be one of {MSA_STRIDES}, got {msa_stride!r}")
        if msa_stride == 8 and upsample != "bilinear":
            raise UsageError("msa_stride=8 upsamples bilinearly only (upsample='bilinear')")
        self._msa_upsample = upsample
        self.msa_stride = int(msa_stride)
        if msa_fuse and msa_stride != 8:
            raise UsageError("msa_fuse applies to msa_stride=8")
        self.msa_fuse = int(msa_fuse)
        super().__init__(block, depths, **kwargs)

    def _head_dim(self) -> int:
        if self.msa_stride == 8:
            self.msa = MSA8(self.stage_channels[3], self.stage_channels[2], self.stage_channels[1],
                            hi=_scaled(512, self.width), mid=_scaled(256, self.width), lo=_scaled(128, self.width),
                            fuse=_scaled(self.msa_fuse, self.width) if self.msa_fuse else 0)
        else:
            self.msa = MSA(
                self.stage_channels[3],
                self.stage_channels[2],
                hi=_scaled(512, self.width),
                lo=_scaled(256, self.width),
                upsample=self._msa_upsample,
            )
        return self.msa.out_channels

    @property
    def feature_stages(self) -> dict[str, tuple[int, int]]:
        """X = concat(layer4's part, layer3's part[, layer2's part]); {} with a fusion conv (it mixes them)."""
        msa = self.msa
        if getattr(msa, "fuse", None) is not None:
            return {}
        hi = int(msa.reduce4[0].out_channels)
        mid = int(msa.reduce3[0].out_channels)
        if self.msa_stride == 8:
            return {"layer4": (0, hi), "layer3": (hi, hi + mid), "layer2": (hi + mid, self.feature_dim)}
        return {"layer4": (0, hi), "layer3": (hi, self.feature_dim)}

    def _features(self, x: Tensor) -> Tensor:
        _, c2, c3, c4 = self.stages(x)
        if self.msa_stride == 8:
            return self.msa(c4, c3, c2)
        return self.msa(c4, c3)


def _options_doc(fn):
    fn.__doc__ = (fn.__doc__ or "") + (
        "\n\n    Options: width (float, 1.0), head ('linear' | 'mlp'), head_hidden (int, mlp only),"
        " pooling ('avg' | 'lse' | 'topk', with pool_r, pool_k, pool_alpha: `miner.models.pooling`),"
        " zero_init_residual (bool), mean/std (per-channel normalisation of [0, 1] inputs)."
    )
    return fn


def _resnet(block: str, depths: tuple[int, ...], options: dict, *, msa: bool = False):
    """Build a ResNet / ResNet-MSA from a constructor's keyword options."""
    return (ResNetMSA if msa else ResNet)(block, depths, **options)


@register_model("resnet18")
@_options_doc
def resnet18(*, classes, in_chans=1, width=1.0, head="linear", head_hidden=None, pooling="avg", pool_r=10.0,
             pool_k=0.1, pool_alpha=0.0, zero_init_residual=False, mean=None, std=None) -> ResNet:
    """ResNet-18 (BasicBlock [2, 2, 2, 2]); torchvision-compatible keys at width 1, linear head."""
    return _resnet("basic", (2, 2, 2, 2), dict(locals()))


@register_model("resnet50")
@_options_doc
def resnet50(*, classes, in_chans=1, width=1.0, head="linear", head_hidden=None, pooling="avg", pool_r=10.0,
             pool_k=0.1, pool_alpha=0.0, zero_init_residual=False, mean=None, std=None) -> ResNet:
    """ResNet-50 (Bottleneck [3, 4, 6, 3]); torchvision-compatible keys at width 1, linear head."""
    return _resnet("bottleneck", (3, 4, 6, 3), dict(locals()))


@register_model("resnet18_msa")
@_options_doc
def resnet18_msa(*, classes, in_chans=1, width=1.0, upsample="bilinear", msa_stride=16, msa_fuse=0, head="linear",
                 head_hidden=None, pooling="avg", pool_r=10.0, pool_k=0.1, pool_alpha=0.0, zero_init_residual=False,
                 mean=None, std=None) -> ResNetMSA:
    """ResNet-18 trunk + MSA (upsample 'bilinear' | 'deconv'); X has 768 * width channels at stride 16, or
    896 * width at stride 8 with msa_stride=8."""
    return _resnet("basic", (2, 2, 2, 2), dict(locals()), msa=True)


@register_model("resnet50_msa")
@_options_doc
def resnet50_msa(*, classes, in_chans=1, width=1.0, upsample="bilinear", msa_stride=16, msa_fuse=0, head="linear",
                 head_hidden=None, pooling="avg", pool_r=10.0, pool_k=0.1, pool_alpha=0.0, zero_init_residual=False,
                 mean=None, std=None) -> ResNetMSA:
    """ResNet-50 trunk + MSA (Cai et al.): X = [B, 768, S/16, S/16] at width 1 ([B, 896, S/8, S/8] with
    msa_stride=8)."""
    return _resnet("bottleneck", (3, 4, 6, 3), dict(locals()), msa=True)
