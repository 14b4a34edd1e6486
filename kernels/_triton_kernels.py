"""Triton kernels for batched connected components: one program per map, no cross-program communication.

Imported only by :mod:`miner.kernels.triton_ccl` (CUDA path, interpreter tests, sm_90 compile checks); importing
:mod:`miner.kernels` never imports this module or triton.

Ownership (why there are no races between programs)
---------------------------------------------------
Program ``n`` (grid ``(N,)``) reads map ``n`` and reads/writes only row ``n`` of every buffer: the two label
buffers ``X[n]``, ``Y[n]`` (int32, one entry per pixel), the outputs of map ``n`` and ``iters[n]``. No two programs
touch the same address, so the result cannot depend on how programs are scheduled (the interpreter, which runs them
one after another, shows the same result as the GPU).

Within a program, the BLOCK lanes of one vector operation run in parallel. Every pass below is written so that within
a pass a buffer is either only read, or only written at the lane's own pixel, or only updated with atomic min/max/add
(whose result does not depend on their order, except float rounding of sums); passes are separated by
``tl.debug_barrier()`` (``bar.sync``), which makes all earlier global writes of the program visible to all its threads.

Labelling (``_resolve``): hook to the smallest neighbouring root + pointer jumping
-----------------------------------------------------------------------------------
Pixel ``i = y * W + x``; background holds ``BG = 2**31 - 1``. Start: ``X[i] = Y[i] = i`` on the foreground: every
pixel is a root (``X[r] == r``) of its own tree. Invariant at the start of each iteration: ``X == Y``, every
foreground ``X[i]`` is the root of ``i``'s tree, a pixel of ``i``'s component with ``X[i] <= i``.

1. hook (reads X, atomic_min into Y): for each foreground ``i``, ``m = min X[j]`` over ``i`` and its 4 or 8
   neighbours; if ``m < X[i]``: ``atomic_min(Y[X[i]], m)``. Only roots are hooked, always onto a smaller root of the
   same component, so Y is a forest whose pointers strictly decrease (no cycles).
2. if nothing was hooked, stop (see below). Otherwise pointer jumping, double-buffered:
   ``X[k] = Y[Y[k]]``, then ``Y[k] = X[X[k]]``, ... until a round changes nothing; then ``X == Y`` again and every
   pixel points at its root.

Termination and result. If a pass hooks nothing, ``X[j] >= X[i]`` for all neighbours, hence (by symmetry) ``X`` is
constant on each component; it is the label of some pixel of the component and ``<=`` the index of the component's
first pixel ``i0`` (``X[i0] <= i0``), so it IS ``i0``: the fixed point is unique and independent of the order of
the atomics. While labels are not final, two adjacent pixels have different roots and the larger root is hooked:
the number of roots drops by at least one per iteration.

Worst-case iteration counts (F foreground pixels, C components, P = H * W pixels, D the depth of the forest after a
hook pass, D <= number of roots <= F):

- hook passes <= F - C + 1 (each one but the last removes at least one root); the ``while`` loop also stops after
  ``P + 1`` passes, a hard cap the bound above never reaches;
- jump rounds per iteration <= ceil(log2(D)) + 1 (each round halves every pixel's distance to its root, the last one
  only confirms that nothing changes).

These are the guarantees; typical maps need far fewer hook passes (a spiral needs 3: its index sequence along the
path has one local minimum per ring, so the second pass chains every ring onto the outermost). The counts of every
map are written to ``iters[n] = (hook passes, jump rounds)`` and checked by the tests.

Every pass visits all ``P`` pixels in blocks of ``BLOCK`` lanes, so one program costs
``O(P * (hook passes + jump rounds))`` memory operations; maps up to 1024 x 1024 run as one program each.

Raster numbering (``label_kernel``): after ``_resolve`` the roots are exactly the first pixels of the components, so a
running inclusive ``tl.cumsum`` over the roots in raster order (carried across blocks) gives each root its label
``1..k``; a last pass writes ``label[i] = rank[X[i]]``: scipy.ndimage.label's numbering.

Erasure (``erase_kernel``): the same labelling of ``maps >= threshold``, the first maximum in raster order (blockwise
``max``, then the smallest index holding it, a later block replacing the seed only when strictly larger), and
``out = X == X[seed]`` (all False when the seed is background or the map holds a NaN, as numpy/torch argmax picks
the NaN).

Statistics (``stats_kernel``): per foreground pixel with label ``1 <= l <= K``: ``atomic_add`` of 1 and of the value
into row ``n`` of area and sum; bounding boxes take ``atomic_min``/``atomic_max`` only at the two ends of each
horizontal run (a run start holds its run's smallest x, its end the largest, and every row of a component holds a
run), which cuts the contended atomics by the run length. A final pass writes ``mean = sum / area`` and zeroes the
boxes of absent labels.
"""
from __future__ import annotations

import triton
import triton.language as tl

BG = tl.constexpr(2147483647)


# Reductions are written as tl.reduce / tl.associative_scan with the combine functions of triton's standard library
# (what tl.max, tl.min, tl.sum and tl.cumsum do inside) rather than by calling those @triton.jit wrappers: the
# interpreter recognises these combine functions and reduces with numpy, and never calls them, so a second copy of
# this file decorated under the interpreter (miner.kernels.triton_ccl.interpreted_kernels) runs entirely interpreted
# in a process whose triton was imported for the compiler. Any other @triton.jit function a kernel calls is defined
# in this file.
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min
_ADD = tl.standard._sum_combine


@triton.jit
def _any(flag):
    """1 if any lane of the int1 block is set, else 0 (int32 scalar)."""
    return tl.reduce(flag.to(tl.int32), 0, _MAX)


@triton.jit
def _nb_min(X, i, y, x, act, H, W, DY: tl.constexpr, DX: tl.constexpr, m):
    """min(m, X[neighbour (DY, DX)]) where that neighbour exists."""
    yy = y + DY
    xx = x + DX
    ok = act & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    v = tl.load(X + (i + (DY * W + DX)), mask=ok, other=BG)
    return tl.minimum(m, v)


@triton.jit
def _hook(X, Y, H, W, P, CONN8: tl.constexpr, BLOCK: tl.constexpr):
    """One hook pass: reads X only, atomic_min into Y only. Returns 1 if any root was hooked."""
    hooked = 0
    for start in range(0, P, BLOCK):
        i = start + tl.arange(0, BLOCK)
        r = tl.load(X + i, mask=i < P, other=BG)
        act = r != BG
        y = i // W
        x = i - y * W
        m = r
        m = _nb_min(X, i, y, x, act, H, W, -1, 0, m)
        m = _nb_min(X, i, y, x, act, H, W, 0, -1, m)
        m = _nb_min(X, i, y, x, act, H, W, 0, 1, m)
        m = _nb_min(X, i, y, x, act, H, W, 1, 0, m)
        if CONN8:
            m = _nb_min(X, i, y, x, act, H, W, -1, -1, m)
            m = _nb_min(X, i, y, x, act, H, W, -1, 1, m)
            m = _nb_min(X, i, y, x, act, H, W, 1, -1, m)
            m = _nb_min(X, i, y, x, act, H, W, 1, 1, m)
        hook = act & (m < r)
        tl.atomic_min(Y + r, m, mask=hook, sem="relaxed", scope="cta")
        hooked = tl.maximum(hooked, _any(hook))
    return hooked


@triton.jit
def _jump(SRC, DST, P, BLOCK: tl.constexpr):
    """One pointer-jumping round DST[k] = SRC[SRC[k]]: reads SRC only, writes DST at the lane's own pixel.
    Returns 1 if any pointer changed."""
    moved = 0
    for start in range(0, P, BLOCK):
        i = start + tl.arange(0, BLOCK)
        p = tl.load(SRC + i, mask=i < P, other=BG)
        act = p != BG
        g = tl.load(SRC + p, mask=act, other=BG)
        tl.store(DST + i, g, mask=act)
        moved = tl.maximum(moved, _any(act & (g != p)))
    return moved


@triton.jit
def _resolve(X, Y, H, W, P, CONN8: tl.constexpr, BLOCK: tl.constexpr):
    """X == Y == (pixel index on the foreground, BG elsewhere) on entry; on return X == Y == index of the first pixel
    of each pixel's component. Returns (hook passes, jump rounds)."""
    hooks = 0
    jumps = 0
    go = 1
    while (go != 0) & (hooks <= P):
        go = _hook(X, Y, H, W, P, CONN8, BLOCK)
        tl.debug_barrier()
        hooks += 1
        if go != 0:
            moved = 1
            while moved != 0:
                m1 = _jump(Y, X, P, BLOCK)
                tl.debug_barrier()
                jumps += 1
                m2 = 0
                if m1 != 0:
                    m2 = _jump(X, Y, P, BLOCK)
                    tl.debug_barrier()
                    jumps += 1
                moved = m1 | m2
    return hooks, jumps


@triton.jit
def label_kernel(mask_ptr, labels_ptr, scratch_ptr, counts_ptr, iters_ptr, H, W,
                 CONN8: tl.constexpr, BLOCK: tl.constexpr):
    """mask (uint8 [N, H, W]) -> labels (int32 [N, H, W], raster order 1..k), counts (int32 [N]).
    labels doubles as buffer X; scratch (int32 [N, H, W]) is Y."""
    n = tl.program_id(0).to(tl.int64)
    P = H * W
    base = n * P
    M = mask_ptr + base
    X = labels_ptr + base
    Y = scratch_ptr + base
    for start in range(0, P, BLOCK):
        i = start + tl.arange(0, BLOCK)
        inb = i < P
        on = tl.load(M + i, mask=inb, other=0) != 0
        lab = tl.where(on, i, BG)
        tl.store(X + i, lab, mask=inb)
        tl.store(Y + i, lab, mask=inb)
    tl.debug_barrier()
    hooks, jumps = _resolve(X, Y, H, W, P, CONN8, BLOCK)
    # rank the roots (first pixels) in raster order: Y[root] = 1-based rank
    count = 0
    for start in range(0, P, BLOCK):
        i = start + tl.arange(0, BLOCK)
        lab = tl.load(X + i, mask=i < P, other=BG)
        root = lab == i
        rank = tl.associative_scan(root.to(tl.int32), 0, _ADD)
        tl.store(Y + i, count + rank, mask=root)
        count += tl.reduce(root.to(tl.int32), 0, _ADD)
    tl.debug_barrier()
    # in place: each lane reads X at its own pixel and Y at a root, writes X at its own pixel
    for start in range(0, P, BLOCK):
        i = start + tl.arange(0, BLOCK)
        inb = i < P
        lab = tl.load(X + i, mask=inb, other=BG)
        fg = lab != BG
        rank = tl.load(Y + lab, mask=fg, other=0)
        tl.store(X + i, rank, mask=inb)
    tl.store(counts_ptr + n, count)
    tl.store(iters_ptr + 2 * n, hooks)
    tl.store(iters_ptr + 2 * n + 1, jumps)


@triton.jit
def erase_kernel(maps_ptr, out_ptr, x_ptr, y_ptr, iters_ptr, H, W, threshold,
                 CONN8: tl.constexpr, BLOCK: tl.constexpr):
    """maps (float32 [N, H, W]) -> out (uint8 [N, H, W]): 1 on the component of maps >= threshold holding the first
    maximum. x, y: int32 scratch [N, H, W]."""
    n = tl.program_id(0).to(tl.int64)
    P = H * W
    base = n * P
    MP = maps_ptr + base
    X = x_ptr + base
    Y = y_ptr + base
    best_v = tl.full((), float("-inf"), tl.float32)
    best_i = tl.full((), 0, tl.int32)
    nan = 0
    for start in range(0, P, BLOCK):
        i = start + tl.arange(0, BLOCK)
        inb = i < P
        v = tl.load(MP + i, mask=inb, other=float("-inf"))
        on = inb & (v >= threshold)
        lab = tl.where(on, i, BG)
        tl.store(X + i, lab, mask=inb)
        tl.store(Y + i, lab, mask=inb)
        nan = tl.maximum(nan, _any(inb & (v != v)))
        bv = tl.reduce(v, 0, _MAX)
        bi = tl.reduce(tl.where(inb & (v == bv), i, P), 0, _MIN)
        better = bv > best_v
        best_i = tl.where(better, bi, best_i)
        best_v = tl.where(better, bv, best_v)
    tl.debug_barrier()
    hooks, jumps = _resolve(X, Y, H, W, P, CONN8, BLOCK)
    seed = tl.load(X + best_i)
    target = tl.where((seed == BG) | (nan != 0), -1, seed)
    for start in range(0, P, BLOCK):
        i = start + tl.arange(0, BLOCK)
        inb = i < P
        lab = tl.load(X + i, mask=inb, other=BG)
        tl.store(out_ptr + base + i, (lab == target).to(tl.uint8), mask=inb)
    tl.store(iters_ptr + 2 * n, hooks)
    tl.store(iters_ptr + 2 * n + 1, jumps)


@triton.jit
def stats_kernel(labels_ptr, values_ptr, bbox_ptr, area_ptr, sum_ptr, mean_ptr, H, W, K,
                 BLOCK: tl.constexpr, KBLOCK: tl.constexpr):
    """labels (int32 [N, H, W]), values (float32 [N, H, W]) -> bbox (int32 [N, K, 4]), area (int32 [N, K]),
    sum, mean (float32 [N, K]) for labels 1..K; other labels are ignored."""
    n = tl.program_id(0).to(tl.int64)
    P = H * W
    base = n * P
    L = labels_ptr + base
    V = values_ptr + base
    row = n * K
    for ks in range(0, K, KBLOCK):
        k = ks + tl.arange(0, KBLOCK)
        km = k < K
        b = bbox_ptr + (row + k) * 4
        tl.store(b + 0, tl.full((KBLOCK,), 0, tl.int32) + W, mask=km)
        tl.store(b + 1, tl.full((KBLOCK,), 0, tl.int32) + H, mask=km)
        tl.store(b + 2, tl.full((KBLOCK,), -1, tl.int32), mask=km)
        tl.store(b + 3, tl.full((KBLOCK,), -1, tl.int32), mask=km)
        tl.store(area_ptr + row + k, tl.full((KBLOCK,), 0, tl.int32), mask=km)
        tl.store(sum_ptr + row + k, tl.full((KBLOCK,), 0.0, tl.float32), mask=km)
    tl.debug_barrier()
    for start in range(0, P, BLOCK):
        i = start + tl.arange(0, BLOCK)
        inb = i < P
        lab = tl.load(L + i, mask=inb, other=0)
        ok = inb & (lab >= 1) & (lab <= K)
        v = tl.load(V + i, mask=ok, other=0.0)
        y = i // W
        x = i - y * W
        slot = row + (lab - 1)
        tl.atomic_add(area_ptr + slot, tl.full((BLOCK,), 1, tl.int32), mask=ok, sem="relaxed", scope="cta")
        tl.atomic_add(sum_ptr + slot, v, mask=ok, sem="relaxed", scope="cta")
        left = tl.load(L + i - 1, mask=ok & (x > 0), other=0)
        right = tl.load(L + i + 1, mask=ok & (x < W - 1), other=0)
        first = ok & (left != lab)
        last = ok & (right != lab)
        b = bbox_ptr + slot * 4
        tl.atomic_min(b + 0, x, mask=first, sem="relaxed", scope="cta")
        tl.atomic_min(b + 1, y, mask=first, sem="relaxed", scope="cta")
        tl.atomic_max(b + 2, x + 1, mask=last, sem="relaxed", scope="cta")
        tl.atomic_max(b + 3, y + 1, mask=last, sem="relaxed", scope="cta")
    tl.debug_barrier()
    for ks in range(0, K, KBLOCK):
        k = ks + tl.arange(0, KBLOCK)
        km = k < K
        a = tl.load(area_ptr + row + k, mask=km, other=0)
        s = tl.load(sum_ptr + row + k, mask=km, other=0.0)
        present = a > 0
        tl.store(mean_ptr + row + k, tl.where(present, s / tl.maximum(a, 1).to(tl.float32), 0.0), mask=km)
        b = bbox_ptr + (row + k) * 4
        gone = km & (a == 0)
        zero = tl.full((KBLOCK,), 0, tl.int32)
        tl.store(b + 0, zero, mask=gone)
        tl.store(b + 1, zero, mask=gone)
        tl.store(b + 2, zero, mask=gone)
        tl.store(b + 3, zero, mask=gone)
