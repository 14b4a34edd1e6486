"""The gradient-graph route: make_fx trace of autograd + the convolution_backward translation, vs eager autograd."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from miner.cam import inference_state
from miner.cam.graph import trace_graph
from miner.export.onnx import export_graph
from miner.export.parity import ort_session


class ConvZoo(nn.Module):
    """Every convolution shape whose input gradient needs a different ConvTranspose/Conv translation."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([
            nn.Conv2d(2, 4, 3, padding=1),                     # stride 1: ConvTranspose, no output padding
            nn.Conv2d(4, 4, 3, stride=2, padding=1),           # 17 -> 9 -> back to 17: output_padding 0
            nn.Conv2d(4, 6, 3, stride=2, padding=1),           # 9 -> 5 -> back to 9: output_padding 0
            nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2),  # dilated, grouped
            nn.Conv2d(6, 6, 2, stride=2),                      # 5 -> 2 -> back to 5: output_padding 1
            nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1),  # transposed: Conv
            nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2),   # grouped transposed
            nn.Conv2d(4, 3, 1, bias=False),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x


def _input_gradient(model: nn.Module):
    def f(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            out = model(leaf)
            score = (out * torch.linspace(-1, 1, out.shape[-1])).sum()
            (grad,) = torch.autograd.grad(score, leaf)
        return out.detach(), grad

    return f


@pytest.fixture(scope="module")
def zoo_graph(tmp_path_factory):
    torch.manual_seed(0)
    model = ConvZoo().eval()
    f = _input_gradient(model)
    example = (torch.rand(2, 2, 17, 17),)
    with inference_state(model):
        gm = trace_graph(f, example)
        folder = tmp_path_factory.mktemp("zoo")
        path = export_graph(gm, example, folder / "zoo.onnx", input_names=["images"], output_names=["logits", "maps"])
        external = export_graph(gm, example, folder / "zoo_ext.onnx", input_names=["images"],
                                output_names=["logits", "maps"], external_data=True)
    return model, f, path, external


@pytest.mark.parametrize("batch", [1, 5])
def test_input_gradients_match_autograd(zoo_graph, batch):
    model, f, path, _ = zoo_graph
    x = torch.rand(batch, 2, 17, 17, generator=torch.Generator().manual_seed(batch))
    out, grad = ort_session(path).run(None, {"images": x.numpy()})
    with inference_state(model):
        want_out, want_grad = f(x)
    assert grad.shape == (batch, 2, 17, 17)
    for got, want in ((out, want_out.numpy()), (grad, want_grad.numpy())):
        peak = np.abs(want).max()
        assert peak > 0
        assert np.abs(got - want).max() <= 1e-5 * peak  # float32 agreement, relative to the values' scale


def test_translation_emits_transposed_convolutions(zoo_graph):
    _, _, path, _ = zoo_graph
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # 6 Conv forward + 2 ConvTranspose forward; backward: each Conv -> ConvTranspose, each ConvTranspose -> Conv.
    # The first conv's input gradient is needed too (gradient w.r.t. the graph input).
    assert ops.count("ConvTranspose") == 2 + 6
    assert ops.count("Conv") == 6 + 2
    assert "Identity" not in ops  # the placeholder weight/bias gradients are pruned


def test_external_data_side_file(zoo_graph):
    model, f, path, external = zoo_graph
    data = external.with_name(external.name + ".data")
    assert data.exists() and data.stat().st_size > 0
    assert external.stat().st_size < path.stat().st_size
    x = torch.rand(3, 2, 17, 17)
    a = ort_session(path).run(None, {"images": x.numpy()})
    b = ort_session(external).run(None, {"images": x.numpy()})
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_inference_state_restores_flags_and_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    model[0].bias.requires_grad_(False)
    with inference_state(model):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert model.training
    assert model[0].weight.requires_grad and not model[0].bias.requires_grad


def test_trace_needs_a_batch_of_two():
    with pytest.raises(ValueError, match="at least 2"):
        trace_graph(lambda x: (x, x), (torch.rand(1, 1, 4, 4),))


def test_diagonal_backward_is_exported(tmp_path):
    """diagonal() in a traced gradient: the stock decomposition writes in place; ours is functional."""
    w = torch.randn(3, 3, 4)

    def f(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            y = torch.einsum("bk,cdk->bcd", leaf, w)  # [B, 3, 3]
            score = y.diagonal(dim1=1, dim2=2).sum() + y.diagonal(offset=1, dim1=1, dim2=2).sum()
            (grad,) = torch.autograd.grad(score, leaf)
        return y.detach(), grad

    x = torch.rand(2, 4)
    gm = trace_graph(f, (x,))
    path = export_graph(gm, (x,), tmp_path / "diag.onnx", input_names=["images"], output_names=["logits", "maps"])
    xs = torch.rand(4, 4)
    _, grad = ort_session(path).run(None, {"images": xs.numpy()})
    np.testing.assert_allclose(grad, f(xs)[1].numpy(), atol=1e-5)
