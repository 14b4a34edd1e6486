"""Attention mining at inference (Cai et al. MICCAI 2018, Sec. 3.2, Eq. 7-8), for a whole batch at once.

With M_0 = 1 (nothing erased), for t = 1..T:

    H_t  = map of the features erased by M_{t-1}                               (Eq. 7: (X * M_{t-1}) w^c)
    H_t <- normalise(H_t) to [0, 1]
    M_t  = M_{t-1}, with the connected component of (H_t >= 0.5) that holds H_t's global maximum set to 0
    H_f  = 1/T sum_t [ H_t + sum_{t' < t} H_t' * (1 - M_t') ]                  (Eq. 8)

**Normalisation.** Eq. 8 fills the erased positions of H_t from earlier maps: at a position erased at step s
(0 in M_s), the bracket of step t > s holds H_t there plus H_s there (and H_t' there for s < t' < t). The
fill-in is consistent -- every position counts exactly one map per step -- only if H_t is exactly 0 wherever
M_{t-1} erased. A raw CAM (no ReLU) is 0 there but may be negative elsewhere, so min-max normalising the
whole map would lift the erased positions to -min/(max - min) > 0 and count them twice. Both modes here map
erased positions to exactly 0:

- ``minmax`` (default): min-max over the positions still kept (M_{t-1} = 1), erased positions set to 0. At
  t = 1 this is the usual CAM normalisation; for non-negative maps (every gradient method ends with ReLU) whose
  kept minimum is 0 it equals ``relu-max``.
- ``relu-max``: ReLU, then divide by the maximum; erased positions are 0 after the ReLU (the raw map is 0
  there).

A map with no signal (constant over its kept positions, or nothing kept) normalises to all zeros: nothing
reaches the threshold, nothing is erased, no NaN.

**Recomputation.** For a GAP + linear head (and CAM, Grad-CAM, HiRes-CAM, LayerCAM at its input), the map of
the erased features is the first map masked: H_t = H_1 * M_{t-1} exactly (CAM(X * M) = sum_k w_k X_k M =
M * CAM(X); `tests/test_mining.py` checks it against recomputation). That shortcut is used when `recompute`
is None. For any other head pass ``recompute(masks) -> maps`` (e.g. ``ClassMapper.erased_maps`` bound to the
batch's features, or a backend's `recompute(images)`), called once per step t >= 2 with all masks of the batch.

Component work goes through `miner.kernels.erase_components` only (one batched call per step for all B * C
maps; Triton on CUDA tensors, the batched CPU path otherwise), and everything stays on the maps' device.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from miner.errors import UsageError

NORMALIZE_MODES = ("minmax", "relu-max")


@contextlib.contextmanager
def small_ops(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the block when `device` is the CPU (restored after).

    Mining and box post-processing run tens of torch ops on tensors of at most ~1M elements. Splitting such an op
    across threads costs more in wake-ups than it saves, and on a CPU shared with other processes it costs far
    more: boxes for 4 x 14 maps took 15 ms on one thread and 129 ms on two while other jobs loaded the machine.
    The model's own thread count is untouched outside the block.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    _MODEL_THREADS.append(threads)
    try:
        yield
    finally:
        _MODEL_THREADS.pop()
        torch.set_num_threads(threads)


class MiningResult(NamedTuple):
    """What attention mining returns (on the maps' device).

    fused (Tensor[B, C, h, w], float32): H_f of Eq. 8, in [0, 1].
    masks (Tensor[T, B, C, h, w], bool): M_1..M_T, True = kept (M_t has the components of steps 1..t erased).
    step_maps (Tensor[T, B, C, h, w], float32): the normalised H_1..H_T (0 where M_{t-1} erased).
    """

    fused: Tensor
    masks: Tensor
    step_maps: Tensor


def normalize_kept(maps: Tensor, kept: Tensor, *, mode: str = "minmax") -> Tensor:
    """Normalise each [h, w] map to [0, 1] over its kept positions; erased positions become exactly 0.

    Args:
        maps: raw maps (Tensor[..., h, w]).
        kept: Tensor[..., h, w] bool (True = kept), broadcastable to maps.
        mode: ``minmax`` or ``relu-max`` (see the module docstring).
    """
    if mode not in NORMALIZE_MODES:
        raise UsageError(f"mining normalisation must be one of {NORMALIZE_MODES}, got {mode!r}")
    x = maps.float()
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if mode == "relu-max":
        x = torch.relu(x)
        lo = torch.zeros_like(x[..., :1, :1])
    else:
        lo = torch.where(kept, x, torch.full_like(x, float("inf"))).amin(dim=(-2, -1), keepdim=True)
    hi = torch.where(kept, x, torch.full_like(x, float("-inf"))).amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    ok = span > 0  # False for a constant map and for a map with nothing kept (span = -inf or nan)
    safe_lo = torch.where(ok, lo, zero)
    safe_span = torch.where(ok, span, torch.ones_like(span))
    out = (x - safe_lo) / safe_span
    return torch.where(kept & ok, out.clamp(0, 1), zero)


def attention_mining(
    maps: Tensor,
    *,
    steps: int = 3,
    threshold: float = 0.5,
    connectivity: int = 8,
    recompute: Callable[[Tensor], Tensor] | None = None,
    normalize: str = "minmax",
) -> MiningResult:
    """T steps of class-wise erasure and the fused map (Eq. 7-8) for every map of the batch.

    Args:
        maps: H_1, the raw class maps (Tensor[B, C, h, w]) of `miner.cam.class_maps` or a backend.
        steps: T (>= 1).
        threshold: binarisation level of the normalised H_t.
        connectivity: 8 or 4.
        recompute: ``masks (Tensor[B, C, h, w] float, 1 = keep) -> raw maps (Tensor[B, C, h, w])`` of the
            erased features; None = the exact linear-head shortcut H_t = H_1 * M_{t-1}.
        normalize: ``minmax`` or ``relu-max`` (module docstring).

    Returns:
        MiningResult(fused, masks, step_maps) on the maps' device.
    """
    from miner.kernels import erase_components

    if maps.dim() != 4:
        raise UsageError(f"maps must be Tensor[B, C, h, w], got shape {tuple(maps.shape)}")
    if steps < 1:
        raise UsageError(f"steps must be at least 1, got {steps}")
    if connectivity not in (4, 8):
        raise UsageError(f"connectivity must be 4 or 8, got {connectivity}")
    with small_ops(maps.device):
        return _mine_steps(maps, steps, threshold, connectivity, recompute, normalize, erase_components)


def _mine_steps(maps, steps, threshold, connectivity, recompute, normalize, erase_components) -> MiningResult:
    b, c, h, w = maps.shape
    first = maps.float()
    kept = torch.ones(b, c, h, w, dtype=torch.bool, device=maps.device)
    step_maps, masks = [], []
    for t in range(steps):
        if t == 0:
            raw = first
        elif recompute is None:
            raw = first * kept
        else:
            with _model_threads():
                raw = recompute(kept.to(first.dtype)).float()
            if raw.shape != first.shape:
                raise ValueError(f"recompute returned shape {tuple(raw.shape)}, expected {tuple(first.shape)}")
        ht = normalize_kept(raw, kept, mode=normalize)
        peak = ht.amax(dim=(-2, -1), keepdim=True) >= threshold
        component = erase_components(ht.reshape(b * c, h, w), threshold=threshold, connectivity=connectivity)
        kept = kept & ~(component.reshape(b, c, h, w) & peak)
        step_maps.append(ht)
        masks.append(kept)
    return MiningResult(fuse(step_maps, masks), torch.stack(masks), torch.stack(step_maps))


def mine(
    model,
    images: Tensor,
    *,
    method: str = "cam",
    layer: str | None = None,
    classes=None,
    config=None,
    stage_weights=None,
) -> tuple[Tensor, MiningResult]:
    """Class maps and attention mining for a batch, in eager PyTorch (pictures, evaluation, tests).

    Uses the exact shortcut where it holds (`ClassMapper.shortcut_exact`) and otherwise recomputes the maps on
    the erased features of this batch (one backbone pass for all steps).

    Args:
        model: a `miner.models` classifier; images: Tensor[B, in_chans, S, S] in [0, 1].
        method, layer, classes: as `miner.cam.class_maps`.
        config: `miner.config.MiningConfig` (None = defaults).
        stage_weights: per-finding stage weights of the maps (`miner.cam.ClassMapper`; a calibrated
            checkpoint's ``meta["stage_weights"]``).

    Returns:
        (logits Tensor[B, C_all], MiningResult for the requested classes).
    """
    from miner.cam import ClassMapper, inference_state
    from miner.config import MiningConfig

    cfg = config or MiningConfig()
    mapper = ClassMapper(model, method=method, layer=layer, classes=classes, stage_weights=stage_weights)
    with inference_state(model):
        if cfg.steps == 1 or mapper.shortcut_exact:
            logits, maps = mapper(images)
            recompute = None
        elif mapper.mode == "hook":
            raise UsageError(
                f"attention mining with {mapper.method.name} at {', '.join(mapper.layers)} needs the maps of erased "
                f"features: take the maps at the feature layer {getattr(model, 'feature_layer', '')!r}, or use steps=1"
            )
        else:
            logits, maps = mapper(images)
            features = mapper.features(images)

            def recompute(masks: Tensor) -> Tensor:
                return mapper.erased_maps(features, masks)

        result = attention_mining(maps, steps=cfg.steps, threshold=cfg.threshold, connectivity=cfg.connectivity,
                                  recompute=recompute, normalize=cfg.normalize)
    return logits, result


_MODEL_THREADS: list[int] = []


@contextlib.contextmanager
def _model_threads() -> Iterator[None]:
    """Inside `small_ops`: give `recompute` (a model pass) the thread count the caller had."""
    if not _MODEL_THREADS:
        yield
        return
    inner = torch.get_num_threads()
    torch.set_num_threads(_MODEL_THREADS[-1])
    try:
        yield
    finally:
        torch.set_num_threads(inner)


def fuse(step_maps: list[Tensor], masks: list[Tensor]) -> Tensor:
    """Eq. 8: H_f = 1/T sum_t [H_t + sum_{t'<t} H_t' * (1 - M_t')], with a running fill-in sum.

    step_maps: H_1..H_T (each Tensor[B, C, h, w]); masks: M_1..M_T (bool, True = kept; M_T is not used).
    """
    steps = len(step_maps)
    total = torch.zeros_like(step_maps[0])
    fill = torch.zeros_like(step_maps[0])  # sum_{t' < t} H_t' (1 - M_t')
    for t in range(steps):
        total = total + step_maps[t] + fill
        fill = fill + step_maps[t] * (~masks[t]).to(step_maps[t].dtype)
    return total / steps
