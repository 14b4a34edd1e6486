from __future__ import annotations

from pathlib import Path

import pytest
import torch

from miner.errors import UsageError
from miner.models import create_model, list_models

DATA = Path(__file__).parent / "data"


def expected_keys(name: str) -> list[tuple[str, list[int]]]:
    rows = []
    for line in (DATA / f"torchvision_{name}_keys.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, [int(v) for v in shape.strip("[]").split(",") if v.strip()]))
    return rows


def actual_keys(model) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_state_dict_equals_torchvision(name):
    # torchvision resnetXX(num_classes=1000): same keys, same order, same shapes
    model = create_model(name, num_classes=1000, in_chans=3)
    assert actual_keys(model) == expected_keys(name)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_grey_and_branch_head_differ_only_in_conv1_and_fc(name):
    model = create_model(name)  # 14 ChestX-ray14 branches, 1 channel
    expected = dict(expected_keys(name))
    actual = dict(actual_keys(model))
    assert list(actual) == list(expected)
    d = expected["fc.weight"][1]
    assert actual.pop("conv1.weight") == [64, 1, 7, 7]
    assert actual.pop("fc.weight") == [14, d]
    assert actual.pop("fc.bias") == [14]
    for key in ("conv1.weight", "fc.weight", "fc.bias"):
        expected.pop(key)
    assert actual == expected
    assert model.head_weight.shape == (14, d) and model.head_bias.shape == (14,)


def test_msa_512_gives_32x32x768():
    model = create_model("resnet50_msa").eval()
    with torch.no_grad():
        x = model.forward_features(torch.rand(1, 1, 512, 512))
    assert x.shape == (1, 768, 32, 32)
    assert model.feature_layer == "msa" and model.head_weight.shape == (14, 768)


@pytest.mark.parametrize("upsample", ["bilinear", "deconv"])
def test_msa_upsampling_and_width(upsample):
    model = create_model("resnet18_msa", upsample=upsample, width=0.25).eval()
    with torch.no_grad():
        x = model.forward_features(torch.rand(2, 1, 128, 128))
    assert x.shape == (2, 128 + 64, 8, 8)  # (512 + 256) * 0.25 channels at stride 16
    keys = model.state_dict().keys()
    assert ("msa.up.0.weight" in keys) == (upsample == "deconv")
    if upsample == "deconv":
        assert tuple(model.state_dict()["msa.up.0.weight"].shape) == (128, 128, 3, 3)


def test_feature_layer_is_a_named_module_whose_output_is_x():
    for name in ("resnet18", "resnet18_msa"):
        model = create_model(name, width=0.125).eval()
        seen = {}
        handle = model.get_submodule(model.feature_layer).register_forward_hook(
            lambda m, i, o, seen=seen: seen.update(o=o))
        x = torch.rand(2, 1, 64, 64)
        with torch.no_grad():
            feats = model.forward_features(x)
        handle.remove()
        assert torch.equal(seen["o"], feats)
        for layer in model.map_layers:
            model.get_submodule(layer)


def test_normalisation_inside_forward_features():
    model = create_model("resnet18", width=0.125).eval()
    assert model.mean == pytest.approx((0.449,)) and model.std == pytest.approx((0.226,))
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ref = model._features((x - 0.449) / 0.226)
        assert torch.allclose(model.forward_features(x), ref, atol=1e-6)
    rgb = create_model("resnet18", width=0.125, in_chans=3).eval()
    assert rgb.mean == pytest.approx((0.485, 0.456, 0.406))
    with torch.no_grad():  # a grey batch is replicated onto the three channels
        assert torch.allclose(rgb(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-6)
    assert "_mean" not in model.state_dict()


def test_registry_names_and_errors():
    assert {"resnet18", "resnet50", "resnet18_msa", "resnet50_msa"} <= set(list_models())
    with pytest.raises(UsageError, match="unknown model"):
        create_model("resnet51")
    with pytest.raises(UsageError, match="no option"):
        create_model("resnet18", upsampel="deconv")
    with pytest.raises(UsageError, match="upsample"):
        create_model("resnet18_msa", upsample="nearest")
    model = create_model("resnet18", classes=("Mass", "Nodule"), width=0.125)
    assert model.classes == ("Mass", "Nodule") and model.fc.out_features == 2
    assert model.arch == "resnet18" and model.options == {"width": 0.125}
