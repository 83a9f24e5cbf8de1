"""``ubnas calibrate``: fit an accelerator's calibration to SCALE-Sim or measured latencies.

    ubnas calibrate --hw PRESET|FILE.yaml
        (--reference scalesim [--layers FILE.csv | --suite cifar|imagenet|mixed] | --reference MEASURED.csv)
        [--holdout-suite NAME | --holdout FILE.csv] [--holdout-fraction 0.3]
        [--model-mode uboost|systolic] [--array RxC] [--dataflow ws|os|is] [--seed N]
        [--max-layers N] [--cache FILE] --out CALIBRATED.yaml

Prints the held-out metrics before and after and writes the calibrated accelerator
(with fit_report and provenance; a PNG next to it when matplotlib is installed).
Every user error is a ValueError with one line; nothing is written on failure.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hwmodels.accelerator import DATAFLOWS, load_accelerator
from hwmodels.exact import MODES
from hwmodels.suites import SUITES
from hwmodels.yamlio import drawn_by_ubnas

from ..runtime import check_output_file
from .estimate import positive_int, build_accelerator


def add_parser(sub):
    parser = sub.add_parser(
        "calibrate", help="fit an accelerator's calibration to SCALE-Sim or measured layer latencies",
        description="Fit the free calibration parameters (cycle_scale, fold/layer overhead cycles; "
                    "bandwidth_efficiency for measured rows) with least squares on log errors, report "
                    "RMSE/RMSPE/within +-5/10 % on held-out rows before and after, and write the "
                    "calibrated accelerator YAML.")
    parser.add_argument("--hw", default="uboost", metavar="PRESET|FILE.yaml",
                        help="accelerator to calibrate (default: uboost)")
    parser.add_argument("--reference", required=True, metavar="scalesim|MEASURED.csv",
                        help="'scalesim' (simulate --layers or --suite) or a measured CSV: layer CSV "
                             "columns plus measured_cycles or measured_seconds [, measured_utilization]")
    parser.add_argument("--layers", metavar="FILE.csv", help="layer CSV to simulate (with --reference scalesim)")
    parser.add_argument("--suite", metavar="|".join(SUITES),
                        help="built-in layer suite to simulate (with --reference scalesim; default cifar)")
    parser.add_argument("--holdout-suite", metavar="NAME", help="test on this suite instead of a split")
    parser.add_argument("--holdout", metavar="FILE.csv",
                        help="test on this file (layer CSV for scalesim, measured CSV otherwise)")
    parser.add_argument("--holdout-fraction", default=None, metavar="F",
                        help="share of the distinct layers held out (a repeated layer with all its rows) "
                             "when no separate holdout is given (default 0.3)")
    parser.add_argument("--model-mode", default="systolic", metavar="|".join(MODES),
                        help="model to calibrate: systolic (default) or uboost")
    parser.add_argument("--array", metavar="ROWSxCOLS", help="override the array size, e.g. 32x32")
    parser.add_argument("--dataflow", metavar="|".join(DATAFLOWS), help="override the dataflow")
    parser.add_argument("--seed", default="0", metavar="N", help="suite and split seed (default 0)")
    parser.add_argument("--max-layers", metavar="N", help="use only the first N layers of each set")
    parser.add_argument("--max-sim-cycles", metavar="N",
                        help="skip uncached SCALE-Sim runs longer than N simulated cycles "
                             "(~1,500 cycles/s; default 20000)")
    parser.add_argument("--cache", metavar="FILE", help="SCALE-Sim cache (default ~/.cache/ubnas/scalesim.json)")
    parser.add_argument("--import-scalesim-csv", metavar="FILE.csv",
                        help="first add the runs of a tools/scalesim_suite.py CSV to the cache")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--out", required=True, metavar="CALIBRATED.yaml", help="YAML to write")
    return parser


def _suite(name, seed, option):
    from hwmodels.suites import suite_layers
    if name not in SUITES:
        raise ValueError(f"{option}: expected one of {', '.join(SUITES)}, got {name!r}")
    return suite_layers(name, seed)


def _check_out_files(args) -> None:
    """Before the fit (and any SCALE-Sim runs): --out must be an accelerator YAML if it exists
    (not a run's arch.yaml, say), and a PNG beside it that the plot would replace must be one
    ubnas drew."""
    out = Path(args.out)
    if out.is_file():
        try:
            load_accelerator(str(out))
        except (ValueError, OSError) as exc:
            raise ValueError(f"--out {out}: exists and is not an accelerator YAML ({exc}); the calibrated "
                             f"accelerator would replace it: choose another --out") from None
    if not args.no_plot:
        from hwmodels.calibrate import check_plot_path
        check_plot_path(out.with_suffix(".png"))


def run(args) -> int:
    from hwmodels import calibrate as cal
    from hwmodels import references as refs
    from hwmodels.layers_csv import read_layers_csv

    if args.model_mode not in MODES:
        raise ValueError(f"--model-mode: expected one of {', '.join(MODES)}, got {args.model_mode!r}")
    ref_arg = str(args.reference)
    if ref_arg.lower() == "scalesim" and ref_arg != "scalesim" and not Path(ref_arg).exists():
        raise ValueError(f"--reference {ref_arg}: no such file; for the simulator write 'scalesim' (lower case)")
    if args.holdout_fraction is not None and (args.holdout or args.holdout_suite):
        raise ValueError("--holdout-fraction splits the reference rows; with --holdout or --holdout-suite the "
                         "held-out rows are given: drop one")
    try:
        fraction = float(0.3 if args.holdout_fraction is None else args.holdout_fraction)
    except ValueError:
        raise ValueError(f"--holdout-fraction: expected a number in (0, 1), got {args.holdout_fraction!r}") from None
    if not str(args.seed).strip().isdigit():
        raise ValueError(f"--seed: expected a non-negative integer, got {args.seed!r}")
    seed = int(args.seed)
    max_layers = positive_int(args.max_layers, "--max-layers") if args.max_layers is not None else None
    max_sim = (positive_int(args.max_sim_cycles, "--max-sim-cycles") if args.max_sim_cycles is not None
               else refs.DEFAULT_MAX_SIM_CYCLES)
    if args.holdout and args.holdout_suite:
        raise ValueError("calibrate: give at most one of --holdout FILE.csv and --holdout-suite NAME")
    if not str(args.out).lower().endswith((".yaml", ".yml")):
        raise ValueError(f"--out: expected a .yaml file, got {args.out!r}")
    check_output_file(args.out, "--out")   # before the fit (and any SCALE-Sim runs)
    for option in ("hw", "reference", "holdout", "layers"):   # the fit would replace its own input
        given = getattr(args, option, None)
        if given and Path(given).is_file() and Path(given).resolve() == Path(args.out).resolve():
            raise ValueError(f"--out {args.out}: is the --{option} file; write the calibrated copy elsewhere")
    _check_out_files(args)
    acc = build_accelerator(args)
    if args.dataflow is not None and args.model_mode == "uboost":
        print("note: U-Boost's equations have no dataflow, so --dataflow does not change the model fitted"
              + ("; SCALE-Sim simulates the reference cycles at it" if args.reference == "scalesim" else ""),
              file=sys.stderr)
    cache = args.cache or refs.DEFAULT_CACHE
    trim = (lambda rows: rows[:max_layers]) if max_layers else (lambda rows: rows)
    provenance = {}

    if args.reference == "scalesim":
        if args.layers and args.suite:
            raise ValueError("calibrate: give at most one of --layers FILE.csv and --suite NAME")
        def simulate(layers, source):
            ref = refs.scalesim_rows(trim(layers), acc.replace(num_arrays=1), cache, max_sim, source)
            if ref.skipped:
                print(f"{source}: skipped {len(ref.skipped)} uncached layer(s) over --max-sim-cycles "
                      f"{max_sim}: {', '.join(ref.skipped[:5])}{' ...' if len(ref.skipped) > 5 else ''}",
                      file=sys.stderr)
            return ref

        # every layer list is read before the first simulation: a bad holdout fails in a second, not
        # after the reference suite's SCALE-Sim runs
        if args.layers:
            layers, source = read_layers_csv(args.layers), str(args.layers)
        else:
            name = args.suite or "cifar"
            layers, source = _suite(name, seed, "--suite"), f"suite {name} (seed {seed})"
        held = None
        if args.holdout_suite:
            held = (_suite(args.holdout_suite, seed, "--holdout-suite"), f"suite {args.holdout_suite} (seed {seed})")
        elif args.holdout:
            held = (read_layers_csv(args.holdout), str(args.holdout))
        if args.import_scalesim_csv:   # only now: bad input above leaves the cache as it was
            count = refs.import_scalesim_csv(args.import_scalesim_csv, cache)
            print(f"cached {count} SCALE-Sim runs from {args.import_scalesim_csv}", file=sys.stderr)
        reference = simulate(layers, source)
        holdout = simulate(*held) if held else None
    else:
        if args.layers or args.suite or args.import_scalesim_csv:
            raise ValueError("--layers, --suite and --import-scalesim-csv apply to --reference scalesim; "
                             "a measured CSV gives its own layers")
        if args.cache or args.max_sim_cycles is not None:   # would be ignored without a word
            raise ValueError("--cache and --max-sim-cycles apply to --reference scalesim; a measured CSV "
                             "runs no simulation")
        if args.holdout_suite:
            raise ValueError("--holdout-suite needs --reference scalesim; with measured rows use "
                             "--holdout MEASURED.csv")
        reference = refs.measured_rows(args.reference, acc)
        reference.rows = trim(reference.rows)
        holdout = refs.measured_rows(args.holdout, acc) if args.holdout else None
        if holdout is not None:
            holdout.rows = trim(holdout.rows)
    result = cal.calibrate(reference, acc, args.model_mode, holdout=holdout, holdout_fraction=fraction,
                           seed=seed, provenance=provenance)
    # a calibrated copy is another accelerator: named after its file, so specs, metrics and reports
    # tell it from the preset it came from (provenance.calibrated_from keeps that name)
    result.accelerator = result.accelerator.replace(name=Path(args.out).stem)
    old_png = Path(args.out).with_suffix(".png")
    stale = drawn_by_ubnas(old_png)   # removed without a new plot; a PNG of the user's never is
    png = cal.write_calibrated(result, args.out, plot=not args.no_plot)
    sys.stdout.write(cal.format_report(result))
    print(f"wrote {args.out}" + (f" and {png}" if png else "")
          + (f"; removed {old_png}, an earlier fit's plot" if stale and not png else ""))
    return 0
