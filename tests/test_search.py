"""Ops, spaces, supernet cost gradients, resume equivalence and bad-input errors."""
import dataclasses
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hwmodels import load_accelerator
from ubnas.cost import COST_MODELS, supernet_cost
from ubnas.data import load_dataset, search_split
from ubnas.ops import OPS, DiscreteOp
from ubnas.search import SearchConfig, run_search
from ubnas.space import SPACE_DIR, SpaceError, load_space, space_names
from ubnas.supernet import MixedEdge, Supernet


def _conv_by_taps(x, w, stride, dilation, groups=1):
    """Zero-padded conv (same padding) as a sum over taps of shifted inputs (numpy, float64)."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    pad = dilation * (k - 1) // 2
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, w.shape[0], ho, wo))
    for a in range(k):
        for b in range(k):
            patch = xp[:, :, a * dilation:a * dilation + stride * (ho - 1) + 1:stride,
                       b * dilation:b * dilation + stride * (wo - 1) + 1:stride]
            if groups == 1:
                out += np.einsum("oi,nihw->nohw", w[:, :, a, b], patch)
            else:   # depthwise
                out += w[:, 0, a, b][None, :, None, None] * patch
    return out


def _pool_by_windows(x, kind, stride):
    """3x3 pool, padding 1 (max over in-bounds taps; avg excludes the padding)."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, (h - 1) // stride + 1, (w - 1) // stride + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            win = x[:, :, max(i * stride - 1, 0):i * stride + 2, max(j * stride - 1, 0):j * stride + 2]
            out[:, :, i, j] = win.max((2, 3)) if kind == "max" else win.mean((2, 3))
    return out


def _op_by_hand(name, x, stride, params):
    """What op ``name`` computes on an edge (ops.py's docstrings), from its weights: numpy float64."""
    op = OPS[name]
    if op.family == "skip" and stride > 1:   # resampled by a 1x1 stride-2 conv
        op = OPS["conv_1x1"]
    if op.family == "zero":
        return np.zeros((x.shape[0], x.shape[1], (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1))
    if op.family == "skip":
        return x
    if op.family == "pool":
        return _pool_by_windows(x, op.pool, stride)
    r = np.maximum(x, 0)
    if op.separable:
        z = _conv_by_taps(_conv_by_taps(r, params["dw_weight"], stride, op.dilation, groups=r.shape[1]),
                          params["pw_weight"], 1, 1)
    else:
        z = _conv_by_taps(r, params["weight"], stride, op.dilation)
    mean, var = z.mean((0, 2, 3), keepdims=True), z.var((0, 2, 3), keepdims=True)
    return (z - mean) / np.sqrt(var + 1e-5)   # training-mode BN, no affine


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_forward_backward(name, stride):
    """The search form (a one-op MixedEdge at p=1) and the exported form (DiscreteOp, same weights)
    both compute the op as written out by hand, and their gradients match finite differences."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64, requires_grad=True)
    edge = MixedEdge([name], 6, stride).double()
    discrete = DiscreteOp(name, 6, 6, stride).double()
    if hasattr(discrete, "branch"):
        discrete.branch.load_state_dict(edge.branches[name].state_dict())
    params = {k: v.detach().numpy() for k, v in edge.named_parameters(prefix="")}
    params = {k.split(".")[-1]: v for k, v in params.items()}
    want = _op_by_hand(name, x.detach().numpy(), stride, params)
    probs = torch.ones(1, dtype=torch.float64, requires_grad=True)
    np.testing.assert_allclose(edge(x, probs).detach().numpy(), want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(discrete(x).detach().numpy(), want, rtol=1e-9, atol=1e-9)
    if name == "none":
        return
    assert torch.autograd.gradcheck(lambda x_, p_: edge(x_, p_), (x, probs))
    assert torch.autograd.gradcheck(discrete, (x,))
    discrete(x).square().sum().backward()
    assert x.grad.abs().sum() > 0   # the output depends on x


def test_load_spaces_reads_a_comma_list():
    from ubnas.space import load_spaces
    spaces = load_spaces(" tiny,,uboost_cifar,")   # empty items (a trailing comma) are not spaces
    assert list(spaces) == ["tiny", "uboost_cifar"] and spaces["tiny"].name == "tiny"
    for bad, said in [(",", "expected a comma list"), ("tiny,nope", "nope"), ("n" * 300, "cannot read")]:
        with pytest.raises(SpaceError, match=said):
            load_spaces(bad)


@pytest.mark.parametrize("space", space_names())
def test_every_space_forward_backward(space):
    torch.manual_seed(0)
    net = Supernet(load_space(space), (3, 8, 8), 10)
    arch = net.sample("gumbel", 1.0, torch.Generator().manual_seed(0))
    loss = torch.nn.functional.cross_entropy(net(torch.randn(2, 3, 8, 8), arch), torch.tensor([1, 2]))
    cost = supernet_cost(net, arch, load_accelerator("uboost"))
    (loss + cost["seconds"] * 1e4 - cost["utilization"]).backward()
    for p in net.arch_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("model", COST_MODELS)
def test_cost_gradients_have_the_expected_sign(model):
    """More probability on conv_3x3 (vs skip) or on a wider candidate raises latency."""
    torch.manual_seed(0)
    net = Supernet(load_space("tiny"), (1, 8, 8), 10)
    ops = net.space.ops
    arch = net.sample("softmax")
    cost = supernet_cost(net, arch, load_accelerator("edge_16x16"), model, surrogate="sigmoid")
    cost["seconds"].backward()
    g = net.op_logits["normal"].grad
    assert (g[:, ops.index("conv_3x3")] > g[:, ops.index("skip_connect")]).all()
    assert (g[:, ops.index("conv_3x3")] > 0).all()
    for w in net.widths.values():
        assert w.logits.grad[-1] > w.logits.grad[0], w.name
    assert all(torch.isfinite(p.grad).all() for p in net.arch_parameters())


def _small(tmp_path, name, **overrides):
    cfg = dict(epochs=3, max_steps_per_epoch=2, batch_size=32, realloc_every=1, out=str(tmp_path / name),
               beta_utilization=1.0, lambda_latency=0.5)
    cfg.update(overrides)
    return SearchConfig(**cfg)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    # joint stage and a fast architecture step: windows move both before and after the interruption
    fast = dict(stage="joint", arch_lr=0.3)
    full = run_search(_small(tmp_path, "full", **fast), progress=False)
    part = run_search(_small(tmp_path, "part", **fast), progress=False, stop_after_epoch=2)
    assert part.spec_path is None and len(part.history) == 2
    resumed = run_search(_small(tmp_path, "part", **fast), resume=True, progress=False)
    steps = [e["step"] for e in full.realloc_log]
    assert min(steps) <= 4 < max(steps)   # 2 steps per epoch: the stop falls after step 4
    assert full.realloc_log == resumed.realloc_log
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert a["windows"] == b["windows"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert full.spec_path is not None and resumed.spec_path is not None
    spec_a = yaml.safe_load(full.spec_path.read_text())
    spec_b = yaml.safe_load(resumed.spec_path.read_text())
    assert spec_a["cells"] == spec_b["cells"] and spec_a["stem"] == spec_b["stem"]
    from hwmodels.accelerator import from_dict   # the spec carries the whole accelerator searched on
    assert from_dict(spec_a["provenance"]["accelerator_config"]) == load_accelerator(_small(tmp_path, "x").hw)


def test_resume_of_a_finished_run_keeps_its_arch_yaml_and_exports_a_missing_one(tmp_path, capsys):
    """A scheduler passes --resume every time: on a finished run it re-derived arch.yaml and wrote it
    over the user's hand edit.  A run killed after its last checkpoint but before the export still
    exports on --resume, the same network as the finished run's."""
    done = run_search(_small(tmp_path, "run", epochs=1), progress=False)
    edited = done.spec_path.read_text().replace("channels: ", "channels: 1", 1) + "# mine\n"
    done.spec_path.write_text(edited)
    capsys.readouterr()
    again = run_search(_small(tmp_path, "run", epochs=1), resume=True, progress=False)
    assert again.spec_path == done.spec_path and done.spec_path.read_text() == edited
    assert "the run had already finished" in capsys.readouterr().out
    ours = yaml.safe_load(edited)
    done.spec_path.unlink()   # as if killed between the last checkpoint and the export
    again = run_search(_small(tmp_path, "run", epochs=1), resume=True, progress=False)
    exported = yaml.safe_load(again.spec_path.read_text())
    assert exported["cells"] == ours["cells"] and exported["stem"]["channels"] != ours["stem"]["channels"]


@pytest.mark.parametrize("stage, epochs", [("op", 2), ("staged", 1)])
def test_a_run_that_ends_in_the_op_stage_exports_the_widths_it_trained(tmp_path, stage, epochs, capsys):
    # op stage: every width is held at its window's top and its logits get no gradient
    result = run_search(_small(tmp_path, "op", stage=stage, epochs=epochs), progress=False)
    spec = yaml.safe_load(result.spec_path.read_text())
    windows = torch.load(result.out_dir / "checkpoint.pt", weights_only=True)["windows"]
    tops = {name: lo + (count - 1) * step for name, (lo, step, count) in windows.items()}
    assert spec["stem"]["channels"] == tops["stem"]
    assert [c["channels"] for c in spec["cells"]] == [tops[f"cell{i}"] for i in range(len(spec["cells"]))]
    assert "widths were not searched" in capsys.readouterr().out


def test_resuming_on_another_number_of_processes_says_the_result_will_differ(tmp_path, monkeypatch, capsys):
    cfg = _small(tmp_path, "ws", epochs=2)
    run_search(cfg, progress=False, stop_after_epoch=1)
    assert torch.load(tmp_path / "ws" / "checkpoint.pt", weights_only=True)["world_size"] == 1
    capsys.readouterr()
    # as rank 0 of 2 (no process group: collectives are no-ops, the data is still sharded)
    monkeypatch.setattr("ubnas.distributed.world", lambda device="auto": (0, 2))
    run_search(cfg, resume=True, progress=False)
    assert "written by 1 process(es) and resumes on 2" in capsys.readouterr().out
    done = _small(tmp_path, "done", epochs=1)
    monkeypatch.undo()
    run_search(done, progress=False)
    monkeypatch.setattr("ubnas.distributed.world", lambda device="auto": (0, 2))
    capsys.readouterr()
    run_search(done, resume=True, progress=False)   # finished: nothing is recomputed, nothing can differ
    out = capsys.readouterr().out
    assert "resumes on 2" not in out and "already finished" in out, out


def test_malformed_space_names_file_and_key(tmp_path):
    good = yaml.safe_load(open(SPACE_DIR / "tiny.yaml"))
    cases = [
        ("ops", ["conv_3x3", "conv_9x9"], "ops[1]"),
        ("ops", ["none"], "key 'ops' needs an op other than 'none'"),   # no edge would carry data
        ("nodes", "two", "nodes"),
        ("channels", {"init": 300, "step": 8, "candidates": 4, "min": 16, "max": 192}, "channels.init"),
        ("channels", {**good["channels"], "dynamic": "false"}, "channels.dynamic' expected true or false"),
        ("stem", {**good["stem"], "kernel": 4}, "stem.kernel' expected an odd kernel size"),
        ("stem", {**good["stem"], "kernal": 3}, "unknown key 'stem.kernal'"),
        ("opps", good["ops"], "unknown key 'opps'"),
        ("ops", [["conv_3x3"]], "ops[0]"),
        # past MAX_SIZE: a traceback from torch's shape arithmetic when the supernet was built
        ("channels", {**good["channels"], "max": 2**64, "init": 2**63}, "channels.init' expected at most 1048576"),
        # str() made these the names 'True' and "['a', 'b']" in every exported spec's provenance
        ("name", True, "key 'name' expected a string, got True"),
        ("name", ["a", "b"], "key 'name' expected a string"),
        ("description", ["a", "b"], "key 'description' expected text"),
        ("ubnas_space", True, "key 'ubnas_space' expected 1, got True"),
        ("ubnas_space", 1.0, "key 'ubnas_space' expected 1, got 1.0"),
        # the window was blamed ('channels.init' window ... must lie within min..max = 200..192)
        ("channels", {**good["channels"], "min": 200, "max": 192}, "key 'channels.min' 200 exceeds 'channels.max' 192"),
        # init was blamed for a window that candidates or step pushed past max
        ("channels", {"init": 16, "step": 8, "candidates": 8, "min": 16, "max": 64},
         "key 'channels.init' + ('channels.candidates' - 1) x 'channels.step' = 72 exceeds 'channels.max' 64"),
        ("channels", {"init": 8, "step": 8, "candidates": 2, "min": 16, "max": 64}, "'channels.init' 8 is below"),
        ("ops", [], "key 'ops' is empty"),   # was 'must list distinct ops'
        # one op: every edge keeps it at weight 1, and each node reads states 0 and 1, unsearched
        ("ops", ["conv_3x3"], "key 'ops' lists one op: the search could choose neither ops nor edges"),
        ("stem", 3, "key 'stem' expected a mapping, got 3"),   # 'a dict'
        ("classifier", {"in_features": 8}, "this is an architecture spec (arch.yaml), not a search space"),
    ]
    for i, (key, value, where) in enumerate(cases):
        bad = dict(good, **{key: value})
        path = tmp_path / f"bad_{i}_{key}.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(SpaceError) as err:
            load_space(str(path))
        assert str(path) in str(err.value) and where in str(err.value)
        assert "\n" not in str(err.value)


def test_a_space_path_with_a_directory_part_is_the_users_file(tmp_path, monkeypatch):
    """'./tiny' (a user's file without a suffix) silently loaded the shipped tiny space, and ''
    read the working directory."""
    good = yaml.safe_load(open(SPACE_DIR / "tiny.yaml"))
    (tmp_path / "tiny").write_text(yaml.safe_dump({**good, "name": "mine"}))
    monkeypatch.chdir(tmp_path)
    assert load_space("./tiny").name == "mine" and load_space(str(tmp_path / "tiny")).name == "mine"
    assert load_space("tiny").name == "tiny"   # a bare name is the shipped space
    assert load_space(tmp_path / "tiny").name == "mine" and load_space(Path("tiny")).name == "tiny"   # Paths too
    with pytest.raises(SpaceError, match="^<empty>: no such search space or file"):
        load_space("")


def test_an_empty_space_file_says_it_is_empty(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(SpaceError, match=f"^{path}: the file is empty; expected a search space"):
        load_space(str(path))


@pytest.mark.parametrize("extra, said", [
    ("opps: [x]\n8: 1\n", "unknown key '8'"),
    ("on: 1\nstp: 2\n", "line 1 column 1: invalid YAML (key 'on' reads as true in YAML; quote it if it is a name)"),
])
def test_unknown_keys_of_mixed_types_are_named_not_a_traceback(tmp_path, extra, said):
    """YAML reads 'on' as true and '8' as an integer: sorting them beside a string key raised a
    TypeError out of the space loader, and a boolean key was named 'True'."""
    path = tmp_path / "s.yaml"
    path.write_text(extra + (SPACE_DIR / "tiny.yaml").read_text())
    with pytest.raises(SpaceError) as info:
        load_space(str(path))
    assert said in str(info.value) and "\n" not in str(info.value), info.value


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ubnas", *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_inputs_exit_nonzero_without_traceback(tmp_path):
    bad_space = tmp_path / "space.yaml"
    bad_space.write_text("nodes: 2\nops: [conv_3x3\n")
    bad_config = tmp_path / "run.yaml"
    bad_config.write_text("epochs: ten\n")
    unknown_key = tmp_path / "run2.yaml"
    unknown_key.write_text("epoch: 3\n")
    one_image = tmp_path / "one_image"   # one training image: nothing left for the weights
    one_image.mkdir()
    for i, f in enumerate(("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                           "test_batch")):
        rows = 1 if i in (0, 5) else 0
        (one_image / f).write_bytes(pickle.dumps({b"labels": [3] * rows,
                                                  b"data": np.zeros((rows, 3072), dtype=np.uint8)}))
    for args, needle in (
        (["search", "--data", "cifar10", "--data-dir", str(one_image)], "1 training images leave 0 for the weights"),
        (["search", "--space", str(bad_space)], str(bad_space)),
        (["search", "--config", str(bad_config)], "epochs"),
        (["search", "--config", str(unknown_key)], "epoch"),
        (["search", "--data", "cifar10", "--data-dir", str(tmp_path / "nothing")], "nothing"),
        (["search", "--hw", "no_such_preset"], "no_such_preset"),
        (["search", "--hw-batch", str(10**30)], "--hw-batch 10" + "0" * 29 + ": a batch of that many 1x8x8 images"),
    ):
        result = _cli(*args, "--out", str(tmp_path / "run"), "--quiet")
        assert result.returncode != 0, args
        assert "Traceback" not in result.stderr, result.stderr
        assert needle in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_search_whose_output_pipe_closes_fails_in_one_line(tmp_path):
    """`ubnas search | head -c 1`: the run cannot report; it used to stop with exit status 0."""
    cmd = [sys.executable, "-m", "ubnas", "search", "--epochs", "3", "--max-steps-per-epoch", "2",
           "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()   # the reader leaves before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 2, err
    assert "Traceback" not in err and "standard output was closed" in err, err


@pytest.mark.parametrize("key,value", [("tau0", 0.0), ("tau_decay", 0.0), ("grad_clip", -1.0),
                                       ("weight_lr", -1.0), ("arch_lr", 0.0), ("weight_momentum", 1.0),
                                       ("max_steps_per_epoch", 0), ("max_steps_per_epoch", -3),
                                       ("weight_decay", -1e-4), ("temperature", 0.0), ("tau0", float("inf")),
                                       ("arch_lr", float("nan")), ("lambda_latency", float("inf")),
                                       ("target_latency_us", float("nan")), ("target_latency_us", float("inf")),
                                       ("seed", -1), ("seed", 10**23), ("seed", 2**32), ("tau_decay", 5.0),
                                       ("weight_lr", 1e39), ("weight_decay", 1e308), ("temperature", 1e308),
                                       ("arch_lr", 1e39), ("lambda_latency", 1e39)])
def test_search_config_rejects_values_that_break_the_search(key, value):
    """Each of these ran before (NaN losses, gradient ascent, zero steps) and exported an arch, or
    (finite but past float32) crashed inside torch with a traceback."""
    SearchConfig().validate()
    with pytest.raises(ValueError, match=f"run.yaml: key '{key}'"):
        SearchConfig(**{key: value}).validate("run.yaml")


def test_every_accepted_seed_seeds_distinct_generators():
    """torch's CPU generator keeps a seed's low 32 bits: seed 2**32 searched exactly as seed 0.  The
    largest accepted seed plus the largest offset a run adds (the channel allocator's) must
    stay below 2**32."""
    from ubnas.channels import ALLOCATOR_SEED_OFFSET
    from ubnas.runtime import MAX_SEED

    def draw(seed):
        return torch.rand(4, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(2**32), draw(0))   # the wrap-around the bound avoids
    top = MAX_SEED + ALLOCATOR_SEED_OFFSET
    assert top < 2**32 and not torch.equal(draw(top), draw(ALLOCATOR_SEED_OFFSET))
    SearchConfig(seed=MAX_SEED).validate()


@pytest.mark.parametrize("key", ["lambda_latency", "target_latency_us", "tau0", "weight_decay"])
def test_a_config_value_past_floats_range_is_refused_not_an_overflow(tmp_path, key):
    from ubnas.search import config_from_yaml
    path = tmp_path / "run.yaml"
    path.write_text(f"{key}: 1{'0' * 400}\n")
    cfg = SearchConfig(**config_from_yaml(str(path)))
    with pytest.raises(ValueError, match=f"key '{key}' must be .*within float32's range"):
        cfg.validate(str(path))


@pytest.mark.parametrize("key", ["out", "space", "hw", "data_dir"])
def test_a_nul_character_in_a_path_names_its_key(tmp_path, capsys, key):
    """'out: "a\\0b"' in a --config file ended with 'ubnas: error: embedded null byte', naming
    neither the key nor the file."""
    from ubnas.cli import main
    path = tmp_path / "run.yaml"
    path.write_text(f'{key}: "a\\0b"\n')
    assert main(["search", "--config", str(path), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"ubnas: error: {path}: key '{key}' contains a NUL character: 'a\\x00b'"


def test_a_config_file_reads_exponents_without_a_dot_as_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads 'arch_lr: 3e-3' as the string '3e-3'; ours reads YAML 1.2's floats, so
    it is the number the README spells."""
    from ubnas.search import config_from_yaml
    path = tmp_path / "run.yaml"
    path.write_text("arch_lr: 3e-3\nlambda_latency: 1E-1\nweight_lr: 0.05\n")
    assert config_from_yaml(str(path)) == {"arch_lr": 3e-3, "lambda_latency": 0.1, "weight_lr": 0.05}
    path.write_text("arch_lr: fast\n")
    with pytest.raises(ValueError, match="key 'arch_lr' expected float, got 'fast'"):
        config_from_yaml(str(path))


def test_cli_blames_the_flag_or_the_file_that_holds_the_bad_value(tmp_path, capsys):
    from ubnas.cli import main
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("epochs: 2\n")
    bad.write_text("epochs: -1\n")
    out = ["--out", str(tmp_path / "run"), "--quiet"]
    assert main(["search", "--config", str(good), "--epochs", "-1", *out]) == 2
    err = capsys.readouterr().err
    assert "--epochs must be >= 1" in err and str(good) not in err, err
    assert main(["search", "--config", str(bad), *out]) == 2
    assert f"{bad}: key 'epochs'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # these blamed --device (not given) or named no file nor key
    for text, said in (("device: gpu\n", f"{bad}: key 'device' expected auto, cpu, cuda or cuda:N, got 'gpu'"),
                       ("data: mnist\n", f"{bad}: key 'data' expected one of digits, cifar10, synthetic, got 'mnist'")):
        bad.write_text(text)
        assert main(["search", "--config", str(bad), *out]) == 2
        assert said in capsys.readouterr().err


def test_triton_kernels_on_a_cpu_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from ubnas.cli import main
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["search", "--kernels", "triton", "--device", "cpu", "--out", str(tmp_path / "run"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "kernels 'triton' need CUDA tensors" in err and len(err.splitlines()) == 1, err


def test_a_refused_search_leaves_the_run_directory_as_it_was(tmp_path, capsys, monkeypatch):
    """Settings are checked (device, kernels, data, accelerator, space) before config.yaml is written:
    a refused run must not relabel the arch.yaml and checkpoint of the run already in OUT."""
    from ubnas.cli import main
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("hw: my_npu\n")
    (run / "checkpoint.pt").write_text("")
    refused = [["--kernels", "triton", "--device", "cpu"], ["--data", "cifar10", "--data-dir", str(tmp_path)],
               ["--hw", str(tmp_path / "missing.yaml")]]
    for flags in refused:
        assert main(["search", *flags, "--out", str(run), "--quiet"]) == 2, flags
        assert (run / "config.yaml").read_text() == "hw: my_npu\n", flags
        assert "starting over" not in capsys.readouterr().out   # no note of a start-over that does not happen
    # nor does a refused run leave an empty run directory behind
    assert main(["search", "--hw", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "new"), "--quiet"]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "afile").write_text("")
    assert main(["search", "--out", str(tmp_path / "afile"), "--quiet"]) == 2
    assert "afile: exists and is not a directory" in capsys.readouterr().err


def test_atomic_write_text_gives_the_mode_open_would(tmp_path):
    from hwmodels.yamlio import atomic_write_text
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "atomic.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """The temp file was renamed over the old one without an fsync: after a power cut the file system
    may keep the rename and lose the data, leaving an empty checkpoint or YAML where a whole one was."""
    from hwmodels.yamlio import atomic_write_text
    from ubnas.runtime import atomic_torch_save
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        replace(src, dst)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    if not os.path.exists("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to name the synced files")
    for write, name in ((lambda p: atomic_write_text(p, "x"), "a.yaml"), (lambda p: atomic_torch_save({}, p), "c.pt")):
        events.clear()
        write(tmp_path / name)
        moved = [e for e in events if e[0] == "replace"]
        assert len(moved) == 1 and moved[0][2] == str(tmp_path / name), events
        at = events.index(moved[0])
        assert ("fsync", moved[0][1]) in events[:at], events           # the data, before the rename
        assert ("fsync", str(tmp_path)) in events[at + 1:], events     # the directory entry, after it


@pytest.mark.parametrize("impl", ["eager", "reference"])
def test_one_hot_ops_run_only_the_chosen_op_and_match_the_mixture(impl):
    """With hard ops each edge runs one op; the result equals the full mixture at one-hot probs."""
    torch.manual_seed(0)
    net = Supernet(load_space("tiny"), (1, 8, 8), 10).double()
    net.set_impl(impl)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    hard = net.sample("softmax", hard_ops=True)
    soft = type(hard)(hard.ops, hard.widths, hard_ops=False)
    want = net(x, soft)
    # which branches the hard forward runs: each kept edge's chosen linear branch, once; no mixture
    import ubnas.ops as ops_module
    import ubnas.supernet as supernet_module
    ran = []
    branch_forward = ops_module.LinearBranch.forward

    def refuse(*args, **kwargs):
        raise AssertionError("a mixture ran with one-hot ops")

    with pytest.MonkeyPatch.context() as m:
        m.setattr(ops_module.LinearBranch, "forward", lambda self, x_: ran.append(self) or branch_forward(self, x_))
        m.setattr(MixedEdge, "forward_eager", refuse)
        m.setattr(supernet_module, "mixed_edge", refuse)
        m.setattr(supernet_module, "mixed_edges", refuse)
        got = net(x, hard)
    expected = []
    for cell in net.cells:
        for e, row in enumerate(hard.ops[cell.cell_type]):
            if row.any():
                edge = cell.edges[e]
                name = edge.op_names[int(row.argmax())]
                if name in edge.branches:
                    expected.append(edge.branches[name])
    assert expected and sorted(map(id, ran)) == sorted(map(id, expected))
    assert torch.allclose(got, want, atol=1e-10)


@pytest.mark.parametrize("first_bad_epoch", [1, 2])
def test_a_diverging_search_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, first_bad_epoch):
    """Weights driven to inf (a huge lr from one epoch on) stop the search with one error that
    says where; no arch.yaml is written and the checkpoint on disk is the last finite epoch."""
    import ubnas.search as search_module
    real_step = search_module.search_step

    def step(net, batch, val_batch, w_opt, a_opt, *args, **kwargs):
        if len(w_opt.state) and w_opt.param_groups[0]["lr"] < 1 and epochs_done() >= first_bad_epoch - 1:
            for group in w_opt.param_groups:
                group["lr"] = 1e38   # clipped gradients of norm <= 5: weights reach inf
        return real_step(net, batch, val_batch, w_opt, a_opt, *args, **kwargs)

    out = tmp_path / "run"

    def epochs_done():
        path = out / "checkpoint.pt"
        return torch.load(path, weights_only=False)["epoch"] if path.exists() else 0

    monkeypatch.setattr(search_module, "search_step", step)
    cfg = SearchConfig(epochs=3, max_steps_per_epoch=3, batch_size=16, out=str(out), kernels="eager")
    with pytest.raises(ValueError, match="search diverged") as info:
        run_search(cfg, progress=False)
    message = str(info.value)
    assert f"epoch {first_bad_epoch}/3" in message and "lower --weight-lr" in message
    assert not (out / "arch.yaml").exists()
    if first_bad_epoch == 1:
        assert "no checkpoint was written" in message and not (out / "checkpoint.pt").exists()
    else:
        assert f"{out / 'checkpoint.pt'} keeps epoch 1" in message
        ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
        assert ckpt["epoch"] == 1
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


@pytest.mark.parametrize("option, blamed", [
    (dict(tau0=1e-45), "a larger --tau0 / --tau-decay (the temperature was 1e-45)"),
    (dict(target_latency_us=1e-20), "a smaller --dual-lr (it was 0.5) or a reachable --target-latency-us "
                                    "(its multiplier mu was"),
    # a reachable target: the step of the multiplier put it past float32
    (dict(target_latency_us=5.0, dual_lr=1e38), "a smaller --dual-lr (it was 1e+38) or a reachable"),
    (dict(weight_decay=3e38), "a smaller --weight-decay (it was 3e+38; each SGD step multiplies"),
])
def test_a_divergence_names_an_extreme_temperature_or_target_not_the_learning_rates(tmp_path, option, blamed):
    cfg = SearchConfig(epochs=1, max_steps_per_epoch=5, batch_size=16, out=str(tmp_path / "run"), **option)
    with pytest.raises(ValueError, match="search diverged") as info:
        run_search(cfg, progress=False)
    assert blamed in str(info.value) and "--weight-lr" not in str(info.value), str(info.value)


def test_an_optimizer_step_past_float32_is_a_divergence_not_a_traceback(tmp_path):
    """Adam's first step is arch_lr / (1 - beta1) = 2 * arch_lr: past float32's 3.4e38 torch refuses
    to convert it (a RuntimeError), where a smaller overflow would give inf weights."""
    cfg = SearchConfig(epochs=1, max_steps_per_epoch=2, batch_size=16, arch_lr=3e38, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="search diverged: an optimizer step overflowed float32 at epoch 1/1, "
                                         "step 1; no checkpoint was written; start over with lower --weight-lr"):
        run_search(cfg, progress=False)


def test_the_80_20_split_trains_on_the_whole_weight_split_each_epoch(tmp_path):
    """An epoch is one pass over the weight split (ceil(n_w / batch) steps); the smaller
    architecture split is reshuffled when it runs out instead of ending the epoch early."""
    from ubnas.data import load_dataset
    n = len(load_dataset("digits", None, seed=0).train_y)
    n_weight = round(0.8 * n)
    cfg = SearchConfig(epochs=1, batch_size=128, split="80_20", stage="joint", kernels="eager",
                       out=str(tmp_path / "run"))
    result = run_search(cfg, progress=False)
    assert result.history[0]["steps"] == math.ceil(n_weight / 128) > math.ceil((n - n_weight) / 128)


def test_notes_for_options_that_do_not_do_what_they_seem(tmp_path, capsys, monkeypatch):
    """--data-dir with the digits set, and an accelerator calibrated for the uboost model whose
    calibration then serves arch.yaml's systolic exact cost: each gets a note.  A relative --data-dir
    is kept absolute (a --resume from another directory finds the data)."""
    from hwmodels.accelerator import save_accelerator
    hw = tmp_path / "cal.yaml"
    save_accelerator(load_accelerator("edge_32x32"), hw, extra={"fit_report": {"mode": "uboost"}})
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = SearchConfig(epochs=1, max_steps_per_epoch=1, batch_size=16, kernels="eager", data_dir="data",
                       hw=str(hw), cost_model="uboost", out=str(tmp_path / "run"))
    result = run_search(cfg, progress=False)
    out = capsys.readouterr().out
    assert f"note: --data-dir is read only with --data cifar10; digits ignores {tmp_path / 'data'}" in out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data_dir"] == str(tmp_path / "data")
    assert torch.load(tmp_path / "run" / "checkpoint.pt")["config"]["data_dir"] == str(tmp_path / "data")
    assert f"note: {hw} was calibrated for the uboost model; arch.yaml's exact cost uses the systolic" in out
    # the spec keeps what the calibration was fitted for, for estimate, train and report
    from ubnas.spec import load_spec
    assert load_spec(result.spec_path).provenance["accelerator_fit_mode"] == "uboost"


def _darts_cell_by_hand(logits, op_names, nodes):
    """{(edge, op)} of DARTS' derived cell, by plain loops: per node the 2 incoming edges whose
    best op other than 'none' has the largest softmax probability (ties: lower edge first)."""
    kept, e = set(), 0
    for i in range(nodes):
        ranked = []
        for x in range(e, e + 2 + i):
            row = [math.exp(v) for v in logits[x].tolist()]
            total = sum(row)
            best = max((row[k] / total, -k) for k, name in enumerate(op_names) if name != "none")
            ranked.append((-best[0], x, -best[1]))
        kept |= {(x, k) for _, x, k in sorted(ranked)[:2]}
        e += 2 + i
    return kept


@pytest.mark.parametrize("impl", ["eager", "reference"])
def test_the_channel_stage_runs_the_cell_that_is_exported(impl):
    """hard_ops samples DARTS' derived cell (2 edges per node), the cell derive_spec exports: an
    edge it drops does not reach the output, whatever its best op."""
    from ubnas.spec import derive_spec

    torch.manual_seed(3)
    space = load_space("tiny")
    net = Supernet(space, (1, 8, 8), 10).double()
    net.set_impl(impl)
    with torch.no_grad():
        for logits in net.op_logits.values():
            logits.copy_(2 * torch.randn_like(logits))
            logits[:, space.ops.index("none")] = -10.0   # no edge is dropped by choosing 'none'
    hard = net.sample("softmax", hard_ops=True)
    spec = derive_spec(net)
    for cell, arch in zip(net.cells, spec.cells):
        want = _darts_cell_by_hand(net.op_logits[cell.cell_type], space.ops, space.nodes)
        got = {tuple(ix) for ix in hard.ops[cell.cell_type].nonzero().tolist()}
        assert got == want
        assert (hard.ops[cell.cell_type].sum(-1) <= 1).all()
        exported, e = set(), 0
        for i, node in enumerate(arch.nodes):
            exported |= {(e + edge.source, space.ops.index(edge.op)) for edge in node}
            e += 2 + i
        assert exported == want
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    before = net(x, hard)
    cell = net.cells[0]
    dropped = [x_ for x_ in range(space.edges_per_cell) if not hard.ops[cell.cell_type][x_].any()]
    assert dropped   # node 1 has 3 incoming edges
    with torch.no_grad():   # NaN weights: an edge still evaluated, even at probability 0, gives NaN
        for p in cell.edges[dropped[0]].parameters():
            p.fill_(float("nan"))
    assert torch.equal(net(x, hard), before)


def _expected_cost_by_enumeration(net, acc):
    """(E[cycles], E[macs]) over independent width choices, combination by combination, and the
    same from supernet_cost's 'expected' width cost, as functions of one softmax sample."""
    import itertools

    arch = net.sample("softmax")
    got = supernet_cost(net, arch, acc, "systolic", width_cost="expected")
    names = list(net.widths)
    cycles = macs = 0.0
    for combo in itertools.product(*(range(net.widths[n].count) for n in names)):
        weight = 1.0
        for n, j in zip(names, combo):
            net.widths[n].forced = net.widths[n].candidates[j]
            weight = weight * arch.widths[n][j]
        c = supernet_cost(net, arch, acc, "systolic", width_cost="soft")
        cycles = cycles + weight * c["cycles"]
        macs = macs + weight * c["macs"]
    for w in net.widths.values():
        w.forced = None
    return got, cycles, macs


def test_expected_width_cost_equals_brute_force_enumeration():
    """E[cost] over independent width choices, enumerated combination by combination: values
    and gradients, before and after a window moves (the cost's layer table follows it)."""
    from ubnas.channels import ChannelAllocator

    torch.manual_seed(1)
    net = Supernet(load_space("tiny"), (1, 8, 8), 10).double()
    for w in net.widths.values():
        with torch.no_grad():
            w.logits.copy_(torch.randn(w.count))
    acc = load_accelerator("edge_16x16")
    for moved in (False, True):
        if moved:   # cell0's window one step up and one candidate wider, right after a cost
            supernet_cost(net, net.sample("softmax"), acc, "systolic", width_cost="expected")
            cell0 = net.widths["cell0"]
            ChannelAllocator(dict(net.widths.items()), net.channel_bindings(), 0).apply(
                "cell0", cell0.lo + cell0.step, cell0.step, cell0.count + 1, [])
        got, cycles, macs = _expected_cost_by_enumeration(net, acc)
        c, m = float(cycles.detach()), float(macs.detach())
        assert abs(float(got["cycles"].detach()) - c) < 1e-9 * c
        assert abs(float(got["macs"].detach()) - m) < 1e-9 * m
        assert abs(float(got["utilization"].detach()) - m / (c * acc.pes)) < 1e-12
        params = net.arch_parameters()
        want = torch.autograd.grad(cycles, params, retain_graph=True)
        for g, w in zip(torch.autograd.grad(got["cycles"], params), want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9 * c)


def test_starting_over_sets_the_last_runs_results_aside(tmp_path):
    run_search(_small(tmp_path, "run", epochs=1), progress=False)
    finished = {name: (tmp_path / "run" / name).read_bytes()
                for name in ("arch.yaml", "search_log.csv", "checkpoint.pt", "config.yaml")}
    # a new run into the same directory, interrupted before it exports
    run_search(_small(tmp_path, "run", epochs=3, hw="edge_32x32"), progress=False, stop_after_epoch=1)
    assert not (tmp_path / "run" / "arch.yaml").exists()   # the old network must not pass for this run's
    log = (tmp_path / "run" / "search_log.csv").read_text().splitlines()
    assert len(log) == 2                                     # header and this run's one epoch
    # the finished run is not lost: its files, byte for byte, in run/previous
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "previous").iterdir()} == finished
    # interrupted again before its first checkpoint: nothing of the earlier runs is left to --resume
    import ubnas.search_resume

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ubnas.search_resume, "atomic_torch_save", interrupted)   # killed while writing its first checkpoint
        with pytest.raises(KeyboardInterrupt):
            run_search(_small(tmp_path, "run", epochs=3, hw="edge_16x16"), progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "interrupted", "previous"]
    # the second run did not finish: its files go to interrupted/, and previous/ keeps the finished run
    kept = {p.name: p.read_bytes() for p in (tmp_path / "run" / "interrupted").iterdir()}
    assert sorted(kept) == ["checkpoint.pt", "config.yaml", "search_log.csv"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "previous").iterdir()} == finished
    # the third run left only its config.yaml: starting over (or --resume, which restarts it) must
    # not replace interrupted/, the last run that saved anything, with that lone file
    for resume in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ubnas.search_resume, "atomic_torch_save", interrupted)
            with pytest.raises(KeyboardInterrupt):
                run_search(_small(tmp_path, "run", epochs=3, hw="edge_16x16"), resume=resume, progress=False)
        assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "interrupted").iterdir()} == kept, resume
        assert {p.name: p.read_bytes() for p in (tmp_path / "run" / "previous").iterdir()} == finished, resume


def test_resume_before_the_first_checkpoint_starts_the_same_run_over(tmp_path, capsys):
    """Killed in its first epoch, a run has only OUT/config.yaml: --resume starts that run over (its
    options, not the defaults), and an option given on the command line still wins."""
    import ubnas.search_resume
    from ubnas.cli import main
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ubnas.search_resume, "atomic_torch_save", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_search(_small(tmp_path, "run", epochs=2, hw="edge_32x32", lambda_latency=0.7, seed=5),
                       progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    capsys.readouterr()
    assert main(["search", "--out", str(out), "--resume", "--quiet", "--epochs", "1"]) == 0
    said = capsys.readouterr().out
    assert "was never written (the run stopped in its first epoch); starting it over with the options in" in said
    assert "starting a new run" not in said
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["hw"], saved["lambda_latency"], saved["seed"], saved["max_steps_per_epoch"]) == \
        ("edge_32x32", 0.7, 5, 2)                      # the interrupted run's options
    assert saved["epochs"] == 1                        # the flag given now
    assert yaml.safe_load((out / "arch.yaml").read_text())["provenance"]["accelerator"] == "edge_32x32"


@pytest.mark.parametrize("finished", [True, False])
def test_resume_of_a_run_whose_checkpoint_was_deleted_is_refused_not_started_over(tmp_path, capsys, finished):
    """With checkpoint.pt deleted (to save disk), --resume said the run 'stopped in its first
    epoch', searched again from scratch and moved the finished arch.yaml and log to previous/."""
    from ubnas.cli import main
    out = tmp_path / "run"
    run_search(_small(tmp_path, "run", epochs=1), progress=False)
    if not finished:
        (out / "arch.yaml").unlink()   # a log row alone is also written only after a checkpoint
    (out / "checkpoint.pt").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["search", "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    held = "arch.yaml and search_log.csv" if finished else "search_log.csv"
    aside = "previous" if finished else "interrupted"   # a run without arch.yaml did not finish
    assert err == (f"ubnas: error: {out / 'checkpoint.pt'}: missing, though {out} holds the run's {held} "
                   f"(written only after a checkpoint); --resume cannot continue without it. Restore it, or "
                   f"run without --resume to start over (the old files move to {out / aside})"), err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / "previous").exists() and not (out / "interrupted").exists()
    assert main(["search", "--out", str(out), "--quiet", "--epochs", "1"]) == 0   # where the message said
    assert (out / aside / "search_log.csv").read_bytes() == before["search_log.csv"]


def test_dual_lr_without_a_target_gets_a_note(tmp_path, capsys, monkeypatch):
    import ubnas.commands.search
    from ubnas.cli import main
    monkeypatch.setattr(ubnas.commands.search, "run_search", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    saved = tmp_path / "config.yaml"   # a run's OUT/config.yaml holds every option, dual_lr at its default
    saved.write_text(yaml.safe_dump(dataclasses.asdict(SearchConfig())))
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("dual_lr: 2.0\n")
    for extra, says in ((["--dual-lr", "3"], True), (["--dual-lr", "3", "--target-latency-us", "9"], False),
                        ([], False), (["--config", str(saved)], False), (["--config", str(tuned)], True),
                        (["--config", str(saved), "--dual-lr", "0.5"], True)):
        assert main(["search", "--out", str(tmp_path / "r"), *extra]) == 130
        assert ("--dual-lr steps the multiplier of --target-latency-us; without a target it has no effect"
                in capsys.readouterr().out) == says, extra
    # --resume where there is nothing to resume starts a new run with these options: the note too;
    # a run that resumes does so with its saved options, and no note on this command line's
    note = "--dual-lr steps the multiplier of --target-latency-us"
    assert main(["search", "--out", str(tmp_path / "r"), "--resume", "--dual-lr", "3"]) == 130
    assert note in capsys.readouterr().out
    (tmp_path / "r").mkdir()
    saved.rename(tmp_path / "r" / "config.yaml")
    assert main(["search", "--out", str(tmp_path / "r"), "--resume", "--dual-lr", "3"]) == 130
    assert note not in capsys.readouterr().out


def test_realloc_every_where_no_window_moves_gets_a_note(tmp_path, capsys, monkeypatch):
    """--realloc-every with --channels fixed or --stage op can move nothing: it was accepted silently."""
    import ubnas.commands.search
    from ubnas.cli import main
    monkeypatch.setattr(ubnas.commands.search, "run_search", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    for extra, says in ((["--channels", "fixed"], "--channels fixed"), (["--stage", "op"], "--stage op"),
                        ([], None), (["--stage", "joint"], None)):
        assert main(["search", "--out", str(tmp_path / "r"), "--realloc-every", "1", *extra]) == 130
        out = capsys.readouterr().out
        assert (f"note: --realloc-every has no effect with {says} (no width window moves)" in out
                if says else "--realloc-every" not in out), (extra, out)
    assert main(["search", "--out", str(tmp_path / "r"), "--channels", "fixed"]) == 130   # not given: no note
    assert "--realloc-every" not in capsys.readouterr().out
    still = yaml.safe_load((SPACE_DIR / "tiny.yaml").read_text())   # no window of this space may move
    still["stem"]["channels"]["dynamic"] = False
    still["channels"]["candidates"] = 1
    (tmp_path / "still.yaml").write_text(yaml.safe_dump(still))
    assert main(["search", "--out", str(tmp_path / "r"), "--realloc-every", "1", "--space",
                 str(tmp_path / "still.yaml")]) == 130
    assert f"no effect with the space {tmp_path / 'still.yaml'} (no width window moves)" in capsys.readouterr().out


def test_beta_with_the_flops_cost_model_gets_a_note(tmp_path, capsys, monkeypatch):
    """Under --cost-model flops cycles are MACs / PEs, so utilization is 1 for any network and the
    beta term is a constant: --beta-utilization 5 changed nothing without a word."""
    import ubnas.commands.search
    from ubnas.cli import main
    from ubnas.cost import supernet_cost
    from ubnas.supernet import Supernet
    net = Supernet(load_space("tiny"), (1, 8, 8), 10)
    for _ in range(3):   # utilization 1 whatever the architecture sampled: a constant, no gradient
        got = supernet_cost(net, net.sample("softmax"), load_accelerator("uboost"), "flops", "sigmoid", 1.0, 1)
        assert abs(float(got["utilization"].detach()) - 1.0) < 1e-9
    monkeypatch.setattr(ubnas.commands.search, "run_search", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    note = "the flops cost model keeps every PE busy (utilization 1 for any network), so --beta-utilization"
    for extra, says in ((["--cost-model", "flops", "--beta-utilization", "5"], True),
                        (["--cost-model", "flops"], False), (["--beta-utilization", "5"], False),
                        (["--cost-model", "flops", "--beta-utilization", "0"], False)):
        assert main(["search", "--out", str(tmp_path / "r"), *extra]) == 130
        assert (note in capsys.readouterr().out) == says, extra


def _cost_grads(net, model, surrogate, temperature, width_cost):
    """The supernet's cost and its gradient over every architecture parameter, in float64."""
    from ubnas.cost import supernet_cost
    net.zero_grad()
    cost = supernet_cost(net, net.sample("softmax"), load_accelerator("uboost"), model, surrogate, temperature,
                         1, width_cost)["cycles"]
    cost.backward()
    return [float(cost.detach())] + [g for p in net.arch_parameters() for g in p.grad.flatten().tolist()]


def test_smoothing_options_that_cannot_act_get_a_note(tmp_path, capsys, monkeypatch):
    """--temperature changed nothing (bit-identical checkpoints) under the default straight-through
    surrogate with --width-cost expected, nor did --surrogate/--temperature under flops or
    roofline: without a word."""
    import ubnas.commands.search
    from ubnas.cli import main
    torch.manual_seed(0)
    net = Supernet(load_space("tiny"), (1, 8, 8), 10).double()
    # what the notes claim, measured: equal where they speak, different where they do not
    assert _cost_grads(net, "systolic", "straight_through", 1.0, "expected") == \
        _cost_grads(net, "systolic", "straight_through", 50.0, "expected")
    assert _cost_grads(net, "systolic", "straight_through", 1.0, "soft") != \
        _cost_grads(net, "systolic", "straight_through", 50.0, "soft")
    assert _cost_grads(net, "systolic", "sigmoid", 1.0, "expected") != \
        _cost_grads(net, "systolic", "sigmoid", 50.0, "expected")
    for model in ("flops", "roofline"):
        assert _cost_grads(net, model, "straight_through", 1.0, "soft") == \
            _cost_grads(net, model, "sigmoid", 50.0, "soft")
    monkeypatch.setattr(ubnas.commands.search, "run_search", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    temperature = "note: --temperature has no effect with --surrogate straight_through and --width-cost expected"
    ceilings = "cost model has no tile ceilings, so"
    for extra, says in ((["--temperature", "50"], temperature),
                        (["--temperature", "50", "--width-cost", "soft"], None),
                        (["--temperature", "50", "--surrogate", "sigmoid"], None),
                        (["--cost-model", "flops", "--surrogate", "sigmoid"], ceilings),
                        (["--cost-model", "roofline", "--temperature", "5", "--surrogate", "sigmoid"],
                         "roofline cost model has no tile ceilings, so --surrogate and --temperature have no effect"),
                        (["--cost-model", "roofline"], None), ([], None)):
        assert main(["search", "--out", str(tmp_path / "r"), *extra]) == 130
        out = capsys.readouterr().out
        assert (says in out) if says else (temperature not in out and ceilings not in out), (extra, out)


def test_lambda_with_a_target_gets_a_note(tmp_path, capsys, monkeypatch):
    import ubnas.commands.search
    from ubnas.cli import main
    monkeypatch.setattr(ubnas.commands.search, "run_search", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    note = "--target-latency-us replaces the --lambda-latency term (--beta-utilization still applies)"
    for extra, says in ((["--lambda-latency", "2", "--target-latency-us", "9"], True),
                        (["--target-latency-us", "9"], False), (["--lambda-latency", "2"], False)):
        assert main(["search", "--out", str(tmp_path / "r"), *extra]) == 130
        assert (note in capsys.readouterr().out) == says, extra
    # the multiplier never leaves 0 (search_step's mu update: max(0, mu + dual_lr * (ratio - 1)))
    note = "note: --dual-lr 0 keeps the target's multiplier at 0, so the search ignores latency"
    for extra, says in ((["--target-latency-us", "9", "--dual-lr", "0"], True),
                        (["--target-latency-us", "9"], False), (["--dual-lr", "0"], False)):
        assert main(["search", "--out", str(tmp_path / "r"), *extra]) == 130
        assert (note in capsys.readouterr().out) == says, extra


def test_stage_channel_alone_says_that_nothing_chooses_its_cell(tmp_path, capsys):
    """--stage channel exported the cell its random initial op logits favoured, without a word."""
    from ubnas.cli import main
    out = tmp_path / "r"
    assert main(["search", "--out", str(out), "--stage", "channel", "--epochs", "1", "--max-steps-per-epoch",
                 "2", "--quiet"]) == 0
    assert "note: --stage channel searches the widths only, on the cell that the random initial" in \
        capsys.readouterr().out
    torch.manual_seed(0)   # what the run's init drew (run_search seeds torch with --seed 0 first)
    initial = Supernet(load_space("tiny"), (1, 8, 8), 10).state_dict()
    trained = torch.load(out / "checkpoint.pt")["model"]
    logits = [k for k in initial if k.startswith("op_logits.")]
    assert logits and all(torch.equal(initial[k], trained[k]) for k in logits), logits
    assert main(["search", "--out", str(tmp_path / "s"), "--stage", "op", "--epochs", "1",
                 "--max-steps-per-epoch", "1", "--quiet"]) == 0
    assert "--stage channel" not in capsys.readouterr().out


def test_search_refuses_checkpoints_it_did_not_write(tmp_path, capsys):
    from ubnas.cli import main
    run = tmp_path / "train_run"
    run.mkdir()
    torch.save({"spec_hash": "abc", "model": {}}, run / "checkpoint.pt")   # what `ubnas train` writes
    before = (run / "checkpoint.pt").read_bytes()
    for flags in ([], ["--resume"]):
        assert main(["search", "--out", str(run), "--quiet", *flags]) == 2
        err = capsys.readouterr().err
        assert "not a checkpoint written by `ubnas search`" in err and "Traceback" not in err
        assert (run / "checkpoint.pt").read_bytes() == before and sorted(os.listdir(run)) == ["checkpoint.pt"]
    (run / "checkpoint.pt").write_bytes(before[: len(before) // 2])        # truncated by a crash
    assert main(["search", "--out", str(run), "--quiet", "--resume"]) == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err


def test_resume_takes_where_it_runs_from_the_command_line(tmp_path, capsys):
    cfg = _small(tmp_path, "gpu_run", epochs=2, kernels="eager")
    run_search(cfg, progress=False, stop_after_epoch=1)
    path = tmp_path / "gpu_run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["device"] = "cuda"                 # as if searched on a GPU machine
    assert ckpt["placement"] == {"device": "cpu", "kernels": "eager"}
    ckpt["placement"]["device"] = "cuda"
    ckpt["config"]["out"] = "/elsewhere/run"          # and the run directory moved since
    torch.save(ckpt, path)
    capsys.readouterr()
    resumed = run_search(_small(tmp_path, "gpu_run", epochs=2, device="cpu", kernels="reference",
                                lambda_latency=9.0), resume=True, progress=False)
    assert resumed.spec_path == tmp_path / "gpu_run" / "arch.yaml"
    saved = yaml.safe_load((tmp_path / "gpu_run" / "config.yaml").read_text())
    assert (saved["device"], saved["kernels"], saved["out"]) == ("cpu", "reference", str(tmp_path / "gpu_run"))
    assert saved["lambda_latency"] == 0.5                                  # the trajectory is the checkpoint's
    said = capsys.readouterr().out
    assert "ignored: --lambda-latency (kept: 0.5)" in said
    # another device and other kernels sum in another order: said, as the result is not bit for bit
    assert "with device cpu (it ran with cuda) and kernels reference (it ran with eager)" in said, said
    capsys.readouterr()
    again = _small(tmp_path, "same_place", epochs=2, kernels="eager")
    run_search(again, progress=False, stop_after_epoch=1)
    run_search(again, resume=True, progress=False)
    assert "float rounding" not in capsys.readouterr().out
    # a finished run recomputes nothing: no note on another placement changing its result
    run_search(_small(tmp_path, "same_place", epochs=2, kernels="reference"), resume=True, progress=False)
    said = capsys.readouterr().out
    assert "already finished" in said and "float rounding" not in said, said


def test_resume_note_compares_what_auto_ran_not_the_option_strings(tmp_path, capsys):
    """--device auto on a CPU machine resumed with --device cpu (the same device, the same sums) said
    'it ran with auto'; and auto resumed on another machine type said nothing."""
    run_search(_small(tmp_path, "auto", epochs=3, device="auto", kernels="auto"), progress=False,
               stop_after_epoch=1)
    capsys.readouterr()
    run_search(_small(tmp_path, "auto", epochs=3, device="cpu", kernels="reference"), resume=True,
               progress=False, stop_after_epoch=2)
    assert "float rounding" not in capsys.readouterr().out
    path = tmp_path / "auto" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["placement"] == {"device": "cpu", "kernels": "reference"}
    ckpt["placement"] = {"device": "cuda", "kernels": "triton"}   # as if 'auto' had run on a GPU
    torch.save(ckpt, path)
    run_search(_small(tmp_path, "auto", epochs=3, device="auto", kernels="auto"), resume=True, progress=False)
    said = capsys.readouterr().out
    assert "with device cpu (it ran with cuda) and kernels reference (it ran with triton)" in said, said


def test_exported_exact_cost_is_at_the_search_hardware_batch(tmp_path):
    from hwmodels import estimate
    from ubnas.build import build_network
    from ubnas.spec import load_spec
    result = run_search(_small(tmp_path, "hb", epochs=1, hw_batch=8), progress=False)
    spec = load_spec(result.spec_path)
    exact = spec.provenance["exact_cost"]
    assert exact["batch"] == 8 and spec.provenance["hw_batch"] == 8
    want = estimate(build_network(spec), (1, 8, 8), load_accelerator("uboost"), batch=8)
    assert exact["latency_us"] == pytest.approx(want.seconds * 1e6)
    assert spec.provenance["arch_hash"] == spec.arch_hash()   # ubnas report tells an edited spec by it
    # a hand edit of a width: the report keeps the exact cost of the edited network and says so
    from ubnas.cli import main
    path = result.spec_path
    assert main(["report", str(result.out_dir), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "edited after the search" not in text
    assert "smooth cost at export (arch.yaml provenance: systolic model, on uboost, batch 8)" in text
    data = yaml.safe_load(path.read_text())
    data["cells"][0]["channels"] += 8
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["report", str(result.out_dir), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    assert "arch.yaml was edited after the search exported it" in (tmp_path / "rep" / "report.md").read_text()


def test_resume_names_a_flag_set_to_its_default_that_the_checkpoint_overrides(tmp_path, capsys):
    from ubnas.cli import main
    run_search(_small(tmp_path, "run", epochs=2, lambda_latency=0.5), progress=False, stop_after_epoch=1)
    capsys.readouterr()
    default = SearchConfig().lambda_latency
    assert main(["search", "--out", str(tmp_path / "run"), "--resume", "--quiet",
                 "--lambda-latency", str(default)]) == 0
    assert "ignored: --lambda-latency (kept: " in capsys.readouterr().out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["lambda_latency"] == 0.5


def test_the_hardware_terms_pull_the_architecture_their_way(tmp_path, one_thread):
    """Against the same run without them (same seed, data and steps): a latency weight lowers the
    latency, a utilization weight raises the utilization, and a hard target under the reachable
    latency raises mu by dual ascent while one far above it leaves the run as it was."""
    base = dict(stage="joint", arch_lr=0.3, epochs=2, max_steps_per_epoch=4, realloc_every=1000,
                lambda_latency=0.0, beta_utilization=0.0)

    def last(name, **overrides):
        return run_search(_small(tmp_path, name, **{**base, **overrides}), progress=False).history

    plain = last("plain")
    assert last("lam", lambda_latency=20.0)[-1]["latency_us"] < 0.8 * plain[-1]["latency_us"]
    assert last("beta", beta_utilization=20.0)[-1]["utilization"] > 1.2 * plain[-1]["utilization"]
    # under any network the space derives (the target bounds the exported one): violated at every step
    target = 0.05 * min(row["derived_latency_us"] for row in plain)
    tight = last("tight", target_latency_us=target)
    assert 0 < tight[0]["mu"] < tight[1]["mu"]          # the constraint is violated at every step
    assert tight[-1]["derived_latency_us"] < plain[-1]["derived_latency_us"]
    loose = last("loose", target_latency_us=1e6 * plain[0]["latency_us"])
    assert [row["mu"] for row in loose] == [0.0, 0.0]
    assert [row["latency_us"] for row in loose] == [row["latency_us"] for row in plain]


def test_flops_and_roofline_cost_models_by_their_definitions():
    """flops: cycles = MACs / PEs; roofline: per layer max(MACs / PEs, bytes moved / bandwidth x clock),
    from the layers traced off the built network, on a bandwidth that makes some layers memory-bound."""
    from hwmodels.estimate import trace_layers
    from ubnas.build import build_network
    from ubnas.spec import derive_spec, discrete_sample
    torch.manual_seed(0)
    net = Supernet(load_space("tiny"), (1, 8, 8), 10)
    spec = derive_spec(net, {})
    arch = discrete_sample(net, spec)
    layers = trace_layers(build_network(spec), spec.input_shape)
    base = load_accelerator("edge_16x16")
    macs = [layer.lower().macs for layer in layers]
    moved = [(l.input_elements() + l.weight_elements() + l.output_elements()) * base.bytes_per_element for l in layers]
    intensity = sorted(m / b for m, b in zip(macs, moved))   # MACs per byte
    # bandwidth at which the layers of median intensity are balanced: some above, some below
    acc = base.replace(bandwidth_bytes_per_s=base.pes * base.clock_hz / intensity[len(intensity) // 2])
    compute = [m / acc.pes for m in macs]
    memory = [b / acc.bandwidth_bytes_per_s * acc.clock_hz for b in moved]
    assert any(c > m for c, m in zip(compute, memory)) and any(c < m for c, m in zip(compute, memory))
    flops = supernet_cost(net, arch, acc, "flops")
    assert float(flops["cycles"]) == pytest.approx(sum(compute), rel=1e-9)
    assert float(flops["utilization"]) == pytest.approx(1.0)
    roofline = supernet_cost(net, arch, acc, "roofline")
    assert float(roofline["cycles"]) == pytest.approx(sum(max(c, m) for c, m in zip(compute, memory)), rel=1e-9)
    assert float(roofline["seconds"]) == pytest.approx(float(roofline["cycles"]) / acc.clock_hz)


def test_resume_keeps_the_space_and_accelerator_it_started_with(tmp_path, capsys):
    """The checkpoint holds the space and accelerator definitions: files edited (or gone) since
    do not change the resumed run, and a note says so."""
    space = tmp_path / "space.yaml"   # a YAML date: no type a weights-only checkpoint load refuses
    space.write_text((SPACE_DIR / "tiny.yaml").read_text() + "source: 2024-05-01\n")
    hw = tmp_path / "npu.yaml"
    hw.write_text("array_rows: 16\narray_cols: 16\nclock_hz: 1.0e9\nbandwidth_bytes_per_s: 1.0e10\n")
    opts = dict(space=str(space), hw=str(hw), stage="joint", arch_lr=0.3)
    full = run_search(_small(tmp_path, "full", **opts), progress=False)
    run_search(_small(tmp_path, "part", **opts), progress=False, stop_after_epoch=2)
    data = yaml.safe_load(space.read_text())
    data["ops"] = list(data["ops"]) + ["avg_pool_3x3"]    # would change the supernet's shapes
    space.write_text(yaml.safe_dump(data))
    hw.write_text("array_rows: 4\narray_cols: 4\nclock_hz: 1.0e9\nbandwidth_bytes_per_s: 1.0e10\n")
    capsys.readouterr()
    resumed = run_search(_small(tmp_path, "part", **opts), resume=True, progress=False)
    out = capsys.readouterr().out
    assert f"search space {space} changed or cannot be read since" in out
    assert f"accelerator {hw} changed or cannot be read since" in out
    assert "resuming" in out and "after epoch 2 of 3" in out
    assert yaml.safe_load(full.spec_path.read_text())["cells"] == yaml.safe_load(resumed.spec_path.read_text())["cells"]
    assert [r["latency_us"] for r in full.history] == [r["latency_us"] for r in resumed.history]
    space.unlink()   # gone, and the accelerator file broken: the saved definitions still resume
    hw.write_text("array_rows: [16\n")   # (a finished run re-exports)
    run_search(_small(tmp_path, "part", **opts), resume=True, progress=False)
    out = capsys.readouterr().out
    assert f"search space {space} changed or cannot be read" in out and f"accelerator {hw} changed or" in out


def test_resuming_a_checkpoint_that_lacks_keys_is_a_one_line_error(tmp_path, capsys):
    from ubnas.cli import main
    run_search(_small(tmp_path, "run", epochs=2), progress=False, stop_after_epoch=1)
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["alloc_gen"]
    torch.save(ckpt, path)
    assert main(["search", "--out", str(tmp_path / "run"), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"ubnas: error: {path}: checkpoint lacks alloc_gen (written by another ubnas version?); "
                   f"start over without --resume")


def _shrunk_first_tensor(model):
    name = next(k for k, v in model.items() if v.dim() > 0)
    return {**model, name: model[name][:1]}


@pytest.mark.parametrize("key,edit,blamed", [
    ("epoch", lambda v: -3, "epoch -3 (expected a whole number from 0"),
    ("epoch", lambda v: "one", "epoch 'one' (expected"),
    ("epoch", lambda v: 9, "epoch 9 (expected a whole number from 0 to the run's 2 epochs)"),
    ("history", lambda v: 5, "history (expected a list of log rows)"),
    ("mu", lambda v: float("nan"), "mu nan (expected a finite number)"),
    ("windows", lambda v: {k: [0, 1, 1] for k in v}, "empty or non-positive window"),
    ("windows", lambda v: {**v, "no_such_width": [8, 8, 1]}, "no_such_width"),
    ("model", _shrunk_first_tensor, "its model does not fit the search space (Error(s) in loading"),
    # these were tracebacks (AttributeError, TypeError, torch's RuntimeError / ValueError)
    ("config", lambda v: [], "config (expected a mapping of options, got list)"),
    ("config", lambda v: {**v, "arch_lr": -1.0}, "config (saved config: key 'arch_lr' must be > 0"),
    ("config", lambda v: {**v, "epochs": "2"}, "config (saved config: key 'epochs' expected int, got '2')"),
    ("data_gen", lambda v: v[:3], "its data_gen does not load ("),
    ("w_opt", lambda v: {**v, "param_groups": []}, "its w_opt does not load (loaded state dict has a different "
                                                   "number of parameter groups)"),
])
def test_resuming_a_damaged_checkpoint_is_a_one_line_error(tmp_path, capsys, key, edit, blamed):
    from ubnas.cli import main
    run_search(_small(tmp_path, "run", epochs=2), progress=False, stop_after_epoch=1)
    path = tmp_path / "run" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt[key] = edit(ckpt[key])
    torch.save(ckpt, path)
    capsys.readouterr()
    assert main(["search", "--out", str(tmp_path / "run"), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ubnas: error: {path}: damaged checkpoint") and "\n" not in err
    assert blamed in err and err.endswith("start over without --resume")


def test_the_exported_smooth_cost_is_the_logged_one(tmp_path):
    """After a channel stage the log costs the chosen ops (one-hot); so does arch.yaml's smooth_cost."""
    result = run_search(_small(tmp_path, "run", epochs=2), progress=False)   # staged: op, then channel
    assert [r["stage"] for r in result.history] == ["op", "channel"]
    smooth = yaml.safe_load(result.spec_path.read_text())["provenance"]["smooth_cost"]
    assert smooth["latency_us"] == pytest.approx(result.history[-1]["latency_us"], rel=1e-6)
    assert smooth["utilization"] == pytest.approx(result.history[-1]["utilization"], rel=1e-6)


def test_a_cost_first_taken_under_inference_mode_still_serves_gradients():
    net = Supernet(load_space("tiny"), (1, 8, 8), 10)
    acc = load_accelerator("uboost")
    with torch.inference_mode():   # e.g. a report of the cost before the search starts
        supernet_cost(net, net.sample("softmax"), acc)
    supernet_cost(net, net.sample("softmax"), acc)["seconds"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.arch_parameters())


def test_a_one_hot_cost_without_gradient_weights_only_its_layers_and_keeps_every_gradient_with_one():
    """supernet_cost of a one-hot sample without gradient (the derived network each step, the
    export's fit) costs only the layers of nonzero weight: the value of weighting every layer of the
    supernet (summed here from the full table).  The same sample with a gradient keeps the full
    table, so the ops and widths it did not choose still get theirs (straight-through samples)."""
    from hwmodels.smooth import network_cost_torch
    from ubnas.cost import supernet_layers
    from ubnas.supernet import ArchSample

    torch.manual_seed(3)
    net = Supernet(load_space("tiny"), (1, 8, 8), 10, channels="fixed").double()
    acc = load_accelerator("edge_16x16")
    derived = net.derived_sample()
    full_layers, full_weights = supernet_layers(net, derived, 2)
    want = float((network_cost_torch(full_layers, acc)["cycles"] * full_weights).sum())
    with torch.no_grad():
        layers, weights = supernet_layers(net, derived, 2, weighted_only=True)
        got = float(supernet_cost(net, derived, acc, batch=2)["cycles"])
    assert bool((weights != 0).all()) and len(weights) == int((full_weights != 0).sum()) < len(full_weights)
    assert got == pytest.approx(want, rel=1e-12)
    arch = ArchSample({t: p.clone().requires_grad_() for t, p in derived.ops.items()},
                      {n: p.clone().requires_grad_() for n, p in derived.widths.items()}, True)
    cost = supernet_cost(net, arch, acc, batch=2)["cycles"]
    assert float(cost.detach()) == pytest.approx(want, rel=1e-12)
    cost.backward()
    for t, p in arch.ops.items():   # the unchosen conv ops of every kept edge would cost cycles
        kept = derived.ops[t].sum(1) > 0
        assert bool((p.grad[kept][derived.ops[t][kept] == 0].abs().sum() > 0))
    assert all(bool((p.grad[derived.widths[n] == 0] > 0).all()) for n, p in arch.widths.items())


# four cells, the last on a 1 x 1 map after three 2x2 pools of digits' 8 x 8 images
ONE_BY_ONE_SPACE = """ubnas_space: 1
name: one_by_one
nodes: 1
ops: [conv_3x3, skip_connect]
stem: {kernel: 3, channels: {init: 8, step: 8, candidates: 2, min: 8, max: 32, dynamic: false}}
channels: {init: 8, step: 8, candidates: 2, min: 8, max: 32, dynamic: false}
cells: [{pool_after: true}, {pool_after: true}, {pool_after: true}, {pool_after: false}]
"""


def test_a_last_batch_of_one_image_is_dropped_where_batchnorm_sees_one_value(tmp_path):
    space = tmp_path / "one_by_one.yaml"
    space.write_text(ONE_BY_ONE_SPACE)
    data = load_dataset("digits", None, seed=0)
    (_, yw), _ = search_split(data.train_x, data.train_y, "half", seed=0)
    batch_size = (len(yw) - 1) // 2   # two full batches and one of a single image
    assert len(yw) % batch_size == 1
    result = run_search(SearchConfig(space=str(space), epochs=1, batch_size=batch_size, out=str(tmp_path / "run")),
                        progress=False)
    assert [row["steps"] for row in result.history] == [2]


def test_every_search_flag_says_what_it_does():
    """--weight-momentum, --weight-decay, --grad-clip, --arch-weight-decay and --seed showed only
    their default in ``ubnas search --help``."""
    import argparse
    from dataclasses import fields
    from ubnas.commands.search import add_parser
    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    helps = {a.dest: a.help for a in parser._actions}
    bare = [f.name for f in fields(SearchConfig) if helps[f.name].startswith("(default")]
    assert not bare, bare


def test_a_restarted_run_reads_the_space_and_accelerator_files_it_started_with(tmp_path, monkeypatch, capsys):
    """--hw my.yaml and --space my_space.yaml were saved in config.yaml as typed: a --resume of a run
    stopped before its first checkpoint, from another directory, searched on whatever my.yaml lay
    there (67.02 us instead of 9.26 us in the review's case), without a note."""
    from hwmodels.accelerator import PRESET_DIR
    from ubnas.cli import main
    from ubnas.space import SPACE_DIR
    preset = (PRESET_DIR / "edge_16x16.yaml").read_text()
    (tmp_path / "my.yaml").write_text(preset.replace("array_rows: 16", "array_rows: 128"))
    (tmp_path / "my_space.yaml").write_text((SPACE_DIR / "tiny.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    flags = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "16", "--quiet", "--out", str(out)]
    assert main(["search", "--hw", "my.yaml", "--space", "my_space.yaml", *flags]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["hw"], saved["space"]) == (str(tmp_path / "my.yaml"), str(tmp_path / "my_space.yaml"))
    for name in ("checkpoint.pt", "arch.yaml", "search_log.csv"):   # stopped before its first checkpoint
        (out / name).unlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "my.yaml").write_text(preset)   # another accelerator of that name
    monkeypatch.chdir(other)
    capsys.readouterr()
    assert main(["search", "--resume", *flags]) == 0, capsys.readouterr().err
    provenance = yaml.safe_load((out / "arch.yaml").read_text())["provenance"]
    assert provenance["accelerator_config"]["array_rows"] == 128
    # a shipped space and a preset stay names
    assert main(["search", "--hw", "edge_16x16", "--space", "tiny", *flags]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["hw"], saved["space"]) == ("edge_16x16", "tiny")


@pytest.mark.parametrize("channels", [16, 88])
def test_every_linear_branch_enters_the_shared_batchnorm_at_a_full_convs_scale(channels):
    """A mixed edge normalises the sum of its linear branches with one BatchNorm, so a branch's
    output scale weights it as much as its probability does.  Kaiming fan_out on a depthwise
    weight counted C*k*k inputs per filter (k*k feed it): separable branches started ~sqrt(C/2)
    smaller, 0.15 against a conv's 1.0 at C=88."""
    from ubnas.ops import LinearBranch
    torch.manual_seed(0)
    x = torch.randn(16, channels, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        stds = {name: float(LinearBranch(op, channels, channels, 1).double()(x).std())
                for name, op in OPS.items() if op.family == "linear"}
    conv = stds["conv_3x3"]
    assert all(0.7 < std / conv < 1.4 for std in stds.values()), stds


def test_resuming_with_the_same_relative_space_and_hw_files_names_nothing_ignored(tmp_path, capsys, monkeypatch):
    """The run saves its space and accelerator files absolute; the same command again with --resume
    said '--space (kept: /abs/sp.yaml), --hw (kept: /abs/acc.yaml)' were ignored though they are the
    files it runs on.  Another file is still named."""
    import shutil

    import hwmodels
    from ubnas.cli import main
    monkeypatch.chdir(tmp_path)
    shutil.copy(SPACE_DIR / "tiny.yaml", "sp.yaml")
    for name in ("acc.yaml", "other.yaml"):
        shutil.copy(Path(hwmodels.__file__).parent / "presets" / "edge_16x16.yaml", name)
    for out in ("run", "run2", "run3"):
        run_search(_small(tmp_path, out, epochs=2, space="sp.yaml", hw="acc.yaml"), progress=False,
                   stop_after_epoch=1)
    capsys.readouterr()
    assert main(["search", "--space", "sp.yaml", "--hw", "acc.yaml", "--out", "run", "--quiet", "--resume"]) == 0
    assert "ignored" not in capsys.readouterr().out
    assert main(["search", "--space", "sp.yaml", "--hw", "other.yaml", "--out", "run2", "--quiet", "--resume"]) == 0
    assert f"ignored: --hw (kept: {tmp_path / 'acc.yaml'})" in capsys.readouterr().out
    # the same files through a symlinked directory: other absolute paths, the same files
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    assert main(["search", "--space", str(tmp_path / "link" / "sp.yaml"), "--hw", str(tmp_path / "link" / "acc.yaml"),
                 "--out", "run3", "--quiet", "--resume"]) == 0
    assert "ignored" not in capsys.readouterr().out


def test_the_readmes_search_space_example_loads_as_it_says(tmp_path):
    """The README's space example is what a user copies first: it must load, with the defaults it states."""
    import re
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Search space YAML"):]
    example = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "my_space.yaml"
    path.write_text(example)
    space = load_space(str(path))
    assert space.name == "my_space" and space.nodes == 2 and len(space.ops) == 5
    assert [(c.reduce, c.pool_after) for c in space.cells] == [(False, True), (True, False)]
    assert space.cells[0].channels.dynamic and space.cells[1].channels.min == 32
    listed = re.findall(r"`(\w+)`", section[section.index("The ops are"):section.index("with one op")])
    assert set(listed) == set(OPS), listed


def test_a_search_config_takes_pathlib_paths(tmp_path):
    """SearchConfig(space=Path(...)) ran before the type checks of 6d3ae04, which refused it."""
    cfg = SearchConfig(space=SPACE_DIR / "tiny.yaml", hw=Path("uboost"), data_dir=tmp_path, out=tmp_path / "run")
    cfg.validate()
    assert (cfg.space, cfg.hw, cfg.data_dir, cfg.out) == (str(SPACE_DIR / "tiny.yaml"), "uboost", str(tmp_path),
                                                          str(tmp_path / "run"))
