"""Triton kernels of the fused mixed edge; each wrapper has the signature of its
twin in ``reference`` (read that module's docstring for shapes and names).

Layout: NCHW contiguous; a program owns one (n, c) plane and a BLOCK of
flattened pixels (forward/elementwise kernels), or one channel and a slice of
the batch (reductions, written as partial sums and added in torch so results
are deterministic).  Loads are cast to float32, arithmetic is float32, stores
take the output's dtype (float32 or bfloat16 under autocast).

* ``_dw_fwd``: all depthwise kernels (sizes/dilations from ``spec``) of one
  plane in one program: relu fused on load, taps vectorised as a
  (TAPS, BLOCK) gather that the neighbouring taps serve from L1.
* ``_dw_bwd_in``: the transposed gather over all kernels, plus the superkernel's
  gradient, the relu mask and the pool/skip gradient in the same pass.
* ``_dw_bwd_w``: dL/dw, a (TAPS, BLOCK) accumulator per (channel, kernel, batch slice).
* ``_dw_fwd_tile`` / ``_dw_bwd_in_tile`` / ``_dw_bwd_w_tile`` (``UBNAS_DW_TILED=1``, see ``tiled``):
  the same three on [BLOCK_H, BLOCK_W] spatial tiles with each kernel's (k, dilation)
  constexpr, so a tap is one shifted tile load with row/column masks.  Timed on an
  H100 (uboost_cifar, batch 256: 385.8 ms per fused step vs 584.9 with the gathers,
  NOTES.md); opt-in, the gathers stay the default, until the CUDA correctness run
  of the full test suite with UBNAS_DW_TILED=1 is done.
* ``_combine_fwd``: P_lin * BN(z) + max/avg pool + skip, one pass.
* ``_combine_red``: the five per-channel sums the backward needs.
* ``_bn_bwd``: dL/dz of the BN (batch or running statistics).
* ``_pool_bwd``: dL/dx of pool and skip as a gather (the max pool's argmax is
  recomputed, first maximum wins as in PyTorch), so no indices are stored.

On CUDA the (TAPS, BLOCK) and elementwise kernels are autotuned over two BLOCK
sizes at 4 warps (``_configs``), the tile kernels over (BLOCK_H, BLOCK_W, num_warps)
(``_tile_configs``); ``UBNAS_AUTOTUNE=0``: one configuration each.  Under
``TRITON_INTERPRET=1`` (CPU tests) a single small configuration is used.
relu on load keeps NaN (``_relu``), as torch.relu does.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from . import SWITCH, env_setting
from .reference import Spec, dw_offsets, out_size

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def tiled(weight: bool = False) -> bool:
    """UBNAS_DW_TILED (an on/off switch, or "io"): on runs the 2-D tile depthwise kernels (_dw_fwd_tile,
    _dw_bwd_in_tile, _dw_bwd_w_tile) instead of the (TAPS, BLOCK) gathers (_dw_fwd, _dw_bwd_in, _dw_bwd_w);
    "io" the tile kernels for forward and dL/dx only.  Off by default until the CUDA correctness run of
    the test suite with UBNAS_DW_TILED=1 is done (NOTES.md)."""
    v = env_setting("UBNAS_DW_TILED", {**SWITCH, "io": "io"}, False)
    return v is True or (v == "io" and not weight)


def autotune() -> bool:
    """UBNAS_AUTOTUNE (an on/off switch, default on; read at import): off gives one configuration per
    kernel, so a GPU correctness run compiles each specialisation once instead of benchmarking every
    configuration."""
    return env_setting("UBNAS_AUTOTUNE", SWITCH, True)


AUTOTUNE = autotune()


def _configs(blocks=(256, 1024), warps=(4,)):
    if INTERPRET:
        return [triton.Config({"BLOCK": 64}, num_warps=1)]
    if not AUTOTUNE:
        return [triton.Config({"BLOCK": blocks[-1]}, num_warps=warps[-1])]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b in blocks for w in warps]


SHAPE_ARGS = ["N", "C", "H", "W", "Ho", "Wo", "HW", "NK", "N_PER", "NK_ALL", "J0", "G", "GC", "TOTAL", "OFF",
              "OFF0", "OFF1", "OFF2", "OFF3"]


def _jit(fn):
    """triton.jit without value specialisation of shape integers (one compile serves all shapes)."""
    import inspect
    names = [a for a, prm in inspect.signature(fn).parameters.items()
             if a in SHAPE_ARGS and prm.annotation is inspect.Parameter.empty]   # never a constexpr
    return triton.jit(fn, do_not_specialize=names)


# ----------------------------------------------------------------------------- depthwise
@triton.jit
def _relu(x):
    """relu(x) with NaN kept, as torch.relu (a plain tl.maximum(x, 0.0) maps NaN to 0)."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _spec_row(spec_ptr, j):
    """Kernel j of the spec table (``_spec_tensor``): (k, dilation, weight offset, padding)."""
    k = tl.load(spec_ptr + 3 * j)
    dil = tl.load(spec_ptr + 3 * j + 1)
    return k, dil, tl.load(spec_ptr + 3 * j + 2), dil * (k - 1) // 2


@triton.autotune(_configs((128, 512)), key=["C", "Ho", "Wo", "NK", "STRIDE", "TAPS"])
@_jit
def _dw_fwd(x_ptr, w_ptr, spec_ptr, d_ptr, C, H, W, Ho, Wo, NK,
            STRIDE: tl.constexpr, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    n = plane // C
    c = plane % C
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = p < Ho * Wo
    oh = p // Wo
    ow = p % Wo
    t = tl.arange(0, TAPS)
    x_base = x_ptr + plane.to(tl.int64) * H * W
    for j in range(NK):
        k, dil, w_off, pad = _spec_row(spec_ptr, j)
        tm = t < k * k
        ih = oh[None, :] * STRIDE + ((t // k) * dil - pad)[:, None]
        iw = ow[None, :] * STRIDE + ((t % k) * dil - pad)[:, None]
        m = tm[:, None] & pm[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = _relu(tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32))
        wv = tl.load(w_ptr + w_off + c * k * k + t, mask=tm, other=0.0).to(tl.float32)
        acc = tl.sum(xv * wv[:, None], axis=0)
        d_base = d_ptr + ((n * NK + j) * C + c).to(tl.int64) * Ho * Wo
        tl.store(d_base + p, acc.to(d_ptr.dtype.element_ty), mask=pm)


@triton.autotune(_configs((128, 512)), key=["C", "H", "W", "NK", "STRIDE", "TAPS", "HAS_LIN", "HAS_EXTRA"])
@_jit
def _dw_bwd_in(dd_ptr, x_ptr, w_ptr, spec_ptr, lin_ptr, extra_ptr, dx_ptr, C, H, W, Ho, Wo, NK,
               STRIDE: tl.constexpr, TAPS: tl.constexpr, HAS_LIN: tl.constexpr, HAS_EXTRA: tl.constexpr,
               BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    n = plane // C
    c = plane % C
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    im = i < H * W
    ih = i // W
    iw = i % W
    t = tl.arange(0, TAPS)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(NK):
        k, dil, w_off, pad = _spec_row(spec_ptr, j)
        tm = t < k * k
        nh = ih[None, :] - ((t // k) * dil - pad)[:, None]   # = oh * STRIDE
        nw = iw[None, :] - ((t % k) * dil - pad)[:, None]
        m = tm[:, None] & im[None, :] & (nh >= 0) & (nw >= 0)
        if STRIDE > 1:
            m = m & (nh % STRIDE == 0) & (nw % STRIDE == 0)
        oh = nh // STRIDE
        ow = nw // STRIDE
        m = m & (oh < Ho) & (ow < Wo)
        d_base = dd_ptr + ((n * NK + j) * C + c).to(tl.int64) * Ho * Wo
        gv = tl.load(d_base + oh * Wo + ow, mask=m, other=0.0).to(tl.float32)
        wv = tl.load(w_ptr + w_off + c * k * k + t, mask=tm, other=0.0).to(tl.float32)
        acc += tl.sum(gv * wv[:, None], axis=0)
    off = plane.to(tl.int64) * H * W + i
    if HAS_LIN:
        acc += tl.load(lin_ptr + off, mask=im, other=0.0).to(tl.float32)
    xv = tl.load(x_ptr + off, mask=im, other=0.0).to(tl.float32)
    acc = tl.where(xv > 0, acc, 0.0)
    if HAS_EXTRA:
        acc += tl.load(extra_ptr + off, mask=im, other=0.0).to(tl.float32)
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=im)


# ----------------------------------------------------------------------------- depthwise, 2-D tiles
# _dw_fwd / _dw_bwd_in work on [BLOCK_H, BLOCK_W] spatial tiles of one (n, c) plane;
# the kernels' sizes and dilations are constexpr (K0, D0, ..., K3, D3; NK <= MAX_NK
# per launch), so every tap is one shifted tile load with a row mask [BLOCK_H, 1]
# and a column mask [1, BLOCK_W] built from 1-D vectors: no per-element division,
# no padded taps.  One specialisation per (spec, stride).
MAX_NK = 4


def _tile_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_H": 4, "BLOCK_W": 4}, num_warps=1)]
    tiles = ((8, 8, 1), (8, 16, 2), (16, 32, 4), (32, 32, 4)) if AUTOTUNE else ((16, 32, 4),)
    return [triton.Config({"BLOCK_H": bh, "BLOCK_W": bw}, num_warps=w) for bh, bw, w in tiles]


DW_KEYS = ["K0", "D0", "K1", "D1", "K2", "D2", "K3", "D3", "NK", "STRIDE"]


@triton.jit
def _dw_fwd_one(x_base, w_base, d_base, oh, ow, om, H, W, Wo, K: tl.constexpr, DIL: tl.constexpr,
                STRIDE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """d[oh, ow] = sum_ab w[a, b] relu(x[oh*S + a*DIL - pad, ow*S + b*DIL - pad]) (reference.dw_forward)."""
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    for a in tl.static_range(K):
        ih = oh * STRIDE + (a * DIL - DIL * (K - 1) // 2)           # [BLOCK_H, 1]
        rm = (ih >= 0) & (ih < H)
        row = x_base + ih * W
        for b in tl.static_range(K):
            iw = ow * STRIDE + (b * DIL - DIL * (K - 1) // 2)       # [1, BLOCK_W]
            xv = tl.load(row + iw, mask=rm & (iw >= 0) & (iw < W), other=0.0).to(tl.float32)
            acc += _relu(xv) * tl.load(w_base + a * K + b).to(tl.float32)
    tl.store(d_base + oh * Wo + ow, acc.to(d_base.dtype.element_ty), mask=om)


@triton.autotune(_tile_configs(), key=["C", "H", "W", "Ho", "Wo"] + DW_KEYS)
@_jit
def _dw_fwd_tile(x_ptr, w_ptr, d_ptr, C, H, W, Ho, Wo, NK_ALL, J0, OFF0, OFF1, OFF2, OFF3,
            K0: tl.constexpr, D0: tl.constexpr, K1: tl.constexpr, D1: tl.constexpr,
            K2: tl.constexpr, D2: tl.constexpr, K3: tl.constexpr, D3: tl.constexpr,
            NK: tl.constexpr, STRIDE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Kernels J0 .. J0+NK-1 of the spec on one (n, c) plane and one output tile (reference.dw_forward)."""
    plane = tl.program_id(0)
    n = plane // C
    c = plane % C
    tw = tl.cdiv(Wo, BLOCK_W)
    t = tl.program_id(1)
    oh = ((t // tw) * BLOCK_H + tl.arange(0, BLOCK_H))[:, None]
    ow = ((t % tw) * BLOCK_W + tl.arange(0, BLOCK_W))[None, :]
    om = (oh < Ho) & (ow < Wo)
    x_base = x_ptr + plane.to(tl.int64) * H * W
    d0 = d_ptr + ((n * NK_ALL + J0) * C + c).to(tl.int64) * Ho * Wo
    ds = C.to(tl.int64) * Ho * Wo
    _dw_fwd_one(x_base, w_ptr + OFF0 + c * K0 * K0, d0, oh, ow, om, H, W, Wo, K0, D0, STRIDE, BLOCK_H, BLOCK_W)
    if NK > 1:
        _dw_fwd_one(x_base, w_ptr + OFF1 + c * K1 * K1, d0 + ds, oh, ow, om, H, W, Wo, K1, D1, STRIDE,
                    BLOCK_H, BLOCK_W)
    if NK > 2:
        _dw_fwd_one(x_base, w_ptr + OFF2 + c * K2 * K2, d0 + 2 * ds, oh, ow, om, H, W, Wo, K2, D2, STRIDE,
                    BLOCK_H, BLOCK_W)
    if NK > 3:
        _dw_fwd_one(x_base, w_ptr + OFF3 + c * K3 * K3, d0 + 3 * ds, oh, ow, om, H, W, Wo, K3, D3, STRIDE,
                    BLOCK_H, BLOCK_W)


@triton.jit
def _dw_bwd_one(acc, d_base, w_base, ih, iw, Ho, Wo, K: tl.constexpr, DIL: tl.constexpr,
                STRIDE: tl.constexpr):
    """acc[ih, iw] += sum_ab w[a, b] dd[(ih + pad - a*DIL) / S, (iw + pad - b*DIL) / S] (transposed conv)."""
    for a in tl.static_range(K):
        nh = ih + (DIL * (K - 1) // 2 - a * DIL)                    # = oh * STRIDE, [BLOCK_H, 1]
        rm = (nh >= 0) & (nh < Ho * STRIDE)
        if STRIDE > 1:
            rm = rm & (nh % STRIDE == 0)
        row = d_base + (nh // STRIDE) * Wo
        for b in tl.static_range(K):
            nw = iw + (DIL * (K - 1) // 2 - b * DIL)                # [1, BLOCK_W]
            cm = (nw >= 0) & (nw < Wo * STRIDE)
            if STRIDE > 1:
                cm = cm & (nw % STRIDE == 0)
            gv = tl.load(row + nw // STRIDE, mask=rm & cm, other=0.0).to(tl.float32)
            acc += gv * tl.load(w_base + a * K + b).to(tl.float32)
    return acc


@triton.autotune(_tile_configs(), key=["C", "H", "W", "Ho", "Wo", "HAS_LIN", "HAS_EXTRA", "MASK"] + DW_KEYS)
@_jit
def _dw_bwd_in_tile(dd_ptr, x_ptr, w_ptr, lin_ptr, extra_ptr, dx_ptr, C, H, W, Ho, Wo, NK_ALL, J0,
               OFF0, OFF1, OFF2, OFF3,
               K0: tl.constexpr, D0: tl.constexpr, K1: tl.constexpr, D1: tl.constexpr,
               K2: tl.constexpr, D2: tl.constexpr, K3: tl.constexpr, D3: tl.constexpr,
               NK: tl.constexpr, STRIDE: tl.constexpr, HAS_LIN: tl.constexpr, HAS_EXTRA: tl.constexpr,
               MASK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra on one input tile (reference.dw_backward_input).

    MASK=False (a chunk of a spec longer than MAX_NK): dx = lin + sum_j dwconv_j^T(dd_j), no relu mask.
    """
    plane = tl.program_id(0)
    n = plane // C
    c = plane % C
    tw = tl.cdiv(W, BLOCK_W)
    t = tl.program_id(1)
    ih = ((t // tw) * BLOCK_H + tl.arange(0, BLOCK_H))[:, None]
    iw = ((t % tw) * BLOCK_W + tl.arange(0, BLOCK_W))[None, :]
    im = (ih < H) & (iw < W)
    d0 = dd_ptr + ((n * NK_ALL + J0) * C + c).to(tl.int64) * Ho * Wo
    ds = C.to(tl.int64) * Ho * Wo
    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    acc = _dw_bwd_one(acc, d0, w_ptr + OFF0 + c * K0 * K0, ih, iw, Ho, Wo, K0, D0, STRIDE)
    if NK > 1:
        acc = _dw_bwd_one(acc, d0 + ds, w_ptr + OFF1 + c * K1 * K1, ih, iw, Ho, Wo, K1, D1, STRIDE)
    if NK > 2:
        acc = _dw_bwd_one(acc, d0 + 2 * ds, w_ptr + OFF2 + c * K2 * K2, ih, iw, Ho, Wo, K2, D2, STRIDE)
    if NK > 3:
        acc = _dw_bwd_one(acc, d0 + 3 * ds, w_ptr + OFF3 + c * K3 * K3, ih, iw, Ho, Wo, K3, D3, STRIDE)
    off = plane.to(tl.int64) * H * W + ih * W + iw
    if HAS_LIN:
        acc += tl.load(lin_ptr + off, mask=im, other=0.0).to(tl.float32)
    if MASK:
        xv = tl.load(x_ptr + off, mask=im, other=0.0).to(tl.float32)
        acc = tl.where(xv > 0, acc, 0.0)
    if HAS_EXTRA:
        acc += tl.load(extra_ptr + off, mask=im, other=0.0).to(tl.float32)
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=im)


@triton.autotune(_configs((64, 128)), key=["C", "Ho", "Wo", "N_PER", "STRIDE", "TAPS"])
@_jit
def _dw_bwd_w(dd_ptr, x_ptr, spec_ptr, part_ptr, N, C, H, W, Ho, Wo, NK, TOTAL, N_PER,
              STRIDE: tl.constexpr, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    j = tl.program_id(1)
    s = tl.program_id(2)
    k, dil, w_off, pad = _spec_row(spec_ptr, j)
    t = tl.arange(0, TAPS)
    tm = t < k * k
    dh = ((t // k) * dil - pad)[:, None]
    dw = ((t % k) * dil - pad)[:, None]
    acc = tl.zeros([TAPS, BLOCK], dtype=tl.float32)
    n0 = s * N_PER
    n1 = tl.minimum(n0 + N_PER, N)
    for n in range(n0, n1):
        x_base = x_ptr + (n * C + c).to(tl.int64) * H * W
        d_base = dd_ptr + ((n * NK + j) * C + c).to(tl.int64) * Ho * Wo
        for p0 in range(0, Ho * Wo, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            pm = p < Ho * Wo
            gv = tl.load(d_base + p, mask=pm, other=0.0).to(tl.float32)
            ih = (p // Wo)[None, :] * STRIDE + dh
            iw = (p % Wo)[None, :] * STRIDE + dw
            m = tm[:, None] & pm[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = _relu(tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32))
            acc += xv * gv[None, :]
    res = tl.sum(acc, axis=1)
    tl.store(part_ptr + s * TOTAL + w_off + c * k * k + t, res, mask=tm)


@triton.jit
def _wtap(row, ow, rm, gv, W, b: tl.constexpr, K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr):
    """relu(x[ih, ow*S + b*DIL - pad]) * dd[oh, ow] on one tile (row = x row pointers of the tap row)."""
    iw = ow * STRIDE + (b * DIL - DIL * (K - 1) // 2)
    xv = tl.load(row + iw, mask=rm & (iw >= 0) & (iw < W), other=0.0).to(tl.float32)
    return _relu(xv) * gv


@triton.autotune(_tile_configs(), key=["C", "Ho", "Wo", "N_PER", "K", "DIL", "STRIDE"])
@_jit
def _dw_bwd_w_tile(dd_ptr, x_ptr, part_ptr, N, C, H, W, Ho, Wo, NK_ALL, J0, TOTAL, OFF, N_PER,
                   K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """dL/dw of kernel J0 (k = K <= 5), tap row a, channel c, batch slice s (reference.dw_backward_weight):
    one [BLOCK_H, BLOCK_W] accumulator per tap of the row, reduced once at the end."""
    c = tl.program_id(0)
    a = tl.program_id(1)
    s = tl.program_id(2)
    acc0 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    acc4 = tl.zeros([BLOCK_H, BLOCK_W], dtype=tl.float32)
    tw = tl.cdiv(Wo, BLOCK_W)
    n_tiles = tl.cdiv(Ho, BLOCK_H) * tw
    n0 = s * N_PER
    n1 = tl.minimum(n0 + N_PER, N)
    for n in range(n0, n1):
        x_base = x_ptr + (n * C + c).to(tl.int64) * H * W
        d_base = dd_ptr + ((n * NK_ALL + J0) * C + c).to(tl.int64) * Ho * Wo
        for t in range(0, n_tiles):
            oh = ((t // tw) * BLOCK_H + tl.arange(0, BLOCK_H))[:, None]
            ow = ((t % tw) * BLOCK_W + tl.arange(0, BLOCK_W))[None, :]
            gv = tl.load(d_base + oh * Wo + ow, mask=(oh < Ho) & (ow < Wo), other=0.0).to(tl.float32)
            ih = oh * STRIDE + (a * DIL - DIL * (K - 1) // 2)
            rm = (ih >= 0) & (ih < H)
            row = x_base + ih * W
            acc0 += _wtap(row, ow, rm, gv, W, 0, K, DIL, STRIDE)
            if K > 1:
                acc1 += _wtap(row, ow, rm, gv, W, 1, K, DIL, STRIDE)
            if K > 2:
                acc2 += _wtap(row, ow, rm, gv, W, 2, K, DIL, STRIDE)
            if K > 3:
                acc3 += _wtap(row, ow, rm, gv, W, 3, K, DIL, STRIDE)
            if K > 4:
                acc4 += _wtap(row, ow, rm, gv, W, 4, K, DIL, STRIDE)
    out = part_ptr + s * TOTAL + OFF + c * K * K + a * K
    tl.store(out, tl.sum(tl.sum(acc0, axis=1), axis=0))
    if K > 1:
        tl.store(out + 1, tl.sum(tl.sum(acc1, axis=1), axis=0))
    if K > 2:
        tl.store(out + 2, tl.sum(tl.sum(acc2, axis=1), axis=0))
    if K > 3:
        tl.store(out + 3, tl.sum(tl.sum(acc3, axis=1), axis=0))
    if K > 4:
        tl.store(out + 4, tl.sum(tl.sum(acc4, axis=1), axis=0))


# ----------------------------------------------------------------------------- combine
@triton.jit
def _pool_at(x_base, oh, ow, pm, H, W, STRIDE: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr):
    """(max, argmax, avg) of the 3x3 windows at output positions (oh, ow) where pm (any shape);
    pad 1, avg excludes padding, argmax = 3a + b as PyTorch picks it (the first maximum, the
    last NaN, the first in-bounds tap of an all -inf window), -1 if none.
    Results a caller does not use are dropped by the compiler."""
    mx = tl.full(oh.shape, float("-inf"), tl.float32)
    arg = tl.full(oh.shape, -1, tl.int32)
    sm = tl.zeros(oh.shape, dtype=tl.float32)
    cnt = tl.zeros(oh.shape, dtype=tl.float32)
    for a in tl.static_range(3):
        for b in tl.static_range(3):
            ih = oh * STRIDE - 1 + a
            iw = ow * STRIDE - 1 + b
            m = pm & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32)
            if HAS_MAX:
                upd = m & ((v > mx) | (v != v) | (arg < 0))   # NaN propagates, as in PyTorch
                mx = tl.where(upd, v, mx)
                arg = tl.where(upd, a * 3 + b, arg)
            if HAS_AVG:
                sm += v
                cnt += m.to(tl.float32)
    return mx, arg, sm / tl.maximum(cnt, 1.0)


@triton.autotune(_configs(), key=["C", "Ho", "Wo", "G", "STRIDE", "HAS_LIN", "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@_jit
def _combine_fwd(z_ptr, mean_ptr, invstd_ptr, x_ptr, coef_ptr, y_ptr, C, H, W, Ho, Wo, G,
                 STRIDE: tl.constexpr, HAS_LIN: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr,
                 HAS_SKIP: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)   # (n, c) plane of x; the pools are evaluated once for the G edges
    n = plane // C
    c = plane % C
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = p < Ho * Wo
    x_base = x_ptr + plane.to(tl.int64) * H * W
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    av = tl.zeros([BLOCK], dtype=tl.float32)
    xv = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_MAX or HAS_AVG:
        mx, _, av = _pool_at(x_base, p // Wo, p % Wo, pm, H, W, STRIDE, HAS_MAX, HAS_AVG)
        mx = tl.where(pm, mx, 0.0)
    if HAS_SKIP:
        xv = tl.load(x_base + p, mask=pm, other=0.0).to(tl.float32)
    for g in range(G):
        gc = g * C + c
        out = ((n * G) * C + gc).to(tl.int64) * Ho * Wo + p
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        if HAS_LIN:
            zv = tl.load(z_ptr + out, mask=pm, other=0.0).to(tl.float32)
            scale = tl.load(coef_ptr + 4 * g).to(tl.float32) * tl.load(invstd_ptr + gc).to(tl.float32)
            acc += (zv - tl.load(mean_ptr + gc).to(tl.float32)) * scale
        if HAS_MAX:
            acc += tl.load(coef_ptr + 4 * g + 1).to(tl.float32) * mx
        if HAS_AVG:
            acc += tl.load(coef_ptr + 4 * g + 2).to(tl.float32) * av
        if HAS_SKIP:
            acc += tl.load(coef_ptr + 4 * g + 3).to(tl.float32) * xv
        tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=pm)


@triton.autotune(_configs((256, 1024)), key=["C", "Ho", "Wo", "N_PER", "STRIDE", "HAS_LIN",
                                                         "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@_jit
def _combine_red(g_ptr, z_ptr, mean_ptr, invstd_ptr, x_ptr, part_ptr, N, C, H, W, Ho, Wo, N_PER, G,
                 STRIDE: tl.constexpr, HAS_LIN: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr,
                 HAS_SKIP: tl.constexpr, BLOCK: tl.constexpr):
    gc = tl.program_id(0)   # channel c of edge g: g's planes of g_ptr/z_ptr, x's channel c
    c = gc % C
    s = tl.program_id(1)
    a_g = tl.zeros([BLOCK], dtype=tl.float32)
    a_gz = tl.zeros([BLOCK], dtype=tl.float32)
    a_mx = tl.zeros([BLOCK], dtype=tl.float32)
    a_av = tl.zeros([BLOCK], dtype=tl.float32)
    a_sk = tl.zeros([BLOCK], dtype=tl.float32)
    mean = tl.load(mean_ptr + gc).to(tl.float32)   # placeholders when not HAS_LIN
    inv = tl.load(invstd_ptr + gc).to(tl.float32)
    n0 = s * N_PER
    n1 = tl.minimum(n0 + N_PER, N)
    for n in range(n0, n1):
        x_base = x_ptr + (n * C + c).to(tl.int64) * H * W
        plane = (n * G * C + gc).to(tl.int64)
        for p0 in range(0, Ho * Wo, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            pm = p < Ho * Wo
            gv = tl.load(g_ptr + plane * Ho * Wo + p, mask=pm, other=0.0).to(tl.float32)
            if HAS_LIN:
                zv = tl.load(z_ptr + plane * Ho * Wo + p, mask=pm, other=0.0).to(tl.float32)
                a_g += gv
                a_gz += gv * (zv - mean) * inv
            if HAS_MAX or HAS_AVG:
                mx, _, av = _pool_at(x_base, p // Wo, p % Wo, pm, H, W, STRIDE, HAS_MAX, HAS_AVG)
                if HAS_MAX:
                    a_mx += gv * tl.where(pm, mx, 0.0)
                if HAS_AVG:
                    a_av += gv * av
            if HAS_SKIP:
                a_sk += gv * tl.load(x_base + p, mask=pm, other=0.0).to(tl.float32)
    base = part_ptr + (s * G * C + gc) * 5
    tl.store(base, tl.sum(a_g, axis=0))
    tl.store(base + 1, tl.sum(a_gz, axis=0))
    tl.store(base + 2, tl.sum(a_mx, axis=0))
    tl.store(base + 3, tl.sum(a_av, axis=0))
    tl.store(base + 4, tl.sum(a_sk, axis=0))


@triton.autotune(_configs(), key=["C", "GC", "HW", "BATCH"])
@_jit
def _bn_bwd(g_ptr, z_ptr, mean_ptr, invstd_ptr, sums_ptr, coef_ptr, dz_ptr, C, GC, HW, inv_m,
            BATCH: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    c = plane % GC   # channel of the group; edge c // C
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = p < HW
    off = plane.to(tl.int64) * HW + p
    gv = tl.load(g_ptr + off, mask=pm, other=0.0).to(tl.float32)
    scale = tl.load(coef_ptr + 4 * (c // C)).to(tl.float32) * tl.load(invstd_ptr + c).to(tl.float32)
    if BATCH:
        zv = tl.load(z_ptr + off, mask=pm, other=0.0).to(tl.float32)
        zh = (zv - tl.load(mean_ptr + c).to(tl.float32)) * tl.load(invstd_ptr + c).to(tl.float32)
        mg = tl.load(sums_ptr + c * 5).to(tl.float32) * inv_m
        mgz = tl.load(sums_ptr + c * 5 + 1).to(tl.float32) * inv_m
        gv = gv - mg - zh * mgz
    tl.store(dz_ptr + off, (scale * gv).to(dz_ptr.dtype.element_ty), mask=pm)


@triton.autotune(_configs((64, 256)), key=["C", "H", "W", "G", "STRIDE", "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@_jit
def _pool_bwd(g_ptr, x_ptr, coef_ptr, dx_ptr, C, H, W, Ho, Wo, G,
              STRIDE: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr, HAS_SKIP: tl.constexpr,
              BLOCK: tl.constexpr):
    plane = tl.program_id(0)   # (n, c) plane of x; sums the G edges' gradients
    n = plane // C
    c = plane % C
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    im = i < H * W
    ih = i // W
    iw = i % W
    x_base = x_ptr + plane.to(tl.int64) * H * W
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    # candidate q = 3a + b: i sits at (a, b) of the window of output (oh, ow)
    q = tl.arange(0, 16)
    nh = ih[None, :] + 1 - (q // 3)[:, None]
    nw = iw[None, :] + 1 - (q % 3)[:, None]
    m = (q < 9)[:, None] & im[None, :] & (nh >= 0) & (nw >= 0)
    if STRIDE > 1:
        m = m & (nh % STRIDE == 0) & (nw % STRIDE == 0)
    oh = nh // STRIDE
    ow = nw // STRIDE
    m = m & (oh < Ho) & (ow < Wo)
    # per candidate: 1/count of its avg window, 1 where i is its max window's argmax (first maximum wins)
    w_avg = tl.zeros([16, BLOCK], dtype=tl.float32)
    w_max = tl.zeros([16, BLOCK], dtype=tl.float32)
    if HAS_AVG:
        h0 = tl.maximum(oh * STRIDE - 1, 0)
        h1 = tl.minimum(oh * STRIDE + 1, H - 1)
        w0 = tl.maximum(ow * STRIDE - 1, 0)
        w1 = tl.minimum(ow * STRIDE + 1, W - 1)
        w_avg = tl.where(m, 1.0 / tl.maximum((h1 - h0 + 1) * (w1 - w0 + 1), 1).to(tl.float32), 0.0)
    if HAS_MAX:   # argmax of each candidate's window on the [16, BLOCK] grid (avg weights need no loads)
        _, arg, _ = _pool_at(x_base, oh, ow, m, H, W, STRIDE, True, False)
        w_max = tl.where(m & (arg == q[:, None]), 1.0, 0.0)
    for g in range(G):
        g_base = g_ptr + ((n * G + g) * C + c).to(tl.int64) * Ho * Wo
        if HAS_MAX or HAS_AVG:
            gv = tl.load(g_base + oh * Wo + ow, mask=m, other=0.0).to(tl.float32)
            p_max = tl.load(coef_ptr + 4 * g + 1).to(tl.float32)
            wq = p_max * w_max + tl.load(coef_ptr + 4 * g + 2).to(tl.float32) * w_avg
            acc += tl.sum(gv * wq, axis=0)
        if HAS_SKIP:
            gi = tl.load(g_base + i, mask=im, other=0.0).to(tl.float32)
            acc += tl.load(coef_ptr + 4 * g + 3).to(tl.float32) * gi
    tl.store(dx_ptr + plane.to(tl.int64) * H * W + i, acc.to(dx_ptr.dtype.element_ty), mask=im)


# ----------------------------------------------------------------------------- wrappers
_SPECS = {}


def _spec_tensor(spec: Spec, c: int, device) -> torch.Tensor:
    """(k, dilation, weight offset) per kernel, int32, on device (cached)."""
    key = (spec, c, str(device))
    if key not in _SPECS:
        offs = dw_offsets(spec, c)[0]
        _SPECS[key] = torch.tensor([v for (k, d), o in zip(spec, offs) for v in (k, d, o)], dtype=torch.int32,
                                   device=device)
    return _SPECS[key]


def _taps(spec: Spec) -> int:
    return triton.next_power_of_2(max(k * k for k, _ in spec))


def _grid(planes, pixels):
    return lambda meta: (planes, triton.cdiv(pixels, meta["BLOCK"]))


def _splits(n: int, per_split_programs: int, target: int = 1024) -> int:
    return max(1, min(n, triton.cdiv(target, max(per_split_programs, 1))))


def _dw_forward_gather(x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
               out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Multi-kernel depthwise conv of relu(x): (N, C, H, W) -> (N, NK*C, Ho, Wo)."""
    x, w = x.contiguous(), w.contiguous()
    n, c, h, wd = x.shape
    ho, wo = out_size(h, stride), out_size(wd, stride)
    d = torch.empty(n, len(spec) * c, ho, wo, dtype=out_dtype or x.dtype, device=x.device)
    _dw_fwd[_grid(n * c, ho * wo)](x, w, _spec_tensor(spec, c, x.device), d, c, h, wd, ho, wo, len(spec),
                                   STRIDE=stride, TAPS=_taps(spec))
    return d


def _dw_backward_input_gather(dd: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
                      lin: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra, all (N, C, H, W)."""
    dd, x, w = dd.contiguous(), x.contiguous(), w.contiguous()
    n, c, h, wd = x.shape
    dx = torch.empty_like(x)
    lin_t = lin.contiguous() if lin is not None else x
    extra_t = extra.contiguous() if extra is not None else x
    _dw_bwd_in[_grid(n * c, h * wd)](dd, x, w, _spec_tensor(spec, c, x.device), lin_t, extra_t, dx, c, h, wd,
                                     dd.shape[2], dd.shape[3], len(spec), STRIDE=stride,
                                     TAPS=_taps(spec), HAS_LIN=lin is not None, HAS_EXTRA=extra is not None)
    return dx


def _chunks(spec: Spec, c: int):
    """(J0, kwargs) per launch: at most MAX_NK kernels of the spec each, their (k, dilation)
    as constexprs K{i}/D{i} and their weight offsets as OFF{i}."""
    offs = dw_offsets(spec, c)[0]
    out = []
    for j0 in range(0, len(spec), MAX_NK):
        part = list(spec[j0:j0 + MAX_NK])
        kw = {"NK": len(part)}
        for i in range(MAX_NK):
            k, dil = part[i] if i < len(part) else (1, 1)
            kw[f"K{i}"], kw[f"D{i}"] = k, dil
            kw[f"OFF{i}"] = offs[j0 + i] if i < len(part) else 0
        out.append((j0, kw))
    return out


def _tiles(h, w):
    return lambda meta: triton.cdiv(h, meta["BLOCK_H"]) * triton.cdiv(w, meta["BLOCK_W"])


def _dw_forward_tile(x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
               out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Multi-kernel depthwise conv of relu(x): (N, C, H, W) -> (N, NK*C, Ho, Wo)."""
    x, w = x.contiguous(), w.contiguous()
    n, c, h, wd = x.shape
    ho, wo = out_size(h, stride), out_size(wd, stride)
    d = torch.empty(n, len(spec) * c, ho, wo, dtype=out_dtype or x.dtype, device=x.device)
    tiles = _tiles(ho, wo)
    for j0, kw in _chunks(spec, c):
        _dw_fwd_tile[lambda meta: (n * c, tiles(meta))](x, w, d, c, h, wd, ho, wo, len(spec), j0,
                                                   STRIDE=stride, **kw)
    return d


def _dw_backward_input_tile(dd: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
                      lin: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra, all (N, C, H, W)."""
    dd, x, w = dd.contiguous(), x.contiguous(), w.contiguous()
    n, c, h, wd = x.shape
    tiles = _tiles(h, wd)
    chunks = _chunks(spec, c)
    for i, (j0, kw) in enumerate(chunks):
        last = i == len(chunks) - 1
        dx = torch.empty(x.shape, dtype=x.dtype if last else torch.float32, device=x.device)
        lin_t = lin.contiguous() if lin is not None else x
        extra_t = extra.contiguous() if extra is not None else x
        _dw_bwd_in_tile[lambda meta: (n * c, tiles(meta))](
            dd, x, w, lin_t, extra_t, dx, c, h, wd, dd.shape[2], dd.shape[3], len(spec), j0,
            STRIDE=stride, HAS_LIN=lin is not None, HAS_EXTRA=last and extra is not None, MASK=last, **kw)
        lin = dx   # partial sum of the earlier chunks (specs longer than MAX_NK)
    return dx


def dw_forward(x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
               out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Multi-kernel depthwise conv of relu(x): (N, C, H, W) -> (N, NK*C, Ho, Wo) (reference.dw_forward)."""
    fn = _dw_forward_tile if tiled() else _dw_forward_gather
    return fn(x, w, spec, stride, out_dtype)


def dw_backward_input(dd: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
                      lin: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra, all (N, C, H, W) (reference.dw_backward_input)."""
    fn = _dw_backward_input_tile if tiled() else _dw_backward_input_gather
    return fn(dd, x, w, spec, stride, lin, extra)


def _dw_backward_weight_tile(dd: torch.Tensor, x: torch.Tensor, spec: Spec, stride: int) -> torch.Tensor:
    dd, x = dd.contiguous(), x.contiguous()
    n, c, h, wd = x.shape
    nk = len(spec)
    offs, total = dw_offsets(spec, c)
    kmax = max(k for k, _ in spec)
    splits = _splits(n, c * nk * kmax)
    n_per = triton.cdiv(n, splits)
    splits = triton.cdiv(n, n_per)
    part = torch.empty(splits, total, dtype=torch.float32, device=x.device)   # every tap written
    for j, (k, dil) in enumerate(spec):
        _dw_bwd_w_tile[(c, k, splits)](dd, x, part, n, c, h, wd, dd.shape[2], dd.shape[3], nk, j, total, offs[j],
                                       n_per, K=k, DIL=dil, STRIDE=stride)
    return part.sum(0)


def dw_backward_weight(dd: torch.Tensor, x: torch.Tensor, spec: Spec, stride: int) -> torch.Tensor:
    """dL/dw packed flat as w, float32 (reference.dw_backward_weight)."""
    if tiled(weight=True) and max(k for k, _ in spec) <= 5:
        return _dw_backward_weight_tile(dd, x, spec, stride)
    dd, x = dd.contiguous(), x.contiguous()
    n, c, h, wd = x.shape
    nk = len(spec)
    total = dw_offsets(spec, c)[1]
    splits = _splits(n, c * nk)
    n_per = triton.cdiv(n, splits)
    splits = triton.cdiv(n, n_per)
    part = torch.empty(splits, total, dtype=torch.float32, device=x.device)
    _dw_bwd_w[(c, nk, splits)](dd, x, _spec_tensor(spec, c, x.device), part, n, c, h, wd, dd.shape[2],
                               dd.shape[3], nk, total, n_per, STRIDE=stride, TAPS=_taps(spec))
    return part.sum(0)


def _coef(coef: torch.Tensor) -> torch.Tensor:
    """coef as contiguous (G, 4) rows (a (4,) coef is one edge)."""
    return coef.reshape(-1, 4).contiguous()


def combine_forward(z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor, coef: torch.Tensor,
                    stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """y = P_lin * BN(z) + p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x, (N, G*C, Ho, Wo)."""
    x, coef = x.contiguous(), _coef(coef)
    n, c, h, wd = x.shape
    groups = coef.shape[0]
    ho, wo = out_size(h, stride), out_size(wd, stride)
    y = torch.empty(n, groups * c, ho, wo, dtype=x.dtype, device=x.device)
    has_lin = z is not None
    zt = z.contiguous() if has_lin else x
    mt, it = (mean, invstd) if has_lin else (coef, coef)
    _combine_fwd[_grid(n * c, ho * wo)](zt, mt, it, x, coef, y, c, h, wd, ho, wo, groups, STRIDE=stride,
                                        HAS_LIN=has_lin, HAS_MAX=bool(flags[0]), HAS_AVG=bool(flags[1]),
                                        HAS_SKIP=bool(flags[2]))
    return y


def combine_reduce(g: torch.Tensor, z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor,
                   stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """Per-channel sums (G*C, 5): [sum g, sum g*zhat, sum g*maxpool(x), sum g*avgpool(x), sum g*x]."""
    g, x = g.contiguous(), x.contiguous()
    n, c, h, wd = x.shape
    gc = g.shape[1]
    splits = _splits(n, gc)
    n_per = triton.cdiv(n, splits)
    splits = triton.cdiv(n, n_per)
    part = torch.empty(splits, gc, 5, dtype=torch.float32, device=x.device)
    has_lin = z is not None
    zt = z.contiguous() if has_lin else g
    mt, it = (mean, invstd) if has_lin else (g, g)   # placeholders, never used
    _combine_red[(gc, splits)](g, zt, mt, it, x, part, n, c, h, wd, g.shape[2], g.shape[3], n_per, gc // c,
                               STRIDE=stride, HAS_LIN=has_lin, HAS_MAX=bool(flags[0]), HAS_AVG=bool(flags[1]),
                               HAS_SKIP=bool(flags[2]))
    return part.sum(0)


def bn_backward(g: torch.Tensor, z: torch.Tensor, mean, invstd, sums: torch.Tensor, coef: torch.Tensor,
                batch_stats: bool) -> torch.Tensor:
    """dL/dz of y = coef[e, 0] * (z - mean) * invstd on edge e's channels (see reference.bn_backward)."""
    g, z, sums, coef = g.contiguous(), z.contiguous(), sums.contiguous(), _coef(coef)
    n, gc, h, w = z.shape
    dz = torch.empty_like(z)
    _bn_bwd[_grid(n * gc, h * w)](g, z, mean, invstd, sums, coef, dz, gc // coef.shape[0], gc, h * w,
                                  1.0 / (n * h * w), BATCH=bool(batch_stats))
    return dz


def pool_skip_backward(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, stride: int,
                       flags: Sequence[bool]) -> torch.Tensor:
    """dL/dx of the G edges' p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x, (N, C, H, W)."""
    g, x, coef = g.contiguous(), x.contiguous(), _coef(coef)
    n, c, h, wd = x.shape
    dx = torch.empty_like(x)
    _pool_bwd[_grid(n * c, h * wd)](g, x, coef, dx, c, h, wd, g.shape[2], g.shape[3], coef.shape[0],
                                    STRIDE=stride, HAS_MAX=bool(flags[0]), HAS_AVG=bool(flags[1]),
                                    HAS_SKIP=bool(flags[2]))
    return dx
