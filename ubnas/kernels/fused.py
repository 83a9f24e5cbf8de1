"""The fused mixed edge: weight composition (autograd) + one custom autograd.Function.

For an edge with probabilities p (n_ops,) and input x (N, C, H, W):

    y = P_lin * BN(z) + p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x
    z = conv(relu(x), W_super) + PW_cat @ dwstack(relu(x))

* ``W_super`` (C, C, S, S): sum_k p_k pad(W_k) over the full convs (S = largest
  extent), plus, when ``fold`` is on, every separable op whose dilated extent
  fits in S, as the rank-structured kernel p_k * PW_k[o, i] * dilate(dw_k)[i]:
  exact, and free in FLOPs since the S x S conv runs anyway.
* ``dwstack`` (N, NK*C, Ho, Wo): the remaining separable ops' depthwise convs
  in one multi-kernel pass; ``PW_cat`` (C, NK*C) = [p_1 PW_1 | p_2 PW_2 | ...].
* ``coef`` (4,) = [P_lin, p_max, p_avg, p_skip].

W_super, the packed depthwise weights, PW_cat and coef are built from the
parameters and p with ordinary (weight-sized) torch ops, so autograd applies the
chain rule to p and every weight; ``FusedEdge`` returns dL/dx and the gradients
of those four tensors.  It saves x, z and the (C,) BN statistics only; relu(x)
and dwstack are recomputed in backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .reference import out_size

FOLD_SEPARABLE = True


@dataclass(frozen=True)
class EdgeCfg:
    stride: int
    size: int                       # superkernel size S (0: no full conv)
    spec: Tuple[Tuple[int, int], ...]  # (k, dilation) of the depthwise ops
    kk: int                         # packed taps per depthwise kernel
    flags: Tuple[bool, bool, bool]  # has_max, has_avg, has_skip
    compute_dtype: torch.dtype


def _dilate(w: torch.Tensor, dil: int) -> torch.Tensor:
    if dil == 1:
        return w
    k = w.shape[-1]
    e = dil * (k - 1) + 1
    out = w.new_zeros(*w.shape[:-2], e, e)
    out[..., ::dil, ::dil] = w
    return out


def _pad_to(w: torch.Tensor, size: int) -> torch.Tensor:
    p = (size - w.shape[-1]) // 2
    return F.pad(w, [p] * 4) if p else w


def compose(edge, probs: torch.Tensor, fold: bool):
    """Weights of the fused form: (w_full, w_dw, w_pw, coef, size, spec, kk, flags)."""
    full, sep = [], []
    coef = [None, None, None, None]
    for k, (name, d) in enumerate(zip(edge.op_names, edge.defs)):
        if d.family == "linear":
            (sep if d.separable else full).append((k, d, edge.branches[name]))
            coef[0] = probs[k] if coef[0] is None else coef[0] + probs[k]
        elif d.family == "pool":
            coef[1 if d.pool == "max" else 2] = probs[k]
        elif d.family == "skip":
            coef[3] = probs[k]
    extent = lambda d: d.dilation * (d.kernel - 1) + 1  # noqa: E731
    size = max((extent(d) for _, d, _ in full), default=0)
    folded = [s for s in sep if fold and size and extent(s[1]) <= size]
    dws = [s for s in sep if s not in folded]
    w_full = None
    for k, d, br in full:
        term = probs[k] * _pad_to(_dilate(br.weight, d.dilation), size)
        w_full = term if w_full is None else w_full + term
    for k, d, br in folded:
        eff = br.pw_weight * _dilate(br.dw_weight, d.dilation).transpose(0, 1)  # (C, C, e, e)
        w_full = w_full + probs[k] * _pad_to(eff, size)
    w_dw = w_pw = None
    spec = tuple((d.kernel, d.dilation) for _, d, _ in dws)
    kk = max((k * k for k, _ in spec), default=0)
    if dws:
        c = dws[0][2].dw_weight.shape[0]
        w_dw = torch.stack([F.pad(br.dw_weight.reshape(c, -1), (0, kk - d.kernel ** 2)) for _, d, br in dws])
        w_pw = torch.cat([probs[k] * br.pw_weight.reshape(br.pw_weight.shape[0], c) for k, _, br in dws], 1)
    zero = probs.new_zeros(())
    coef_t = torch.stack([zero if v is None else v for v in coef]).to(torch.promote_types(probs.dtype, torch.float32))
    flags = (coef[1] is not None, coef[2] is not None, coef[3] is not None)
    return w_full, w_dw, w_pw, coef_t, size, spec, kk, flags


def _bn_stats(bn, z: torch.Tensor):
    """(mean, invstd, batch_stats) as float32 (C,), updating running stats exactly as F.batch_norm."""
    batch = bn.training or bn.running_mean is None
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    if not batch:
        return bn.running_mean.to(acc), torch.rsqrt(bn.running_var.to(acc) + bn.eps), False
    var, mean = torch.var_mean(z.to(acc), dim=(0, 2, 3), unbiased=False)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            m = z.numel() // z.shape[1]
            bn.running_mean.mul_(1 - f).add_(mean.to(bn.running_mean.dtype), alpha=f)
            bn.running_var.mul_(1 - f).add_((var * (m / max(m - 1, 1))).to(bn.running_var.dtype), alpha=f)
    return mean, torch.rsqrt(var + bn.eps), True


class FusedEdge(torch.autograd.Function):
    """y = fused edge(x); K is the kernel backend module (reference or triton_kernels)."""

    @staticmethod
    def forward(ctx, x, w_full, w_dw, w_pw, coef, cfg: EdgeCfg, bn, K):
        x = x.contiguous()
        s, cd = cfg.stride, cfg.compute_dtype
        with torch.autocast(x.device.type, enabled=False):
            z = mean = invstd = None
            batch = False
            if w_full is not None:
                z = F.conv2d(torch.relu(x).to(cd), w_full.to(cd), stride=s, padding=cfg.size // 2)
            if w_dw is not None:
                d = K.dw_forward(x, w_dw, cfg.spec, s, cd)
                zz = F.conv2d(d, w_pw.to(cd)[:, :, None, None])
                del d
                z = zz if z is None else z.add_(zz)
            if z is not None:
                mean, invstd, batch = _bn_stats(bn, z)
            y = K.combine_forward(z, mean, invstd, x, coef, s, cfg.flags)
        ctx.cfg, ctx.K, ctx.batch = cfg, K, batch
        ctx.save_for_backward(x, w_full, w_dw, w_pw, coef, z, mean, invstd)
        return y

    @staticmethod
    def backward(ctx, g):
        x, w_full, w_dw, w_pw, coef, z, mean, invstd = ctx.saved_tensors
        cfg, K = ctx.cfg, ctx.K
        s, cd = cfg.stride, cfg.compute_dtype
        g = g.contiguous()
        d_full = d_dw = d_pw = None
        with torch.autocast(x.device.type, enabled=False):
            sums = K.combine_reduce(g, z, mean, invstd, x, s, cfg.flags)
            d_coef = sums[:, 1:].sum(0).to(coef.dtype)
            extra = K.pool_skip_backward(g, x, coef, s, cfg.flags) if any(cfg.flags) else None
            if z is None:
                dx = extra if extra is not None else torch.zeros_like(x)
                return dx, None, None, None, d_coef, None, None, None
            dz = K.bn_backward(g, z, mean, invstd, sums, coef, ctx.batch)
            lin = None
            if w_full is not None:
                p = cfg.size // 2
                lin, d_full, _ = torch.ops.aten.convolution_backward(
                    dz, torch.relu(x).to(cd), w_full.to(cd), None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                    [True, True, False])
                d_full = d_full.to(w_full.dtype)
            if w_dw is not None:
                d = K.dw_forward(x, w_dw, cfg.spec, s, cd)
                dd, d_pw, _ = torch.ops.aten.convolution_backward(
                    dz, d, w_pw.to(cd)[:, :, None, None], None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                    [True, True, False])
                del d
                d_pw = d_pw.reshape(w_pw.shape).to(w_pw.dtype)
                d_dw = K.dw_backward_weight(dd, x, cfg.spec, s, cfg.kk).to(w_dw.dtype)
                dx = K.dw_backward_input(dd, x, w_dw, cfg.spec, s, lin=lin, extra=extra)
            else:
                dx = torch.where(x > 0, lin.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
                if extra is not None:
                    dx = dx + extra
        return dx, d_full, d_dw, d_pw, d_coef, None, None, None


def fused_mixed_edge(edge, x: torch.Tensor, probs: torch.Tensor, K, fold: Optional[bool] = None) -> torch.Tensor:
    """The edge's output (N, C, Ho, Wo) through backend K (see module docstring)."""
    fold = FOLD_SEPARABLE if fold is None else fold
    w_full, w_dw, w_pw, coef, size, spec, kk, flags = compose(edge, probs, fold)
    s = edge.stride
    if w_full is None and w_dw is None and not any(flags):   # only 'none'
        return x.new_zeros(x.shape[0], x.shape[1], out_size(x.shape[2], s), out_size(x.shape[3], s))
    dev = x.device.type
    cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    cfg = EdgeCfg(s, size, spec, kk, flags, cd)
    return FusedEdge.apply(x, w_full, w_dw, w_pw, coef, cfg, edge.bn, K)
