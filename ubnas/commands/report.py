"""``ubnas report``: a Markdown report (and PNG figures) over search and train run directories."""
from __future__ import annotations


def add_parser(sub):
    parser = sub.add_parser(
        "report", help="summarise search / train runs: report.md and figures",
        description="Read run directories of `ubnas search` (config.yaml, search_log.csv, arch.yaml) and "
                    "`ubnas train` (metrics.json); write REPORT_DIR/report.md with each run's config, final "
                    "accuracy, the exact latency and utilization of its exported network and its curves, "
                    "plus PNG figures when matplotlib is installed.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--out", required=True, metavar="REPORT_DIR", help="where report.md goes")
    parser.add_argument("--hw", metavar="PRESET|FILE.yaml",
                        help="cost every exported network on this accelerator (default: each run's own)")
    parser.add_argument("--hw-batch", metavar="N",
                        help="cost every exported network at this batch size (default: the batch each "
                             "run's search costed it at, 1 unless it ran with --hw-batch)")
    parser.add_argument("--no-plots", action="store_true",
                        help="Markdown only (figures an earlier report.md in REPORT_DIR linked are removed)")
    return parser


def run(args) -> int:
    import sys

    from hwmodels.accelerator import mode_mismatch_note
    from ubnas.report import load_runs, write_report
    from ubnas.commands.estimate import positive_int
    hw_batch = None if args.hw_batch is None else positive_int(args.hw_batch, "--hw-batch")
    runs = load_runs(args.runs, hw=args.hw, hw_batch=hw_batch)
    note = mode_mismatch_note(args.hw, "systolic") if args.hw else None   # the report's exact model
    if note:
        print(note, file=sys.stderr)
        for run in runs:   # in report.md too, where a reader of its figures sees it
            if run.cost is not None:
                run.notes.append(note.removeprefix("note: "))
    written = write_report(runs, args.out, plots=not args.no_plots)
    figures = f" and {len(written['figures'])} figure(s)" if written["figures"] else ""
    removed = f"; removed {len(written['removed'])} figure(s) of the report it replaced" if written["removed"] else ""
    print(f"wrote {written['report']}{figures}{removed}")
    return 0
