"""ubnas.target_fit: the exported network within a hard latency target.

Latencies are checked with hwmodels.estimate on the network build_network makes of the spec
(the exact model, not the search's cost function); the floor against every combination of ops.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from hwmodels import estimate, load_accelerator
from ubnas.build import build_network
from ubnas.search import SearchConfig, cost_function
from ubnas.space import load_space
from ubnas.spec import derive_spec
from ubnas.supernet import ArchSample, Supernet, derived_ops
from ubnas.target_fit import fit_to_target

pytestmark = pytest.mark.usefixtures("one_thread")

ACC = load_accelerator("uboost")


def _net(seed):
    torch.manual_seed(seed)
    net = Supernet(load_space("tiny"), (1, 8, 8), 10).double()
    with torch.no_grad():
        for logits in net.op_logits.values():
            logits.copy_(2 * torch.randn_like(logits))
        for w in net.widths.values():
            w.logits.copy_(2 * torch.randn_like(w.logits))
    return net


def _cost_of(net):
    return cost_function(net, ACC, SearchConfig())


def _exact_seconds(net, ops=None, widths=None):
    spec = derive_spec(net, None, ops, widths)
    return estimate(build_network(spec), spec.input_shape, ACC).seconds


def _derived(net):
    return ({t: derived_ops(logits, net.space.ops, net.space.nodes) for t, logits in net.op_logits.items()},
            {n: w.chosen() for n, w in net.widths.items()})


def test_a_network_within_the_target_is_exported_as_derived():
    net = _net(0)
    derived = _exact_seconds(net)
    fit = fit_to_target(net, _cost_of(net), derived)
    assert fit.changes == [] and fit.seconds == pytest.approx(derived, rel=1e-9)
    assert derive_spec(net, None, fit.ops, fit.widths).to_dict() == derive_spec(net).to_dict()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_reaches_the_target_and_keeps_no_change_it_does_not_need(seed):
    """A target between the floor and the derived network: the export is within it (exact model),
    and undoing any one of its changes puts it back above."""
    net = _net(seed)
    fit0 = fit_to_target(net, _cost_of(net), float("inf"))
    derived = _exact_seconds(net)
    target = fit0.floor_seconds + 0.4 * (derived - fit0.floor_seconds)
    fit = fit_to_target(net, _cost_of(net), target)
    assert fit.changes and fit.derived_seconds == pytest.approx(derived, rel=1e-9)
    exact = _exact_seconds(net, fit.ops, fit.widths)
    assert exact <= target and exact == pytest.approx(fit.seconds, rel=1e-9)
    ops, widths = _derived(net)
    undone = 0
    for t, rows in fit.ops.items():
        for edge in range(rows.shape[0]):
            if not torch.equal(rows[edge], ops[t][edge]):
                back = {**fit.ops, t: fit.ops[t].clone()}
                back[t][edge] = ops[t][edge]
                assert _exact_seconds(net, back, fit.widths) > target
                undone += 1
    for name, channels in fit.widths.items():
        if channels != widths[name]:
            assert _exact_seconds(net, fit.ops, {**fit.widths, name: widths[name]}) > target
            undone += 1
    assert undone == len(fit.changes)


def test_the_change_of_least_probability_is_taken():
    """Every kept edge prefers conv_3x3 by 3 nats, edge 0 only by 0.001 over max_pool_3x3, and the
    widths are certain: a target that edge 0 as a pool meets is met by exactly that change."""
    net = _net(0)
    names = net.space.ops
    with torch.no_grad():
        logits = net.op_logits["normal"]
        logits.zero_()
        logits[:, names.index("conv_3x3")] = 3.0
        logits[0, names.index("max_pool_3x3")] = 3.0 - 1e-3
        for w in net.widths.values():
            w.logits.zero_()
            w.logits[1] = 5.0
    ops, widths = _derived(net)
    assert ops["normal"][0, names.index("conv_3x3")] == 1
    pooled = {"normal": ops["normal"].clone()}
    pooled["normal"][0] = F.one_hot(torch.tensor(names.index("max_pool_3x3")), len(names))
    target = _exact_seconds(net, pooled, widths) * (1 + 1e-9)
    assert target < _exact_seconds(net)
    fit = fit_to_target(net, _cost_of(net), target)
    assert fit.changes == ["normal cell, node 0 from state 0: conv_3x3 -> max_pool_3x3"]
    assert torch.equal(fit.ops["normal"], pooled["normal"]) and fit.widths == widths


def test_an_unreachable_target_leaves_the_network_and_its_floor_is_the_cheapest():
    """Under the floor nothing changes; the floor is the least latency over every combination of
    ops on the kept edges with every width at its window's bottom."""
    net = _net(1)
    cost_of = _cost_of(net)
    ops, widths = _derived(net)
    kept = [(t, e) for t, rows in ops.items() for e in range(rows.shape[0]) if rows[e].any()]
    choices = [k for k, name in enumerate(net.space.ops) if name != "none"]
    bottoms = {n: F.one_hot(torch.tensor(0), w.count).double() for n, w in net.widths.items()}
    least = float("inf")
    with torch.no_grad():
        for combo in itertools.product(choices, repeat=len(kept)):
            trial = {t: torch.zeros_like(rows) for t, rows in ops.items()}
            for (t, e), k in zip(kept, combo):
                trial[t][e, k] = 1.0
            least = min(least, float(cost_of(ArchSample(trial, bottoms, True))["seconds"]))
    fit = fit_to_target(net, cost_of, 0.5 * least)
    assert fit.floor_seconds == pytest.approx(least, rel=1e-12)
    assert fit.changes == [] and fit.widths == widths
    assert all(torch.equal(fit.ops[t], ops[t]) for t in ops)


def _additive(net, lost, saved):
    """Kept edges 0-3 of the tiny cell prefer conv_3x3, by ``lost[e]`` nats over max_pool_3x3
    (every other op by 50), and a cost function in which turning edge e into a pool saves
    ``saved[e]`` seconds of 100 (widths cost nothing)."""
    names = net.space.ops
    conv, pool = names.index("conv_3x3"), names.index("max_pool_3x3")
    with torch.no_grad():
        logits = net.op_logits["normal"]
        logits.fill_(-50.0)
        logits[4] = 0.0   # the weakest of node 1's three inputs: not kept
        for e in range(4):
            logits[e, conv], logits[e, pool] = 0.0, -lost[e]

    def cost_of(arch):
        rows = arch.ops["normal"]
        return {"seconds": 100.0 - sum(saved[e] * float(rows[e, pool]) for e in range(4)) + 0 * rows.sum()}
    return cost_of


@pytest.mark.parametrize("lost, saved, target, pooled", [
    # a change that reaches the target alone beats a better ratio that overshoots
    ((1.0, 0.5, 9.0, 9.0), (10.0, 1.0, 0.0, 0.0), 99.0, {1}),
    # no single change suffices: the best ratio first, the last one the least probable that suffices
    ((0.6, 0.6, 0.5, 0.5), (6.0, 6.0, 3.0, 3.0), 88.0, {0, 1}),
    # the first change (best ratio) becomes unnecessary once the others are made: undone
    ((0.1, 0.5, 1.2, 9.0), (2.0, 5.0, 6.0, 0.0), 90.0, {1, 2}),
])
def test_the_greedy_fit_finds_the_most_probable_subset_on_additive_costs(lost, saved, target, pooled):
    """On these instances the fit is the brute-force optimum: the set of edges turned into pools
    that reaches the target losing the least log-probability."""
    net = _net(0)
    cost_of = _additive(net, lost, saved)
    feasible = [set(s) for r in range(5) for s in itertools.combinations(range(4), r)
                if 100.0 - sum(saved[e] for e in s) <= target]
    best = min(feasible, key=lambda s: sum(lost[e] for e in s))
    assert best == pooled
    fit = fit_to_target(net, cost_of, target)
    got = {e for e in range(4) if fit.ops["normal"][e, net.space.ops.index("max_pool_3x3")] == 1}
    assert got == pooled and fit.seconds <= target
    assert len(fit.changes) == len(pooled)
