#!/usr/bin/env python3
"""Project the GPU-hours (or CPU hours) of a full staged search, eager MixedOp vs the fused kernels.

Measures the seconds per search step of the real ``ubnas.search.run_search`` for each
stage (``op``: mixed ops at fixed widths, where the fused kernels matter; ``channel``:
every edge runs its chosen op only, the same code for both) and each implementation
(``--kernels eager`` and ``auto`` = Triton on CUDA, the PyTorch reference elsewhere),
all in one process.  Each of the four runs is ``run_search`` with ``--stage op`` or
``channel``, ``--epochs 2`` and at most ``--steps`` steps per epoch, into a temporary
run directory.  Epoch 1 carries compilation, autotuning and cuDNN's algorithm search,
so the step time is epoch 2's ``seconds / steps`` from the run's history (the rows of
its search_log.csv); epoch 1's excess over that is shown as the one-off warm-up.

The projection is for a full search whose size is given on the command line (defaults:
the README's CIFAR-10 example, 50 epochs staged = 25 op + 25 channel, over CIFAR-10's
25,000-image weight half at batch 64 = ceil(25000 / 64) = 391 steps per epoch):

    hours = (op_epochs * s/step(op) + channel_epochs * s/step(channel)) * steps_per_epoch / 3600

The channel stage starts from the initial (random) op logits here, so its edges run a
random architecture's ops; a real search runs the ops its op stage chose.

    PYTHONPATH=. python3 tools/search_hours.py                       # uboost_cifar, batch 64, cuda if any
    PYTHONPATH=. python3 tools/search_hours.py --space tiny --data digits --batch-size 16 --steps 3
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from hwmodels import load_accelerator
from ubnas import kernels
from ubnas.data import DATASETS, load_dataset
from ubnas.runtime import pick_device
from ubnas.search import SearchConfig, op_stage_epochs, run_search
from ubnas.space import load_space

IMPLS = ("eager", "auto")
STAGES = ("op", "channel")


def measure(args, impl: str, stage: str, out: Path) -> dict:
    """One ``run_search`` (2 epochs of ``stage`` with ``--kernels impl``): epoch 2's s/step etc."""
    cfg = SearchConfig(space=args.space, hw=args.hw, data=args.data, data_dir=args.data_dir, epochs=2,
                       batch_size=args.batch_size, stage=stage, kernels=impl, device=args.device,
                       seed=args.seed, out=str(out), max_steps_per_epoch=args.steps)
    cuda = args.device.startswith("cuda")
    gc.collect()
    if cuda:   # run_search reports torch.cuda.max_memory_allocated: this run's peak, not the process's
        device = torch.device(args.device)
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    notes = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(notes), contextlib.redirect_stdout(notes):   # run_search's notes
            result = run_search(cfg, progress=False)
    except BaseException:   # what the run said before it failed belongs with its traceback
        sys.stderr.write(notes.getvalue())
        raise
    wall = time.perf_counter() - start
    first, second = result.history[0], result.history[1]
    s_per_step = second["seconds"] / second["steps"]
    return {"s_per_step": s_per_step, "steps": second["steps"], "warmup_s": first["seconds"] - first["steps"] * s_per_step,
            # epoch 2's peak (run_search resets it per epoch): epoch 1's holds autotuning's buffers
            "peak_mib": second.get("peak_mem_mb"), "wall_s": wall, "history": result.history,
            "notes": [line for line in notes.getvalue().splitlines() if line.strip()]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="uboost_cifar", help="search space (default uboost_cifar)")
    ap.add_argument("--hw", default="uboost", help="accelerator of the hardware cost (default uboost)")
    ap.add_argument("--data", choices=DATASETS, default="synthetic",
                    help="data set of the measured runs (default synthetic: CIFAR-shaped, 2048 training images)")
    ap.add_argument("--data-dir", default=None, help="directory of --data cifar10")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default cuda if available, else cpu)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="batch of the measured steps and of the projected search (default 64)")
    ap.add_argument("--steps", type=int, default=20,
                    help="at most this many steps per measured epoch (max_steps_per_epoch; default 20; "
                         "synthetic data at batch 64 has 16)")
    ap.add_argument("--impls", default="eager,auto", help="comma list of eager,auto (default both)")
    ap.add_argument("--epochs", type=int, default=50,
                    help="epochs of the projected staged search (default 50: 25 op + 25 channel)")
    ap.add_argument("--train-images", type=int, default=25000,
                    help="images per epoch of the projected search, the weight split (default 25000, "
                         "CIFAR-10's half)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (CPU): 1 keeps a shared, busy CPU from stalling the "
                         "intra-op threads, which can make steps several times slower")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="write the run directories under DIR and keep them (default: a temporary "
                         "directory, removed)")
    args = ap.parse_args(argv)
    for name in ("batch_size", "steps", "epochs", "train_images", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if not impls or any(i not in IMPLS for i in impls):
        ap.error(f"--impls: expected a comma list of {', '.join(IMPLS)}, got {args.impls!r}")
    try:   # the options a search shares, checked as ubnas search checks them
        SearchConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                     device=args.device or "auto").validate("command line")
    except ValueError as exc:
        ap.error(str(exc))
    try:   # as ubnas search picks it ('auto' resolved): no GPU, or cuda:N past the last one, is one line here
        args.device = str(pick_device(args.device or "auto"))
    except ValueError as exc:
        ap.error(str(exc))
    try:
        load_space(args.space)
        load_accelerator(args.hw)
        data = load_dataset(args.data, args.data_dir)   # the data set ubnas search reads
    except Exception as exc:   # unknown space or accelerator, missing CIFAR-10 files: one line
        ap.error(str(exc))
    if args.keep:
        try:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
        except OSError as exc:   # a file there or on the way, no permission
            ap.error(f"--keep {args.keep}: cannot make that directory ({exc.strerror or exc})")
    cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    full = SearchConfig(epochs=args.epochs)   # the projected run: staged, as ubnas search's default
    op_epochs = op_stage_epochs(full)
    channel_epochs = args.epochs - op_epochs
    steps_per_epoch = math.ceil(args.train_images / args.batch_size)
    where = (torch.cuda.get_device_name(args.device) if cuda
             else f"CPU (auto = {kernels.backend('auto', torch.device('cpu')).__name__})")
    print(f"device: {where}  torch {torch.__version__}  space {args.space}  hw {args.hw}  data {args.data}  "
          f"batch {args.batch_size}  <= {args.steps} steps/epoch measured  {torch.get_num_threads()} CPU threads",
          flush=True)
    print(kernels.setup_line(torch.device(args.device)), flush=True)

    if not cuda and args.space != "tiny":
        print("note: on a CPU each step of this space takes seconds and the four runs several minutes "
              "(and GBs); a quick check: --space tiny --data digits --batch-size 16 --steps 3", flush=True)
    rows, notes = {}, []
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="search_hours_"))
    try:
        for impl in impls:
            for stage in STAGES:
                r = measure(args, impl, stage, root / f"{impl}_{stage}")
                rows[impl, stage] = r
                notes += [n for n in r["notes"] if n not in notes]
                epochs = "; ".join(f"epoch {h['epoch']} {h['seconds']:.2f} s / {h['steps']} steps" for h in r["history"])
                peak = f", peak {r['peak_mib']:.0f} MiB" if r["peak_mib"] is not None else ""
                print(f"{impl:5s} {stage:7s}: {r['s_per_step']:.4f} s/step ({epochs}){peak}; "
                      f"run {r['wall_s']:.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for note in notes:
        print(f"  (run_search) {note}")

    unit = "GPU-hours" if cuda else "CPU hours"
    hours = {impl: (op_epochs * rows[impl, "op"]["s_per_step"] + channel_epochs * rows[impl, "channel"]["s_per_step"])
             * steps_per_epoch / 3600 for impl in impls}
    print()
    print(f"projected: {args.epochs} epochs staged ({op_epochs} op + {channel_epochs} channel) x "
          f"ceil({args.train_images} / {args.batch_size}) = {steps_per_epoch} steps/epoch, {args.space}")
    print(f"{unit} = ({op_epochs} * s/step op + {channel_epochs} * s/step channel) * {steps_per_epoch} / 3600 "
          f"(epoch 2's seconds / steps; warm-up, checkpoints and the final export not included)")
    head = (f"{'impl':6s} {'s/step op':>10s} {'s/step channel':>15s} {unit:>10s} {'warm-up s':>10s} "
            f"{'peak MiB':>9s} {'eager/impl':>10s}")
    print(head)
    print("-" * len(head))
    for impl in impls:
        op, ch = rows[impl, "op"], rows[impl, "channel"]
        peak = max(op["peak_mib"], ch["peak_mib"]) if cuda else None
        ratio = f"{hours['eager'] / hours[impl]:.2f}x" if "eager" in hours else "-"
        print(f"{impl:6s} {op['s_per_step']:10.4f} {ch['s_per_step']:15.4f} {hours[impl]:10.3f} "
              f"{op['warmup_s'] + ch['warmup_s']:10.1f} {f'{peak:.0f}' if peak is not None else '-':>9s} {ratio:>10s}")
    print("warm-up s: epoch 1's seconds beyond its steps at epoch 2's rate, op + channel (compilation, "
          "autotuning, cuDNN benchmark; negative: timing noise);"
          " once per run, not in the hours")
    if cuda:
        per_image = data.train_x[0].numel() * data.train_x.element_size() / 2**20
        print(f"peak MiB: torch.cuda.max_memory_allocated in epoch 2 (after autotuning), the larger of "
              f"the two stages' runs; it holds the "
              f"{len(data.train_x)} training images ({len(data.train_x) * per_image:.0f} MiB); "
              f"2 x {args.train_images} images would hold {2 * args.train_images * per_image:.0f} MiB")
    if "eager" in hours and "auto" in hours:
        print(f"eager/fused {unit}: {hours['eager'] / hours['auto']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
