"""calibrate's vectorised model against hwmodels.exact on several arrays, and the utilization it
reports; SCALE-Sim calibration of a several-array accelerator (one array is simulated)."""
import csv

import numpy as np
import pytest

from hwmodels import Accelerator, Calibration, layer_cost
from hwmodels import calibrate as cal
from hwmodels import references as refs
from hwmodels.suites import layer_fields, suite_layers

from test_calibrate import LAYER_COLUMNS, REFERENCE_CSV

# 4 rectangular 16 x 32 arrays; small bandwidth and buffer so some layers are memory-bound
MULTI = Accelerator("multi", 16, 32, num_arrays=4, clock_hz=1e9, bandwidth_bytes_per_s=16e9,
                    onchip_bytes=256 * 1024, bytes_per_element=1)
CAL = Calibration(cycle_scale=1.3, fold_overhead_cycles=17.0, layer_overhead_cycles=250.0,
                  bandwidth_efficiency=0.6)


def _exact_cycles(layers, acc, mode):
    return np.array([layer_cost(layer, acc, mode).cycles for layer in layers])


@pytest.mark.parametrize("mode", ["uboost", "systolic"])
def test_model_cycles_equal_exact_on_several_arrays(mode):
    """hwmodels.exact: 'systolic' shares folds across the 4 arrays (rounds = ceil(folds / 4)),
    'uboost' models one array (rounds = folds); the fold overhead is paid once per round."""
    layers = suite_layers("mixed", 0)
    rows = [refs.ReferenceRow(layer, 1.0, layer.name) for layer in layers]
    model = cal._Model(rows, MULTI, mode, with_memory=True)
    assert model.predict(CAL) == pytest.approx(_exact_cycles(layers, MULTI.replace(calibration=CAL), mode),
                                               rel=1e-12)


def test_fold_overhead_is_paid_per_round_hand_count():
    """A 1x1 conv, 16x16 map, 64 -> 96 channels on 4 arrays of 16 x 32, ws: K = 64, N = 96,
    M = 256: ceil(64/16) * ceil(96/32) = 12 folds, 3 rounds on 4 arrays.
      systolic fold: 2*16 + 32 + 256 - 2 = 318 cycles; 3 rounds * (318 + 17) = 1005,
                     * 1.3 = 1306.5, + 250 = 1556.5
      uboost fold:   256 cycles, 12 rounds (one array) * (256 + 17) = 3276, * 1.3 = 4258.8,
                     + 250 = 4508.8
    (memory: 16*16*64 + 64*96 + 16*16*96 = 47104 bytes at 16 GB/s * 0.6 = 4906.7 cycles:
    the systolic layer is memory-bound, 4906.7 + 250 = 5156.7)."""
    from hwmodels import ConvLayer
    layer = ConvLayer("pw", 16, 16, 64, 96)
    rows = [refs.ReferenceRow(layer, 1.0, "pw")]
    compute_only = cal._Model(rows, MULTI, "systolic", with_memory=False)
    assert compute_only.predict(CAL) == pytest.approx([1556.5])
    assert cal._Model(rows, MULTI, "systolic", with_memory=True).predict(CAL) == pytest.approx(
        [47104 / (16e9 * 0.6) * 1e9 + 250])
    assert cal._Model(rows, MULTI, "uboost", with_memory=True).predict(CAL) == pytest.approx([4508.8])


def _measured_with_utilization(path, layers, acc, mode, truth):
    """measured cycles from hwmodels.exact with ``truth``; utilization column: a fixed 0.3."""
    true_acc = acc.replace(calibration=truth)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LAYER_COLUMNS + ["measured_cycles", "measured_utilization"])
        for layer in layers:
            fields = layer_fields(layer)
            writer.writerow([layer.name] + [fields[c] for c in LAYER_COLUMNS[1:]]
                            + [repr(layer_cost(layer, true_acc, mode).cycles), "0.3"])
    return path


@pytest.mark.parametrize("mode", ["uboost", "systolic"])
def test_calibrated_model_and_its_utilization_equal_exact_on_several_arrays(tmp_path, mode):
    """Fit on rows made by hwmodels.exact (no noise) on 4 arrays: the fitted model's held-out
    cycles are exact's with the fitted calibration, and the utilization error it reports is that
    of exact's utilization (MACs / (cycles * mode_pes)) against the measured 0.3."""
    truth = Calibration(cycle_scale=1.3, fold_overhead_cycles=17.0, layer_overhead_cycles=250.0,
                        bandwidth_efficiency=0.6 if mode == "systolic" else 1.0)
    path = _measured_with_utilization(tmp_path / "m.csv", suite_layers("mixed", 0), MULTI, mode, truth)
    result = cal.calibrate(refs.measured_rows(path, MULTI), MULTI, mode, seed=0)
    held = [r.layer for r in result.holdout]
    fitted = result.accelerator
    assert result.holdout_predicted_after == pytest.approx(_exact_cycles(held, fitted, mode), rel=1e-9)
    assert result.metrics_after["max_abs_pct"] < 1e-3     # the truth is in the model: recovered
    for acc, metrics in ((MULTI, result.metrics_before), (fitted, result.metrics_after)):
        util = np.array([layer_cost(layer, acc, mode).utilization for layer in held])
        assert metrics["utilization_mean_abs_pp"] == pytest.approx(100 * np.mean(np.abs(util - 0.3)), rel=1e-9)


def test_scalesim_calibration_of_several_arrays_simulates_one(tmp_path):
    """SCALE-Sim 3.0.0 runs one array; the 4-array accelerator's model must be compared on one
    array.  The systolic model is SCALE-Sim's count + 1 per GEMM on one array (see
    test_exact_vs_scalesim), so the fit leaves the calibration neutral; on 4 arrays it would be
    ~4x fast and the fit would scale it back."""
    cache = tmp_path / "cache.json"
    refs.import_scalesim_csv(REFERENCE_CSV, cache)
    acc = Accelerator("tpu_like", 32, 32, num_arrays=4, dataflow="ws")
    reference = refs.scalesim_rows(suite_layers("cifar", 0), acc.replace(num_arrays=1), cache,
                                  max_sim_cycles=0, progress=False)
    assert len(reference.rows) >= 20   # the cached ones; the rest are skipped, not simulated
    result = cal.calibrate(reference, acc, "systolic", seed=0)
    assert result.metrics_before["max_abs_pct"] < 1e-9
    # the fit report names what the fit did not see: every suite layer that has no row
    fitted_names = {row.layer.name for row in reference.rows}
    missing = [layer.name for layer in suite_layers("cifar", 0) if layer.name not in fitted_names]
    assert missing and [s.split(" (")[0] for s in result.fit_report["skipped_reference_layers"]] == missing
    assert "skipped_holdout_layers" not in result.fit_report
    fitted = result.accelerator
    assert fitted.num_arrays == 4
    assert fitted.calibration.cycle_scale == pytest.approx(1.0, abs=1e-6)
    assert fitted.calibration.fold_overhead_cycles == pytest.approx(0.0, abs=1e-3)
    assert fitted.calibration.layer_overhead_cycles == pytest.approx(0.0, abs=1e-3)
