"""Fixtures shared by test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convolutions: one intra-op thread is faster, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


HOLD_LOCK = """import sys, time
from pathlib import Path
from ubnas.runtime import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def lock_holder():
    """``lock_holder(out)``: another process that holds OUT's run lock until the test ends; returns
    that process (its ``pid`` is the one a refusal names)."""
    import subprocess
    import sys
    held = []

    def hold(out):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
        held.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in held:
        proc.kill()
        proc.wait()
