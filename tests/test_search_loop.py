"""The search loop's mechanics against independent references.

search_step: the weight step on the weight batch with its gradient clipped to grad_clip, the
architecture step on the validation batch; enter_stage: widths fixed at the window top in the
op stage; Supernet.sample: softmax(logits / tau); run_search: tau0 * tau_decay ** epoch and the
cosine weight-lr schedule, resume with a hard latency target (mu kept), stage in provenance.
"""
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

import ubnas.search
from hwmodels import load_accelerator
from ubnas.search import SearchConfig, cost_function, enter_stage, make_optimizers, run_search, search_step
from ubnas.space import load_space
from ubnas.supernet import ArchSample, Supernet

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny convolutions: one thread is faster


def _net(seed=0):
    torch.manual_seed(seed)
    return Supernet(load_space("tiny"), (1, 8, 8), 10).double()


def _batches(n=6):
    g = torch.Generator().manual_seed(123)
    xb = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    yb = torch.randint(0, 10, (n,), generator=g)
    xv = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64) + 0.5
    yv = (yb + 1 + torch.randint(0, 9, (n,), generator=g)) % 10   # every label differs from yb's
    return (xb, yb), (xv, yv)


def _step_setup(**overrides):
    cfg = SearchConfig(relaxation="softmax", kernels="eager", **overrides)   # softmax: no noise
    net = _net()
    cost_of = cost_function(net, load_accelerator(cfg.hw), cfg)
    w_opt, a_opt = make_optimizers(net, cfg)
    return cfg, net, cost_of, w_opt, a_opt


def test_the_architecture_step_uses_the_validation_batch():
    """dL_arch/dalpha at the stepped weights and the pre-step logits: CE on (xv, yv) plus the
    hardware term, recomputed by hand; the weight batch would give other gradients."""
    cfg, net, cost_of, w_opt, a_opt = _step_setup(lambda_latency=0.3, beta_utilization=0.2)
    (xb, yb), (xv, yv) = _batches()
    tau, latency_ref = 0.7, 5e-5
    alphas = [p.detach().clone() for p in net.arch_parameters()]
    taken = search_step(net, (xb, yb), (xv, yv), w_opt, a_opt, cost_of, cfg, tau, latency_ref, 0.0,
                        torch.Generator().manual_seed(0))
    got = [p.grad.detach().clone() for p in net.arch_parameters()]
    # the architecture step froze the weights: they are the stepped ones; put the logits back
    with torch.no_grad():
        for p, a in zip(net.arch_parameters(), alphas):
            p.copy_(a)

    def arch_loss(x, y):
        arch = net.sample("softmax", tau)
        cost = cost_of(arch)
        ce = F.cross_entropy(net(x, arch), y)
        return ce, ce + 0.3 * cost["seconds"] / latency_ref - 0.2 * cost["utilization"]

    ce_v, loss_v = arch_loss(xv, yv)
    assert float(taken.val_loss.detach()) == pytest.approx(float(ce_v.detach()), rel=1e-10)
    want = torch.autograd.grad(loss_v, net.arch_parameters())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-12)
    # the weight batch's gradient is far from it (so the check above can tell the batches apart)
    _, loss_b = arch_loss(xb, yb)
    wrong = torch.autograd.grad(loss_b, net.op_logits["normal"])[0]
    assert (wrong - want[0]).abs().max() > 1e-3 * want[0].abs().max()


def test_the_weight_step_is_sgd_on_the_weight_batch_with_the_gradient_clipped():
    """First SGD step (momentum buffer = gradient, no weight decay): dW = -lr * g * clip / ||g||,
    g the CE gradient on (xb, yb) under the pre-step softmax sample, computed here beforehand."""
    lr, clip = 0.1, 1e-3
    cfg, net, cost_of, w_opt, a_opt = _step_setup(weight_lr=lr, grad_clip=clip, weight_decay=0.0)
    (xb, yb), (xv, yv) = _batches()
    tau = 0.7
    weights = net.weight_parameters()
    w0 = [p.detach().clone() for p in weights]
    loss = F.cross_entropy(net(xb, net.sample("softmax", tau)), yb)
    g = [torch.zeros_like(p) if d is None else d
         for p, d in zip(weights, torch.autograd.grad(loss, weights, allow_unused=True))]
    norm = math.sqrt(sum(float((d * d).sum()) for d in g))
    assert norm > 100 * clip                      # the clip is active
    search_step(net, (xb, yb), (xv, yv), w_opt, a_opt, cost_of, cfg, tau, 5e-5, 0.0,
                torch.Generator().manual_seed(0))
    step_norm = 0.0
    for p, before, d in zip(weights, w0, g):
        delta = p.detach() - before
        step_norm += float((delta * delta).sum())
        torch.testing.assert_close(delta, -lr * clip / norm * d, rtol=1e-5, atol=1e-12)
    assert math.sqrt(step_norm) == pytest.approx(lr * clip, rel=1e-4)


def test_op_stage_fixes_every_width_at_its_window_top():
    net = _net()
    tops = {name: max(w.candidates) for name, w in net.widths.items()}
    assert set(tops.values()) == {88}             # tiny: 64, 72, 80, 88
    assert enter_stage(net, "op") is False
    for name, w in net.widths.items():
        assert w.forced == 88, name
        p = torch.softmax(torch.tensor([3.0, 0.0, -1.0, 0.5], dtype=torch.float64), 0)
        assert torch.equal(w.mask(p), torch.ones(88, dtype=torch.float64))   # every filter on
        assert float(w.soft_width(p)) == 88.0
    # in the op stage the width logits get no gradient (the widths are not searched); the ops do
    arch = net.sample("softmax")
    (xb, yb), _ = _batches()
    cost = cost_function(net, load_accelerator("uboost"), SearchConfig())(arch)
    (F.cross_entropy(net(xb, arch), yb) + cost["seconds"] * 1e4).backward()
    for w in net.widths.values():
        assert w.logits.grad is None or not w.logits.grad.any(), w.name
    assert net.op_logits["normal"].grad.abs().sum() > 0
    for stage, hard in (("channel", True), ("joint", False), ("op", False), ("joint", False)):
        assert enter_stage(net, stage) is hard
        assert all(w.forced == (88 if stage == "op" else None) for w in net.widths.values()), stage


def test_sample_divides_the_logits_by_tau():
    net = _net()
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    for tau in (1.0, 0.25, 3.0):
        arch = net.sample("softmax", tau)
        for logits, got in [(net.op_logits["normal"], arch.ops["normal"])] + \
                [(w.logits, arch.widths[n]) for n, w in net.widths.items()]:
            e = torch.exp(logits.detach().double() / tau)
            torch.testing.assert_close(got, e / e.sum(-1, keepdim=True), rtol=1e-12, atol=1e-15)
    # Gumbel: the same noise at another tau; log p_1 = z - logsumexp(z), so p_tau = softmax(log p_1 / tau)
    one = net.sample("gumbel", 1.0, torch.Generator().manual_seed(5))
    for tau in (0.25, 3.0):
        hot = net.sample("gumbel", tau, torch.Generator().manual_seed(5))
        torch.testing.assert_close(hot.ops["normal"], torch.softmax(one.ops["normal"].log() / tau, -1),
                                   rtol=1e-9, atol=1e-12)
        for n in net.widths:
            torch.testing.assert_close(hot.widths[n], torch.softmax(one.widths[n].log() / tau, -1),
                                       rtol=1e-9, atol=1e-12)


def test_tau_and_weight_lr_follow_their_schedules(tmp_path, monkeypatch):
    """What each step runs with: tau = tau0 * decay ** epoch, lr = lr0 * (1 + cos(pi * e / E)) / 2."""
    seen = []
    real = ubnas.search.search_step

    def spy(net, batch, val_batch, w_opt, a_opt, cost_of, cfg, tau, *args, **kwargs):
        seen.append((tau, [g["lr"] for g in w_opt.param_groups]))
        return real(net, batch, val_batch, w_opt, a_opt, cost_of, cfg, tau, *args, **kwargs)

    monkeypatch.setattr(ubnas.search, "search_step", spy)
    run_search(SearchConfig(epochs=4, max_steps_per_epoch=1, batch_size=8, tau0=2.0, tau_decay=0.5,
                            weight_lr=0.08, kernels="eager", stage="joint", out=str(tmp_path / "run")),
               progress=False)
    assert [tau for tau, _ in seen] == pytest.approx([2.0, 1.0, 0.5, 0.25])
    cosine = [1.0, 0.5 + 0.25 * math.sqrt(2), 0.5, 0.5 - 0.25 * math.sqrt(2)]   # (1 + cos(pi e / 4)) / 2
    for (_, lrs), factor in zip(seen, cosine):
        assert lrs and all(lr == pytest.approx(0.08 * factor, rel=1e-12) for lr in lrs)


def test_resume_with_a_latency_target_equals_an_uninterrupted_run(tmp_path):
    """mu (the dual variable) is part of the trajectory: a resumed run must continue from it."""
    space = load_space("tiny")
    net = Supernet(space, (1, 8, 8), 10)
    base = SearchConfig(kernels="eager")
    # every edge 'none' and every width at its bottom: what no architecture of the space undercuts
    floor = ArchSample({t: F.one_hot(torch.full((space.edges_per_cell,), space.ops.index("none")),
                                     len(space.ops)).double() for t in net.op_logits},
                       {n: F.one_hot(torch.tensor(0), w.count).double() for n, w in net.widths.items()})
    with torch.no_grad():
        initial = float(cost_function(net, load_accelerator(base.hw), base)(floor)["seconds"])

    def cfg(name):   # a target below every network: violated at every step
        return SearchConfig(epochs=3, max_steps_per_epoch=3, batch_size=16, stage="joint", arch_lr=0.05,
                            target_latency_us=0.5 * initial * 1e6, kernels="eager", out=str(tmp_path / name))

    full = run_search(cfg("full"), progress=False)
    part = run_search(cfg("part"), progress=False, stop_after_epoch=2)
    assert part.spec_path is None and part.history[-1]["mu"] > 0   # the target was violated
    resumed = run_search(cfg("part"), resume=True, progress=False)
    mus = [row["mu"] for row in full.history]
    assert 0 < mus[0] < mus[1] < mus[2]                            # mu moves in every epoch
    assert [row["mu"] for row in resumed.history] == mus
    assert [row["latency_us"] for row in resumed.history] == [row["latency_us"] for row in full.history]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert a["mu"] == b["mu"] == mus[-1] and a["windows"] == b["windows"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    spec_a = yaml.safe_load(full.spec_path.read_text())
    spec_b = yaml.safe_load(resumed.spec_path.read_text())
    assert spec_a["cells"] == spec_b["cells"] and spec_a["stem"] == spec_b["stem"]
    for spec in (spec_a, spec_b):   # the spec records the stage searched and the target
        assert spec["provenance"]["stage"] == "joint"
        assert spec["provenance"]["target_latency_us"] == pytest.approx(0.5 * initial * 1e6)
        assert spec["provenance"]["lambda_latency"] is None   # replaced by the target


def test_a_run_stopped_before_its_last_log_write_resumes_with_the_whole_log(tmp_path, monkeypatch):
    """The last epoch's checkpoint was written, its search_log.csv row was not (interrupted in
    between): --resume has no epoch left to run and used to export with the log an epoch short."""
    import csv
    cfg = SearchConfig(epochs=2, max_steps_per_epoch=2, batch_size=16, kernels="eager", out=str(tmp_path / "run"))
    write_log = ubnas.search._write_log

    def interrupted(path, history):
        if len(history) == 2:
            raise KeyboardInterrupt
        write_log(path, history)
    monkeypatch.setattr(ubnas.search, "_write_log", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, progress=False)
    monkeypatch.setattr(ubnas.search, "_write_log", write_log)
    log = tmp_path / "run" / "search_log.csv"
    assert [row["epoch"] for row in csv.DictReader(log.open())] == ["1"]   # as the interruption left it
    resumed = run_search(cfg, resume=True, progress=False)
    assert resumed.spec_path is not None
    rows = list(csv.DictReader(log.open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert float(rows[1]["latency_us"]) == pytest.approx(resumed.history[1]["latency_us"], rel=1e-12)


def _spy_refs(monkeypatch):
    """Replace search_step by a spy; returns the list it fills with, per step, (hard_ops, the
    latency_ref the step got, the softmax cost before the step in seconds)."""
    seen = []
    real = ubnas.search.search_step

    def spy(net, batch, val_batch, w_opt, a_opt, cost_of, cfg, tau, latency_ref, mu, generator, hard_ops):
        with torch.no_grad():
            now = float(cost_of(net.sample("softmax", hard_ops=hard_ops))["seconds"])
        seen.append((hard_ops, latency_ref, now))
        return real(net, batch, val_batch, w_opt, a_opt, cost_of, cfg, tau, latency_ref, mu, generator, hard_ops)

    monkeypatch.setattr(ubnas.search, "search_step", spy)
    return seen


def _staged(tmp_path, name):
    return SearchConfig(epochs=4, max_steps_per_epoch=2, batch_size=16, stage="staged", arch_lr=0.1,
                        realloc_every=1, kernels="eager", out=str(tmp_path / name))


def test_lambda_is_relative_to_the_latency_each_stage_starts_at(tmp_path, monkeypatch):
    """lambda * latency / latency_ref: latency_ref is the network's latency at the first step of
    each stage (op stage: widths at the window top; channel stage: the chosen ops alone), so the
    hardware term starts at lambda in both stages (one reference taken at initialisation left the
    channel stage's at 0.32 of it in the default run)."""
    seen = _spy_refs(monkeypatch)
    result = run_search(_staged(tmp_path, "run"), progress=False)
    assert [hard for hard, _, _ in seen] == [False] * 4 + [True] * 4
    op_start, channel_start = seen[0][2], seen[4][2]
    assert channel_start < 0.5 * op_start   # the two stages' reference latencies are far apart
    for i, (hard, ref, _) in enumerate(seen):
        assert ref == (channel_start if hard else op_start), i
    refs = yaml.safe_load(result.spec_path.read_text())["provenance"]["latency_ref_us"]
    assert refs == {"op": pytest.approx(op_start * 1e6, rel=1e-12),
                    "channel": pytest.approx(channel_start * 1e6, rel=1e-12)}


def test_resume_across_the_stage_change_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Stopped after the op stage, the resumed run takes the channel stage's reference as an
    uninterrupted one does; stopped within the channel stage, it keeps the one it took."""
    seen = _spy_refs(monkeypatch)
    full = run_search(_staged(tmp_path, "full"), progress=False)
    for stop in (2, 3):
        name = f"stop{stop}"
        run_search(_staged(tmp_path, name), progress=False, stop_after_epoch=stop)
        resumed = run_search(_staged(tmp_path, name), resume=True, progress=False)
        assert [row["latency_us"] for row in resumed.history] == [row["latency_us"] for row in full.history]
        a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
        b = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        assert a["latency_refs"] == b["latency_refs"] and a["windows"] == b["windows"]
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (stop, key)
    refs = [ref for _, ref, _ in seen]
    assert refs[8:16] == refs[:8] and refs[16:24] == refs[:8]   # full, stop 2 + resume, stop 3 + resume


def test_a_checkpoint_with_one_reference_keeps_it_for_every_stage(tmp_path, monkeypatch):
    """Checkpoints written before each stage took its own reference hold ``latency_ref``: a
    resumed run goes on with that one reference, as the run that wrote it would have."""
    cfg = _staged(tmp_path, "old")
    run_search(cfg, progress=False, stop_after_epoch=1)
    path = tmp_path / "old" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["latency_ref"] = 0.75 * ckpt.pop("latency_refs")["op"]
    torch.save(ckpt, path)
    seen = _spy_refs(monkeypatch)
    run_search(cfg, resume=True, progress=False)
    assert [hard for hard, _, _ in seen] == [False] * 2 + [True] * 4
    assert all(ref == ckpt["latency_ref"] for _, ref, _ in seen)


def test_a_resume_on_other_data_is_refused_and_an_older_checkpoint_is_not_checked(tmp_path):
    """--data-dir may change on a resume (the data moved), the data may not: the search would go on
    with other splits and step counts.  The checkpoint's data fingerprint is compared; one written
    before fingerprints were saved resumes unchecked."""
    from ubnas.data import DataError, load_dataset
    cfg = _staged(tmp_path, "run")
    run_search(cfg, progress=False, stop_after_epoch=1)
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["data"] == load_dataset(cfg.data).fingerprint()
    other = dict(ckpt, data={**ckpt["data"], "labels_sha256": "0" * 16})   # same sizes, other labels
    torch.save(other, path)
    with pytest.raises(DataError, match=r"checkpoint.pt was written on other data: 1438 training / 359 test "
                                        r"images of 1x8x8 \(labels 0000000000000000\); digits now has 1438"):
        run_search(cfg, resume=True, progress=False)
    torch.save({k: v for k, v in ckpt.items() if k != "data"}, path)
    result = run_search(cfg, resume=True, progress=False)
    assert [row["epoch"] for row in result.history] == list(range(1, cfg.epochs + 1))
