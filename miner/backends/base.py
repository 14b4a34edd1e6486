"""The one interface every inference backend implements: ``run(images) -> (logits, maps)``.

A backend holds one map-producing model (a checkpoint, an ONNX graph or a TensorRT engine), fixed at
open time to one map method and layer, and answers on its own device:

    backend = open_backend("model.onnx")                   # miner.backends.open_backend
    logits, maps = backend.run(images)                     # images [B, in_chans, S, S] in [0, 1]
    recompute = backend.recompute(images)                  # None for GAP + linear heads
    mining = attention_mining(maps, recompute=recompute)   # miner.mining

A model file is untrusted: when it is opened, its declared inputs and outputs must agree with its record
(`miner.models.meta.check_io`), every batch's outputs must have the shapes the record promises
(`Backend.run`), and `Backend.probe` runs it once on a fixed test batch, which must give finite numbers. Each
failure is one `ModelError` naming the file and what to do (export it again).

Mining (Cai et al.) looks again at features erased class-wise by the masks M of the previous step. For a
GAP + linear head that equals masking the first map, so no second pass is needed and `recompute` returns
None. For any other head the maps of the erased features differ; `recompute(images)` returns a callable
``masks [B, C, h, w] -> maps [B, C, h, w]`` bound to that batch (masks: 1 keeps, 0 erases).
"""
from __future__ import annotations

import abc
from collections.abc import Callable

import torch
from torch import Tensor

from miner.errors import ModelError, UsageError
from miner.models.meta import ModelMeta, check_outputs

#: backend names accepted by `open_backend`
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def non_finite(outputs: Tensor) -> Tensor:
    """Tensor[B] bool: the images whose `outputs` (Tensor[B, ...], logits or maps) hold a NaN or an infinity."""
    if outputs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=outputs.device)
    return ~torch.isfinite(outputs).reshape(outputs.shape[0], -1).all(dim=1)


class Backend(abc.ABC):
    """Base class: subclasses set `name`, `device`, `meta`, `provider` and implement `_run`."""

    #: ``torch`` | ``onnxruntime`` | ``tensorrt``
    name: str = ""
    #: what actually executes (e.g. ``CPUExecutionProvider``, ``torch eager``, ``TensorRT 10.x``)
    provider: str = ""
    #: the model file (named in errors) and what to do when it breaks its record
    source: str = "model"
    remedy: str = "export it again with `miner export onnx CHECKPOINT`"
    nan_remedy: str = "export it again (miner export onnx) from a checkpoint whose outputs are finite"
    device: torch.device
    meta: ModelMeta

    def run(self, images: Tensor, *, masks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits and the maps of every class for one batch.

        Args:
            images: Tensor[B, in_chans (or 1), H, W], float in [0, 1], H x W = `meta.input_size`; moved to
                the backend's device if needed.
            masks: Tensor[B, C, h, w] class-wise erasure masks (1 keep, 0 erase), only where
                `meta.masks_input` (non-linear heads); None = nothing erased.

        Returns:
            (logits Tensor[B, C] float32, maps Tensor[B, C, h, w] float32), on `device`. Values may be NaN or
            infinite (`non_finite` tells which images); shapes are checked.

        Raises:
            ModelError: the outputs' shapes break the model's record (a graph whose dynamic axes lie).
        """
        images = self._check_images(images)
        if masks is not None:
            if not self.meta.masks_input:
                raise UsageError(
                    f"{self.name} backend: this model takes no erasure masks (GAP + linear head: mask the maps instead)"
                )
            masks = self._check_masks(masks, images.shape[0])
        logits, maps = self._run(images, masks)
        check_outputs(self.meta, logits, maps, batch=images.shape[0], source=self.source, remedy=self.remedy)
        return logits, maps

    def probe(self) -> None:
        """Run the model once on a fixed test batch (2 images of seeded noise in [0, 1]; erasure masks too where
        the model takes them) and refuse it where it breaks its record or gives NaN or infinite logits or maps.

        Clean input that makes a model's outputs non-finite, or that the model fails on, is the model's fault
        (NaN weights, a broken graph), not an image's: such a model would only turn every image into an error row.

        Raises:
            ModelError: one line naming the file, what is wrong and what to do.
        """
        import numpy as np

        h, w = self.meta.input_size
        b = max(2, int(getattr(self, "batch_range", (1, 2))[0]))  # an engine's profile may start above 2
        images = torch.from_numpy(np.random.default_rng(0).random((b, self.meta.in_chans, h, w), dtype=np.float32))
        from miner.errors import MinerError

        try:
            with torch.inference_mode():
                logits, maps = self.run(images)
                bad = [name for name, t in (("logits", logits), ("maps", maps)) if not bool(torch.isfinite(t).all())]
                recompute = self.recompute(images)
                if recompute is not None and not bad:
                    erased = torch.ones(b, self.meta.num_classes, *self.meta.map_size, device=self.device)
                    erased[..., : max(1, self.meta.map_size[0] // 2), :] = 0
                    if not bool(torch.isfinite(recompute(erased)).all()):
                        bad.append("maps of erased features")
        except MinerError:
            raise
        except Exception as err:  # noqa: BLE001 - the runtimes' own error types (ONNX Runtime, TensorRT, torch)
            text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
            raise ModelError(f"{self.source}: the model fails on a plain test batch of {b} images "
                             f"({type(err).__name__}: {text[:300]}); {self.remedy}") from None
        if bad:
            raise ModelError(f"{self.source}: the model gives NaN or infinite {' and '.join(bad)} on a plain test "
                             f"image (broken weights or graph), so no image would get boxes; {self.nan_remedy}")

    def recompute(self, images: Tensor) -> Callable[[Tensor], Tensor] | None:
        """For non-linear heads: ``masks [B, C, h, w] -> maps [B, C, h, w]`` of `images` with features erased.

        Returns None for GAP + linear heads (erasing features == masking the first maps). Each call runs
        the model again on `images` with the masks (an ONNX graph or engine cannot keep features between
        runs); the torch backend reuses the features of this batch.
        """
        if not self.meta.masks_input:
            return None
        images = self._check_images(images)

        def recompute(masks: Tensor) -> Tensor:
            return self.run(images, masks=masks)[1]

        return recompute

    @abc.abstractmethod
    def _run(self, images: Tensor, masks: Tensor | None) -> tuple[Tensor, Tensor]:
        """images on `device`, checked; masks checked or None."""

    def describe(self) -> str:
        """One line: backend, provider, device and what the model computes."""
        m = self.meta
        return (
            f"{self.name} ({self.provider}) on {self.device}: {m.arch or 'model'} {m.input_size[0]}x{m.input_size[1]}, "
            f"{m.num_classes} classes, maps {m.method} at {m.layer} {m.map_size[0]}x{m.map_size[1]}"
        )

    def _check_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            images = torch.as_tensor(images)
        if not images.is_floating_point():
            raise UsageError(
                f"{self.name} backend: images must be float in [0, 1], got {images.dtype} (divide 8-bit pixels by 255)"
            )
        if images.dim() == 3:
            images = images.unsqueeze(1)
        h, w = self.meta.input_size
        if images.dim() != 4 or tuple(images.shape[2:]) != (h, w) or images.shape[1] not in (1, self.meta.in_chans):
            raise UsageError(
                f"{self.name} backend: images must be [B, {self.meta.in_chans}, {h}, {w}], got {tuple(images.shape)}"
                " (resize with miner.data.to_model_input)"
            )
        if images.shape[1] != self.meta.in_chans:
            images = images.expand(-1, self.meta.in_chans, -1, -1)
        return images.to(device=self.device, dtype=torch.float32).contiguous()

    def _check_masks(self, masks: Tensor, batch: int) -> Tensor:
        h, w = self.meta.map_size
        want = (batch, self.meta.num_classes, h, w)
        if tuple(masks.shape) != want:
            raise UsageError(f"{self.name} backend: masks must be {list(want)}, got {list(masks.shape)}")
        return masks.to(device=self.device, dtype=torch.float32).contiguous()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
