"""Launchers of the Triton component kernels (:mod:`miner.kernels._triton_kernels`, algorithm and bounds there).

Used by the CUDA implementations of the ``miner::*`` custom ops. The launchers are device-agnostic: with the kernels
loaded by :func:`interpreted_kernels` they run on CPU tensors under Triton's interpreter (how the tests check them
without a GPU). :func:`compile_all` builds every kernel for a GPU target without a driver (sm_90 by default).

One launch per call, grid ``(N,)``; scratch buffers are allocated on the input's device; no value is read back to the
host, so a CUDA batch never synchronises here.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

_KERNELS_FILE = Path(__file__).with_name("_triton_kernels.py")
_INTERPRETED_NAME = "miner.kernels._triton_kernels_interpreted"


def compiled_kernels() -> ModuleType:
    """The kernels as ordinary ``@triton.jit`` functions (for CUDA launches and ``triton.compile``)."""
    from miner.kernels import _triton_kernels

    return _triton_kernels


@contextmanager
def _interpret(flag: bool) -> Iterator[None]:
    import triton

    old_env = os.environ.get("TRITON_INTERPRET")
    old_knob = triton.knobs.runtime.interpret
    os.environ["TRITON_INTERPRET"] = "1" if flag else "0"
    triton.knobs.runtime.interpret = flag
    try:
        yield
    finally:
        triton.knobs.runtime.interpret = old_knob
        if old_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old_env


def interpreted_kernels() -> ModuleType:
    """A second copy of the kernel module whose functions run under ``TRITON_INTERPRET=1`` on CPU tensors.

    ``@triton.jit`` decides between compiler and interpreter when it decorates, so the module file is executed again
    under its own name with the interpreter switched on; the ordinary copy (``compiled_kernels``) is untouched, and
    both can live in one process.
    """
    module = sys.modules.get(_INTERPRETED_NAME)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(_INTERPRETED_NAME, _KERNELS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with _interpret(True):
        spec.loader.exec_module(module)
    sys.modules[_INTERPRETED_NAME] = module
    return module


def _warps(block: int) -> int:
    """One element or more per thread: no lane is replicated across threads (32 * warps <= BLOCK)."""
    return max(1, min(8, block // 128))


def _launch_config(pixels: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for maps of `pixels` pixels: one block for maps up to 32x32, 1024-lane blocks above."""
    block = 64
    while block < min(pixels, 1024):
        block *= 2
    return block, _warps(block)


def _kernels(kernels: ModuleType | None, device: torch.device) -> ModuleType:
    if kernels is not None:
        return kernels
    if device.type != "cuda":
        raise RuntimeError(f"the Triton kernels need CUDA tensors (got {device}); use interpreted_kernels() on CPU")
    return compiled_kernels()


def label_triton(
    mask: Tensor, connectivity: int, *, kernels: ModuleType | None = None, iterations: bool = False
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """mask (Tensor[N, H, W], bool, contiguous) -> (labels [N, H, W] int32, counts [N] int32[, iters [N, 2] int32]).

    ``iters[n] = (hook passes, jump rounds)`` of map n (see the algorithm's bounds).
    """
    n, h, w = mask.shape
    dev = mask.device
    labels = torch.zeros((n, h, w), dtype=torch.int32, device=dev)
    counts = torch.zeros(n, dtype=torch.int32, device=dev)
    iters = torch.zeros((n, 2), dtype=torch.int32, device=dev)
    if n and h and w:
        k = _kernels(kernels, dev)
        scratch = torch.empty_like(labels)
        block, warps = _launch_config(h * w)
        k.label_kernel[(n,)](
            mask.contiguous().view(torch.uint8), labels, scratch, counts, iters, h, w,
            CONN8=connectivity == 8, BLOCK=block, num_warps=warps, enable_fp_fusion=False,
        )
    return (labels, counts, iters) if iterations else (labels, counts)


def erase_triton(
    maps: Tensor, threshold: float, connectivity: int, *, kernels: ModuleType | None = None, iterations: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """maps (Tensor[N, H, W], float32, contiguous) -> Tensor[N, H, W] bool[, iters [N, 2] int32]."""
    n, h, w = maps.shape
    dev = maps.device
    out = torch.zeros((n, h, w), dtype=torch.uint8, device=dev)
    iters = torch.zeros((n, 2), dtype=torch.int32, device=dev)
    if n and h and w:
        k = _kernels(kernels, dev)
        x = torch.empty((n, h, w), dtype=torch.int32, device=dev)
        y = torch.empty_like(x)
        block, warps = _launch_config(h * w)
        k.erase_kernel[(n,)](
            maps.contiguous(), out, x, y, iters, h, w, float(threshold),
            CONN8=connectivity == 8, BLOCK=block, num_warps=warps, enable_fp_fusion=False,
        )
    out = out.view(torch.bool)
    return (out, iters) if iterations else out


def stats_triton(
    labels: Tensor, values: Tensor, num_labels: int, *, kernels: ModuleType | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """labels (Tensor[N, H, W] int32), values (Tensor[N, H, W] float32) ->
    (bbox [N, K, 4] int32, area [N, K] int32, sum [N, K] float32, mean [N, K] float32), K = num_labels."""
    n, h, w = labels.shape
    k_ = int(num_labels)
    dev = labels.device
    bbox = torch.zeros((n, k_, 4), dtype=torch.int32, device=dev)
    area = torch.zeros((n, k_), dtype=torch.int32, device=dev)
    total = torch.zeros((n, k_), dtype=torch.float32, device=dev)
    mean = torch.zeros((n, k_), dtype=torch.float32, device=dev)
    if n and h and w and k_:
        k = _kernels(kernels, dev)
        block, warps = _launch_config(h * w)
        kblock = 64
        while kblock < min(k_, 1024):
            kblock *= 2
        k.stats_kernel[(n,)](
            labels.contiguous(), values.contiguous(), bbox, area, total, mean, h, w, k_,
            BLOCK=block, KBLOCK=kblock, num_warps=warps, enable_fp_fusion=False,
        )
    return bbox, area, total, mean


# The CUDA implementations registered in miner.kernels.ops (launched on the tensor's own device).
def erase_cuda(maps: Tensor, threshold: float, connectivity: int) -> Tensor:
    with torch.cuda.device(maps.device):
        return erase_triton(maps, threshold, connectivity)  # type: ignore[return-value]


def label_cuda(mask: Tensor, connectivity: int) -> tuple[Tensor, Tensor]:
    with torch.cuda.device(mask.device):
        return label_triton(mask, connectivity)  # type: ignore[return-value]


def stats_cuda(labels: Tensor, values: Tensor, num_labels: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    with torch.cuda.device(labels.device):
        return stats_triton(labels, values, num_labels)


def compile_all(*, arch: int = 90, warp_size: int = 32) -> dict[str, object]:
    """Compile every kernel for ``GPUTarget("cuda", arch, warp_size)`` without a GPU; returns name -> CompiledKernel
    (``.asm["cubin"]`` holds the binary). Both connectivities and a small and a large BLOCK are built."""
    import triton
    from triton.backends.compiler import GPUTarget

    k = compiled_kernels()
    target = GPUTarget("cuda", arch, warp_size)
    built: dict[str, object] = {}
    for block in (64, 1024):
        warps = _warps(block)
        for conn8 in (False, True):
            sig = {
                "mask_ptr": "*u8", "labels_ptr": "*i32", "scratch_ptr": "*i32", "counts_ptr": "*i32",
                "iters_ptr": "*i32", "H": "i32", "W": "i32", "CONN8": "constexpr", "BLOCK": "constexpr",
            }
            consts = {"CONN8": conn8, "BLOCK": block}
            src = triton.compiler.ASTSource(fn=k.label_kernel, signature=sig, constexprs=consts)
            built[f"label_kernel[conn={8 if conn8 else 4},BLOCK={block}]"] = triton.compile(
                src, target=target, options={"num_warps": warps, "enable_fp_fusion": False}
            )
            sig = {
                "maps_ptr": "*fp32", "out_ptr": "*u8", "x_ptr": "*i32", "y_ptr": "*i32", "iters_ptr": "*i32",
                "H": "i32", "W": "i32", "threshold": "fp32", "CONN8": "constexpr", "BLOCK": "constexpr",
            }
            src = triton.compiler.ASTSource(fn=k.erase_kernel, signature=sig, constexprs=consts)
            built[f"erase_kernel[conn={8 if conn8 else 4},BLOCK={block}]"] = triton.compile(
                src, target=target, options={"num_warps": warps, "enable_fp_fusion": False}
            )
        sig = {
            "labels_ptr": "*i32", "values_ptr": "*fp32", "bbox_ptr": "*i32", "area_ptr": "*i32", "sum_ptr": "*fp32",
            "mean_ptr": "*fp32", "H": "i32", "W": "i32", "K": "i32", "BLOCK": "constexpr", "KBLOCK": "constexpr",
        }
        src = triton.compiler.ASTSource(fn=k.stats_kernel, signature=sig, constexprs={"BLOCK": block, "KBLOCK": 64})
        built[f"stats_kernel[BLOCK={block}]"] = triton.compile(
            src, target=target, options={"num_warps": warps, "enable_fp_fusion": False}
        )
    return built
