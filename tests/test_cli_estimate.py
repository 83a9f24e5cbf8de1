"""``ubnas estimate`` end to end, through a subprocess like a user would run it."""
import json
import subprocess
import sys

import pytest

from hwmodels import ConvLayer, LinearLayer, layer_cost, load_accelerator

HEADER = "name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w,stride,padding,dilation,groups,batch"
GOOD_ROWS = ["conv1,conv,32,32,3,64,3,3,1,1,1,1,",
             "dw,conv,32,32,64,64,3,3,2,1,,64,",
             "fc,linear,,,64,10,,,,,,,4"]


def ubnas(*args):
    return subprocess.run([sys.executable, "-m", "ubnas", "estimate", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def write_csv(tmp_path, rows, header=HEADER, name="layers.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_model_table():
    # ResNet-18 on 32x32 inputs, MACs by hand: stem 3x3x3->64 on 32x32 = 1,769,472; layer1 4 convs
    # 3x3x64->64 on 32x32 = 4 x 37,748,736; layers 2-4 each: a stride-2 3x3 conv (18,874,368), three
    # 3x3 convs (3 x 37,748,736) and a 1x1 shortcut (2,097,152); fc 512->10 = 5,120.  Sum: 555,422,720.
    out = ubnas("--model", "resnet18-cifar", "--hw", "uboost")
    assert out.returncode == 0, out.stderr
    assert "layer4.1.conv2" in out.stdout and "TOTAL" in out.stdout and "555,422,720 MACs" in out.stdout


def test_layers_csv_json_and_overrides(tmp_path):
    path = write_csv(tmp_path, GOOD_ROWS)
    out = ubnas("--layers", path, "--json", "--array", "32x16", "--num-arrays", "2",
                "--dataflow", "os", "--batch", "2")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) == {"accelerator", "mode", "layers", "total"} and data["mode"] == "systolic"
    acc = data["accelerator"]
    assert (acc["array_rows"], acc["array_cols"], acc["num_arrays"], acc["dataflow"]) == (32, 16, 2, "os")
    assert [l["name"] for l in data["layers"]] == ["conv1", "dw", "fc"]
    for key in ("cycles", "compute_cycles", "seconds", "macs"):
        assert data["total"][key] == pytest.approx(sum(l[key] for l in data["layers"]))
    for layer in data["layers"]:
        assert {"name", "kind", "cycles", "compute_cycles", "seconds", "macs", "utilization"} <= set(layer)
    # Independent of the CLI: the same layers costed directly (batch 2 default, 4 explicit).
    hw = load_accelerator("uboost").replace(array_rows=32, array_cols=16, num_arrays=2, dataflow="os")
    expected = [ConvLayer("conv1", 32, 32, 3, 64, 3, 3, 1, 1, batch=2),
                ConvLayer("dw", 32, 32, 64, 64, 3, 3, 2, 1, groups=64, batch=2),
                LinearLayer("fc", 64, 10, batch=4)]
    for got, layer in zip(data["layers"], expected):
        want = layer_cost(layer, hw)
        assert got["cycles"] == pytest.approx(want.cycles) and got["macs"] == want.macs
    total = data["total"]
    assert total["utilization"] == pytest.approx(total["macs"] / (total["cycles"] * 32 * 16 * 2))


def test_uboost_model_mode(tmp_path, capsys):
    path = write_csv(tmp_path, ["c,conv,16,16,128,128,3,3,1,1,1,1,1"])
    code, out, err = run_main(capsys, "--layers", path, "--json", "--model-mode", "uboost", "--hw", "uboost")
    assert code == 0, err
    assert json.loads(out)["total"]["cycles"] == 2304        # the paper's 9 x 256


def test_dataflow_with_the_uboost_model_gets_a_note(tmp_path, capsys):
    """U-Boost's equations have no dataflow: the cycles do not change with it, and the user is told;
    the systolic model's cycles do change, without a note."""
    path = write_csv(tmp_path, ["c,conv,16,16,100,70,3,3,1,1,1,1,4"])
    cycles = {}
    for mode in ("uboost", "systolic"):
        for dataflow in ("ws", "os"):
            code, out, err = run_main(capsys, "--layers", path, "--json", "--model-mode", mode, "--dataflow", dataflow)
            assert code == 0, err
            cycles[mode, dataflow] = json.loads(out)["total"]["cycles"]
            assert ("--dataflow has no effect with --model-mode uboost" in err) == (mode == "uboost")
    assert cycles["uboost", "ws"] == cycles["uboost", "os"]
    assert cycles["systolic", "ws"] != cycles["systolic", "os"]


BAD_CSV = [  # rows, header, expected line number, text the message must contain
    (["c1,conv,32,32,3,64,3,3,1,1,1,1,1", "c2,conv,32,32,3,six,3,3,1,1,1,1,1"], HEADER, 3,
     "column 'out_channels' expected an integer >= 1, got 'six'"),
    (["c1,conv,32,32,3,64,3,3,1,1,1,1,1", "c2,conv,32,32,0,64,3,3,1,1,1,1,1"], HEADER, 3,
     "column 'in_channels' expected an integer >= 1, got '0'"),
    (["c1,conv,32,32,3,64,3,3,1,1,1,1,1", "big,conv,4,4,3,64,7,7,1,0,1,1,1"], HEADER, 3, "does not fit"),
    (["g,conv,8,8,6,64,3,3,1,1,1,4,1"], HEADER, 2, "divisible by groups"),
    (["c1,pool,32,32,3,64,3,3,1,1,1,1,1"], HEADER, 2, "column 'kind' expected one of conv, linear"),
    (["c1,conv,32,32,3,64,3,3"], "name,kind,in_h,in_w,in_channels,kernel_h,kernel_w,stride", 1,
     "missing required column 'out_channels'"),
    (["c1,conv,32,32,3,64,3,3,1,1.5,1,1,1"], HEADER, 2, "column 'padding' expected an integer >= 0"),
    (["fc,linear,7,,64,10,,,,,,,"], HEADER, 2, "column 'in_h' expected empty or 1"),
    # a misspelt optional column would silently default (stride 1), so it is refused
    (["c1,conv,32,32,3,64,3,3,2"], "name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w,strides", 1,
     "unknown column 'strides' (did you mean 'stride'?"),
]


def test_bad_csv_subprocess(tmp_path):
    rows, header, line, text = BAD_CSV[0]
    path = write_csv(tmp_path, rows, header=header, name="bad_layers.csv")
    out = ubnas("--layers", path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}:{line}: {text}" in lines[0], out.stderr


def run_main(capsys, *args):
    """The CLI in-process (same code path as the subprocess, without a torch import per case)."""
    from ubnas.cli import main
    code = main(["estimate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("rows, header, line, text", BAD_CSV)
def test_bad_csv_is_one_line_with_file_and_line(tmp_path, capsys, rows, header, line, text):
    path = write_csv(tmp_path, rows, header=header, name="bad_layers.csv")
    code, out, err = run_main(capsys, "--layers", path)
    lines = err.strip().splitlines()
    assert code != 0 and out == "" and len(lines) == 1 and "Traceback" not in err
    assert f"bad_layers.csv:{line}: " in lines[0] and text in lines[0], lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--model", "resnet18-cifar", "--hw", "no_such_hw"], "no_such_hw"),
    (["--model", "resnet18-cifar", "--array", "12"], "--array"),
    (["--model", "resnet18-cifar", "--array", "0x8"], "--array"),
    (["--model", "resnet18-cifar", "--num-arrays", "two"], "--num-arrays"),
    (["--model", "resnet18-cifar", "--dataflow", "rs"], "--dataflow"),
    (["--model", "resnet18-cifar", "--model-mode", "fast"], "--model-mode"),
    (["--model", "resnet18-cifar", "--batch", "0"], "--batch"),
    (["--model", "resnet18-cifar", "--input", "3x32"], "--input"),
    (["--model", "resnet18-cifar", "--input", "1x32x32"], "does not run on input (1, 1, 32, 32)"),
    (["--model", "alexnet"], "alexnet"),
    ([], "exactly one"),
    (["--model", "resnet18-cifar", "--layers", "x.csv"], "exactly one"),
    (["--layers", "does_not_exist.csv"], "does_not_exist.csv"),
])
def test_bad_arguments_one_line(capsys, args, needle):
    code, out, err = run_main(capsys, *args)
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_bad_argument_exact_message(capsys):
    code, out, err = run_main(capsys, "--model", "resnet18-cifar", "--array", "12")
    assert code == 2 and out == ""
    assert err.splitlines() == ["ubnas: error: --array: expected 2 positive integers like 128x128, got '12'"]


def test_spec_file(tmp_path, capsys):
    """SPEC branch: a spec file is built and estimated."""
    import torch
    from ubnas import build as build_mod, spec as spec_mod, space as space_mod, supernet as supernet_mod
    from hwmodels import estimate
    torch.manual_seed(0)
    net = supernet_mod.Supernet(space_mod.load_space("tiny"), (1, 8, 8), 10)
    path = tmp_path / "arch.yaml"
    spec_mod.save_spec(spec_mod.derive_spec(net, {"seed": 0}), path)
    code, out, err = run_main(capsys, path, "--json", "--hw", "edge_16x16")
    assert code == 0, err
    data = json.loads(out)
    spec = spec_mod.load_spec(path)
    want = estimate(build_mod.build_network(spec), spec.input_shape, load_accelerator("edge_16x16"))
    assert [l["name"] for l in data["layers"]] == [c.name for c in want.layers]
    assert data["total"]["cycles"] == pytest.approx(want.cycles) and data["total"]["macs"] == want.macs
    code, out, err = run_main(capsys, path, "--input", "3x8x8")
    assert code != 0 and "disagrees" in err


def test_spec_without_hw_is_estimated_on_the_accelerator_it_was_searched_on(tmp_path, capsys):
    import torch
    from hwmodels import estimate
    from ubnas.build import build_network
    from ubnas.space import load_space
    from ubnas.spec import derive_spec, load_spec, save_spec
    from ubnas.supernet import Supernet
    torch.manual_seed(0)
    searched = load_accelerator("edge_32x32").replace(name="my_npu", array_rows=24, dataflow="os")
    net = Supernet(load_space("tiny"), (1, 8, 8), 10)
    path = tmp_path / "arch.yaml"
    save_spec(derive_spec(net, {"accelerator": "my_npu", "accelerator_config": searched.to_dict()}), path)
    code, out, err = run_main(capsys, path, "--json")
    assert code == 0 and "accelerator my_npu, the one" in err, err
    spec = load_spec(path)
    want = estimate(build_network(spec), spec.input_shape, searched)
    assert json.loads(out)["total"]["cycles"] == pytest.approx(want.cycles)
    code, out, err = run_main(capsys, path, "--json", "--hw", "uboost")   # --hw still chooses
    assert json.loads(out)["total"]["cycles"] == pytest.approx(
        estimate(build_network(spec), spec.input_shape, load_accelerator("uboost")).cycles)


def _tiny_spec(tmp_path, provenance):
    """(path, ArchSpec, the edge_16x16 accelerator) of a tiny-space spec (seed 0) saved with ``provenance``."""
    import torch
    from ubnas.space import load_space
    from ubnas.spec import derive_spec, load_spec, save_spec
    from ubnas.supernet import Supernet
    torch.manual_seed(0)
    path = tmp_path / "arch.yaml"
    save_spec(derive_spec(Supernet(load_space("tiny"), (1, 8, 8), 10), provenance), path)
    return path, load_spec(path), load_accelerator("edge_16x16")


def test_spec_is_estimated_at_the_batch_it_was_searched_at(tmp_path, capsys):
    """A spec searched with --hw-batch 4 is costed at batch 4 (as its provenance.exact_cost), with a
    note; --batch still chooses; a hand-edited hw_batch that is no positive integer is one line."""
    from hwmodels import estimate
    from ubnas.build import build_network
    path, spec, acc = _tiny_spec(tmp_path, {"hw_batch": 4})
    at = {b: estimate(build_network(spec), spec.input_shape, acc, batch=b).cycles for b in (1, 4)}
    assert at[4] > at[1]
    code, out, err = run_main(capsys, path, "--json", "--hw", "edge_16x16")
    assert code == 0 and "batch 4, the one" in err, err
    # the output says its totals are of 4 images: only stderr said so, which a script does not read
    assert json.loads(out)["total"]["cycles"] == pytest.approx(at[4]) and json.loads(out)["batch"] == 4
    code, out, err = run_main(capsys, path, "--hw", "edge_16x16")
    assert out.splitlines()[0].endswith("; batch 4")
    for option in ("--batch", "--hw-batch"):   # the second is the search's name for it
        code, out, err = run_main(capsys, path, "--json", "--hw", "edge_16x16", option, "1")
        assert code == 0 and "batch 4" not in err and json.loads(out)["total"]["cycles"] == pytest.approx(at[1])
        assert json.loads(out)["batch"] == 1
    path.write_text(path.read_text().replace("hw_batch: 4", "hw_batch: four"))
    for hw in (["--hw", "edge_16x16"], []):   # without --hw the accelerator note came first
        code, out, err = run_main(capsys, path, *hw)
        assert code == 2 and len(err.splitlines()) == 1 and "provenance.hw_batch: expected a positive integer" in err


def test_a_bad_array_on_a_searched_spec_is_the_only_line(tmp_path, capsys):
    """The note naming the spec's accelerator waits until --array, --batch and --input have passed."""
    path, spec, acc = _tiny_spec(tmp_path, {"accelerator": "edge_16x16", "cost_model": "uboost"})
    code, out, err = run_main(capsys, path, "--array", "0x64")
    assert code == 2 and err.splitlines() == ["ubnas: error: --array: expected 2 positive integers like 128x128, "
                                              "got '0x64'"], err
    for option, needle in ((["--batch", "0"], "--batch (--hw-batch)"), (["--input", "3x9x9"], "disagrees")):
        code, out, err = run_main(capsys, path, *option)
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    code, out, err = run_main(capsys, path, "--array", "64x64")
    assert code == 0 and "note: accelerator edge_16x16, the one" in err, err


def test_spec_searched_under_the_uboost_model_is_costed_in_the_systolic_model_with_a_note(tmp_path, capsys):
    """The default table is the systolic model, as the search's exact cost is, also for a spec
    searched under the uboost model; a note says so and how to get the searched model."""
    from hwmodels import estimate
    from ubnas.build import build_network
    path, spec, acc = _tiny_spec(tmp_path, {"cost_model": "uboost"})
    systolic = estimate(build_network(spec), spec.input_shape, acc)
    uboost = estimate(build_network(spec), spec.input_shape, acc, mode="uboost")
    assert uboost.cycles != pytest.approx(systolic.cycles)   # the two models tell apart here
    code, out, err = run_main(capsys, path, "--json", "--hw", "edge_16x16")
    assert code == 0 and "searched under the uboost cost model; this is the systolic model" in err, err
    assert json.loads(out)["total"]["cycles"] == pytest.approx(systolic.cycles)
    for mode, want in (("uboost", uboost), ("systolic", systolic)):   # chosen: no note
        code, out, err = run_main(capsys, path, "--json", "--hw", "edge_16x16", "--model-mode", mode)
        assert code == 0 and "cost model" not in err and json.loads(out)["total"]["cycles"] == pytest.approx(want.cycles)


USER_MODEL = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        return self.head(self.conv(x))

def build():
    return Net(24)

def needs(width):
    return Net(width)

def not_a_network():
    return 42

def broken():
    raise ValueError("bad width")

def talkative():
    print("building the network")
    return Net(24)

class Holder:
    net = Net(8)

def sequence():   # a 1-D network: 6 channels of length L
    return nn.Sequential(nn.Conv1d(6, 12, 5, stride=2, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(12, 10))

net = Net(8)
number = 3
"""


def test_a_network_of_the_users_own_by_module_or_file(tmp_path, capsys, monkeypatch):
    """--model MODULE:NAME / FILE.py:NAME: a class, a builder function or an instance, costed as the
    hand-written layers of that network; what cannot be found or built is one line."""
    from hwmodels.exact import network_cost
    (tmp_path / "my_nets.py").write_text(USER_MODEL)
    acc = load_accelerator("edge_16x16")

    def by_hand(width, batch=1, hw=16):   # conv 3x3/2 on hw x hw, then the classifier
        return network_cost([ConvLayer("conv", hw, hw, 3, width, 3, 3, 2, 1, batch=batch),
                             LinearLayer("fc", width, 10, batch=batch)], acc).cycles
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))   # the loader puts the working directory on it
    cases = [("my_nets:Net", 16), ("my_nets:build", 24), (f"{tmp_path / 'my_nets.py'}:net", 8),
             ("my_nets:Holder.net", 8), ("my_nets:talkative", 24)]
    for target, width in cases:
        code, out, err = run_main(capsys, "--model", target, "--hw", "edge_16x16", "--input", "3x16x16", "--json")
        assert code == 0, err
        assert json.loads(out)["total"]["cycles"] == pytest.approx(by_hand(width)), target
    code, out, err = run_main(capsys, "--model", "my_nets:build", "--hw", "edge_16x16", "--input", "3x16x16",
                              "--batch", "3", "--json")
    assert json.loads(out)["total"]["cycles"] == pytest.approx(by_hand(24, batch=3))
    for target, needle in [("my_nets:needs", "needs() takes required arguments"),
                           ("my_nets:not_a_network", "not_a_network() returned int"),
                           ("my_nets:number", "number is of type int"),
                           ("my_nets:missing", "my_nets has no 'missing'"),
                           ("no_such_module_here:Net", "no module named 'no_such_module_here'"),
                           ("absent.py:Net", "no such file absent.py"),
                           ("my_nets.py:", "expected a built-in name or MODULE:NAME"),
                           ("./my_nets:Net", "'./my_nets' is neither a module name")]:
        code, out, err = run_main(capsys, "--model", target)
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, (target, err)


def test_a_network_with_nothing_for_the_array_is_refused_not_costed_zero(tmp_path, capsys, monkeypatch):
    """A network of activations and pools only printed 'latency 0.000 us' and exit 0."""
    (tmp_path / "nolayer.py").write_text("import torch.nn as nn\n"
                                         "def net():\n    return nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, out, err = run_main(capsys, "--model", "nolayer.py:net")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "nolayer.py:net: no Conv1d, Conv2d or Linear call in one forward pass of 3x32x32" in err


def test_a_users_network_prints_imports_siblings_fails_and_runs_in_1d(tmp_path, capsys, monkeypatch):
    """What the user's code prints goes to stderr (--json stays JSON); a FILE.py imports modules
    beside it from any directory; an error in the user's code keeps its traceback (chained); a
    1-D network takes --input CxL."""
    from hwmodels.exact import network_cost
    from ubnas.commands.estimate import UserCodeError
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "my_blocks.py").write_text(USER_MODEL)
    (folder / "uses_sibling.py").write_text("from my_blocks import build, broken, sequence\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    target = str(folder / "uses_sibling.py")
    code, out, err = run_main(capsys, "--model", f"{target}:build", "--input", "3x16x16", "--json")
    assert code == 0 and json.loads(out)["layers"][0]["n"] == 24, err   # GEMM columns: out channels
    code, out, err = run_main(capsys, "--model", f"{folder / 'my_blocks.py'}:talkative", "--json")
    assert code == 0 and "building the network" in err and json.loads(out)["total"]["macs"] > 0
    with pytest.raises(UserCodeError, match="broken\\(\\) raised ValueError: bad width") as raised:
        run_main(capsys, "--model", f"{target}:broken")
    assert isinstance(raised.value.__cause__, ValueError)
    acc = load_accelerator("uboost")
    code, out, err = run_main(capsys, "--model", f"{target}:sequence", "--input", "6x100", "--json")
    assert code == 0, err
    by_hand = network_cost([ConvLayer("c", 1, 100, 6, 12, 1, 5, (1, 2), (0, 2)), LinearLayer("fc", 12, 10)],
                           acc).cycles   # the 1-D conv as a 1 x 100 map, kernel 1 x 5
    assert json.loads(out)["total"]["cycles"] == pytest.approx(by_hand)


@pytest.mark.parametrize("source, where", [
    ("import sys\nsys.exit(0)\n", "running"),                        # a script's exit at import
    ("import argparse\nargparse.ArgumentParser().parse_args(['--x'])\n", "running"),   # exits 2
    ("def build():\n    raise SystemExit('no GPU here')\n", "build()"),
])
def test_a_users_file_that_exits_is_a_user_code_error(tmp_path, capsys, monkeypatch, source, where):
    """sys.exit in the user's file ended ubnas with no output (status 0 for sys.exit(0))."""
    from ubnas.commands.estimate import UserCodeError
    model = tmp_path / "exits.py"
    model.write_text(source)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(UserCodeError, match=f"{where}.* called sys.exit") as raised:
        run_main(capsys, "--model", f"{model}:build")
    assert isinstance(raised.value.__cause__, SystemExit)


def test_running_out_of_memory_is_one_line(capsys, monkeypatch):

    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4000000000000 bytes.")
    monkeypatch.setattr("ubnas.commands.estimate.network_cost", exhausted)
    code, out, err = run_main(capsys, "--model", "resnet18-cifar")
    assert code == 2 and err.startswith("ubnas: error: out of memory") and len(err.splitlines()) == 1, err
    assert err.rstrip().endswith("check the network's sizes or --batch"), err


def test_spec_searched_on_an_unknown_accelerator_says_uboost_is_used(tmp_path, capsys):
    import torch
    from ubnas.space import load_space
    from ubnas.spec import derive_spec, save_spec
    from ubnas.supernet import Supernet
    torch.manual_seed(0)
    path = tmp_path / "arch.yaml"
    save_spec(derive_spec(Supernet(load_space("tiny"), (1, 8, 8), 10), {"accelerator": "lab_npu"}), path)
    code, out, err = run_main(capsys, path)
    assert code == 0 and "searched on 'lab_npu', which is neither a preset" in err and "using uboost" in err


def test_huge_sizes_and_a_forward_of_two_inputs_are_one_line(tmp_path, capsys):
    """A batch past what torch can describe, and a user network whose forward wants a second
    argument, were tracebacks."""
    for option in (["--batch", "99999999999999999999"], ["--input", "3x99999999999999999999x2"]):
        code, out, err = run_main(capsys, "--model", "resnet18-cifar", *option)
        assert code == 2 and len(err.splitlines()) == 1 and "too large to trace" in err, err
    model = tmp_path / "two.py"
    model.write_text("import torch.nn as nn\nclass Two(nn.Module):\n    def __init__(self):\n"
                     "        super().__init__()\n        self.fc = nn.Linear(4, 4)\n"
                     "    def forward(self, x, y):\n        return self.fc(x) + y\n")
    code, out, err = run_main(capsys, "--model", f"{model}:Two", "--input", "4x1x1")
    assert code == 2 and err.strip() == ("ubnas: error: Two.forward must take one input tensor to be traced "
                                         "(missing a required argument: 'y')"), err


def test_batch_given_with_a_csv_batch_column_says_which_wins(tmp_path, capsys):
    """--batch fills only the rows without a batch; rows with one kept theirs without a word, so
    --batch 8 looked ignored.  The note goes to stderr: --json's stdout stays JSON."""
    path = write_csv(tmp_path, GOOD_ROWS)   # fc has batch 4, the others none
    code, out, err = run_main(capsys, "--layers", path, "--json", "--batch", "8")
    assert code == 0, err
    macs = {row["name"]: row["macs"] for row in json.loads(out)["layers"]}
    # by hand: conv1 3x3x3 -> 64 on 32x32, dw 3x3 stride 2 on 64 channels (16x16 out), fc 64 -> 10
    assert macs == {"conv1": 8 * 32 * 32 * 64 * 27, "dw": 8 * 16 * 16 * 64 * 9, "fc": 4 * 64 * 10}
    assert f"1 of 3 layers keep the batch of {path}'s batch column (--batch 8 applies" in err, err
    code, out, err = run_main(capsys, "--layers", path, "--json", "--batch", "4")   # no row differs
    assert code == 0 and "note" not in err, err


@pytest.mark.parametrize("source", ["spec", "zoo"])
def test_a_network_at_a_batch_past_memory_is_costed_from_shapes(tmp_path, source):
    """`ubnas estimate SPEC` (and `ubnas report`) and `--model resnet18-cifar` ran the network on
    real tensors, so the batch a search costed at (--hw-batch) could need more memory than the
    machine has, where the search itself costed it from shapes.  Run with its address space capped
    at 8 GiB, far below the activations of a batch of 10**9 (the input alone is 256 GB); its MACs
    must be 10**9 times those of batch 1."""
    import resource
    import torch
    from ubnas.space import load_space
    from ubnas.spec import derive_spec, save_spec
    from ubnas.supernet import Supernet
    torch.manual_seed(0)
    path = tmp_path / "arch.yaml"
    save_spec(derive_spec(Supernet(load_space("tiny"), (1, 8, 8), 10), {"seed": 0}), path)

    def capped():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    what = [str(path)] if source == "spec" else ["--model", "resnet18-cifar"]
    runs = {batch: subprocess.run([sys.executable, "-m", "ubnas", "estimate", *what, "--json", "--hw", "uboost",
                                   "--batch", str(batch)], capture_output=True, text=True, timeout=120,
                                  preexec_fn=capped)
            for batch in (1, 10**9)}
    assert all(run.returncode == 0 for run in runs.values()), runs[10**9].stderr[-2000:]
    one, huge = (json.loads(runs[b].stdout)["total"] for b in (1, 10**9))
    assert huge["macs"] == 10**9 * one["macs"]


@pytest.mark.parametrize("hw, extra, noted", [
    ("cal", ["--array", "32x32"], "1 x 32x32 ws"),
    ("cal", ["--dataflow", "os"], "1 x 16x16 os"),
    ("cal", ["--num-arrays", "2"], "2 x 16x16 ws"),
    ("cal", ["--array", "16x16"], None),        # the array it was fitted on
    ("plain", ["--array", "32x32"], None),      # nothing fitted to move
])
def test_calibration_moved_to_another_array_is_noted(tmp_path, capsys, hw, extra, noted):
    """--array/--dataflow/--num-arrays on a calibrated YAML applied its per-fold overheads, fitted on
    another array, without a word."""
    from hwmodels.accelerator import Calibration, save_accelerator
    from ubnas.cli import main
    acc = load_accelerator("uboost").replace(array_rows=16, array_cols=16, dataflow="ws")
    if hw == "cal":
        acc = acc.replace(calibration=Calibration(fold_overhead_cycles=3.0, cycle_scale=1.1))
    path = tmp_path / f"{hw}.yaml"
    save_accelerator(acc, path)
    assert main(["estimate", "--layers", str(write_csv(tmp_path, GOOD_ROWS)), "--hw", str(path), *extra]) == 0
    err = capsys.readouterr().err
    if noted is None:
        assert "calibration was fitted" not in err, err
    else:
        assert (f"note: {path}'s calibration was fitted on 1 x 16x16 ws; it is applied to {noted} here, "
                f"where it was not fitted") in err, err


@pytest.mark.skipif(not __import__("os").path.isdir("/dev/fd"), reason="needs /dev/fd")
def test_hw_from_a_pipe_is_read_once(tmp_path, capsys):
    """`--hw <(...)` is a pipe: 776169f read it a second time for a note and got nothing
    ('expected a mapping of accelerator keys, got NoneType')."""
    import os
    from hwmodels.accelerator import PRESET_DIR
    from ubnas.cli import main
    read_end, write_end = os.pipe()
    os.write(write_end, (PRESET_DIR / "edge_32x32.yaml").read_bytes())
    os.close(write_end)
    try:
        code = main(["estimate", "--layers", str(write_csv(tmp_path, GOOD_ROWS)), "--hw", f"/dev/fd/{read_end}",
                     "--json"])
    finally:
        os.close(read_end)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["accelerator"]["array_rows"] == 32


def test_input_of_one_number_is_the_feature_count_of_a_user_network(tmp_path, capsys):
    """'--input 64' for a network of Linear layers was refused, and the 1xF it suggested fails on an
    MLP with BatchNorm1d (its running_mean is per feature, not per 1-long channel)."""
    from ubnas.cli import main
    (tmp_path / "mlp.py").write_text("import torch.nn as nn\n\ndef build():\n"
                                     "    return nn.Sequential(nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), "
                                     "nn.Linear(128, 10))\n")
    target = f"{tmp_path / 'mlp.py'}:build"
    assert main(["estimate", "--model", target, "--input", "64", "--batch", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["macs"] == 4 * (64 * 128 + 128 * 10)
    for bad in ("1x2x3x4", "0", "abc"):   # one message for each (was 'expected 1 positive integers like 3x32x32')
        assert main(["estimate", "--model", target, "--input", bad]) == 2
        assert capsys.readouterr().err.strip() == (
            "ubnas: error: --input: expected 1, 2 or 3 positive integers: CxHxW (3x32x32), CxL for a 1-D network "
            f"(6x100), or F for a network of Linear layers or tokens (64), got '{bad}'")
    # the built-in networks are 2-D: one number is no shape of theirs
    assert main(["estimate", "--model", "resnet18-cifar", "--input", "64"]) == 2
    assert "expected 3 positive integers" in capsys.readouterr().err
