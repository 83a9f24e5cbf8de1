"""ubnas report on inputs that are not as `ubnas train` left them: a spec edited, moved or looked up
from another directory (the report must show what metrics.json recorded, never another network's
cost), malformed metrics.json files and an --out that is a file (one-line errors, no tracebacks)."""
import json
import re

import pytest
import yaml

from ubnas.cli import main
from ubnas.report import load_run, load_runs
from ubnas.train import TrainConfig, train

# a tiny network for the shipped digits (1 x 8 x 8, 10 classes): one epoch takes well under a second
TINY = {
    "ubnas_spec": 1, "input_shape": [1, 8, 8], "num_classes": 10,
    "stem": {"kernel": 3, "channels": 8},
    "cells": [{"reduce": False, "pool_after": True, "channels": 8, "nodes": [
        [{"from": 0, "op": "conv_3x3"}, {"from": 1, "op": "skip_connect"}]]}],
    "classifier": {"in_features": 8},
    "provenance": {"search_space": "handmade", "accelerator": "uboost"},
}
# the same cells 4x wider: a different network with a different cost
WIDE = {**TINY, "stem": {"kernel": 3, "channels": 32},
        "cells": [{**TINY["cells"][0], "channels": 32}], "classifier": {"in_features": 32}}


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def train_tiny(workdir, spec="arch.yaml", out="runs/tr", data=TINY):
    """`ubnas train SPEC --out OUT` run in ``workdir`` with relative paths, as a user types it; returns
    the run directory and the metrics.json it wrote (the reference figures)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / spec).write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        train(TrainConfig(spec=spec, out=out, data="digits", epochs=1, batch_size=128, seed=0,
                          device="cpu"), progress=False)
    run = workdir / out
    return run, json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("trained"))


def report_text(run, out, *extra):
    assert main(["report", str(run), "--out", str(out), "--no-plots", *extra]) == 0
    return (out / "report.md").read_text()


def one_line_error(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- which spec a train run is reported with -------------------------------------------------------
def test_report_from_another_directory_finds_the_trained_spec(trained, tmp_path, monkeypatch):
    """metrics.json records 'arch.yaml' relative to where train ran; the report runs elsewhere, where
    an unrelated arch.yaml lies: it must cost the trained spec (metrics.json's figures), not that one."""
    run, metrics = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "arch.yaml").write_text(yaml.safe_dump(WIDE))
    monkeypatch.chdir(elsewhere)
    loaded = load_run(run)
    assert loaded.spec is not None and loaded.cost is not None
    assert loaded.spec_path.resolve() == (run.parent.parent / "arch.yaml").resolve()
    assert loaded.latency_us == pytest.approx(metrics["hardware"]["latency_us"])
    assert loaded.cost.macs == metrics["hardware"]["macs"]
    assert loaded.utilization == pytest.approx(metrics["hardware"]["utilization"])
    assert not loaded.notes


def test_report_with_an_edited_spec_shows_the_recorded_figures(tmp_path, monkeypatch):
    """The bug: the spec widened after training was costed under the run's name, with the old
    parameter count and no note.  The report must show metrics.json's figures and say why."""
    run, metrics = train_tiny(tmp_path / "work")
    (tmp_path / "work" / "arch.yaml").write_text(yaml.safe_dump(WIDE))    # edited after training
    monkeypatch.chdir(tmp_path / "work")
    loaded = load_run("runs/tr")
    assert loaded.cost is None and loaded.spec is None
    hw = metrics["hardware"]
    assert loaded.latency_us == hw["latency_us"] and loaded.utilization == hw["utilization"]
    assert loaded.params == metrics["params"]
    assert any("is not the network this run trained" in n and metrics["spec_hash"] in n for n in loaded.notes)
    text = report_text("runs/tr", tmp_path / "rep")
    assert f"latency **{hw['latency_us']:.2f} us**" in text
    assert f"{hw['macs']:,} MACs" in text and f"{metrics['params']:,} parameters" in text
    assert "is not the network this run trained" in text
    assert "Stem: 32 channels" not in text           # nothing of the edited network is shown
    # --hw cannot be applied without the trained spec: the report says so instead of costing WIDE
    text = report_text("runs/tr", tmp_path / "rep_hw", "--hw", "tpu_v3")
    assert f"latency **{hw['latency_us']:.2f} us**" in text and "--hw tpu_v3 not applied" in text


def test_report_with_the_spec_deleted_uses_no_other_file_of_that_name(tmp_path, monkeypatch):
    """The trained spec is gone; the current directory holds another arch.yaml (the name metrics.json
    records): the report must not cost that one as this run's network."""
    run, metrics = train_tiny(tmp_path / "work")
    (tmp_path / "work" / "arch.yaml").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "arch.yaml").write_text(yaml.safe_dump(WIDE))
    monkeypatch.chdir(elsewhere)
    loaded = load_run(run)
    assert loaded.cost is None and loaded.spec is None
    assert loaded.latency_us == metrics["hardware"]["latency_us"]
    assert any("is not the network this run trained" in n for n in loaded.notes)
    text = report_text(run, tmp_path / "rep")
    assert f"latency **{metrics['hardware']['latency_us']:.2f} us**" in text
    (elsewhere / "arch.yaml").unlink()                # nowhere at all: the note says where it looked
    loaded = load_run(run)
    assert loaded.latency_us == metrics["hardware"]["latency_us"]
    assert any("not found (looked in" in n and str(tmp_path / "work" / "arch.yaml") in n for n in loaded.notes)


def test_report_finds_a_spec_moved_next_to_its_run(tmp_path, monkeypatch):
    """A run directory copied elsewhere with its spec beside it (no longer under the train cwd)."""
    run, metrics = train_tiny(tmp_path / "work", out="tr")
    moved = tmp_path / "archive" / "tr"
    moved.parent.mkdir()
    run.rename(moved)
    (tmp_path / "work" / "arch.yaml").rename(moved / "arch.yaml")
    monkeypatch.chdir(tmp_path)
    loaded = load_run(moved)
    assert loaded.cost is not None and loaded.spec_path.resolve() == (moved / "arch.yaml").resolve()
    assert loaded.latency_us == pytest.approx(metrics["hardware"]["latency_us"])


def test_report_finds_a_spec_a_search_start_over_set_aside(tmp_path, monkeypatch):
    """`ubnas search --out s1` again after training on s1/arch.yaml: the start-over moves that spec
    to s1/previous and exports another network in its place.  The report said the spec was "edited
    since" and dropped the per-layer costs, although the trained spec was still there."""
    from ubnas.runtime import set_aside
    from ubnas.search import FINISHED_MARKER, SET_ASIDE
    (tmp_path / "work" / "s1").mkdir(parents=True)
    run, metrics = train_tiny(tmp_path / "work", spec="s1/arch.yaml")
    set_aside(tmp_path / "work" / "s1", SET_ASIDE, FINISHED_MARKER)   # what the start-over does first
    (tmp_path / "work" / "s1" / "arch.yaml").write_text(yaml.safe_dump(WIDE))   # the new search's export
    monkeypatch.chdir(tmp_path)
    loaded = load_run(run)
    assert loaded.spec_path == tmp_path / "work" / "s1" / "previous" / "arch.yaml"
    assert loaded.cost is not None and loaded.latency_us == pytest.approx(metrics["hardware"]["latency_us"])
    assert any("replaced by a search that started over" in n for n in loaded.notes), loaded.notes


def test_report_finds_the_spec_of_a_run_trained_into_an_absolute_out(tmp_path, monkeypatch):
    """`ubnas train arch.yaml --out /abs/run`: the train directory cannot be told from the run
    directory, so the spec is found by the absolute path metrics.json records."""
    run, metrics = train_tiny(tmp_path / "work", out=str(tmp_path / "runs" / "tr"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = load_run(run)
    assert loaded.spec_path is not None and loaded.spec_path.resolve() == (tmp_path / "work" / "arch.yaml").resolve()
    assert loaded.cost is not None and loaded.latency_us == pytest.approx(metrics["hardware"]["latency_us"])


# -- metrics.json that ubnas train did not write ---------------------------------------------------
@pytest.mark.parametrize("content, key", [
    ([1, 2], "JSON object"),
    ({"history": [1, 2]}, "history[0]"),
    ({"history": "abc"}, "history"),
    ({"spec": 5}, "spec"),
    ({"spec_hash": 5, "spec": "a.yaml"}, "spec_hash"),
    ({"test_acc": "0.9"}, "test_acc"),
    ({"test_acc": 90.0}, "test_acc"),                # a percentage: would read 9000 %
    ({"config": "lr=0.1"}, "config"),
    ({"params": "many"}, "params"),
    ({"hardware": [7.5]}, "hardware"),
    ({"hardware": {"latency_us": "fast"}}, "hardware.latency_us"),
    ({"hardware": {"utilization": True}}, "hardware.utilization"),
    ({"hardware": {"macs": 1.5}}, "hardware.macs"),
    ({"hardware": {"batch": -3}}, "hardware.batch"),   # was shown as 'batch -3' and made its own front
    ({"hardware": {"batch": 0}}, "hardware.batch"),
])
def test_report_malformed_metrics_is_a_one_line_error(tmp_path, capsys, content, key):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(content))
    err = one_line_error(capsys, ["report", str(run), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert err.startswith("ubnas: error: ") and str(run / "metrics.json") in err and key in err, err
    assert "expected" in err


def test_report_hand_written_metrics_are_shown_as_recorded(tmp_path):
    """A metrics.json with figures only (no spec): they are the report's figures, '-' where absent."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "test_acc": 0.875, "params": 1234,
        "hardware": {"accelerator": "my_npu", "latency_us": 3.25, "utilization": 0.5, "macs": 98765}}))
    text = report_text(run, tmp_path / "rep")
    assert "| run | train | - | 87.5 | 3.25 | 50 | 1,234 | my_npu | 1 | yes |" in text
    assert "latency **3.25 us**, utilization **50.00 %**, 98,765 MACs, 1,234 parameters" in text
    (run / "metrics.json").write_text(json.dumps({"test_acc": 0.875, "hardware": {"latency_us": 3.25}}))
    text = report_text(run, tmp_path / "rep")              # no utilization recorded: '-', not a crash
    assert "latency **3.25 us**, utilization **-**" in text


# -- --out ------------------------------------------------------------------------------------------
def test_report_out_is_a_file_names_out(trained, tmp_path, capsys):
    run, _ = trained
    target = tmp_path / "arch.yaml"
    target.write_text("keep me\n")
    err = one_line_error(capsys, ["report", str(run), "--out", str(target), "--no-plots"])
    assert f"--out {target}: exists and is not a directory" in err
    assert target.read_text() == "keep me\n"
    inside = target / "rep"   # the report directory is no run directory: the message said it was
    err = one_line_error(capsys, ["report", str(run), "--out", str(inside), "--no-plots"])
    assert err.endswith(f"--out {inside}: cannot create the directory (Not a directory)"), err


def test_report_out_empty_is_refused_not_the_working_directory(trained, tmp_path, capsys, monkeypatch):
    run, _ = trained
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    err = one_line_error(capsys, ["report", str(run), "--out", "", "--no-plots"])
    assert "--out: expected a report directory, got ''" in err
    assert list(cwd.iterdir()) == []


def test_pareto_fronts_compare_only_accuracies_of_one_kind():
    """A supernet's search val accuracy never dominates a trained network's test accuracy."""
    from pathlib import Path

    from ubnas.report import Run, pareto_front

    def run(name, kind, accuracy, latency_us):
        label = "search val accuracy (supernet)" if kind == "search" else "test accuracy (trained)"
        return Run(Path(name), name, kind, accuracy=accuracy, accuracy_label=label,
                   metrics={"hardware": {"latency_us": latency_us}})
    runs = [run("s_fast", "search", 0.99, 10.0), run("s_slow", "search", 0.98, 12.0),
            run("t_fast", "train", 0.95, 20.0), run("t_slow", "train", 0.90, 30.0),
            run("t_best", "train", 0.97, 40.0)]
    # by hand: among searches s_fast beats s_slow; among trained runs t_fast beats t_slow, t_best is
    # the most accurate
    assert [r.name for r in pareto_front(runs)] == ["s_fast", "t_fast", "t_best"]


def _hand_run(name, label, accuracy, latency_us, accelerator="uboost"):
    from pathlib import Path

    from ubnas.report import Run
    kind = "search" if label.startswith("search") else "train"
    return Run(Path(name), name, kind, accuracy=accuracy, accuracy_label=label,
               metrics={"hardware": {"latency_us": latency_us, "accelerator": accelerator}})


def test_pareto_fronts_compare_only_latencies_on_one_accelerator_and_skip_nan():
    """A fast run on a small edge array never dominates a run on another machine; a NaN accuracy
    (a diverged log) is on no front."""
    from ubnas.report import SEARCH_ACCURACY, pareto_front
    runs = [_hand_run("u_fast", SEARCH_ACCURACY, 0.90, 10.0), _hand_run("u_slow", SEARCH_ACCURACY, 0.85, 20.0),
            _hand_run("e_slow", SEARCH_ACCURACY, 0.80, 120.0, "edge_32x32"),
            _hand_run("u_nan", SEARCH_ACCURACY, float("nan"), 1.0)]
    # by hand: on uboost u_fast beats u_slow; e_slow is alone on edge_32x32; u_nan has no accuracy
    assert sorted(r.name for r in pareto_front(runs)) == ["e_slow", "u_fast"]


def test_pareto_fronts_compare_only_accuracies_on_one_data_set():
    """96 % on digits says nothing against 90 % on CIFAR-10: each data set has its own front."""
    from ubnas.report import TEST_ACCURACY, pareto_front
    runs = [_hand_run("digits_fast", TEST_ACCURACY, 0.96, 10.0), _hand_run("c10_slow", TEST_ACCURACY, 0.90, 20.0),
            _hand_run("c10_slower", TEST_ACCURACY, 0.85, 30.0), _hand_run("unrecorded", TEST_ACCURACY, 0.50, 40.0)]
    for run, data in zip(runs, ("digits", "cifar10", "cifar10")):
        run.config["data"] = data
    # by hand: digits_fast alone on digits; c10_slow beats c10_slower; the run without a data set alone
    assert sorted(r.name for r in pareto_front(runs)) == ["c10_slow", "digits_fast", "unrecorded"]


def test_tied_runs_both_stay_on_the_front():
    """The same spec trained twice to the same accuracy: neither beats the other, so both are on
    the front (dominance is strict in one of the two), and a worse third run is not."""
    from ubnas.report import SEARCH_ACCURACY, pareto_front
    runs = [_hand_run("a", SEARCH_ACCURACY, 0.9, 10.0), _hand_run("b", SEARCH_ACCURACY, 0.9, 10.0),
            _hand_run("c", SEARCH_ACCURACY, 0.9, 11.0), _hand_run("d", SEARCH_ACCURACY, 0.8, 10.0)]
    assert sorted(r.name for r in pareto_front(runs)) == ["a", "b"]


def test_report_costs_each_run_at_its_searched_batch_and_fronts_do_not_mix_batches(tmp_path, monkeypatch):
    """A network searched at batch 4 is reported at batch 4 (as `ubnas train` measured it) and is on
    another front than the same network at batch 1; --hw-batch costs every run at one batch."""
    from ubnas.report import load_runs, pareto_front
    one, m1 = train_tiny(tmp_path / "one")
    four, m4 = train_tiny(tmp_path / "four", data={**TINY, "provenance": {**TINY["provenance"], "hw_batch": 4}})
    monkeypatch.chdir(tmp_path / "four")   # the train run's spec path is relative to where it ran
    runs = load_runs([one, four])
    assert [r.hw_batch for r in runs] == [1, 4]
    assert [r.latency_us for r in runs] == pytest.approx([m1["hardware"]["latency_us"], m4["hardware"]["latency_us"]])
    assert runs[1].latency_us > 1.2 * runs[0].latency_us
    # the same accuracy, slower at batch 4: dominated only if the batches were mixed
    assert sorted(r.name for r in pareto_front(runs)) == sorted(r.name for r in runs)
    same = load_runs([one, four], hw_batch=4)
    assert [r.hw_batch for r in same] == [4, 4]
    assert same[0].latency_us == pytest.approx(same[1].latency_us)
    text = report_text(four, tmp_path / "rep")
    assert "exact systolic model, batch 4)" in text and "| batch |" in text


def test_accelerators_named_alike_but_defined_apart_are_on_separate_fronts(tmp_path):
    """A YAML named uboost with a 32x32 array is another machine than the uboost preset: its fast
    run does not dominate the preset's, and the report says why."""
    from hwmodels import load_accelerator
    from ubnas.report import SEARCH_ACCURACY, pareto_front, write_report
    preset = load_accelerator("uboost").to_dict()
    small = load_accelerator("uboost").replace(array_rows=32, array_cols=32).to_dict()
    runs = [_hand_run("preset_run", SEARCH_ACCURACY, 0.80, 20.0), _hand_run("small_run", SEARCH_ACCURACY, 0.90, 10.0),
            _hand_run("preset_slow", SEARCH_ACCURACY, 0.70, 30.0)]
    for run, config in zip(runs, (preset, small, preset)):
        run.metrics["hardware"]["accelerator_config"] = config
    # by hand: preset_run beats preset_slow on the preset; small_run is alone on its machine
    assert sorted(r.name for r in pareto_front(runs)) == ["preset_run", "small_run"]
    text = open(write_report(runs, tmp_path / "rep", plots=False)["report"]).read()
    assert ("Accelerators of different definitions share the name 'uboost' (runs preset_run, small_run, "
            "preset_slow)") in text


def test_a_run_that_records_no_definition_or_batch_shares_the_front_of_its_accelerator_name(tmp_path):
    """Hand-written metrics.json files name the accelerator only and may leave the batch out: they
    compare with runs costed on that accelerator at batch 1 (no name stands for two definitions)."""
    from hwmodels import load_accelerator
    from ubnas.report import load_runs, pareto_front
    hardware = {"costed": {"accelerator_config": load_accelerator("uboost").to_dict(), "batch": 1,
                           "latency_us": 9.26},
                "hand": {"latency_us": 5.0},                  # no definition, no batch
                "batched": {"batch": 1, "latency_us": 20.0}}
    accuracy = {"costed": 0.31, "hand": 0.90, "batched": 0.20}
    for name, hw in hardware.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"test_acc": accuracy[name], "hardware": {"accelerator": "uboost", **hw}}))
    runs = load_runs([tmp_path / name for name in hardware])
    assert [r.hw_batch for r in runs] == [1, 1, 1]
    # by hand: hand is both more accurate and faster than costed and batched, on the same machine
    assert [r.name for r in pareto_front(runs)] == ["hand"]


def _two_epoch_run(run, val_acc=(0.5, 0.6)):
    """A run directory ``run`` holding only a two-epoch search_log.csv (enough for a curves figure)."""
    run.mkdir()
    (run / "search_log.csv").write_text(f"epoch,train_loss,val_acc\n1,1.0,{val_acc[0]}\n2,0.5,{val_acc[1]}\n")
    return run


def test_report_figures_of_runs_whose_names_sanitise_alike_do_not_overwrite(tmp_path):
    """'x y' and 'x_y' both make x_y: each run keeps its own curves figure, linked from its section."""
    pytest.importorskip("matplotlib")
    for name, acc in (("x y", 0.25), ("x_y", 0.75)):
        _two_epoch_run(tmp_path / name, (acc, acc))
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "x y"), str(tmp_path / "x_y"), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    sections = text.split("## ")[1:]
    links = [s.split("](")[1].split(")")[0] for s in sections if "_curves.png" in s]
    assert len(links) == 2 and len(set(links)) == 2
    assert all((out / link).is_file() for link in links)


def test_a_run_name_with_dollar_signs_is_drawn_as_written(tmp_path):
    """matplotlib reads '$...$' as math: 'lam_$\\x$' was a multi-line ParseFatalException."""
    pytest.importorskip("matplotlib")
    run = _two_epoch_run(tmp_path / "lam_$\\x$")
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert any(p.name.endswith("_curves.png") for p in out.iterdir())


def _drawn_pareto(monkeypatch, runs, tmp_path):
    """What pareto_figure draws for ``runs``, read off the figure instead of saving it: points
    {label: (sorted latencies, face colour)}, front lines [(latencies, colour)], legend texts."""
    from matplotlib.colors import to_rgba

    import ubnas.report as report
    import ubnas.report_figures as figures
    drawn = {}

    def keep(plt_, fig, out_dir, filename):
        ax = fig.axes[0]
        drawn["points"] = {c.get_label(): (sorted(float(x) for x, _ in c.get_offsets()),
                                           tuple(c.get_facecolor()[0])) for c in ax.collections}
        drawn["lines"] = sorted((tuple(float(x) for x in line.get_xdata()), to_rgba(line.get_color()))
                                for line in ax.lines if len(line.get_xdata()))
        legend = ax.get_legend()
        drawn["legend"] = {t.get_text() for t in legend.get_texts()} if legend else set()
        plt_.close(fig)
        return filename
    monkeypatch.setattr(figures, "_save", keep)
    figures.pareto_figure(figures.pyplot(), runs, report.pareto_front(runs), tmp_path)
    return drawn


def test_the_layer_figure_names_the_arrays_and_the_batch(tmp_path, monkeypatch):
    """tpu_v3's two arrays and a batch-8 latency were titled like one array at batch 1."""
    pytest.importorskip("matplotlib.pyplot")
    import ubnas.report_figures as figures
    run = tmp_path / "run"
    run.mkdir()
    (run / "arch.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    loaded = load_run(run, "run", hw="tpu_v3", hw_batch=8)
    titles = []

    def keep(plt_, fig, out_dir, filename):
        titles.append(fig._suptitle.get_text())
        plt_.close(fig)
        return filename
    monkeypatch.setattr(figures, "_save", keep)
    figures.run_figures(figures.pyplot(), loaded, tmp_path, "run")
    us = loaded.cost.seconds * 1e6
    assert titles == [f"run: exported network on tpu_v3 (2 x 128x128), batch 8, {us:.1f} us"]


def test_pareto_figure_marks_a_train_run_without_a_test_accuracy_as_a_supernet_accuracy(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib.pyplot")
    import ubnas.report as report
    runs = [_hand_run("searched", report.SEARCH_ACCURACY, 0.9, 10.0),
            _hand_run("trained", report.TEST_ACCURACY, 0.8, 12.0),
            _hand_run("no_test_acc", report.SEARCH_ACCURACY, 0.7, 14.0)]
    runs[2].kind = "train"     # load_run falls back to the spec's supernet accuracy
    points = _drawn_pareto(monkeypatch, runs, tmp_path)["points"]
    assert {label: xs for label, (xs, _) in points.items()} == {"search (supernet val acc)": [10.0, 14.0],
                                                                "trained (test acc)": [12.0]}


def test_pareto_figure_draws_each_data_set_apart_with_its_own_front(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib.pyplot")
    import ubnas.report as report
    runs = [_hand_run(name, report.TEST_ACCURACY, acc, lat) for name, acc, lat in
            (("d1", 0.96, 10.0), ("d2", 0.97, 15.0), ("c1", 0.80, 12.0), ("c2", 0.85, 30.0))]
    for run, data in zip(runs, ("digits", "digits", "cifar10", "cifar10")):
        run.config["data"] = data
    drawn = _drawn_pareto(monkeypatch, runs, tmp_path)
    assert {label: xs for label, (xs, _) in drawn["points"].items()} == {
        "trained (test acc), cifar10": [12.0, 30.0], "trained (test acc), digits": [10.0, 15.0]}
    assert [xs for xs, _ in drawn["lines"]] == [(10.0, 15.0), (12.0, 30.0)]   # one front each, not one across


@pytest.mark.parametrize("content, said", [(b"\xef\xbb\xbfepoch,val_acc\n1,0.5\n", None),
                                           (b"epoch,val_acc\n1,0.5\xd0\n", "not a UTF-8 CSV"),
                                           (b"epoch,val_acc,latency_us\n1,0.5,20\n2,0.6", "line 3: fewer fields"),
                                           (b"epoch,val_acc\n1,0.5,7\n", "line 2: more fields"),
                                           # nan drew 'Final accuracy: nan %', -inf a utilization of -inf
                                           (b"epoch,val_acc\n1,0.5\n2, nan\n", "line 3: column 'val_acc' is nan"),
                                           (b"epoch,utilization\n1,-inf\n", "line 2: column 'utilization' is -inf")])
def test_search_log_with_a_byte_order_mark_bad_bytes_or_ragged_rows(tmp_path, content, said):
    from ubnas.report import read_log
    path = tmp_path / "search_log.csv"
    path.write_bytes(content)
    if said is None:
        assert read_log(path) == [{"epoch": 1, "val_acc": 0.5}]
    else:
        with pytest.raises(ValueError, match=f"search_log.csv: {said}"):
            read_log(path)


@pytest.mark.parametrize("mode, noted", [("uboost", True), ("systolic", False)])
def test_report_with_hw_calibrated_for_the_other_model_says_so(trained, tmp_path, capsys, mode, noted):
    """The report costs with the exact systolic model: a --hw fitted for uboost gets estimate's note."""
    from hwmodels import load_accelerator
    from hwmodels.accelerator import save_accelerator
    hw = tmp_path / "cal.yaml"
    save_accelerator(load_accelerator("uboost"), hw, {"fit_report": {"mode": mode}})
    run, _ = trained
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(tmp_path / "rep"), "--no-plots", "--hw", str(hw)]) == 0
    err = capsys.readouterr().err
    said = f"{hw} was calibrated for the uboost model; its calibration block is applied to the systolic model here"
    assert (f"note: {said}" in err) == noted
    assert (said in (tmp_path / "rep" / "report.md").read_text()) == noted   # not only on the terminal


@pytest.mark.parametrize("mode", ["uboost", "systolic"])
def test_a_spec_searched_on_an_accelerator_calibrated_for_uboost_says_so_everywhere(tmp_path, capsys, mode):
    """The spec records what its accelerator's calibration was fitted for: estimate, train and report,
    which cost with the systolic model, each say when that is another model."""
    from hwmodels import load_accelerator
    searched = load_accelerator("edge_32x32").replace(name="cal")
    data = {**TINY, "provenance": {"accelerator": "cal", "accelerator_config": searched.to_dict(),
                                   "accelerator_fit_mode": mode}}
    run, _ = train_tiny(tmp_path, data=data)
    said = "arch.yaml's accelerator (cal) was calibrated for the uboost model; its calibration block is applied to"
    assert (said in capsys.readouterr().out) == (mode == "uboost")   # train
    spec = str(tmp_path / "arch.yaml")
    for extra, noted in (([], mode == "uboost"), (["--model-mode", "uboost"], mode == "systolic")):
        assert main(["estimate", spec, *extra]) == 0
        err = capsys.readouterr().err
        assert ("its calibration block is applied to" in err) == noted, (extra, err)
    text = report_text(run, tmp_path / "rep")
    assert (said in text) == (mode == "uboost")
    text = report_text(run, tmp_path / "rep2", "--hw", "uboost")   # another accelerator: nothing to say
    assert "calibrated for" not in text
    from hwmodels.accelerator import save_accelerator
    hw = tmp_path / "fitted.yaml"   # train --hw: the file's own fit_report.mode
    save_accelerator(searched, hw, {"fit_report": {"mode": mode}})
    train(TrainConfig(spec=spec, out=str(tmp_path / "hw_run"), data="digits", epochs=1, batch_size=128, seed=0,
                      device="cpu", hw=str(hw)), progress=False)
    assert (f"note: {hw} was calibrated for the uboost model" in capsys.readouterr().out) == (mode == "uboost")


def test_an_invalid_recorded_accelerator_is_named_not_skipped_in_silence(tmp_path):
    """A hand-edited provenance.accelerator_config that no longer loads: the report costs on the
    preset the spec also names, and says so."""
    from hwmodels import estimate, load_accelerator
    from ubnas.build import build_network
    from ubnas.spec import load_spec
    config = load_accelerator("edge_32x32").to_dict()
    config["array_rows"] = 0
    run = tmp_path / "s"
    run.mkdir()
    (run / "arch.yaml").write_text(yaml.safe_dump(
        {**TINY, "provenance": {"accelerator": "edge_32x32", "accelerator_config": config}}))
    loaded = load_run(run)
    said = [n for n in loaded.notes if "costed on edge_32x32 instead" in n]
    assert len(said) == 1 and "array_rows" in said[0], loaded.notes
    by_hand = estimate(build_network(load_spec(run / "arch.yaml")), (1, 8, 8), load_accelerator("edge_32x32"))
    assert loaded.cost.cycles == pytest.approx(by_hand.cycles)
    assert by_hand.cycles != pytest.approx(estimate(build_network(load_spec(run / "arch.yaml")), (1, 8, 8),
                                                   load_accelerator("uboost")).cycles)


def test_an_unfinished_train_run_is_left_out_of_a_report_of_several(tmp_path, capsys):
    """A train run stopped before metrics.json ('not a ubnas run directory') failed the whole report
    of `ubnas report runs/*`."""
    done, stopped = tmp_path / "done", tmp_path / "stopped"
    done.mkdir()
    (done / "metrics.json").write_text(json.dumps({"test_acc": 0.5, "hardware": {"latency_us": 2.0}}))
    stopped.mkdir()
    (stopped / "checkpoint.pt").write_bytes(b"any")
    assert main(["report", str(done), str(stopped), "--out", str(tmp_path / "rep"), "--no-plots"]) == 0
    said = f"note: {stopped}: a `ubnas train` run without metrics.json (stopped before its end? `ubnas train " \
           f"... --resume` finishes it); left out of the report"
    assert said in capsys.readouterr().err
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "1 run(s)." in text and "| done |" in text and "stopped" not in text
    err = one_line_error(capsys, ["report", str(stopped), "--out", str(tmp_path / "rep2"), "--no-plots"])
    assert err.endswith("(stopped before its end? `ubnas train ... --resume` finishes it)"), err
    # a search killed before its first logged epoch (config.yaml, maybe a checkpoint) is named as one,
    # and a run left out keeps no name: the remaining 'x' is not 'x-2'
    searching = tmp_path / "a" / "x"
    searching.mkdir(parents=True)
    (searching / "config.yaml").write_text("space: tiny\n")
    (searching / "checkpoint.pt").write_bytes(b"any")
    (tmp_path / "b").mkdir()
    done.rename(tmp_path / "b" / "x")
    assert main(["report", str(searching), str(tmp_path / "b" / "x"), "--out", str(tmp_path / "rep3"),
                 "--no-plots"]) == 0
    assert (f"note: {searching}: a `ubnas search` run with no logged epoch yet (`ubnas search --out {searching} "
            f"--resume` continues it); left out of the report") in capsys.readouterr().err
    assert "| x | train |" in (tmp_path / "rep3" / "report.md").read_text()


def test_a_run_given_twice_is_reported_once(tmp_path, capsys):
    """`report r1 r1/` gave two identical rows, both on the Pareto front."""
    run = _two_epoch_run(tmp_path / "r1")
    runs = load_runs([run, str(run) + "/", tmp_path / "." / "r1"])
    assert [r.name for r in runs] == ["r1"]
    assert capsys.readouterr().err.count("is a run given before; reported once") == 2


def test_a_pipe_in_a_run_name_does_not_shift_the_table(tmp_path):
    run = _two_epoch_run(tmp_path / "lam|0")
    text = report_text(run, tmp_path / "rep")
    header = next(line for line in text.splitlines() if line.startswith("| run |"))
    row = next(line for line in text.splitlines() if line.startswith("| lam"))
    cells = lambda line: len(re.split(r"(?<!\\)\|", line))   # noqa: E731 - unescaped '|' separators
    assert row.startswith("| lam\\|0 |") and cells(row) == cells(header)


def test_a_run_with_only_arch_yaml_is_on_its_spec_data_sets_front(tmp_path):
    """A directory with arch.yaml alone had no data set, so it shared a front with no other run."""
    searched = {**TINY, "provenance": {**TINY["provenance"], "data": "digits"}}
    full = _two_epoch_run(tmp_path / "full")
    (full / "config.yaml").write_text("data: digits\n")
    spec_only = tmp_path / "spec_only"
    spec_only.mkdir()
    for run in (full, spec_only):
        (run / "arch.yaml").write_text(yaml.safe_dump(searched, sort_keys=False))
    runs = load_runs([full, spec_only])
    assert runs[1].data_set == runs[0].data_set == "digits"


def test_curve_utilization_is_in_percent_as_in_the_summary(tmp_path):
    run = tmp_path / "s"
    run.mkdir()
    (run / "search_log.csv").write_text("epoch,val_acc,latency_us,utilization\n1,0.5,20.0,0.0515\n")
    text = report_text(run, tmp_path / "rep")
    assert "| epoch | val_acc | latency_us | utilization % |" in text and "| 1 | 0.5 | 20 | 5.15 |" in text, text


def test_large_figures_are_printed_whole_not_in_scientific_notation(tmp_path):
    run = tmp_path / "slow"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"test_acc": 0.5, "hardware": {"latency_us": 123456.7}}))
    text = report_text(run, tmp_path / "rep")
    assert "| slow | train | - | 50 | 123,457 |" in text


def test_run_names_stay_unique_when_a_directory_is_named_like_a_renamed_duplicate(tmp_path):
    """A/x, B/x and C/x-2: B becomes x-2, so C must not be x-2 as well (one figure for both)."""
    from ubnas.report import _fmt, load_runs
    paths = []
    for parent, name in (("A", "x"), ("B", "x"), ("C", "x-2")):
        run = tmp_path / parent / name
        run.mkdir(parents=True)
        (run / "search_log.csv").write_text("epoch,val_acc\n1,0.5\n")
        paths.append(run)
    names = [run.name for run in load_runs(paths)]
    assert len(set(names)) == 3 and names[:2] == ["x", "x-2"]
    assert (_fmt(9999.7), _fmt(9999.4)) == ("10,000", "9999")


def test_pareto_figure_tells_fronts_on_different_accelerators_apart(tmp_path, monkeypatch):
    """Latencies on two machines do not compare: each machine's points and front line get their own
    colour and a legend entry naming the machine."""
    pytest.importorskip("matplotlib.pyplot")
    import ubnas.report as report
    runs = [_hand_run("u_fast", report.SEARCH_ACCURACY, 0.80, 10.0), _hand_run("u_acc", report.SEARCH_ACCURACY, 0.90, 20.0),
            _hand_run("e_fast", report.SEARCH_ACCURACY, 0.70, 30.0, "edge_32x32"),
            _hand_run("e_acc", report.SEARCH_ACCURACY, 0.85, 50.0, "edge_32x32")]
    drawn = _drawn_pareto(monkeypatch, runs, tmp_path)
    points = drawn["points"]
    assert set(points) == {"search (supernet val acc), edge_32x32", "search (supernet val acc), uboost"}
    assert points["search (supernet val acc), uboost"][0] == [10.0, 20.0]
    assert points["search (supernet val acc), edge_32x32"][0] == [30.0, 50.0]
    edge_colour, uboost_colour = (points[k][1] for k in sorted(points))
    assert edge_colour != uboost_colour
    # both runs of each machine are on its front (by hand: faster or more accurate than the other)
    assert drawn["lines"] == sorted([((10.0, 20.0), uboost_colour), ((30.0, 50.0), edge_colour)])
    assert "Pareto fronts (dashed, in their machine's colour)" in drawn["legend"]


def test_a_report_without_figures_removes_those_of_the_report_it_replaces(tmp_path, capsys):
    """A --no-plots report in a folder of an earlier report with figures: the old PNGs it linked
    are removed (they would pass for this report's); a PNG the report never linked stays."""
    pytest.importorskip("matplotlib")
    run = _two_epoch_run(tmp_path / "run")
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert (out / "run_curves.png").is_file()
    (out / "mine.png").write_bytes(b"not ours")
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(out), "--no-plots"]) == 0
    assert "removed 1 figure(s) of the report it replaced" in capsys.readouterr().out
    assert not (out / "run_curves.png").exists() and (out / "mine.png").read_bytes() == b"not ours"
    assert ".png" not in (out / "report.md").read_text()
    assert main(["report", str(run), "--out", str(out)]) == 0   # drawn again: nothing removed
    assert (out / "run_curves.png").is_file()


def test_a_users_png_linked_from_an_earlier_report_is_not_removed(tmp_path, capsys):
    """A user appended a link to their own baseline_curves.png (a figure-like name) to report.md;
    the next report removed it as a stale figure, though ubnas never drew it."""
    pytest.importorskip("matplotlib")
    run = _two_epoch_run(tmp_path / "run")
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 0
    (out / "baseline_curves.png").write_bytes(b"the user's own figure")
    with open(out / "report.md", "a") as handle:
        handle.write("\n![baseline](baseline_curves.png)\n")
    capsys.readouterr()
    assert main(["report", str(run), "--out", str(out), "--no-plots"]) == 0
    assert "removed 1 figure(s)" in capsys.readouterr().out   # run_curves.png, which ubnas drew
    assert (out / "baseline_curves.png").read_bytes() == b"the user's own figure"
    assert not (out / "run_curves.png").exists()


def test_stale_figure_removal_touches_only_figures_an_earlier_ubnas_report_drew(tmp_path, capsys):
    """A report.md of the user's own (which links their PNGs) is refused, not replaced, and none of
    its PNGs is removed.  A run name with brackets still has its old figure found and removed."""
    pytest.importorskip("matplotlib")
    run = _two_epoch_run(tmp_path / "lam[0.1]")
    mine = tmp_path / "mine"
    mine.mkdir()
    notes = "# my notes\n\n![arch](architecture.png)\n![x](x_curves.png)\n"
    (mine / "report.md").write_text(notes)
    for name in ("architecture.png", "x_curves.png"):
        (mine / name).write_bytes(b"mine")
    assert main(["report", str(run), "--out", str(mine), "--no-plots"]) == 2
    assert f"{mine / 'report.md'} exists and is not a report ubnas wrote" in capsys.readouterr().err
    assert (mine / "report.md").read_text() == notes
    assert (mine / "architecture.png").read_bytes() == b"mine" and (mine / "x_curves.png").read_bytes() == b"mine"
    out = tmp_path / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 0
    drawn = [p.name for p in out.glob("*_curves.png")]
    assert len(drawn) == 1 and "](" + drawn[0] + ")" in (out / "report.md").read_text()
    assert main(["report", str(run), "--out", str(out), "--no-plots"]) == 0
    assert not list(out.glob("*.png"))


def test_a_png_of_the_users_with_a_figures_name_is_not_replaced(tmp_path, capsys):
    """report --out DIR replaced DIR/pareto.png and DIR/RUN_curves.png of the user's with its
    figures; it now refuses before drawing, and replaces only figures ubnas drew."""
    pytest.importorskip("matplotlib")
    run = _two_epoch_run(tmp_path / "run")
    out = tmp_path / "rep"
    out.mkdir()
    (out / "run_curves.png").write_bytes(b"\x89PNG\r\n\x1a\n my own figure")
    assert main(["report", str(run), "--out", str(out)]) == 2
    assert f"{out / 'run_curves.png'} exists and is not a figure ubnas drew" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["run_curves.png"]
    assert (out / "run_curves.png").read_bytes() == b"\x89PNG\r\n\x1a\n my own figure"
    (out / "run_curves.png").unlink()
    assert main(["report", str(run), "--out", str(out)]) == 0
    (out / "report.md").unlink()   # its figures are known by their mark alone
    assert main(["report", str(run), "--out", str(out)]) == 0


def test_a_report_stopped_while_drawing_leaves_the_earlier_report_with_its_own_figures(tmp_path,
                                                                                         monkeypatch):
    """Ctrl-C while drawing the second run's figure left the earlier report.md linking a first-run
    figure the stopped report had already redrawn (of other data)."""
    pytest.importorskip("matplotlib")
    from ubnas import report_figures
    runs = [str(_two_epoch_run(tmp_path / name, (0.5, 0.6))) for name in ("a", "b")]
    out = tmp_path / "rep"
    assert main(["report", *runs, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["a_curves.png", "b_curves.png", "report.md"]
    (tmp_path / "a" / "search_log.csv").write_text("epoch,train_loss,val_acc\n1,2.0,0.1\n2,1.5,0.9\n")
    draw = report_figures.run_figures

    def stopped_at_the_second_run(plt, run, *args):
        if run.name == "b":
            raise KeyboardInterrupt
        return draw(plt, run, *args)
    monkeypatch.setattr(report_figures, "run_figures", stopped_at_the_second_run)
    assert main(["report", *runs, "--out", str(out)]) == 130   # interrupted
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # no staging directory left either
    monkeypatch.undo()
    assert main(["report", *runs, "--out", str(out)]) == 0
    assert (out / "a_curves.png").read_bytes() != before["a_curves.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_pareto_column_says_no_for_a_dominated_run_and_dash_for_one_without_a_point(tmp_path):
    """A run off the front showed '-', as a run with no accuracy to place does."""
    figures = {"fast": (0.9, 2.0), "slow": (0.8, 3.0), "unplaced": (None, 1.0)}
    for name, (acc, latency_us) in figures.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {**({"test_acc": acc} if acc is not None else {}), "hardware": {"accelerator": "npu", "latency_us": latency_us}}))
    code = main(["report", *(str(tmp_path / name) for name in figures), "--out", str(tmp_path / "rep"), "--no-plots"])
    assert code == 0
    rows = {line.split(" | ")[0][2:]: line.rstrip(" |").rsplit(" | ", 1)[1]
            for line in (tmp_path / "rep" / "report.md").read_text().splitlines() if line.startswith("| ")}
    assert (rows["fast"], rows["slow"], rows["unplaced"]) == ("yes", "no", "-"), rows


def test_a_target_run_shows_its_target_not_the_unused_lambda(tmp_path):
    """A target replaces the lambda term, yet the search section showed config.yaml's lambda_latency
    (a default nobody used) and a trained run's 'Architecture from' line 'lambda_latency = -' without
    the target it was searched under."""
    search = tmp_path / "s"
    search.mkdir()
    (search / "config.yaml").write_text("space: tiny\ntarget_latency_us: 15.0\nlambda_latency: 0.2\nseed: 0\n")
    (search / "search_log.csv").write_text("epoch,val_acc,latency_us,utilization\n1,0.5,20.0,0.05\n")
    config = next(line for line in report_text(search, tmp_path / "rep").splitlines() if line.startswith("Config:"))
    assert config == "Config: space = tiny, target_latency_us = 15, seed = 0", config
    spec = {**TINY, "provenance": {**TINY["provenance"], "lambda_latency": None, "target_latency_us": 15.0}}
    run, _ = train_tiny(tmp_path / "t", data=spec)
    line = next(l for l in report_text(run, tmp_path / "rep2").splitlines() if l.startswith("Architecture from"))
    assert "target_latency_us = 15" in line and "lambda_latency" not in line, line
