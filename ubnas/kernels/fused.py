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
* ``coef`` = M @ p = [P_lin, p_max, p_avg, p_skip], M (4, n_ops) a fixed 0/1 matrix; for a group
  of G edges (below) p is (G, n_ops) and coef (G, 4), one row per edge.

``FusedEdge`` composes these weight-sized tensors itself and, in backward, maps
the gradients of W_super, the packed depthwise weights, PW_cat and coef back to
every raw weight and to p in closed form.  The search is bound by host-side
launches on the DARTS space (NOTES.md), and leaving the composition to autograd
cost ~90 dispatched ops per edge and step; the closed form needs about a third.
It saves x, z, the (C,) BN statistics and weight-sized tensors only; relu(x)
and dwstack are recomputed in backward when a weight or p gradient is asked for,
and backward computes only the gradients asked for (``needs_input_grad``).

One call serves a group of G edges that read the same x (the edges leaving a
cell state, up to 4 in a DARTS cell): the superkernels are stacked along the
output channels (one conv), the pointwise convs run as one grouped conv, the
depthwise pass takes the G edges' kernels at once and the pools are evaluated
once.  The group's launches are those of one edge.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .reference import dw_offsets, out_size

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
    """dL/dp through coef = p @ M^T: d_coef @ M, (G, n_ops) in probs' dtype."""
    m = _coef_matrix(plan.coef_ops, plan.n_ops, probs.device, d_coef.dtype)
    return torch.mm(d_coef, m).to(probs.dtype)


def _window(w: torch.Tensor, t: Term, size: int) -> torch.Tensor:
    """The (.., k, k) view of a (.., S, S) superkernel where term t's (dilated, centred) taps sit."""
    o = (size - t.extent) // 2
    return w[..., o:o + t.extent:t.dilation, o:o + t.extent:t.dilation]


def _stack(ts: List[torch.Tensor]) -> torch.Tensor:
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)


def _stacks(plan: EdgePlan, weights, upto: Optional[int] = None) -> List[torch.Tensor]:
    """The i-th raw weight of every edge of the group stacked as (G, ...), for each i < upto (default: all)."""
    nw = len(plan.full) + 2 * (len(plan.folded) + len(plan.dws))
    return [_stack(weights[i::nw]) for i in range(nw if upto is None else upto)]


def _pk(p: torch.Tensor, k: int, dims: int) -> torch.Tensor:
    """p[:, k] of the (G, n_ops) probs, shaped (G, 1, ..., 1) with ``dims`` dimensions."""
    return p[:, k].view(-1, *([1] * (dims - 1)))


def compose(plan: EdgePlan, probs: torch.Tensor, weights):
    """Weights of the fused form of G edges from their raw ones (no autograd).

    probs (G, n_ops); weights: each edge's ``plan.weights`` in turn.  Returns
    (w_full, w_dw, w_pw, pw_cat, p_dw, coef): w_full (G*C, C, S, S) or None;
    w_dw flat (the G edges' depthwise weights in spec order, see ``reference``), w_pw (G*C, NK*C),
    pw_cat (G, C, NK, C) unscaled, p_dw (G, NK)
    or None; coef (G, 4).
    """
    p, g = probs, probs.shape[0]
    nf, b = len(plan.full), len(plan.full) + 2 * len(plan.folded)
    nw = b + 2 * len(plan.dws)
    st = _stacks(plan, weights, upto=b)
    w_full = w_dw = w_pw = pw_cat = p_dw = None
    if plan.size:
        c_out, c = st[0].shape[1:3]
        w_full = st[0].new_zeros(g, c_out, c, plan.size, plan.size)
        for i, t in enumerate(plan.full):
            _window(w_full, t, plan.size).add_(st[i] * _pk(p, t.k, 5))
        for i, t in enumerate(plan.folded):   # p_k * PW[o, i] * dw[i]: rank-structured kernel
            dw, pw = st[nf + 2 * i], st[nf + 2 * i + 1]
            _window(w_full, t, plan.size).addcmul_(pw * _pk(p, t.k, 5), dw.view(g, 1, c, t.kernel, t.kernel))
        w_full = w_full.view(g * c_out, c, plan.size, plan.size)
    if plan.dws:
        nk = len(plan.dws)
        dw0, pw0 = weights[b], weights[b + 1]
        c, c_out = dw0.shape[0], pw0.shape[0]
        dws = [w.view(-1) for e in range(g) for w in weights[e * nw + b:(e + 1) * nw:2]]   # spec * G order
        w_dw = dws[0] if len(dws) == 1 else torch.cat(dws)
        pws = [w.view(c_out, c) for e in range(g) for w in weights[e * nw + b + 1:(e + 1) * nw:2]]   # (edge, op)
        if g == 1:
            pw_cat = torch.stack(pws, 1).view(1, c_out, nk, c)
        else:
            pw_cat = torch.stack(pws).view(g, nk, c_out, c).transpose(1, 2).contiguous()
        p_dw = p.index_select(1, _index(plan.dw_ops, p.device))
        w_pw = (pw_cat * p_dw.view(g, 1, nk, 1)).view(g * c_out, nk * c)
    acc = torch.float64 if p.dtype == torch.float64 else torch.float32
    coef = torch.mm(p.to(acc), _coef_matrix(plan.coef_ops, plan.n_ops, p.device, acc).t())
    return w_full, w_dw, w_pw, pw_cat, p_dw, coef


def weight_grads(plan: EdgePlan, probs, weights, pw_cat, p_dw, d_full, d_dw, d_pw, d_coef,
                 need_probs: bool, need_weights: bool = True
                 ) -> Tuple[Optional[torch.Tensor], List[Optional[torch.Tensor]]]:
    """The chain rule through ``compose``: (dL/dprobs (G, n_ops) or None, [dL/dw for w in weights]
    or Nones when not ``need_weights``; d_dw may then be None)."""
    p, g = probs, probs.shape[0]
    nf, b = len(plan.full), len(plan.full) + 2 * len(plan.folded)
    nw = b + 2 * len(plan.dws)
    st = _stacks(plan, weights, upto=b)   # the depthwise-pass terms need none: pw_cat holds their PWs
    grads: List[Optional[torch.Tensor]] = [None] * len(weights)
    dp, dp_ops = [], []

    def put(i, d):   # d (G, ...): the gradient of every edge's i-th weight
        d = d.to(weights[i].dtype).contiguous()
        for e in range(g):
            grads[e * nw + i] = d[e].view(weights[e * nw + i].shape)

    if plan.size:
        c_out, c = st[0].shape[1:3]
        d_full = d_full.view(g, c_out, c, plan.size, plan.size)
        for i, t in enumerate(plan.full):
            r = _window(d_full, t, plan.size)
            if need_weights:
                put(i, r * _pk(p, t.k, 5))
            if need_probs:
                dp.append((r * st[i]).sum((1, 2, 3, 4)))
                dp_ops.append(t.k)
        for i, t in enumerate(plan.folded):
            dw, pw = st[nf + 2 * i], st[nf + 2 * i + 1]
            r = _window(d_full, t, plan.size)                                  # dL/d(p_k PW dw), (G, C, C, k, k)
            r_dw = (r * dw.view(g, 1, c, t.kernel, t.kernel)).sum((3, 4))      # (G, C, C)
            if need_weights:
                put(nf + 2 * i, (r * (pw * _pk(p, t.k, 5))).sum(1))
                put(nf + 2 * i + 1, r_dw * _pk(p, t.k, 3))
            if need_probs:
                dp.append((r_dw * pw.view(g, c_out, c)).sum((1, 2)))
                dp_ops.append(t.k)
    d_probs = None
    if need_probs:
        d_probs = _coef_grad(plan, d_coef, p)
        if dp:
            d_probs.index_add_(1, _index(tuple(dp_ops), p.device), torch.stack(dp, 1).to(p.dtype))
    if plan.dws:
        nk, (c_out, c) = len(plan.dws), pw_cat.shape[1::2]
        d_pw4 = d_pw.view(g, c_out, nk, c)
    if plan.dws and need_weights:
        d_pw_raw = d_pw.new_empty(nk, g, c_out, c)   # written in (op, edge) order: contiguous per weight
        torch.mul(d_pw4.permute(2, 0, 1, 3), p_dw.t().reshape(nk, g, 1, 1), out=d_pw_raw)
        offs = dw_offsets(plan.spec * g, c)[0]
        for j, t in enumerate(plan.dws):
            put(b + 2 * j + 1, d_pw_raw[j])
            for e in range(g):   # the flat dL/dw_dw: views, no copies
                off = offs[e * nk + j]
                grads[e * nw + b + 2 * j] = d_dw[off:off + c * t.kernel ** 2].view(weights[b + 2 * j].shape)
    if plan.dws and need_probs:
        dp_dw = (d_pw4 * pw_cat).sum((1, 3))
        d_probs.index_add_(1, _index(plan.dw_ops, p.device), dp_dw.to(p.dtype))
    return d_probs, grads


BN_SETTINGS = ("eps", "momentum", "training", "track_running_stats")


def check_group_edges(edges, plan) -> None:
    """Raise ValueError unless the edges of a group share their op list, stride and weight shapes:
    the group runs with edge 0's plan and stride, so another edge's would be silently misread."""
    first = edges[0]
    shapes = [tuple(w.shape) for w in plan.weights(first)]
    for i, e in enumerate(edges[1:], 1):
        if list(e.op_names) != list(first.op_names) or e.stride != first.stride \
                or [tuple(w.shape) for w in plan.weights(e)] != shapes:
            raise ValueError(f"the edges of a group must share their ops, stride and widths; edge {i} has ops "
                             f"{list(e.op_names)}, stride {e.stride} (edge 0: {list(first.op_names)}, stride "
                             f"{first.stride}, or other widths)")


def check_group_bns(bns) -> None:
    """Raise ValueError unless the BNs of an edge group share ``BN_SETTINGS``: ``_bn_stats`` takes
    the group's statistics with the first BN's settings."""
    first = bns[0]
    for i, bn in enumerate(bns[1:], 1):
        diff = [f"{a}={getattr(bn, a)!r} (edge 0: {getattr(first, a)!r})"
                for a in BN_SETTINGS if getattr(bn, a) != getattr(first, a)]
        if diff:
            raise ValueError(f"the BNs of an edge group must share {', '.join(BN_SETTINGS)}; edge {i} has "
                             f"{', '.join(diff)} (UBNAS_EDGE_GROUPS=0 runs the edges one by one)")


def _bn_stats(bns, z: torch.Tensor):
    """(mean, invstd, batch_stats), mean/invstd (G*C,) float32 (float64 for float64 z), for the G
    edges' BNs (edge e's channels [e*C, (e+1)*C) of z), updating their running stats exactly as
    F.batch_norm.  The BNs share their settings (``check_group_bns``)."""
    bn = bns[0]
    batch = bn.training or bn.running_mean is None
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    if not batch:
        mean = torch.cat([b.running_mean for b in bns]) if len(bns) > 1 else bn.running_mean
        var = torch.cat([b.running_var for b in bns]) if len(bns) > 1 else bn.running_var
        return mean.to(acc), torch.rsqrt(var.to(acc) + bn.eps), False
    if z.numel() == z.shape[1]:   # as F.batch_norm (also in eval without running stats): not from one value
        raise ValueError("Expected more than 1 value per channel for batch statistics (training, or no "
                         f"running statistics), got input size {tuple(z.shape)}")
    var, mean = torch.var_mean(z.to(acc), dim=(0, 2, 3), unbiased=False)
    if bn.training and bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            m = z.numel() // z.shape[1]
            c = z.shape[1] // len(bns)
            means = mean.to(bn.running_mean.dtype).split(c)
            vars_ = (var * (m / (m - 1))).to(bn.running_var.dtype).split(c)
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
            if bn.momentum is None:   # cumulative average: each BN's own count
                for b, mu, v in zip(bns, means, vars_):
                    f = 1.0 / float(b.num_batches_tracked)
                    b.running_mean.lerp_(mu, f)
                    b.running_var.lerp_(v, f)
            else:   # one multi-tensor op for the group (edges share the momentum)
                torch._foreach_lerp_([b.running_mean for b in bns], list(means), bn.momentum)
                torch._foreach_lerp_([b.running_var for b in bns], list(vars_), bn.momentum)
    return mean, torch.rsqrt(var + bn.eps), True


def _shape_only(shape, dtype, device) -> torch.Tensor:
    """A tensor of ``shape`` without storage: the input of a conv whose backward only needs its shape."""
    return torch.empty(1, dtype=dtype, device=device).expand(shape)


def _conv_backward(dz, inp, w, stride: int, pad: int, groups: int, need_in: bool, need_w: bool):
    """(dL/d inp, dL/dw) of z = conv2d(inp, w), each None when not asked for (inp's values are only
    read for dL/dw)."""
    if not (need_in or need_w):
        return None, None
    d_in, d_w, _ = torch.ops.aten.convolution_backward(
        dz, inp, w, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], groups, [need_in, need_w, False])
    return d_in, d_w


def _linear_backward(ctx, dz, x, w_full, w_dw, w_pw, extra, need_x: bool, need_w: bool, need_weights: bool):
    """Through z = conv(relu(x), W_super) + PW_cat @ dwstack(relu(x)): (dx + extra, dL/dW_super,
    dL/dw_dw, dL/dPW_cat), each None when not asked for (dx: need_x, dL/dw_dw: need_weights, the
    others: need_w).  relu(x) and dwstack are recomputed only for the weight gradients."""
    plan, s, cd, K = ctx.plan, ctx.stride, ctx.cd, ctx.K
    lin = d_full = d_dw = d_pw = None
    if w_full is not None:
        r = torch.relu(x).to(cd) if need_w else _shape_only(x.shape, cd, x.device)
        lin, d_full = _conv_backward(dz, r, w_full.to(cd), s, plan.size // 2, 1, need_x, need_w)
        del r
        if d_full is not None:
            d_full = d_full.to(w_full.dtype)
    if w_dw is None:
        dx = None
        if need_x:
            dx = torch.where(x > 0, lin.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
            dx = dx if extra is None else dx + extra
        return dx, d_full, None, None
    spec = plan.spec * ctx.groups
    if need_w:
        d = K.dw_forward(x, w_dw, spec, s, cd)
    else:
        d = _shape_only((x.shape[0], len(spec) * x.shape[1], *dz.shape[2:]), cd, x.device)
    need_dd = need_x or need_weights
    dd, d_pw = _conv_backward(dz, d, w_pw.to(cd)[:, :, None, None], 1, 0, ctx.groups, need_dd, need_w)
    del d
    if d_pw is not None:
        d_pw = d_pw.view(w_pw.shape).to(w_pw.dtype)
    if need_weights:
        d_dw = K.dw_backward_weight(dd, x, spec, s).to(w_dw.dtype)
    dx = K.dw_backward_input(dd, x, w_dw, spec, s, lin=lin, extra=extra) if need_x else None
    return dx, d_full, d_dw, d_pw


class FusedEdge(torch.autograd.Function):
    """The G edges of a group (same input x, plan, stride): y (N, G*C, Ho, Wo) = fused edges(x);
    probs (G, n_ops); bns the edges' BNs; K the kernel backend (reference or triton_kernels).
    Differentiable once: the backward is closed-form, a double backward raises."""

    @staticmethod
    def forward(ctx, x, probs, plan: EdgePlan, stride: int, cd: torch.dtype, bns, K, *weights):
        x = x.contiguous()
        s, groups = stride, probs.shape[0]
        spec = plan.spec * groups
        with torch.autocast(x.device.type, enabled=False):   # compose, BN stats and coef stay in fp32
            w_full, w_dw, w_pw, pw_cat, p_dw, coef = compose(plan, probs, weights)
            z = mean = invstd = None
            batch = False
            if w_full is not None:
                z = F.conv2d(torch.relu(x).to(cd), w_full.to(cd), stride=s, padding=plan.size // 2)
            if w_dw is not None:
                d = K.dw_forward(x, w_dw, spec, s, cd)
                zz = F.conv2d(d, w_pw.to(cd)[:, :, None, None], groups=groups)
                del d
                z = zz if z is None else z.add_(zz)
            if z is not None:
                mean, invstd, batch = _bn_stats(bns, z)
            y = K.combine_forward(z, mean, invstd, x, coef, s, plan.flags)
        ctx.plan, ctx.stride, ctx.cd, ctx.K, ctx.batch, ctx.groups = plan, stride, cd, K, batch, groups
        ctx.save_for_backward(x, probs, w_full, w_dw, w_pw, pw_cat, p_dw, coef, z, mean, invstd, *weights)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, probs, w_full, w_dw, w_pw, pw_cat, p_dw, coef, z, mean, invstd, *weights = ctx.saved_tensors
        plan, s, K = ctx.plan, ctx.stride, ctx.K
        need_x, need_probs = ctx.needs_input_grad[:2]
        need_weights = any(ctx.needs_input_grad[7:])   # off in an architecture step with frozen weights
        need_w = need_probs or need_weights            # dL/dp needs dL/dW_super and dL/dPW_cat
        g = g.contiguous()
        with torch.autocast(x.device.type, enabled=False):
            sums = K.combine_reduce(g, z, mean, invstd, x, s, plan.flags)
            d_coef = sums.view(ctx.groups, -1, 5)[:, :, 1:].sum(1).to(coef.dtype)   # (G, 4)
            extra = K.pool_skip_backward(g, x, coef, s, plan.flags) if need_x and any(plan.flags) else None
            dx, d_full, d_dw, d_pw = extra, None, None, None
            if z is not None:
                dz = K.bn_backward(g, z, mean, invstd, sums, coef, ctx.batch)
                dx, d_full, d_dw, d_pw = _linear_backward(ctx, dz, x, w_full, w_dw, w_pw, extra,
                                                          need_x, need_w, need_weights)
            if need_x and dx is None:
                dx = torch.zeros_like(x)
            if need_w and z is not None:
                d_probs, grads = weight_grads(plan, probs, weights, pw_cat, p_dw, d_full, d_dw, d_pw, d_coef,
                                              need_probs, need_weights)
            else:   # no linear op: dL/dp only through the pool/skip/none coefficients
                d_probs = _coef_grad(plan, d_coef, probs) if need_probs else None
                grads = [None] * len(weights)
        return (dx, d_probs, None, None, None, None, None, *grads)


def fused_mixed_edges(edges, x: torch.Tensor, probs: torch.Tensor, K, fold: Optional[bool] = None
                      ) -> List[torch.Tensor]:
    """The outputs (N, C, Ho, Wo) of G edges that read the same x, in one FusedEdge call.

    edges share their op list, width and stride (the edges leaving one cell state);
    probs (G, n_ops).  Edge outputs are views of one (N, G*C, Ho, Wo) tensor.
    """
    if x.shape[0] == 0:   # no samples: eager's result (empty outputs, BN statistics untouched), not NaN stats
        return [e.forward_eager(x, probs[i]) for i, e in enumerate(edges)]
    edge = edges[0]
    plan = edge_plan(edge, FOLD_SEPARABLE if fold is None else fold)
    s, groups = edge.stride, len(edges)
    if not plan.size and not plan.dws and not any(plan.flags):   # only 'none'
        shape = (x.shape[0], x.shape[1], out_size(x.shape[2], s), out_size(x.shape[3], s))
        return [x.new_zeros(shape) for _ in edges]
    bns = tuple(e.bn for e in edges)
    if groups > 1:
        check_group_edges(edges, plan)
        check_group_bns(bns)
    dev = x.device.type
    # autocast leaves float64 alone (so does eager): only lower float32 / float16 / bfloat16
    lowered = torch.is_autocast_enabled(dev) and x.dtype != torch.float64
    cd = torch.get_autocast_dtype(dev) if lowered else x.dtype
    weights = [w for e in edges for w in plan.weights(e)]
    mismatch = [w.dtype for w in weights if w.dtype != x.dtype]
    if mismatch and not lowered:   # eager's convolutions refuse this; the fused path would cast quietly
        raise RuntimeError(f"mixed edge: input is {x.dtype} but the edge's weights are {mismatch[0]}; "
                           f"convert one to the other (or run under autocast)")
    y = FusedEdge.apply(x, probs, plan, s, cd, bns, K, *weights)
    if groups == 1:
        return [y]
    return list(y.view(y.shape[0], groups, -1, y.shape[2], y.shape[3]).unbind(1))


def fused_mixed_edge(edge, x: torch.Tensor, probs: torch.Tensor, K, fold: Optional[bool] = None) -> torch.Tensor:
    """One edge's output (N, C, Ho, Wo) through backend K (see module docstring); probs (n_ops,)."""
    return fused_mixed_edges([edge], x, probs.unsqueeze(0), K, fold)[0]
