"""PyTorch reference of the fused mixed-edge primitives (same signatures as ``triton_kernels``).

Shapes (NCHW, contiguous): x (N, C, H, W) is the edge input; outputs are
(N, C, Ho, Wo) with Ho = (H - 1) // stride + 1 (every op pads to "same").

* ``spec``: the depthwise kernels of the separable family, a tuple of
  (k, dilation) pairs, one per op; ``w`` packs their weights flat, kernel j's
  (C, k, k) block at ``dw_offsets(spec, C)[0][j]`` (the kernels' weights
  concatenated in spec order, so packing is one cat and unpacking views).
* ``d`` = stacked depthwise outputs (N, NK*C, Ho, Wo): channel j*C + c holds
  op j's depthwise conv of relu(x) channel c.
* ``z`` = pre-BN linear sum (N, C, Ho, Wo); ``mean``/``invstd`` (C,) its BN
  statistics, float32 (float64 when z is float64: ``fused._bn_stats``);
  ``coef`` (4,) = [P_lin, p_max, p_avg, p_skip] (0 where absent).
* ``flags`` = (has_max, has_avg, has_skip); skip only exists at stride 1.
* Edge groups: G edges that read the same x (a cell state feeds up to 4) run as
  one call with ``coef`` (G, 4) and z, y, g (N, G*C, Ho, Wo), edge e's channels
  at [e*C, (e+1)*C); mean/invstd (G*C,); the depthwise spec repeated G times.
  Pools are evaluated once per group.

Every function computes in the dtype of its inputs (float64 in the tests), so
this module is both the CPU fallback and the float64 reference.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Spec = Tuple[Tuple[int, int], ...]


def out_size(h: int, stride: int) -> int:
    """Output height (or width) of a 3x3 / k x k 'same'-padded window at ``stride``: ceil(h / stride)."""
    return (h - 1) // stride + 1


@lru_cache(maxsize=None)
def dw_offsets(spec: Spec, c: int) -> Tuple[Tuple[int, ...], int]:
    """(offset of each kernel's (C, k, k) block in the flat packed weights, total length)."""
    offs, total = [], 0
    for k, _ in spec:
        offs.append(total)
        total += c * k * k
    return tuple(offs), total


def _dw_weight(w: torch.Tensor, spec: Spec, c: int, j: int, dtype) -> torch.Tensor:
    k, off = spec[j][0], dw_offsets(spec, c)[0][j]
    return w[off:off + c * k * k].view(c, 1, k, k).to(dtype)


def dw_forward(x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
               out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Multi-kernel depthwise conv of relu(x): (N, C, H, W) -> (N, NK*C, Ho, Wo)."""
    dtype = out_dtype or x.dtype
    r = torch.relu(x).to(dtype)
    c = x.shape[1]
    outs = [F.conv2d(r, _dw_weight(w, spec, c, j, dtype), stride=stride, padding=dil * (k - 1) // 2,
                     dilation=dil, groups=c) for j, (k, dil) in enumerate(spec)]
    return torch.cat(outs, dim=1)


def dw_backward_input(dd: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
                      lin: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra, all (N, C, H, W).

    ``lin`` is the gradient w.r.t. relu(x) from the full-conv superkernel,
    ``extra`` the pool/skip gradient (added after the relu mask).
    """
    n, c, h, wd = x.shape
    acc = torch.zeros(x.shape, dtype=torch.promote_types(dd.dtype, torch.float32), device=x.device)
    if x.dtype == torch.float64:
        acc = acc.double()
    for j, (k, dil) in enumerate(spec):
        g = dd[:, j * c:(j + 1) * c].to(acc.dtype)
        acc += torch.nn.grad.conv2d_input((n, c, h, wd), _dw_weight(w, spec, c, j, acc.dtype), g, stride=stride,
                                          padding=dil * (k - 1) // 2, dilation=dil, groups=c)
    if lin is not None:
        acc += lin.to(acc.dtype)
    acc = torch.where(x > 0, acc, torch.zeros((), dtype=acc.dtype, device=acc.device))
    if extra is not None:
        acc += extra.to(acc.dtype)
    return acc.to(x.dtype)


def dw_backward_weight(dd: torch.Tensor, x: torch.Tensor, spec: Spec, stride: int) -> torch.Tensor:
    """dL/dw packed flat as w, float32 (float64 for float64 inputs)."""
    n, c, h, wd = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    r = torch.relu(x).to(dtype)
    out = []
    for j, (k, dil) in enumerate(spec):
        g = dd[:, j * c:(j + 1) * c].to(dtype)
        gw = torch.nn.grad.conv2d_weight(r, (c, 1, k, k), g, stride=stride, padding=dil * (k - 1) // 2,
                                         dilation=dil, groups=c)
        out.append(gw.reshape(-1))
    return torch.cat(out)


def max_pool3(x: torch.Tensor, stride: int) -> torch.Tensor:
    """F.max_pool2d(x, 3, stride, padding=1), same values, as maxima of shifted strided views:
    (N, C, H, W) -> (N, C, Ho, Wo).  On CPU this is ~10x faster than aten's max_pool2d
    at the supernet's shapes, which matters as the fused path recomputes pools in backward."""
    ho, wo = out_size(x.shape[2], stride), out_size(x.shape[3], stride)
    xp = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    span_w, span_h = stride * (wo - 1) + 1, stride * (ho - 1) + 1
    cols = torch.maximum(torch.maximum(xp[..., 0:span_w:stride], xp[..., 1:1 + span_w:stride]),
                         xp[..., 2:2 + span_w:stride])
    return torch.maximum(torch.maximum(cols[..., 0:span_h:stride, :], cols[..., 1:1 + span_h:stride, :]),
                         cols[..., 2:2 + span_h:stride, :])


def _pools(x: torch.Tensor, stride: int, flags) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Pool values (no gradient path: pool_skip_backward differentiates F.max_pool2d for its tie rule)."""
    has_max, has_avg, _ = flags
    mx = max_pool3(x, stride) if has_max else None
    av = F.avg_pool2d(x, 3, stride=stride, padding=1, count_include_pad=False) if has_avg else None
    return mx, av


def _zhat(z, mean, invstd):
    return (z.to(mean.dtype) - mean.view(1, -1, 1, 1)) * invstd.view(1, -1, 1, 1)


def _coef_cols(coef: torch.Tensor, dtype) -> torch.Tensor:
    """coef (G, 4) or (4,) -> (4, 1, G, 1, 1, 1): row i broadcasts over (N, G, C, Ho, Wo)."""
    c = coef.reshape(-1, 4).to(dtype)
    return c.t().reshape(4, 1, c.shape[0], 1, 1, 1)


def combine_forward(z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor, coef: torch.Tensor,
                    stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """y = P_lin * BN(z) + p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x, (N, G*C, Ho, Wo)."""
    n, c, h, wd = x.shape
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    cf = _coef_cols(coef, acc_dtype)
    g = cf.shape[2]
    ho, wo = out_size(h, stride), out_size(wd, stride)
    y = x.new_zeros((n, g, c, ho, wo), dtype=acc_dtype)
    if z is not None:
        y += cf[0] * _zhat(z, mean, invstd).to(acc_dtype).view(n, g, c, ho, wo)
    mx, av = _pools(x.to(acc_dtype), stride, flags)
    if mx is not None:
        y += cf[1] * mx.unsqueeze(1)
    if av is not None:
        y += cf[2] * av.unsqueeze(1)
    if flags[2]:
        y += cf[3] * x.to(acc_dtype).unsqueeze(1)
    return y.view(n, g * c, ho, wo).to(x.dtype)


def combine_reduce(g: torch.Tensor, z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor,
                   stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """Per-channel sums (G*C, 5): [sum g, sum g*zhat, sum g*maxpool(x), sum g*avgpool(x), sum g*x]."""
    n, c = x.shape[:2]
    groups = g.shape[1] // c
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    g5 = g.to(acc_dtype).view(n, groups, c, g.shape[2], g.shape[3])
    out = torch.zeros(groups, c, 5, dtype=acc_dtype, device=x.device)
    dims = (0, 3, 4)
    if z is not None:
        out[..., 0] = g5.sum(dims)
        out[..., 1] = (g5 * _zhat(z, mean, invstd).to(acc_dtype).view(g5.shape)).sum(dims)
    mx, av = _pools(x.to(acc_dtype), stride, flags)
    if mx is not None:
        out[..., 2] = (g5 * mx.unsqueeze(1)).sum(dims)
    if av is not None:
        out[..., 3] = (g5 * av.unsqueeze(1)).sum(dims)
    if flags[2]:
        out[..., 4] = (g5 * x.to(acc_dtype).unsqueeze(1)).sum(dims)
    return out.view(groups * c, 5)


def bn_backward(g: torch.Tensor, z: torch.Tensor, mean, invstd, sums: torch.Tensor, coef: torch.Tensor,
                batch_stats: bool) -> torch.Tensor:
    """dL/dz of y = a * (z - mean) * invstd, a = coef[e, 0] on edge e's channels; batch statistics
    add the mean/variance terms: dz = a*invstd*(g - sum_g/M - zhat*sum_gzhat/M), M = N*Ho*Wo."""
    acc_dtype = sums.dtype
    cf = _coef_cols(coef, acc_dtype)
    n, gc, h, w = z.shape
    shape5 = (n, cf.shape[2], gc // cf.shape[2], h, w)
    a = cf[0]
    inv = invstd.to(acc_dtype).view(1, -1, 1, 1)
    g = g.to(acc_dtype)
    if batch_stats:
        m = z.numel() // gc
        zh = _zhat(z, mean, invstd).to(acc_dtype)
        g = g - (sums[:, 0] / m).view(1, -1, 1, 1) - zh * (sums[:, 1] / m).view(1, -1, 1, 1)
    return (a * (inv * g).view(shape5)).view(z.shape).to(z.dtype)


def pool_skip_backward(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, stride: int,
                       flags: Sequence[bool]) -> torch.Tensor:
    """dL/dx of sum_e [p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x] over the G edges of
    g (N, G*C, Ho, Wo): (N, C, H, W).

    Max-pool ties go to the first maximum of the window in row-major order, as in PyTorch.
    """
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.enable_grad():
        xr = x.detach().to(acc_dtype).requires_grad_(True)
        cf = _coef_cols(coef.detach(), acc_dtype)
        out = 0
        has_max, has_avg, _ = flags
        mx = F.max_pool2d(xr, 3, stride=stride, padding=1) if has_max else None   # ties: first maximum
        av = F.avg_pool2d(xr, 3, stride=stride, padding=1, count_include_pad=False) if has_avg else None
        if mx is not None:
            out = out + cf[1] * mx.unsqueeze(1)
        if av is not None:
            out = out + cf[2] * av.unsqueeze(1)
        if flags[2]:
            out = out + cf[3] * xr.unsqueeze(1)
        n, c = x.shape[:2]
        dx, = torch.autograd.grad(out, xr, g.to(acc_dtype).view(n, -1, c, g.shape[2], g.shape[3]))
    return dx.to(x.dtype)
