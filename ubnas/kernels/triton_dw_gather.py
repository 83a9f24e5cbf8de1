"""Depthwise kernels of the fused mixed edge as (TAPS, BLOCK) gathers (``UBNAS_DW_TILED=0``;
``triton_dw_tile`` holds the default 2-D tile twins, ``triton_kernels.tiled`` picks).

* ``_dw_fwd``: all depthwise kernels (sizes/dilations from a spec table) of one plane in one
  program: relu fused on load, taps vectorised as a (TAPS, BLOCK) gather that the neighbouring
  taps serve from L1.
* ``_dw_bwd_in``: the transposed gather over all kernels, plus the superkernel's gradient, the
  relu mask and the pool/skip gradient in the same pass.
* ``_dw_bwd_w``: dL/dw, a (TAPS, BLOCK) accumulator per (channel, kernel, batch slice).

Inputs arrive contiguous from ``triton_kernels``, which also allocates the forward output;
shapes and names as in ``reference``.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .reference import Spec, dw_offsets
from .triton_common import (batch_slices, block_configs, finish_dx, jit_any_shape, plane_block, plane_grid,
                            relu_keep_nan)


@triton.jit
def _spec_row(spec_ptr, j):
    """Kernel j of the spec table (``_spec_tensor``): (k, dilation, weight offset, padding)."""
    k = tl.load(spec_ptr + 3 * j)
    dil = tl.load(spec_ptr + 3 * j + 1)
    return k, dil, tl.load(spec_ptr + 3 * j + 2), dil * (k - 1) // 2


@triton.autotune(block_configs((128, 512)), key=["C", "Ho", "Wo", "NK", "STRIDE", "TAPS"])
@jit_any_shape
def _dw_fwd(x_ptr, w_ptr, spec_ptr, d_ptr, C, H, W, Ho, Wo, NK,
            STRIDE: tl.constexpr, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    plane, n, c, p, pm, oh, ow = plane_block(C, Wo, Ho * Wo, BLOCK)
    t = tl.arange(0, TAPS)
    x_base = x_ptr + plane.to(tl.int64) * H * W
    for j in range(NK):
        k, dil, w_off, pad = _spec_row(spec_ptr, j)
        tm = t < k * k
        ih = oh[None, :] * STRIDE + ((t // k) * dil - pad)[:, None]
        iw = ow[None, :] * STRIDE + ((t % k) * dil - pad)[:, None]
        m = tm[:, None] & pm[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xv = relu_keep_nan(tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32))
        wv = tl.load(w_ptr + w_off + c * k * k + t, mask=tm, other=0.0).to(tl.float32)
        acc = tl.sum(xv * wv[:, None], axis=0)
        d_base = d_ptr + ((n * NK + j) * C + c).to(tl.int64) * Ho * Wo
        tl.store(d_base + p, acc.to(d_ptr.dtype.element_ty), mask=pm)


@triton.autotune(block_configs((128, 512)), key=["C", "H", "W", "NK", "STRIDE", "TAPS", "HAS_LIN", "HAS_EXTRA"])
@jit_any_shape
def _dw_bwd_in(dd_ptr, x_ptr, w_ptr, spec_ptr, lin_ptr, extra_ptr, dx_ptr, C, H, W, Ho, Wo, NK,
               STRIDE: tl.constexpr, TAPS: tl.constexpr, HAS_LIN: tl.constexpr, HAS_EXTRA: tl.constexpr,
               BLOCK: tl.constexpr):
    plane, n, c, i, im, ih, iw = plane_block(C, W, H * W, BLOCK)
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
    finish_dx(acc, plane.to(tl.int64) * H * W + i, im, x_ptr, lin_ptr, extra_ptr, dx_ptr, HAS_LIN, True, HAS_EXTRA)


@triton.autotune(block_configs((64, 128)), key=["C", "Ho", "Wo", "N_PER", "STRIDE", "TAPS"])
@jit_any_shape
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
            xv = relu_keep_nan(tl.load(x_base + ih * W + iw, mask=m, other=0.0).to(tl.float32))
            acc += xv * gv[None, :]
    res = tl.sum(acc, axis=1)
    tl.store(part_ptr + s * TOTAL + w_off + c * k * k + t, res, mask=tm)


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


def dw_forward_into(d: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int) -> None:
    """d (N, NK*C, Ho, Wo) = the multi-kernel depthwise conv of relu(x) (reference.dw_forward)."""
    n, c, h, wd = x.shape
    ho, wo = d.shape[2:]
    _dw_fwd[plane_grid(n * c, ho * wo)](x, w, _spec_tensor(spec, c, x.device), d, c, h, wd, ho, wo, len(spec),
                                        STRIDE=stride, TAPS=_taps(spec))


def dw_backward_input(dd: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
                      lin: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra, all (N, C, H, W) (reference.dw_backward_input)."""
    n, c, h, wd = x.shape
    dx = torch.empty_like(x)
    lin_t = lin if lin is not None else x   # placeholders, never read
    extra_t = extra if extra is not None else x
    _dw_bwd_in[plane_grid(n * c, h * wd)](dd, x, w, _spec_tensor(spec, c, x.device), lin_t, extra_t, dx, c, h, wd,
                                          dd.shape[2], dd.shape[3], len(spec), STRIDE=stride,
                                          TAPS=_taps(spec), HAS_LIN=lin is not None, HAS_EXTRA=extra is not None)
    return dx


def dw_backward_weight(dd: torch.Tensor, x: torch.Tensor, spec: Spec, stride: int) -> torch.Tensor:
    """dL/dw packed flat as w, float32 (reference.dw_backward_weight)."""
    n, c, h, wd = x.shape
    nk = len(spec)
    total = dw_offsets(spec, c)[1]
    splits, n_per = batch_slices(n, c * nk)
    part = torch.empty(splits, total, dtype=torch.float32, device=x.device)
    _dw_bwd_w[(c, nk, splits)](dd, x, _spec_tensor(spec, c, x.device), part, n, c, h, wd, dd.shape[2],
                               dd.shape[3], nk, total, n_per, STRIDE=stride, TAPS=_taps(spec))
    return part.sum(0)
