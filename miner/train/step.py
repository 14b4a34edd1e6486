"""One training forward: plain classification or attention mining with knowledge preservation.

`TrainForward` wraps a classifier so that everything that needs the current weights (features, erasure masks,
erased logits) happens inside one ``forward`` call: DistributedDataParallel only synchronises gradients of
computations run through its own ``forward``.

AM batch layout (Cai et al. Sec. 2.2): the first n = max(1, floor(N * fraction)) images are erased
(KP-Vanilla and KP), or all N (``kp="none"``); the other N - n images are classified un-erased. With KP,
a frozen copy N_A of the network taken at the start of AM sees the same batch, and
L = L_cls + lambda * L_KP, L_KP comparing GAP features of N_A and N_B on the N - n un-erased images.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from miner.errors import UsageError
from miner.train.erasure import erasure_masks
from miner.train.losses import classification_loss, kp_loss

KP_MODES = ("none", "vanilla", "kp")


def erased_count(batch: int, *, kp: str, fraction: float) -> int:
    """n, the number of images of a batch of N that AM erases: N for ``kp="none"``, else max(1, floor(N f))."""
    if kp not in KP_MODES:
        raise UsageError(f"--kp must be one of {KP_MODES}, got {kp!r}")
    if kp == "none":
        return batch
    return min(batch, max(1, int(batch * fraction)))


class LayerTap:
    """Records the outputs of named submodules (forward hooks) at every forward."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.outputs: dict[str, Tensor] = {}
        self._handles = []
        for name in names:
            module = model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.outputs[name] = output

        return hook

    def pop(self) -> dict[str, Tensor]:
        out, self.outputs = self.outputs, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def resolve_kp_layers(model: nn.Module, layers: Sequence[str], *, explicit: bool) -> tuple[str, ...]:
    """The KP layer names that exist in `model` (``logits`` = the classifier output).

    With the default list, layers a model lacks (``msa`` in a plain ResNet) are skipped; an explicit list
    must name existing modules.
    """
    names = dict(model.named_modules())
    out = []
    for layer in layers:
        if layer == "logits" or layer in names:
            out.append(layer)
        elif explicit:
            raise UsageError(f"--kp-layers: {type(model).__name__} has no module {layer!r}")
    if not explicit and all(layer == "logits" for layer in out):
        # a model without ResNet stages (DC-FPN): its own map layers (per-scale features) stand in
        out = [n for n in getattr(model, "map_layers", ()) if n in names] + out
    if not out:
        raise UsageError(f"no KP layer of {list(layers)} exists in {type(model).__name__}")
    return tuple(out)


class TrainForward(nn.Module):
    """forward(images, n_erase, depth) -> (logits Tensor[N, C], masks Tensor[n, C, h, w] | None).

    Images [:n_erase] feed branch c with X * M^c (M from `depth` erasures of the current maps); the rest are
    classified as they are.
    """

    def __init__(self, model: nn.Module, *, threshold: float = 0.5, connectivity: int = 8) -> None:
        super().__init__()
        self.model = model
        self.threshold = threshold
        self.connectivity = connectivity

    def forward(self, images: Tensor, n_erase: int = 0, depth: int = 1) -> tuple[Tensor, Tensor | None]:
        m = self.model
        feats = m.forward_features(images)
        if n_erase <= 0:
            return m.forward_head(feats), None
        masks = erasure_masks(m, feats[:n_erase].detach(), steps=depth, threshold=self.threshold,
                              connectivity=self.connectivity)
        erased = m.forward_head(feats[:n_erase], masks=masks.to(feats.dtype))
        if n_erase >= feats.shape[0]:
            return erased, masks
        # the head runs on the whole batch (cheap) so that the un-erased logits are computed exactly as the
        # frozen reference computes them: L_KP is then exactly 0 before the first update
        return torch.cat([erased, m.forward_head(feats)[n_erase:]], dim=0), masks


@dataclass
class StepLosses:
    loss: Tensor
    cls: Tensor
    kp: Tensor | None
    n_erased: int


class KnowledgePreservation:
    """The frozen reference N_A and the taps on N_B's layers K (Eq. 4-5).

    N_A sees the same whole batch as N_B and mirrors N_B's BatchNorm mode at every step: where N_B normalises
    with batch statistics, so does N_A (its BN momentum is 0, so its running statistics never move). L_KP is
    then exactly 0 before the first update in either mode. Batch statistics do not carry the erasure from the
    first n images to the others: erasure acts on X, after the last BatchNorm (the heads have none).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, norm: str = "image",
                 reference_state: dict | None = None) -> None:
        self.layers = tuple(layers)
        self.norm = norm
        self.model = model
        self.reference = copy.deepcopy(model).eval()
        if reference_state is not None:
            self.reference.load_state_dict(reference_state)
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self._bn_pairs = [
            (a, b) for a, b in zip(self.reference.modules(), model.modules())
            if isinstance(a, nn.modules.batchnorm._BatchNorm)
        ]
        for a, _ in self._bn_pairs:
            a.momentum = 0.0
        module_layers = [name for name in self.layers if name != "logits"]
        self.tap_b = LayerTap(model, module_layers)
        self.tap_a = LayerTap(self.reference, module_layers)

    def reference_state(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.reference.state_dict().items()}

    @torch.no_grad()
    def reference_outputs(self, images: Tensor) -> dict[str, Tensor]:
        for a, b in self._bn_pairs:
            a.train(b.training)
        self.tap_a.pop()
        logits = self.reference(images)
        out = self.tap_a.pop()
        out["logits"] = logits
        return out

    def loss(self, outputs_b: dict[str, Tensor], outputs_a: dict[str, Tensor], keep: slice) -> Tensor:
        a = {k: outputs_a[k][keep] for k in self.layers}
        b = {k: outputs_b[k][keep] for k in self.layers}
        return kp_loss(a, b, norm=self.norm)

    def remove(self) -> None:
        self.tap_a.remove()
        self.tap_b.remove()


def training_losses(
    forward: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    am: bool = False,
    kp_mode: str = "none",
    fraction: float = 0.125,
    depth: int = 1,
    kp: KnowledgePreservation | None = None,
    kp_lambda: float = 0.5,
    w_pos: Tensor | None = None,
    w_neg: Tensor | None = None,
) -> StepLosses:
    """Losses of one batch. `forward` is a `TrainForward` (possibly wrapped in DDP).

    Args:
        images: (Tensor[N, in_chans, S, S] in [0, 1]); targets: (Tensor[N, C] in {0, 1}).
        am: attention-mining batch (else plain classification).
        kp_mode: ``none`` | ``vanilla`` | ``kp`` (needs `kp`).
    """
    n = erased_count(images.shape[0], kp=kp_mode, fraction=fraction) if am else 0
    if kp is not None:
        kp.tap_b.pop()
    logits, _ = forward(images, n, depth)
    cls = classification_loss(logits, targets, w_pos=w_pos, w_neg=w_neg)
    if am and kp_mode == "kp" and kp is not None and n < images.shape[0]:
        outputs_b = kp.tap_b.pop()
        outputs_b["logits"] = logits
        outputs_a = kp.reference_outputs(images)
        lkp = kp.loss(outputs_b, outputs_a, slice(n, None))
        return StepLosses(cls + kp_lambda * lkp, cls, lkp, n)
    return StepLosses(cls, cls, None, n)
