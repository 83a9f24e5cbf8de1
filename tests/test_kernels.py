"""Tests for ubnas.kernels.

(a) Triton kernels against float64 PyTorch references: on CPU through
    TRITON_INTERPRET=1 (set below, before triton is imported), compiled on CUDA
    when a GPU is present; forward and every gradient.
(b) impl="reference" MixedEdge against forward_eager in float64 for the op list
    of every shipped space, stride 1 and 2, train and eval mode (running
    statistics equal after the step), channel-masked inputs.
(c) gradcheck of the fused autograd.Function (x, every weight, probs).

Inputs are fresh random draws per test (the seed is printed on failure); shapes
are tiny and odd so the interpreter stays fast.
"""
import copy
import os
import random
import re

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from ubnas.kernels import backend, mixed_edge, mixed_edges, reference as R  # noqa: E402
from ubnas.space import load_space, space_names  # noqa: E402
from ubnas.supernet import MixedEdge  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
ALL_DW = ((3, 1), (5, 1), (3, 2), (5, 2))
UBOOST = ["conv_3x3", "conv_5x5", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
          "skip_connect", "none"]
DARTS = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
         "dil_conv_5x5", "none"]


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh inputs every run; UBNAS_TEST_SEED=N replays the run a failure printed."""
    given = os.environ.get("UBNAS_TEST_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2 ** 31)
    print(f"seed={seed} (UBNAS_TEST_SEED={seed} replays it)")  # shown with a failing test's output
    torch.manual_seed(seed)


@pytest.fixture
def no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(name, a, b, tol):
    e = rel(a, b)
    print(f"relerr {name}: {e:.2e}")
    assert e < tol, (name, e)


def _x(n=2, c=4, h=7, w=None, masked=False, dtype=torch.float64, device="cpu"):
    x = torch.randn(n, c, h, w or h, dtype=dtype, device=device)
    if masked:  # soft channel mask: last channels zero, one fractional
        m = torch.ones(c, dtype=dtype, device=device)
        m[-2:] = 0
        m[1] = 0.37
        x = x * m.view(1, -1, 1, 1)
    return x


# ----------------------------------------------------------------------------- (a) Triton kernels
T = backend("triton", DEV)
TRITON_TOL = 1e-5


@pytest.mark.parametrize("stride,spec,shape", [(1, ALL_DW, (2, 3, 7, 5)), (2, ALL_DW, (2, 3, 7, 7)),
                                               (2, ((3, 1),), (2, 5, 5, 5)),
                                               # more kernels than one launch takes (MAX_NK), several tiles
                                               (1, ALL_DW + ((5, 2),), (1, 2, 9, 11)),
                                               (2, ((5, 2),), (1, 2, 10, 9))])
@pytest.mark.parametrize("tiled", ["0", "1", "io"])   # UBNAS_DW_TILED: gathers, 2-D tiles, tiles but dL/dw
def test_triton_depthwise(stride, spec, shape, tiled, monkeypatch):
    monkeypatch.setenv("UBNAS_DW_TILED", tiled)
    x = torch.randn(*shape, device=DEV)
    x[:, 0] = 0  # a masked channel
    w = torch.randn(R.dw_offsets(spec, shape[1])[1], device=DEV)   # flat: each kernel's (C, k, k) block
    xd, wd = x.double().cpu(), w.double().cpu()
    d = T.dw_forward(x, w, spec, stride)
    check("dw_forward", d, R.dw_forward(xd, wd, spec, stride), TRITON_TOL)
    dd = torch.randn_like(d)
    lin, extra = torch.randn_like(x), torch.randn_like(x)
    ddd = dd.double().cpu()
    check("dw_backward_input", T.dw_backward_input(dd, x, w, spec, stride, lin, extra),
          R.dw_backward_input(ddd, xd, wd, spec, stride, lin.double().cpu(), extra.double().cpu()), TRITON_TOL)
    check("dw_backward_input(plain)", T.dw_backward_input(dd, x, w, spec, stride),
          R.dw_backward_input(ddd, xd, wd, spec, stride), TRITON_TOL)
    check("dw_backward_weight", T.dw_backward_weight(dd, x, spec, stride),
          R.dw_backward_weight(ddd, xd, spec, stride), TRITON_TOL)


@pytest.mark.parametrize("stride,flags,lin", [(1, (True, True, True), True), (2, (True, True, False), True),
                                              (1, (False, True, True), False), (2, (True, False, False), True)])
def test_triton_combine(stride, flags, lin):
    x = torch.randn(2, 4, 7, 5, device=DEV)
    x[:, 1] = 0  # ties in every max-pool window of a masked channel
    ho, wo = (7 - 1) // stride + 1, (5 - 1) // stride + 1
    z = torch.randn(2, 4, ho, wo, device=DEV) * 2 + 0.5 if lin else None
    mean, invstd = torch.randn(4, device=DEV), torch.rand(4, device=DEV) + 0.5
    coef = torch.rand(4, device=DEV) + 0.1
    g = torch.randn(2, 4, ho, wo, device=DEV)
    cpu = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    args = (cpu(z), cpu(mean), cpu(invstd), cpu(x))
    check("combine_forward", T.combine_forward(z, mean, invstd, x, coef, stride, flags),
          R.combine_forward(*args, cpu(coef), stride, flags), TRITON_TOL)
    sums = T.combine_reduce(g, z, mean, invstd, x, stride, flags)
    ref_sums = R.combine_reduce(cpu(g), *args, stride, flags)
    check("combine_reduce", sums, ref_sums, TRITON_TOL)
    if lin:
        for batch in (True, False):
            check(f"bn_backward(batch={batch})", T.bn_backward(g, z, mean, invstd, sums, coef, batch),
                  R.bn_backward(cpu(g), cpu(z), cpu(mean), cpu(invstd), ref_sums, cpu(coef), batch), TRITON_TOL)
    check("pool_skip_backward", T.pool_skip_backward(g, x, coef, stride, flags),
          R.pool_skip_backward(cpu(g), cpu(x), cpu(coef), stride, flags), TRITON_TOL)


@pytest.mark.parametrize("stride,flags,lin,groups", [(1, (True, True, True), True, 3),
                                                     (2, (True, True, False), False, 2)])
def test_triton_combine_groups(stride, flags, lin, groups):
    """G edges on one x: each edge's channels of the grouped kernels equal the one-edge reference,
    and dL/dx of the pools/skip is the sum over the edges."""
    c, (h, w) = 3, (6, 5)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(2, c, h, w, device=DEV)
    x[:, 0, :3] = 0   # max-pool ties
    z = torch.randn(2, groups * c, ho, wo, device=DEV) if lin else None
    mean, invstd = torch.randn(groups * c, device=DEV), torch.rand(groups * c, device=DEV) + 0.5
    coef = torch.rand(groups, 4, device=DEV) + 0.1
    g = torch.randn(2, groups * c, ho, wo, device=DEV)
    cpu = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    y, sums = T.combine_forward(z, mean, invstd, x, coef, stride, flags), None
    sums = T.combine_reduce(g, z, mean, invstd, x, stride, flags)
    dx_ref = 0
    for e in range(groups):
        ch = slice(e * c, (e + 1) * c)
        ze = cpu(z[:, ch]) if lin else None
        args = (ze, cpu(mean[ch]), cpu(invstd[ch]), cpu(x))
        check(f"combine_forward[{e}]", y[:, ch], R.combine_forward(*args, cpu(coef[e]), stride, flags), TRITON_TOL)
        ref_sums = R.combine_reduce(cpu(g[:, ch]), *args, stride, flags)
        check(f"combine_reduce[{e}]", sums[ch], ref_sums, TRITON_TOL)
        if lin:
            check(f"bn_backward[{e}]", T.bn_backward(g, z, mean, invstd, sums, coef, True)[:, ch],
                  R.bn_backward(cpu(g[:, ch]), ze, cpu(mean[ch]), cpu(invstd[ch]), ref_sums, cpu(coef[e]), True),
                  TRITON_TOL)
        dx_ref = dx_ref + R.pool_skip_backward(cpu(g[:, ch]), cpu(x), cpu(coef[e]), stride, flags)
    check("pool_skip_backward(sum over edges)", T.pool_skip_backward(g, x, coef, stride, flags), dx_ref, TRITON_TOL)


def _edge_pair(ops, c, stride, device):
    """(float32 edge on device, float64 CPU twin with the same weights)."""
    e = MixedEdge(ops, c, stride).to(device)
    e64 = MixedEdge(ops, c, stride).double()
    e64.load_state_dict({k: v.double().cpu() if v.is_floating_point() else v.cpu()
                         for k, v in e.state_dict().items()})
    return e, e64


@pytest.mark.parametrize("ops,stride,fold,train,tiled", [(UBOOST, 1, True, True, "0"), (DARTS, 2, False, True, "0"),
                                                         (UBOOST, 1, False, False, "0"),
                                                         (DARTS, 2, False, True, "1"), (DARTS, 1, False, True, "1")])
def test_triton_mixed_edge_vs_eager_float64(ops, stride, fold, train, tiled, no_tf32, monkeypatch):
    monkeypatch.setenv("UBNAS_DW_TILED", tiled)
    e, e64 = _edge_pair(ops, 4, stride, DEV)
    e.train(train)
    e64.train(train)
    if not train:  # non-trivial running statistics
        for m in (e.bn, e64.bn):
            m.running_mean.copy_(torch.linspace(-0.5, 0.5, 4))
            m.running_var.copy_(torch.linspace(0.5, 2.0, 4))
    x = _x(c=4, h=7, masked=True, dtype=torch.float32, device=DEV).requires_grad_()
    p = torch.softmax(torch.randn(len(ops), device=DEV), 0).detach().requires_grad_()
    x64, p64 = x.detach().double().cpu().requires_grad_(), p.detach().double().cpu().requires_grad_()
    y = mixed_edge(e, x, p, impl="triton", fold=fold)
    y64 = e64.forward_eager(x64, p64)
    check("edge y", y, y64, 1e-5)
    g = torch.randn_like(y64)
    grads = torch.autograd.grad(y, [x, p] + list(e.parameters()), g.float().to(DEV))
    grads64 = torch.autograd.grad(y64, [x64, p64] + list(e64.parameters()), g)
    names = ["x", "probs"] + [n for n, _ in e.named_parameters()]
    for name, a, b in zip(names, grads, grads64):
        check(f"edge d{name}", a, b, 1e-4)
    check("running_mean", e.bn.running_mean, e64.bn.running_mean, 1e-5)
    check("running_var", e.bn.running_var, e64.bn.running_var, 1e-5)


@pytest.mark.parametrize("tiled", ["1", "0"])   # UBNAS_DW_TILED: both depthwise families' dL/dw loops
def test_triton_reductions_over_several_images_and_pixel_blocks(tiled, no_tf32, monkeypatch):
    """The per-split loops over images and pixel blocks (on a GPU every split holds many images and
    planes span many blocks; the interpreter's tiny shapes give one of each unless forced)."""
    from ubnas.kernels import triton_common
    monkeypatch.setenv("UBNAS_DW_TILED", tiled)
    asked = []
    monkeypatch.setattr(triton_common, "batch_splits",
                        lambda n, per, target=1024: asked.append((n, per)) or min(n, 2))   # 3 images: 2 + 1
    # gathers: 81 pixels, 2 blocks of 64 (also for the combine kernels both families share), a group
    # of 2 edges; tiles: 5x5 is already 2x2 tiles of 4x4, one edge of 2 channels (the interpreter
    # runs the tile kernels' unrolled taps ~15x slower per pixel)
    c, h, n_edges = (3, 9, 2) if tiled == "0" else (2, 5, 1)
    edges, twins = _edge_group(DARTS, c, 1, n_edges, DEV)
    x = _x(n=3, c=c, h=h, dtype=torch.float32, device=DEV).requires_grad_()
    probs = torch.softmax(torch.randn(n_edges, len(DARTS), device=DEV), 1).detach().requires_grad_()
    _check_group(edges, twins, x, probs, "triton", 1e-5)
    assert asked and {n for n, _ in asked} == {3}   # the reductions did run in two slices
    if tiled == "1":   # the tile dL/dw splits for one launch's programs: (C, k) per kernel, k <= 5
        assert (3, c * 5) in asked


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the interpreter's numpy, on NaN
def test_triton_max_pool_propagates_nan_and_routes_inf_windows_as_pytorch():
    """NaN wins a max-pool window and an all -inf window sends its gradient to its first tap,
    as F.max_pool2d does (float64 eager reference)."""
    e = MixedEdge(["max_pool_3x3", "none"], 2, 1)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    x[0, 0, 1, 1] = x[0, 0, 4, 3] = float("nan")
    x[0, 1, :3, :3] = float("-inf")   # the window at output (0, 0) of channel 1 is all -inf
    p = torch.tensor([0.7, 0.3], dtype=torch.float64)
    x64, x32 = x.clone().requires_grad_(), x.float().to(DEV).requires_grad_()
    y64 = e.double().forward_eager(x64, p)
    y = mixed_edge(e.float().to(DEV), x32, p.float().to(DEV), impl="triton")
    torch.testing.assert_close(y.double().cpu(), y64, rtol=1e-5, atol=1e-6, equal_nan=True)   # float32 kernels
    g = torch.randn_like(y64)
    y64.backward(g)
    y.backward(g.float().to(DEV))
    torch.testing.assert_close(x32.grad.double().cpu(), x64.grad, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert y64.isnan().any() and x64.grad[0, 1, 0, 0] != 0   # the cases above were exercised


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the interpreter's numpy, on NaN
@pytest.mark.parametrize("impl,tiled", [("reference", "0"), ("triton", "0"), ("triton", "1")])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("where", [(2, 3), (2, 4), (4, 2)])   # inside; by the right, the bottom edge
def test_nan_input_through_depthwise_relu_as_eager(impl, tiled, train, where, monkeypatch):
    """relu(NaN) is NaN: one NaN in x gives eager's NaN pattern (and values elsewhere) in the output,
    the BN running stats, the weight gradients and dL/dp of sep_conv, on the depthwise path (gathers
    and tiles: relu on load in forward and dL/dw).  Left out: dL/dx (at the NaN torch's relu passes
    the gradient, the fused relu mask x > 0 stops it) and dL/dp of 'none' (eager 0, fused NaN: the
    closed form multiplies the NaN dL/dcoef by M's zero column).  By an edge the tiles' dL/dw
    read pixels for outputs past the map, NaN * 0 included, unless masked by the output tile."""
    monkeypatch.setenv("UBNAS_DW_TILED", tiled)
    e, e64 = _edge_pair(["sep_conv_3x3", "none"], 2, 1, DEV)   # no full conv: the depthwise pass
    e.train(train)
    e64.train(train)
    x64 = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    x64[(0, 1) + where] = float("nan")
    p64 = torch.tensor([0.6, 0.4], dtype=torch.float64, requires_grad=True)
    p = p64.detach().float().to(DEV).requires_grad_()
    y64 = e64.forward_eager(x64, p64)
    y = mixed_edge(e, x64.float().to(DEV), p, impl=impl)
    g = torch.randn_like(y64)
    grads = torch.autograd.grad(y, [p] + list(e.parameters()), g.float().to(DEV))
    grads64 = torch.autograd.grad(y64, [p64] + list(e64.parameters()), g)
    close = dict(rtol=1e-4, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(y.double().cpu(), y64, **close)
    names = ["probs[sep_conv_3x3]"] + [n for n, _ in e.named_parameters()]
    for name, a, b in zip(names, [grads[0][:1]] + list(grads[1:]), [grads64[0][:1]] + list(grads64[1:])):
        torch.testing.assert_close(a.double().cpu(), b, **close, msg=f"d{name}")
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(e.bn, name).double().cpu(), getattr(e64.bn, name), **close, msg=name)
    assert y64.isnan().any() and (train or not y64.isnan().all())   # eval: the NaN stays local


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("tracked", [True, False])   # False: eval without running stats takes batch stats
def test_fused_bn_refuses_one_value_per_channel_as_eager(impl, tracked):
    e = MixedEdge(UBOOST, 3, 1).to(DEV).train()
    if not tracked:
        e.bn = torch.nn.BatchNorm2d(3, affine=False, track_running_stats=False).to(DEV)
        e.eval()
    x, p = torch.randn(1, 3, 1, 1, device=DEV), torch.softmax(torch.randn(len(UBOOST), device=DEV), 0)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        mixed_edge(e, x, p, impl=impl)
    if tracked:
        assert not e.bn.num_batches_tracked and not e.bn.running_mean.any()   # no statistics taken
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        e.forward_eager(x, p)


def _edge_group(ops, c, stride, n_edges, device, dtype=torch.float32):
    """(edges on device in dtype, float64 CPU twins with the same weights and BN buffers)."""
    edges, twins = [], []
    for _ in range(n_edges):
        e, e64 = _edge_pair(ops, c, stride, device)
        with torch.no_grad():
            e.bn.running_mean.normal_()
            e.bn.running_var.uniform_(0.5, 2)
        e64.load_state_dict({k: v.double().cpu() if v.is_floating_point() else v.cpu()
                             for k, v in e.state_dict().items()})
        edges.append(e.to(dtype))
        twins.append(e64)
    return edges, twins


def _check_group(edges, twins, x, probs, impl, tol, grad_tol=None, bf16=False):
    """mixed_edges(edges) (under bf16 autocast if ``bf16``) against each twin's float64 forward_eager:
    outputs and BN buffers within ``tol``, every gradient within ``grad_tol`` (default 10 * tol)."""
    x64 = x.detach().double().cpu().requires_grad_()
    p64 = probs.detach().double().cpu().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        ys = mixed_edges(edges, x, probs, impl=impl)
    ys64 = [t.forward_eager(x64, p64[i]) for i, t in enumerate(twins)]
    gs = [torch.randn_like(y) for y in ys64]
    for i, (y, y64) in enumerate(zip(ys, ys64)):
        check(f"y[{i}]", y, y64, tol)
    params = [p for e in edges for p in e.parameters()]
    grads = torch.autograd.grad(ys, [x, probs] + params, [g.to(x) for g in gs])
    grads64 = torch.autograd.grad(ys64, [x64, p64] + [p for t in twins for p in t.parameters()], gs)
    names = ["x", "probs"] + [f"{i}.{n}" for i, e in enumerate(edges) for n, _ in e.named_parameters()]
    for name, a, b in zip(names, grads, grads64):
        check(f"d{name}", a, b, grad_tol or 10 * tol)
    for i, (e, t) in enumerate(zip(edges, twins)):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            check(f"{i}.{name}", getattr(e.bn, name).double(), getattr(t.bn, name).double(), tol)


@pytest.mark.parametrize("ops,stride,train,groups", [(DARTS, 1, True, 3), (DARTS, 2, False, 2),
                                                     (UBOOST, 1, True, 2), (UBOOST, 2, True, 4),
                                                     (["max_pool_3x3", "skip_connect", "none"], 1, True, 3)])
def test_reference_edge_group_matches_eager(ops, stride, train, groups):
    edges, twins = _edge_group(ops, 4, stride, groups, "cpu", torch.float64)
    for m in edges + twins:
        m.train(train)
    x = _x(c=4, h=7, w=6, masked=True).requires_grad_()
    probs = torch.softmax(torch.randn(groups, len(ops), dtype=torch.float64), 1).requires_grad_()
    _check_group(edges, twins, x, probs, "reference", 1e-12)


@pytest.mark.parametrize("setting,value", [("eps", 1e-3), ("momentum", 0.3), ("momentum", None),
                                           ("training", False), ("track_running_stats", False)])
def test_edge_group_refuses_bns_with_different_settings(setting, value):
    """A group's BN statistics follow one BN's eps, momentum, mode: a group whose BNs differ raises."""
    edges, _ = _edge_group(["sep_conv_3x3", "max_pool_3x3", "none"], 3, 1, 2, "cpu", torch.float64)
    setattr(edges[1].bn, setting, value)
    probs = torch.softmax(torch.randn(2, 3, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match=re.escape(f"edge 1 has {setting}={value!r}")):
        mixed_edges(edges, _x(c=3, h=5), probs, impl="reference")


def test_set_impl_refuses_an_unknown_name_at_once():
    """'Eager' was taken and failed only at the first forward, with a list that left out 'eager'."""
    from ubnas.supernet import Supernet
    net = Supernet(load_space("tiny"), (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"^unknown kernel impl 'Eager' \(expected one of eager, reference, "):
        net.set_impl("Eager")
    net.set_impl("eager")


@pytest.mark.parametrize("train", [True, False])
def test_an_empty_batch_gives_what_eager_gives(train):
    """N = 0 filled the BN running statistics with NaN (var_mean of nothing), then backward failed."""
    edges, twins = _edge_group(["sep_conv_3x3", "conv_3x3", "max_pool_3x3", "none"], 3, 2, 2, "cpu", torch.float64)
    for m in edges + twins:
        m.train(train)
    x = torch.zeros(0, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(torch.randn(2, 4, dtype=torch.float64), 1).requires_grad_()
    ys = mixed_edges(edges, x, probs, impl="reference")
    expected = [t.forward_eager(x, probs[i]) for i, t in enumerate(twins)]
    assert [y.shape for y in ys] == [y.shape for y in expected] == [(0, 3, 3, 3)] * 2
    sum(y.sum() for y in ys).backward()
    assert x.grad.shape == x.shape and torch.isfinite(probs.grad).all()
    for e, t in zip(edges, twins):
        assert torch.equal(e.bn.running_mean, t.bn.running_mean) and torch.equal(e.bn.running_var, t.bn.running_var)


@pytest.mark.parametrize("other", ["stride", "reversed ops", "width"])
def test_edge_group_refuses_edges_that_differ(other):
    """The group runs with edge 0's plan and stride: a stride-2 edge came back at stride 1's size,
    and reversed ops put edge 1's weights on the wrong ops (off by up to 2.3), without an error."""
    ops = ["sep_conv_3x3", "conv_3x3", "max_pool_3x3", "none"]
    first, _ = _edge_pair(ops, 3, 1, "cpu")
    second, _ = _edge_pair(list(reversed(ops)) if other == "reversed ops" else ops, 5 if other == "width" else 3,
                           2 if other == "stride" else 1, "cpu")
    probs = torch.softmax(torch.randn(2, len(ops)), 1)
    with pytest.raises(ValueError, match="the edges of a group must share their ops, stride and widths; edge 1 "):
        mixed_edges([first, second], _x(c=3, h=6).float(), probs, impl="reference")


@pytest.mark.parametrize("ops,stride,tiled", [(DARTS, 2, "1"), (DARTS, 2, "0"), (UBOOST, 1, "1")])
def test_triton_edge_group_vs_eager_float64(ops, stride, tiled, no_tf32, monkeypatch):
    """Two edges in one call, each against its float64 eager twin: 8 depthwise kernels, two
    launches of the tile kernels (MAX_NK = 4), one of the gathers."""
    monkeypatch.setenv("UBNAS_DW_TILED", tiled)
    edges, twins = _edge_group(ops, 3, stride, 2, DEV)
    x = _x(c=3, h=6, w=5, masked=True, dtype=torch.float32, device=DEV).requires_grad_()
    probs = torch.softmax(torch.randn(2, len(ops), device=DEV), 1).detach().requires_grad_()
    _check_group(edges, twins, x, probs, "triton", 1e-5)


@pytest.mark.parametrize("ops,x_dtype,impl", [(DARTS, torch.float32, "triton"), (UBOOST, torch.bfloat16, "triton"),
                                              (UBOOST, torch.float32, "reference"),
                                              (DARTS, torch.bfloat16, "reference")])
def test_edge_group_bf16_autocast_as_accurate_as_eager(ops, x_dtype, impl):
    """Under bf16 autocast (convolutions, the depthwise pass and its stored output in bf16; BN
    statistics, coefficients and reductions in fp32), for fp32 or bf16 inputs, a group of two edges
    is as accurate as the eager edges under the same autocast: against float64 eager, each output,
    gradient is within 4x eager's error or 4 bf16 epsilons (2^-7), the larger, each BN buffer
    within 4x eager's error or 4e-4.
    Measured over 10 runs: fused errors average 0.7x eager's, the worst is 1.7e-2 (a pointwise
    weight's gradient: sums over pixels of bf16 products); a lost or doubled term is O(1)."""
    edges, twins = _edge_group(ops, 4, 1, 2, DEV)
    eager = [copy.deepcopy(e) for e in edges]
    x = _x(c=4, h=7, w=6, masked=True, dtype=torch.float32, device=DEV).to(x_dtype).requires_grad_()
    probs = torch.softmax(torch.randn(2, len(ops), device=DEV), 1).detach().requires_grad_()
    x64 = x.detach().double().cpu().requires_grad_()
    p64 = probs.detach().double().cpu().requires_grad_()
    gs = [torch.randn(x.shape, dtype=torch.float64) for _ in edges]

    def run(mods, x, p, forward):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.dtype != torch.float64):
            ys = forward(mods, x, p)
        params = [q for m in mods for q in m.parameters()]
        grads = torch.autograd.grad(ys, [x, p] + params, [g.to(ys[0]) for g in gs])
        bufs = [getattr(m.bn, n) for m in mods for n in ("running_mean", "running_var")]
        return list(ys) + list(grads) + bufs

    def per_edge(mods, x, p):
        return [m.forward_eager(x, p[i]) for i, m in enumerate(mods)]

    fused = run(edges, x, probs, lambda mods, x, p: mixed_edges(mods, x, p, impl=impl))
    x2, p2 = x.detach().clone().requires_grad_(), probs.detach().clone().requires_grad_()
    ref_bf16 = run(eager, x2, p2, per_edge)
    exact = run(twins, x64, p64, per_edge)
    names = ["y0", "y1", "x", "probs"] + [f"{i}.{n}" for i, e in enumerate(edges) for n, _ in e.named_parameters()]
    names += [f"{i}.{n}" for i in range(2) for n in ("running_mean", "running_var")]
    assert len(names) == len(fused) == len(ref_bf16) == len(exact)
    for name, a, b, ref in zip(names, fused, ref_bf16, exact):
        floor = 1e-4 if "running" in name else torch.finfo(torch.bfloat16).eps   # statistics: fp32 sums
        bound = 4 * max(rel(b, ref), floor)
        check(f"{name} (eager bf16 {rel(b, ref):.1e})", a, ref, bound)


def test_float64_edges_stay_float64_under_autocast():
    """Autocast does not cast float64, so eager edges inside an autocast region compute in float64;
    the fused edges must too (they lowered to bf16: relative error 3e-3)."""
    edges, twins = _edge_group(UBOOST, 3, 1, 2, "cpu", torch.float64)
    x = _x(c=3, h=6, w=5, masked=True, dtype=torch.float64, device="cpu")
    probs = torch.softmax(torch.randn(2, len(UBOOST), dtype=torch.float64), 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mixed_edges(edges, x, probs, impl="reference")
    for i, (y, twin) in enumerate(zip(got, twins)):
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, twin.forward_eager(x, probs[i]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("x_dtype", [torch.float64, torch.bfloat16])
def test_an_input_of_another_dtype_than_the_edge_is_refused_as_eager_refuses_it(x_dtype):
    """Outside autocast eager's convolutions raise on a float64 or bf16 input to a float32 edge; the
    fused path cast it quietly (a float64 input gave a float64 output)."""
    edge = MixedEdge(UBOOST, 3, 1)
    x = _x(c=3, h=6, w=5, dtype=torch.float32, device="cpu").to(x_dtype)
    probs = torch.softmax(torch.randn(len(UBOOST)), 0).to(x_dtype)
    with pytest.raises(RuntimeError):
        edge.forward_eager(x, probs)
    with pytest.raises(RuntimeError, match=f"input is {x_dtype} but the edge's weights are torch.float32"):
        mixed_edge(edge, x, probs, impl="reference")


# ----------------------------------------------------------------------------- (b) reference vs eager
def _space_cases():
    cases = []
    for name in space_names():
        ops = load_space(name).ops
        cases += [(name, ops, 1), (name, ops, 2)]
    return cases


@pytest.mark.parametrize("space,ops,stride", _space_cases())
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_reference_matches_eager(space, ops, stride, train, masked):
    c = 5
    e = MixedEdge(ops, c, stride).double()
    ref = MixedEdge(ops, c, stride).double()
    with torch.no_grad():
        e.bn.running_mean.normal_()
        e.bn.running_var.uniform_(0.5, 2)
    ref.load_state_dict(e.state_dict())
    e.train(train)
    ref.train(train)
    x = _x(c=c, h=7, w=5, masked=masked).requires_grad_()
    p = torch.softmax(torch.randn(len(ops), dtype=torch.float64), 0).requires_grad_()
    for fold in (True, False):
        y = mixed_edge(e, x, p, impl="reference", fold=fold)
        y_ref = ref.forward_eager(x, p)
        assert y.shape == y_ref.shape
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        g = torch.randn_like(y)
        params = [x, p] + list(e.parameters())
        grads = torch.autograd.grad(y, params, g)
        grads_ref = torch.autograd.grad(y_ref, [x, p] + list(ref.parameters()), g)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(e.bn, name), getattr(ref.bn, name), rtol=1e-12, atol=0)


def test_only_none_and_dispatch(monkeypatch):
    e = MixedEdge(["none"], 3, 2).double()
    x = _x(c=3, h=5)
    y = mixed_edge(e, x, torch.ones(1, dtype=torch.float64), impl="reference")
    assert y.shape == (2, 3, 3, 3) and not y.any()
    assert backend("auto", torch.device("cpu")) is R
    assert backend("auto", torch.device("cuda")) is T   # choosing needs no GPU, only the device type
    assert backend("auto", torch.device("cuda"), torch.float32) is T
    assert backend("auto", torch.device("cuda"), torch.float64) is R   # the kernels accumulate in float32
    assert backend("triton", torch.device("cuda"), torch.float64) is T   # asked for by name: given
    monkeypatch.setenv("UBNAS_KERNELS", "reference")
    assert backend("triton", torch.device("cuda")) is R
    monkeypatch.setenv("UBNAS_KERNELS", "triton")
    assert backend("reference", torch.device(DEV)) is T   # CPU: through the interpreter
    for spelling in ("true", "On", "YES"):   # as Triton itself reads TRITON_INTERPRET
        monkeypatch.setenv("TRITON_INTERPRET", spelling)
        assert backend("triton", torch.device("cpu")) is T, spelling
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    # the user already asked for the reference: the fix is the variable, not the option
    with pytest.raises(ValueError, match=r"kernels 'triton' \(set by UBNAS_KERNELS=triton\) need CUDA tensors, got "
                                         r"cpu ones \(unset UBNAS_KERNELS or set it to reference; "):
        backend("reference", torch.device("cpu"))
    monkeypatch.delenv("UBNAS_KERNELS")
    monkeypatch.delenv("TRITON_INTERPRET")   # Triton on CPU tensors without the interpreter
    with pytest.raises(ValueError, match=r"kernels 'triton' need CUDA tensors, got cpu ones \(use 'auto' or "):
        backend("triton", torch.device("cpu"))
    monkeypatch.setenv("UBNAS_KERNELS", "bogus")
    with pytest.raises(ValueError):
        backend("auto", torch.device("cpu"))
    monkeypatch.delenv("UBNAS_KERNELS")
    with pytest.raises(ValueError):
        backend("cudnn", torch.device("cpu"))


def test_setup_line_names_the_kernels_auto_runs_and_the_settings(monkeypatch):
    """A benchmark's log must tell the Triton path from a reference path forced by a stray setting."""
    from ubnas.kernels import SETUP_ENV, setup_line
    for name in SETUP_ENV:
        monkeypatch.delenv(name, raising=False)
    assert setup_line(torch.device("cuda")) == "kernels 'auto' = ubnas.kernels.triton_kernels; no UBNAS_*/TRITON_* set"
    monkeypatch.setenv("UBNAS_KERNELS", "reference")
    monkeypatch.setenv("UBNAS_DW_TILED", "1")
    assert setup_line(torch.device("cuda")) == ("kernels 'auto' = ubnas.kernels.reference; UBNAS_KERNELS=reference "
                                                "UBNAS_DW_TILED=1")


def test_env_switches_accept_clear_spellings_and_refuse_others(monkeypatch):
    """UBNAS_EDGE_GROUPS, UBNAS_AUTOTUNE, UBNAS_DW_TILED take 1/0, true/false, on/off, yes/no in any
    case (UBNAS_DW_TILED also io), UBNAS_KERNELS reference/triton; anything else raises, naming the
    variable, its value and the accepted spellings."""
    from ubnas.kernels import group_edges
    for name, read, default in [("UBNAS_EDGE_GROUPS", group_edges, True), ("UBNAS_AUTOTUNE", T.autotune, True),
                                ("UBNAS_DW_TILED", T.tiled, True)]:
        monkeypatch.delenv(name, raising=False)
        assert read() is default, name
        for value, on in [("1", True), ("true", True), ("On", True), (" YES ", True),
                          ("0", False), ("false", False), ("OFF", False), ("No", False), ("", default)]:
            monkeypatch.setenv(name, value)
            assert read() is on, (name, value)
        for value in ("2", "enabled", "tru"):
            monkeypatch.setenv(name, value)
            with pytest.raises(ValueError, match=rf"{name}='{value}'.*1, true, on, yes, 0, false, off, no"):
                read()
    monkeypatch.setenv("UBNAS_DW_TILED", "IO")
    assert T.tiled() and not T.tiled(weight=True)
    monkeypatch.setenv("UBNAS_KERNELS", " Reference ")
    assert backend("triton", torch.device("cuda")) is R
    monkeypatch.setenv("UBNAS_KERNELS", "torch")
    with pytest.raises(ValueError, match="UBNAS_KERNELS='torch'.*reference, triton"):
        backend("auto", torch.device("cpu"))


def test_supernet_set_impl_reference_matches_eager():
    from ubnas.supernet import Supernet
    net = Supernet(load_space("tiny"), (1, 8, 8), 10).double()
    twin = Supernet(load_space("tiny"), (1, 8, 8), 10).double()
    twin.load_state_dict(net.state_dict())
    twin.set_impl("reference")
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    loss, loss2 = net(x, net.sample("softmax")).square().sum(), twin(x, twin.sample("softmax")).square().sum()
    torch.testing.assert_close(loss, loss2, rtol=1e-10, atol=1e-10)
    g, g2 = torch.autograd.grad(loss, list(net.parameters())), torch.autograd.grad(loss2, list(twin.parameters()))
    for a, b in zip(g, g2):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    for (n, a), b in zip(net.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=n)


def _groups_space():
    """A normal and a reduce cell with 3 nodes (edge groups of 3, 3, 2, 1), every op family."""
    import yaml
    from ubnas.space import parse_space
    return parse_space(yaml.safe_load("""
        ubnas_space: 1
        name: groups
        nodes: 3
        ops: [max_pool_3x3, avg_pool_3x3, skip_connect, conv_3x3, sep_conv_3x3, dil_conv_5x5, none]
        stem: {kernel: 3, channels: {init: 6, step: 2, candidates: 2, min: 2, max: 12}}
        cells:
          - {channels: {init: 4, step: 2, candidates: 2, min: 2, max: 12}}
          - {reduce: true, channels: {init: 6, step: 2, candidates: 2, min: 2, max: 12}}
        """), "test")


def test_supernet_edge_groups_match_eager_with_reduce_cell():
    """A reduce cell (stride-2 groups from s0/s1, stride-1 groups after) with 3 nodes (groups of
    3, 3, 2, 1 edges): the grouped reference path equals eager, loss, gradients and buffers."""
    from ubnas.supernet import Supernet
    space = _groups_space()
    net = Supernet(space, (2, 7, 7), 5).double()
    twin = Supernet(space, (2, 7, 7), 5).double()
    twin.load_state_dict(net.state_dict())
    twin.set_impl("reference")
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    arch = net.sample("softmax")
    loss, loss2 = net(x, arch).square().sum(), twin(x, arch).square().sum()
    torch.testing.assert_close(loss, loss2, rtol=1e-10, atol=1e-10)
    # arch probs are inputs here (sampled once for both nets): compare the weights' gradients and dL/dprobs
    probs = list(arch.ops.values()) + list(arch.widths.values())
    g = torch.autograd.grad(loss, net.weight_parameters() + probs, retain_graph=True)
    g2 = torch.autograd.grad(loss2, twin.weight_parameters() + probs)
    names = [n for n, p in net.named_parameters() if any(p is q for q in net.weight_parameters())]
    for n, a, b in zip(names + ["probs"] * len(probs), g, g2):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=n)
    for (n, a), b in zip(net.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=n)


@pytest.mark.parametrize("impl", ["eager", "reference"])
def test_frozen_weights_arch_step(impl):
    """The architecture step as ubnas search runs it (weights frozen, loss.backward()) gives the
    dL/d(arch parameters) of an unfrozen eager twin, leaves every weight's .grad unset, and
    restores requires_grad, also when the block raises."""
    from ubnas.supernet import Supernet
    net = Supernet(_groups_space(), (2, 7, 7), 5).double()
    twin = Supernet(_groups_space(), (2, 7, 7), 5).double()
    twin.load_state_dict(net.state_dict())
    net.set_impl(impl)
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    g_ref = torch.autograd.grad(twin(x, twin.sample("softmax")).square().sum(), twin.arch_parameters())
    with net.frozen_weights():
        net(x, net.sample("softmax")).square().sum().backward()
    for a, b in zip(net.arch_parameters(), g_ref):
        torch.testing.assert_close(a.grad, b, rtol=1e-8, atol=1e-12)
    assert all(p.grad is None and p.requires_grad for p in net.weight_parameters())
    with pytest.raises(RuntimeError, match="inside"):
        with net.frozen_weights():
            assert not any(p.requires_grad for p in net.weight_parameters())
            raise RuntimeError("inside")
    assert all(p.requires_grad for p in net.parameters())


# ----------------------------------------------------------------------------- (c) gradcheck
TINY = ["conv_3x3", "sep_conv_3x3", "max_pool_3x3", "skip_connect", "none"]


@pytest.mark.parametrize("ops,stride,train,fold,fast,c", [
    (UBOOST, 1, True, True, True, 3), (DARTS, 2, True, False, True, 3), (UBOOST, 2, False, False, True, 3),
    (DARTS, 1, False, False, True, 3), (TINY, 1, True, True, True, 2)])
def test_gradcheck_fused(ops, stride, train, fold, fast, c):  # noqa: PLR0913
    """Random projections of the Jacobians (fast_mode); exact gradients are compared in (b)."""
    e = MixedEdge(ops, c, stride).double().train(train)
    x = _x(n=2, c=c, h=5).requires_grad_()  # no exact zeros: relu/max kinks break finite differences
    logits = torch.randn(len(ops), dtype=torch.float64, requires_grad=True)
    params = list(e.parameters())
    names = [n for n, _ in e.named_parameters()]

    def f(x, logits, *ws):
        for n, w in zip(names, ws):
            mod = e.get_submodule(n.rsplit(".", 1)[0])
            setattr(mod, n.rsplit(".", 1)[1], w)
        return mixed_edge(e, x, torch.softmax(logits, 0), impl="reference", fold=fold)

    for n in names:   # plain tensors, so gradcheck's inputs replace the parameters
        mod = e.get_submodule(n.rsplit(".", 1)[0])
        leaf = n.rsplit(".", 1)[1]
        t = getattr(mod, leaf).detach().clone().requires_grad_()
        del mod._parameters[leaf]
        setattr(mod, leaf, t)
    ws = [getattr(e.get_submodule(n.rsplit(".", 1)[0]), n.rsplit(".", 1)[1]) for n in names]
    assert len(ws) == len(params)
    assert torch.autograd.gradcheck(f, (x, logits, *ws), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("ops", [UBOOST, DARTS, ["max_pool_3x3", "skip_connect", "none"]])
def test_reference_partial_grads_match_eager(ops):
    """Only some inputs need gradients (fixed probs, frozen weights): the Function's skipped
    branches still give eager's dL/dx (and dL/dprobs where asked for)."""
    c = 4
    e = MixedEdge(ops, c, 1).double()
    ref = MixedEdge(ops, c, 1).double()
    ref.load_state_dict(e.state_dict())
    for p in list(e.parameters()) + list(ref.parameters()):
        p.requires_grad_(False)
    x = _x(c=c, h=6).requires_grad_()
    for probs_grad in (False, True):
        p = torch.softmax(torch.randn(len(ops), dtype=torch.float64), 0).requires_grad_(probs_grad)
        wrt = [x, p] if probs_grad else [x]
        g = torch.randn_like(x)
        grads = torch.autograd.grad(mixed_edge(e, x, p, impl="reference"), wrt, g)
        grads_ref = torch.autograd.grad(ref.forward_eager(x, p), wrt, g)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


class _Spy:
    """A kernel backend that records the names of its functions as they run."""

    def __init__(self, K):
        self.K, self.calls = K, []

    def __getattr__(self, name):
        fn = getattr(self.K, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            return fn(*args, **kwargs)
        return call


@pytest.mark.parametrize("wrt", ["x", "weights and probs"])
def test_backward_computes_only_what_is_asked_for(wrt, monkeypatch):
    """Without dL/dx, FusedEdge.backward returns dx None and runs neither the pool/skip nor the
    depthwise dL/dx kernel; without weight or probs gradients it recomputes neither relu(x) nor
    the depthwise pass and runs no dL/dw kernel.  The gradients asked for equal eager's."""
    from ubnas.kernels.fused import fused_mixed_edge
    ops = ["conv_3x3", "dil_conv_5x5", "max_pool_3x3", "skip_connect", "none"]   # full conv, depthwise, pool, skip
    e = MixedEdge(ops, 3, 1).double()
    ref = copy.deepcopy(e)
    for q in list(e.parameters()) + list(ref.parameters()):
        q.requires_grad_(wrt != "x")
    x = _x(c=3, h=5).requires_grad_(wrt == "x")
    p = torch.softmax(torch.randn(len(ops), dtype=torch.float64), 0).requires_grad_(wrt != "x")
    K = _Spy(R)
    y = fused_mixed_edge(e, x, p, K, fold=True)
    g = torch.randn_like(y)
    relus = []
    with monkeypatch.context() as m, torch.no_grad():   # FusedEdge.backward, as autograd calls it
        m.setattr(torch, "relu", lambda t, _relu=torch.relu: relus.append(1) or _relu(t))
        del K.calls[:]
        dx = y.grad_fn.apply(g)[0]
    if wrt == "x":
        assert not {"dw_forward", "dw_backward_weight"} & set(K.calls) and not relus, (K.calls, len(relus))
    else:
        assert dx is None and not {"pool_skip_backward", "dw_backward_input"} & set(K.calls), K.calls
    inputs, ref_inputs = ([x], [x]) if wrt == "x" else ([p] + list(e.parameters()), [p] + list(ref.parameters()))
    for a, b in zip(torch.autograd.grad(y, inputs, g), torch.autograd.grad(ref.forward_eager(x, p), ref_inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_double_backward_raises():
    """FusedEdge's backward is closed form and not itself differentiable (once_differentiable):
    differentiating the gradient again raises instead of returning wrong numbers.  autograd.grad
    finds x and p unreachable from the gradient; backward() names once_differentiable."""
    e = MixedEdge(TINY, 2, 1).double()
    x = _x(c=2, h=4).requires_grad_()
    p = torch.softmax(torch.randn(len(TINY), dtype=torch.float64), 0).requires_grad_()
    gx, gp = torch.autograd.grad(mixed_edge(e, x, p, impl="reference").square().sum(), [x, p], create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gx.square().sum() + gp.sum(), [x, p])
    with pytest.raises(RuntimeError, match="once_differentiable"):
        (gx.square().sum() + gp.sum()).backward()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 2, 1, 1), (3, 4, 8, 9)])
def test_max_pool3_equals_max_pool2d(stride, shape):
    x = torch.randn(shape, dtype=torch.float64)
    x[0, 0, 0, 0] = float("nan")   # NaN propagates as in max_pool2d
    x[-1, -1] = 0.0                # ties
    assert torch.equal(R.max_pool3(x, stride).nan_to_num(7.0),
                       torch.nn.functional.max_pool2d(x, 3, stride, 1).nan_to_num(7.0))
