"""Pieces shared by the Triton kernels of the fused mixed edge (``triton_dw_gather``,
``triton_dw_tile``, ``triton_combine``): autotune configurations, the jit without shape
specialisation, relu on load, a program's plane and pixel block or tile, grids and batch splits.

Layout of every kernel: NCHW contiguous; a program owns one (n, c) plane and a BLOCK of
flattened pixels (forward/elementwise kernels), or one channel and a slice of the batch
(reductions, written as partial sums and added in torch so results are deterministic).
Loads are cast to float32, arithmetic is float32, stores take the output's dtype (float32,
or bfloat16 under autocast).

On CUDA the BLOCK kernels are autotuned over two BLOCK sizes at 4 warps (``block_configs``),
the tile kernels over (BLOCK_H, BLOCK_W, num_warps) (``triton_dw_tile``); ``UBNAS_AUTOTUNE=0``:
one configuration each.  Under ``TRITON_INTERPRET=1`` (CPU tests) one small configuration is used.
"""
from __future__ import annotations

import triton
import triton.language as tl

from . import SWITCH, env_setting, triton_interpreter

INTERPRET = triton_interpreter()


def autotune() -> bool:
    """UBNAS_AUTOTUNE (an on/off switch, default on; read at import): off gives one configuration per
    kernel, so a GPU correctness run compiles each specialisation once instead of benchmarking every
    configuration."""
    return env_setting("UBNAS_AUTOTUNE", SWITCH, True)


AUTOTUNE = autotune()


def block_configs(blocks=(256, 1024), warps=(4,)):
    """Autotune configurations of a BLOCK kernel: every (BLOCK, num_warps) on CUDA, the largest only
    with UBNAS_AUTOTUNE off, one small BLOCK under the interpreter."""
    if INTERPRET:
        return [triton.Config({"BLOCK": 64}, num_warps=1)]
    if not AUTOTUNE:
        return [triton.Config({"BLOCK": blocks[-1]}, num_warps=warps[-1])]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b in blocks for w in warps]


SHAPE_ARGS = ["N", "C", "H", "W", "Ho", "Wo", "HW", "NK", "N_PER", "NK_ALL", "J0", "G", "GC", "TOTAL", "OFF",
              "OFF0", "OFF1", "OFF2", "OFF3"]


def jit_any_shape(fn):
    """triton.jit without value specialisation of shape integers (one compile serves all shapes)."""
    import inspect
    names = [a for a, prm in inspect.signature(fn).parameters.items()
             if a in SHAPE_ARGS and prm.annotation is inspect.Parameter.empty]   # never a constexpr
    return triton.jit(fn, do_not_specialize=names)


@triton.jit
def relu_keep_nan(x):
    """relu(x) with NaN kept, as torch.relu (a plain tl.maximum(x, 0.0) maps NaN to 0)."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def plane_block(C, width, pixels, BLOCK: tl.constexpr):
    """This program's (n, c) plane (grid axis 0) and BLOCK of flattened pixels (axis 1) of an
    (N, C, rows, width) map: (plane, n, c, pixel offsets p (BLOCK,), mask p < pixels, row, column)."""
    plane = tl.program_id(0)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    return plane, plane // C, plane % C, p, p < pixels, p // width, p % width


@triton.jit
def tile_at(t, rows, cols, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Tile t of a rows x cols plane in row-major [BLOCK_H, BLOCK_W] tiles: (row indices [BLOCK_H, 1],
    column indices [1, BLOCK_W], in-bounds mask [BLOCK_H, BLOCK_W])."""
    tw = tl.cdiv(cols, BLOCK_W)
    r = ((t // tw) * BLOCK_H + tl.arange(0, BLOCK_H))[:, None]
    s = ((t % tw) * BLOCK_W + tl.arange(0, BLOCK_W))[None, :]
    return r, s, (r < rows) & (s < cols)


@triton.jit
def finish_dx(acc, off, m, x_ptr, lin_ptr, extra_ptr, dx_ptr,
              HAS_LIN: tl.constexpr, MASK: tl.constexpr, HAS_EXTRA: tl.constexpr):
    """Store dx = [x > 0] * (acc + lin) + extra at offsets ``off`` (mask ``m``; any block shape),
    in fp32 until the store.  MASK=False: acc + lin + extra (a partial sum, no relu mask).
    [x > 0] maps NaN inputs to 0, unlike autograd through torch.relu (NOTES.md)."""
    if HAS_LIN:
        acc += tl.load(lin_ptr + off, mask=m, other=0.0).to(tl.float32)
    if MASK:
        xv = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        acc = tl.where(xv > 0, acc, 0.0)
    if HAS_EXTRA:
        acc += tl.load(extra_ptr + off, mask=m, other=0.0).to(tl.float32)
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=m)


def plane_grid(planes, pixels):
    """Grid of one program per (plane, BLOCK of pixels)."""
    return lambda meta: (planes, triton.cdiv(pixels, meta["BLOCK"]))


def tile_grid(planes, rows, cols):
    """Grid of one program per (plane, BLOCK_H x BLOCK_W tile of a rows x cols map)."""
    return lambda meta: (planes, triton.cdiv(rows, meta["BLOCK_H"]) * triton.cdiv(cols, meta["BLOCK_W"]))


def batch_splits(n: int, per_split_programs: int, target: int = 1024) -> int:
    """Slices to cut a batch of n images into so that a reduction launches about ``target`` programs."""
    return max(1, min(n, triton.cdiv(target, max(per_split_programs, 1))))


def batch_slices(n: int, per_split_programs: int):
    """(slices, images per slice) of a batch of n images for a reduction (``batch_splits``): every
    slice holds n_per images but the last, and none is empty."""
    n_per = triton.cdiv(n, batch_splits(n, per_split_programs))
    return triton.cdiv(n, n_per), n_per
