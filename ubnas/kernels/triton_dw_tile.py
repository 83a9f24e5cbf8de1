"""Depthwise kernels of the fused mixed edge on 2-D spatial tiles (the default family,
``triton_kernels.tiled``; ``UBNAS_DW_TILED=0`` runs the gathers of ``triton_dw_gather`` instead).

A program owns one (n, c) plane and a [BLOCK_H, BLOCK_W] tile; each kernel's (k, dilation) is
constexpr (K0/D0 .. K3/D3, NK <= MAX_NK per launch, longer specs are chunked), so every tap is one
shifted tile load with a row mask [BLOCK_H, 1] and a column mask [1, BLOCK_W] built from 1-D vectors:
no per-element division, no padded taps.  One specialisation per (spec, stride).

* ``_dw_fwd_tile``: the forward of up to MAX_NK kernels on one output tile.
* ``_dw_bwd_in_tile``: the transposed conv, plus the superkernel's gradient, the relu mask and the
  pool/skip gradient on one input tile.
* ``_dw_bwd_w_tile``: dL/dw of one kernel (k <= MAX_WEIGHT_K), one accumulator per tap of a tap row.

Inputs arrive contiguous from ``triton_kernels``, which also allocates the forward output;
shapes and names as in ``reference``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .reference import Spec, dw_offsets
from .triton_common import (INTERPRET, AUTOTUNE, batch_slices, finish_dx, jit_any_shape, relu_keep_nan, tile_at,
                            tile_grid)


MAX_NK = 4          # kernels per launch of _dw_fwd_tile / _dw_bwd_in_tile
MAX_WEIGHT_K = 5    # largest k of _dw_bwd_w_tile (one accumulator per tap of a row)


def _tile_configs(skip=()):
    """(BLOCK_H, BLOCK_W, num_warps) autotune chooses from, less those in ``skip``; with
    UBNAS_AUTOTUNE=0 (16, 32, 8), the one that spills in none of the three kernels for sm_90
    (tools/compile_kernels.py, triton 3.9: (16, 32, 4) spills 40-72 bytes a thread in
    _dw_bwd_in_tile, (32, 32, 8) 40-80 there, (32, 32, 4) 3.5 KB there and 56 in _dw_fwd_tile at
    stride 2; autotune times the rest and keeps the fastest)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_H": 4, "BLOCK_W": 4}, num_warps=1)]
    tiles = (((8, 8, 1), (8, 16, 2), (16, 32, 4), (16, 32, 8), (32, 32, 4), (32, 32, 8)) if AUTOTUNE
             else ((16, 32, 8),))
    tiles = [t for t in tiles if t not in skip]
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
            acc += relu_keep_nan(xv) * tl.load(w_base + a * K + b).to(tl.float32)
    tl.store(d_base + oh * Wo + ow, acc.to(d_base.dtype.element_ty), mask=om)


@triton.autotune(_tile_configs(), key=["C", "H", "W", "Ho", "Wo"] + DW_KEYS)
@jit_any_shape
def _dw_fwd_tile(x_ptr, w_ptr, d_ptr, C, H, W, Ho, Wo, NK_ALL, J0, OFF0, OFF1, OFF2, OFF3,
                 K0: tl.constexpr, D0: tl.constexpr, K1: tl.constexpr, D1: tl.constexpr,
                 K2: tl.constexpr, D2: tl.constexpr, K3: tl.constexpr, D3: tl.constexpr,
                 NK: tl.constexpr, STRIDE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Kernels J0 .. J0+NK-1 of the spec on one (n, c) plane and one output tile (reference.dw_forward)."""
    plane = tl.program_id(0)
    n = plane // C
    c = plane % C
    oh, ow, om = tile_at(tl.program_id(1), Ho, Wo, BLOCK_H, BLOCK_W)
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


# (32, 32, 4) spills kilobytes a thread here: not worth timing
@triton.autotune(_tile_configs(skip=((32, 32, 4),)), key=["C", "H", "W", "Ho", "Wo", "HAS_LIN", "HAS_EXTRA", "MASK"]
                 + DW_KEYS)
@jit_any_shape
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
    ih, iw, im = tile_at(tl.program_id(1), H, W, BLOCK_H, BLOCK_W)
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
    finish_dx(acc, plane.to(tl.int64) * H * W + ih * W + iw, im, x_ptr, lin_ptr, extra_ptr, dx_ptr,
              HAS_LIN, MASK, HAS_EXTRA)


@triton.jit
def _wtap(row, ow, rm, gv, W, b: tl.constexpr, K: tl.constexpr, DIL: tl.constexpr, STRIDE: tl.constexpr):
    """relu(x[ih, ow*S + b*DIL - pad]) * dd[oh, ow] on one tile (row = x row pointers of the tap row)."""
    iw = ow * STRIDE + (b * DIL - DIL * (K - 1) // 2)
    xv = tl.load(row + iw, mask=rm & (iw >= 0) & (iw < W), other=0.0).to(tl.float32)
    return relu_keep_nan(xv) * gv


@triton.autotune(_tile_configs(), key=["C", "Ho", "Wo", "N_PER", "K", "DIL", "STRIDE"])
@jit_any_shape
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
    n_tiles = tl.cdiv(Ho, BLOCK_H) * tl.cdiv(Wo, BLOCK_W)
    n0 = s * N_PER
    n1 = tl.minimum(n0 + N_PER, N)
    for n in range(n0, n1):
        x_base = x_ptr + (n * C + c).to(tl.int64) * H * W
        d_base = dd_ptr + ((n * NK_ALL + J0) * C + c).to(tl.int64) * Ho * Wo
        for t in range(0, n_tiles):
            oh, ow, om = tile_at(t, Ho, Wo, BLOCK_H, BLOCK_W)
            gv = tl.load(d_base + oh * Wo + ow, mask=om, other=0.0).to(tl.float32)
            ih = oh * STRIDE + (a * DIL - DIL * (K - 1) // 2)
            # om too: a position past Ho/Wo still reads a real pixel, and relu(NaN) * 0 is NaN
            rm = (ih >= 0) & (ih < H) & om
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


def dw_forward_into(d: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int) -> None:
    """d (N, NK*C, Ho, Wo) = the multi-kernel depthwise conv of relu(x) (reference.dw_forward)."""
    n, c, h, wd = x.shape
    ho, wo = d.shape[2:]
    for j0, kw in _chunks(spec, c):
        _dw_fwd_tile[tile_grid(n * c, ho, wo)](x, w, d, c, h, wd, ho, wo, len(spec), j0, STRIDE=stride, **kw)


def dw_backward_input(dd: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
                      lin: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra, all (N, C, H, W) (reference.dw_backward_input)."""
    n, c, h, wd = x.shape
    chunks = _chunks(spec, c)
    extra_t = extra if extra is not None else x   # placeholder, never read
    for i, (j0, kw) in enumerate(chunks):
        last = i == len(chunks) - 1
        dx = torch.empty(x.shape, dtype=x.dtype if last else torch.float32, device=x.device)
        lin_t = lin if lin is not None else x
        _dw_bwd_in_tile[tile_grid(n * c, h, wd)](
            dd, x, w, lin_t, extra_t, dx, c, h, wd, dd.shape[2], dd.shape[3], len(spec), j0,
            STRIDE=stride, HAS_LIN=lin is not None, HAS_EXTRA=last and extra is not None, MASK=last, **kw)
        lin = dx   # partial sum of the earlier chunks (specs longer than MAX_NK)
    return dx


def takes_weight(spec: Spec) -> bool:
    """Whether ``dw_backward_weight`` takes ``spec``: every k <= MAX_WEIGHT_K."""
    return max(k for k, _ in spec) <= MAX_WEIGHT_K


def dw_backward_weight(dd: torch.Tensor, x: torch.Tensor, spec: Spec, stride: int) -> torch.Tensor:
    """dL/dw packed flat as w, float32, for specs whose k are all <= MAX_WEIGHT_K (reference.dw_backward_weight)."""
    n, c, h, wd = x.shape
    nk = len(spec)
    offs, total = dw_offsets(spec, c)
    kmax = max(k for k, _ in spec)
    if not takes_weight(spec):
        raise ValueError(f"_dw_bwd_w_tile takes kernels up to {MAX_WEIGHT_K}x{MAX_WEIGHT_K}, got {kmax}x{kmax}")
    # one launch per kernel of (c, k, splits) programs: split the batch for about 1024 programs a launch
    splits, n_per = batch_slices(n, c * kmax)
    part = torch.empty(splits, total, dtype=torch.float32, device=x.device)   # every tap written
    for j, (k, dil) in enumerate(spec):
        _dw_bwd_w_tile[(c, k, splits)](dd, x, part, n, c, h, wd, dd.shape[2], dd.shape[3], nk, j, total, offs[j],
                                       n_per, K=k, DIL=dil, STRIDE=stride)
    return part.sum(0)
