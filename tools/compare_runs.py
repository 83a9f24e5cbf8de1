r"""Run several searches side by side and print one table (widths, exact cost, accuracy, time, memory).

Each run is ``NAME=--flag value --flag value`` (flags of ``ubnas search``); every run
gets ``--out OUT/NAME``. Each search runs in its own process so its peak resident
memory (ru_maxrss) is its own; with ``--train-epochs N`` the exported spec is then
trained from scratch with ``ubnas train`` on the data set the search used (its
config.yaml's data and data_dir; --data / --data-dir override) and its test accuracy
reported.  s_per_epoch and s_per_step are given per search stage (a staged search's op
and channel epochs cost differently), each over that stage's epochs except the run's first
(epoch 1 carries compilation, autotuning and cuDNN's algorithm search; a stage whose only
epoch is epoch 1 uses it); first_epoch_s is epoch 1's seconds.  Memory is in MiB.

    python tools/compare_runs.py --out runs/effect \
        'util=--beta-utilization 1 --lambda-latency 0.2' \
        'flops=--cost-model flops --lambda-latency 0.2' --train-epochs 15
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ubnas.data import DATASETS, check_data_files, dataset_name


def run_child(cmd):
    """Run ``cmd``; return (returncode, wall seconds, peak RSS in MiB of that child)."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(output[-2000:], file=sys.stderr)
    return proc.returncode, time.time() - start, usage.ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 1024)


def per_stage(log):
    """{stage: (s per epoch, s per step)} over each stage's epochs, the run's first left out where
    the stage has others (its warm-up)."""
    out = {}
    for stage in dict.fromkeys(r.get("stage", "") for r in log):
        rows = [r for r in log if r.get("stage", "") == stage]
        steady = [r for r in rows if r is not log[0]] or rows
        seconds = sum(float(r["seconds"]) for r in steady)
        out[stage] = (seconds / len(steady), seconds / max(1, sum(int(r["steps"]) for r in steady)))
    return out


def search_data(run_dir: Path):
    """(data set, data dir) the search in ``run_dir`` used: its config.yaml, else arch.yaml's provenance."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    provenance = yaml.safe_load((run_dir / "arch.yaml").read_text()).get("provenance", {})
    return config.get("data") or provenance.get("data") or "digits", config.get("data_dir")


def summarize(name, run_dir: Path, wall, rss, test_acc):
    spec = yaml.safe_load((run_dir / "arch.yaml").read_text())
    prov = spec["provenance"]
    with open(run_dir / "search_log.csv") as handle:
        log = list(csv.DictReader(handle))
    stages = per_stage(log)

    def by_stage(i):
        return ", ".join(f"{stage or 'all'} {v[i]:.4g}" for stage, v in stages.items())

    widths = [spec["stem"]["channels"]] + [c["channels"] for c in spec["cells"]]
    ops = sorted({e["op"] for c in spec["cells"] for node in c["nodes"] for e in node})
    return {
        "run": name, "widths": "/".join(map(str, widths)), "ops": ",".join(ops),
        "search_val_acc": float(log[-1]["val_acc"]), "test_acc": test_acc,
        "exact_latency_us": prov["exact_cost"]["latency_us"],
        "exact_utilization": prov["exact_cost"]["utilization"],
        "cost_model": prov.get("cost_model", "systolic"),
        "smooth_latency_us": prov["smooth_cost"]["latency_us"],
        # the relaxed supernet's smooth latency against the exported network's exact one (relaxation
        # and surrogate together), only under the systolic model; under flops, roofline or uboost it
        # also holds that model's difference from the exact systolic count, so it is not shown
        "smooth_exact_gap": (prov["smooth_vs_exact_latency_gap"] if prov.get("cost_model", "systolic") == "systolic"
                             else None),
        # per stage, over its epochs after the run's first (whose warm-up is first_epoch_s)
        "s_per_epoch": by_stage(0), "s_per_step": by_stage(1),
        "first_epoch_s": float(log[0]["seconds"]),
        "wall_s": wall, "peak_rss_mib": rss,
        "peak_gpu_mib": max((float(r["peak_mem_mb"]) for r in log if r.get("peak_mem_mb")), default=None),
    }


def search_flags_problem(flags: str, run_dir: Path, train_data=None):
    """None when ``ubnas search FLAGS --out RUN_DIR`` parses, its options are valid and its space,
    accelerator and data files are found, else what is wrong (one line): checked for every run
    before the first search spends its minutes.  ``train_data``: (data, data_dir) overriding the
    search's for --train-epochs (None items: the search's), or None without training."""
    from hwmodels import load_accelerator
    from ubnas.cli import build_parser
    from ubnas.commands.search import config_from_args
    from ubnas.space import load_space
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            args = build_parser().parse_args(["search", *shlex.split(flags), "--out", str(run_dir), "--quiet"])
        cfg, _ = config_from_args(args)
        load_space(cfg.space)
        load_accelerator(cfg.hw)
        check_data_files(cfg.data, cfg.data_dir)
        if train_data is not None:   # what `ubnas train` reads after this run's search
            data, data_dir = train_data
            check_data_files(data or cfg.data, os.path.expanduser(data_dir) if data_dir else cfg.data_dir)
    except SystemExit:   # argparse said what is wrong on stderr
        return (said.getvalue().strip().splitlines() or ["its flags do not parse"])[-1]
    except (ValueError, OSError) as exc:   # SpaceError, HardwareConfigError, DataError are ValueErrors
        return str(exc)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=FLAGS for ubnas search")
    parser.add_argument("--out", default="runs/compare", help="parent of the run directories (default runs/compare)")
    parser.add_argument("--train-epochs", type=int, default=0,
                        help="then train each exported spec for N epochs and report its test accuracy (default 0: no)")
    parser.add_argument("--data", default=None,
                        help="data set for --train-epochs (default: the one the search used)")
    parser.add_argument("--data-dir", default=None,
                        help="data directory for --train-epochs (default: the one the search used)")
    args = parser.parse_args(argv)
    if args.train_epochs < 0:
        parser.error(f"--train-epochs must be >= 0, got {args.train_epochs}")
    # the training options are checked before any search spends its minutes
    if (args.data or args.data_dir) and not args.train_epochs:
        parser.error("--data and --data-dir choose what --train-epochs trains on; without it they do nothing")
    if args.data is not None and dataset_name(args.data) not in DATASETS:
        parser.error(f"--data: expected one of {', '.join(DATASETS)}, got {args.data!r}")
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        parser.error(f"--data-dir {args.data_dir}: no such directory")
    names = set()
    for item in args.runs:   # every run checked before the first search spends its minutes
        name, _, flags = item.partition("=")
        if "=" not in item or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            parser.error(f"run {item!r}: expected NAME='--flag value ...' (NAME of letters, digits, _ . -, "
                         f"then =)")
        if name in names:
            parser.error(f"run name {name!r} given twice: each run needs its own directory under --out")
        names.add(name)
        try:
            shlex.split(flags)
        except ValueError as exc:
            parser.error(f"run {name!r}: its flags do not parse ({exc}): {flags!r}")
        problem = search_flags_problem(flags, Path(args.out) / name,
                                       (args.data, args.data_dir) if args.train_epochs else None)
        if problem:
            parser.error(f"run {name!r}: {problem}")
    rows, failed = [], []
    for item in args.runs:
        name, _, flags = item.partition("=")
        run_dir = Path(args.out) / name
        cmd = [sys.executable, "-m", "ubnas", "search", *shlex.split(flags), "--out", str(run_dir), "--quiet"]
        print("$", shlex.join(cmd), flush=True)
        code, wall, rss = run_child(cmd)
        if code != 0:   # the other runs' rows are still worth their minutes
            failed.append(f"{name}: search failed with exit code {code}")
            print(failed[-1], file=sys.stderr, flush=True)
            continue
        test_acc = None
        if args.train_epochs:
            train_dir = run_dir / "train"
            data, data_dir = search_data(run_dir)
            data, data_dir = args.data or data, args.data_dir or data_dir
            tcmd = [sys.executable, "-m", "ubnas", "train", str(run_dir / "arch.yaml"), "--data", data,
                    *(["--data-dir", data_dir] if data_dir else []),
                    "--epochs", str(args.train_epochs), "--out", str(train_dir)]
            print("$", shlex.join(tcmd), flush=True)
            if run_child(tcmd)[0] == 0:
                test_acc = json.loads((train_dir / "metrics.json").read_text()).get("test_acc")
            else:
                failed.append(f"{name}: training failed (its search row is kept, test_acc empty)")
                print(failed[-1], file=sys.stderr, flush=True)
        try:
            rows.append(summarize(name, run_dir, wall, rss, test_acc))
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:   # a run's files, not the others'
            failed.append(f"{name}: could not summarise {run_dir} ({type(exc).__name__}: {exc})")
            print(failed[-1], file=sys.stderr, flush=True)
    if rows:
        keys = list(rows[0])
        print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for row in rows:
            print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)
                                    for v in row.values()) + " |")
        print("\ns_per_epoch, s_per_step: per search stage, over its epochs after the run's first (epoch 1 "
              "alone for a stage that has no other); first_epoch_s: epoch 1, with its warm-up; "
              "smooth_exact_gap: smooth / exact latency - 1, systolic cost model only ('-' for the others, "
              "whose smooth latency is another model's)")
    if failed:
        raise SystemExit("failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
