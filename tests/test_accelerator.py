"""Accelerator presets and YAML loading: every error names the file and the key."""
import dataclasses

import pytest
import yaml

from hwmodels import Accelerator, Calibration, HardwareConfigError, load_accelerator, preset_names, save_accelerator
from hwmodels.accelerator import DATAFLOWS

GOOD = {"name": "t", "array_rows": 16, "array_cols": 8, "num_arrays": 2, "dataflow": "os",
        "clock_hz": 5e8, "bandwidth_bytes_per_s": 1e10, "onchip_bytes": 1 << 20, "bytes_per_element": 1}


def test_presets_load_with_positive_fields():
    names = preset_names()
    assert {"uboost", "tpu_v1", "tpu_v2", "tpu_v3", "tpu_v4"} <= set(names)
    for name in names:
        acc = load_accelerator(name)
        for key in ("array_rows", "array_cols", "num_arrays", "clock_hz", "bandwidth_bytes_per_s",
                    "onchip_bytes", "bytes_per_element"):
            assert getattr(acc, key) > 0, (name, key)
        assert acc.dataflow in DATAFLOWS and acc.source, name
    uboost = load_accelerator("uboost")          # the paper's machine
    assert (uboost.array_rows, uboost.array_cols, uboost.clock_hz) == (128, 128, 1e9)
    assert uboost.bandwidth_bytes_per_s == 80e9


def write(tmp_path, data, name="hw.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_good_file_loads(tmp_path):
    acc = load_accelerator(write(tmp_path, GOOD))
    assert acc.pes == 16 * 8 * 2 and acc.dataflow == "os"


@pytest.mark.parametrize("change, key", [
    ({"array_rows": None}, "array_rows"),                 # missing (None = delete)
    ({"clock_hz": None}, "clock_hz"),
    ({"clock_hz": "fast"}, "clock_hz"),                   # mistyped
    ({"array_cols": 12.5}, "array_cols"),
    ({"num_arrays": True}, "num_arrays"),
    ({"array_rows": 0}, "array_rows"),                    # non-positive
    ({"bandwidth_bytes_per_s": -1}, "bandwidth_bytes_per_s"),
    ({"rows": 4}, "rows"),                                # unknown key
    ({"dataflow": "rs"}, "dataflow"),                     # unknown dataflow
    ({"calibration": {"cycle_scale": 0}}, "calibration.cycle_scale"),
    ({"calibration": {"fold_overhead": 1}}, "calibration.fold_overhead"),
    ({"array_rows": float("inf")}, "array_rows"),         # not finite
    ({"clock_hz": float("nan")}, "clock_hz"),
    ({"calibration": {"layer_overhead_cycles": float("nan")}}, "calibration.layer_overhead_cycles"),
    ({"calibration": {"fold_overhead_cycles": -5}}, "calibration.fold_overhead_cycles"),   # negative overhead
    ({"calibration": {"bandwidth_efficiency": 1.5}}, "calibration.bandwidth_efficiency"),  # over the peak
    ({"calibration": {"bandwidth_efficiency": 0}}, "calibration.bandwidth_efficiency"),
    ({"name": [1, 2]}, "name"),                           # a name that is not a string
    ({"array_rows": 10**300}, "array_rows"),              # past 2**53: an OverflowError in the cost, before
    ({"onchip_bytes": 2**53 + 1}, "onchip_bytes"),        # read through float: 2**53, before
    ({"clock_hz": 1e-300}, "clock_hz"),                   # every latency inf, before
    ({"bandwidth_bytes_per_s": 1e-300}, "bandwidth_bytes_per_s"),
])
def test_bad_values_name_file_and_key(tmp_path, change, key):
    data = dict(GOOD)
    for k, v in change.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    path = write(tmp_path, data)
    with pytest.raises(HardwareConfigError) as info:
        load_accelerator(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and "\n" not in message


def test_invalid_yaml_and_missing_file(tmp_path):
    path = write(tmp_path, "array_rows: [1, 2\narray_cols: 3\n")
    with pytest.raises(HardwareConfigError, match="invalid YAML") as info:
        load_accelerator(path)
    assert str(path) in str(info.value)
    with pytest.raises(HardwareConfigError, match="no such preset"):
        load_accelerator("no_such_preset")
    with pytest.raises(HardwareConfigError, match="expected a mapping"):
        load_accelerator(write(tmp_path, "- 1\n- 2\n", "list.yaml"))


def test_duplicate_key_and_directory_name_the_file(tmp_path):
    text = yaml.safe_dump(GOOD) + "array_rows: 64\n"     # the second value used to win silently
    with pytest.raises(HardwareConfigError, match="'array_rows' appears twice") as info:
        load_accelerator(write(tmp_path, text))
    assert str(tmp_path / "hw.yaml") in str(info.value)
    with pytest.raises(HardwareConfigError, match="cannot read"):
        load_accelerator(tmp_path)


@pytest.mark.parametrize("change, key", [
    ({"array_rows": 0}, "array_rows"), ({"array_rows": -4}, "array_rows"), ({"num_arrays": 0}, "num_arrays"),
    ({"array_cols": 2.5}, "array_cols"), ({"bandwidth_bytes_per_s": 0}, "bandwidth_bytes_per_s"),
    ({"clock_hz": float("inf")}, "clock_hz"),
    ({"calibration": Calibration(layer_overhead_cycles=-1e9)}, "calibration.layer_overhead_cycles"),
])
def test_direct_construction_validates(change, key):
    """Built in code, not from YAML: a zero array used to surface as a ZeroDivisionError in
    layer_cost, and a negative one as negative cycles."""
    with pytest.raises(HardwareConfigError, match=f"accelerator 't': key '{key}'"):
        Accelerator(**{**GOOD, **change})


def test_is_a_value_error():
    assert issubclass(HardwareConfigError, ValueError)   # the CLI turns these into one line


def test_save_load_round_trip(tmp_path):
    acc = Accelerator(**{k: v for k, v in GOOD.items()},
                      calibration=Calibration(fold_overhead_cycles=2.5, cycle_scale=1.1),
                      source="test")
    path = tmp_path / "out" / "acc.yaml"
    save_accelerator(acc, path, extra={"fit_report": {"rmse": 0.1}})
    back = load_accelerator(path)
    assert back == acc
    for name in preset_names():
        preset = load_accelerator(name)
        save_accelerator(preset, tmp_path / f"{name}.yaml")
        assert load_accelerator(tmp_path / f"{name}.yaml") == preset


def test_replace_validates():
    acc = load_accelerator("uboost")
    assert acc.replace(array_rows=64).array_rows == 64
    with pytest.raises(HardwareConfigError, match="'dataflow'"):
        acc.replace(dataflow="xy")
    with pytest.raises(HardwareConfigError, match="'num_arrays'"):
        dataclasses.replace(acc, num_arrays=1).replace(num_arrays=0)
    # estimate --array / --num-arrays go through replace: past 2**53 as a YAML file is (cycles inexact)
    with pytest.raises(HardwareConfigError, match=r"'array_rows' expected an integer <= 2\*\*53"):
        acc.replace(array_rows=10**20)


@pytest.mark.parametrize("key, value, expected", [("array_rows", "x", "expected an integer, got 'x'"),
                                                  ("array_rows", float("nan"), "expected a finite integer, got nan"),
                                                  ("array_rows", 10 ** 400, "expected a finite integer, got ~2**1328"),
                                                  ("clock_hz", True, "expected a number, got True"),
                                                  ("dataflow", 3, "expected a string, got 3")])
def test_a_wrong_type_is_named_in_plain_words(tmp_path, key, value, expected):
    path = write(tmp_path, {**GOOD, key: value})
    with pytest.raises(HardwareConfigError) as info:
        load_accelerator(path)
    assert str(info.value) == f"{path}: key '{key}' {expected}"


def test_a_path_is_never_taken_for_a_preset_name(tmp_path, monkeypatch):
    # '/.../nonexistent/tpu_v4' used to load the tpu_v4 preset because it had no suffix
    missing = tmp_path / "nonexistent" / "tpu_v4"
    with pytest.raises(HardwareConfigError, match="no such file") as info:
        load_accelerator(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(HardwareConfigError, match="no such file"):
        load_accelerator("./nonexistent/tpu_v4")
    # a user's file named like a preset, in another directory or in the working directory, is that file
    mine = write(tmp_path, {**GOOD, "name": "mine"}, name="tpu_v4")
    assert load_accelerator(mine).name == "mine" and load_accelerator(str(mine)).array_rows == 16
    monkeypatch.chdir(tmp_path)
    assert load_accelerator("tpu_v4").name == "mine"
    # a bare name with no such file is the preset (tpu_v4: 128 x 128 MXUs, 4 per core)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    preset = load_accelerator("tpu_v4")
    assert (preset.array_rows, preset.array_cols, preset.num_arrays) == (128, 128, 4)


def test_a_directory_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch, capsys):
    """A results folder 'uboost/' in the working directory broke the default --hw, and even
    `ubnas presets`, with 'uboost: cannot read (Is a directory)'."""
    from ubnas.cli import main
    (tmp_path / "uboost").mkdir()
    (tmp_path / "tpu_v4").mkdir()
    monkeypatch.chdir(tmp_path)
    acc = load_accelerator("tpu_v4")
    assert (acc.array_rows, acc.num_arrays) == (128, 4)
    assert main(["presets"]) == 0
    assert "uboost " in capsys.readouterr().out
    with pytest.raises(HardwareConfigError, match="Is a directory"):   # a directory asked for by its path
        load_accelerator(tmp_path / "uboost")
    with pytest.raises(HardwareConfigError, match="^<empty>: no such preset or file"):
        load_accelerator("")


def test_calibrated_mode_resolves_like_load_accelerator(tmp_path, monkeypatch):
    from hwmodels.accelerator import calibrated_mode
    # a calibrated file without a suffix used to read as uncalibrated (None)
    fitted = write(tmp_path, {**GOOD, "fit_report": {"mode": "uboost"}}, name="tpu_v4")
    assert calibrated_mode(fitted) == "uboost"
    monkeypatch.chdir(tmp_path)
    assert calibrated_mode("tpu_v4") == "uboost"          # the file, as load_accelerator takes it
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    assert calibrated_mode("tpu_v4") is None              # the preset: never calibrated
    with pytest.raises(HardwareConfigError, match="no such file"):
        calibrated_mode(tmp_path / "nonexistent" / "tpu_v4")


@pytest.mark.parametrize("text, shown", [("calibration: []\n", "[]"), ("calibration: 0\n", "0"),
                                         ("calibration: ''\n", "''"), ("calibration: [1]\n", "[1]")])
def test_calibration_that_is_not_a_mapping_names_file_and_key(tmp_path, text, shown):
    # '[]', 0 and '' are falsy and used to load as no calibration at all
    path = write(tmp_path, yaml.safe_dump(GOOD) + text)
    with pytest.raises(HardwareConfigError) as info:
        load_accelerator(path)
    assert str(info.value) == f"{path}: key 'calibration' expected a mapping, got {shown}"


def test_an_empty_calibration_key_is_no_calibration(tmp_path):
    acc = load_accelerator(write(tmp_path, yaml.safe_dump(GOOD) + "calibration:\n"))
    assert acc.calibration == Calibration()


def test_an_empty_source_key_is_no_source(tmp_path):
    """`source:` left empty read as the text 'None'."""
    acc = load_accelerator(write(tmp_path, yaml.safe_dump(GOOD) + "source:\n"))
    assert acc.source == ""


def test_unknown_keys_of_mixed_types_are_named_not_a_traceback(tmp_path):
    """'1: 2' beside 'x: 3' made sorting the unknown keys raise a TypeError."""
    path = tmp_path / "acc.yaml"
    path.write_text("array_rows: 8\narray_cols: 8\nclok: 2\n1: 2\n")
    with pytest.raises(HardwareConfigError, match=f"^{path}: unknown key '1' "):
        load_accelerator(path)
    path.write_text(yaml.safe_dump(GOOD) + "calibration: {x: 3, 1: 2}\n")
    with pytest.raises(HardwareConfigError, match=f"^{path}: unknown key 'calibration.1' "):
        load_accelerator(path)


# -- hwmodels as a library: what its cost functions take -----------------------------------------
def test_the_cost_functions_take_a_preset_name_as_estimate_does():
    """network_cost(layers, 'uboost') was an AttributeError deep in exact.py; layer_cost(Gemm(...))
    one about 'lower'."""
    import torch

    from hwmodels import ConvLayer, Gemm, GemmLayer, layer_cost, network_cost
    from hwmodels.smooth import from_layers, network_cost_torch
    layers = [ConvLayer("c", 8, 8, 3, 8, 3, 3, padding=(1, 1)), GemmLayer("g", 20, 30, 40)]
    uboost = load_accelerator("uboost")
    assert network_cost(layers, "uboost").as_dict() == network_cost(layers, uboost).as_dict()
    assert layer_cost(layers[0], "tpu_v1").cycles == layer_cost(layers[0], load_accelerator("tpu_v1")).cycles
    by_name = network_cost_torch(from_layers(layers), "uboost")["total_cycles"]
    assert torch.equal(by_name, network_cost_torch(from_layers(layers), uboost)["total_cycles"])
    with pytest.raises(TypeError, match=r"got Gemm \(use GemmLayer for a raw matrix product\)"):
        layer_cost(Gemm(4, 4, 4), uboost)
    with pytest.raises(TypeError, match="expected an Accelerator, a preset name or a YAML path, got int"):
        network_cost(layers, 5)


def test_an_accelerator_of_numpy_numbers_writes_json_and_yaml(tmp_path):
    """A sweep over np.array([16, 32]) made an Accelerator whose cost report and YAML failed to
    serialise (int64); a dict calibration was an AttributeError, a non-string name saved a file
    load_accelerator refused."""
    import json

    import numpy as np

    from hwmodels import ConvLayer, network_cost
    for rows in np.array([16, 32]):
        acc = Accelerator(f"sq{rows}", rows, rows, clock_hz=np.float32(5e8), calibration={"cycle_scale": 2})
        assert type(acc.array_rows) is int and type(acc.clock_hz) is float
        assert acc.calibration == Calibration(cycle_scale=2.0)
        json.dumps(network_cost([ConvLayer("c", 8, 8, 3, 8, 3, 3)], acc).as_dict())
        save_accelerator(acc, tmp_path / f"sq{rows}.yaml")
        assert load_accelerator(tmp_path / f"sq{rows}.yaml") == acc
    with pytest.raises(HardwareConfigError, match="key 'name' expected a string, got 5"):
        Accelerator(5, 8, 8)
    with pytest.raises(HardwareConfigError, match="unknown key 'calibration.scale'"):
        Accelerator("x", 8, 8, calibration={"scale": 2})


def test_a_fractional_or_boolean_size_is_refused_not_rounded():
    """estimate(batch=2.5) costed batch 2 and (3, 8.7, 8) an 8x8 map; soft_linear took batch 0
    (0 MACs, 1528 cycles) and -4; numpy's True was a size of 1."""
    import numpy as np
    import torch

    import hwmodels
    from hwmodels.smooth import soft_linear
    conv = torch.nn.Conv2d(3, 8, 3)
    for call, message in ((lambda: hwmodels.estimate(conv, (3, 8, 8), "uboost", batch=2.5),
                           "batch must be an integer, got 2.5"),
                          (lambda: hwmodels.estimate(conv, (3, 8.7, 8), "uboost"),
                           r"input_shape \(3, 8.7, 8\): each dimension must be an integer, got 8.7"),
                          (lambda: soft_linear(512, 10, batch=0), "batch must be >= 1, got 0"),
                          (lambda: soft_linear(512, 10, batch=2.5), "batch must be an integer, got 2.5"),
                          (lambda: hwmodels.ConvLayer("c", np.bool_(True), 8, 3, 8, 1, 1),
                           "in_h must be an integer, got np.True_")):
        with pytest.raises(ValueError, match=message):
            call()


def test_the_preset_listing_gives_each_buffer_size_in_mib(capsys):
    """edge_16x16's 256 KiB buffer was listed as '0.2' MiB (one decimal)."""
    from ubnas.cli import main
    assert main(["presets"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == set(preset_names())
    for name, cells in rows.items():
        assert float(cells[6]) == load_accelerator(name).onchip_bytes / 2**20, cells
