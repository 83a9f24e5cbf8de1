"""Triton kernels of the fused mixed edge's BN / pool / skip combination.

* ``_combine_fwd``: P_lin * BN(z) + max/avg pool + skip, one pass (the pools once for a group's G edges).
* ``_combine_red``: the five per-channel sums the backward needs.
* ``_bn_bwd``: dL/dz of the BN (batch or running statistics).
* ``_pool_bwd``: dL/dx of pool and skip as a gather (the max pool's argmax is recomputed, first
  maximum wins as in PyTorch), so no indices are stored.

Each wrapper has the signature of its twin in ``reference`` (shapes and names there).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .reference import out_size
from .triton_common import batch_slices, block_configs, jit_any_shape, plane_block, plane_grid


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


@triton.autotune(block_configs(), key=["C", "Ho", "Wo", "G", "STRIDE", "HAS_LIN", "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@jit_any_shape
def _combine_fwd(z_ptr, mean_ptr, invstd_ptr, x_ptr, coef_ptr, y_ptr, C, H, W, Ho, Wo, G,
                 STRIDE: tl.constexpr, HAS_LIN: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr,
                 HAS_SKIP: tl.constexpr, BLOCK: tl.constexpr):
    # (n, c) plane of x; the pools are evaluated once for the G edges
    plane, n, c, p, pm, oh, ow = plane_block(C, Wo, Ho * Wo, BLOCK)
    x_base = x_ptr + plane.to(tl.int64) * H * W
    mx = tl.zeros([BLOCK], dtype=tl.float32)
    av = tl.zeros([BLOCK], dtype=tl.float32)
    xv = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_MAX or HAS_AVG:
        mx, _, av = _pool_at(x_base, oh, ow, pm, H, W, STRIDE, HAS_MAX, HAS_AVG)
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


@triton.autotune(block_configs((256, 1024)), key=["C", "Ho", "Wo", "N_PER", "STRIDE", "HAS_LIN",
                                                  "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@jit_any_shape
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


@triton.autotune(block_configs(), key=["C", "GC", "HW", "BATCH"])
@jit_any_shape
def _bn_bwd(g_ptr, z_ptr, mean_ptr, invstd_ptr, sums_ptr, coef_ptr, dz_ptr, C, GC, HW, inv_m,
            BATCH: tl.constexpr, BLOCK: tl.constexpr):
    plane, _, c, p, pm, _, _ = plane_block(GC, HW, HW, BLOCK)   # c: channel of the group; edge c // C
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


@triton.autotune(block_configs((64, 256)), key=["C", "H", "W", "G", "STRIDE", "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@jit_any_shape
def _pool_bwd(g_ptr, x_ptr, coef_ptr, dx_ptr, C, H, W, Ho, Wo, G,
              STRIDE: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr, HAS_SKIP: tl.constexpr,
              BLOCK: tl.constexpr):
    # (n, c) plane of x; sums the G edges' gradients
    plane, n, c, i, im, ih, iw = plane_block(C, W, H * W, BLOCK)
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
    _combine_fwd[plane_grid(n * c, ho * wo)](zt, mt, it, x, coef, y, c, h, wd, ho, wo, groups, STRIDE=stride,
                                             HAS_LIN=has_lin, HAS_MAX=bool(flags[0]), HAS_AVG=bool(flags[1]),
                                             HAS_SKIP=bool(flags[2]))
    return y


def combine_reduce(g: torch.Tensor, z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor,
                   stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """Per-channel sums (G*C, 5): [sum g, sum g*zhat, sum g*maxpool(x), sum g*avgpool(x), sum g*x]."""
    g, x = g.contiguous(), x.contiguous()
    n, c, h, wd = x.shape
    gc = g.shape[1]
    splits, n_per = batch_slices(n, gc)
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
    _bn_bwd[plane_grid(n * gc, h * w)](g, z, mean, invstd, sums, coef, dz, gc // coef.shape[0], gc, h * w,
                                       1.0 / (n * h * w), BATCH=bool(batch_stats))
    return dz


def pool_skip_backward(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, stride: int,
                       flags: Sequence[bool]) -> torch.Tensor:
    """dL/dx of the G edges' p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x, (N, C, H, W)."""
    g, x, coef = g.contiguous(), x.contiguous(), _coef(coef)
    n, c, h, wd = x.shape
    dx = torch.empty_like(x)
    _pool_bwd[plane_grid(n * c, h * wd)](g, x, coef, dx, c, h, wd, g.shape[2], g.shape[3], coef.shape[0],
                                         STRIDE=stride, HAS_MAX=bool(flags[0]), HAS_AVG=bool(flags[1]),
                                         HAS_SKIP=bool(flags[2]))
    return dx
