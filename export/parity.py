"""Parity of an exported graph with eager PyTorch: same inputs, max absolute difference per output.

Used by `miner export onnx --check` (ONNX Runtime vs eager `miner.cam.class_maps`), by the tests, and
by the TensorRT engine check on a GPU.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: the tolerance `miner export onnx --check` enforces on logits and maps (float32 end to end)
DEFAULT_ATOL = 1e-4


@dataclass
class ParityReport:
    """Max absolute difference per output over all cases; `ok` when every one is within `atol`."""

    atol: float
    max_abs: dict[str, float] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)
    #: what the graph was compared with
    reference: str = "eager float32"
    #: a note on an earlier comparison (e.g. the float32 result when the float64 reference decided)
    note: str = ""

    def bound(self, name: str) -> float:
        """`atol`, scaled by the output's largest magnitude where that exceeds 1.

        Float32 sums carry a relative error of ~1e-7 per thousand terms, so an output in the thousands
        (a segmentation net's pixel-set scores) cannot match to 1e-4 absolute in any two runtimes.
        """
        return self.atol * max(1.0, self.scale.get(name, 0.0))

    @property
    def ok(self) -> bool:
        return all(np.isfinite(v) and v <= self.bound(k) for k, v in self.max_abs.items())

    def add(self, case: str, name: str, got: np.ndarray, want: np.ndarray) -> None:
        if got.shape != want.shape:
            diff = float("inf")
        else:
            diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if got.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
        self.max_abs[name] = max(self.max_abs.get(name, 0.0), diff)
        peak = float(np.max(np.abs(want))) if want.size else 0.0
        self.scale[name] = max(self.scale.get(name, 0.0), peak if np.isfinite(peak) else 0.0)
        if case not in self.cases:
            self.cases.append(case)

    def line(self) -> str:
        """One line: ``logits max|diff| 2.2e-08, maps 1.5e-10 (atol 1e-04; random batch 2, phantom)``."""
        parts = ", ".join(
            f"{k} max|diff| {v:.2g}" + (f" (max|ref| {self.scale[k]:.3g})" if self.scale.get(k, 0) > 1 else "")
            for k, v in self.max_abs.items()
        )
        line = f"{parts} vs {self.reference}; atol {self.atol:.0e}; inputs: {', '.join(self.cases)}"
        return line + (f" ({self.note})" if self.note else "")


def ort_session(
    path: str | Path,
    *,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    intra_op_threads: int | None = None,
):
    """An ONNX Runtime session with all graph optimisations and explicit providers."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def run_session(session: Any, images: Tensor, masks: Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, maps) of an ONNX Runtime session on CPU tensors."""
    feeds = {"images": images.detach().cpu().contiguous().numpy()}
    names = {i.name for i in session.get_inputs()}
    if "masks" in names:
        if masks is None:
            b = images.shape[0]
            shape = [d for d in session.get_inputs()[1].shape]
            masks = torch.ones(b, *[int(d) for d in shape[1:]])
        feeds["masks"] = masks.detach().cpu().contiguous().numpy()
    elif masks is not None:
        raise ValueError("this graph has no masks input")
    logits, maps = session.run(["logits", "maps"], feeds)
    return logits, maps


def compare(
    run: Callable[[Tensor, Tensor | None], tuple[Any, Any]],
    reference: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]],
    cases: Sequence[tuple[str, Tensor, Tensor | None]],
    *,
    atol: float = DEFAULT_ATOL,
    reference_name: str = "eager float32",
) -> ParityReport:
    """Run `run` and `reference` on each (name, images, masks) case and collect the differences.

    Args:
        run: the exported graph's runner, returning (logits, maps) as arrays or tensors.
        reference: eager PyTorch, returning (logits, maps).
        cases: named inputs (images [B, in_chans, H, W] in [0, 1]; masks [B, C, h, w] or None).
        atol: the tolerance `ParityReport.ok` checks.
    """
    report = ParityReport(atol=float(atol), reference=reference_name)
    for name, images, masks in cases:
        got = run(images, masks)
        with torch.no_grad():
            want = reference(images, masks)
        for out_name, g, w in zip(("logits", "maps"), got, want):
            report.add(name, out_name, _numpy(g), _numpy(w))
    return report


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value)


def check_inputs(
    input_size: tuple[int, int],
    in_chans: int,
    *,
    batch: int = 2,
    seed: int = 0,
) -> list[tuple[str, Tensor]]:
    """Images for a parity check: a random batch and a chest-like phantom image.

    The phantom is a synthetic chest radiograph with lesions from `miner.phantoms.generator` (a deterministic
    smooth stand-in where that module is absent).
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = input_size
    cases = [(f"random batch {batch}", torch.rand(batch, in_chans, h, w, generator=gen))]
    cases.append(("phantom", phantom_image(input_size, in_chans=in_chans, seed=seed)))
    return cases


def phantom_image(input_size: tuple[int, int], *, in_chans: int = 1, seed: int = 0) -> Tensor:
    """One image [1, in_chans, H, W] in [0, 1] that looks like a radiograph rather than noise."""
    h, w = input_size
    try:
        from miner.config import PhantomConfig
        from miner.phantoms.generator import plan_archive, render_image
    except ImportError:  # the phantom generator is optional here
        plan_archive = None
    if plan_archive is not None:
        import cv2

        config = PhantomConfig(images=4, size=max(h, w), seed=seed)
        plans = plan_archive(config)
        # prefer an image with findings (lesions make the maps non-trivial)
        plan = next((p for p in plans if p.lesions), plans[0])
        pixels, _ = render_image(plan, config)
        pixels = cv2.resize(pixels, (w, h), interpolation=cv2.INTER_AREA) if pixels.shape != (h, w) else pixels
        img = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    else:
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        body = ((xx / 0.85) ** 2 + (yy / 0.95) ** 2 <= 1).float() * 0.7
        lungs = sum(
            torch.exp(-(((xx - cx) / 0.28) ** 2 + ((yy + 0.05) / 0.5) ** 2)) for cx in (-0.38, 0.38)
        )
        rng = np.random.default_rng(seed)
        bx, by = rng.uniform(-0.5, 0.5, size=2)
        blob = torch.exp(-(((xx - bx) / 0.08) ** 2 + ((yy - by) / 0.08) ** 2))
        img = (0.1 + body - 0.45 * lungs + 0.3 * blob).clamp(0, 1)
    return img.view(1, 1, h, w).expand(1, in_chans, h, w).contiguous()
