"""ubnas train / export / report: training works, resume is exact, ONNX round trip, one-line errors."""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ubnas.cli import main
from ubnas.data import load_dataset
from ubnas.spec import load_spec
from ubnas.train import TrainConfig, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a small network for the shipped digits (1 x 8 x 8, 10 classes): fast on a CPU
SMALL = {
    "ubnas_spec": 1, "input_shape": [1, 8, 8], "num_classes": 10,
    "stem": {"kernel": 3, "channels": 16},
    "cells": [
        {"reduce": False, "pool_after": True, "channels": 16, "nodes": [
            [{"from": 0, "op": "conv_3x3"}, {"from": 1, "op": "sep_conv_3x3"}],
            [{"from": 1, "op": "skip_connect"}, {"from": 2, "op": "conv_3x3"}]]},
        {"reduce": False, "pool_after": True, "channels": 24, "nodes": [
            [{"from": 0, "op": "max_pool_3x3"}, {"from": 1, "op": "conv_3x3"}],
            [{"from": 0, "op": "conv_3x3"}, {"from": 2, "op": "skip_connect"}]]}],
    "classifier": {"in_features": 48},
    "provenance": {"search_space": "handmade", "accelerator": "edge_32x32"},
}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def write_spec(path, changes=None):
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    for key, value in (changes or {}).items():
        target = data
        parts = key.split("/")
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        target[int(last) if isinstance(target, list) else last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def config(spec, out, **kw):
    kw = {"epochs": 2, "batch_size": 64, "lr": 0.1, "seed": 0, "device": "cpu", **kw}
    return TrainConfig(spec=str(spec), out=str(out), data="digits", **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted 2-epoch run on digits (shared by several tests)."""
    root = tmp_path_factory.mktemp("trained")
    spec = write_spec(root / "arch.yaml")
    result = train(config(spec, root / "run"), progress=False)
    return spec, root / "run", result


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- training -----------------------------------------------------------------------------------
def test_train_digits_above_chance(trained):
    spec, run, result = trained
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.5          # chance is 0.1
    assert metrics["params"] == sum(p.numel() for p in result.model.parameters())
    hw = metrics["hardware"]
    assert hw["accelerator"] == "edge_32x32" and hw["accelerator_from"] == "spec provenance"
    assert hw["latency_us"] > 0 and 0 < hw["utilization"] <= 1 and hw["macs"] > 0
    assert metrics["spec_hash"] == load_spec(spec).arch_hash()
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert (run / "checkpoint.pt").is_file() and not list(run.glob(".*tmp"))


def test_metrics_use_the_accelerator_the_spec_records(tmp_path, capsys):
    """A search on a YAML accelerator (calibrated or custom) records its whole definition in the
    spec, so train costs the network on it, not on a preset of the same or no name."""
    from hwmodels import Accelerator, Calibration, estimate
    from ubnas.build import build_network
    npu = Accelerator("my_npu", 8, 8, dataflow="os", calibration=Calibration(fold_overhead_cycles=7.0))
    spec = write_spec(tmp_path / "arch.yaml", {"provenance/accelerator": "my_npu",
                                               "provenance/accelerator_config": npu.to_dict()})
    train(config(spec, tmp_path / "run", epochs=1), progress=False)
    hw = json.loads((tmp_path / "run" / "metrics.json").read_text())["hardware"]
    expected = estimate(build_network(load_spec(spec)), load_spec(spec).input_shape, npu)
    assert hw["accelerator"] == "my_npu" and hw["accelerator_from"] == "spec provenance"
    assert hw["cycles"] == pytest.approx(expected.cycles) and hw["accelerator_config"]["array_rows"] == 8
    # a name alone that is no preset: the default, and a note that says so
    spec = write_spec(tmp_path / "old.yaml", {"provenance/accelerator": "my_npu"})
    train(config(spec, tmp_path / "old", epochs=1), progress=False)
    assert "searched on 'my_npu', which is no preset" in capsys.readouterr().out
    assert json.loads((tmp_path / "old" / "metrics.json").read_text())["hardware"]["accelerator"] == "uboost"


def test_metrics_are_at_the_batch_the_search_costed_at(tmp_path):
    """A spec searched with --hw-batch 4 gets its hardware figures at batch 4, as its search logged."""
    from hwmodels import estimate, load_accelerator
    from ubnas.build import build_network
    spec = write_spec(tmp_path / "arch.yaml", {"provenance/hw_batch": 4})
    train(config(spec, tmp_path / "run", epochs=1), progress=False)
    hw = json.loads((tmp_path / "run" / "metrics.json").read_text())["hardware"]
    model, shape = build_network(load_spec(spec)), load_spec(spec).input_shape
    acc = load_accelerator("edge_32x32")   # SMALL's searched accelerator
    at4 = estimate(model, shape, acc, batch=4)
    assert hw["accelerator"] == "edge_32x32" and hw["batch"] == 4 and hw["cycles"] == pytest.approx(at4.cycles)
    assert at4.cycles > estimate(model, shape, acc).cycles


def test_a_bad_hw_batch_fails_before_training_and_an_edited_spec_gets_a_note(tmp_path, capsys):
    spec = write_spec(tmp_path / "bad.yaml", {"provenance/hw_batch": 4.0})
    with pytest.raises(ValueError, match="provenance.hw_batch: expected a positive integer, got 4.0"):
        train(config(spec, tmp_path / "bad", epochs=1), progress=False)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()
    exported = load_spec(write_spec(tmp_path / "a.yaml")).arch_hash()
    spec = write_spec(tmp_path / "edited.yaml", {"provenance/arch_hash": exported, "cells/0/channels": 24})
    capsys.readouterr()
    train(config(spec, tmp_path / "edited", epochs=1), progress=False)
    assert f"note: {spec} was edited after the search exported it" in capsys.readouterr().out
    from ubnas.report import load_run
    assert any("was edited after the search exported it" in n for n in load_run(tmp_path / "edited").notes)


def test_resuming_a_checkpoint_that_lacks_keys_is_a_one_line_error(trained, tmp_path, capsys):
    spec, _, _ = trained
    out = tmp_path / "old"
    train(config(spec, out), progress=False, stop_after_epoch=1)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    del ckpt["generator"]
    torch.save(ckpt, out / "checkpoint.pt")
    err = one_line_error(capsys, ["train", str(spec), "--out", str(out), "--resume", "--quiet"])
    assert err == (f"ubnas: error: {out / 'checkpoint.pt'}: checkpoint lacks generator (written by another "
                   f"ubnas version?); start over without --resume")


@pytest.mark.parametrize("key,value,blamed", [
    ("epoch", -3, "epoch -3 (expected a whole number from 0 to the run's 2 epochs)"),
    ("epoch", "one", "epoch 'one' (expected"),
    ("history", 5, "history (expected a list of log rows)"),
    ("scheduler", {"step": -1}, "scheduler (expected {'step': a whole number >= 0})"),
    # these were tracebacks (AttributeError, TypeError, torch's RuntimeError / ValueError)
    ("config", [], "config (expected a mapping of options, got list)"),
    ("config", lambda v: {**v, "lr": "x"}, "config (key 'lr': expected a number, got 'x')"),
    ("config", lambda v: {**v, "momentum": 2.0}, "config (key 'momentum': expected a value in [0, 1), got 2.0)"),
    ("config", lambda v: {**v, "label_smoothing": 2.0}, "config (key 'label_smoothing': expected a value in"),
    ("config", lambda v: {**v, "epochs": "2"}, "config (key 'epochs': expected a positive integer, got '2')"),
    ("config", lambda v: {**v, "batch_size": 16.0}, "config (key 'batch_size': expected a positive integer, got 16.0)"),
    ("generator", lambda v: v[:3], "its generator does not load ("),
    ("torch_rng", lambda v: v[:3], "its torch_rng does not load ("),
    ("model", lambda v: {**v, "extra": torch.zeros(1)}, "its model does not load (Error(s) in loading state_dict "
                                                        "for Network: Unexpected key(s) in state_dict: \"extra\""),
    ("optimizer", lambda v: {**v, "param_groups": v["param_groups"][:1]},
     "its optimizer does not load (loaded state dict has a different number of parameter groups)"),
])
def test_resuming_a_damaged_checkpoint_is_a_one_line_error(trained, tmp_path, capsys, key, value, blamed):
    spec, _, _ = trained
    out = tmp_path / "old"
    train(config(spec, out), progress=False, stop_after_epoch=1)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt[key] = value(ckpt[key]) if callable(value) else value
    torch.save(ckpt, out / "checkpoint.pt")
    err = one_line_error(capsys, ["train", str(spec), "--out", str(out), "--resume", "--quiet"])
    assert err.startswith(f"ubnas: error: {out / 'checkpoint.pt'}: damaged checkpoint: ")
    assert blamed in err and err.endswith("start over without --resume")


def test_resume_gives_the_same_weights(trained, tmp_path):
    spec, _, full = trained
    out = tmp_path / "resumed"
    train(config(spec, out), progress=False, stop_after_epoch=1)
    assert not (out / "metrics.json").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    resumed = train(config(spec, out, lr=0.5), resume=True, progress=False)   # the checkpoint's lr wins
    assert resumed.metrics["config"]["lr"] == 0.1
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.metrics["test_acc"] == full.metrics["test_acc"]


def test_an_interrupted_start_over_does_not_push_the_finished_run_out(tmp_path, capsys):
    """Finished, then started over and stopped mid-run, then started over again: the finished run's
    files stay in OUT/previous (they were replaced by the interrupted run's before), the interrupted
    run's go to OUT/interrupted, and the note says where they go."""
    spec = write_spec(tmp_path / "arch.yaml")
    out = tmp_path / "run"
    train(config(spec, out, epochs=1), progress=False)
    finished = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.json")}
    train(config(spec, out, epochs=2), progress=False, stop_after_epoch=1)
    stopped = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    train(config(spec, out, epochs=1), progress=False)
    assert f"move to {out / 'interrupted'} (it did not finish)" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (out / "previous").iterdir()} == finished
    assert {p.name: p.read_bytes() for p in (out / "interrupted").iterdir()} == {"checkpoint.pt": stopped}
    newest = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.json")}
    train(config(spec, out, epochs=1), progress=False)   # a finished run replaces the one before it
    assert f"move to {out / 'previous'} (pass" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (out / "previous").iterdir()} == newest


def test_notes_say_what_happens_to_the_checkpoint(tmp_path, capsys):
    spec = write_spec(tmp_path / "arch.yaml")
    out = tmp_path / "run"
    train(config(spec, out, epochs=1), resume=True)     # nothing to resume: a new run, and it says so
    assert f"no {out / 'checkpoint.pt'} to resume; starting a new run" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["epoch"] == 1
    finished = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.json")}
    train(config(spec, out, epochs=1), progress=False)  # a checkpoint there and no --resume: set aside;
    assert "checkpoint.pt exists; starting over" in capsys.readouterr().out   # --quiet hides bars, not notes
    assert {p.name: p.read_bytes() for p in (out / "previous").iterdir()} == finished
    train(config(spec, out, epochs=1, lr=0.3, seed=0), resume=True, progress=False)
    assert "with its saved schedule; ignored: --lr (kept: 0.1)\n" in capsys.readouterr().out   # seed 0 is the saved value
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match="--out .*afile: exists and is not a directory"):
        train(config(spec, tmp_path / "afile", epochs=1), progress=False)


def test_resume_names_a_flag_set_to_its_default_that_the_checkpoint_overrides(tmp_path, capsys):
    spec = write_spec(tmp_path / "arch.yaml")
    out = tmp_path / "run"
    train(config(spec, out, epochs=2, lr=0.3), progress=False, stop_after_epoch=1)
    capsys.readouterr()
    default_lr = TrainConfig(spec="x").lr
    assert main(["train", str(spec), "--out", str(out), "--resume", "--quiet", "--epochs", "2",
                 "--lr", str(default_lr), "--device", "cpu"]) == 0
    assert "ignored: --lr (kept: 0.3)" in capsys.readouterr().out
    # --augment is named as the flag spells it ('kept: None' is no value of --augment)
    assert main(["train", str(spec), "--out", str(out), "--resume", "--quiet", "--epochs", "2",
                 "--augment", "on", "--device", "cpu"]) == 0
    assert "ignored: --augment (kept: auto)" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["config"]["lr"] == 0.3


def test_resume_keeps_the_data_dir_and_accelerator_of_the_first_run(tmp_path, capsys, monkeypatch):
    """--resume without --data-dir or --hw runs on the first invocation's data and hardware, also
    from another directory than the one a relative --data-dir was given in."""
    import pickle

    import numpy as np

    from ubnas.data import CIFAR_FILES
    cifar = tmp_path / "cifar"
    cifar.mkdir()
    rng = np.random.default_rng(0)
    for name in CIFAR_FILES:   # 4 random images per batch file, in the python-pickle format
        with open(cifar / name, "wb") as fh:
            pickle.dump({b"labels": [int(v) for v in rng.integers(0, 10, 4)],
                         b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8)}, fh)
    spec = write_spec(tmp_path / "arch.yaml", {"input_shape": [3, 32, 32]})
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    first = TrainConfig(spec=str(spec), out=str(out), data="cifar10", data_dir="cifar", epochs=2,
                        device="cpu", hw="uboost")   # the spec was searched on edge_32x32
    train(first, progress=False, stop_after_epoch=1)
    monkeypatch.chdir(out)
    assert main(["train", str(spec), "--out", str(out), "--resume", "--quiet"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["data_dir"] == str(cifar) and metrics["hardware"]["accelerator"] == "uboost"
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]


def _fake_cifar(root, seed, images=4):
    """A CIFAR-10 directory in the python-pickle format: ``images`` random images per batch file."""
    import pickle

    import numpy as np

    from ubnas.data import CIFAR_FILES
    root.mkdir()
    rng = np.random.default_rng(seed)
    for name in CIFAR_FILES:
        with open(root / name, "wb") as fh:
            pickle.dump({b"labels": [int(v) for v in rng.integers(0, 10, images)],
                         b"data": rng.integers(0, 256, (images, 3072), dtype=np.uint8)}, fh)
    return root


def test_the_quiet_summary_names_the_accelerator_and_batch_of_its_latency(tmp_path, capsys):
    """--quiet printed 'latency 10.69 us' for a spec searched at batch 4: a batch's latency, read as
    one image's; the line without --quiet said 'on uboost at batch 4'."""
    spec = write_spec(tmp_path / "arch.yaml", {"provenance/hw_batch": 4})
    out = tmp_path / "run"
    assert main(["train", str(spec), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    hw = json.loads((out / "metrics.json").read_text())["hardware"]
    assert hw["batch"] == 4
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{hw['latency_us']:.2f} us at {100 * hw['utilization']:.2f} % utilization on edge_32x32 at batch 4; " \
           f"wrote {out / 'metrics.json'}" in last, last


def test_resume_on_other_data_is_refused_and_on_a_moved_copy_goes_on(tmp_path, capsys):
    """--data-dir may say where the data moved, not change it: a run resumed on another data set
    kept the first one's schedule length (the lr rose again past its end) and mixed the two."""
    import shutil
    spec = write_spec(tmp_path / "arch.yaml", {"input_shape": [3, 32, 32]})
    first, other = _fake_cifar(tmp_path / "first", seed=0), _fake_cifar(tmp_path / "other", seed=1, images=6)
    out = tmp_path / "run"
    train(TrainConfig(spec=str(spec), out=str(out), data="cifar10", data_dir=str(first), epochs=2,
                      batch_size=8, device="cpu"), progress=False, stop_after_epoch=1)
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["train", str(spec), "--out", str(out), "--resume", "--quiet", "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "written on other data: 20 training / 4 test images of 3x32x32" in err, err
    assert "cifar10 in " + str(other) + " now has 30 training / 6 test images" in err, err
    assert len(err.splitlines()) == 1 and (out / "checkpoint.pt").read_bytes() == before
    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    assert main(["train", str(spec), "--out", str(out), "--resume", "--quiet", "--data-dir", str(moved)]) == 0, \
        capsys.readouterr().err
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2]


def test_resume_from_another_directory_keeps_a_relative_accelerator_file(tmp_path, capsys, monkeypatch):
    """--hw my.yaml was saved as typed: a --resume from another directory failed ('no such preset or
    file'), or silently costed another my.yaml found there."""
    from hwmodels.accelerator import PRESET_DIR
    preset = (PRESET_DIR / "edge_16x16.yaml").read_text()
    (tmp_path / "my.yaml").write_text(preset)
    spec = write_spec(tmp_path / "arch.yaml")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    train(TrainConfig(spec=str(spec), out=str(out), epochs=2, device="cpu", hw="my.yaml"), progress=False,
          stop_after_epoch=1)
    out.joinpath("my.yaml").write_text(preset.replace("array_rows: 16", "array_rows: 256"))   # another one
    monkeypatch.chdir(out)
    assert main(["train", str(spec), "--out", str(out), "--resume", "--quiet"]) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["hw"] == str(tmp_path / "my.yaml")
    assert metrics["hardware"]["accelerator_config"]["array_rows"] == 16
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]


@pytest.mark.parametrize("data, shape, padding", [("digits", [1, 8, 8], 1), ("synthetic", [3, 32, 32], 4)])
def test_augmentation_pads_the_crop_by_an_eighth_of_the_image(tmp_path, monkeypatch, data, shape, padding):
    """--augment on padded every image by CIFAR's 4 pixels: half of an 8 x 8 digit, which took 10
    epochs on digits from 98.9 % to 73.8 % test accuracy."""
    import ubnas.train as train_module
    from ubnas.data import augment_crop_flip
    seen = []

    def spy(x, pad, generator):
        seen.append((tuple(x.shape[1:]), pad))
        return augment_crop_flip(x, pad, generator)
    monkeypatch.setattr(train_module, "augment_crop_flip", spy)
    spec = write_spec(tmp_path / "arch.yaml", {"input_shape": shape})
    train(TrainConfig(spec=str(spec), out=str(tmp_path / "run"), epochs=1, data=data, device="cpu", augment=True,
                      batch_size=256), progress=False)
    assert seen and set(seen) == {(tuple(shape), padding)}


def test_train_defaults_to_the_data_set_the_spec_was_searched_on(tmp_path, capsys):
    spec = write_spec(tmp_path / "arch.yaml", {"input_shape": [3, 32, 32], "provenance/data": "synthetic"})
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 0
    assert "note: training on synthetic, the data set" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["data"] == "synthetic"
    # --data given: taken as given (digits images are 1x8x8, so the spec's shape is refused)
    err = one_line_error(capsys, ["train", str(spec), "--out", str(tmp_path / "r2"), "--data", "digits", "--quiet"])
    assert "data set digits has images of [1, 8, 8]" in err


def test_a_spec_searched_on_an_unknown_data_set_says_what_it_trains_on(tmp_path, capsys):
    """provenance.data 'foo' (a renamed or newer data set) fell back to digits without a word."""
    spec = write_spec(tmp_path / "arch.yaml", {"provenance/data": "foo"})
    out = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(out), "--epochs", "1", "--quiet"]) == 0
    assert (f"note: {spec} was searched on 'foo', which is no data set ubnas reads; training on digits "
            f"(pass --data to choose)") in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["config"]["data"] == "digits"


def test_a_data_dir_that_the_data_set_does_not_read_gets_a_note(tmp_path, capsys):
    """train --data digits --data-dir DIR ignored DIR without a word (ubnas search says so)."""
    spec = write_spec(tmp_path / "arch.yaml")
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--epochs", "1", "--data", "digits",
                 "--data-dir", str(tmp_path), "--quiet"]) == 0
    assert f"note: --data-dir is read only with --data cifar10; digits ignores {tmp_path}" in capsys.readouterr().out


def test_onecycle_and_label_smoothing_run(tmp_path):
    spec = write_spec(tmp_path / "arch.yaml")
    from ubnas.train import lr_at
    cfg = config(spec, tmp_path / "run", schedule="onecycle", epochs=1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(cfg.lr / 25) and max(lrs) == pytest.approx(cfg.lr, rel=1e-3)
    assert lrs[-1] < cfg.lr / 100
    code = main(["train", str(spec), "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--schedule", "onecycle", "--label-smoothing", "0.1", "--weights-decay", "1e-4",
                 "--device", "cpu", "--quiet", "--hw", "uboost"])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["weight_decay"] == 1e-4 and metrics["hardware"]["accelerator"] == "uboost"


def test_a_run_that_starts_over_removes_the_old_metrics(trained, tmp_path, capsys):
    """metrics.json is written at the end only: a restarted run interrupted before then must not
    leave the previous run's result to pass for its own; a refused run changes nothing."""
    import shutil
    spec, run, _ = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for bad in (["--lr", "inf"], ["--hw", "tpu_v9"]):   # refused: no note that the run starts over
        capsys.readouterr()
        code = main(["train", str(spec), "--out", str(out), "--epochs", "1", "--quiet", *bad])
        said = capsys.readouterr()
        assert code != 0 and len(said.err.strip().splitlines()) == 1, said.err
        assert "starting over" not in said.out, said.out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    train(config(spec, out, epochs=3), progress=False, stop_after_epoch=1)
    assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    # interrupted in the first epoch of yet another restart: the old checkpoint must not stay to --resume

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    import ubnas.train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ubnas.train, "evaluate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(config(spec, out, epochs=3, lr=0.02), progress=False)
    assert not (out / "checkpoint.pt").exists()


def test_train_refuses_to_overwrite_a_search_checkpoint(tmp_path, capsys):
    """A search run directory: starting over would overwrite the search checkpoint, so the search
    could no longer be resumed; --resume cannot use it either.  Nothing is written."""
    spec = write_spec(tmp_path / "arch.yaml")
    out = tmp_path / "search"
    out.mkdir()
    torch.save({"config": {"space": "tiny"}, "epoch": 1, "arch_steps": 10, "mu": 0.0, "model": {},
                "windows": {"cell0": [8, 8, 4]}, "w_opt": {}, "a_opt": {}}, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    for extra in ([], ["--resume"]):
        err = one_line_error(capsys, ["train", str(spec), "--out", str(out), "--epochs", "1", "--quiet", *extra])
        assert str(out / "checkpoint.pt") in err and "search checkpoint" in err and "another --out" in err
        assert "starting over" not in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == before and [p.name for p in out.iterdir()] == ["checkpoint.pt"]


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "nan"), ("--momentum", "5"),
                                        ("--momentum", "1"), ("--momentum", "-1"), ("--weight-decay", "nan"),
                                        ("--weight-decay", "inf"), ("--grad-clip", "nan"), ("--grad-clip", "-1"),
                                        ("--seed", "-1"), ("--seed", "99999999999999999999999"),
                                        ("--lr", "1e39"), ("--weight-decay", "1e39"), ("--grad-clip", "1e39")])
def test_values_that_make_training_diverge_are_refused(tmp_path, capsys, flag, value):
    spec = write_spec(tmp_path / "arch.yaml")
    err = one_line_error(capsys, ["train", str(spec), "--out", str(tmp_path / "run"), "--epochs", "1",
                                  "--quiet", flag, value])
    assert err.startswith(f"ubnas: error: {flag}: expected"), err
    assert not (tmp_path / "run").exists()


def test_grad_clip_zero_still_means_no_clipping(tmp_path):
    config(tmp_path / "arch.yaml", tmp_path / "run", grad_clip=0.0, momentum=0.0, weight_decay=0.0).validate()


@pytest.mark.parametrize("blow_up", ["epoch 2", "last step of epoch 1"])
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, blow_up):
    """An infinite learning rate from one step on makes the weights (and then the loss) NaN: the
    run stops with an error that says where and suggests a lower --lr, writes no metrics.json, and
    the checkpoint on disk holds finite weights of the last finished epoch."""
    import ubnas.train as train_module
    real_lr_at = train_module.lr_at
    spec = write_spec(tmp_path / "arch.yaml")
    out = tmp_path / "run"

    def lr_at(step, total, cfg):
        steps_per_epoch = total // cfg.epochs
        first_bad = steps_per_epoch + 2 if blow_up == "epoch 2" else steps_per_epoch - 1
        return math.inf if step >= first_bad else real_lr_at(step, total, cfg)

    monkeypatch.setattr(train_module, "lr_at", lr_at)
    with pytest.raises(ValueError, match="training diverged") as info:   # the CLI prints it on one line
        train(config(spec, out, epochs=3), progress=False)
    message = str(info.value)
    assert "training diverged" in message and "lower --lr" in message
    assert "metrics.json" not in [p.name for p in out.iterdir()]
    if blow_up == "epoch 2":
        # step 3 of epoch 2 makes the weights NaN, so step 4's loss is NaN
        assert "epoch 2/3, step 4/" in message and f"{out / 'checkpoint.pt'} keeps epoch 1" in message
        ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
        assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values()
                                          if t.is_floating_point())
    else:   # NaN weights after the last step of epoch 1, with a finite loss all epoch: never saved
        assert "epoch 1/3" in message and "no checkpoint of this run was written" in message
        assert not (out / "checkpoint.pt").exists()


def test_train_seconds_count_every_invocation_of_a_resumed_run(trained, tmp_path):
    spec, _, _ = trained
    out = tmp_path / "run"
    train(config(spec, out), progress=False, stop_after_epoch=1)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["history"][0]["seconds"] = 1000.0     # as if the first invocation's epoch had been slow
    torch.save(ckpt, out / "checkpoint.pt")
    metrics = train(config(spec, out), resume=True, progress=False).metrics
    assert metrics["train_seconds"] >= 1000.0 + metrics["history"][1]["seconds"]
    assert json.loads((out / "metrics.json").read_text())["train_seconds"] == metrics["train_seconds"]


# -- ONNX ---------------------------------------------------------------------------------------
def test_onnx_round_trip(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    spec, run, result = trained
    file = tmp_path / "net.onnx"
    assert main(["export", str(spec), "--weights", str(run / "checkpoint.pt"), "--onnx", str(file)]) == 0
    said = capsys.readouterr()
    assert "max abs diff" in said.out and said.err == ""   # a finished run: no note, no warning
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 8, 8)                      # another batch size than the export's
    model = result.model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (5, 10) and abs(got - expected).max() <= 1e-4


def test_export_of_a_stopped_runs_weights_says_they_are_unfinished(tmp_path, capsys):
    """Exporting what a stopped run left (epoch 1 of 3) wrote the file with no hint that the
    weights are partly trained; an untrained export warns, this said nothing."""
    pytest.importorskip("onnxscript")
    spec, out = write_spec(tmp_path / "arch.yaml"), tmp_path / "run"
    train(config(spec, out, epochs=3), progress=False, stop_after_epoch=1)
    file = tmp_path / "net.onnx"
    assert main(["export", str(spec), "--weights", str(out / "checkpoint.pt"), "--onnx", str(file), "--no-check"]) == 0
    err = capsys.readouterr().err
    assert err == (f"note: {out / 'checkpoint.pt'} holds epoch 1 of 3 (training unfinished; `ubnas train {spec} "
                   f"--out {out} --resume` finishes it)\n"), err
    # a copy under another name: its directory is no run to resume; a config that is no mapping exports
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save(ckpt, tmp_path / "best.pt")
    torch.save({**ckpt, "config": None}, tmp_path / "damaged.pt")
    assert main(["export", str(spec), "--weights", str(tmp_path / "best.pt"), "--onnx", str(file), "--no-check"]) == 0
    assert capsys.readouterr().err == (f"note: {tmp_path / 'best.pt'} holds epoch 1 of 3 (training unfinished; "
                                       f"--resume of the run directory that wrote it finishes it)\n")
    assert main(["export", str(spec), "--weights", str(tmp_path / "damaged.pt"), "--onnx", str(file), "--no-check"]) == 0


def test_the_onnx_check_scales_with_the_outputs_and_says_when_it_shows_little(trained, tmp_path, capsys):
    """The check's absolute 1e-4 refused a correct file whose outputs are ~1e6 (float32 rounding is
    ~0.1 there), and passed a network whose outputs do not depend on the input without a word."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    spec, run, _ = trained
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    for name, change in (("large", lambda w, b: (w * 1e5, b)), ("flat", lambda w, b: (w * 0, b))):
        model = dict(ckpt["model"])
        model["classifier.weight"], model["classifier.bias"] = change(model["classifier.weight"],
                                                                        model["classifier.bias"])
        torch.save({**ckpt, "model": model}, tmp_path / f"{name}.pt")
        code = main(["export", str(spec), "--weights", str(tmp_path / f"{name}.pt"), "--onnx",
                     str(tmp_path / f"{name}.onnx")])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert ("the outputs hardly change with the input" in out) == (name == "flat"), out


def test_weights_that_do_not_fit_name_the_keys(trained, tmp_path, capsys):
    """torch's first line ('Error(s) in loading state_dict for Network:') was all the error said, and
    a checkpoint whose 'model' is not a dict was a TypeError traceback."""
    spec, run, _ = trained
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    model = dict(ckpt["model"])
    del model["classifier.bias"]
    for name, state in (("missing", model), ("list", [1, 2])):
        torch.save({**ckpt, "model": state}, tmp_path / f"{name}.pt")
    export = ["export", str(spec), "--onnx", str(tmp_path / "a.onnx"), "--weights"]
    err = one_line_error(capsys, export + [str(tmp_path / "missing.pt")])
    assert 'Missing key(s) in state_dict: "classifier.bias"' in err
    err = one_line_error(capsys, export + [str(tmp_path / "list.pt")])
    assert "list.pt: its 'model' is not a state dict (got list)" in err


def test_an_onnx_file_that_fails_the_check_is_not_written(tmp_path, capsys, monkeypatch):
    """A failed onnxruntime comparison leaves the last good file as it was (and no temp file)."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import ubnas.export

    spec = write_spec(tmp_path / "arch.yaml")
    file = tmp_path / "net.onnx"
    assert main(["export", str(spec), "--onnx", str(file)]) == 0
    good = file.read_bytes()
    assert "warning: the exported network is untrained" in capsys.readouterr().err   # no --weights
    monkeypatch.setattr(ubnas.export, "TOLERANCE", -1.0)   # no difference passes
    err = one_line_error(capsys, ["export", str(spec), "--onnx", str(file)])
    assert str(file) in err and "differs from PyTorch's" in err and "not written" in err
    assert file.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.yaml", "net.onnx"]


def test_an_onnx_file_onnxruntime_cannot_load_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """onnxruntime's own exceptions (an opset newer than it knows raises its 'Fail', a plain
    Exception) ended the export in a traceback."""
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")

    class Fail(Exception):
        pass

    def refuse(path, providers=None):
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : Load model failed: opset 23 is under development")
    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    spec = write_spec(tmp_path / "arch.yaml")
    file = tmp_path / "net.onnx"
    err = one_line_error(capsys, ["export", str(spec), "--onnx", str(file)])
    assert err.startswith(f"ubnas: error: {file}: onnxruntime {onnxruntime.__version__} cannot run the exported "
                          f"file (Fail: [ONNXRuntimeError]") and err.endswith("or --no-check to write it unchecked"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch.yaml"]
    assert main(["export", str(spec), "--onnx", str(file), "--no-check"]) == 0 and file.exists()


def test_a_torch_without_the_export_based_onnx_exporter_is_named(tmp_path, capsys, monkeypatch):
    """torch before 2.6 has no dynamo=/external_data= options: a TypeError traceback at export."""
    pytest.importorskip("onnxscript")

    def old_export(model, args, f, export_params=True, verbose=False, opset_version=None):
        raise AssertionError("not to be called")
    monkeypatch.setattr(torch.onnx, "export", old_export)
    spec = write_spec(tmp_path / "arch.yaml")
    err = one_line_error(capsys, ["export", str(spec), "--onnx", str(tmp_path / "net.onnx")])
    assert err == f"ubnas: error: ONNX export needs torch 2.6 or newer (its torch.export-based exporter); " \
                  f"this is torch {torch.__version__}", err


# -- bad inputs: non-zero exit, one line, no traceback ---------------------------------------------
def test_spec_from_a_newer_version(tmp_path):
    spec = write_spec(tmp_path / "arch.yaml", {"ubnas_spec": 2})
    env = {k: v for k, v in os.environ.items() if k != "UBNAS_DEBUG"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-m", "ubnas", "train", str(spec), "--epochs", "1",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert str(spec) in lines[0] and "key 'ubnas_spec' is 2" in lines[0] and "upgrade ubnas" in lines[0]


def test_unknown_op(tmp_path, capsys):
    spec = write_spec(tmp_path / "arch.yaml", {"cells/1/nodes/1/0/op": "conv_9x9"})
    err = one_line_error(capsys, ["export", str(spec), "--onnx", str(tmp_path / "x.onnx")])
    assert str(spec) in err and "cells[1].nodes[1][0].op" in err and "conv_9x9" in err
    assert not (tmp_path / "x.onnx").exists()


def test_widths_that_do_not_match(tmp_path, capsys):
    spec = write_spec(tmp_path / "arch.yaml", {"classifier/in_features": 32})
    err = one_line_error(capsys, ["train", str(spec), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert str(spec) in err and "classifier.in_features" in err and "expected 48" in err


def test_a_network_too_large_to_build_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    """Valid widths whose weights do not fit in memory: one line, and no empty OUT behind."""
    def too_large(spec):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4398046511104 bytes")
    monkeypatch.setattr("ubnas.train.build_network", too_large)
    spec = write_spec(tmp_path / "arch.yaml")
    err = one_line_error(capsys, ["train", str(spec), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert err.startswith("ubnas: error: out of memory") and err.endswith("check the spec's widths or --batch-size")
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr("ubnas.export.build_network", too_large)   # export has no batch to make smaller
    err = one_line_error(capsys, ["export", str(spec), "--onnx", str(tmp_path / "a.onnx")])
    assert err.endswith("check the spec's widths or input_shape"), err


def test_spec_that_does_not_fit_the_data(tmp_path, capsys):
    spec = write_spec(tmp_path / "arch.yaml", {"input_shape": [3, 8, 8]})
    err = one_line_error(capsys, ["train", str(spec), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert "input_shape" in err and "digits" in err
    assert not (tmp_path / "run").exists()   # a refused run leaves no empty run directory


def test_bad_hw_fails_before_training(tmp_path, capsys):
    spec = write_spec(tmp_path / "arch.yaml")
    err = one_line_error(capsys, ["train", str(spec), "--epochs", "1", "--hw", "tpu_v9",
                                  "--out", str(tmp_path / "run"), "--quiet"])
    assert "tpu_v9" in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("opset", [3, 17, 999])
def test_export_refuses_an_opset_it_cannot_write(tmp_path, capsys, opset):
    """--opset 17 went through the exporter's conversion, which fails for this network and used to
    leave an opset-18 file behind with exit status 0; it is refused up front now, as 3 and 999 are."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    spec = write_spec(tmp_path / "arch.yaml")
    file = tmp_path / "x.onnx"
    code = main(["export", str(spec), "--onnx", str(file), "--opset", str(opset), "--no-check"])
    err = capsys.readouterr().err.strip()
    if opset in (3, 17, 999):   # refused before any export, with the range the exporter can write
        newest = onnx.defs.onnx_opset_version()
        assert code != 0 and err == (f"ubnas: error: --opset {opset}: expected 18..{newest} (the exporter writes "
                                     f"opset 18 or newer; this onnx package knows up to {newest})")
        assert not file.exists()
    elif code == 0:   # a converter that can write this opset: then the file must have it
        assert next(o.version for o in onnx.load(str(file)).opset_import if o.domain in ("", "ai.onnx")) == opset
    else:
        assert f"--opset {opset}" in err and len(err.splitlines()) == 1, err
        assert not file.exists()


def test_export_to_an_unwritable_place_names_the_option(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    spec = write_spec(tmp_path / "arch.yaml")
    (tmp_path / "a_file").write_text("")
    err = one_line_error(capsys, ["export", str(spec), "--onnx", str(tmp_path / "a_file" / "x.onnx")])
    assert err.startswith(f"ubnas: error: --onnx {tmp_path / 'a_file' / 'x.onnx'}: cannot write there"), err


def test_export_refuses_to_write_over_its_inputs_or_a_runs_files(trained, tmp_path, capsys):
    """--onnx the SPEC itself, the --weights checkpoint or a run's metrics.json: each was replaced
    by the ONNX file without a word."""
    pytest.importorskip("onnxscript")
    spec, run, _ = trained
    spec_copy = tmp_path / "spec.yaml"
    spec_copy.write_text(Path(spec).read_text())
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((Path(run) / "checkpoint.pt").read_bytes())
    metrics = tmp_path / "run" / "metrics.json"
    metrics.write_text("{}")
    before = {p: p.read_bytes() for p in (spec_copy, ckpt, metrics)}
    for onnx, said in ((spec_copy, "is the SPEC"), (ckpt, "is --weights"), (metrics, "would replace a run's metrics.json")):
        err = one_line_error(capsys, ["export", str(spec_copy), "--weights", str(ckpt), "--onnx", str(onnx)])
        assert f"--onnx {onnx}: {said}" in err, err
    assert {p: p.read_bytes() for p in before} == before


def test_checkpoint_from_another_spec(trained, tmp_path, capsys):
    _, run, _ = trained
    other = write_spec(tmp_path / "other.yaml", {"cells/1/channels": 32, "classifier/in_features": 64})
    err = one_line_error(capsys, ["export", str(other), "--weights", str(run / "checkpoint.pt"),
                                  "--onnx", str(tmp_path / "x.onnx")])
    assert "checkpoint.pt" in err and "another architecture" in err and str(other) in err
    # resuming a run directory with the wrong spec is refused the same way
    err = one_line_error(capsys, ["train", str(other), "--epochs", "2", "--out", str(run), "--resume"])
    assert "another architecture" in err
    # a checkpoint that is not a train checkpoint (a search's supernet state, garbage)
    torch.save({"model": {}, "config": {}}, tmp_path / "search.pt")
    err = one_line_error(capsys, ["export", str(other), "--weights", str(tmp_path / "search.pt"),
                                  "--onnx", str(tmp_path / "x.onnx")])
    assert "not a checkpoint written by `ubnas train`" in err
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    err = one_line_error(capsys, ["export", str(other), "--weights", str(tmp_path / "junk.pt"),
                                  "--onnx", str(tmp_path / "x.onnx")])
    assert "junk.pt" in err
    torch.save({"model": {}, "spec_hash": argparse.Namespace()}, tmp_path / "objects.pt")   # a pickled object
    err = one_line_error(capsys, ["export", str(other), "--weights", str(tmp_path / "objects.pt"),
                                  "--onnx", str(tmp_path / "x.onnx")])
    assert "Python objects beyond tensors" in err and "weights_only" not in err   # no advice to unpickle


# -- report ---------------------------------------------------------------------------------------
def test_report_costs_a_run_on_the_accelerator_its_spec_records(tmp_path):
    from hwmodels import Accelerator
    from ubnas.report import load_run
    npu = Accelerator("my_npu", 8, 8, dataflow="os")
    for name, provenance in (("full", {"provenance/accelerator": "my_npu",
                                       "provenance/accelerator_config": npu.to_dict()}),
                             ("name_only", {"provenance/accelerator": "my_npu"})):
        (tmp_path / name).mkdir()   # a search directory without config.yaml
        write_spec(tmp_path / name / "arch.yaml", provenance)
    assert load_run(tmp_path / "full").cost.accelerator == npu
    run = load_run(tmp_path / "name_only")
    assert run.cost.accelerator.name == "uboost" and any("'my_npu' is no preset" in n for n in run.notes)


def test_report_over_search_and_train_runs(trained, tmp_path, capsys):
    spec, run, _ = trained
    search = tmp_path / "search"
    search.mkdir()
    (search / "config.yaml").write_text(yaml.safe_dump({"space": "tiny", "hw": "uboost", "data": "digits",
                                                        "epochs": 3, "lambda_latency": 0.5}))
    (search / "search_log.csv").write_text(
        "epoch,stage,train_loss,train_acc,val_loss,val_acc,latency_us,utilization,extra_col\n"
        "1,op,2.1,0.3,2.0,0.35,120.5,0.004,x\n2,op,1.5,0.6,1.4,0.62,110.0,0.005,y\n"
        "3,channel,1.0,0.8,1.1,0.75,95.0,0.006,z\n")
    (search / "arch.yaml").write_text(spec.read_text())
    out = tmp_path / "report"
    assert main(["report", str(search), str(run), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## search (search)" in text and "## run (train)" in text
    assert "75.00 %" in text and "| epoch | train_loss |" in text and "extra_col" not in text
    assert "latency **" in text and "utilization **" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in text
    else:
        for name in ("pareto.png", "search_curves.png", "search_layers.png", "run_curves.png"):
            assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    capsys.readouterr()
    err = one_line_error(capsys, ["report", str(tmp_path / "nowhere"), "--out", str(out)])
    assert "no such run directory" in err
    err = one_line_error(capsys, ["report", str(tmp_path), "--out", str(out)])
    assert "not a ubnas run directory" in err


def test_a_last_batch_of_one_image_is_dropped_where_batchnorm_sees_one_value(tmp_path):
    # a third pool takes digits' 8 x 8 to 1 x 1 before the last cell's BatchNorm
    one_by_one = {"reduce": False, "pool_after": False, "channels": 8, "nodes": [[{"from": 0, "op": "conv_3x3"}]]}
    spec = write_spec(tmp_path / "spec.yaml", {"cells": [dict(c, pool_after=True) for c in SMALL["cells"][:1]]
                                               + [dict(SMALL["cells"][1], pool_after=True), one_by_one],
                                               "classifier": {"in_features": 8}})
    n_train = len(load_dataset("digits", None, seed=0).train_y)
    batch_size = (n_train - 1) // 3   # three full batches and one of a single image
    assert n_train % batch_size == 1
    result = train(config(spec, tmp_path / "run", epochs=1, batch_size=batch_size), progress=False)
    ckpt = torch.load(result.out_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["scheduler"]["step"] == ckpt["scheduler"]["total_steps"] == 3


def test_a_huge_searched_batch_is_costed_from_shapes_or_refused_before_training(tmp_path):
    """provenance.hw_batch 10**9 ran every epoch and then failed to allocate the traced input
    (256 GB); 10**17 failed the same way after the epochs. The cost is now taken from shapes
    (the batch only scales M), and one that cannot be taken is refused before epoch 1."""
    from dataclasses import replace

    from hwmodels import load_accelerator, network_cost
    from hwmodels.estimate import trace_layers
    from ubnas.build import build_network
    spec = write_spec(tmp_path / "spec.yaml", {"provenance/hw_batch": 10**9})
    result = train(config(spec, tmp_path / "run", epochs=1), progress=False)
    # reference: the layers traced at batch 1, each GEMM's batch set to 10**9 by hand
    layers = [replace(layer, batch=10**9) for layer in trace_layers(build_network(load_spec(spec)), (1, 8, 8))]
    want = network_cost(layers, load_accelerator("edge_32x32"))
    assert result.metrics["hardware"]["batch"] == 10**9
    assert result.metrics["hardware"]["cycles"] == pytest.approx(want.cycles)
    spec = write_spec(tmp_path / "spec2.yaml", {"provenance/hw_batch": 10**17})
    with pytest.raises(ValueError, match="cannot cost the network at provenance.hw_batch 100000000000000000"):
        train(config(spec, tmp_path / "run2", epochs=1), progress=False)
    assert not (tmp_path / "run2" / "checkpoint.pt").exists()


def test_a_spec_searched_on_synthetic_data_trains_on_the_same_images(tmp_path, monkeypatch):
    """The synthetic images were drawn from the run's --seed: a spec searched with seed 3 was trained
    (seed 0 by default) on another task than the one it was searched on.  Each run is stopped once
    it has loaded its data."""
    import ubnas.search
    import ubnas.train
    from ubnas.search import SearchConfig, run_search
    loaded = {}

    class Loaded(Exception):
        pass

    def recording(module):
        original = module.load_dataset

        def load(*args, **kwargs):
            loaded[module.__name__] = original(*args, **kwargs)
            raise Loaded
        monkeypatch.setattr(module, "load_dataset", load)
    recording(ubnas.search)
    recording(ubnas.train)
    with pytest.raises(Loaded):
        run_search(SearchConfig(data="synthetic", seed=3, out=str(tmp_path / "search")), progress=False)
    spec = write_spec(tmp_path / "arch.yaml", {"input_shape": [3, 32, 32], "provenance/data": "synthetic"})
    with pytest.raises(Loaded):
        train(TrainConfig(spec=str(spec), out=str(tmp_path / "train"), seed=7), progress=False)
    searched, trained = loaded["ubnas.search"], loaded["ubnas.train"]
    assert searched.name == trained.name == "synthetic"
    assert torch.equal(searched.train_x, trained.train_x) and torch.equal(searched.test_y, trained.test_y)


def test_a_batch_of_one_image_is_refused_before_anything_runs(tmp_path, capsys):
    """--batch-size 1 made every batch a single image: BatchNorm failed inside torch on a network that
    reaches a 1 x 1 map, after the earlier run's files had been set aside."""
    spec = write_spec(tmp_path / "arch.yaml")
    err = one_line_error(capsys, ["train", str(spec), "--out", str(tmp_path / "t"), "--batch-size", "1"])
    assert "--batch-size: expected at least 2 (BatchNorm" in err
    err = one_line_error(capsys, ["search", "--out", str(tmp_path / "s"), "--batch-size", "1"])
    assert "--batch-size must be >= 2 (BatchNorm" in err
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()
