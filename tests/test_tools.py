"""Command-line behaviour of the scripts in tools/ (run as a user runs them: a subprocess)."""
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _tool(name, *args):
    return subprocess.run([sys.executable, str(TOOLS / name), *args], capture_output=True, text=True,
                          timeout=300)


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
