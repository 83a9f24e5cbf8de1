"""Channel windows: masks and soft widths vs brute force; reallocation keeps the function."""
import pytest
import torch

from ubnas.channels import GAINED_LOGIT_OFFSET, ChannelAllocator, Width, plan_move, resize_dim
from ubnas.space import ChannelSpec, load_space
from ubnas.supernet import Supernet

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny convolutions: one thread is faster


def make_width(init=16, step=8, candidates=4, lo=8, hi=64):
    return Width("w", ChannelSpec(init, step, candidates, lo, hi))


def test_mask_and_soft_width_match_brute_force():
    torch.manual_seed(0)
    w = make_width()
    for _ in range(5):
        p = torch.softmax(torch.randn(w.count, dtype=torch.float64), 0)
        expected = torch.zeros(w.top, dtype=torch.float64)
        for j, width in enumerate(w.candidates):          # M = sum_j p_j m_j, m_j = first w_j ones
            for c in range(width):
                expected[c] += p[j]
        assert torch.allclose(w.mask(p), expected)
        assert torch.isclose(w.soft_width(p), sum(p[j] * wj for j, wj in enumerate(w.candidates)))


def test_forced_width_is_a_hard_mask():
    w = make_width()
    w.forced = 24
    m = w.mask(torch.full((w.count,), 0.25))
    assert m.tolist() == [1.0] * 24 + [0.0] * (w.top - 24)


def test_resize_dim_keeps_each_block_prefix():
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3 * 4)  # 3 blocks of 4 along dim 1
    grown = resize_dim(t, 1, 4, 6, 3, "zero")
    assert grown.shape == (2, 18)
    for b in range(3):
        assert torch.equal(grown[:, b * 6:b * 6 + 4], t[:, b * 4:b * 4 + 4])
        assert torch.equal(grown[:, b * 6 + 4:b * 6 + 6], torch.zeros(2, 2))
    shrunk = resize_dim(t, 1, 4, 2, 3, "zero")
    for b in range(3):
        assert torch.equal(shrunk[:, b * 2:b * 2 + 2], t[:, b * 4:b * 4 + 2])


def test_plan_moves_respect_bounds():
    w = make_width(init=8, lo=8, hi=40)       # window 8..32, top at 32
    with torch.no_grad():
        w.logits.copy_(torch.tensor([5.0, 0, 0, 0]))
    assert plan_move(w) is None                # bottom already at min
    with torch.no_grad():
        w.logits.copy_(torch.tensor([0, 0, 0, 5.0]))
    assert plan_move(w)[0] == "grow"           # 40 <= max
    w.lo = 16                                  # window 16..40: top at max
    assert plan_move(w) is None
    with torch.no_grad():
        w.logits.copy_(torch.tensor([0, 6.0, 0, 0]))
    event, lo, step, count = plan_move(w)
    assert event == "narrow" and step == 4 and lo >= w.min and lo + (count - 1) * step <= w.max


def _with_logits(width, values):
    with torch.no_grad():
        width.logits.copy_(torch.tensor(values, dtype=torch.float32))
    return width


def test_windows_do_not_move_without_mass_on_an_edge():
    w = make_width(init=24, lo=8, hi=64)                                   # 24..48, room both ways
    assert plan_move(_with_logits(w, [0, 0, 0, 0])) is None               # uniform: no evidence
    assert plan_move(_with_logits(w, [1e-6, 0, 0, 0])) is None            # a favourite by noise
    assert plan_move(_with_logits(w, [0, 0, 0, 1e-6])) is None
    assert plan_move(_with_logits(w, [0.7, 0.7, 0, 0])) is None           # tied with its neighbour
    assert plan_move(_with_logits(w, [0.7, 0, 0, 0]))[0] == "shift_down"  # p = 0.41 >= 1.5 / 4
    assert plan_move(_with_logits(w, [0, 0, 0, 0.7]))[0] == "grow"


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("edge", ["bottom", "top"])
def test_a_move_does_not_trigger_the_next_without_new_evidence(count, edge):
    logits = [0.0] * count
    logits[0 if edge == "bottom" else -1] = 3.0
    w = _with_logits(Width("w", ChannelSpec(64, 8, count, 8, 256)), logits)
    opt = torch.optim.Adam([w.logits], lr=0.1)
    w.logits.grad = torch.linspace(-1.0, 1.0, count) * (1 if edge == "bottom" else -1)
    opt.step()
    old = dict(zip(w.candidates, w.logits.tolist()))
    old_avg = dict(zip(w.candidates, opt.state[w.logits]["exp_avg"].tolist()))
    alloc = ChannelAllocator({"w": w}, [])
    assert [e["event"] for e in alloc.step([opt], 0)] == ["shift_down" if edge == "bottom" else "grow"]
    nearest = min(old) if edge == "bottom" else max(old)     # the edge the new candidate grew from
    for width, logit, avg in zip(w.candidates, w.logits.tolist(), opt.state[w.logits]["exp_avg"].tolist()):
        if width in old:   # kept
            assert logit == old[width] and avg == old_avg[width]
        else:              # a copy of the edge, just below it
            assert logit == pytest.approx(old[nearest] - GAINED_LOGIT_OFFSET, abs=1e-6)
            assert avg == old_avg[nearest]
    for check in range(1, 6):                                  # no gradient between checks: no move
        assert alloc.step([opt], check) == [], (count, edge, check)


def test_a_narrowing_does_not_narrow_again_without_new_evidence():
    w = _with_logits(Width("w", ChannelSpec(64, 8, 4, 8, 256)), [0.0, 3.0, 0.5, 0.0])   # peak 72, p = 0.84
    old = dict(zip(w.candidates, w.logits.tolist()))
    alloc = ChannelAllocator({"w": w}, [])
    assert [e["event"] for e in alloc.step([], 0)] == ["narrow"]
    assert w.step == 4 and 72 in w.candidates
    for width, logit in zip(w.candidates, w.logits.tolist()):
        below, above = max(c for c in old if c <= width), min(c for c in old if c >= width)
        # a width between two old ones: just below the likelier's
        expected = old[width] if width in old else max(old[below], old[above]) - GAINED_LOGIT_OFFSET
        assert logit == pytest.approx(expected, abs=1e-6)
    for check in range(1, 6):
        assert alloc.step([], check) == []


@pytest.mark.parametrize("logits, event", [([3.0, 0.0, 0.0, 0.0], "shift_down"), ([0.0, 3.0, 0.5, 0.0], "narrow"),
                                           ([0.0, 0.5, 3.0, 0.0], "narrow"), ([0.0, 0.0, 0.0, 3.0], "grow"),
                                           ([0.2, 0.1, 0.0, 1.5], "grow"), ([1.5, 0.0, 0.1, 0.2], "shift_down")])
def test_a_move_keeps_the_exported_width(logits, event):
    """The width a spec would export (the most probable candidate) is the one it was before the
    move: a candidate no step has trained must not become the choice by a tie."""
    w = _with_logits(Width("w", ChannelSpec(64, 8, 4, 8, 256)), logits)
    before = w.candidates[max(range(4), key=lambda j: logits[j])]   # the favourite, by hand
    alloc = ChannelAllocator({"w": w}, [])
    assert [e["event"] for e in alloc.step([], 0)] == [event]
    assert w.chosen() == before, (w.candidates, w.logits.tolist())


@pytest.mark.parametrize("step, steps", [(3, [1]), (6, [3, 1]), (5, [2, 1]), (8, [4, 2, 1])])
def test_a_peaked_window_narrows_from_an_odd_step_too(step, steps):
    """Only even steps narrowed: a space with step 3, 5 or 7 never refined its peak, and 6 stopped at 3."""
    w = Width("w", ChannelSpec(4 * step, step, 3, 1, 64 * step))
    alloc = ChannelAllocator({"w": w}, [])
    peak = w.candidates[1]
    for expected in steps:
        _with_logits(w, [0.0, 6.0, 0.0])
        assert [e["event"] for e in alloc.step([], 0)] == ["narrow"]
        assert w.step == expected and w.candidates.index(peak) == 1
    _with_logits(w, [0.0, 6.0, 0.0])
    assert alloc.step([], 0) == []   # step 1: the minimum


def test_a_window_of_one_candidate_never_moves():
    w = Width("w", ChannelSpec(64, 8, 1, 8, 256))
    assert plan_move(w) is None                               # p = 1 always: not evidence
    assert ChannelAllocator({"w": w}, []).step([], 0) == []


@pytest.mark.parametrize("init, lo, hi, best", [(24, 21, 200, 1), (24, 8, 75, 5), (40, 33, 91, 3), (24, 24, 72, 1)])
def test_narrowing_keeps_the_peak_width_within_bounds(init, lo, hi, best):
    w = Width("w", ChannelSpec(init, 8, 7, lo, hi))
    logits = [0.0] * 7
    logits[best] = 6.0
    event, new_lo, step, count = plan_move(_with_logits(w, logits))
    peak = init + best * 8
    new = [new_lo + j * step for j in range(count)]
    assert (event, step, count) == ("narrow", 4, 7)
    assert peak in new and lo <= new[0] and new[-1] <= hi
    # as centred as the bounds allow: the brute-force best of every window through the peak
    fits = [a for a in range(7) if lo <= peak - a * 4 and peak + (6 - a) * 4 <= hi]
    assert new.index(peak) == min(fits, key=lambda a: abs(a - 3))


def _net():
    torch.manual_seed(0)
    return Supernet(load_space("tiny"), (1, 8, 8), 10)


def test_reallocation_keeps_the_function_of_allocated_channels():
    net = _net().eval()
    x = torch.randn(3, 1, 8, 8)
    for w in net.widths.values():
        w.forced = w.top
    before = net(x)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9)
    net.train()
    torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2])).backward()
    opt.step()                                  # momentum buffers exist now
    net.eval()
    before = net(x)
    alloc = ChannelAllocator(dict(net.widths.items()), net.channel_bindings())
    moves = {n: ("grow", w.lo + w.step, w.step, w.count) for n, w in net.widths.items()}
    alloc.step([opt], 0, moves)
    for w in net.widths.values():
        assert w.top == 96
        w.forced = w.top                        # all new channels switched on
    assert torch.allclose(net(x), before, atol=1e-6)
    # every parameter and its momentum buffer agree in shape, and a step still runs
    for p in net.weight_parameters():
        assert opt.state[p]["momentum_buffer"].shape == p.shape
    net.train()
    torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2])).backward()
    opt.step()


def test_shift_down_frees_top_filters_and_keeps_lower_widths():
    net = _net().eval()
    x = torch.randn(2, 1, 8, 8)
    for w in net.widths.values():
        w.forced = 64
    before = net(x)
    params_before = sum(p.numel() for p in net.weight_parameters())
    alloc = ChannelAllocator(dict(net.widths.items()), net.channel_bindings())
    alloc.step([], 0, {n: ("shift_down", w.lo - w.step, w.step, w.count) for n, w in net.widths.items()})
    assert all(w.top == 80 for w in net.widths.values())
    assert sum(p.numel() for p in net.weight_parameters()) < params_before
    assert torch.allclose(net(x), before, atol=1e-6)


def test_reallocation_is_deterministic_for_a_seed():
    """New filters come from the allocator's seeded generator alone: the same seed gives the same
    network whatever the global RNG did before the move, another seed another network."""
    results = {}
    for seed, global_seed in ((3, 11), (3, 12), (4, 11)):
        net = _net()
        alloc = ChannelAllocator(dict(net.widths.items()), net.channel_bindings(), seed=seed)
        torch.manual_seed(global_seed)   # the global stream differs between the runs of seed 3
        alloc.step([], 0, {n: ("grow", w.lo + w.step, w.step, w.count) for n, w in net.widths.items()})
        results[seed, global_seed] = torch.cat([p.detach().flatten() for p in net.weight_parameters()])
    assert torch.equal(results[3, 11], results[3, 12])
    assert not torch.equal(results[3, 11], results[4, 11])


# ---- bounds off the candidate grid ---------------------------------------------------------

@pytest.mark.parametrize("lo, hi, grows, shifts", [
    (12, 44, False, False),   # window 16..40: 48 > 44 and 8 < 12 although 40 < 44 and 16 > 12
    (9, 47, False, False),
    (8, 48, True, True),      # on the grid: both moves fit exactly
    (15, 41, False, False),
])
def test_moves_respect_bounds_off_the_candidate_grid(lo, hi, grows, shifts):
    w = make_width(init=16, step=8, candidates=4, lo=lo, hi=hi)    # 16, 24, 32, 40
    top_move = plan_move(_with_logits(w, [0, 0, 0, 5.0]))
    bottom_move = plan_move(_with_logits(w, [5.0, 0, 0, 0]))
    assert (top_move is not None) == grows and (bottom_move is not None) == shifts
    if grows:
        assert top_move == ("grow", 24, 8, 4)
    if shifts:
        assert bottom_move == ("shift_down", 8, 8, 4)


@pytest.mark.parametrize("lo, hi, final_top, final_lo", [(13, 61, 56, 16), (3, 100, 96, 8), (16, 199, 192, 16)])
def test_windows_pushed_to_an_edge_stop_at_the_last_width_within_bounds(lo, hi, final_top, final_lo):
    """Mass piled on the top (then the bottom) step after step: the window walks until the next
    step would cross max (min), by hand: 16 + 8k <= hi, 16 - 8k >= lo."""
    w = Width("w", ChannelSpec(16, 8, 4, lo, hi))   # 16..40
    alloc = ChannelAllocator({"w": w}, [])
    for check in range(40):
        _with_logits(w, [0, 0, 0, 5.0])
        alloc.step([], check)
        assert lo <= w.lo and w.top <= hi
    assert w.top == final_top
    for check in range(40):
        _with_logits(w, [5.0, 0, 0, 0])
        alloc.step([], check)
        assert lo <= w.lo and w.top <= hi
    assert w.lo == final_lo


# ---- how new slices start ------------------------------------------------------------------

def test_new_filters_start_random_with_the_tensors_scale():
    g = torch.Generator().manual_seed(0)
    t = 0.5 * torch.randn(64, 32, generator=g)
    grown = resize_dim(t, 0, 64, 96, 1, "random", torch.Generator().manual_seed(1))
    assert torch.equal(grown[:64], t)
    new = grown[64:]
    assert (new != 0).all()                                  # no dead (zero) filters
    assert float(new.std()) == pytest.approx(float(t.std()), rel=0.1)
    assert abs(float(new.mean())) < 0.05
    assert not torch.equal(new[:16], new[16:])               # independent draws, not copies


def _grow_all(net, optimizers=()):
    alloc = ChannelAllocator(dict(net.widths.items()), net.channel_bindings(), seed=0)
    alloc.step(list(optimizers), 0, {n: ("grow", w.lo + w.step, w.step, w.count) for n, w in net.widths.items()})
    for w in net.widths.values():
        assert w.top == 96
        w.forced = 96


def test_grown_channels_are_not_dead():
    """New filters initialised and the consumers' new input slices zero: the first backward
    reaches every new input slice (a zero filter feeding a zero slice would stay zero forever)."""
    net = _net().train()
    consumers = [(b.module, b.attr, b.dim, b.blocks) for b in net.channel_bindings()
                 if b.init == "zero" and b.attr.endswith("weight")]
    assert len(consumers) > 10
    _grow_all(net)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    for module, attr, dim, blocks in consumers:
        grad = getattr(module, attr).grad
        assert grad is not None
        for blk in range(blocks):
            new = grad.narrow(dim, blk * 96 + 88, 8)
            assert new.abs().amax() > 0, (type(module).__name__, attr, blk)


def _old_positions(dims, shape, old_w, new_w):
    """By hand, per bound (dim, blocks): the new indices of the old entries (each block's first
    old_w), and a mask of the entries that are new (in a grown slice along any bound dim)."""
    kept_idx, fresh = {}, torch.zeros(shape, dtype=torch.bool)
    for dim, blocks in dims:
        kept_idx[dim] = torch.tensor([blk * new_w + c for blk in range(blocks) for c in range(old_w)])
        along = torch.ones(shape[dim], dtype=torch.bool)
        along[kept_idx[dim]] = False
        view = [1] * len(shape)
        view[dim] = shape[dim]
        fresh |= along.view(view).expand(shape)
    return kept_idx, fresh


@pytest.mark.parametrize("name", ["stem", "cell0", "cell1"])
def test_momentum_buffers_of_new_slices_start_at_zero(name):
    """SGD momentum of a grown parameter: old entries kept where they were, every new entry 0."""
    net = _net().train()
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(3, 1, 8, 8)
    torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2])).backward()
    opt.step()
    dims = {}   # parameter -> its (dim, blocks) bound to this width (a cell's convs: both dims)
    for b in net.channel_bindings():
        p = getattr(b.module, b.attr)
        if b.width == name and isinstance(p, torch.nn.Parameter):
            dims.setdefault((b.module, b.attr), []).append((b.dim, b.blocks))
    assert any(len(d) == 2 for d in dims.values()) == (name != "stem")
    before = {key: opt.state[getattr(*key)]["momentum_buffer"].clone() for key in dims}
    assert all(buf.abs().amax() > 0 for buf in before.values())
    w = net.widths[name]
    ChannelAllocator(dict(net.widths.items()), net.channel_bindings()).step(
        [opt], 0, {name: ("grow", w.lo + w.step, w.step, w.count)})
    assert w.top == 96
    for key, bound in dims.items():
        param = getattr(*key)
        buf = opt.state[param]["momentum_buffer"]
        assert buf.shape == param.shape
        kept_idx, fresh = _old_positions(bound, buf.shape, 88, 96)
        kept = buf
        for dim, idx in kept_idx.items():
            kept = kept.index_select(dim, idx)
        assert torch.equal(kept, before[key]), key[1]
        assert fresh.any() and torch.equal(buf[fresh], torch.zeros_like(buf[fresh])), key[1]


def test_new_batchnorm_channels_start_as_a_fresh_batchnorm():
    """Running mean 0 and var 1, scale 1 and shift 0 (torch's own BatchNorm init); old statistics kept."""
    net = _net().train()
    with torch.no_grad():
        net(torch.randn(4, 1, 8, 8) * 3 + 1)      # the old channels' statistics move off 0 / 1
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    before = {id(m): {k: v.detach().clone() for k, v in m.state_dict().items() if v.dim() == 1} for m in bns}
    assert all(not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bns)
    _grow_all(net)
    fresh = torch.nn.BatchNorm2d(8)
    for m in bns:
        assert m.num_features == 96
        for key, old in before[id(m)].items():
            new = getattr(m, key).detach()
            assert new.shape == (96,), key
            assert torch.equal(new[:88], old), key
            assert torch.equal(new[88:], getattr(fresh, key).detach()), (key, m)


def test_resized_modules_report_their_new_sizes():
    """After a move, nn.Conv2d/nn.Linear still printed (and handed hwmodels.estimate) their old
    channel counts: only BatchNorm's num_features followed the resized tensors."""
    net = _net()
    alloc = ChannelAllocator(dict(net.widths.items()), net.channel_bindings())
    alloc.step([], 0, {n: ("grow", w.lo + w.step, w.step, w.count) for n, w in net.widths.items()})
    checked = 0
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            expected = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        elif isinstance(module, torch.nn.Linear):
            expected = (module.out_features, module.in_features)
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            expected = (module.num_features,)
            assert module.running_mean.shape == expected, name
            if module.weight is None:
                continue
        else:
            continue
        assert tuple(module.weight.shape) == expected, (name, module)
        checked += 1
    assert checked >= 3   # the stem, its batch norm and the classifier at least
