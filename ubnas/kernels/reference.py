"""PyTorch reference of the fused mixed-edge primitives (same signatures as ``triton_kernels``).

Shapes (NCHW, contiguous): x (N, C, H, W) is the edge input; outputs are
(N, C, Ho, Wo) with Ho = (H - 1) // stride + 1 (every op pads to "same").

* ``spec``: the depthwise kernels of the separable family, a tuple of
  (k, dilation) pairs, one per op; ``w`` packs their weights as (NK, C, KK),
  op j's k*k taps row-major in ``w[j, :, :k*k]`` (KK = largest k*k, rest unused).
* ``d`` = stacked depthwise outputs (N, NK*C, Ho, Wo): channel j*C + c holds
  op j's depthwise conv of relu(x) channel c.
* ``z`` = pre-BN linear sum (N, C, Ho, Wo); ``mean``/``invstd`` (C,) float32 its
  BN statistics; ``coef`` (4,) = [P_lin, p_max, p_avg, p_skip] (0 where absent).
* ``flags`` = (has_max, has_avg, has_skip); skip only exists at stride 1.

Every function computes in the dtype of its inputs (float64 in the tests), so
this module is both the CPU fallback and the float64 reference.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Spec = Tuple[Tuple[int, int], ...]


def out_size(h: int, stride: int) -> int:
    return (h - 1) // stride + 1


def _dw_weight(w: torch.Tensor, j: int, k: int, dtype) -> torch.Tensor:
    return w[j, :, :k * k].reshape(-1, 1, k, k).to(dtype)


def dw_forward(x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
               out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Multi-kernel depthwise conv of relu(x): (N, C, H, W) -> (N, NK*C, Ho, Wo)."""
    dtype = out_dtype or x.dtype
    r = torch.relu(x).to(dtype)
    c = x.shape[1]
    outs = [F.conv2d(r, _dw_weight(w, j, k, dtype), stride=stride, padding=dil * (k - 1) // 2,
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
        acc += torch.nn.grad.conv2d_input((n, c, h, wd), _dw_weight(w, j, k, acc.dtype), g, stride=stride,
                                          padding=dil * (k - 1) // 2, dilation=dil, groups=c)
    if lin is not None:
        acc += lin.to(acc.dtype)
    acc = torch.where(x > 0, acc, torch.zeros((), dtype=acc.dtype, device=acc.device))
    if extra is not None:
        acc += extra.to(acc.dtype)
    return acc.to(x.dtype)


def dw_backward_weight(dd: torch.Tensor, x: torch.Tensor, spec: Spec, stride: int, kk: int) -> torch.Tensor:
    """dL/dw packed as (NK, C, kk) float32 (float64 for float64 inputs)."""
    n, c, h, wd = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    r = torch.relu(x).to(dtype)
    out = torch.zeros(len(spec), c, kk, dtype=dtype, device=x.device)
    for j, (k, dil) in enumerate(spec):
        g = dd[:, j * c:(j + 1) * c].to(dtype)
        gw = torch.nn.grad.conv2d_weight(r, (c, 1, k, k), g, stride=stride, padding=dil * (k - 1) // 2,
                                         dilation=dil, groups=c)
        out[j, :, :k * k] = gw.reshape(c, k * k)
    return out


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


def combine_forward(z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor, coef: torch.Tensor,
                    stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """y = P_lin * BN(z) + p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x, (N, C, Ho, Wo)."""
    n, c, h, wd = x.shape
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.new_zeros((n, c, out_size(h, stride), out_size(wd, stride)), dtype=acc_dtype)
    coef = coef.to(acc_dtype)
    if z is not None:
        y += coef[0] * _zhat(z, mean, invstd).to(acc_dtype)
    mx, av = _pools(x.to(acc_dtype), stride, flags)
    if mx is not None:
        y += coef[1] * mx
    if av is not None:
        y += coef[2] * av
    if flags[2]:
        y += coef[3] * x.to(acc_dtype)
    return y.to(x.dtype)


def combine_reduce(g: torch.Tensor, z: Optional[torch.Tensor], mean, invstd, x: torch.Tensor,
                   stride: int, flags: Sequence[bool]) -> torch.Tensor:
    """Per-channel sums (C, 5): [sum g, sum g*zhat, sum g*maxpool(x), sum g*avgpool(x), sum g*x]."""
    c = x.shape[1]
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    g = g.to(acc_dtype)
    out = torch.zeros(c, 5, dtype=acc_dtype, device=x.device)
    dims = (0, 2, 3)
    if z is not None:
        out[:, 0] = g.sum(dims)
        out[:, 1] = (g * _zhat(z, mean, invstd).to(acc_dtype)).sum(dims)
    mx, av = _pools(x.to(acc_dtype), stride, flags)
    if mx is not None:
        out[:, 2] = (g * mx).sum(dims)
    if av is not None:
        out[:, 3] = (g * av).sum(dims)
    if flags[2]:
        out[:, 4] = (g * x.to(acc_dtype)).sum(dims)
    return out


def bn_backward(g: torch.Tensor, z: torch.Tensor, mean, invstd, sums: torch.Tensor, coef: torch.Tensor,
                batch_stats: bool) -> torch.Tensor:
    """dL/dz of y = a * (z - mean) * invstd, a = coef[0]; batch statistics add the
    mean/variance terms: dz = a*invstd*(g - sum_g/M - zhat*sum_gzhat/M), M = N*Ho*Wo."""
    acc_dtype = sums.dtype
    a = coef[0].to(acc_dtype)
    inv = invstd.to(acc_dtype).view(1, -1, 1, 1)
    g = g.to(acc_dtype)
    if not batch_stats:
        return (a * inv * g).to(z.dtype)
    m = z.numel() // z.shape[1]
    zh = _zhat(z, mean, invstd).to(acc_dtype)
    dz = a * inv * (g - (sums[:, 0] / m).view(1, -1, 1, 1) - zh * (sums[:, 1] / m).view(1, -1, 1, 1))
    return dz.to(z.dtype)


def pool_skip_backward(g: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, stride: int,
                       flags: Sequence[bool]) -> torch.Tensor:
    """dL/dx of p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x, (N, C, H, W).

    Max-pool ties go to the first maximum of the window in row-major order, as in PyTorch.
    """
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.enable_grad():
        xr = x.detach().to(acc_dtype).requires_grad_(True)
        coef = coef.detach().to(acc_dtype)
        out = 0
        has_max, has_avg, _ = flags
        mx = F.max_pool2d(xr, 3, stride=stride, padding=1) if has_max else None   # ties: first maximum
        av = F.avg_pool2d(xr, 3, stride=stride, padding=1, count_include_pad=False) if has_avg else None
        if mx is not None:
            out = out + coef[1] * mx
        if av is not None:
            out = out + coef[2] * av
        if flags[2]:
            out = out + coef[3] * xr
        dx, = torch.autograd.grad(out, xr, g.to(acc_dtype))
    return dx.to(x.dtype)
