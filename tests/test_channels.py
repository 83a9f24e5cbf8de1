"""Channel windows: masks and soft widths vs brute force; reallocation keeps the function."""
import pytest
import torch

from ubnas.channels import ChannelAllocator, Width, plan_move, resize_dim
from ubnas.space import ChannelSpec, load_space
from ubnas.supernet import Supernet


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
        assert logit == pytest.approx(old.get(width, old[nearest]))   # kept, or a copy of the edge
        assert avg == pytest.approx(old_avg.get(width, old_avg[nearest]))
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
        assert logit == max(old[below], old[above])   # a width between two old ones: the likelier's
    for check in range(1, 6):
        assert alloc.step([], check) == []


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
    results = []
    for _ in range(2):
        net = _net()
        alloc = ChannelAllocator(dict(net.widths.items()), net.channel_bindings(), seed=3)
        alloc.step([], 0, {n: ("grow", w.lo + w.step, w.step, w.count) for n, w in net.widths.items()})
        results.append(torch.cat([p.detach().flatten() for p in net.weight_parameters()]))
    assert torch.equal(results[0], results[1])
