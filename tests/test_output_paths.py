"""Output paths and unreadable inputs are refused up front, in one line naming the option or file."""
import os
import time

import pytest
import torch

from ubnas.cli import main


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def spec_path(tmp_path):
    from ubnas.space import load_space
    from ubnas.spec import derive_spec, save_spec
    from ubnas.supernet import Supernet
    torch.manual_seed(0)
    path = tmp_path / "arch.yaml"
    save_spec(derive_spec(Supernet(load_space("tiny"), (1, 8, 8), 10), {"seed": 0}), path)
    return path


def test_export_refuses_a_folder_or_an_empty_name_before_exporting(tmp_path, spec_path, capsys, monkeypatch):
    pytest.importorskip("onnxscript")

    def no_export(*args, **kwargs):
        raise AssertionError("the path must be refused before exporting")
    monkeypatch.setattr(torch.onnx, "export", no_export)
    (tmp_path / "adir.onnx").mkdir()
    err = _error(capsys, ["export", str(spec_path), "--onnx", str(tmp_path / "adir.onnx")])
    assert "--onnx" in err and "is a directory" in err
    err = _error(capsys, ["export", str(spec_path), "--onnx", ""])
    assert "--onnx ''" in err and "expected a file name" in err
    for long in (tmp_path / ("x" * 300 + ".onnx"), tmp_path / ("y" * 300) / "m.onnx"):
        err = _error(capsys, ["export", str(spec_path), "--onnx", str(long)])
        assert err == f"ubnas: error: --onnx {long}: cannot write there (File name too long)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.onnx", "arch.yaml"]


def test_calibrate_refuses_an_unwritable_out_before_fitting(tmp_path, capsys, monkeypatch):
    from hwmodels import calibrate as cal

    def no_fit(*args, **kwargs):
        raise AssertionError("the path must be refused before fitting")
    monkeypatch.setattr(cal, "calibrate", no_fit)
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "cal.yaml"
    err = _error(capsys, ["calibrate", "--reference", "scalesim", "--suite", "cifar", "--out", str(out)])
    assert err == f"ubnas: error: --out {out}: cannot write there ({tmp_path / 'a_file'} is a file, not a directory)"


def test_a_run_directory_given_as_the_spec_names_the_spec_it_holds(tmp_path, spec_path, capsys):
    err = _error(capsys, ["train", str(tmp_path), "--out", str(tmp_path / "t"), "--quiet"])
    assert err == (f"ubnas: error: {tmp_path}: is a directory, not an architecture spec file; the search's "
                   f"spec is {spec_path}")
    assert _error(capsys, ["estimate", str(tmp_path / "t")]).endswith("no such architecture spec file")
    (tmp_path / "empty").mkdir()
    err = _error(capsys, ["estimate", str(tmp_path / "empty")])
    assert err.endswith(f"{tmp_path / 'empty'}: is a directory, not an architecture spec file")


def test_train_writes_to_runs_train_without_out(tmp_path, spec_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(spec_path), "--epochs", "1", "--quiet"]) == 0
    assert (tmp_path / "runs" / "train" / "metrics.json").is_file()


def test_a_binary_layer_csv_names_the_file(tmp_path, capsys):
    path = tmp_path / "binary.csv"
    path.write_bytes(b"name,kind\n\xff\xfe\x00garbage\n")
    err = _error(capsys, ["estimate", "--layers", str(path)])
    assert f"{path}:2: not a UTF-8 text CSV" in err   # the line of the first bad byte


def test_a_checkpoint_write_that_fails_keeps_the_last_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    """A disk that fills up mid-write: torch.save raises after writing part of the temp file."""
    from ubnas.runtime import atomic_torch_save
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1}, path)
    real_save = torch.save

    def save_then_fail(obj, target):
        real_save(obj, target)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2071616 vs 2071512")
    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(ValueError, match=r"checkpoint.pt: cannot write the checkpoint \(\[enforce fail"):
        atomic_torch_save({"epoch": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert torch.load(path, weights_only=True) == {"epoch": 1}

    def save_a_bug(obj, target):   # not a write failure: keeps its traceback (and no temp file either)
        real_save(obj, target)
        raise RuntimeError()
    monkeypatch.setattr(torch, "save", save_a_bug)
    with pytest.raises(RuntimeError):
        atomic_torch_save({"epoch": 3}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_search_and_train_refuse_an_out_that_takes_no_files_or_is_empty(tmp_path, spec_path, capsys, monkeypatch):
    import pathlib
    real_touch = pathlib.Path.touch

    def no_room(self, *args, **kwargs):   # a read-only mount (root ignores chmod, so simulate it)
        if self.name == ".ubnas_write_check.tmp":
            raise PermissionError(13, "Permission denied")
        return real_touch(self, *args, **kwargs)
    with monkeypatch.context() as mp:
        mp.setattr(pathlib.Path, "touch", no_room)
        err = _error(capsys, ["search", "--out", str(tmp_path / "s"), "--epochs", "1", "--quiet"])
        assert err == f"ubnas: error: --out {tmp_path / 's'}: cannot write in the directory (Permission denied)"
        err = _error(capsys, ["train", str(spec_path), "--out", str(tmp_path / "t"), "--epochs", "1", "--quiet"])
        assert err == f"ubnas: error: --out {tmp_path / 't'}: cannot write in the directory (Permission denied)"
    assert _error(capsys, ["search", "--out", "", "--quiet"]).endswith("--out expected a run directory, got ''")
    assert "--out" in _error(capsys, ["train", str(spec_path), "--out", " ", "--quiet"])


def test_a_text_file_given_as_weights_is_no_torch_checkpoint(tmp_path, spec_path, capsys):
    err = _error(capsys, ["export", str(spec_path), "--weights", str(spec_path), "--onnx", str(tmp_path / "x.onnx")])
    assert err.endswith("not a torch checkpoint (neither the zip archive torch.save writes nor a pickle)"), err


def test_a_tilde_in_a_config_file_or_a_quoted_flag_is_the_home_directory(tmp_path, monkeypatch, capsys):
    """out: ~/run in a --config file writes under $HOME, not into a directory named '~'."""
    from ubnas.cli import main
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("out: ~/run\nepochs: 1\nmax_steps_per_epoch: 1\n")
    assert main(["search", "--config", "run.yaml", "--quiet", "--kernels", "eager"]) == 0
    assert (home / "run" / "arch.yaml").exists() and not (tmp_path / "~").exists()
    err = _error(capsys, ["search", "--data", "cifar10", "--data-dir", "~/nowhere", "--out", str(tmp_path / "r2"),
                          "--quiet"])
    assert f"CIFAR-10 directory not found: {home / 'nowhere'}" in err


def test_a_tilde_after_an_equals_sign_is_the_home_directory_for_every_command(tmp_path, monkeypatch, capsys):
    """A shell leaves '~' alone after '--opt=': export, estimate, report and calibrate then read
    or wrote a directory named '~' (only search and train expanded it)."""
    import json
    from hwmodels.accelerator import save_accelerator
    from hwmodels import load_accelerator
    from ubnas.cli import main
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    save_accelerator(load_accelerator("edge_32x32"), home / "npu.yaml")
    (home / "layers.csv").write_text("name,kind,in_h,in_w,in_channels,out_channels,kernel_h,kernel_w\n"
                                     "c,conv,8,8,3,16,3,3\n")
    assert main(["estimate", "--layers=~/layers.csv", "--hw=~/npu.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accelerator"]["array_rows"] == 32
    (home / "run" / "metrics.json").write_text(json.dumps({"test_acc": 0.5, "hardware": {"latency_us": 1.0}}))
    assert main(["report", "~/run", "--out=~/rep", "--no-plots"]) == 0
    assert (home / "rep" / "report.md").exists() and not (tmp_path / "~").exists()


def test_interrupts_and_closed_pipes(tmp_path):
    """A reader that leaves (| head) is no error; Ctrl-C says how to continue, on its own line."""
    import signal
    import subprocess
    import sys
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ubnas", "estimate", "--model", "resnet18-cifar", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()   # before it writes: its output meets a closed pipe
    assert proc.wait(timeout=120) == 0
    assert proc.stderr.read() == b""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ubnas", "search", "--out", str(out), "--epochs", "50",
                             "--kernels", "eager"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 120
    while not (out / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.2)
    if not (out / "config.yaml").exists():   # say so, rather than fail on the exit code below
        proc.kill()
        pytest.fail(f"the search wrote no config.yaml within 120 s: {proc.communicate()[1].decode()[-2000:]}")
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130
    assert "\nubnas: interrupted; the run directory keeps the last finished epoch: rerun the same command " \
           "with --resume" in err


def test_a_second_run_into_a_directory_being_written_is_refused(tmp_path, spec_path, capsys, lock_holder):
    """A live process's lock on OUT refuses search and train (OUT untouched); a killed one's, or a
    lock file no process holds (its pid reused by now), is taken over."""
    import signal
    out = tmp_path / "run"
    out.mkdir()
    holder = lock_holder(out)
    for argv in (["search", "--out", str(out), "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"],
                 ["train", str(spec_path), "--out", str(out), "--epochs", "1", "--quiet"]):
        err = _error(capsys, argv)
        assert f"another ubnas run (pid {holder.pid}) is writing there" in err, err
        assert sorted(p.name for p in out.iterdir()) == [".ubnas.lock"]
    holder.send_signal(signal.SIGKILL)   # killed: its lock file stays, the kernel drops its lock
    holder.wait()
    assert (out / ".ubnas.lock").read_text() == f"{holder.pid}\n"
    assert main(["search", "--out", str(out), "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"]) == 0
    assert not (out / ".ubnas.lock").exists() and (out / "arch.yaml").exists()
    (out / ".ubnas.lock").write_text(f"{os.getppid()}\n")   # a live pid, but no process holds the lock
    assert main(["search", "--out", str(tmp_path / "run"), "--resume", "--quiet"]) == 0
    capsys.readouterr()
    holder = lock_holder(out)   # refused before any note about resuming
    for argv in (["search", "--out", str(out), "--resume", "--seed", "5", "--quiet"],
                 ["search", "--out", str(out), "--quiet"],
                 ["train", str(spec_path), "--out", str(out), "--resume", "--epochs", "1", "--quiet"]):
        assert main(argv) == 2
        said = capsys.readouterr()
        assert said.out == "" and len(said.err.strip().splitlines()) == 1, said   # notes go to stdout
        assert f"another ubnas run (pid {holder.pid}) is writing there" in said.err, said


def test_two_runs_that_take_the_lock_together_never_both_hold_it(tmp_path):
    """Taking the lock is one atomic step: a run that finds the lock file just created by another
    (no pid written yet) must not take it too."""
    import subprocess
    import sys
    out = tmp_path / "run"
    out.mkdir()
    race = """import os, sys, time
from pathlib import Path
from ubnas import runtime
plain_open = os.open
def slow_open(path, *args, **kwargs):   # widen the moment between creating the lock file and holding it
    fd = plain_open(path, *args, **kwargs)
    if str(path).endswith(runtime.LOCK):
        time.sleep(0.2)
    return fd
runtime.os.open = slow_open
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    with runtime.run_lock(Path(sys.argv[1])):
        time.sleep(1.0)
        print("held", flush=True)
except ValueError:
    print("refused", flush=True)
"""
    for trial in range(2):
        start = str(time.time() + 1.5)
        procs = [subprocess.Popen([sys.executable, "-c", race, str(out), start], stdout=subprocess.PIPE, text=True)
                 for _ in range(3)]
        said = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        assert said == ["held", "refused", "refused"], (trial, said)


def test_a_directory_in_the_place_of_the_lock_or_a_kept_file_is_one_line_and_moves_nothing(tmp_path, capsys):
    """OUT/.ubnas.lock, OUT/previous or OUT/previous/arch.yaml that is not what it should be: a raw
    errno error before, or (previous/arch.yaml a directory) a start-over that had moved half its files."""
    from ubnas.runtime import set_aside
    out = tmp_path / "run"
    (out / ".ubnas.lock").mkdir(parents=True)
    err = _error(capsys, ["search", "--out", str(out), "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"])
    assert f"cannot take the run lock {out / '.ubnas.lock'}" in err, err
    (out / ".ubnas.lock").rmdir()
    for name in ("config.yaml", "search_log.csv", "arch.yaml"):
        (out / name).write_text(f"last run's {name}\n")
    (out / "previous" / "arch.yaml").mkdir(parents=True)   # sorts after config.yaml: that one would move first
    with pytest.raises(ValueError, match=f"{out / 'previous' / 'arch.yaml'} is a directory"):
        set_aside(out, ["config.yaml", "search_log.csv", "arch.yaml"], "arch.yaml")
    (out / "previous" / "arch.yaml").rmdir()
    (out / "previous").rmdir()
    (out / "previous").write_text("not a folder\n")
    err = _error(capsys, ["search", "--out", str(out), "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"])
    assert f"{out / 'previous'} is not a directory" in err, err
    for name in ("config.yaml", "search_log.csv", "arch.yaml"):
        assert (out / name).read_text() == f"last run's {name}\n"


def test_a_cuda_device_index_past_the_gpus_torch_sees_is_refused(monkeypatch):
    from ubnas.runtime import pick_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # two GPUs, as torch would see them
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1) and pick_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"--device cuda:2: this torch sees 2 CUDA device\(s\), cuda:0..cuda:1"):
        pick_device("cuda:2")


def test_a_lone_config_yaml_that_no_search_wrote_is_not_overwritten(tmp_path, capsys):
    """OUT/config.yaml alone is a run stopped before it saved anything, and a new search overwrites
    it; a file of that name that is not a search config (another tool's) was overwritten too."""
    out = tmp_path / "run"
    out.mkdir()
    theirs = "model: resnet18\nlr: 0.1\n"
    (out / "config.yaml").write_text(theirs)
    err = _error(capsys, ["search", "--out", str(out), "--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"])
    assert f"{out / 'config.yaml'}: unknown key 'model'" in err and "move it away" in err, err
    assert (out / "config.yaml").read_text() == theirs
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


class _Killed(BaseException):
    """Stands for SIGKILL inside set_aside: nothing after it runs."""


@pytest.mark.parametrize("order", [("arch.yaml", "search_log.csv", "checkpoint.pt", "config.yaml"),
                                   ("checkpoint.pt", "search_log.csv", "config.yaml", "arch.yaml")])
def test_a_set_aside_killed_at_any_rename_loses_nothing(tmp_path, monkeypatch, order):
    """Killed between any two of its renames, a start-over used to leave a finished run split between
    OUT and previous/ (the next start-over then took the rest for an unfinished run, or emptied
    previous/ of the half already moved), and it deleted the user's own files in previous/.  Every
    kill point is tried: after recovery the run is whole in one place, and after the next
    set_aside previous/ holds exactly the finished run and the user's file."""
    import ubnas.runtime as runtime
    from ubnas.runtime import recover_set_aside, set_aside
    finished = {name: f"run A's {name}\n" for name in order}
    older = {name: f"run B's {name}\n" for name in order}

    def fresh(root):
        out = root / "run"
        (out / "previous").mkdir(parents=True)
        for name, text in finished.items():
            (out / name).write_text(text)
        for name, text in older.items():
            (out / "previous" / name).write_text(text)
        (out / "previous" / "NOTES.txt").write_text("mine\n")
        return out

    def files(folder):
        return {p.name: p.read_text() for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}

    real_replace, kill_points = os.replace, 0
    while True:
        kill_points += 1
        out = fresh(tmp_path / str(kill_points))
        calls = []

        def replace(src, dst):
            calls.append(src)
            if len(calls) == kill_points:
                raise _Killed
            real_replace(src, dst)
        monkeypatch.setattr(runtime.os, "replace", replace)
        try:
            set_aside(out, order, "arch.yaml")
            finished_cleanly = True
        except _Killed:
            finished_cleanly = False
        monkeypatch.setattr(runtime.os, "replace", real_replace)
        recover_set_aside(out, order)
        in_out = {n: t for n, t in files(out).items()}
        kept = files(out / "previous")
        # one of the two whole states: nothing moved yet, or everything moved
        assert (in_out == finished and kept == {**older, "NOTES.txt": "mine\n"}) or \
            (in_out == {} and kept == {**finished, "NOTES.txt": "mine\n"}), (kill_points, in_out, kept)
        set_aside(out, order, "arch.yaml")
        assert files(out) == {} and files(out / "previous") == {**finished, "NOTES.txt": "mine\n"}, kill_points
        assert sorted(p.name for p in out.iterdir()) == ["previous"], kill_points   # no staging left behind
        if finished_cleanly:
            break
    assert kill_points > len(order) + 2   # every file's move, the user's file, and the two switch renames


def test_a_search_started_over_sets_a_stale_metrics_json_aside(tmp_path):
    """A metrics.json left in OUT (a train run's) is what `ubnas report` reads first: a new search
    there was reported with the old training result."""
    from ubnas.search import SearchConfig, run_search
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"test_acc": 0.98}\n')
    run_search(SearchConfig(out=str(out), epochs=1, max_steps_per_epoch=1), progress=False)
    assert not (out / "metrics.json").exists() and (out / "arch.yaml").is_file()
    assert (out / "interrupted" / "metrics.json").read_text() == '{"test_acc": 0.98}\n'
