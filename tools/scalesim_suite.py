"""Run a seeded suite of CNN layers through SCALE-Sim and write the cycles as CSV.

    python tools/scalesim_suite.py --suite cifar --arrays 8x8,32x32,128x128 \
        --dataflows ws,os --out FILE.csv [--max-layers N] [--max-lines L] [--jobs J]

Suites: ``cifar`` (32/16/8 maps), ``imagenet`` (224 stem, 56..7 maps, MobileNet
depthwise/pointwise, FC) and ``mixed`` (both).  SCALE-Sim is slow (a Python loop over
every cycle of every layer: measured on one CPU core, 1,500 to 9,000 simulated cycles/s per
process, the fewer the larger the array and the shorter the run, as each run also pays a
fixed ~0.3 s; the summary on stderr prints this run's rate), so (layer, array, dataflow) runs
whose stall-free length exceeds ``--max-lines`` cycles are skipped and listed on stderr.
The CSV is the independent reference for hwmodels' analytical cycle model.  It is replaced
atomically at the end; a run stopped early (Ctrl-C, SIGTERM as a batch scheduler sends, a
failing simulation) writes the rows finished so far to ``OUT.partial.csv`` and leaves ``--out``
as it was; the same command run again takes those rows from it and simulates only the rest.
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwmodels.accelerator import DATAFLOWS, Accelerator  # noqa: E402
from hwmodels.suites import layer_fields, simulated_lines  # noqa: E402
from hwmodels.suites import suite_parts  # noqa: E402
from hwmodels.yamlio import durable_replace  # noqa: E402
from ubnas.commands.estimate import parse_dims  # noqa: E402

COLUMNS = ["suite", "name", "kind", "in_h", "in_w", "in_channels", "out_channels", "kernel_h",
           "kernel_w", "stride", "padding", "dilation", "groups", "batch", "array_rows",
           "array_cols", "dataflow", "scalesim_compute_cycles", "scalesim_total_cycles"]


class SimulationFailed(RuntimeError):
    """One SCALE-Sim run raised; the message names the run."""


def _job_row(job) -> dict:
    """The row of ``job`` without its cycles (what run_key reads)."""
    suite, layer, rows, cols, dataflow = job
    return dict(suite=suite, name=layer.name, **layer_fields(layer), array_rows=rows, array_cols=cols,
                dataflow=dataflow)


def _run_job(job):
    from hwmodels.scalesim import run_scalesim
    suite, layer, rows, cols, dataflow = job
    start = time.time()
    acc = Accelerator(name=f"{rows}x{cols}", array_rows=rows, array_cols=cols, dataflow=dataflow)
    try:
        report = run_scalesim([layer], acc)[0]
    except Exception as exc:   # the worker's traceback would not say which of hundreds of runs failed
        raise SimulationFailed(f"SCALE-Sim failed on {suite}/{layer.name}, array {rows}x{cols}, {dataflow}: "
                               f"{type(exc).__name__}: {exc}") from None
    row = dict(_job_row(job), scalesim_compute_cycles=report.compute_cycles,
               scalesim_total_cycles=report.total_cycles)
    return row, time.time() - start


TEXT_COLUMNS = ("suite", "name", "kind", "dataflow")


def run_key(row) -> tuple:
    """What identifies a run (its layer, array and dataflow): every column but the cycles."""
    return tuple(str(row[c]) for c in COLUMNS[:-2])


def read_partial(path: Path) -> dict:
    """run_key -> row of an earlier stopped run's OUT.partial.csv ({} when there is none, or it is
    not one of this tool's)."""
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames != COLUMNS:
                return {}
            rows = [{c: v if c in TEXT_COLUMNS else int(v) for c, v in row.items()} for row in reader]
    except (OSError, ValueError, TypeError, csv.Error):
        return {}
    return {run_key(row): row for row in rows}


def _stop(signum, frame):
    raise KeyboardInterrupt   # SIGTERM (a scheduler's time limit): keep the finished rows as Ctrl-C does


def write_rows(path: Path, rows) -> None:
    """The CSV at ``path``, replaced in one step (a crash leaves the old file or the new one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    durable_replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=["cifar", "imagenet", "mixed"], default="mixed")
    parser.add_argument("--arrays", default="8x8,32x32,128x128,16x64",
                        help="comma list of array sizes ROWSxCOLS (default 8x8,32x32,128x128,16x64)")
    parser.add_argument("--dataflows", default="ws,os", help="comma list, a subset of ws,os,is (default ws,os)")
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--max-layers", type=int, default=None, help="first N layers per suite")
    parser.add_argument("--max-lines", type=int, default=60000,
                        help="skip runs longer than this many simulated cycles per group")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel SCALE-Sim processes (default: the CPU count)")
    args = parser.parse_args(argv)
    # every option checked before the Pool starts: a typo is one line, not a worker's traceback
    try:
        arrays = [parse_dims(item, "--arrays", 2, "32x32") for item in args.arrays.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    arrays = list(dict.fromkeys(arrays))   # a size or dataflow given twice is run once
    dataflows = list(dict.fromkeys(d.strip() for d in args.dataflows.split(",")))
    unknown = [d for d in dataflows if d not in DATAFLOWS]
    if unknown:
        parser.error(f"--dataflows: expected a comma list of {', '.join(DATAFLOWS)}, got {args.dataflows!r}")
    if args.max_layers is not None and args.max_layers < 1:
        parser.error(f"--max-layers must be >= 1, got {args.max_layers}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.seed < 0:   # a negative seed would draw another seed's suite
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.max_lines < 1:
        parser.error(f"--max-lines must be >= 1, got {args.max_lines}")
    out = Path(args.out)
    if out.is_dir():
        parser.error(f"--out {out}: is a directory; give a CSV file name")
    try:   # before hours of simulation, not after
        out.parent.mkdir(parents=True, exist_ok=True)
        write_rows(out.with_name(f".{out.name}.check"), [])
        os.remove(out.with_name(f".{out.name}.check"))
    except OSError as exc:
        parser.error(f"--out {out}: cannot write there ({exc.strerror or exc})")
    from tqdm import tqdm

    layers = suite_parts(args.suite, args.seed)   # [(part, layer)]
    if args.max_layers:
        layers = [item for part in dict.fromkeys(s for s, _ in layers)
                  for item in [x for x in layers if x[0] == part][:args.max_layers]]
    jobs, skipped = [], []
    for suite, layer in layers:
        for rows, cols in arrays:
            for df in dataflows:
                lines = simulated_lines(layer, rows, cols, df)
                (jobs if lines <= args.max_lines else skipped).append((suite, layer, rows, cols, df))
    if not jobs:   # nothing to simulate: an empty CSV would replace --out's rows
        shortest = min(simulated_lines(layer, rows, cols, df) for _, layer, rows, cols, df in skipped)
        parser.error(f"every run is over --max-lines {args.max_lines} (the shortest needs {shortest} "
                     f"simulated cycles); raise --max-lines. --out {out} is left as it was")
    jobs.sort(key=lambda j: -simulated_lines(*j[1:]))  # longest first: better packing
    partial = out.with_name(out.stem + ".partial.csv")
    done = read_partial(partial)
    keyed = [(run_key(_job_row(job)), job) for job in jobs]
    results = [done[key] for key, _ in keyed if key in done]
    jobs = [job for key, job in keyed if key not in done]
    wanted = {key for key, _ in keyed}
    # finished runs of other options (another --max-lines, --arrays ...): kept in the partial file
    others = [row for key, row in done.items() if key not in wanted]
    if results:
        print(f"taking {len(results)} finished runs from {partial}", file=sys.stderr)
    total, start, busy = len(jobs) + len(results), time.time(), 0.0
    order = {(s, l.name): i for i, (s, l) in enumerate(layers)}
    array_order = {a: i for i, a in enumerate(arrays)}

    def in_order(rows):
        return sorted(rows, key=lambda r: (order[(r["suite"], r["name"])],
                                           array_order[(r["array_rows"], r["array_cols"])],
                                           dataflows.index(r["dataflow"])))

    try:
        with Pool(args.jobs) as pool:
            signal.signal(signal.SIGTERM, _stop)   # here: the workers, forked above, keep the default
            for row, seconds in tqdm(pool.imap_unordered(_run_job, jobs), total=len(jobs), unit="run"):
                results.append(row)
                busy += seconds
    except BaseException as exc:   # Ctrl-C or a failing simulation: keep what finished, leave --out alone
        write_rows(partial, in_order(results) + others)   # the earlier partial's rows too: it only grows
        print(f"stopped after {len(results)} of {total} runs; the finished rows are in {partial}",
              file=sys.stderr)
        if isinstance(exc, KeyboardInterrupt):
            return 130
        if isinstance(exc, SimulationFailed):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
    write_rows(out, in_order(results))
    if others:   # simulated minutes that this suite does not use: not deleted
        write_rows(partial, others)
        print(f"kept {len(others)} finished runs that these options do not ask for in {partial}", file=sys.stderr)
    else:
        partial.unlink(missing_ok=True)   # its rows are in --out now
    lines = sum(simulated_lines(*job[1:]) for job in jobs)
    print(f"wrote {len(results)} rows to {args.out} in {time.time() - start:.0f} s; skipped "
          f"{len(skipped)} runs over --max-lines {args.max_lines}", file=sys.stderr)
    if busy > 0:
        print(f"SCALE-Sim stepped {lines / busy:,.0f} simulated cycles/s per process here "
              f"({lines:,} cycles in {busy:.0f} process-seconds)", file=sys.stderr)
    for suite, layer, rows, cols, df in skipped:
        print(f"  skipped {suite}/{layer.name} on {rows}x{cols} {df}: "
              f"{simulated_lines(layer, rows, cols, df)} cycles", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
