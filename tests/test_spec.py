"""ubnas.spec / ubnas.build: export -> load -> build, validation errors, cost agreement."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from hwmodels import load_accelerator
from ubnas.build import build_network
from ubnas.ops import LinearBranch
from ubnas.spec import (SpecError, derive_spec, discrete_sample, dump_spec, load_spec, save_spec, searched_batch,
                        spec_from_dict)
from ubnas.space import load_space
from ubnas.supernet import Supernet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_supernet(seed=0, space="tiny", shape=(1, 8, 8)):
    torch.manual_seed(seed)
    net = Supernet(load_space(space), shape, 10)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    return net


def params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def derived():
    return derive_spec(random_supernet(), {"seed": 0, "lambda": 0.5, "latency_us": torch.tensor(12.5)})


@pytest.fixture
def spec_dict(derived):
    return yaml.safe_load(dump_spec(derived))


def write(tmp_path, data, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# -- round trip ---------------------------------------------------------------------------------
def test_round_trip_export_load_build(tmp_path, derived):
    path = tmp_path / "arch.yaml"
    save_spec(derived, path)
    loaded = load_spec(path)
    assert loaded.arch_dict() == derived.arch_dict()
    assert loaded.arch_hash() == derived.arch_hash()
    assert loaded.provenance["latency_us"] == 12.5 and loaded.provenance["search_space"] == "tiny"
    a, b = build_network(derived), build_network(loaded)
    assert params(a) == params(b) > 0
    x = torch.randn(3, 1, 8, 8)
    assert a(x).shape == b(x).shape == (3, 10)
    # the derived architecture keeps 2 edges per node and the chosen widths
    net = random_supernet()
    for cell, arch in zip(net.cells, loaded.cells):
        assert arch.channels == net.widths[cell.width_name].chosen()
        assert [len(node) for node in arch.nodes] == [2] * cell.nodes
        assert all(e.op != "none" for node in arch.nodes for e in node)
    assert loaded.stem_channels == net.widths["stem"].chosen()
    assert not list(tmp_path.glob(".arch.yaml.*"))   # no temp file left behind


def test_derive_keeps_strongest_edges():
    net = random_supernet()
    logits = net.op_logits["normal"]
    with torch.no_grad():
        logits.fill_(0.0)
        ops = net.space.ops
        # node 0: edges 0, 1; node 1: edges 2 (from 0), 3 (from 1), 4 (from 2)
        logits[0, ops.index("none")] = 10.0   # 'none' wins edge 0, but it never counts
        logits[1, ops.index("conv_3x3")] = 3.0
        logits[2, ops.index("sep_conv_3x3")] = 4.0
        logits[3, ops.index("none")] = 9.0
        logits[4, ops.index("skip_connect")] = 5.0
    spec = derive_spec(net, {})
    node0, node1 = spec.cells[0].nodes
    assert [e.source for e in node0] == [0, 1] and node0[1].op == "conv_3x3"
    assert [(e.source, e.op) for e in node1] == [(0, "sep_conv_3x3"), (2, "skip_connect")]


def test_build_network_of_a_path_points_to_ubnas_build(tmp_path, derived):
    path = tmp_path / "arch.yaml"
    save_spec(derived, path)
    with pytest.raises(TypeError, match=r"expected an ArchSpec, got PosixPath; for a spec file use ubnas.build"):
        build_network(path)
    import ubnas
    assert type(ubnas.build(str(path))).__name__ == "Network"


def test_lazy_build_and_light_import(tmp_path, derived):
    path = tmp_path / "arch.yaml"
    save_spec(derived, path)
    code = ("import sys, ubnas; assert 'torch' not in sys.modules, 'import ubnas pulled in torch'; "
            f"m = ubnas.build({str(path)!r}); import ubnas.build as b; m2 = ubnas.build({str(path)!r}); "
            "print(type(m).__name__, type(m2).__name__)")
    # `from ubnas import build` is the module whatever was imported before (it was a function until
    # ubnas.build had been imported somewhere)
    first = ("from ubnas import build; assert callable(build); "
             f"print(type(build.build_network(build.load_spec({str(path)!r}))).__name__)")
    out2 = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, cwd=ROOT)
    assert out2.returncode == 0 and out2.stdout.split() == ["Network"], out2.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Network", "Network"]


def test_reduce_cells_build(tmp_path):
    spec = spec_from_dict({
        "ubnas_spec": 1, "input_shape": [3, 16, 16], "num_classes": 4, "stem": {"kernel": 3, "channels": 8},
        "cells": [
            {"channels": 8, "nodes": [[{"from": 0, "op": "sep_conv_3x3"}, {"from": 1, "op": "dil_conv_5x5"}]]},
            {"reduce": True, "channels": 16, "nodes": [
                [{"from": 0, "op": "skip_connect"}, {"from": 1, "op": "max_pool_3x3"}],
                [{"from": 2, "op": "avg_pool_3x3"}, {"from": 1, "op": "none"}]]},
            {"channels": 8, "pool_after": True, "nodes": [
                [{"from": 0, "op": "conv_5x5"}, {"from": 1, "op": "skip_connect"}]]}],
        "classifier": {"in_features": 8}}, "inline")
    net = build_network(spec)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 4)


# -- malformed specs -----------------------------------------------------------------------------
def _set(data, path, value):
    keys = path.split("/")
    target = data
    for key in keys[:-1]:
        target = target[int(key) if isinstance(target, list) else key]
    last = keys[-1]
    if value is _DELETE:
        del target[int(last) if isinstance(target, list) else last]
    else:
        target[int(last) if isinstance(target, list) else last] = value


_DELETE = object()

BAD = [
    ("ubnas_spec", 2, "key 'ubnas_spec' is 2; this ubnas reads version 1, upgrade ubnas"),
    ("ubnas_spec", _DELETE, "missing key 'ubnas_spec'"),
    ("ubnas_spec", "one", "key 'ubnas_spec' expected 1"),
    ("ubnas_spec", 1.0, "key 'ubnas_spec' expected 1"),
    ("cells/1/nodes/0/1/op", "conv_7x7", "key 'cells[1].nodes[0][1].op' unknown op 'conv_7x7'"),
    ("cells/0/nodes/1/0/from", 3, "key 'cells[0].nodes[1][0].from' expected a state in 0..2"),
    ("cells/0/nodes/0/0/from", -1, "key 'cells[0].nodes[0][0].from' expected a state in 0..1"),
    ("cells/1/channels", 0, "key 'cells[1].channels' expected a positive integer"),
    ("stem/channels", -8, "key 'stem.channels' expected a positive integer"),
    ("classifier/in_features", 100, "key 'classifier.in_features' expected 208"),
    ("input_shape", [1, 8], "key 'input_shape' expected [C, H, W]"),
    ("num_classes", "ten", "key 'num_classes' expected a positive integer"),
    ("cells/0/pool_after", "yes", "key 'cells[0].pool_after' expected true or false"),
    ("cells/0/nodes/0/0/kernel", 3, "unknown key 'cells[0].nodes[0][0].kernel'"),
    ("cells/0/nodes", [], "key 'cells[0].nodes' expected a non-empty list"),
    ("cells", [], "key 'cells' expected a non-empty list"),
    ("stem/kernel", 4, "key 'stem.kernel' expected an odd kernel size"),
    ("input_shape", [1, 2, 2], "key 'cells[1].pool_after' needs a map of at least 2x2"),
    # 9 -> 4 after cell 0's pool; cell 1's s0 (9x9) through its stride-2 1x1 conv is 5x5, not 4x4
    ("input_shape", [1, 9, 9], "inputs of 9x9 and 4x4 do not differ by the stride 2"),
    # past MAX_SIZE: torch's shape arithmetic overflowed into a traceback at build time
    ("cells/1/channels", 2**64, "key 'cells[1].channels' expected at most 1048576"),
    ("num_classes", 2**70, "key 'num_classes' expected at most 1048576"),
    ("stem/kernel", 2**64 + 1, "key 'stem.kernel' expected at most 1048576"),
    ("input_shape", [1, 2**64, 8], "key 'input_shape[1]' expected at most 1048576"),
    ("provenance", [], "key 'provenance' expected a mapping"),
    ("provenance", 0, "key 'provenance' expected a mapping"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[b[0] + "=" + repr(b[1])[:12] for b in BAD])
def test_malformed_spec_names_file_and_key(tmp_path, spec_dict, path, value, message):
    if path == "classifier/in_features":
        message = message.replace("208", str(spec_dict["cells"][-1]["channels"] * 2))
    _set(spec_dict, path, value)
    file = write(tmp_path, spec_dict)
    with pytest.raises(SpecError) as info:
        load_spec(file)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{file}: ") and message in text, text


def test_malformed_yaml_names_line(tmp_path, derived):
    text = dump_spec(derived).replace("num_classes: 10", "num_classes: [10")
    file = write(tmp_path, text)
    with pytest.raises(SpecError, match=r"line \d+ column \d+: invalid YAML") as info:
        load_spec(file)
    assert str(file) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, line, column", [("a:\t1\n", 1, 3), ("a: 1\nb: 2\t# note\n", 2, 5),
                                                ("a:\n\tb: 1\n", 2, 1)])
def test_a_tab_in_yaml_says_to_replace_it(text, line, column):
    """PyYAML refuses tabs that YAML 1.2 allows (after a colon, before a comment): its message
    ('found character ... that cannot start any token') did not say what to do."""
    from hwmodels.yamlio import read_yaml
    with pytest.raises(ValueError, match=rf"f\.yaml: line {line} column {column}: invalid YAML \(.*; YAML is "
                                         rf"indented and spaced with spaces: replace the tab\)"):
        read_yaml("f.yaml", text=text)


def test_yaml_merge_keys_read_as_yaml_means_them(tmp_path):
    """``<<: *anchor`` merges (keys given beside it win); a key typed twice by hand is still refused."""
    from hwmodels.yamlio import read_yaml
    for text in ("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n",
                 "a: &a {x: 1}\nb: &b {y: 2}\nc: {<<: [*a, *b], z: 0}\n"):
        assert read_yaml("f.yaml", text=text) == yaml.safe_load(text)
    with pytest.raises(ValueError, match=r"line 4 column 3: invalid YAML \(key 'z' appears twice"):
        read_yaml("f.yaml", text="c:\n  <<: {x: 1}\n  z: 1\n  z: 2\n")


def test_a_yaml_file_with_a_bad_byte_or_a_nul_names_its_line_and_column(tmp_path):
    """A byte that is not UTF-8 and a NUL character (which YAML forbids) were errors without a line:
    in a long spec the user had to hunt for them.  Positions counted by hand, from 1."""
    from hwmodels.yamlio import read_yaml
    path = tmp_path / "f.yaml"
    path.write_bytes("name: é\narray_rows: 8\nfoo: ".encode() + b"\xff\xfe\n")
    with pytest.raises(ValueError, match=r"f\.yaml: line 3 column 6: not UTF-8 text \(byte 0xff"):
        read_yaml(path)
    from ubnas.space import load_space
    for load in (load_spec, load_space):   # they read the text themselves: the same position
        with pytest.raises(ValueError, match=r"f\.yaml: line 3 column 6: not UTF-8 text"):
            load(str(path))
    path.write_bytes(b"name: x\narray_rows: 8\nfoo: a\x00b\n")
    with pytest.raises(ValueError, match=r"f\.yaml: line 3 column 7: invalid YAML \(special characters"):
        read_yaml(path)
    path.write_bytes(b"\xef\xbb\xbfname: x\n")   # a byte-order mark is not part of the first key
    assert read_yaml(path) == {"name": "x"}


def test_a_device_given_as_a_yaml_file_is_refused_and_a_named_pipe_is_read(tmp_path):
    """/dev/zero as --hw, --config, --space or SPEC was read until memory ran out; a named pipe
    (``--config <(...)``) must still be read."""
    import os
    import resource
    import subprocess
    import sys
    import threading
    from hwmodels.yamlio import read_yaml
    probe = ("from hwmodels.yamlio import read_yaml; from ubnas.space import load_space; from ubnas.spec import "
             "load_spec\nfor load in (read_yaml, load_spec, load_space):\n    try:\n        load('/dev/zero')\n"
             "    except ValueError as exc:\n        print(exc)\n")
    # in a child with 4 GiB of address space: a regression runs out of memory there, not here
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)))
    assert done.stdout.splitlines() == ["/dev/zero: is a device, not a file"] * 3, done.stderr[-2000:]
    pipe = tmp_path / "pipe.yaml"
    os.mkfifo(pipe)
    writer = threading.Thread(target=pipe.write_text, args=("array_rows: 8\n",))
    writer.start()
    assert read_yaml(pipe) == {"array_rows": 8}
    writer.join()


def test_a_spec_with_a_mapping_as_a_key_is_a_one_line_error(tmp_path, derived):
    file = write(tmp_path, dump_spec(derived) + "? {a: 1}\n: 2\n")
    with pytest.raises(SpecError, match=r"line \d+ column \d+: invalid YAML \(found unhashable key\)") as info:
        load_spec(file)
    assert str(file) in str(info.value)


def test_an_alias_bomb_gives_a_short_error(tmp_path, derived):
    """A few hundred bytes of nested aliases stand for 10**6 items: the error shows a bounded excerpt."""
    bomb = "&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for i in range(1, 7):   # each level: the one below, defined in place, and 9 more aliases of it
        bomb = f"&a{i} [{bomb}{f', *a{i - 1}' * 9}]"
    text = dump_spec(derived).replace("num_classes: 10", f"num_classes: {bomb}")
    assert len(text) < len(dump_spec(derived)) + 500
    with pytest.raises(SpecError, match=r"invalid YAML \(more than 1,000,000 values once its aliases") as info:
        load_spec(write(tmp_path, text))
    assert len(str(info.value)) < len(str(tmp_path)) + 200, len(str(info.value))
    small = "&a0 [1, 1]"   # a few aliases that expand to little are fine, and reach the spec's own check
    small = f"&a1 [{small}, *a0]"
    with pytest.raises(SpecError, match="key 'num_classes' expected a positive integer"):
        load_spec(write(tmp_path, dump_spec(derived).replace("num_classes: 10", f"num_classes: {small}")))


def test_an_alias_bomb_nine_deep_is_refused_in_a_moment(tmp_path):
    """9 levels of 9 aliases stand for 9**9 (387 million) values: refused before anything walks them."""
    import time
    from hwmodels.yamlio import read_yaml
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"f.yaml: invalid YAML \(more than 1,000,000 values"):
        read_yaml("f.yaml", text="\n".join(lines))
    assert time.perf_counter() - started < 20


@pytest.mark.parametrize("text, problem", [
    ("provenance: &p {self: *p}\n", "a structure that contains itself"),
    ("provenance: &p [1, *p]\n", "a structure that contains itself"),
    ("provenance: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply to read"),
])
def test_a_spec_that_contains_itself_or_nests_too_deep_is_a_one_line_error(tmp_path, derived, text, problem):
    """Both used to pass the loader: the first failed ubnas train after its epochs (RecursionError
    writing metrics.json), the last every loader with a traceback."""
    body = dump_spec(derived)
    body = body[:body.index("provenance:")] + text
    with pytest.raises(SpecError, match=problem) as info:
        load_spec(write(tmp_path, body))
    assert "\n" not in str(info.value)


def test_integers_read_as_yaml_1_2_reads_them(tmp_path, spec_dict):
    """YAML 1.1 (PyYAML's default) reads 016 as octal 14 and 1:28 as base-60 88: a width typed with
    a leading zero is the width it reads as, and 1:28 is no integer."""
    from hwmodels.yamlio import read_yaml
    assert read_yaml("f.yaml", text="a: 016\nb: 0x10\nc: 0o20\nd: -7\ne: 1:28\n") == \
        {"a": 16, "b": 16, "c": 16, "d": -7, "e": "1:28"}
    spec_dict["stem"]["channels"] = "__STEM__"
    text = yaml.safe_dump(spec_dict, sort_keys=False)
    spec = load_spec(write(tmp_path, text.replace("__STEM__", "016")))
    assert spec.stem_channels == 16
    with pytest.raises(SpecError, match="expected a positive integer"):
        load_spec(write(tmp_path, text.replace("__STEM__", "1:28")))


def test_floats_read_as_yaml_1_2_reads_them(tmp_path):
    """YAML 1.1 read 'lambda_latency: 1:30.0' as base-60 90.0 and '1_000.5' as 1000.5, while '3e-3'
    (no dot) stayed a string; and strings that now read as floats are written quoted."""
    from hwmodels.yamlio import dump_yaml, read_yaml
    got = read_yaml("f.yaml", text="a: 1:30.0\nb: 1_000.5\nc: 3e-3\nd: -2.\ne: .5E1\nf: .inf\ng: 12\nh: 1e5\n")
    assert got == {"a": "1:30.0", "b": "1_000.5", "c": 0.003, "d": -2.0, "e": 5.0, "f": float("inf"), "g": 12,
                   "h": 100000.0}
    assert isinstance(got["g"], int) and isinstance(got["h"], float)
    values = {"s": "1e5", "t": "-3E-2", "u": "1:30.0", "x": 1e-5, "y": 2.0, "z": -float("inf")}
    assert read_yaml("f.yaml", text=dump_yaml(values)) == values
    from ubnas.search_config import config_from_yaml
    for text in ("lambda_latency: 1:30.0\n", "lambda_latency: 1_000.5\n"):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ValueError, match="key 'lambda_latency' expected float, got '1"):
            config_from_yaml(str(tmp_path / "c.yaml"))
    (tmp_path / "c.yaml").write_text("lambda_latency: 3e-3\narch_lr: 1E-4\n")
    assert config_from_yaml(str(tmp_path / "c.yaml")) == {"lambda_latency": 0.003, "arch_lr": 1e-4}
    # a quoted number in YAML 1.2's syntax is still that number (as before), a base-60 one is not
    (tmp_path / "c.yaml").write_text("lambda_latency: '3e-3'\narch_lr: \"1\"\nweight_lr: ' .5 '\n")
    assert config_from_yaml(str(tmp_path / "c.yaml")) == {"lambda_latency": 0.003, "arch_lr": 1.0, "weight_lr": 0.5}
    for text in ("lambda_latency: '1:30.0'\n", "lambda_latency: '1_000.5'\n"):
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ValueError, match="key 'lambda_latency' expected float, got '1"):
            config_from_yaml(str(tmp_path / "c.yaml"))
    # an integer past float's range, quoted or bare, is refused by the range check, not an OverflowError
    from ubnas.search_config import SearchConfig
    for quote in ("", "'"):
        (tmp_path / "c.yaml").write_text(f"lambda_latency: {quote}{'9' * 400}{quote}\n")
        with pytest.raises(ValueError, match=r"lambda_latency.*float32's range"):
            SearchConfig(**config_from_yaml(str(tmp_path / "c.yaml"))).validate()


def test_an_old_bare_hash_that_now_reads_as_a_float_is_no_edit(tmp_path, derived):
    """Before YAML 1.2 floats, an arch_hash like 65580800e1570631 was written bare; it now reads as
    a float (inf), and every command called that spec edited since its export."""
    import dataclasses
    from ubnas.spec import edited_since_export
    spec = dataclasses.replace(derived, provenance={**derived.provenance, "arch_hash": derived.arch_hash()})
    path = tmp_path / "arch.yaml"
    path.write_text(dump_spec(spec).replace(f"arch_hash: {derived.arch_hash()}", "arch_hash: 65580800e1570631"))
    loaded = load_spec(path)
    assert isinstance(loaded.provenance["arch_hash"], float) and not edited_since_export(loaded)
    path.write_text(dump_spec(spec).replace(f"arch_hash: {derived.arch_hash()}", "arch_hash: 0123abcd0123abcd"))
    assert edited_since_export(load_spec(path))   # a string that differs: edited


def test_strings_that_read_as_integers_are_written_quoted(tmp_path, derived):
    """PyYAML's dumper quotes YAML 1.1's integers, not 1.2's: a provenance string '0o17' (or an
    --out of that name in config.yaml) was written bare and read back as the integer 15."""
    import dataclasses
    from hwmodels.yamlio import dump_yaml, read_yaml
    strings = {"a": "0o17", "b": "0x1F", "c": "010", "d": "-7", "e": "1:28", "f": "1_000", "g": "+5"}
    assert read_yaml("f.yaml", text=dump_yaml(strings)) == strings
    spec = dataclasses.replace(derived, provenance={**derived.provenance, **strings})
    path = tmp_path / "spec.yaml"
    path.write_text(dump_spec(spec))
    assert {k: load_spec(path).provenance[k] for k in strings} == strings


def test_an_integer_too_long_to_convert_names_its_line(tmp_path, spec_dict):
    """5000 digits raised Python's int-conversion limit: an error naming neither file nor line."""
    text = yaml.safe_dump(spec_dict, sort_keys=False).replace("ubnas_spec: 1", "ubnas_spec: " + "9" * 5000)
    with pytest.raises(SpecError, match=r"spec.yaml: line 1 column 13: invalid YAML \(an integer of 5000 digits"):
        load_spec(write(tmp_path, text))


def test_an_unknown_op_name_is_shown_short(tmp_path, spec_dict):
    spec_dict["cells"][0]["nodes"][0][0]["op"] = "x" * 5000
    with pytest.raises(SpecError) as error:
        load_spec(write(tmp_path, spec_dict))
    assert "unknown op 'xxx" in str(error.value) and len(str(error.value)) < 500


def test_an_empty_provenance_reads_as_none_given(tmp_path, spec_dict):
    spec_dict["provenance"] = None   # 'provenance:' with nothing under it
    assert load_spec(write(tmp_path, spec_dict)).provenance == {}


def test_not_a_spec(tmp_path):
    with pytest.raises(SpecError, match="no such architecture spec file"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="expected a mapping at the top level"):
        load_spec(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(SpecError, match="cannot read the architecture spec"):   # longer than a file name may be
        load_spec(tmp_path / ("x" * 300))


def test_estimate_cli_bad_spec_one_line(tmp_path, spec_dict):
    spec_dict["cells"][0]["nodes"][0][0]["op"] = "warp_drive"
    file = write(tmp_path, spec_dict)
    env = {k: v for k, v in os.environ.items() if k != "UBNAS_DEBUG"}
    out = subprocess.run([sys.executable, "-m", "ubnas", "estimate", str(file), "--hw", "uboost"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert str(file) in lines[0] and "cells[0].nodes[0][0].op" in lines[0]


def test_estimate_cli_good_spec(tmp_path, derived):
    file = tmp_path / "arch.yaml"
    save_spec(derived, file)
    out = subprocess.run([sys.executable, "-m", "ubnas", "estimate", str(file), "--hw", "uboost", "--json"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    # MACs counted independently, by forward hooks on the rebuilt network at the spec's batch
    net = build_network(load_spec(file)).eval()
    counted = []

    def count(module, inputs, output):
        if isinstance(module, LinearBranch):   # convs through F.conv2d on its own weights
            k = module.op.kernel ** 2
            c_in = inputs[0].shape[1]
            per_pixel = c_in * k + c_in * output.shape[1] if module.op.separable else c_in * output.shape[1] * k
            counted.append(output[:, 0].numel() * per_pixel)
        elif isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counted.append(output.numel() * module.in_channels // module.groups * k)
        elif isinstance(module, torch.nn.Linear):
            counted.append(output.numel() * module.in_features)

    handles = [m.register_forward_hook(count) for m in net.modules()]
    with torch.no_grad():
        net(torch.zeros(searched_batch(load_spec(file)), *derived.input_shape))
    for h in handles:
        h.remove()
    assert result["total"]["macs"] == sum(counted) > 0
    assert result["accelerator"]["name"] == "uboost" and result["layers"][-1]["name"] == "classifier"
    assert result["total"]["cycles"] == pytest.approx(sum(layer["cycles"] for layer in result["layers"]))


# -- the registry's hardware layers agree with the modules -----------------------------------------
def _layer_rows(layers, weights=None):
    """The layers as sorted rows of their fields, each with its weight (weight-0 layers left out)."""
    from hwmodels.smooth import SoftLayers
    names = list(SoftLayers.__dataclass_fields__)
    rows = []
    for i in range(len(layers.m)):
        weight = 1.0 if weights is None else float(weights[i])
        if weight != 0:
            rows.append(tuple(round(float(getattr(layers, f)[i]), 6) for f in names) + (weight,))
    return sorted(rows)


@pytest.mark.parametrize("space,shape,preset,seeds,batch,mode", [
    ("tiny", (1, 8, 8), "uboost", 3, 1, "systolic"),
    ("tiny", (3, 16, 16), "edge_16x16", 2, 3, "systolic"),
    ("uboost_cifar", (3, 16, 16), "tpu_v3", 1, 2, "systolic"),
    ("darts_cifar", (3, 16, 16), "tpu_v3", 1, 1, "systolic"),
    # reduce cells on odd maps (30 -> 15 -> 8): sizes round up
    ("darts_cifar", (3, 30, 30), "uboost", 1, 2, "systolic"),
    # U-Boost's model knows one array: utilization over R x C, not the 4 arrays of tpu_v4
    ("tiny", (3, 16, 16), "tpu_v4", 1, 2, "uboost"),
    # a calibrated accelerator (what `ubnas calibrate` writes): every calibration term in the cost
    ("tiny", (3, 16, 16), "edge_16x16+calibrated", 2, 3, "systolic"),
    ("uboost_cifar", (3, 16, 16), "tpu_v3+calibrated", 1, 2, "systolic")])
def test_supernet_cost_matches_built_network(space, shape, preset, seeds, batch, mode):
    """Layer by layer (shapes, batch) and in total, the search cost of the exported sample is the
    cost hwmodels traces from the built module."""
    from hwmodels import Calibration, estimate
    from hwmodels.estimate import trace_layers
    from hwmodels.smooth import from_layers
    from ubnas.cost import supernet_cost, supernet_layers
    name, _, calibrated = preset.partition("+")
    acc = load_accelerator(name)
    if calibrated:
        acc = acc.replace(calibration=Calibration(cycle_scale=1.3, fold_overhead_cycles=17.0,
                                                  layer_overhead_cycles=250.0, bandwidth_efficiency=0.6))
    for seed in range(seeds):
        net = random_supernet(seed, space, shape)
        with torch.no_grad():
            for w in net.widths.values():
                w.logits.normal_()
        spec = derive_spec(net, {})
        arch = discrete_sample(net, spec)
        layers, weights = supernet_layers(net, arch, batch)
        module = build_network(spec)
        assert _layer_rows(layers, weights) == _layer_rows(from_layers(trace_layers(module, spec.input_shape, batch)))
        smooth = supernet_cost(net, arch, acc, mode, batch=batch)
        exact = estimate(module, spec.input_shape, acc, batch=batch, mode=mode)
        assert float(smooth["macs"]) == pytest.approx(exact.macs, rel=1e-6)
        assert float(smooth["cycles"]) == pytest.approx(exact.cycles, rel=1e-6)
        assert float(smooth["utilization"]) == pytest.approx(exact.utilization, rel=1e-6)


def _live(net, source):
    """Indices of the live channels of a cell input in the supernet: the first w channels of each
    of its blocks (block b spans channels b * top .. (b + 1) * top - 1)."""
    width = net.widths[source.width]
    return torch.cat([torch.arange(b * width.top, b * width.top + width.forced) for b in range(source.blocks)])


def _copy_supernet_weights(net, spec, module):
    """Load the supernet's weights of the exported sample into the built network, slicing every
    tensor to the exported widths; written from the two modules' definitions, not from build's code."""
    def bn(dst, src, rows):
        dst.running_mean.copy_(src.running_mean[rows])
        dst.running_var.copy_(src.running_var[rows])
        if src.affine:
            dst.weight.copy_(src.weight[rows])
            dst.bias.copy_(src.bias[rows])
        else:   # the supernet's affine-free BN is an affine BN with weight 1 and bias 0
            dst.weight.fill_(1.0)
            dst.bias.fill_(0.0)

    w_stem = net.widths["stem"].forced
    module.stem.weight.copy_(net.stem.weight[:w_stem])
    bn(module.stem_bn, net.stem_bn, slice(0, w_stem))
    for cell, arch, built in zip(net.cells, spec.cells, module.cells):
        c = net.widths[cell.width_name].forced
        for pre, mine, source in ((cell.pre0, built.pre0, cell.sources[0]), (cell.pre1, built.pre1, cell.sources[1])):
            mine.conv.weight.copy_(pre.weight[:c][:, _live(net, source)])
            bn(mine.bn, pre.bn, slice(0, c))
        built_edges = iter(built.edges)     # the kept edges, node by node, in the spec's order
        for i, node in enumerate(arch.nodes):
            for kept in node:
                op = next(built_edges)
                edge = cell.edges[i * (i + 3) // 2 + kept.source]    # node i's edges read states 0 .. i + 1
                if kept.op not in edge.branches:    # pool, skip, zero: no weights
                    continue
                branch = edge.branches[kept.op]
                if branch.op.separable:
                    op.branch.dw_weight.copy_(branch.dw_weight[:c])
                    op.branch.pw_weight.copy_(branch.pw_weight[:c, :c])
                else:
                    op.branch.weight.copy_(branch.weight[:c, :c])
                bn(op.bn, edge.bn, slice(0, c))
    module.classifier.weight.copy_(net.classifier.weight[:, _live(net, net.last)])
    module.classifier.bias.copy_(net.classifier.bias)


@pytest.mark.parametrize("space,shape,seeds", [("tiny", (1, 8, 8), 3), ("uboost_cifar", (3, 8, 8), 1),
                                               ("darts_cifar", (3, 16, 16), 1)])
@pytest.mark.parametrize("train", [False, True])
def test_built_network_computes_what_the_supernet_computes_for_the_exported_sample(space, shape, seeds, train):
    """With the supernet's weights sliced to the exported widths, the built network's outputs are
    the supernet's under discrete_sample (float64; BN statistics random, so each BN's wiring counts)."""
    for seed in range(seeds):
        net = random_supernet(seed, space, shape).double()
        with torch.no_grad():
            for w in net.widths.values():
                w.logits.normal_()
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
                    if m.affine:
                        m.weight.normal_()
                        m.bias.normal_()
        spec = derive_spec(net, {})
        arch = discrete_sample(net, spec)
        assert any(net.widths[n].forced < net.widths[n].top for n in net.widths), "no width below its top"
        module = build_network(spec).double()
        with torch.no_grad():
            _copy_supernet_weights(net, spec, module)
        net.train(train)
        module.train(train)
        x = torch.randn(3, *shape, dtype=torch.float64)
        with torch.no_grad():
            want = net(x, arch)
            got = module(x)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_provenance_added_after_derive_reaches_the_file(tmp_path):
    provenance = {"seed": 3}
    spec = derive_spec(random_supernet(), provenance)
    provenance["exact_cost"] = {"latency_us": torch.tensor(7.25, dtype=torch.float64)}   # known only later
    save_spec(spec, tmp_path / "arch.yaml")
    loaded = load_spec(tmp_path / "arch.yaml").provenance
    assert loaded["exact_cost"] == {"latency_us": 7.25} and loaded["seed"] == 3
    assert loaded["search_space"] == "tiny"


def test_an_input_the_space_cannot_join_is_a_one_line_error():
    # uboost_cifar max-pools after every cell: 15 -> 7 on one input, stride 2 from 15 -> 8 on the other
    from ubnas.supernet import Supernet
    with pytest.raises(ValueError, match=r"input 30x30 does not fit space uboost_cifar \(.*uboost_cifar\.yaml\): "
                                         r"cell 2 gets maps 15x15 and 7x7"):
        Supernet(load_space("uboost_cifar"), (3, 30, 30), 10)


def test_a_last_cell_that_pools_its_map_away_is_refused_before_the_run_starts(tmp_path, capsys):
    from ubnas.cli import main
    good = yaml.safe_load(open(load_space.__globals__["SPACE_DIR"] / "tiny.yaml"))
    space = dict(good, cells=[{"pool_after": True}] * 4)        # digits 8 -> 4 -> 2 -> 1 -> 0
    path = tmp_path / "four_pools.yaml"
    path.write_text(yaml.safe_dump(space))
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_text("an earlier run's")
    assert main(["search", "--space", str(path), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cell 3 shrinks its 1x1 maps to nothing" in err and "Traceback" not in err
    # the file is named: this one calls itself 'tiny', like the shipped space that does fit
    assert f"does not fit space tiny ({path}): cell 3" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]   # nothing deleted
