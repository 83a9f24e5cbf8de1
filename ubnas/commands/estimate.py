"""``ubnas estimate``: per-layer cycles, latency and utilization of a network on an accelerator.

Exactly one network source:
    SPEC              an architecture YAML exported by the search (ubnas.spec + ubnas.build)
    --model NAME      a built-in reference network (hwmodels.zoo), or a network of the user's
                      as MODULE:NAME or FILE.py:NAME (``load_model_target``)
    --layers FILE     a layer CSV (hwmodels.layers_csv)
The accelerator is a preset or YAML (--hw) with optional overrides.  Every user
error is a ValueError with a one-line message (ubnas.cli prints it).
"""
from __future__ import annotations

import contextlib
import json
import re
import sys

from hwmodels import load_accelerator
from hwmodels.accelerator import DATAFLOWS, mode_mismatch_note
from hwmodels.exact import MODES, network_cost


def add_parser(sub):
    parser = sub.add_parser(
        "estimate", help="estimate per-layer latency and utilization on an accelerator",
        description="Exact cost of a network on a systolic-array accelerator. Give exactly one of "
                    "SPEC, --model or --layers.")
    parser.add_argument("spec", nargs="?", metavar="SPEC",
                        help="architecture YAML written by the search")
    parser.add_argument("--model", metavar="NAME",
                        help="built-in network (resnet18-cifar, mobilenetv2-cifar), or your own as "
                             "MODULE:NAME or FILE.py:NAME, NAME being an nn.Module or a class or "
                             "function that builds one without arguments")
    parser.add_argument("--layers", metavar="FILE.csv", help="layer CSV (hwmodels.layers_csv format)")
    parser.add_argument("--hw", metavar="PRESET|FILE.yaml",
                        help="accelerator preset name or YAML file (default: the accelerator a SPEC "
                             "was searched on, else uboost)")
    parser.add_argument("--array", metavar="ROWSxCOLS", help="override the array size, e.g. 64x64")
    parser.add_argument("--num-arrays", metavar="N", help="override the number of arrays")
    parser.add_argument("--dataflow", metavar="|".join(DATAFLOWS), help="override the dataflow")
    parser.add_argument("--model-mode", metavar="|".join(MODES),
                        help="cost model: systolic (default, also for a SPEC searched under another "
                             "model: the exact cost its search reported) or uboost (the paper's)")
    parser.add_argument("--batch", "--hw-batch", dest="batch", metavar="N",
                        help="batch size (default: the batch a SPEC was searched at, else 1)")
    parser.add_argument("--input", metavar="CxHxW",
                        help="input shape without batch (default 3x32x32; for a --model of yours also CxL "
                             "for a 1-D network, F for one of Linear layers, L tokens for one that feeds its "
                             "input to an nn.Embedding; a SPEC gives its own)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def positive_int(text: str, option: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", str(text)) or int(text) < 1:
        raise ValueError(f"{option}: expected a positive integer, got {text!r}")
    return int(text)


DIMS_SEPARATOR = re.compile(r"[xX×]")   # '3x32x32', '3X32X32', '3×32×32'


def parse_dims(text: str, option: str, count: int, example: str):
    """'64x32' -> (64, 32): ``count`` positive integers separated by 'x'."""
    parts = DIMS_SEPARATOR.split(str(text).strip())
    if len(parts) != count or not all(re.fullmatch(r"\d+", p.strip()) and int(p) > 0 for p in parts):
        raise ValueError(f"{option}: expected {count} positive integers like {example}, got {text!r}")
    return tuple(int(p) for p in parts)


def build_accelerator(args, default=None):
    """The --hw accelerator (``default`` or the uboost preset when --hw is not given) with
    --array/--num-arrays/--dataflow applied (validated).  Shared by ``ubnas estimate`` and
    ``ubnas calibrate``."""
    if args.hw is not None:
        acc = load_accelerator(args.hw)
    else:
        acc = default if default is not None else load_accelerator("uboost")
    return with_overrides(args, acc)


def with_overrides(args, acc):
    """``acc`` with --array/--num-arrays/--dataflow applied (validated)."""
    changes = {}
    if args.array is not None:
        changes["array_rows"], changes["array_cols"] = parse_dims(args.array, "--array", 2, "128x128")
    if getattr(args, "num_arrays", None) is not None:   # calibrate has no --num-arrays
        changes["num_arrays"] = positive_int(args.num_arrays, "--num-arrays")
    if args.dataflow is not None:
        if args.dataflow not in DATAFLOWS:
            raise ValueError(f"--dataflow: expected one of {', '.join(DATAFLOWS)}, got {args.dataflow!r}")
        changes["dataflow"] = args.dataflow
    return acc.replace(**changes) if changes else acc


class UserCodeError(RuntimeError):
    """The user's network code raised while loading or building: ``ubnas.cli`` lets a
    RuntimeError through with its traceback, which points into their code."""


def _user_error(target: str, what: str, exc: BaseException) -> UserCodeError:
    """'--model TARGET: WHAT raised TYPE: MESSAGE' (raise it ``from exc``).  A SystemExit (a script's
    sys.exit or argparse run on import) is one too: let through, it ended ubnas without a word."""
    if isinstance(exc, SystemExit):
        return UserCodeError(f"--model {target}: {what} called sys.exit({exc.code!r}); code that runs as "
                             f"a script belongs under `if __name__ == \"__main__\":`")
    return UserCodeError(f"--model {target}: {what} raised {type(exc).__name__}: {exc}")


def load_model_target(target: str):
    """The ``nn.Module`` that 'pkg.module:NAME' or 'path/to/file.py:NAME' names: NAME (dotted for
    an attribute of an attribute) is a module instance, or a class or function that returns one
    when called without arguments.  The working directory is importable, as for ``python -m``,
    and a FILE.py's own folder, as for ``python FILE.py``.  A target that cannot be found is a
    one-line ValueError; an error raised by the user's code is a ``UserCodeError`` with its
    traceback."""
    import importlib.util
    import inspect
    from pathlib import Path

    from torch import nn
    where, _, name = target.rpartition(":")
    if not where or not all(part.isidentifier() for part in name.split(".")):
        raise ValueError(f"--model {target}: expected a built-in name or MODULE:NAME / FILE.py:NAME")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ValueError(f"--model {target}: no such file {where}")
        folder = str(path.resolve().parent)
        if folder not in sys.path:   # its sibling modules import, as under `python FILE.py`
            sys.path.insert(0, folder)
        module_name = f"_ubnas_model_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module   # dataclasses and pickling look their module up
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            raise _user_error(target, f"running {where}", exc) from exc
    else:
        if not all(part.isidentifier() for part in where.split(".")):
            raise ValueError(f"--model {target}: {where!r} is neither a module name (dotted, as for "
                             f"python -m) nor a FILE.py")
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (where == exc.name or where.startswith(exc.name + ".")):
                raise _user_error(target, f"importing {where}", exc) from exc
            raise ValueError(f"--model {target}: no module named {exc.name!r} (run from the directory that "
                             f"holds it, or give FILE.py:{name})") from None
        except (Exception, SystemExit) as exc:
            raise _user_error(target, f"importing {where}", exc) from exc
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--model {target}: {where} has no {name!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise ValueError(f"--model {target}: {name} is of type {type(obj).__name__}, not an nn.Module "
                             f"or something that builds one")
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise ValueError(f"--model {target}: {name}() takes required arguments; name a function "
                             f"that builds the network without any") from None
        except ValueError:   # no signature to inspect (a builtin): let the call say
            pass
        try:
            obj = obj()
        except (Exception, SystemExit) as exc:
            raise _user_error(target, f"{name}()", exc) from exc
        if not isinstance(obj, nn.Module):
            raise ValueError(f"--model {target}: {name}() returned {type(obj).__name__}, not an nn.Module")
    return obj


def _spec_of(args):
    """The SPEC's ArchSpec when it is the only network source, else None (read once: the
    accelerator, the batch and the layers all come from it)."""
    if not args.spec or args.model or args.layers:
        return None
    from ubnas.spec import load_spec
    return load_spec(args.spec)


def _batch(args, spec) -> int:
    """--batch, else the batch ``spec`` was searched at (provenance.hw_batch, with a note when it
    is not 1), else 1."""
    if args.batch is not None:
        return positive_int(args.batch, "--batch (--hw-batch)")
    if spec is None:
        return 1
    from ubnas.spec import searched_batch
    batch = searched_batch(spec)
    if batch != 1:
        print(f"note: batch {batch}, the one {args.spec} was searched at (--batch to choose another)",
              file=sys.stderr)
    return batch


def collect_layers(args, batch: int, spec):
    """The layer list of the chosen network source (``spec``: the SPEC as ``_spec_of`` read it)."""
    sources = [s for s in ("spec", "model", "layers") if getattr(args, s)]
    if len(sources) != 1:
        given = ", ".join("SPEC" if s == "spec" else f"--{s}" for s in sources) or "none"
        raise ValueError(f"estimate: give exactly one of SPEC, --model NAME or --layers FILE.csv (got {given})")
    if args.layers:
        if args.input is not None:
            raise ValueError("--input does not apply to --layers (the CSV gives every layer's map size)")
        from hwmodels.layers_csv import read_layers_csv
        layers = read_layers_csv(args.layers, default_batch=batch)
        kept = sum(getattr(layer, "batch", batch) != batch for layer in layers)
        if args.batch is not None and kept:   # the CSV's own batch wins: say so, or --batch looks ignored
            print(f"note: {kept} of {len(layers)} layers keep the batch of {args.layers}'s batch column "
                  f"(--batch {batch} applies to rows without one)", file=sys.stderr)
        return layers
    from hwmodels.estimate import trace_layers
    if args.model:
        from hwmodels.zoo import DEFAULT_INPUT, get_model
        shape, user = DEFAULT_INPUT, ":" in args.model   # MODULE:NAME / FILE.py:NAME, else built in
        if args.input:   # a user's network may be 1-D (C x L, nn.Conv1d) or take features (F, an MLP
            # whose BatchNorm1d refuses 1xF); the built-in ones are 2-D
            if user:
                parts = len(DIMS_SEPARATOR.split(args.input.strip()))
                try:   # parse_dims' message names one count; a user's network takes any of three
                    shape = parse_dims(args.input, "--input", parts if parts in (1, 2, 3) else 3, "3x32x32")
                except ValueError:
                    raise ValueError(f"--input: expected 1, 2 or 3 positive integers: CxHxW (3x32x32), CxL for a "
                                     f"1-D network (6x100), or F for a network of Linear layers or tokens (64), "
                                     f"got {args.input!r}") from None
            else:
                shape = parse_dims(args.input, "--input", 3, "3x32x32")
        if user:   # a network of the user's may make tensors of its own: built as written
            module = load_model_target(args.model)
        else:   # shapes only, as a spec's: a batch past memory costs neither memory nor arithmetic
            import torch
            with torch.device("meta"):
                module = get_model(args.model)
    else:
        from ubnas.build import meta_network
        module = meta_network(spec)   # shapes only: the batch the search costed at may be huge
        shape = tuple(spec.input_shape)   # --input checked against it by _check_spec_options
    layers = trace_layers(module, shape, batch=batch)
    if not layers:   # a cost of 0 us would read as a free network, not as nothing found to cost
        raise ValueError(f"{args.model or args.spec}: no Conv1d, Conv2d or Linear call in one forward pass "
                         f"of {'x'.join(map(str, shape))}: nothing for the array to run")
    return layers


def _check_spec_options(args, spec) -> None:
    """--batch and --input for a SPEC, checked before the notes on it (a refused run says one line)."""
    if spec is None:
        return
    if args.batch is not None:
        positive_int(args.batch, "--batch (--hw-batch)")
    else:   # the spec's own batch, which _batch reads after the notes
        from ubnas.spec import searched_batch
        searched_batch(spec)
    shape = tuple(spec.input_shape)
    if args.input is not None and parse_dims(args.input, "--input", 3, "3x32x32") != shape:
        raise ValueError(f"--input {args.input} disagrees with the input shape "
                         f"{'x'.join(map(str, shape))} in {args.spec}")


def _searched_on(args, spec):
    """For a ``spec`` (the SPEC) without --hw: (the accelerator it was searched on, as ``train`` and
    ``report`` take it: a calibrated or custom one travels in the spec; else None), and the notes
    that name it (printed once the accelerator's options have passed)."""
    if args.hw is not None or spec is None:
        return None, []
    from ubnas.spec import searched_accelerator, searched_calibration_note
    acc = searched_accelerator(spec)
    named = spec.provenance.get("accelerator")
    notes = []
    if acc is not None:
        notes.append(f"note: accelerator {acc.name}, the one {args.spec} was searched on (--hw to choose another)")
        notes.append(searched_calibration_note(spec, args.model_mode))
    elif named:
        notes.append(f"note: {args.spec} was searched on {named!r}, which is neither a preset nor recorded in "
                     f"the spec; using uboost (--hw to choose another)")
    return acc, [note for note in notes if note]


def _mode_note(spec, spec_path: str) -> None:
    """For the default model: a note when ``spec`` was searched under another model of MODES (the
    table is in the systolic model, as the exact cost its search reported is)."""
    searched = spec.provenance.get("cost_model") if spec is not None else None
    if searched in MODES and searched != "systolic":
        print(f"note: {spec_path} was searched under the {searched} cost model; this is the systolic model, "
              f"as is the exact cost its search reported (--model-mode {searched} for the searched one)",
              file=sys.stderr)


def _moved_calibration_note(args, base, acc):
    """A note when --array/--num-arrays/--dataflow move a calibrated accelerator ``base`` off the
    array its calibration was fitted on (the fold overheads are per fold of that array), else None."""
    from hwmodels.accelerator import Calibration
    if base is None or base.calibration == Calibration():
        return None
    fields = ("array_rows", "array_cols", "num_arrays", "dataflow")
    if all(getattr(base, f) == getattr(acc, f) for f in fields):
        return None

    def machine(a):
        return f"{a.num_arrays} x {a.array_rows}x{a.array_cols} {a.dataflow}"
    return (f"note: {args.hw or base.name}'s calibration was fitted on {machine(base)}; it is applied to "
            f"{machine(acc)} here, where it was not fitted")


def run(args) -> int:
    from hwmodels.report import format_table, to_json_dict
    mode_given = args.model_mode is not None
    args.model_mode = "systolic" if args.model_mode is None else args.model_mode
    if args.model_mode not in MODES:
        raise ValueError(f"--model-mode: expected one of {', '.join(MODES)}, got {args.model_mode!r}")
    spec = _spec_of(args)
    _check_spec_options(args, spec)
    searched, notes = _searched_on(args, spec)
    # --hw read once: a pipe (--hw <(...)) gives its text a single time
    base = load_accelerator(args.hw) if args.hw is not None else searched
    acc = with_overrides(args, base if base is not None else load_accelerator("uboost"))   # before any note
    if not mode_given:
        _mode_note(spec, args.spec)
    for note in notes:
        print(note, file=sys.stderr)
    batch = _batch(args, spec)
    with contextlib.redirect_stdout(sys.stderr):   # what the user's network prints stays out of --json
        layers = collect_layers(args, batch, spec)
    if args.dataflow is not None and args.model_mode == "uboost":   # its equations tile weight-stationary
        print("note: --dataflow has no effect with --model-mode uboost (U-Boost's equations have no "
              "dataflow); the systolic model (the default) uses it", file=sys.stderr)
    note = mode_mismatch_note(args.hw, args.model_mode) if args.hw is not None else None
    for note in (note, _moved_calibration_note(args, base, acc)):
        if note:
            print(note, file=sys.stderr)
    cost = network_cost(layers, acc, args.model_mode)
    # the totals are for the whole batch: say which (a --layers CSV's rows carry their own)
    batch = None if args.layers else batch
    if args.json:
        json.dump({**to_json_dict(cost), **({"batch": batch} if batch else {})}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(cost, batch))
    return 0
