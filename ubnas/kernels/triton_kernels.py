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
* ``_combine_fwd``: P_lin * BN(z) + max/avg pool + skip, one pass.
* ``_combine_red``: the five per-channel sums the backward needs.
* ``_bn_bwd``: dL/dz of the BN (batch or running statistics).
* ``_pool_bwd``: dL/dx of pool and skip as a gather (the max pool's argmax is
  recomputed, first maximum wins as in PyTorch), so no indices are stored.

On CUDA every kernel is autotuned over BLOCK and num_warps; under
``TRITON_INTERPRET=1`` (CPU tests) a single small configuration is used.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from .reference import Spec, out_size

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(blocks=(256, 1024), warps=(4,)):
    if INTERPRET:
        return [triton.Config({"BLOCK": 64}, num_warps=1)]
    return [triton.Config({"BLOCK": b}, num_warps=w) for b in blocks for w in warps]


SHAPE_ARGS = ["N", "C", "H", "W", "Ho", "Wo", "HW", "NK", "KK", "N_PER"]


def _jit(fn):
    """triton.jit without value specialisation of shape integers (one compile serves all shapes)."""
    import inspect
    names = [a for a in inspect.signature(fn).parameters if a in SHAPE_ARGS]
    return triton.jit(fn, do_not_specialize=names)


# ----------------------------------------------------------------------------- depthwise
@triton.autotune(_configs((128, 512)), key=["C", "Ho", "Wo", "NK", "STRIDE", "TAPS"])
@_jit
def _dw_fwd(x_ptr, w_ptr, spec_ptr, d_ptr, C, H, W, Ho, Wo, NK, KK,
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
        k = tl.load(spec_ptr + 2 * j)
        dil = tl.load(spec_ptr + 2 * j + 1)
        pad = dil * (k - 1) // 2
        tm = t < k * k
        ih = oh[None, :] * STRIDE + ((t // k) * dil - pad)[:, None]
        iw = ow[None, :] * STRIDE + ((t % k) * dil - pad)[:, None]
        m = tm[:, None] & pm[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = tl.maximum(tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32), 0.0)
        wv = tl.load(w_ptr + (j * C + c) * KK + t, mask=tm, other=0.0).to(tl.float32)
        acc = tl.sum(xv * wv[:, None], axis=0)
        d_base = d_ptr + ((n * NK + j) * C + c).to(tl.int64) * Ho * Wo
        tl.store(d_base + p, acc.to(d_ptr.dtype.element_ty), mask=pm)


@triton.autotune(_configs((128, 512)), key=["C", "H", "W", "NK", "STRIDE", "TAPS", "HAS_LIN", "HAS_EXTRA"])
@_jit
def _dw_bwd_in(dd_ptr, x_ptr, w_ptr, spec_ptr, lin_ptr, extra_ptr, dx_ptr, C, H, W, Ho, Wo, NK, KK,
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
        k = tl.load(spec_ptr + 2 * j)
        dil = tl.load(spec_ptr + 2 * j + 1)
        pad = dil * (k - 1) // 2
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
        wv = tl.load(w_ptr + (j * C + c) * KK + t, mask=tm, other=0.0).to(tl.float32)
        acc += tl.sum(gv * wv[:, None], axis=0)
    off = plane.to(tl.int64) * H * W + i
    if HAS_LIN:
        acc += tl.load(lin_ptr + off, mask=im, other=0.0).to(tl.float32)
    xv = tl.load(x_ptr + off, mask=im, other=0.0).to(tl.float32)
    acc = tl.where(xv > 0, acc, 0.0)
    if HAS_EXTRA:
        acc += tl.load(extra_ptr + off, mask=im, other=0.0).to(tl.float32)
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=im)


@triton.autotune(_configs((64, 128)), key=["C", "Ho", "Wo", "N_PER", "STRIDE", "TAPS"])
@_jit
def _dw_bwd_w(dd_ptr, x_ptr, spec_ptr, part_ptr, N, C, H, W, Ho, Wo, NK, KK, N_PER,
              STRIDE: tl.constexpr, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    j = tl.program_id(1)
    s = tl.program_id(2)
    k = tl.load(spec_ptr + 2 * j)
    dil = tl.load(spec_ptr + 2 * j + 1)
    pad = dil * (k - 1) // 2
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
            xv = tl.maximum(tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32), 0.0)
            acc += xv * gv[None, :]
    res = tl.sum(acc, axis=1)
    tl.store(part_ptr + ((s * NK + j) * C + c) * KK + t, res, mask=t < KK)


# ----------------------------------------------------------------------------- combine
@triton.jit
def _pool_at(x_base, oh, ow, pm, H, W, STRIDE: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr,
             BLOCK: tl.constexpr):
    """(max, avg) of the 3x3 windows at output positions (oh, ow); pad 1, avg excludes padding."""
    mx = tl.full([BLOCK], float("-inf"), tl.float32)
    sm = tl.zeros([BLOCK], dtype=tl.float32)
    cnt = tl.zeros([BLOCK], dtype=tl.float32)
    for a in tl.static_range(3):
        for b in tl.static_range(3):
            ih = oh * STRIDE - 1 + a
            iw = ow * STRIDE - 1 + b
            m = pm & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32)
            if HAS_MAX:
                mx = tl.where(m & (v > mx), v, mx)
            if HAS_AVG:
                sm += v
                cnt += m.to(tl.float32)
    return mx, sm / tl.maximum(cnt, 1.0)


@triton.autotune(_configs(), key=["C", "Ho", "Wo", "STRIDE", "HAS_LIN", "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@_jit
def _combine_fwd(z_ptr, mean_ptr, invstd_ptr, x_ptr, coef_ptr, y_ptr, C, H, W, Ho, Wo,
                 STRIDE: tl.constexpr, HAS_LIN: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr,
                 HAS_SKIP: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    c = plane % C
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = p < Ho * Wo
    oh = p // Wo
    ow = p % Wo
    out = plane.to(tl.int64) * Ho * Wo + p
    x_base = x_ptr + plane.to(tl.int64) * H * W
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_LIN:
        zv = tl.load(z_ptr + out, mask=pm, other=0.0).to(tl.float32)
        scale = tl.load(coef_ptr).to(tl.float32) * tl.load(invstd_ptr + c).to(tl.float32)
        acc += (zv - tl.load(mean_ptr + c).to(tl.float32)) * scale
    if HAS_MAX or HAS_AVG:
        mx, av = _pool_at(x_base, oh, ow, pm, H, W, STRIDE, HAS_MAX, HAS_AVG, BLOCK)
        if HAS_MAX:
            acc += tl.load(coef_ptr + 1).to(tl.float32) * tl.where(pm, mx, 0.0)
        if HAS_AVG:
            acc += tl.load(coef_ptr + 2).to(tl.float32) * av
    if HAS_SKIP:
        acc += tl.load(coef_ptr + 3).to(tl.float32) * tl.load(x_base + p, mask=pm, other=0.0).to(tl.float32)
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=pm)


@triton.autotune(_configs((256, 1024)), key=["C", "Ho", "Wo", "N_PER", "STRIDE", "HAS_LIN",
                                                         "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@_jit
def _combine_red(g_ptr, z_ptr, mean_ptr, invstd_ptr, x_ptr, part_ptr, N, C, H, W, Ho, Wo, N_PER,
                 STRIDE: tl.constexpr, HAS_LIN: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr,
                 HAS_SKIP: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    s = tl.program_id(1)
    a_g = tl.zeros([BLOCK], dtype=tl.float32)
    a_gz = tl.zeros([BLOCK], dtype=tl.float32)
    a_mx = tl.zeros([BLOCK], dtype=tl.float32)
    a_av = tl.zeros([BLOCK], dtype=tl.float32)
    a_sk = tl.zeros([BLOCK], dtype=tl.float32)
    mean = tl.load(mean_ptr + c).to(tl.float32)   # placeholders when not HAS_LIN
    inv = tl.load(invstd_ptr + c).to(tl.float32)
    n0 = s * N_PER
    n1 = tl.minimum(n0 + N_PER, N)
    for n in range(n0, n1):
        plane = (n * C + c).to(tl.int64)
        x_base = x_ptr + plane * H * W
        for p0 in range(0, Ho * Wo, BLOCK):
            p = p0 + tl.arange(0, BLOCK)
            pm = p < Ho * Wo
            gv = tl.load(g_ptr + plane * Ho * Wo + p, mask=pm, other=0.0).to(tl.float32)
            if HAS_LIN:
                zv = tl.load(z_ptr + plane * Ho * Wo + p, mask=pm, other=0.0).to(tl.float32)
                a_g += gv
                a_gz += gv * (zv - mean) * inv
            if HAS_MAX or HAS_AVG:
                mx, av = _pool_at(x_base, p // Wo, p % Wo, pm, H, W, STRIDE, HAS_MAX, HAS_AVG, BLOCK)
                if HAS_MAX:
                    a_mx += gv * tl.where(pm, mx, 0.0)
                if HAS_AVG:
                    a_av += gv * av
            if HAS_SKIP:
                a_sk += gv * tl.load(x_base + p, mask=pm, other=0.0).to(tl.float32)
    base = part_ptr + (s * C + c) * 5
    tl.store(base, tl.sum(a_g, axis=0))
    tl.store(base + 1, tl.sum(a_gz, axis=0))
    tl.store(base + 2, tl.sum(a_mx, axis=0))
    tl.store(base + 3, tl.sum(a_av, axis=0))
    tl.store(base + 4, tl.sum(a_sk, axis=0))


@triton.autotune(_configs(), key=["C", "HW", "BATCH"])
@_jit
def _bn_bwd(g_ptr, z_ptr, mean_ptr, invstd_ptr, sums_ptr, coef_ptr, dz_ptr, C, HW, inv_m,
            BATCH: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    c = plane % C
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = p < HW
    off = plane.to(tl.int64) * HW + p
    gv = tl.load(g_ptr + off, mask=pm, other=0.0).to(tl.float32)
    scale = tl.load(coef_ptr).to(tl.float32) * tl.load(invstd_ptr + c).to(tl.float32)
    if BATCH:
        zv = tl.load(z_ptr + off, mask=pm, other=0.0).to(tl.float32)
        zh = (zv - tl.load(mean_ptr + c).to(tl.float32)) * tl.load(invstd_ptr + c).to(tl.float32)
        mg = tl.load(sums_ptr + c * 5).to(tl.float32) * inv_m
        mgz = tl.load(sums_ptr + c * 5 + 1).to(tl.float32) * inv_m
        gv = gv - mg - zh * mgz
    tl.store(dz_ptr + off, (scale * gv).to(dz_ptr.dtype.element_ty), mask=pm)


@triton.autotune(_configs((64, 256)), key=["C", "H", "W", "STRIDE", "HAS_MAX", "HAS_AVG", "HAS_SKIP"])
@_jit
def _pool_bwd(g_ptr, x_ptr, coef_ptr, dx_ptr, C, H, W, Ho, Wo,
              STRIDE: tl.constexpr, HAS_MAX: tl.constexpr, HAS_AVG: tl.constexpr, HAS_SKIP: tl.constexpr,
              BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    im = i < H * W
    ih = i // W
    iw = i % W
    x_base = x_ptr + plane.to(tl.int64) * H * W
    g_base = g_ptr + plane.to(tl.int64) * Ho * Wo
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    p_max = tl.load(coef_ptr + 1).to(tl.float32)
    p_avg = tl.load(coef_ptr + 2).to(tl.float32)
    if HAS_MAX or HAS_AVG:
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
        gv = tl.load(g_base + oh * Wo + ow, mask=m, other=0.0).to(tl.float32)
        if HAS_AVG:
            h0 = tl.maximum(oh * STRIDE - 1, 0)
            h1 = tl.minimum(oh * STRIDE + 1, H - 1)
            w0 = tl.maximum(ow * STRIDE - 1, 0)
            w1 = tl.minimum(ow * STRIDE + 1, W - 1)
            cnt = tl.maximum((h1 - h0 + 1) * (w1 - w0 + 1), 1).to(tl.float32)
            acc += tl.sum(tl.where(m, gv / cnt, 0.0), axis=0) * p_avg
        if HAS_MAX:   # recompute each candidate window's argmax (first maximum wins)
            best = tl.full([16, BLOCK], float("-inf"), tl.float32)
            arg = tl.full([16, BLOCK], -1, tl.int32)
            for a2 in tl.static_range(3):
                for b2 in tl.static_range(3):
                    jh = oh * STRIDE - 1 + a2
                    jw = ow * STRIDE - 1 + b2
                    mj = m & (jh >= 0) & (jh < H) & (jw >= 0) & (jw < W)
                    v = tl.load(x_base + jh * W + jw, mask=mj, other=0.0).to(tl.float32)
                    upd = mj & (v > best)
                    best = tl.where(upd, v, best)
                    arg = tl.where(upd, a2 * 3 + b2, arg)
            acc += tl.sum(tl.where(m & (arg == q[:, None]), gv, 0.0), axis=0) * p_max
    if HAS_SKIP:
        acc += tl.load(coef_ptr + 3).to(tl.float32) * tl.load(g_base + i, mask=im, other=0.0).to(tl.float32)
    tl.store(dx_ptr + plane.to(tl.int64) * H * W + i, acc.to(dx_ptr.dtype.element_ty), mask=im)


# ----------------------------------------------------------------------------- wrappers
_SPECS = {}


def _spec_tensor(spec: Spec, device) -> torch.Tensor:
    key = (spec, str(device))
    if key not in _SPECS:
        _SPECS[key] = torch.tensor([v for kd in spec for v in kd], dtype=torch.int32, device=device)
    return _SPECS[key]


def _taps(spec: Spec) -> int:
    return triton.next_power_of_2(max(k * k for k, _ in spec))


def _grid(planes, pixels):
    return lambda meta: (planes, triton.cdiv(pixels, meta["BLOCK"]))


def _splits(n: int, per_split_programs: int, target: int = 1024) -> int:
    return max(1, min(n, triton.cdiv(target, max(per_split_programs, 1))))


def dw_forward(x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
               out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Multi-kernel depthwise conv of relu(x): (N, C, H, W) -> (N, NK*C, Ho, Wo)."""
    x, w = x.contiguous(), w.contiguous()
    n, c, h, wd = x.shape
    ho, wo = out_size(h, stride), out_size(wd, stride)
    d = torch.empty(n, len(spec) * c, ho, wo, dtype=out_dtype or x.dtype, device=x.device)
    _dw_fwd[_grid(n * c, ho * wo)](x, w, _spec_tensor(spec, x.device), d, c, h, wd, ho, wo, len(spec),
                                   w.shape[2], STRIDE=stride, TAPS=_taps(spec))
    return d


def dw_backward_input(dd: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
                      lin: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra, all (N, C, H, W)."""
    dd, x, w = dd.contiguous(), x.contiguous(), w.contiguous()
    n, c, h, wd = x.shape
    dx = torch.empty_like(x)
    lin_t = lin.contiguous() if lin is not None else x
    extra_t = extra.contiguous() if extra is not None else x
    _dw_bwd_in[_grid(n * c, h * wd)](dd, x, w, _spec_tensor(spec, x.device), lin_t, extra_t, dx, c, h, wd,
                                     dd.shape[2], dd.shape[3], len(spec), w.shape[2], STRIDE=stride,
                                     TAPS=_taps(spec), HAS_LIN=lin is not None, HAS_EXTRA=extra is not None)
    return dx


def dw_backward_weight(dd: torch.Tensor, x: torch.Tensor, spec: Spec, stride: int, kk: int) -> torch.Tensor:
    """dL/dw packed as (NK, C, kk) float32."""
    dd, x = dd.contiguous(), x.contiguous()
    n, c, h, wd = x.shape
    nk = len(spec)
    splits = _splits(n, c * nk)
    n_per = triton.cdiv(n, splits)
    splits = triton.cdiv(n, n_per)
    part = torch.empty(splits, nk, c, kk, dtype=torch.float32, device=x.device)
    _dw_bwd_w[(c, nk, splits)](dd, x, _spec_tensor(spec, x.device), part, n, c, h, wd, dd.shape[2], dd.shape[3],
                               nk, kk, n_per, STRIDE=stride, TAPS=_taps(spec))
    return part.sum(0)


def combine_forward(z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor, coef: torch.Tensor,
                    stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """y = P_lin * BN(z) + p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x, (N, C, Ho, Wo)."""
    x = x.contiguous()
    n, c, h, wd = x.shape
    ho, wo = out_size(h, stride), out_size(wd, stride)
    y = torch.empty(n, c, ho, wo, dtype=x.dtype, device=x.device)
    has_lin = z is not None
    zt = z.contiguous() if has_lin else x
    mt, it = (mean, invstd) if has_lin else (coef, coef)
    _combine_fwd[_grid(n * c, ho * wo)](zt, mt, it, x, coef, y, c, h, wd, ho, wo, STRIDE=stride,
                                        HAS_LIN=has_lin, HAS_MAX=bool(flags[0]), HAS_AVG=bool(flags[1]),
                                        HAS_SKIP=bool(flags[2]))
    return y


def combine_reduce(g: torch.Tensor, z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor,
                   stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """Per-channel sums (C, 5): [sum g, sum g*zhat, sum g*maxpool(x), sum g*avgpool(x), sum g*x]."""
    g, x = g.contiguous(), x.contiguous()
    n, c, h, wd = x.shape
    splits = _splits(n, c)
    n_per = triton.cdiv(n, splits)
    splits = triton.cdiv(n, n_per)
    part = torch.empty(splits, c, 5, dtype=torch.float32, device=x.device)
    has_lin = z is not None
    zt = z.contiguous() if has_lin else g
    mt, it = (mean, invstd) if has_lin else (g, g)   # placeholders, never used
    _combine_red[(c, splits)](g, zt, mt, it, x, part, n, c, h, wd, g.shape[2], g.shape[3], n_per,
                              STRIDE=stride, HAS_LIN=has_lin, HAS_MAX=bool(flags[0]), HAS_AVG=bool(flags[1]),
                              HAS_SKIP=bool(flags[2]))
    return part.sum(0)


def bn_backward(g: torch.Tensor, z: torch.Tensor, mean, invstd, sums: torch.Tensor, coef: torch.Tensor,
                batch_stats: bool) -> torch.Tensor:
    """dL/dz of y = coef[0] * (z - mean) * invstd (see reference.bn_backward)."""
    g, z, sums = g.contiguous(), z.contiguous(), sums.contiguous()
    n, c, h, w = z.shape
    dz = torch.empty_like(z)
    _bn_bwd[_grid(n * c, h * w)](g, z, mean, invstd, sums, coef, dz, c, h * w, 1.0 / (n * h * w),
                                 BATCH=bool(batch_stats))
    return dz


def pool_skip_backward(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, stride: int,
                       flags: Sequence[bool]) -> torch.Tensor:
    """dL/dx of p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x, (N, C, H, W)."""
    g, x = g.contiguous(), x.contiguous()
    n, c, h, wd = x.shape
    dx = torch.empty_like(x)
    _pool_bwd[_grid(n * c, h * wd)](g, x, coef, dx, c, h, wd, g.shape[2], g.shape[3], STRIDE=stride,
                                    HAS_MAX=bool(flags[0]), HAS_AVG=bool(flags[1]), HAS_SKIP=bool(flags[2]))
    return dx
