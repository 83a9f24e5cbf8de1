"""The hard latency target bounds the network the search would export.

Supernet.derived_sample is costed against hwmodels.estimate on the network derive_spec builds;
search.target_seconds has the derived value and the relaxed supernet's gradient, and the arch step's
hinge (and the ratio the dual ascent reads) uses it.  ubnas.target_fit (the export within the
target) is checked with hwmodels.estimate of the built spec, its floor against every combination
of ops, and on additive instances against the brute-force optimum.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from hwmodels import estimate, load_accelerator
from ubnas.build import build_network
from ubnas.cost import supernet_cost
from ubnas.search import SearchConfig, cost_function, make_optimizers, search_step, target_seconds
from ubnas.space import load_space
from ubnas.spec import derive_spec
from ubnas.supernet import ArchSample, Supernet
from ubnas.target_fit import fit_to_target

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny convolutions: one thread is faster

ACC = load_accelerator("uboost")


def _random_net(seed):
    torch.manual_seed(seed)
    space = load_space("tiny")
    net = Supernet(space, (1, 8, 8), 10).double()
    with torch.no_grad():
        for logits in net.op_logits.values():
            logits.copy_(2 * torch.randn_like(logits))
        for w in net.widths.values():
            w.logits.copy_(2 * torch.randn_like(w.logits))
    return net


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("op_stage", [False, True])
def test_derived_sample_costs_the_network_that_derive_spec_exports(seed, op_stage):
    """Exact (straight-through) cost of derived_sample == hwmodels.estimate of build_network(derive_spec),
    with the widths at their most probable candidate, or forced to the window top (the op stage)."""
    net = _random_net(seed)
    if op_stage:
        for w in net.widths.values():
            w.forced = w.top
    if not op_stage:   # random logits: not every width at its window's bottom (the zero-logit argmax)
        assert any(w.chosen() != w.lo for w in net.widths.values())
    for batch in (1, 4):
        with torch.no_grad():
            got = supernet_cost(net, net.derived_sample(), ACC, "systolic", "straight_through", batch=batch)
        want = estimate(build_network(derive_spec(net)), (1, 8, 8), ACC, batch=batch)
        assert float(got["seconds"]) == pytest.approx(want.seconds, rel=1e-9)
        assert float(got["utilization"]) == pytest.approx(want.utilization, rel=1e-9)


def test_with_the_sigmoid_surrogate_the_target_bounds_the_exact_latency(tmp_path):
    """The target was held against the sigmoid staircase's latency of the derived network (several
    % off on a one-hot network), so a search could export a network above the target without a
    note, or change one already below it."""
    from ubnas.search import export_spec
    acc = load_accelerator("edge_32x32")
    for seed in range(4):
        net = _random_net(seed)
        cfg = SearchConfig(kernels="eager", surrogate="sigmoid", temperature=8.0, hw="edge_32x32")
        cost_of = cost_function(net, acc, cfg)
        exact = estimate(build_network(derive_spec(net)), (1, 8, 8), acc).seconds
        smooth = float(cost_of(net.derived_sample())["seconds"])
        assert abs(smooth / exact - 1) > 0.01, seed   # the two differ: the checks below tell them apart
        got = target_seconds(cost_of(net.sample("softmax"))["seconds"], net, cost_of)
        assert float(got.detach()) == pytest.approx(exact, rel=1e-9)
        # a target between the two figures: met exactly -> exported unchanged; not met -> fitted below it
        target_us = 1e6 * (exact + smooth) / 2
        cfg = SearchConfig(kernels="eager", surrogate="sigmoid", temperature=8.0, hw="edge_32x32",
                           target_latency_us=target_us, epochs=1)
        out = tmp_path / f"s{seed}"
        out.mkdir()
        from ubnas.spec import load_spec
        spec = load_spec(export_spec(net, cfg, acc, [], cost_of, "digits", out))
        exported = spec.provenance["exact_cost"]["latency_us"]
        if exact * 1e6 <= target_us:   # already within (seeds 0, 1, 3): nothing to change
            assert "target_fit" not in spec.provenance and exported == pytest.approx(1e6 * exact), seed
        else:                          # above it (seed 2), though the staircase says below: fitted
            assert "target_fit" in spec.provenance and exported <= target_us, (seed, exported, target_us)


def test_target_seconds_is_the_derived_value_with_the_relaxed_gradient():
    net = _random_net(6)
    cfg = SearchConfig(kernels="eager")
    cost_of = cost_function(net, ACC, cfg)
    relaxed = cost_of(net.sample("softmax"))["seconds"]
    got = target_seconds(relaxed, net, cost_of)
    derived = float(cost_of(net.derived_sample())["seconds"])
    assert float(got.detach()) == pytest.approx(derived, rel=1e-12)
    # a caller's own one-argument cost_of (the public signature before 'surrogate=') still works
    own = target_seconds(relaxed, net, lambda arch: cost_of(arch))
    assert float(own.detach()) == pytest.approx(derived, rel=1e-12)
    assert abs(float(relaxed.detach()) / derived - 1) > 0.2   # the check above tells the two apart
    params = net.arch_parameters()
    grads = torch.autograd.grad(got, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(cost_of(net.sample("softmax"))["seconds"], params, allow_unused=True)
    for g, w in zip(grads, want):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-12, atol=0)
    assert any(w is not None and w.abs().max() > 0 for w in want)


def test_the_arch_step_hinges_on_the_derived_latency():
    """mu * relu(derived / T - 1) with the relaxed gradient, the arch gradient by hand: a target under
    the derived latency adds mu / T * dlatency_relaxed; one between derived and relaxed latency adds it
    only when the derived latency is the larger."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    xb, yb = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)
    xv, yv = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (6,), generator=g)
    net0 = _random_net(6)
    with torch.no_grad():
        cost_of0 = cost_function(net0, ACC, SearchConfig(kernels="eager"))
        derived = float(cost_of0(net0.derived_sample())["seconds"])
        relaxed = float(cost_of0(net0.sample("softmax"))["seconds"])
    assert abs(relaxed / derived - 1) > 0.2
    mu, tau = 2.0, 1.0
    # between the two, only the derived latency decides (the relaxed one would decide the other way)
    for target_s, active in ((0.5 * derived, True), (0.5 * (derived + relaxed), derived > relaxed)):
        net = _random_net(6)
        net.load_state_dict(net0.state_dict())
        cfg = SearchConfig(kernels="eager", relaxation="softmax", target_latency_us=target_s * 1e6, arch_lr=0.0,
                           beta_utilization=0.7)
        cost_of = cost_function(net, ACC, cfg)
        w_opt, a_opt = make_optimizers(net, cfg)
        taken = search_step(net, (xb, yb), (xv, yv), w_opt, a_opt, cost_of, cfg, tau, 1.0, mu,
                            torch.Generator().manual_seed(0))
        got = [p.grad.clone() for p in net.arch_parameters()]
        # by hand at the stepped weights (arch_lr 0: the logits did not move)
        arch = net.sample("softmax", tau)
        ce = F.cross_entropy(net(xv, arch), yv)
        cost = cost_of(arch)
        # the target replaces the lambda term; the utilization term stays
        hw = cost["seconds"] * (mu / target_s if active else 0.0) - 0.7 * cost["utilization"]
        want = torch.autograd.grad(ce + hw, net.arch_parameters(), allow_unused=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b, rtol=1e-7, atol=1e-12)
        assert float(taken.latency_ratio.detach()) == pytest.approx(derived / target_s, rel=1e-9)


def test_an_exported_network_above_the_target_is_fitted_or_gets_a_note(tmp_path, capsys):
    """An op step and a channel step with mu held at 0 (so the target does not change the run): a target just under the
    loose run's network is met by the export's fit (ubnas.target_fit), which a note names; one under
    every derivable network leaves the network as derived, with a note giving the floor; none above it."""
    from ubnas.search import run_search
    from ubnas.spec import load_spec

    def run(name, target_us):
        result = run_search(SearchConfig(out=str(tmp_path / name), epochs=2, max_steps_per_epoch=1, batch_size=16,
                                         target_latency_us=target_us, dual_lr=0.0), progress=False)
        return load_spec(result.spec_path), capsys.readouterr().out

    spec, out = run("loose", 1e6)
    found = spec.provenance["smooth_cost_discrete"]["latency_us"]
    assert "above --target-latency-us" not in out and "target_fit" not in spec.provenance
    assert spec.provenance["target_met"] is True
    target = round(0.99 * found, 3)
    spec, out = run("lagging", target)
    fitted = spec.provenance["smooth_cost_discrete"]["latency_us"]
    exact = estimate(build_network(spec), spec.input_shape, ACC).seconds * 1e6
    assert fitted <= target and exact == pytest.approx(fitted, rel=1e-9)
    assert spec.provenance["target_met"] is True
    assert spec.provenance["target_fit"]["derived_latency_us"] == pytest.approx(found, rel=1e-12)
    assert spec.provenance["target_fit"]["latency_us"] == pytest.approx(fitted, rel=1e-12)
    changes = spec.provenance["target_fit"]["changes"]
    assert (f"note: the derived network ({found:.2f} us under the systolic cost model) is above "
            f"--target-latency-us {target:g} at the search's end; arch.yaml takes "
            f"{len(changes)} change(s) of little probability that bring it to {fitted:.2f} us "
            f"(ubnas.target_fit): {'; '.join(changes)}") in out
    spec, out = run("unreachable", 1e-3)
    assert spec.provenance["smooth_cost_discrete"]["latency_us"] == found and "target_fit" not in spec.provenance
    said = out.split("which no network derivable from the final logits and channel windows reaches: with every "
                     "kept edge at its cheapest op and every searched width at its window's bottom it costs ")
    assert len(said) == 2
    floor = float(said[1].split(" us")[0])
    assert 1e-3 < floor < found
    # on record for `ubnas report`, not only in the search's output
    assert spec.provenance["target_met"] is False
    from ubnas.report import load_run
    assert any(n.startswith("the search did not meet its --target-latency-us 0.001 (under its systolic cost "
                            "model, batch 1)") for n in load_run(tmp_path / "unreachable").notes)
    assert not any("did not meet" in n for n in load_run(tmp_path / "lagging").notes)


@pytest.mark.parametrize("surrogate, hw, target", [("straight_through", "uboost", 50),
                                                ("sigmoid", "edge_16x16", 17), ("sigmoid", "edge_16x16", None)])
def test_a_search_on_another_cost_model_says_what_the_target_bounded(tmp_path, capsys, surrogate, hw, target):
    """`ubnas search --cost-model uboost`: the summary's exact latency is the systolic model's, so a
    note gives the uboost model's latency of the exported network (what the target bounded), as
    hwmodels costs that network in U-Boost's equations; under --surrogate sigmoid too, whose smooth
    staircase the note used to give (18 % above here, reading as a missed target), though the target
    bounds the exact ceilings."""
    from hwmodels import network_cost
    from hwmodels.estimate import trace_layers
    from ubnas.cli import main
    from ubnas.spec import load_spec
    out = tmp_path / "run"
    assert main(["search", "--out", str(out), "--epochs", "2", "--max-steps-per-epoch", "2", "--batch-size", "32",
                 "--cost-model", "uboost", "--surrogate", surrogate, "--hw", hw, "--quiet"]
                + (["--target-latency-us", str(target)] if target else [])) == 0
    printed = capsys.readouterr().out
    spec = load_spec(out / "arch.yaml")
    uboost = network_cost(trace_layers(build_network(spec), spec.input_shape), load_accelerator(hw), "uboost")
    bound = f" (what --target-latency-us {target} bounds)" if target else ""
    assert (f"note: the search optimised the uboost cost model, which puts this network at "
            f"{uboost.seconds * 1e6:.2f} us{bound}\n") in printed, printed
    assert "(uboost cost model, smooth)" in printed and ", systolic model)" in printed
    smooth = spec.provenance["smooth_cost_discrete"]["latency_us"]
    assert (smooth / (uboost.seconds * 1e6) > 1.01) == (surrogate == "sigmoid")   # the case the note got wrong


def test_a_resumed_search_summarises_with_the_cost_model_it_ran_on(tmp_path, capsys):
    """`ubnas search --out RUN --resume` alone takes the checkpoint's options: the summary and the
    note must name its cost model and target, not the defaults of the resuming command line."""
    from ubnas.cli import main
    from ubnas.search import run_search
    out = tmp_path / "run"
    run_search(SearchConfig(out=str(out), epochs=2, max_steps_per_epoch=2, batch_size=32, cost_model="uboost",
                            target_latency_us=17.0), progress=False, stop_after_epoch=1)
    capsys.readouterr()
    assert main(["search", "--out", str(out), "--resume", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "(uboost cost model, smooth)" in printed, printed
    assert "note: the search optimised the uboost cost model" in printed
    assert "(what --target-latency-us 17 bounds)" in printed


def test_a_staged_search_well_under_a_target_that_bound_its_op_stage_gets_a_note():
    """The note names the op stage's top widths only when the target bound that stage and the
    export is under half the target; never for joint searches or a target that never bound."""
    from ubnas.search import staged_target_note

    def rows(mu, derived):
        return [{"stage": "op", "mu": mu, "derived_latency_us": derived},
                {"stage": "channel", "mu": 0.0, "derived_latency_us": 3.0}]

    staged = SearchConfig(target_latency_us=9.0)
    note = staged_target_note(staged, rows(0.0, 9.3), 2.9)
    assert note is not None and "(2.90 us) is well under --target-latency-us 9" in note and "--stage joint" in note
    assert staged_target_note(staged, rows(0.4, 8.0), 2.9) is not None           # mu rose inside the epoch
    assert staged_target_note(staged, rows(0.0, 8.0), 2.9) is None               # the target never bound
    assert staged_target_note(staged, rows(0.4, 9.3), 4.6) is None               # over half the target
    assert staged_target_note(SearchConfig(target_latency_us=9.0, stage="joint"), rows(0.4, 9.3), 2.9) is None
    assert staged_target_note(SearchConfig(), rows(0.4, 9.3), 2.9) is None       # no target


def _cost_of(net):
    return cost_function(net, ACC, SearchConfig())


def _exact_seconds(net, ops=None, widths=None):
    spec = derive_spec(net, None, ops, widths)
    return estimate(build_network(spec), spec.input_shape, ACC).seconds


def _derived(net):
    return net.derived_sample().ops, {n: w.chosen() for n, w in net.widths.items()}


def test_a_network_within_the_target_is_exported_as_derived():
    net = _random_net(0)
    derived = _exact_seconds(net)
    fit = fit_to_target(net, _cost_of(net), derived * (1 + 1e-9))
    assert fit.changes == [] and fit.seconds == pytest.approx(derived, rel=1e-9)
    assert derive_spec(net, None, fit.ops, fit.widths).to_dict() == derive_spec(net).to_dict()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fit_reaches_the_target_and_keeps_no_change_it_does_not_need(seed):
    """A target between the floor and the derived network: the export is within it (exact model),
    and undoing any one of its changes puts it back above."""
    net = _random_net(seed)
    fit0 = fit_to_target(net, _cost_of(net), 0.0)
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
    net = _random_net(0)
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
    net = _random_net(1)
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
    # all four taken (10 s saved, 8 needed); edge 0 or edge 1 could go, not both: the one that gave
    # up more probability is undone first (edge 1, 0.7 nats; undoing edge 0 first would keep 1, 2, 3)
    ((0.1, 0.7, 1.5, 1.2), (1.0, 2.0, 4.0, 3.0), 92.0, {0, 2, 3}),
])
def test_the_greedy_fit_finds_the_most_probable_subset_on_additive_costs(lost, saved, target, pooled):
    """On these instances the fit is the brute-force optimum: the set of edges turned into pools
    that reaches the target losing the least log-probability."""
    net = _random_net(0)
    cost_of = _additive(net, lost, saved)
    feasible = [set(s) for r in range(5) for s in itertools.combinations(range(4), r)
                if 100.0 - sum(saved[e] for e in s) <= target]
    best = min(feasible, key=lambda s: sum(lost[e] for e in s))
    assert best == pooled
    fit = fit_to_target(net, cost_of, target)
    got = {e for e in range(4) if fit.ops["normal"][e, net.space.ops.index("max_pool_3x3")] == 1}
    assert got == pooled and fit.seconds == 100.0 - sum(saved[e] for e in pooled) <= target
    assert len(fit.changes) == len(pooled)


def test_a_target_only_two_changes_together_reach_falls_back_on_the_floor_then_undoes():
    """A cost in which lowering cell0's width saves nothing unless edge 0 is a pool too, and the
    other way round (a ceiling that only falls when both change): no single change lowers the
    latency, so the fit starts from the floor and undoes what the target does not need."""
    net = _random_net(0)
    names = net.space.ops
    conv, pool = names.index("conv_3x3"), names.index("max_pool_3x3")
    with torch.no_grad():
        logits = net.op_logits["normal"]
        logits.fill_(-50.0)
        logits[4] = 0.0   # node 1's weakest input: not kept
        logits[:4, conv] = 0.0
        for w in net.widths.values():
            w.logits.zero_()
            w.logits[1] = 5.0   # every width at its window's second candidate

    def cost_of(arch):
        both = float(arch.ops["normal"][0, pool]) * float(arch.widths["cell0"][0])
        return {"seconds": torch.tensor(100.0 - 50.0 * both, dtype=torch.float64)}
    widths = {n: w.candidates[1] for n, w in net.widths.items()}
    fit = fit_to_target(net, cost_of, 60.0)
    assert fit.floor_seconds == 50.0 and fit.seconds == 50.0
    assert fit.widths == {**widths, "cell0": net.widths["cell0"].candidates[0]}
    assert [int(row.argmax()) for row in fit.ops["normal"][:4]] == [pool, conv, conv, conv]
    assert len(fit.changes) == 2


def test_widths_forced_at_export_are_kept_and_stay_forced():
    """A run that ended in the op stage exports every window's top: the fit changes only ops, and
    leaves Width.forced as it found it."""
    net = _random_net(2)
    for w in net.widths.values():   # never searched: logits untouched, lowering a width would lose nothing
        w.forced = w.top
        w.logits.data.zero_()
    tops = {n: w.top for n, w in net.widths.items()}
    target = 0.999 * _exact_seconds(net)   # a free width change would meet it
    fit = fit_to_target(net, _cost_of(net), target)
    assert fit.changes and fit.widths == tops and all("width" not in c for c in fit.changes)
    assert {n: w.forced for n, w in net.widths.items()} == tops
    assert _exact_seconds(net, fit.ops, fit.widths) <= target
