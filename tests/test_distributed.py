"""Two-process search under torchrun (gloo on CPU): ranks stay identical, one spec."""
import os
import socket
import subprocess
import sys

import pytest
import torch


def _free_port() -> int:
    """A port nobody listens on now: fixed ports collide when two test runs share the machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join(rank: int, port: int):
    """ubnas.distributed in rank ``rank`` of a two-process gloo group on ``port``, set up as torchrun would."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from ubnas import distributed as dist
    assert dist.world("cpu") == (rank, 2)
    return dist


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_torchrun_two_ranks_stay_in_sync(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, UBNAS_CHECK_SYNC="1", UBNAS_DIST_BACKEND="gloo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "ubnas", "search", "--epochs", "2", "--max-steps-per-epoch", "2", "--realloc-every", "1",
           "--batch-size", "32", "--stage", "joint", "--arch-lr", "0.3", "--out", str(out), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # the ranks compared a checksum of every weight and architecture parameter after each of the 4 steps
    # (dist.assert_same, which raises on a difference: test_assert_same_raises_on_every_rank_when_one_differs)
    assert "weights and architecture parameters identical on 2 ranks after each of 4 steps" in result.stdout
    assert result.stdout.count("search done") == 1          # only rank 0 reports and writes
    assert sorted(p.name for p in out.iterdir()) == ["arch.yaml", "checkpoint.pt", "config.yaml", "search_log.csv"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["realloc_log"], "the run should have moved at least one window (decided on rank 0)"
    # --resume of the finished run through the Python API: rank 0 alone returns the spec, as for a
    # new run (every rank returned it)
    script = tmp_path / "resume.py"
    script.write_text("import sys\nfrom ubnas import distributed\nfrom ubnas.search import SearchConfig, run_search\n"
                      "result = run_search(SearchConfig(out=sys.argv[1], device='cpu'), resume=True, progress=False)\n"
                      "print('rank', distributed.rank(), 'spec', result.spec_path, flush=True)\n"
                      "distributed.shutdown()\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script), str(out)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # a script's dir, not cwd, is on sys.path
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line for line in result.stdout.splitlines() if line.startswith("rank")) == [
        f"rank 0 spec {out / 'arch.yaml'}", "rank 1 spec None"], result.stdout


def _mean_worker(rank, port, path):
    dist = _join(rank, port)
    means = dist.mean_over_ranks([float(rank), 2.0 * rank + 1, -3.0])
    torch.save({"means": means, "backend": torch.distributed.get_backend()}, f"{path}.{rank}")
    dist.shutdown()


def test_logged_metrics_are_the_mean_over_ranks_on_gloo(tmp_path):
    # each rank averages its own shard; the log takes the mean of the ranks' figures
    torch.multiprocessing.spawn(_mean_worker, args=(_free_port(), str(tmp_path / "r")), nprocs=2)
    for rank in range(2):
        got = torch.load(tmp_path / f"r.{rank}", weights_only=True)
        assert got["backend"] == "gloo"          # --device cpu takes gloo even where CUDA exists
        assert got["means"] == [0.5, 2.0, -3.0]  # (0 + 1) / 2, (1 + 3) / 2, (-3 - 3) / 2


def _grads_worker(rank, port, path):
    dist = _join(rank, port)
    a, b, c = (torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64)) for shape in ((2, 3), (4,), (1,)))
    a.grad = torch.arange(6, dtype=torch.float64).view(2, 3) * (rank + 1)     # rank 0: x, rank 1: 2x
    b.grad = torch.full((4,), 10.0 * rank, dtype=torch.float64)
    # c has no gradient on either rank: skipped, not zero-filled
    dist.all_reduce_grads([a, b, c])
    torch.save({"a": a.grad, "b": b.grad, "c": c.grad}, f"{path}.{rank}")
    dist.shutdown()


def test_gradients_are_averaged_over_ranks(tmp_path):
    torch.multiprocessing.spawn(_grads_worker, args=(_free_port(), str(tmp_path / "g")), nprocs=2)
    for rank in range(2):
        got = torch.load(tmp_path / f"g.{rank}", weights_only=True)
        torch.testing.assert_close(got["a"], 1.5 * torch.arange(6, dtype=torch.float64).view(2, 3))  # (x + 2x) / 2
        torch.testing.assert_close(got["b"], torch.full((4,), 5.0, dtype=torch.float64))             # (0 + 10) / 2
        assert got["c"] is None


PERTURBATIONS = ("", "element", "swap", "across")


def _same_worker(rank, port, path):
    """Every perturbation in turn in one process group: assert_same raises only after its all_gather,
    on every rank, so the group stays usable for the next case."""
    dist = _join(rank, port)
    outcomes = {}
    for perturb in PERTURBATIONS:
        tensors = [torch.arange(6, dtype=torch.float32).view(2, 3), torch.ones(4)]
        if perturb == "element" and rank == 1:
            tensors[0][1, 2] += 1e-6 * tensors[0][1, 2]   # one element, by its last bits
        if perturb == "swap" and rank == 1:
            tensors[0][0, 1], tensors[0][1, 2] = 5.0, 1.0    # two values change places: same sum and squares
        if perturb == "across" and rank == 1:
            tensors[0][0, 0], tensors[1][0] = 1.0, 0.0       # a value moves from one tensor to the other
        try:
            dist.assert_same(tensors, "the test tensors")
            outcomes[perturb] = "same"
        except RuntimeError as exc:
            outcomes[perturb] = str(exc)
    torch.save(outcomes, f"{path}.{rank}")
    dist.shutdown()


def test_assert_same_raises_on_every_rank_when_one_differs(tmp_path):
    torch.multiprocessing.spawn(_same_worker, args=(_free_port(), str(tmp_path / "s")), nprocs=2)
    for rank in range(2):
        outcomes = torch.load(tmp_path / f"s.{rank}", weights_only=True)
        assert list(outcomes) == list(PERTURBATIONS)
        for perturb, outcome in outcomes.items():
            if perturb:
                assert outcome.startswith("ranks disagree on the test tensors"), (rank, perturb)
            else:
                assert outcome == "same", rank


def test_ranks_read_disjoint_equal_shards():
    from ubnas.distributed import shard
    x, y = torch.arange(11).view(11, 1) * 10, torch.arange(11)
    parts = [shard(x, y, rank, 3) for rank in range(3)]
    assert [len(py) for _, py in parts] == [3, 3, 3]          # equal shards keep the ranks in step
    seen = torch.cat([py for _, py in parts])
    assert len(set(seen.tolist())) == 9                       # disjoint
    for px, py in parts:
        assert torch.equal(px.view(-1), py * 10)              # rows stay with their labels
    assert shard(x, y, 0, 1)[1].tolist() == list(range(11))   # one process keeps everything


def _rank0_worker(rank, port, path):
    dist = _join(rank, port)
    calls = []

    def works():
        calls.append(rank)
        return "written"

    def refuses():
        calls.append(rank)
        raise ValueError("--out /x: refused")

    outcome = [dist.on_rank0(works)]
    try:
        dist.on_rank0(refuses)
    except ValueError as exc:
        outcome.append(str(exc))
    outcome.append(dist.on_rank0(works))   # the group is still usable after a shared refusal
    torch.save({"outcome": outcome, "calls": calls}, f"{path}.{rank}")
    dist.shutdown()


def test_an_error_on_rank_0_stops_every_rank_with_its_message(tmp_path):
    """on_rank0 runs the function on rank 0 only; its ValueError is raised on rank 0 as is and on
    the others quoted, instead of leaving them in a collective rank 0 never reaches."""
    torch.multiprocessing.spawn(_rank0_worker, args=(_free_port(), str(tmp_path / "r")), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"r.{rank}", weights_only=True) for rank in range(2))
    assert r0["calls"] == [0, 0, 0] and r1["calls"] == []
    assert r0["outcome"] == ["written", "--out /x: refused", "written"]
    assert r1["outcome"] == [None, "rank 0 stopped: --out /x: refused", None]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
@pytest.mark.parametrize("resume", [False, True])
def test_torchrun_search_into_a_locked_directory_ends_with_one_line_per_rank(tmp_path, lock_holder, resume):
    """And before any note: a --resume under torchrun named the options it ignores and the change
    of process count before refusing a directory that another live run writes."""
    out = tmp_path / "run"
    if resume:   # a run with a checkpoint, resumed with another --seed and on 2 processes
        from ubnas.search import SearchConfig, run_search
        run_search(SearchConfig(out=str(out), epochs=2, max_steps_per_epoch=1, batch_size=16), progress=False,
                   stop_after_epoch=1)
    out.mkdir(exist_ok=True)
    before = sorted(p.name for p in out.iterdir())
    lock_holder(out)   # a live process writes there
    env = dict(os.environ, UBNAS_DIST_BACKEND="gloo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "ubnas", "search", "--epochs", "1", "--max-steps-per-epoch", "1",
           "--out", str(out), "--quiet"] + (["--resume", "--seed", "5"] if resume else [])
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "another ubnas run" in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("ubnas: error") == result.stderr.count("another ubnas run")
    assert "note:" not in result.stdout + result.stderr
    # no rank's traceback (torchrun's launcher still prints its own ChildFailedError report)
    assert "[rank" not in result.stderr and "Connection closed" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(set(before) | {".ubnas.lock"})


INJECT_OOM_ON_RANK_1 = """
import os, sys
import torch
import ubnas.search as search
step = search.search_step

def failing(*args, **kwargs):   # one GPU of two out of memory, mid-epoch
    if os.environ["RANK"] == "1":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
    return step(*args, **kwargs)

search.search_step = failing
from ubnas.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_an_error_on_one_rank_alone_ends_the_job_with_its_message(tmp_path):
    """Rank 1 failing alone waited in shutdown's barrier while rank 0 waited in the gradient
    all-reduce: the job hung, silent, until gloo's 30-minute timeout.  Then rank 0's failed
    collective printed gloo's traceback."""
    script = tmp_path / "inject.py"
    script.write_text(INJECT_OOM_ON_RANK_1)
    env = dict(os.environ, UBNAS_DIST_BACKEND="gloo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(script), "search", "--epochs", "1", "--max-steps-per-epoch", "3",
           "--out", str(tmp_path / "run"), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode != 0
    assert "ubnas: error (rank 1): out of memory (CUDA out of memory. Tried to allocate 2.00 GiB" in result.stderr, \
        result.stderr[-3000:]
    # rank 0, waiting in a collective rank 1 left, printed ~29 lines of gloo traceback
    assert "[rank" not in result.stderr and "Connection closed" not in result.stderr, result.stderr[-3000:]


def test_train_refuses_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    """Every rank would train the whole network alone into the same run directory."""
    from ubnas.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", str(tmp_path / "arch.yaml"), "--out", str(tmp_path / "t")]) == 2
    assert "ubnas train runs in one process: launch it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_an_interrupted_rank_other_than_0_says_nothing(monkeypatch, capsys):
    import ubnas.commands.search
    from ubnas.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ubnas.commands.search, "run_search", interrupted)
    for rank, says in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert main(["search", "--out", "unused", "--quiet"]) == 130
        assert ("ubnas: interrupted" in capsys.readouterr().err) == says
