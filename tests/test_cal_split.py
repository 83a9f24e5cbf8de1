"""The seeded held-out split keeps every copy of a repeated layer on one side.

Real networks repeat layers (ResNet-18 on CIFAR: the 3x3 64 -> 64 conv on a 32x32 map four
times); a split of rows put copies on both sides, so the 'held-out' error was partly measured
on fitted layers."""
import collections
import csv

import pytest

from hwmodels import Accelerator, Calibration, layer_cost, zoo
from hwmodels import calibrate as cal
from hwmodels import references as refs
from hwmodels.estimate import trace_layers
from hwmodels.suites import layer_fields

from test_calibrate import LAYER_COLUMNS

ACC = Accelerator("a", 16, 16, clock_hz=1e9)


def _resnet18_layers():
    layers = [layer for layer in trace_layers(zoo.get_model("resnet18-cifar"), zoo.DEFAULT_INPUT)
              if layer.kind in ("conv", "linear")]
    return layers


def _shape(layer):
    # the layer's fields as the CSV holds them, without the name (an independent identity)
    return tuple(sorted((k, str(v)) for k, v in layer_fields(layer).items()))


def test_resnet18_repeats_layers():
    counts = collections.Counter(_shape(layer) for layer in _resnet18_layers())
    assert len(_resnet18_layers()) == 21 and max(counts.values()) >= 4 and len(counts) < 21


@pytest.mark.parametrize("seed", range(12))
def test_no_held_out_layer_is_a_training_layer(seed):
    layers = _resnet18_layers()
    rows = [refs.ReferenceRow(layer, 100.0 + i, layer.name) for i, layer in enumerate(layers)]
    train, held = cal.split_rows(rows, 0.3, seed)
    train_shapes = {_shape(r.layer) for r in train}
    assert not [r.layer.name for r in held if _shape(r.layer) in train_shapes]
    # every row on exactly one side, in file order on each side
    assert sorted(r.cycles for r in train + held) == [r.cycles for r in rows]
    assert [r.cycles for r in train] == sorted(r.cycles for r in train)
    # 30 % of the distinct layers held out, with all their copies
    distinct = len({_shape(layer) for layer in layers})
    assert len({_shape(r.layer) for r in held}) == round(0.3 * distinct)


def test_calibrate_reports_the_split_by_layer(tmp_path):
    layers = _resnet18_layers()
    truth = ACC.replace(calibration=Calibration(cycle_scale=1.2, fold_overhead_cycles=10.0))
    path = tmp_path / "m.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LAYER_COLUMNS + ["measured_cycles"])
        for layer in layers:
            fields = layer_fields(layer)
            writer.writerow([layer.name] + [fields[c] for c in LAYER_COLUMNS[1:]]
                            + [repr(layer_cost(layer, truth).cycles)])
    result = cal.calibrate(refs.measured_rows(path, ACC), ACC, "systolic", seed=3)
    assert not {_shape(r.layer) for r in result.holdout} & {_shape(r.layer) for r in result.train}
    distinct = len({_shape(layer) for layer in layers})
    assert result.fit_report["holdout"].startswith(f"seeded split 0.3 of {distinct} distinct layers")
    assert "no held-out layer is a training layer" in result.fit_report["holdout"]
    assert result.fit_report["n_train"] + result.fit_report["n_holdout"] == 21
