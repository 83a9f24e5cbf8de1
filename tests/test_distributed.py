"""Two-process search under torchrun (gloo on CPU): ranks stay identical, one spec."""
import os
import shutil
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(shutil.which("torchrun") is None and sys.platform != "linux", reason="needs torchrun")
def test_torchrun_two_ranks_stay_in_sync(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, UBNAS_CHECK_SYNC="1", UBNAS_DIST_BACKEND="gloo")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "ubnas", "search", "--epochs", "2", "--max-steps-per-epoch", "2", "--realloc-every", "1",
           "--batch-size", "32", "--stage", "joint", "--arch-lr", "0.3", "--out", str(out), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # rank 0 checked a checksum of every architecture parameter against rank 1 after each step
    assert "architecture parameters identical on 2 ranks after all 4 steps" in result.stdout
    assert result.stdout.count("search done") == 1          # only rank 0 reports and writes
    assert sorted(p.name for p in out.iterdir()) == ["arch.yaml", "checkpoint.pt", "config.yaml", "search_log.csv"]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["realloc_log"], "the run should have moved at least one window (decided on rank 0)"
