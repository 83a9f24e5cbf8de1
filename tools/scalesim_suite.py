"""Run a seeded suite of CNN layers through SCALE-Sim and write the cycles as CSV.

    python tools/scalesim_suite.py --suite cifar --arrays 8x8,32x32,128x128 \
        --dataflows ws,os --out FILE.csv [--max-layers N] [--max-lines L] [--jobs J]

Suites: ``cifar`` (32/16/8 maps), ``imagenet`` (224 stem, 56..7 maps, MobileNet
depthwise/pointwise, FC) and ``mixed`` (both).  SCALE-Sim is slow (a Python loop over
every cycle of every layer, ~3000 cycles/s), so (layer, array, dataflow) runs whose
stall-free length exceeds ``--max-lines`` cycles are skipped and listed on stderr.
The CSV is the independent reference for hwmodels' analytical cycle model.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwmodels.accelerator import Accelerator  # noqa: E402
from hwmodels.suites import layer_fields, simulated_lines  # noqa: E402
from hwmodels.suites import suite_parts as suite_layers  # noqa: E402  [(part, layer)], as before

COLUMNS = ["suite", "name", "kind", "in_h", "in_w", "in_channels", "out_channels", "kernel_h",
           "kernel_w", "stride", "padding", "dilation", "groups", "batch", "array_rows",
           "array_cols", "dataflow", "scalesim_compute_cycles", "scalesim_total_cycles"]


def _run_job(job):
    from hwmodels.scalesim import run_scalesim
    suite, layer, rows, cols, dataflow = job
    start = time.time()
    acc = Accelerator(name=f"{rows}x{cols}", array_rows=rows, array_cols=cols, dataflow=dataflow)
    report = run_scalesim([layer], acc)[0]
    row = dict(suite=suite, name=layer.name, **layer_fields(layer), array_rows=rows, array_cols=cols,
               dataflow=dataflow, scalesim_compute_cycles=report.compute_cycles,
               scalesim_total_cycles=report.total_cycles)
    return row, time.time() - start


def parse_arrays(text):
    out = []
    for item in text.split(","):
        rows, _, cols = item.strip().lower().partition("x")
        out.append((int(rows), int(cols or rows)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=["cifar", "imagenet", "mixed"], default="mixed")
    parser.add_argument("--arrays", default="8x8,32x32,128x128,16x64", help="RxC list")
    parser.add_argument("--dataflows", default="ws,os", help="subset of ws,os,is")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--max-layers", type=int, default=None, help="first N layers per suite")
    parser.add_argument("--max-lines", type=int, default=60000,
                        help="skip runs longer than this many simulated cycles per group")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    layers = suite_layers(args.suite, args.seed)
    if args.max_layers:
        layers = [item for part in dict.fromkeys(s for s, _ in layers)
                  for item in [x for x in layers if x[0] == part][:args.max_layers]]
    dataflows = [d.strip() for d in args.dataflows.split(",") if d.strip()]
    jobs, skipped = [], []
    for suite, layer in layers:
        for rows, cols in parse_arrays(args.arrays):
            for df in dataflows:
                lines = simulated_lines(layer, rows, cols, df)
                (jobs if lines <= args.max_lines else skipped).append((suite, layer, rows, cols, df))
    jobs.sort(key=lambda j: -simulated_lines(*j[1:]))  # longest first: better packing
    results, start = [], time.time()
    with Pool(max(1, args.jobs)) as pool:
        for row, seconds in tqdm(pool.imap_unordered(_run_job, jobs), total=len(jobs), unit="run"):
            results.append(row)
    order = {(s, l.name): i for i, (s, l) in enumerate(layers)}
    arrays = {a: i for i, a in enumerate(parse_arrays(args.arrays))}
    results.sort(key=lambda r: (order[(r["suite"], r["name"])], arrays[(r["array_rows"], r["array_cols"])],
                                dataflows.index(r["dataflow"])))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(results)
    print(f"wrote {len(results)} rows to {args.out} in {time.time() - start:.0f} s; skipped "
          f"{len(skipped)} runs over --max-lines {args.max_lines}", file=sys.stderr)
    for suite, layer, rows, cols, df in skipped:
        print(f"  skipped {suite}/{layer.name} on {rows}x{cols} {df}: "
              f"{simulated_lines(layer, rows, cols, df)} cycles", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
