"""import_scalesim_csv refuses runs it could never look up: an unknown dataflow, an empty array."""
import re

import pytest

from hwmodels import references as refs
from hwmodels.accelerator import HardwareConfigError

HEADER = ("suite,name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w,stride,padding,"
          "dilation,groups,batch,array_rows,array_cols,dataflow,scalesim_compute_cycles,scalesim_total_cycles")
# 8x8 ws: 3x3 conv 3 -> 16 on a padded 32x32 map, the first row of tests/data/scalesim_reference.csv
GOOD = "cifar,stem3x3_3to16,conv,32,32,3,16,3,3,1,1,1,1,1,8,8,ws,8367,8367"
CYCLES = "expected cycle counts 0 < scalesim_compute_cycles <= scalesim_total_cycles, "


@pytest.mark.parametrize("bad, match", [
    (GOOD.replace(",ws,", ",WS,"), "column 'dataflow' expected one of ws, os, is, got 'WS'"),
    (GOOD.replace(",ws,", ",rs,"), "column 'dataflow' expected one of ws, os, is, got 'rs'"),
    (GOOD.replace(",8,8,ws,", ",0,8,ws,"), "column 'array_rows' expected an integer >= 1, got '0'"),
    (GOOD.replace(",8,8,ws,", ",8,-4,ws,"), "column 'array_cols' expected an integer >= 1, got '-4'"),
    (GOOD.replace(",8367,8367", ",0,0"), f"{CYCLES}got 0 and 0"),
    (GOOD.replace(",8367,8367", ",-500,-500"), f"{CYCLES}got -500 and -500"),
    (GOOD.replace(",8367,8367", ",8367,8000"), f"{CYCLES}got 8367 and 8000"),   # a negative stall
    (GOOD.replace(",8367,8367", ",8367," + "1" * 400), "column 'scalesim_total_cycles' expected at most 2**53 cycles, got ~2**1325"),
    (GOOD.replace(",8367,8367", ",83x7,8367"), "column 'scalesim_compute_cycles' expected an integer, got '83x7'"),
    (GOOD.replace(",8,8,ws,", ",8,8.5,ws,"), "column 'array_cols' expected an integer, got '8.5'"),
    (GOOD.replace(",8367,8367", ",9000,9000").replace("stem3x3_3to16", "again"),
     "the same layer, array and dataflow as {path}:2 with other cycles (9000/9000 vs 8367/8367)"),
])
def test_bad_run_is_refused_with_file_and_line(tmp_path, bad, match):
    path = tmp_path / "runs.csv"
    path.write_text(f"{HEADER}\n{GOOD}\n{bad}\n")   # the bad run is line 3
    cache = tmp_path / "cache.json"
    with pytest.raises(HardwareConfigError) as info:
        refs.import_scalesim_csv(path, cache)
    assert str(info.value) == f"{path}:3: {match.format(path=path)}"
    assert not cache.exists()   # nothing cached from a file with a bad row


def test_good_run_is_cached_under_the_key_calibration_looks_up(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text(f"{HEADER}\n{GOOD}\n")
    cache = tmp_path / "cache.json"
    assert refs.import_scalesim_csv(path, cache) == 1
    from hwmodels import Accelerator, ConvLayer
    layer = ConvLayer("any name", 32, 32, 3, 16, 3, 3, padding=1)
    rows = refs.scalesim_rows([layer], Accelerator("a", 8, 8, dataflow="ws"), cache, max_sim_cycles=0,
                             progress=False).rows
    assert [r.cycles for r in rows] == [8367 + 1]   # SCALE-Sim's last cycle index + 1, one GEMM


def test_a_save_keeps_the_runs_another_process_cached_meanwhile(tmp_path):
    """Two calibrations sharing a cache each load it at start and save their new runs: the last
    save used to overwrite the file with its own dict, dropping the other's runs."""
    cache = tmp_path / "cache.json"
    refs.save_cache(cache, {"a": {"compute_cycles": 1, "total_cycles": 1}})
    ours = refs.load_cache(cache)                    # loaded before the other run saved
    refs.save_cache(cache, {**refs.load_cache(cache), "b": {"compute_cycles": 2, "total_cycles": 2}})   # another run
    ours["c"] = {"compute_cycles": 3, "total_cycles": 3}
    refs.save_cache(cache, ours)
    assert set(refs.load_cache(cache)) == {"a", "b", "c"}
    assert set(ours) == {"a", "b", "c"}              # and ours learnt of b


def _save_many(cache, tag, n):
    mine = {}
    for i in range(n):
        mine[f"{tag}{i}"] = {"compute_cycles": i + 1, "total_cycles": i + 1}
        refs.save_cache(cache, dict(mine))


def test_concurrent_saves_lose_no_run(tmp_path):
    import multiprocessing
    cache = tmp_path / "cache.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_many, args=(cache, tag, 40)) for tag in "xy"]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(refs.load_cache(cache)) == 80


@pytest.mark.parametrize("entry, problem", [
    ({"total_cycles": 5}, "'compute_cycles' expected an integer in [1, 2**53], got None"),
    ([1, 2], "expected a mapping of cycle counts, got [1, 2]"),
    ({"compute_cycles": 0, "total_cycles": 0}, "'compute_cycles' expected an integer in [1, 2**53], got 0"),
    ({"compute_cycles": 9, "total_cycles": 5}, "compute_cycles 9 exceed total_cycles 5"),
    ({"compute_cycles": 5, "total_cycles": 5, "gemms": True}, "'gemms' expected an integer in [1, 2**53], got True"),
    # an OverflowError in every later fit on that cache, before
    ({"compute_cycles": 5, "total_cycles": 10**400}, "'total_cycles' expected an integer in [1, 2**53], got ~2**1328"),
])
def test_a_bad_cache_entry_is_one_line_naming_the_cache(tmp_path, entry, problem):
    """A hand-edited (or foreign) cache entry was a KeyError/TypeError traceback, or a zero that
    skewed every fit on its array."""
    import json
    path = tmp_path / "runs.csv"
    path.write_text(f"{HEADER}\n{GOOD}\n")
    cache = tmp_path / "cache.json"
    refs.import_scalesim_csv(path, cache)
    data = json.loads(cache.read_text())
    data[next(iter(data))] = entry
    cache.write_text(json.dumps(data))
    from hwmodels import Accelerator, ConvLayer
    with pytest.raises(HardwareConfigError, match=f"^{cache}: SCALE-Sim cache entry .*: {re.escape(problem)}; "
                                                  f"delete the file or pass another --cache$"):
        refs.scalesim_rows([ConvLayer("l", 32, 32, 3, 16, 3, 3, padding=1)], Accelerator("a", 8, 8), cache,
                           max_sim_cycles=0, progress=False)


@pytest.mark.parametrize("bad", [["--suite", "foo"], ["--holdout", "missing.csv"]])
def test_calibrate_imports_runs_only_once_its_other_input_is_read(tmp_path, capsys, monkeypatch, bad):
    """--import-scalesim-csv wrote the cache before a misspelt --suite or a missing CSV was found,
    though bad input is meant to leave everything as it was."""
    from ubnas.cli import main
    path = tmp_path / "runs.csv"
    path.write_text(f"{HEADER}\n{GOOD}\n")
    cache = tmp_path / "cache.json"
    monkeypatch.chdir(tmp_path)
    code = main(["calibrate", "--reference", "scalesim", "--import-scalesim-csv", str(path), "--cache", str(cache),
                 *bad, "--out", str(tmp_path / "o.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and bad[1] in err and "cached" not in err, err
    assert not cache.exists()


def test_a_capitalised_scalesim_reference_is_named_not_read_as_a_file(tmp_path, capsys, monkeypatch):
    from ubnas.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["calibrate", "--reference", "SCALESIM", "--out", str(tmp_path / "o.yaml")]) == 2
    assert capsys.readouterr().err.strip() == ("ubnas: error: --reference SCALESIM: no such file; for the "
                                               "simulator write 'scalesim' (lower case)")


def test_no_held_out_rows_says_they_were_skipped_as_too_long(tmp_path):
    """'suite imagenet (seed 0): no held-out rows' gave no reason when every layer was over
    --max-sim-cycles; the reference side already said why."""
    from hwmodels import Accelerator
    from hwmodels import calibrate as cal
    from hwmodels.references import ReferenceRow, ReferenceSet
    from hwmodels.suites import suite_layers
    from hwmodels.exact import layer_cost
    acc = Accelerator("a", 8, 8, dataflow="ws")
    rows = [ReferenceRow(layer, float(layer_cost(layer, acc).cycles), f"row {i}")
            for i, layer in enumerate(suite_layers("cifar", 0))]
    reference = ReferenceSet("scalesim", "suite cifar (seed 0)", rows)
    holdout = ReferenceSet("scalesim", "suite imagenet (seed 0)", [], skipped=["a", "b", "c"])
    with pytest.raises(HardwareConfigError, match=r"^suite imagenet \(seed 0\): no held-out rows \(3 skipped as "
                                                  r"too long to simulate\)$"):
        cal.calibrate(reference, acc, "systolic", holdout=holdout, seed=0)


def test_unwritable_cache_is_refused_before_the_first_simulation(tmp_path, monkeypatch):
    """A --cache under a regular file failed with a bare '[Errno 17] File exists' only after the
    first (possibly minutes long) SCALE-Sim run."""
    from hwmodels import Accelerator, ConvLayer
    from hwmodels import scalesim
    ran = []
    monkeypatch.setattr(scalesim, "run_scalesim", lambda layers, acc: ran.append(layers) or [])
    (tmp_path / "afile").write_text("")
    cache = tmp_path / "afile" / "cache.json"
    with pytest.raises(HardwareConfigError, match=f"^{re.escape(str(cache))}: cannot write the SCALE-Sim cache "
                                                  r"\(.*afile\); pass another --cache$"):
        refs.scalesim_rows([ConvLayer("l", 8, 8, 3, 4, 3, 3, padding=1)], Accelerator("a", 8, 8), cache,
                           progress=False)
    assert ran == []
