"""``ubnas`` command line: a thin dispatcher over ``ubnas.commands.<name>`` modules."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Each name is a module in ubnas/commands with add_parser(subparsers) and run(args) -> int.
COMMANDS = (
    "presets",
    "estimate",
    "spaces",
    "search",
    "train",
    "export",
    "report",
    "calibrate",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``ubnas`` argument parser: one sub-command per module of ``ubnas.commands``."""
    parser = argparse.ArgumentParser(
        prog="ubnas", description="Hardware-aware differentiable NAS for systolic-array accelerators.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"ubnas.commands.{name}")
        sub_parser = module.add_parser(sub)
        sub_parser.set_defaults(_run=module.run)
    return parser


def _expand_home(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with a leading ``~`` of every string (or list item) expanded to the home directory,
    as a shell does for an unquoted word: it does not after ``--onnx=``, and a quoted path kept it,
    so ``export --onnx=~/m.onnx`` wrote into a directory named '~' below the working directory."""
    def expand(value):
        return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value
    for key, value in vars(args).items():
        setattr(args, key, [expand(v) for v in value] if isinstance(value, list) else expand(value))
    return args


def _peer_left(exc: RuntimeError) -> bool:
    """Whether ``exc`` is gloo saying that another process of the group went away."""
    text = str(exc)
    return "Connection closed by peer" in text or "Connection reset by peer" in text


def main(argv=None) -> int:
    """Run ``ubnas`` with ``argv`` (default: sys.argv[1:]); returns the exit status: 0, 2 for a user
    error (ValueError, OSError, ImportError, out of memory: one line on stderr, the traceback with
    UBNAS_DEBUG=1), 130 when interrupted."""
    try:   # building the parser imports torch: an early Ctrl-C is still one line
        parser = build_parser()
    except KeyboardInterrupt:
        print("\nubnas: interrupted", file=sys.stderr)
        return 130
    args = _expand_home(parser.parse_args(argv))
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:   # on a line of its own (a progress bar may be open)
        from .distributed import rank
        if rank():   # under torchrun every rank is interrupted: rank 0 says it once
            return 130
        resumable = args.command in ("search", "train")
        print("\nubnas: interrupted" + ("; the run directory keeps the last finished epoch: rerun the "
                                         "same command with --resume to continue" if resumable else ""),
              file=sys.stderr)
        return 130
    except BrokenPipeError:   # `ubnas presets | head -1`: the reader left
        # stdout is unusable: point it at devnull so the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if args.command not in ("search", "train"):   # a listing cut short: nothing went wrong
            return 0
        # a run stopped by its output going away did not finish: say so where it can still be read
        print(f"ubnas: error: standard output was closed (its reader left) before {args.command} ended; "
              f"its run directory keeps what was saved: an unfinished run continues with --resume",
              file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # Running out of memory is the user's sizes, not a bug: say so in one line.  Any other
        # RuntimeError is a bug and keeps its traceback.
        from hwmodels.estimate import is_out_of_memory

        from .distributed import launched_processes, rank
        if launched_processes() > 1 and not os.environ.get("UBNAS_DEBUG") and _peer_left(exc):
            # a rank that failed alone (its own line is above) or was interrupted left the group:
            # this rank's pending collective fails with gloo's long traceback, which is no bug here
            sys.stderr.write(f"ubnas: error (rank {rank()}): another process of this torchrun job stopped "
                             f"(its error, if any, is above); the run directory keeps the last finished epoch: "
                             f"--resume continues it\n")
            return 2
        if not is_out_of_memory(exc):
            raise
        if os.environ.get("UBNAS_DEBUG"):
            raise
        # under torchrun: one GPU of several may be the one out of memory
        sys.stderr.write(f"ubnas: error{f' (rank {rank()})' if rank() else ''}: out of memory "
                         f"({str(exc).splitlines()[0][:200]}); check "
                         f"{OUT_OF_MEMORY_HINTS.get(args.command, 'the network sizes')}\n")
        return 2
    except (ValueError, OSError, ImportError) as exc:
        # User-facing errors are one line (file, key/row, what was expected);
        # UBNAS_DEBUG=1 shows the traceback for bug reports.
        if os.environ.get("UBNAS_DEBUG"):
            raise
        # under torchrun every rank may hit the same error: say which rank speaks
        from .distributed import rank
        # one write: under torchrun the ranks share stderr, and print's separate newline interleaves
        sys.stderr.write(f"ubnas: error{f' (rank {rank()})' if rank() else ''}: {exc}\n")
        return 2


# what each command's user can make smaller (export has no batch option)
OUT_OF_MEMORY_HINTS = {"search": "the search space's widths or --batch-size",
                       "train": "the spec's widths or --batch-size",
                       "estimate": "the network's sizes or --batch",
                       "export": "the spec's widths or input_shape",
                       "report": "the runs' specs or --hw-batch"}


if __name__ == "__main__":
    sys.exit(main())
