"""The fused mixed edge: one custom autograd.Function from (x, probs, raw weights) to y.

For an edge with probabilities p (n_ops,) and input x (N, C, H, W):

    y = P_lin * BN(z) + p_max * maxpool(x) + p_avg * avgpool(x) + p_skip * x
    z = conv(relu(x), W_super) + PW_cat @ dwstack(relu(x))

* ``W_super`` (C, C, S, S): sum_k p_k pad(W_k) over the full convs (S = largest
  extent), plus, when ``fold`` is on, every separable op whose dilated extent
  fits in S, as the rank-structured kernel p_k * PW_k[o, i] * dilate(dw_k)[i]:
  exact, and free in FLOPs since the S x S conv runs anyway.
* ``dwstack`` (N, NK*C, Ho, Wo): the remaining separable ops' depthwise convs
  in one multi-kernel pass; ``PW_cat`` (C, NK*C) = [p_1 PW_1 | p_2 PW_2 | ...].
* ``coef`` (4,) = M @ p = [P_lin, p_max, p_avg, p_skip], M a fixed 0/1 matrix.

``FusedEdge`` composes these weight-sized tensors itself and, in backward, maps
the gradients of W_super, the packed depthwise weights, PW_cat and coef back to
every raw weight and to p in closed form.  The search is bound by host-side
launches on the DARTS space (NOTES.md), and leaving the composition to autograd
cost ~90 dispatched ops per edge and step; the closed form needs about a third.
It saves x, z, the (C,) BN statistics and weight-sized tensors only; relu(x)
and dwstack are recomputed in backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from .reference import out_size

FOLD_SEPARABLE = True


@dataclass(frozen=True)
class Term:
    """A linear op of the edge: index ``k`` in the op list, its branch name, kernel size and dilation."""

    k: int
    name: str
    kernel: int
    dilation: int

    @property
    def extent(self) -> int:
        return self.dilation * (self.kernel - 1) + 1


@dataclass(frozen=True)
class EdgePlan:
    """The fused form of an op list: fixed for an edge, whatever its channel count or device."""

    n_ops: int
    full: Tuple[Term, ...]                 # full convs, summed into W_super
    folded: Tuple[Term, ...]               # separable ops folded into W_super
    dws: Tuple[Term, ...]                  # separable ops of the multi-kernel depthwise pass
    size: int                              # superkernel size S (0: no full conv)
    coef_ops: Tuple[Tuple[int, ...], ...]  # op indices summed into each coef entry

    # derived, cached: read on every forward and backward of a launch-bound step
    @cached_property
    def flags(self) -> Tuple[bool, bool, bool]:
        """(has_max, has_avg, has_skip)."""
        return tuple(bool(ops) for ops in self.coef_ops[1:])

    @cached_property
    def spec(self) -> Tuple[Tuple[int, int], ...]:
        return tuple((t.kernel, t.dilation) for t in self.dws)

    @cached_property
    def kk(self) -> int:
        return max((t.kernel ** 2 for t in self.dws), default=0)

    @cached_property
    def dw_ops(self) -> Tuple[int, ...]:
        """Op indices of the depthwise-pass terms."""
        return tuple(t.k for t in self.dws)

    def weights(self, edge) -> List[torch.Tensor]:
        """The raw parameters in the order FusedEdge takes them: W per full conv, then (dw, pw) per separable op."""
        out = [edge.branches[t.name].weight for t in self.full]
        for t in self.folded + self.dws:
            br = edge.branches[t.name]
            out += [br.dw_weight, br.pw_weight]
        return out


def edge_plan(edge, fold: bool) -> EdgePlan:
    """The (cached) plan of a MixedEdge."""
    cache = edge.__dict__.setdefault("_fused_plans", {})
    if fold not in cache:
        full, sep, coef = [], [], ([], [], [], [])
        for k, (name, d) in enumerate(zip(edge.op_names, edge.defs)):
            if d.family == "linear":
                (sep if d.separable else full).append(Term(k, name, d.kernel, d.dilation))
                coef[0].append(k)
            elif d.family == "pool":
                coef[1 if d.pool == "max" else 2].append(k)
            elif d.family == "skip":
                coef[3].append(k)
        size = max((t.extent for t in full), default=0)
        folded = tuple(t for t in sep if fold and size and t.extent <= size)
        dws = tuple(t for t in sep if t not in folded)
        cache[fold] = EdgePlan(len(edge.op_names), tuple(full), folded, dws, size, tuple(tuple(c) for c in coef))
    return cache[fold]


@lru_cache(maxsize=None)
def _coef_matrix(coef_ops, n_ops: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """M (4, n_ops) with coef = M @ p."""
    m = torch.zeros(len(coef_ops), n_ops, dtype=dtype)
    for row, ops in enumerate(coef_ops):
        m[row, list(ops)] = 1
    return m.to(device)


@lru_cache(maxsize=None)
def _index(ks: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(ks, dtype=torch.long, device=device)


def _coef_grad(plan: EdgePlan, d_coef: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """dL/dp through coef = M @ p: M^T d_coef, (n_ops,) in probs' dtype."""
    m = _coef_matrix(plan.coef_ops, plan.n_ops, probs.device, d_coef.dtype)
    return torch.mv(m.t(), d_coef).to(probs.dtype)


def _window(w: torch.Tensor, t: Term, size: int) -> torch.Tensor:
    """The (.., k, k) view of a (.., S, S) superkernel where term t's (dilated, centred) taps sit."""
    o = (size - t.extent) // 2
    return w[..., o:o + t.extent:t.dilation, o:o + t.extent:t.dilation]


def _split(plan: EdgePlan, weights):
    it = iter(weights)
    full = [next(it) for _ in plan.full]
    folded = [(next(it), next(it)) for _ in plan.folded]
    dws = [(next(it), next(it)) for _ in plan.dws]
    return full, folded, dws


def compose(plan: EdgePlan, probs: torch.Tensor, weights):
    """Weights of the fused form from the raw ones (no autograd): (w_full, w_dw, w_pw, pw_cat, p_dw, coef).

    w_full (C, C, S, S) or None; w_dw (NK, C, KK), w_pw (C, NK*C), pw_cat (C, NK*C) unscaled,
    p_dw (NK,) or None; coef (4,).
    """
    p = probs
    full, folded, dws = _split(plan, weights)
    w_full = w_dw = w_pw = pw_cat = p_dw = None
    if plan.size:
        w_full = full[0].new_zeros(*full[0].shape[:2], plan.size, plan.size)
        for t, w in zip(plan.full, full):
            _window(w_full, t, plan.size).add_(w * p[t.k])
        for t, (dw, pw) in zip(plan.folded, folded):   # p_k * PW[o, i] * dw[i]: rank-structured kernel
            c_out, c = pw.shape[:2]
            _window(w_full, t, plan.size).addcmul_(pw.view(c_out, c, 1, 1) * p[t.k], dw.view(1, c, t.kernel, t.kernel))
    if plan.dws:
        c, nk, kk = dws[0][0].shape[0], len(dws), plan.kk
        c_out = dws[0][1].shape[0]
        w_dw = dws[0][0].new_zeros(nk, c, kk)
        for j, (t, (dw, _)) in enumerate(zip(plan.dws, dws)):
            w_dw[j, :, :t.kernel ** 2] = dw.view(c, -1)
        pw_cat = torch.cat([pw.view(c_out, c) for _, pw in dws], 1)
        p_dw = p.index_select(0, _index(plan.dw_ops, p.device))
        w_pw = (pw_cat.view(c_out, nk, c) * p_dw.view(1, nk, 1)).view(c_out, nk * c)
    acc = torch.float64 if p.dtype == torch.float64 else torch.float32
    coef = torch.mv(_coef_matrix(plan.coef_ops, plan.n_ops, p.device, acc), p.to(acc))
    return w_full, w_dw, w_pw, pw_cat, p_dw, coef


def weight_grads(plan: EdgePlan, probs, weights, pw_cat, p_dw, d_full, d_dw, d_pw, d_coef,
                 need_probs: bool) -> Tuple[Optional[torch.Tensor], List[torch.Tensor]]:
    """The chain rule through ``compose``: (dL/dprobs or None, [dL/dw for w in weights])."""
    p = probs
    full, folded, dws = _split(plan, weights)
    grads: List[torch.Tensor] = []
    dp, dp_ops = [], []
    for t, w in zip(plan.full, full):
        r = _window(d_full, t, plan.size)
        grads.append((r * p[t.k]).to(w.dtype))
        if need_probs:
            dp.append((r * w).sum())
            dp_ops.append(t.k)
    for t, (dw, pw) in zip(plan.folded, folded):
        c_out, c = pw.shape[:2]
        r = _window(d_full, t, plan.size)                            # dL/d(p_k * PW * dw), (C, C, k, k)
        r_dw = (r * dw.view(1, c, t.kernel, t.kernel)).sum((2, 3))   # (C, C)
        grads.append((r * (pw.view(c_out, c, 1, 1) * p[t.k])).sum(0).view(dw.shape).to(dw.dtype))
        grads.append((r_dw * p[t.k]).view(pw.shape).to(pw.dtype))
        if need_probs:
            dp.append((r_dw * pw.view(c_out, c)).sum())
            dp_ops.append(t.k)
    d_probs = None
    if need_probs:
        d_probs = _coef_grad(plan, d_coef, p)
        if dp:
            d_probs.index_add_(0, _index(tuple(dp_ops), p.device), torch.stack(dp).to(p.dtype))
    if plan.dws:
        nk = len(dws)
        c, c_out = dws[0][0].shape[0], dws[0][1].shape[0]
        d_pw3 = d_pw.view(c_out, nk, c)
        d_pw_raw = (d_pw3 * p_dw.view(1, nk, 1)).transpose(0, 1).contiguous()   # (NK, C_out, C)
        for j, (t, (dw, pw)) in enumerate(zip(plan.dws, dws)):
            grads.append(d_dw[j, :, :t.kernel ** 2].reshape(dw.shape).to(dw.dtype))
            grads.append(d_pw_raw[j].view(pw.shape).to(pw.dtype))
        if need_probs:
            dp_dw = (d_pw3 * pw_cat.view(c_out, nk, c)).sum((0, 2))
            d_probs.index_add_(0, _index(plan.dw_ops, p.device), dp_dw.to(p.dtype))
    return d_probs, grads


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
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), f)
            bn.running_var.lerp_((var * (m / max(m - 1, 1))).to(bn.running_var.dtype), f)
    return mean, torch.rsqrt(var + bn.eps), True


class FusedEdge(torch.autograd.Function):
    """y = fused edge(x); K is the kernel backend module (reference or triton_kernels)."""

    @staticmethod
    def forward(ctx, x, probs, plan: EdgePlan, stride: int, cd: torch.dtype, bn, K, *weights):
        x = x.contiguous()
        s, spec = stride, plan.spec
        with torch.autocast(x.device.type, enabled=False):   # compose, BN stats and coef stay in fp32
            w_full, w_dw, w_pw, pw_cat, p_dw, coef = compose(plan, probs, weights)
            z = mean = invstd = None
            batch = False
            if w_full is not None:
                z = F.conv2d(torch.relu(x).to(cd), w_full.to(cd), stride=s, padding=plan.size // 2)
            if w_dw is not None:
                d = K.dw_forward(x, w_dw, spec, s, cd)
                zz = F.conv2d(d, w_pw.to(cd)[:, :, None, None])
                del d
                z = zz if z is None else z.add_(zz)
            if z is not None:
                mean, invstd, batch = _bn_stats(bn, z)
            y = K.combine_forward(z, mean, invstd, x, coef, s, plan.flags)
        ctx.plan, ctx.stride, ctx.cd, ctx.K, ctx.batch = plan, stride, cd, K, batch
        ctx.save_for_backward(x, probs, w_full, w_dw, w_pw, pw_cat, p_dw, coef, z, mean, invstd, *weights)
        return y

    @staticmethod
    def backward(ctx, g):
        x, probs, w_full, w_dw, w_pw, pw_cat, p_dw, coef, z, mean, invstd, *weights = ctx.saved_tensors
        plan, s, cd, K = ctx.plan, ctx.stride, ctx.cd, ctx.K
        need_probs = ctx.needs_input_grad[1]
        need_w = need_probs or any(ctx.needs_input_grad[7:])
        g = g.contiguous()
        d_full = d_dw = d_pw = None
        with torch.autocast(x.device.type, enabled=False):
            sums = K.combine_reduce(g, z, mean, invstd, x, s, plan.flags)
            d_coef = sums[:, 1:].sum(0).to(coef.dtype)
            extra = K.pool_skip_backward(g, x, coef, s, plan.flags) if any(plan.flags) else None
            if z is None:
                dx = extra if extra is not None else torch.zeros_like(x)
            else:
                dz = K.bn_backward(g, z, mean, invstd, sums, coef, ctx.batch)
                lin = None
                if w_full is not None:
                    p = plan.size // 2
                    lin, d_full, _ = torch.ops.aten.convolution_backward(
                        dz, torch.relu(x).to(cd), w_full.to(cd), None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                        [True, need_w, False])
                if w_dw is not None:
                    d = K.dw_forward(x, w_dw, plan.spec, s, cd)
                    dd, d_pw, _ = torch.ops.aten.convolution_backward(
                        dz, d, w_pw.to(cd)[:, :, None, None], None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                        [True, need_w, False])
                    del d
                    if need_w:
                        d_pw = d_pw.view(w_pw.shape).to(w_pw.dtype)
                        d_dw = K.dw_backward_weight(dd, x, plan.spec, s, plan.kk).to(w_dw.dtype)
                    dx = K.dw_backward_input(dd, x, w_dw, plan.spec, s, lin=lin, extra=extra)
                else:
                    dx = torch.where(x > 0, lin.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
                    if extra is not None:
                        dx = dx + extra
            if d_full is not None:
                d_full = d_full.to(w_full.dtype)
            if need_w and z is not None:
                d_probs, grads = weight_grads(plan, probs, weights, pw_cat, p_dw, d_full, d_dw, d_pw, d_coef,
                                              need_probs)
            else:
                d_probs, grads = None, [None] * len(weights)
                if need_probs:   # no linear op: only the pool/skip/none coefficients
                    d_probs = _coef_grad(plan, d_coef, probs)
        return (dx, d_probs, None, None, None, None, None, *grads)


def fused_mixed_edge(edge, x: torch.Tensor, probs: torch.Tensor, K, fold: Optional[bool] = None) -> torch.Tensor:
    """The edge's output (N, C, Ho, Wo) through backend K (see module docstring)."""
    plan = edge_plan(edge, FOLD_SEPARABLE if fold is None else fold)
    s = edge.stride
    if not plan.size and not plan.dws and not any(plan.flags):   # only 'none'
        return x.new_zeros(x.shape[0], x.shape[1], out_size(x.shape[2], s), out_size(x.shape[3], s))
    dev = x.device.type
    cd = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    return FusedEdge.apply(x, probs, plan, s, cd, edge.bn, K, *plan.weights(edge))
