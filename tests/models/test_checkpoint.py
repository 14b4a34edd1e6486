from __future__ import annotations

import pytest
import torch

from miner.errors import ModelError
from miner.models import create_model, load_checkpoint, load_pretrained, read_checkpoint, save_checkpoint


@pytest.mark.parametrize("name,options", [("resnet18_msa", {"width": 0.125, "upsample": "deconv"}),
                                          ("resnet18", {"width": 0.125, "head": "mlp"})])
def test_checkpoint_round_trip(tmp_path, name, options):
    torch.manual_seed(0)
    model = create_model(name, classes=("Mass", "Nodule", "Effusion"), **options)
    model.train()
    model(torch.rand(4, 1, 64, 64))  # move BN running stats away from their init
    model.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
    path = save_checkpoint(tmp_path / "m.pt", model, meta={"input_size": 64, "stage": "base", "epoch": 2})
    loaded, meta = load_checkpoint(path)
    with torch.no_grad():
        after = loaded(x)
    assert torch.equal(before, after)
    assert meta["arch"] == name and meta["options"] == options
    assert meta["classes"] == ["Mass", "Nodule", "Effusion"] and loaded.classes == ("Mass", "Nodule", "Effusion")
    assert meta["input_size"] == 64 and meta["stage"] == "base" and meta["epoch"] == 2
    assert meta["mean"] == pytest.approx([0.449]) and meta["std"] == pytest.approx([0.226])
    assert not loaded.training
    # readable by the restricted unpickler
    torch.load(path, weights_only=True)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "raw.pt")
    with pytest.raises(ModelError, match="not an attention-miner checkpoint"):
        read_checkpoint(tmp_path / "raw.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")


def test_load_pretrained_imagenet_layout(tmp_path):
    torch.manual_seed(0)
    # a torchvision-layout 3-channel, 1000-class file (stands in for resnet18 ImageNet weights)
    src = create_model("resnet18", num_classes=1000, in_chans=3, mean=(0.449,) * 3, std=(0.226,) * 3)
    state = src.state_dict()
    for k in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[k]  # old torchvision files have none
    torch.save(state, tmp_path / "imagenet.pth")

    grey = create_model("resnet18_msa")
    report = load_pretrained(grey, tmp_path / "imagenet.pth")
    assert "fc.weight" in report["dropped"] and any(k.startswith("msa.") for k in report["initialised"])
    assert torch.allclose(grey.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(grey.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # a grey image through the summed stem == the same image replicated on RGB through the original stem
    src.eval()
    grey.eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        a = grey.stages(grey.normalise(x))[3]
        b = src.stages(src.normalise(x.expand(-1, 3, -1, -1)))[3]
    assert torch.allclose(a, b, atol=1e-4)

    with pytest.raises(ModelError, match="do not fit"):
        load_pretrained(create_model("resnet50"), tmp_path / "imagenet.pth")
