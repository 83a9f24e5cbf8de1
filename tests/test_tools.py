"""Command-line behaviour of the scripts in tools/ (run as a user runs them: a subprocess)."""
import os
import subprocess
import sys

import pytest
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _tool(name, *args, env=None):
    return subprocess.run([sys.executable, str(TOOLS / name), *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_scalesim_suite_with_every_run_skipped_keeps_the_csv(tmp_path):
    """--max-lines below every run's length left nothing to simulate, and the empty result replaced
    the rows already in --out."""
    out = tmp_path / "cycles.csv"
    out.write_text("rows from an earlier suite\n")
    done = _tool("scalesim_suite.py", "--suite", "cifar", "--max-layers", "1", "--arrays", "8x8",
                 "--dataflows", "ws", "--max-lines", "1", "--jobs", "1", "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "every run is over --max-lines 1" in done.stderr and "raise --max-lines" in done.stderr
    assert out.read_text() == "rows from an earlier suite\n"


def test_search_hours_checks_device_and_seed_as_search_does():
    """--device foo and --seed -1 were tracebacks (torch's device parser, SearchConfig.validate)."""
    for flags, message in ((["--device", "foo"], "--device expected auto, cpu, cuda or cuda:N, got 'foo'"),
                           (["--seed", "-1"], "--seed must be in [0, ")):
        done = _tool("search_hours.py", "--space", "tiny", "--data", "digits", *flags)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert message in done.stderr, done.stderr
    # 'auto', which the device message suggests, was never resolved: torch.device('auto') raised
    done = _tool("search_hours.py", "--device", "auto", "--space", "tiny", "--data", "digits", "--batch-size", "16",
                 "--steps", "1", "--impls", "eager")
    assert done.returncode == 0 and "device: CPU" in done.stdout, done.stderr[-2000:]


def test_op_stage_epochs_counts_the_op_epochs_of_stage_at():
    """search_hours projected the op / channel split by calling stage_at once per epoch, which never
    ended for --epochs 1e20; the closed form must count what that loop counted."""
    from ubnas.search import SearchConfig, op_stage_epochs, stage_at
    for stage in ("staged", "joint", "op", "channel"):
        for epochs in range(1, 40):
            cfg = SearchConfig(epochs=epochs, stage=stage)
            assert op_stage_epochs(cfg) == sum(stage_at(cfg, e) == "op" for e in range(epochs)), (stage, epochs)
    assert op_stage_epochs(SearchConfig(epochs=10**20)) == 5 * 10**19


def test_tools_refuse_an_unknown_gpu_arch_and_a_batch_past_memory():
    """compile_kernels --arch 7 aborted inside LLVM, and failed every kernel under TRITON_INTERPRET=1; count_step_ops --batch 99999999 ran out of memory
    (its count is the same at any batch)."""
    compiling = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # the suite sets it
    done = _tool("compile_kernels.py", "--arch", "7", env=compiling)
    assert done.returncode == 2 and "--arch 7: not a compute capability" in done.stderr, done.stderr[-2000:]
    # under the interpreter (a shell left from the kernel tests) every kernel failed with an AttributeError
    done = _tool("compile_kernels.py", env={**compiling, "TRITON_INTERPRET": "1"})
    assert done.returncode == 2 and "unset TRITON_INTERPRET" in done.stderr, done.stderr[-2000:]
    # read as Triton reads it: "false" is off, and the tool goes on to check --arch
    done = _tool("compile_kernels.py", "--arch", "7", env={**compiling, "TRITON_INTERPRET": "false"})
    assert done.returncode == 2 and "--arch 7: not a compute capability" in done.stderr, done.stderr[-2000:]
    done = _tool("count_step_ops.py", "--batch", "99999999")
    assert done.returncode == 2 and "--batch must be in [1, 64]" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("flags, message", [
    ("--epochs 0", "--epochs must be >= 1, got 0"),
    # a misspelt space or accelerator and missing CIFAR files were found only by b's own search
    ("--space tyni", "tyni: no such search space"),
    ("--hw nosuch", "nosuch: no such preset or file"),
    ("--data cifar10", "cifar10 needs --data-dir"),
    ("--data cifar10 --data-dir .", "CIFAR-10 files missing in ."),
])
def test_compare_runs_checks_every_runs_options_before_the_first_search(tmp_path, flags, message):
    """A bad value in the second run's flags was found only after the first search had run."""
    out = tmp_path / "cmp"
    done = _tool("compare_runs.py", "--out", str(out), "a=--epochs 1 --max-steps-per-epoch 1", f"b={flags}")
    assert done.returncode == 2 and "run 'b': " in done.stderr and message in done.stderr, done.stderr[-2000:]
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--train-epochs", "1", "--data", "foo"], "--data: expected one of digits, cifar10, synthetic, got 'foo'"),
    (["--train-epochs", "1", "--data-dir", "no/such/dir"], "--data-dir no/such/dir: no such directory"),
    (["--data", "digits"], "--data and --data-dir choose what --train-epochs trains on"),
    # the search's digits are there, but CIFAR-10 for the training is not: found after the search
    (["--train-epochs", "1", "--data", "cifar10"], "run 'a': cifar10 needs --data-dir"),
    # a quoted ~ (the shell left it) is the home directory, as `ubnas train` reads it
    (["--train-epochs", "1", "--data", "cifar10", "--data-dir", "~"], "run 'a': CIFAR-10 files missing in " +
     os.path.expanduser("~")),
])
def test_compare_runs_checks_its_training_options_before_the_first_search(tmp_path, flags, message):
    """A bad --data was found by the first `ubnas train`, after that run's search."""
    out = tmp_path / "cmp"
    done = _tool("compare_runs.py", "--out", str(out), *flags, "a=--epochs 1 --max-steps-per-epoch 1")
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not out.exists()


def test_a_negative_suite_seed_is_refused_not_another_seeds_suite(tmp_path):
    """random.Random(-1) is Random(1): --seed -1 wrote seed 1's random layers under another name."""
    import random
    from hwmodels.suites import suite_layers
    assert random.Random(-1).random() == random.Random(1).random()   # why -1 must be refused
    with pytest.raises(ValueError, match="expected an integer >= 0, got -1"):
        suite_layers("cifar", -1)
    out = tmp_path / "cycles.csv"
    done = _tool("scalesim_suite.py", "--suite", "cifar", "--seed", "-1", "--out", str(out))
    assert done.returncode == 2 and "--seed must be >= 0, got -1" in done.stderr, done.stderr[-2000:]
    assert not out.exists()


def test_scalesim_suite_keeps_finished_rows_across_stops(tmp_path):
    """A second stop replaced OUT.partial.csv with only its own rows, and SIGTERM (a scheduler's time
    limit) lost every finished run.  A rerun now takes the partial file's rows (one planted with
    cycles no simulation gives, to tell it from a simulated one) and simulates only the rest."""
    import csv
    import signal
    pytest.importorskip("scalesim")
    out = tmp_path / "suite.csv"
    partial = tmp_path / "suite.partial.csv"
    flags = ["--suite", "cifar", "--arrays", "8x8", "--dataflows", "ws", "--jobs", "1", "--out", str(out)]
    assert _tool("scalesim_suite.py", *flags, "--max-layers", "1").returncode == 0
    with open(out, newline="") as handle:
        first = list(csv.DictReader(handle))
    assert len(first) == 1
    planted = dict(first[0], scalesim_compute_cycles="7", scalesim_total_cycles="7")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(planted))
        writer.writeheader()
        writer.writerow(planted)
    done = _tool("scalesim_suite.py", *flags, "--max-layers", "2")
    assert done.returncode == 0 and f"taking 1 finished runs from {partial}" in done.stderr, done.stderr[-2000:]
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["scalesim_compute_cycles"] for r in rows][0] == "7" and len(rows) == 2
    assert int(rows[1]["scalesim_compute_cycles"]) > 7 and not partial.exists()
    # a finished run these options do not ask for (another array) stays in the partial file
    other = dict(planted, array_rows="4", array_cols="4")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(planted))
        writer.writeheader()
        writer.writerow(other)
    done = _tool("scalesim_suite.py", *flags, "--max-layers", "1")
    assert done.returncode == 0 and f"kept 1 finished runs that these options do not ask for in {partial}" \
        in done.stderr, done.stderr[-2000:]
    with open(partial, newline="") as handle:
        assert list(csv.DictReader(handle)) == [other]
    # SIGTERM once the runs are under way: the planted row survives in the partial file, --out stays
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(planted))
        writer.writeheader()
        writer.writerow(planted)
    before = out.read_bytes()
    proc = subprocess.Popen([sys.executable, str(TOOLS / "scalesim_suite.py"), *flags, "--max-layers", "3"],
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    while "%|" not in seen:   # tqdm's bar: the pool is running
        char = proc.stderr.read(1)
        assert char, seen
        seen += char
    proc.send_signal(signal.SIGTERM)
    err = seen + proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err[-2000:]
    with open(partial, newline="") as handle:
        kept = list(csv.DictReader(handle))
    assert planted in kept and out.read_bytes() == before


def test_compare_runs_echoes_commands_a_user_can_paste(tmp_path):
    """The echoed command lacked the interpreter ("$ -m ubnas search ..."), so it did not run as shown."""
    import shlex
    out = tmp_path / "cmp"
    done = _tool("compare_runs.py", "--out", str(out), "a=--epochs 1 --max-steps-per-epoch 1")
    assert done.returncode == 0, done.stderr[-2000:]
    echoed = [line[2:] for line in done.stdout.splitlines() if line.startswith("$ ")]
    assert len(echoed) == 1, done.stdout
    assert shlex.split(echoed[0]) == [sys.executable, "-m", "ubnas", "search", "--epochs", "1",
                                      "--max-steps-per-epoch", "1", "--out", str(out / "a"), "--quiet"]
    assert (out / "a" / "arch.yaml").is_file() and "| a |" in done.stdout
