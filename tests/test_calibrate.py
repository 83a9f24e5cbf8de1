"""hwmodels.calibrate and `ubnas calibrate`: parameter recovery, metrics, CSV errors, output.

Synthetic rows come straight from hwmodels.exact with a hand-set Calibration (plus
1 % multiplicative noise), independent of the fitting code.  SCALE-Sim numbers
come only from tests/data/scalesim_reference.csv through the cache: no simulation.
"""
import csv
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hwmodels import Accelerator, Calibration, ConvLayer, layer_cost, load_accelerator
from hwmodels import calibrate as cal
from hwmodels import references as refs
from hwmodels.accelerator import HardwareConfigError, save_accelerator
from hwmodels.suites import layer_fields, suite_layers
from ubnas.cli import main

REFERENCE_CSV = Path(__file__).parent / "data" / "scalesim_reference.csv"
TRUE = Calibration(fold_overhead_cycles=17.0, layer_overhead_cycles=250.0, cycle_scale=1.3,
                   bandwidth_efficiency=0.6)
LAYER_COLUMNS = ["name", "kind", "in_h", "in_w", "in_channels", "out_channels", "kernel_h", "kernel_w",
                 "stride", "padding", "dilation", "groups", "batch"]


def _acc(**changes):
    # Low bandwidth and a small buffer: about a third of the mixed suite is memory-bound,
    # so the bandwidth efficiency is identifiable next to the compute-side parameters.
    base = Accelerator("synthetic", 32, 32, clock_hz=1e9, bandwidth_bytes_per_s=16e9,
                       onchip_bytes=256 * 1024, bytes_per_element=1)
    return base.replace(**changes) if changes else base


def _write_measured(path, layers, acc, truth=TRUE, noise=0.01, seed=0, column="measured_cycles",
                    mode="systolic"):
    rng = np.random.default_rng(seed)
    true_acc = acc.replace(calibration=truth)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LAYER_COLUMNS + [column])
        for layer in layers:
            cycles = layer_cost(layer, true_acc, mode).cycles * float(np.exp(rng.normal(0, noise)))
            value = cycles / acc.clock_hz if column == "measured_seconds" else cycles
            fields = layer_fields(layer)
            writer.writerow([layer.name] + [fields[c] for c in LAYER_COLUMNS[1:]] + [repr(value)])
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "measured.csv"
    return _write_measured(path, suite_layers("mixed", 0), _acc())


def test_recovers_known_parameters_from_noisy_measurements(synthetic):
    acc = _acc()
    result = cal.calibrate(refs.measured_rows(synthetic, acc), acc, "systolic", seed=0)
    got = result.accelerator.calibration
    assert set(result.free) == {"cycle_scale", "fold_overhead_cycles", "layer_overhead_cycles",
                                "bandwidth_efficiency"}
    assert got.cycle_scale == pytest.approx(1.3, rel=0.03)
    assert got.fold_overhead_cycles == pytest.approx(17, abs=5)
    assert got.layer_overhead_cycles == pytest.approx(250, rel=0.35)
    assert got.bandwidth_efficiency == pytest.approx(0.6, rel=0.03)
    # 1 % noise: after calibration the held-out error is at the noise level
    assert result.metrics_after["rmspe_pct"] < 2.0
    assert result.metrics_after["within_5pct"] == 1.0
    assert result.metrics_before["rmspe_pct"] > 20.0
    assert result.fit_report["n_holdout"] == round(0.3 * 85)


def test_rows_faster_than_the_array_can_be_are_flagged(synthetic, tmp_path):
    """Rows measured at half the cycles of the model (on a smaller array than the one given, say)
    fit cycle_scale 0.5 and put layers above 100 % utilization without a word."""
    acc = _acc()
    fast = _write_measured(tmp_path / "fast.csv", suite_layers("mixed", 0), acc,
                           truth=Calibration(cycle_scale=0.5, bandwidth_efficiency=1.0), noise=0.0)
    result = cal.calibrate(refs.measured_rows(fast, acc), acc, "systolic", seed=0)
    rows = result.train + result.holdout
    # by hand: MACs / (calibrated cycles * PEs) of each row's layer
    over = sum(layer_cost(r.layer, result.accelerator, "systolic").macs
               > layer_cost(r.layer, result.accelerator, "systolic").cycles * acc.array_rows * acc.array_cols
               for r in rows)
    assert over > 0
    assert any(w.startswith(f"the fit puts {over} of {len(rows)} rows above the array's peak")
               for w in result.fit_report["warnings"]), result.fit_report["warnings"]
    honest = cal.calibrate(refs.measured_rows(synthetic, acc), acc, "systolic", seed=0)
    assert not any("peak" in w for w in honest.fit_report["warnings"])


def test_seconds_are_converted_with_the_clock(tmp_path):
    acc = _acc(clock_hz=5e8)
    path = _write_measured(tmp_path / "s.csv", suite_layers("cifar", 0), acc, noise=0.0,
                           column="measured_seconds")
    rows = refs.measured_rows(path, acc).rows
    expected = layer_cost(rows[0].layer, acc.replace(calibration=TRUE)).cycles
    assert rows[0].cycles == pytest.approx(expected, rel=1e-9)


def test_uboost_mode_recovers_a_fold_overhead(tmp_path):
    # The paper's model plus a per-fold overhead: no memory term, so efficiency stays fixed.
    truth = Calibration(fold_overhead_cycles=40.0, layer_overhead_cycles=0.0, cycle_scale=1.0)
    acc = _acc()
    path = _write_measured(tmp_path / "u.csv", suite_layers("mixed", 0), acc, truth=truth,
                           noise=0.0, mode="uboost")
    result = cal.calibrate(refs.measured_rows(path, acc), acc, "uboost", seed=1)
    assert "bandwidth_efficiency" not in result.free
    assert result.accelerator.calibration.fold_overhead_cycles == pytest.approx(40, abs=0.01)
    assert result.metrics_after["max_abs_pct"] < 1e-3


def test_metrics_match_hand_computation():
    m = cal.metrics(np.array([110.0, 95.0, 200.0]), np.array([100.0, 100.0, 100.0]))
    assert m["rmse_cycles"] == pytest.approx(np.sqrt((100 + 25 + 10000) / 3))
    assert m["rmspe_pct"] == pytest.approx(100 * np.sqrt((0.01 + 0.0025 + 1) / 3))
    assert m["mean_abs_pct"] == pytest.approx(100 * (0.1 + 0.05 + 1) / 3)
    assert m["max_abs_pct"] == pytest.approx(100)
    assert m["within_5pct"] == pytest.approx(1 / 3)
    assert m["within_10pct"] == pytest.approx(2 / 3)


def test_metrics_of_an_outlier_row_past_float_squares_are_finite():
    """Errors of 1e200 cycles (a measured row off by a unit) squared to inf with a RuntimeWarning;
    their RMS is 1e200 * sqrt((1 + 9) / 2) by hand."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = cal.metrics(np.array([1e200, 3e200]), np.array([2e200, 6e200]))
    assert m["rmse_cycles"] == pytest.approx(1e200 * np.sqrt(5.0))
    assert m["rmspe_pct"] == pytest.approx(50.0)


def test_written_yaml_loads_and_reproduces_predictions(synthetic, tmp_path):
    acc = _acc()
    result = cal.calibrate(refs.measured_rows(synthetic, acc), acc, "systolic", seed=0)
    out = tmp_path / "calibrated.yaml"
    cal.write_calibrated(result, out, plot=False)
    loaded = load_accelerator(out)
    assert loaded.calibration == result.accelerator.calibration
    again = np.array([layer_cost(r.layer, loaded).cycles for r in result.holdout])
    assert again == pytest.approx(result.holdout_predicted_after, rel=1e-9)
    import yaml
    data = yaml.safe_load(out.read_text())
    assert data["provenance"]["reference"] == "measured"
    assert data["provenance"]["seed"] == 0 and data["provenance"]["mode"] == "systolic"
    assert data["fit_report"]["after"]["rmspe_pct"] == pytest.approx(result.metrics_after["rmspe_pct"])
    assert data["fit_report"]["n_train"] + data["fit_report"]["n_holdout"] == 85


def test_separate_holdout_file(tmp_path):
    acc = _acc()
    fit_csv = _write_measured(tmp_path / "fit.csv", suite_layers("cifar", 0), acc, seed=1)
    hold_csv = _write_measured(tmp_path / "hold.csv", suite_layers("imagenet", 0), acc, seed=2)
    result = cal.calibrate(refs.measured_rows(fit_csv, acc), acc, "systolic",
                           holdout=refs.measured_rows(hold_csv, acc))
    assert result.fit_report["n_train"] == len(suite_layers("cifar", 0))
    assert result.fit_report["n_holdout"] == len(suite_layers("imagenet", 0))
    assert result.metrics_after["rmspe_pct"] < result.metrics_before["rmspe_pct"]


def test_a_separate_holdout_leaves_out_layers_of_the_training_set(tmp_path):
    acc = _acc()
    cifar, imagenet = suite_layers("cifar", 0), suite_layers("imagenet", 0)
    fit_csv = _write_measured(tmp_path / "fit.csv", cifar, acc, seed=1)
    renamed = [dataclasses.replace(layer, name=f"again_{layer.name}") for layer in cifar[:5]]
    hold_csv = _write_measured(tmp_path / "hold.csv", imagenet + renamed, acc, seed=2)
    result = cal.calibrate(refs.measured_rows(fit_csv, acc), acc, "systolic",
                           holdout=refs.measured_rows(hold_csv, acc))
    assert result.fit_report["n_holdout"] == len(imagenet)   # the 5 fitted layers, renamed, are out
    assert "5 of its rows left out" in result.fit_report["holdout"]
    with pytest.raises(HardwareConfigError, match="no held-out rows .all 41 are layers of the training"):
        cal.calibrate(refs.measured_rows(fit_csv, acc), acc, "systolic", holdout=refs.measured_rows(fit_csv, acc))


def test_a_fit_that_worsens_the_held_out_error_is_flagged(tmp_path):
    acc = _acc()
    fit_csv = _write_measured(tmp_path / "fit.csv", suite_layers("cifar", 0), acc, truth=Calibration(), seed=1)
    rows = fit_csv.read_text().splitlines()
    for i in range(1, len(rows), 3):   # a third of the rows in nanoseconds instead of cycles, say
        *cells, value = rows[i].split(",")
        rows[i] = ",".join(cells + [repr(float(value) * 1e3)])
    fit_csv.write_text("\n".join(rows) + "\n")
    hold_csv = _write_measured(tmp_path / "hold.csv", suite_layers("imagenet", 0), acc, truth=Calibration(), seed=2)
    result = cal.calibrate(refs.measured_rows(fit_csv, acc), acc, "systolic", holdout=refs.measured_rows(hold_csv, acc))
    assert result.metrics_after["rmspe_pct"] > result.metrics_before["rmspe_pct"]
    assert "warning: the fit made the held-out RMSPE worse" in cal.format_report(result)
    true_csv = _write_measured(tmp_path / "true.csv", suite_layers("imagenet", 0), acc, seed=3)   # TRUE != neutral
    clean = cal.calibrate(refs.measured_rows(true_csv, acc), acc, "systolic", seed=0)
    assert clean.metrics_after["rmspe_pct"] < clean.metrics_before["rmspe_pct"]
    assert "warning" not in cal.format_report(clean)
    # a reference the model already matches: before and after both ~0, apart by float rounding
    report = {**clean.fit_report, "before": {"rmspe_pct": 0.0}, "after": {"rmspe_pct": 2e-10}}
    assert cal.fit_warnings(report, 1.0, []) == []


def _bad_csv(tmp_path, header, rows):
    path = tmp_path / "bad.csv"
    path.write_text("\n".join([header] + rows) + "\n")
    return path


GOOD = "fc,linear,1,1,64,10,1,1,1,0,1,1,1"
HEADER = ",".join(LAYER_COLUMNS)


@pytest.mark.parametrize("header,rows,match", [
    (HEADER, [GOOD], r"bad\.csv:1: missing column 'measured_cycles' or 'measured_seconds'"),
    (HEADER + ",measured_cycles", [GOOD + ",100", GOOD + ",abc"], r"bad\.csv:3: column 'measured_cycles' expected a positive number, got 'abc'"),
    (HEADER + ",measured_cycles", [GOOD + ",-5"], r"bad\.csv:2: column 'measured_cycles' expected a positive"),
    (HEADER + ",measured_seconds", ["# comment", GOOD + ",0"], r"bad\.csv:3: column 'measured_seconds'"),
    (HEADER + ",measured_cycles", [GOOD + ",nan"], r"bad\.csv:2: column 'measured_cycles'"),
    (HEADER + ",measured_cycles", [GOOD + ","], r"bad\.csv:2: expected a value in 'measured_cycles'"),
    (HEADER + ",measured_cycles,measured_utilization", [GOOD + ",100,1.5"],
     r"bad\.csv:2: column 'measured_utilization' expected a positive number and <= 1"),
    ("name,kind,in_channels,measured_cycles", ["fc,linear,64,100"], r"bad\.csv:1: missing required column 'out_channels'"),
    (HEADER + ",measured_cycles,measured_seconds", [GOOD + ",100,1e-7", GOOD + ",100,5e-7"],   # 1 GHz clock
     r"bad\.csv:3: 'measured_cycles' 100 and 'measured_seconds' x clock_hz 500 disagree"),
])
def test_bad_measured_csv_is_one_line_error(tmp_path, header, rows, match):
    path = _bad_csv(tmp_path, header, rows)
    with pytest.raises(HardwareConfigError, match=match) as info:
        refs.measured_rows(path, _acc())
    assert "\n" not in str(info.value)


def test_too_few_rows_errors_and_writes_nothing(tmp_path, capsys):
    path = _bad_csv(tmp_path, HEADER + ",measured_cycles", [GOOD + ",100"] * 4)
    out = tmp_path / "out.yaml"
    code = main(["calibrate", "--reference", str(path), "--hw", "edge_32x32", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "bad.csv" in err and "free parameters" in err
    assert not out.exists() and not out.with_suffix(".png").exists()
    assert list(tmp_path.iterdir()) == [path]


def test_holdout_fraction_with_given_holdout_rows_is_refused(synthetic, tmp_path, capsys):
    """The fraction splits the reference rows; given held-out rows would silently override it."""
    out = tmp_path / "out.yaml"
    code = main(["calibrate", "--reference", str(synthetic), "--holdout", str(synthetic),
                 "--holdout-fraction", "0.5", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--holdout-fraction splits the reference rows; with --holdout or --holdout-suite" in err
    assert not out.exists()


@pytest.mark.parametrize("holdout", [["--holdout-suite", "no_such_suite"], ["--holdout", "missing.csv"]])
def test_a_bad_holdout_fails_before_any_simulation(tmp_path, monkeypatch, capsys, holdout):
    """The reference suite's SCALE-Sim runs take minutes; a misspelt holdout must not wait for them."""
    simulated = []
    from types import SimpleNamespace
    monkeypatch.setattr("hwmodels.references.scalesim_rows",
                        lambda *a, **k: simulated.append(a) or SimpleNamespace(skipped=[], rows=[]))
    out = tmp_path / "out.yaml"
    monkeypatch.chdir(tmp_path)
    code = main(["calibrate", "--reference", "scalesim", "--suite", "cifar", *holdout, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert holdout[1] in err and simulated == [] and not out.exists()


@pytest.mark.parametrize("flags", [["--cache", "sim.json"], ["--max-sim-cycles", "1000"]])
def test_simulation_options_with_measured_rows_are_refused(synthetic, tmp_path, capsys, flags):
    """A measured CSV runs no simulation: --cache and --max-sim-cycles were ignored without a word."""
    out = tmp_path / "out.yaml"
    code = main(["calibrate", "--reference", str(synthetic), *flags, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--cache and --max-sim-cycles apply to --reference scalesim" in err
    assert not out.exists()


def test_bad_row_through_cli_writes_nothing(tmp_path, capsys):
    path = _bad_csv(tmp_path, HEADER + ",measured_cycles", [GOOD + ",100"] * 10 + [GOOD + ",x"])
    out = tmp_path / "out.yaml"
    assert main(["calibrate", "--reference", str(path), "--out", str(out)]) == 2
    assert "bad.csv:12: column 'measured_cycles'" in capsys.readouterr().err
    assert not out.exists()


def test_cli_end_to_end_on_measured_csv(synthetic, tmp_path, capsys):
    acc = _acc()
    hw = tmp_path / "hw.yaml"
    save_accelerator(acc, hw)
    out = tmp_path / "calibrated.yaml"
    code = main(["calibrate", "--hw", str(hw), "--reference", str(synthetic), "--seed", "3",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "RMSPE %" in printed and "within +-10 %" in printed and "bandwidth_efficiency" in printed
    loaded = load_accelerator(out)
    assert loaded.calibration.cycle_scale == pytest.approx(1.3, rel=0.03)
    # another accelerator than its base: named after its file; the base's name stays in provenance
    assert loaded.name == "calibrated" and yaml.safe_load(out.read_text())["provenance"]["calibrated_from"] == "synthetic"
    # usable wherever a preset is; used with the model it was not fitted for, it says so
    assert main(["estimate", "--model", "resnet18-cifar", "--hw", str(out), "--json"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert main(["estimate", "--model", "resnet18-cifar", "--hw", str(out), "--model-mode", "uboost"]) == 0
    assert "calibrated for the systolic model" in capsys.readouterr().err
    if importlib.util.find_spec("matplotlib") is not None:   # the plot extra: a PNG next to the YAML
        assert out.with_suffix(".png").stat().st_size > 1000
    else:
        assert not out.with_suffix(".png").exists()
    # --out naming an input replaced it with the calibrated copy (exit 0)
    before = hw.read_text()
    assert main(["calibrate", "--hw", str(hw), "--reference", str(synthetic), "--out", str(hw), "--no-plot"]) == 2
    assert f"--out {hw}: is the --hw file" in capsys.readouterr().err and hw.read_text() == before
    # a refit without a plot: the earlier fit's PNG would pass for this one's
    if not out.with_suffix(".png").exists():   # no matplotlib here: a PNG marked as ubnas marks its plots
        out.with_suffix(".png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\x15tEXtSoftware\0ubnas calibrate")
    assert main(["calibrate", "--hw", str(hw), "--reference", str(synthetic), "--seed", "4", "--no-plot",
                 "--out", str(out)]) == 0
    assert not out.with_suffix(".png").exists()
    assert f"removed {out.with_suffix('.png')}, an earlier fit's plot" in capsys.readouterr().out


def test_a_png_or_out_file_of_the_users_is_never_replaced_or_removed(synthetic, tmp_path, capsys):
    """calibrate --out chip.yaml removed the user's chip.png ('an earlier fit's plot') with --no-plot
    and replaced it without; an --out naming a search's arch.yaml replaced the spec."""
    out = tmp_path / "chip.yaml"
    photo = tmp_path / "chip.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n a photo of the board")
    capsys.readouterr()
    assert main(["calibrate", "--reference", str(synthetic), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{photo}: exists and is not a plot ubnas drew" in err and not out.exists(), err
    assert main(["calibrate", "--reference", str(synthetic), "--out", str(out), "--no-plot"]) == 0
    assert "removed" not in capsys.readouterr().out
    assert photo.read_bytes() == b"\x89PNG\r\n\x1a\n a photo of the board" and out.is_file()
    spec = tmp_path / "arch.yaml"
    spec.write_text("ubnas_spec: 1\nname: found\n")
    assert main(["calibrate", "--reference", str(synthetic), "--out", str(spec), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"--out {spec}: exists and is not an accelerator YAML" in err, err
    assert spec.read_text() == "ubnas_spec: 1\nname: found\n"


def test_scalesim_reference_through_cache_only(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache.json"
    assert refs.import_scalesim_csv(REFERENCE_CSV, cache) == 422 + 169   # ws and os runs, then is runs

    def no_simulation(*args, **kwargs):
        raise AssertionError("SCALE-Sim must not run: every row comes from the cache")
    monkeypatch.setattr("hwmodels.scalesim.run_scalesim", no_simulation)
    out = tmp_path / "ss.yaml"
    args = ["calibrate", "--hw", "uboost", "--reference", "scalesim", "--suite", "cifar",
            "--holdout-suite", "imagenet", "--array", "32x32", "--dataflow", "ws", "--model-mode",
            "uboost", "--cache", str(cache), "--no-plot", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    # the reference does depend on the dataflow, though U-Boost's equations do not
    assert "SCALE-Sim simulates the reference cycles at it" in captured.err and "no effect" not in captured.err
    fitted = load_accelerator(out).calibration
    # ws fill/drain + weight load per fold is 2R + C - 2 = 94 on 32x32: the paper's model
    # plus a per-fold overhead reproduces SCALE-Sim's cycle count exactly
    assert fitted.fold_overhead_cycles == pytest.approx(94, abs=1e-3)
    assert fitted.cycle_scale == pytest.approx(1.0, abs=1e-6)
    assert "within +-10 %" in printed
    # the systolic model already counts SCALE-Sim's cycles: calibration leaves it alone
    systolic = [a if a != "uboost" or args[i - 1] != "--model-mode" else "systolic"
                for i, a in enumerate(args)]
    assert main(systolic) == 0
    capsys.readouterr()
    exact = load_accelerator(out).calibration
    assert exact.cycle_scale == pytest.approx(1.0, abs=1e-9)
    assert exact.fold_overhead_cycles == pytest.approx(0, abs=1e-6)
    assert exact.layer_overhead_cycles == pytest.approx(0, abs=1e-6)


def test_scalesim_import_keeps_each_row_with_its_cycles_past_skipped_lines(tmp_path):
    # A commented-out run and a blank line: every later row must still cache its own cycles.
    lines = REFERENCE_CSV.read_text().splitlines()
    edited = [lines[0], lines[1], "# " + lines[2], "", *lines[3:8]]
    path = tmp_path / "edited.csv"
    path.write_text("\n".join(edited) + "\n")
    cache = tmp_path / "cache.json"
    assert refs.import_scalesim_csv(path, cache) == 6
    cached = json.loads(cache.read_text())
    kept = [r for r in csv.DictReader(edited[:1] + edited[1:2] + edited[4:])]
    assert len(kept) == 6 and len(cached) == len({(tuple(r[c] for c in LAYER_COLUMNS[1:]),
                                                    r["array_rows"], r["dataflow"]) for r in kept})
    for r in kept:
        layer = ConvLayer(r["name"], **{c: int(r[c]) for c in LAYER_COLUMNS[2:]})
        key = refs.cache_key(layer, int(r["array_rows"]), int(r["array_cols"]), r["dataflow"],
                            refs.SCALESIM_VERSION)
        assert cached[key]["total_cycles"] == int(r["scalesim_total_cycles"]), r["name"]


def test_cache_key_ignores_names_and_includes_version():
    a = suite_layers("cifar", 0)[0]
    b = dataclasses.replace(a, name="renamed")
    assert refs.cache_key(a, 8, 8, "ws", "3.0.0") == refs.cache_key(b, 8, 8, "ws", "3.0.0")
    assert refs.cache_key(a, 8, 8, "ws", "3.0.0") != refs.cache_key(a, 8, 8, "os", "3.0.0")
    assert refs.cache_key(a, 8, 8, "ws", "3.0.0") != refs.cache_key(a, 8, 8, "ws", "3.1.0")


def test_cache_key_tells_apart_layers_that_differ_in_one_side_only():
    """Padding, stride or dilation that differ only in their width used to share a cache entry,
    so calibration fitted against the cycles of a different layer."""
    base = ConvLayer("c", 6, 6, 3, 5, 3, 3, stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    keys = {refs.cache_key(base, 4, 4, "ws", "3.0.0")}
    for field, pair in (("padding", (1, 0)), ("stride", (1, 2)), ("dilation", (1, 2))):
        keys.add(refs.cache_key(dataclasses.replace(base, **{field: pair}), 4, 4, "ws", "3.0.0"))
    assert len(keys) == 4
    # a square layer keeps the one-int key that caches written before this fix hold
    assert json.loads(refs.cache_key(base, 4, 4, "ws", "3.0.0"))["layer"]["padding"] == 1


def test_scalesim_rows_of_one_sided_padding_are_its_own(tmp_path):
    """Two convs that differ only in their width padding each get their own SCALE-Sim cycles."""
    pytest.importorskip("scalesim")
    acc = Accelerator("a", 4, 4, dataflow="ws")
    layers = [ConvLayer("pad11", 6, 6, 3, 5, 3, 3, padding=(1, 1)),
              ConvLayer("pad10", 6, 6, 3, 5, 3, 3, padding=(1, 0))]
    rows = refs.scalesim_rows(layers, acc, cache_path=tmp_path / "cache.json", progress=False).rows
    for layer, row in zip(layers, rows):
        fresh = refs.scalesim_rows([layer], acc, cache_path=tmp_path / f"{layer.name}.json", progress=False)
        assert row.cycles == fresh.rows[0].cycles
    assert rows[0].cycles != rows[1].cycles


def test_repeats_of_a_layer_do_not_count_towards_the_free_parameters(tmp_path, capsys):
    """8 rows of 3 distinct layers cannot fit 4 parameters, however many times a layer repeats."""
    acc = _acc()
    layers = suite_layers("mixed", 0)
    fit_csv = _write_measured(tmp_path / "fit.csv", [layers[0]] * 6 + layers[1:3], acc)
    hold_csv = _write_measured(tmp_path / "hold.csv", layers[3:8], acc)
    with pytest.raises(HardwareConfigError, match=r"8 training row\(s\) of 3 distinct layer\(s\) .* need at least 4 "
                                                  r"distinct training layers"):
        cal.calibrate(refs.measured_rows(fit_csv, acc), acc, "systolic", holdout=refs.measured_rows(hold_csv, acc))
    # a seeded split that leaves too few training layers says which way to move the fraction
    out = tmp_path / "out.yaml"
    assert main(["calibrate", "--reference", str(hold_csv), "--holdout-fraction", "0.9", "--out", str(out)]) == 2
    assert "or a smaller --holdout-fraction" in capsys.readouterr().err
    assert not out.exists()
    # 4 distinct layers for 4 parameters: a split holds one out whatever the fraction
    four_csv = _write_measured(tmp_path / "four.csv", layers[3:7], acc)
    assert main(["calibrate", "--reference", str(four_csv), "--holdout-fraction", "0.01", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "of 3 distinct layer(s)" in err and err.rstrip().endswith("give more layers"), err
    # one distinct layer is never split, whatever the fraction: only more layers help
    one_csv = _write_measured(tmp_path / "one.csv", [layers[0]] * 5, acc)
    assert main(["calibrate", "--reference", str(one_csv), "--holdout-fraction", "0.9", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "of 1 distinct layer(s)" in err and err.rstrip().endswith("give more layers")


def test_measured_seconds_in_milliseconds_are_flagged(tmp_path):
    """Every row 1000x too slow: the fit runs into its bounds; the warning names the unit."""
    acc = _acc()
    path = _write_measured(tmp_path / "ms.csv", suite_layers("mixed", 0), acc, column="measured_seconds")
    rows = path.read_text().splitlines()
    for i in range(1, len(rows)):
        *cells, value = rows[i].split(",")
        rows[i] = ",".join(cells + [repr(float(value) * 1e3)])
    path.write_text("\n".join(rows) + "\n")
    text = cal.format_report(cal.calibrate(refs.measured_rows(path, acc), acc, "systolic", seed=0))
    ratio = float(text.split("the reference is a median ")[1].split("x")[0])
    # TRUE's scale and overheads make the model ~1.3-1.6x slower; times 1000 for the unit
    assert 1000 < ratio < 2000
    assert "check its unit (measured_seconds in seconds" in text
    assert "warning: at the bound of their range: cycle_scale" in text


def test_a_hw_already_calibrated_gets_no_unit_warning_for_a_reference_in_the_right_unit(synthetic):
    """Refitting from a --hw calibrated with cycle_scale 10 compared the reference with that
    calibration, not the uncalibrated model, and called a correct reference 0.1x off."""
    from hwmodels.accelerator import Calibration
    acc = _acc()
    refit = acc.replace(calibration=Calibration(cycle_scale=10.0, fold_overhead_cycles=3000.0))
    text = cal.format_report(cal.calibrate(refs.measured_rows(synthetic, refit), refit, "systolic", seed=0))
    assert "check its unit" not in text, text


def test_overheads_that_trade_off_exactly_are_reported_undetermined(tmp_path):
    """Every layer one fold (small linear layers on a 32x32 array): a fold overhead and a layer
    overhead add the same cycles to every row, so only their sum is fitted."""
    from hwmodels import LinearLayer
    acc = _acc()
    layers = [LinearLayer(f"fc{i}", 8 + 2 * i, 4 + 2 * i, batch=1 + i) for i in range(10)]
    assert {layer_cost(layer, acc).folds for layer in layers} == {1}
    path = _write_measured(tmp_path / "one_fold.csv", layers, acc, noise=0.0)
    result = cal.calibrate(refs.measured_rows(path, acc), acc, "systolic", seed=0)
    said = [w for w in result.fit_report["warnings"] if w.startswith("these rows do not determine")]
    assert len(said) == 1
    assert "fold_overhead_cycles, layer_overhead_cycles" in said[0]


def test_undetermined_parameters_by_hand():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, -1.0, 0.5, 0.0])
    names = ("p", "q", "r", "s")
    assert cal.undetermined(np.stack([a, b, np.zeros(4), np.ones(4)], 1), names) == (["r"], [])
    assert cal.undetermined(np.stack([a, 2 * a, b, np.ones(4)], 1), names) == ([], ["p", "q"])
    assert cal.undetermined(np.stack([a, b, a + b, np.ones(4)], 1), names) == ([], ["p", "q", "r"])
    assert cal.undetermined(np.stack([a, b, a * a, np.ones(4)], 1), names) == ([], [])
    # two null directions (three proportional columns): the last singular vector alone named two
    assert cal.undetermined(np.stack([a, 2 * a, 3 * a, np.ones(4)], 1), names) == ([], ["p", "q", "r"])
    assert cal.undetermined(np.stack([a, 2 * a, b, 3 * b], 1), names) == ([], ["p", "q", "r", "s"])
    # many rows: no rows x rows matrix (a 20,000-row CSV needed 3.4 GB, or died of MemoryError)
    import tracemalloc
    tracemalloc.start()
    assert cal.undetermined(np.random.default_rng(0).random((4000, 4)), names) == ([], [])
    assert tracemalloc.get_traced_memory()[1] < 8 * 2**20   # a 4000 x 4000 float64 U alone is 122 MiB
    tracemalloc.stop()
    # q pinned at a bound: p alone is determined
    assert cal.undetermined(np.stack([a, 2 * a, b, np.ones(4)], 1), names, [False, True]) == ([], [])


def test_a_parameter_no_row_depends_on_keeps_its_value_and_gets_a_note(tmp_path):
    """Every layer compute-bound: the bandwidth efficiency is free in the fit, so it used to be
    whichever start won (0.3 or 1) with an alarming warning; it keeps the given value, with a note."""
    acc = _acc(bandwidth_bytes_per_s=1e15, onchip_bytes=2 ** 40)
    given = acc.replace(calibration=Calibration(bandwidth_efficiency=0.7))
    path = _write_measured(tmp_path / "compute.csv", suite_layers("mixed", 0), acc, noise=0.0)
    result = cal.calibrate(refs.measured_rows(path, given), given, "systolic", seed=0)
    assert result.fit_report["unused_parameters"] == ["bandwidth_efficiency"]
    assert result.accelerator.calibration.bandwidth_efficiency == 0.7
    text = cal.format_report(result)
    assert "note: no training row depends on bandwidth_efficiency (no layer is memory-bound): kept at 0.7" in text
    assert "warning" not in text and result.metrics_after["rmspe_pct"] < 1e-3


def test_a_plot_path_that_is_a_directory_writes_nothing(synthetic, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "cal.png").mkdir()
    out = tmp_path / "cal.yaml"
    assert main(["calibrate", "--reference", str(synthetic), "--out", str(out)]) == 2
    assert "cal.png: is a directory" in capsys.readouterr().err
    assert not out.exists()


def test_overheads_that_trade_off_exactly_are_found_at_any_magnitude(tmp_path):
    """One-fold, compute-bound conv and linear layers on a 128x128 array, no fold overhead and a
    300-cycle layer overhead: a finite-difference Jacobian blurred the exact fold/layer trade-off
    (singular-value ratio 2.6e-6, over the 1e-6 cutoff) and no warning was given."""
    from hwmodels import LinearLayer
    acc = Accelerator("fast", 128, 128, clock_hz=1e9, bandwidth_bytes_per_s=1e14)
    shapes = [(32, 3, 16, 3), (32, 8, 64, 3), (16, 12, 100, 3), (16, 64, 128, 1), (8, 100, 50, 1),
              (8, 128, 128, 1), (4, 14, 30, 3), (28, 3, 64, 5), (14, 32, 32, 1), (7, 120, 120, 1),
              (56, 3, 32, 3), (20, 5, 7, 3)]
    layers = [ConvLayer(f"c{i}", hw, hw, cin, cout, k, k, padding=k // 2)
              for i, (hw, cin, cout, k) in enumerate(shapes)]
    layers += [LinearLayer("fc1", 128, 10), LinearLayer("fc2", 64, 100, batch=8)]
    truth = Calibration(fold_overhead_cycles=0.0, layer_overhead_cycles=300.0, cycle_scale=1.1)
    costs = [layer_cost(layer, acc.replace(calibration=truth)) for layer in layers]
    assert {c.folds for c in costs} == {1} and all(c.memory_cycles < c.compute_cycles for c in costs)
    path = _write_measured(tmp_path / "one.csv", layers, acc, truth=truth, noise=0.0)
    result = cal.calibrate(refs.measured_rows(path, acc), acc, "systolic", seed=0)
    said = [w for w in result.fit_report["warnings"] if "trade off exactly" in w]
    assert len(said) == 1 and "fold_overhead_cycles, layer_overhead_cycles" in said[0]


def test_a_parameter_the_rows_bound_from_one_side_only_is_reported(tmp_path):
    """True bandwidth efficiency 1: no layer is memory-bound, but some would be below a threshold
    e*, so every efficiency in [e*, 1] fits equally. Starting from 0.3 the fit stopped at e* and
    wrote it as if measured. e* is worked out here from the exact model's memory and compute
    cycles of the training rows."""
    acc = Accelerator("mid", 128, 128, clock_hz=1e9, bandwidth_bytes_per_s=3e11, bytes_per_element=2)
    truth = Calibration(fold_overhead_cycles=20.0, layer_overhead_cycles=500.0, cycle_scale=1.2)
    given = acc.replace(calibration=Calibration(bandwidth_efficiency=0.3))
    path = _write_measured(tmp_path / "mid.csv", suite_layers("cifar", 0), acc, truth=truth, noise=0.0)
    result = cal.calibrate(refs.measured_rows(path, given), given, "systolic", seed=0)
    true_acc = acc.replace(calibration=truth)   # efficiency 1
    ratios = [layer_cost(r.layer, true_acc).memory_cycles / layer_cost(r.layer, true_acc).compute_cycles
              for r in result.train]
    threshold = max(ratios)
    assert 0.3 < threshold < 1.0            # some rows memory-bound at the given 0.3, none at 1
    lo, hi = result.fit_report["bounded_only"]["bandwidth_efficiency"]
    assert lo == pytest.approx(threshold, rel=1e-6) and hi == 1.0
    written = result.accelerator.calibration.bandwidth_efficiency
    assert written == pytest.approx(threshold, rel=1e-6)   # the nearest equally good value to 0.3
    assert any(w.startswith("these rows do not determine bandwidth_efficiency within [") and
               "the nearest to the given 0.3" in w for w in result.fit_report["warnings"])
    assert result.train_after["rmspe_pct"] < 1e-6
    # started inside the range, the given value is kept, with a note and no warning
    inside = acc.replace(calibration=Calibration(bandwidth_efficiency=0.95))
    kept = cal.calibrate(refs.measured_rows(path, inside), inside, "systolic", seed=0)
    assert kept.accelerator.calibration.bandwidth_efficiency == 0.95
    assert "note: any bandwidth_efficiency in [" in cal.format_report(kept)
    assert not any("bandwidth_efficiency" in w for w in kept.fit_report["warnings"])


def test_a_cycle_scale_below_one_is_warned_and_layers_above_peak_are_marked(tmp_path):
    """Small layers measured at 0.6x the model's cycles fit cycle_scale 0.6 with no warning, and a
    large layer on that fit was then reported at ~160 % utilization, 'fill/drain' its loss."""
    from hwmodels import NetworkCost
    from hwmodels.report import format_table
    acc = _acc(bandwidth_bytes_per_s=1e15, onchip_bytes=1 << 40)   # compute-bound: only cycle_scale matters
    small = [ConvLayer(f"c{i}", 2 + i % 3, 2 + i % 3, 4 + 2 * i, 4 + 3 * i, 1 + i % 2, 1 + i % 2) for i in range(12)]
    path = _write_measured(tmp_path / "small.csv", small, acc, truth=Calibration(cycle_scale=0.6), noise=0.0)
    result = cal.calibrate(refs.measured_rows(path, acc), acc, "systolic", seed=0)
    assert result.accelerator.calibration.cycle_scale == pytest.approx(0.6, rel=1e-3)
    assert any(w.startswith("cycle_scale 0.6 < 1") and "above the array's peak" in w
               for w in result.fit_report["warnings"])
    big = layer_cost(ConvLayer("big", 64, 64, 256, 256, 3, 3, padding=(1, 1)), result.accelerator)
    assert big.macs / (big.cycles * acc.array_rows * acc.array_cols) > 1   # what the note is about
    table = format_table(NetworkCost([big], result.accelerator, "systolic"))
    assert "above peak" in table and "note: 1 layer(s) above 100 % utilization" in table
    ordinary = format_table(NetworkCost([layer_cost(small[0], acc)], acc, "systolic"))
    assert "above peak" not in ordinary and "note:" not in ordinary


def test_a_cycle_scale_just_under_one_is_no_warning(tmp_path):
    """0.9996 (measurement noise) warned that layers would exceed the peak: no layer the model
    costs keeps the array that busy (fill and drain), so it cannot."""
    acc = _acc(bandwidth_bytes_per_s=1e15, onchip_bytes=1 << 40)
    layers = [ConvLayer(f"c{i}", 2 + i % 3, 2 + i % 3, 4 + 2 * i, 4 + 3 * i, 1 + i % 2, 1 + i % 2) for i in range(12)]
    path = _write_measured(tmp_path / "m.csv", layers, acc, truth=Calibration(cycle_scale=0.9996), noise=0.0)
    result = cal.calibrate(refs.measured_rows(path, acc), acc, "systolic", seed=0)
    assert result.accelerator.calibration.cycle_scale < 1
    assert not any(w.startswith("cycle_scale") for w in result.fit_report["warnings"]), result.fit_report["warnings"]
