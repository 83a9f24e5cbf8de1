"""Reports over run directories (``ubnas report``).

A run directory is what ``ubnas search`` writes (config.yaml, search_log.csv,
arch.yaml) or what ``ubnas train`` writes (metrics.json, checkpoint.pt).  For
every run the report gives its configuration, final accuracy, the exact
latency and utilization of the exported network (``hwmodels.estimate`` of
the network built from its spec) and its curves; across runs, accuracy against
latency with the Pareto front.  REPORT_DIR/report.md always; PNG figures
(``ubnas.report_figures``) when matplotlib is importable.

A train run's metrics.json and spec are read by ``ubnas.trained_run``: a spec
edited, moved or deleted since training leaves the figures metrics.json
recorded, with a note.

search_log.csv is read by column name: any of epoch, train_loss, train_acc,
val_loss, val_acc, latency_us, derived_latency_us, utilization that are present are used, extra
columns are ignored.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hwmodels.yamlio import atomic_write_text, drawn_by_ubnas, read_yaml

from .trained_run import read_metrics, trained_spec

CURVE_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "latency_us", "derived_latency_us", "utilization")
MAX_TABLE_ROWS = 12
SEARCH_ACCURACY = "search val accuracy (supernet)"
TEST_ACCURACY = "test accuracy (trained)"


@dataclass
class Run:
    """What one run directory holds."""

    path: Path
    name: str
    kind: str                                   # 'search' or 'train'
    config: Dict[str, Any] = field(default_factory=dict)
    curves: List[Dict[str, float]] = field(default_factory=list)
    spec_path: Optional[Path] = None
    spec: Any = None                            # ArchSpec
    metrics: Dict[str, Any] = field(default_factory=dict)
    accuracy: Optional[float] = None
    accuracy_label: str = ""
    cost: Any = None                            # hwmodels NetworkCost of the exported network
    hw_batch: Optional[int] = None              # the batch its latency is at
    params: Optional[int] = None
    notes: List[str] = field(default_factory=list)

    @property
    def latency_us(self) -> Optional[float]:
        if self.cost is not None:
            return self.cost.seconds * 1e6
        hw = self.metrics.get("hardware") or {}
        return hw.get("latency_us")

    @property
    def accelerator_name(self) -> Optional[str]:
        """The accelerator the latency is on (the costed one, else what metrics.json records)."""
        if self.cost is not None:
            return self.cost.accelerator.name
        return (self.metrics.get("hardware") or {}).get("accelerator")

    @property
    def accelerator_definition(self) -> str:
        """The whole accelerator definition the latency is on, as canonical JSON ("" when unrecorded):
        a YAML named like a preset is another machine."""
        if self.cost is not None:
            config = self.cost.accelerator.to_dict()
        else:
            config = (self.metrics.get("hardware") or {}).get("accelerator_config")
        return json.dumps(config, sort_keys=True) if isinstance(config, dict) else ""

    @property
    def data_set(self) -> str:
        """The data set its accuracy is on, as its config records it, else as its spec's provenance
        does (a run directory holding arch.yaml alone) ("" when unrecorded)."""
        data = self.config.get("data")
        if data is None and self.spec is not None:
            data = self.spec.provenance.get("data")
        return data if isinstance(data, str) else ""

    @property
    def utilization(self) -> Optional[float]:
        if self.cost is not None:
            return self.cost.utilization
        hw = self.metrics.get("hardware") or {}
        return hw.get("utilization")


# -- reading -----------------------------------------------------------------------------------
def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if re.fullmatch(r"\s*-?\d+\s*", str(text)) else value


def read_log(path: Path) -> List[Dict[str, Any]]:
    """Rows of a per-epoch CSV, numbers converted; columns by name, extras kept."""
    try:   # utf-8-sig: a spreadsheet's byte-order mark would otherwise rename the first column
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                return []
            rows = []
            for line, row in enumerate(reader, start=2):
                if None in row:
                    raise ValueError(f"{path}: line {line}: more fields than the header's "
                                     f"{len(reader.fieldnames)}")
                if None in row.values():   # a cut-off row would pass its partial figures off as the last
                    raise ValueError(f"{path}: line {line}: fewer fields than the header's "
                                     f"{len(reader.fieldnames)} (a truncated row?)")
                values = {k: _number(v) for k, v in row.items() if k is not None}
                for key, value in values.items():   # a search logs finite figures; nan drew "nan %"
                    if isinstance(value, float) and not math.isfinite(value):
                        raise ValueError(f"{path}: line {line}: column '{key}' is {row[key].strip()}, "
                                         f"expected a finite number")
                rows.append(values)
            return rows
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 CSV (byte {exc.start}: {exc.reason})") from None


def _read_yaml(path: Path) -> Dict[str, Any]:
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def _accelerator(candidates: Sequence[Any], override: Optional[str], notes: List[str]):
    """--hw if given, else the first candidate that loads: an accelerator definition (dict), a
    preset name or a YAML path; else uboost, with a note (a name alone cannot be costed)."""
    from hwmodels import load_accelerator, preset_names
    from hwmodels.accelerator import from_dict
    if override:
        return load_accelerator(override)
    invalid = None   # the first recorded definition that does not load: said, not skipped in silence
    for c in candidates:
        try:
            if isinstance(c, dict):
                acc = from_dict(c, origin="recorded accelerator")
            elif isinstance(c, str) and (c in preset_names() or Path(c).is_file()):
                acc = load_accelerator(c)
            else:
                continue
        except ValueError as exc:
            invalid = invalid or str(exc)
            continue
        if invalid:
            notes.append(f"{invalid}: costed on {acc.name} instead")
        return acc
    named = [c for c in candidates if isinstance(c, str)]
    if invalid:
        notes.append(f"{invalid}: costed on uboost instead")
    elif named:
        notes.append(f"accelerator {named[0]!r} is no preset and not recorded in the run: costed on uboost")
    return load_accelerator("uboost")


class UnfinishedRun(ValueError):
    """A run directory with nothing to report yet: a search stopped before its first logged epoch, or
    a train run stopped before writing metrics.json."""


def load_run(path, name: Optional[str] = None, hw: Optional[str] = None,
             hw_batch: Optional[int] = None) -> Run:
    """Read one run directory and cost its exported network (exact systolic model) on ``hw`` (else
    the run's own accelerator) at batch ``hw_batch`` (else the batch the search costed it at)."""
    from .build import meta_network
    from .spec import edited_since_export, load_spec, searched_batch, searched_calibration_note

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: " + ("a file, not a run directory" if path.exists() else "no such run directory"))
    name = name or path.resolve().name
    if (path / "metrics.json").is_file():
        metrics = read_metrics(path / "metrics.json")
        run = Run(path, name, "train", config=dict(metrics.get("config") or {}), metrics=metrics,
                  curves=list(metrics.get("history") or []))
        run.accuracy, run.accuracy_label = metrics.get("test_acc"), TEST_ACCURACY
        run.params = metrics.get("params")
        run.spec_path, run.spec = trained_spec(metrics, path, run.config, run.notes)
        hardware = metrics.get("hardware") or {}
        if run.spec is None and hw:
            run.notes.append(f"--hw {hw} not applied to this run (no spec to cost): its figures are on "
                             f"{hardware.get('accelerator') or 'the accelerator metrics.json records'}")
        if run.spec is None:
            # a metrics.json that does not say: batch 1, the only one `ubnas train` used to cost at
            recorded_batch = hardware.get("batch", 1)
            run.hw_batch = recorded_batch if isinstance(recorded_batch, int) else None
            if hw_batch is not None and hw_batch != run.hw_batch:
                run.notes.append(f"--hw-batch {hw_batch} not applied to this run (no spec to cost): its "
                                 f"figures are at batch {_fmt(run.hw_batch)}")
        recorded = [hardware.get("accelerator_config"), hardware.get("accelerator")]
    elif (path / "arch.yaml").is_file() or (path / "search_log.csv").is_file():
        run = Run(path, name, "search")
        if (path / "config.yaml").is_file():
            run.config = _read_yaml(path / "config.yaml")
        if (path / "search_log.csv").is_file():
            run.curves = read_log(path / "search_log.csv")
        if (path / "arch.yaml").is_file():
            run.spec_path = path / "arch.yaml"
            run.spec = load_spec(run.spec_path)
        else:
            run.notes.append("no arch.yaml yet (search unfinished?): exported network omitted")
        last = run.curves[-1] if run.curves else {}
        if isinstance(last.get("val_acc"), (int, float)):
            run.accuracy, run.accuracy_label = float(last["val_acc"]), SEARCH_ACCURACY
        recorded = [run.config.get("hw")]
    elif (path / "config.yaml").is_file():   # written by `ubnas search` as it starts (train writes none)
        raise UnfinishedRun(f"{path}: a `ubnas search` run with no logged epoch yet (`ubnas search --out "
                            f"{path} --resume` continues it)")
    elif (path / "checkpoint.pt").is_file():
        raise UnfinishedRun(f"{path}: a `ubnas train` run without metrics.json (stopped before its end? "
                            f"`ubnas train ... --resume` finishes it)")
    else:
        raise ValueError(f"{path}: not a ubnas run directory (expected arch.yaml / search_log.csv from "
                         f"`ubnas search` or metrics.json from `ubnas train`)")
    if run.spec is not None:
        if edited_since_export(run.spec):
            run.notes.append(f"{run.spec.origin} was edited after the search exported it: the search's accuracy "
                             f"and smooth cost belong to the network it exported, the exact cost to this one")
        searched = [run.spec.provenance.get("accelerator_config"), run.spec.provenance.get("accelerator")]
        # a train run: what it was measured on; a search run: the definition the search recorded wins
        # over config.yaml's hw (a file that may have changed since), which wins over a bare name
        candidates = (recorded + searched if run.kind == "train" else searched[:1] + recorded + searched[1:])
        acc = _accelerator(candidates, hw, run.notes)
        note = (searched_calibration_note(run.spec)
                if hw is None and acc.to_dict() == run.spec.provenance.get("accelerator_config") else None)
        if note:
            run.notes.append(note.removeprefix("note: "))
        from hwmodels import estimate
        model = meta_network(run.spec)   # shapes only: the batch the search costed at may be huge
        run.hw_batch = hw_batch if hw_batch is not None else searched_batch(run.spec)
        run.cost = estimate(model, run.spec.input_shape, acc, batch=run.hw_batch)
        if run.spec.provenance.get("target_met") is False:
            prov = run.spec.provenance
            run.notes.append(f"the search did not meet its --target-latency-us {_fmt(prov.get('target_latency_us'))} "
                             f"(under its {prov.get('cost_model')} cost model, batch {searched_batch(run.spec)}): no "
                             f"network derivable from its final logits and windows reaches it")
        if run.params is None:
            run.params = sum(p.numel() for p in model.parameters())
        if run.accuracy is None and isinstance(run.spec.provenance.get("final_val_acc"), (int, float)):
            run.accuracy = float(run.spec.provenance["final_val_acc"])
            run.accuracy_label = SEARCH_ACCURACY
    return run


GENERIC_DIR_NAMES = ("train",)


def unique_name(base: str, taken: set, fold=lambda name: name) -> str:
    """``base``, else ``base-2``, ``base-3`` ... : the first whose ``fold`` is not in ``taken``
    (which it joins).  A/x, B/x, C/x-2: the second x must not become C's x-2."""
    name, n = base, 1
    while fold(name) in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(fold(name))
    return name


def load_runs(paths: Sequence, hw: Optional[str] = None, hw_batch: Optional[int] = None) -> List[Run]:
    """``load_run`` of each path, named by its directory (``train`` as PARENT/train), names made
    unique with -2, -3 ...; ``hw`` and ``hw_batch`` as in ``load_run``.  An unfinished run
    (``UnfinishedRun``) among others is left out with a note (one crashed run no longer stops the
    whole report)."""
    taken: set = set()
    runs, seen, unfinished = [], set(), []
    for p in paths:
        resolved = Path(p).resolve()
        if resolved in seen:   # `runs/* runs/lam0`: one run, not two identical rows on the front
            print(f"note: {p} is a run given before; reported once", file=sys.stderr)
            continue
        seen.add(resolved)
        base = resolved.name or str(p)
        if base in GENERIC_DIR_NAMES:   # runs/lam0/train (ubnas train under a search run) reads as "lam0/train"
            base = f"{resolved.parent.name}/{base}"
        name = unique_name(base, taken)
        try:
            runs.append(load_run(p, name, hw, hw_batch))
        except UnfinishedRun as exc:
            unfinished.append(exc)
            taken.discard(name)   # a run left out keeps no name: the next x is x, not x-2
    if unfinished and not runs:
        raise unfinished[0]
    for exc in unfinished:
        print(f"note: {exc}; left out of the report", file=sys.stderr)
    return runs


def shared_names(runs: Sequence[Run]) -> Dict[str, List[Run]]:
    """Accelerator names that stand for different definitions among ``runs`` -> the runs on them."""
    named: Dict[str, List[Run]] = {}
    for r in runs:
        if r.accelerator_name:
            named.setdefault(r.accelerator_name, []).append(r)
    return {name: rs for name, rs in named.items()
            if len({r.accelerator_definition for r in rs if r.accelerator_definition}) > 1}


def front_keys(runs: Sequence[Run]) -> Dict[int, tuple]:
    """id(run) -> its front: ((kind of accuracy, data set), accelerator name, definition, batch).
    Runs compare only within one front: a supernet's search val accuracy and a trained network's
    test accuracy are not comparable, nor are accuracies on different data sets, nor latencies on
    different accelerators or at different batches.  Accelerators are told apart by name, and by
    definition where one name stands for several (a YAML named like a preset); a run that records
    no definition then stands apart."""
    shared = shared_names(runs)
    return {id(r): ((r.accuracy_label, r.data_set), r.accelerator_name or "",
                    r.accelerator_definition if r.accelerator_name in shared else "", r.hw_batch or 1)
            for r in runs}


def plotted(run: Run) -> bool:
    """Whether the run has a finite accuracy and latency, i.e. a point on the accuracy-latency plane."""
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in (run.accuracy, run.latency_us))


def pareto_front(runs: Sequence[Run], keys: Optional[Dict[int, tuple]] = None) -> List[Run]:
    """Runs no other run of the same front (``front_keys``, computed when ``keys`` is not given)
    beats on both accuracy (higher) and latency (lower); runs without a finite accuracy and latency
    are on no front.  Sorted by front, then latency."""
    keys = front_keys(runs) if keys is None else keys
    points = [r for r in runs if plotted(r)]
    front = []
    for r in points:
        dominated = any(keys[id(o)] == keys[id(r)]
                        and (o.accuracy >= r.accuracy and o.latency_us <= r.latency_us)
                        and (o.accuracy > r.accuracy or o.latency_us < r.latency_us) for o in points)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: (keys[id(r)], r.latency_us))


# -- markdown ----------------------------------------------------------------------------------
def _fmt(value, digits: int = 4) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if 10 ** digits - 0.5 <= abs(value) < 1e15:   # 12,346 us and 10,000, not 1.235e+04 or 1e+04
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    # a '|' in a run name or a config value would end its cell and shift every later column
    lines += ["| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines


def _subsample(rows: List[dict], limit: int = MAX_TABLE_ROWS) -> List[dict]:
    if len(rows) <= limit:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in idx]


SEARCH_KEYS = ("space", "hw", "data", "epochs", "stage", "channels", "lambda_latency", "beta_utilization",
               "target_latency_us", "cost_model", "surrogate", "relaxation", "seed")
TRAIN_KEYS = ("data", "epochs", "batch_size", "lr", "schedule", "label_smoothing", "weight_decay", "seed")


def run_markdown(run: Run, figures: Dict[str, str]) -> List[str]:
    """Markdown lines of one run's section: config, accuracy, exact cost, cells, curves table,
    links to its figures (``figures``: 'curves'/'layers' -> PNG file name) and notes."""
    out = [f"## {run.name} ({run.kind})", "", f"Directory: `{run.path}`", ""]
    keys = SEARCH_KEYS if run.kind == "search" else TRAIN_KEYS
    # a target replaces the lambda term: its config value (a default) would read as used
    unused = {"lambda_latency"} if run.kind == "search" and run.config.get("target_latency_us") is not None else set()
    shown = [(k, run.config[k]) for k in keys if k in run.config and k not in unused]
    if shown:
        out += ["Config: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in shown), ""]
    if run.kind == "train" and run.spec is not None:
        searched = {k: run.spec.provenance[k] for k in ("search_space", "accelerator", "lambda_latency",
                                                          "target_latency_us", "beta_utilization", "stage", "seed")
                    if run.spec.provenance.get(k) is not None}
        if searched:
            out += ["Architecture from: `" + str(run.spec_path) + "` (" +
                    ", ".join(f"{k} = {_fmt(v)}" for k, v in searched.items()) + ")", ""]
    acc = "-" if run.accuracy is None else f"{100 * run.accuracy:.2f} %"
    out += [f"Final accuracy: **{acc}** ({run.accuracy_label or 'not recorded'})", ""]
    if run.cost is not None:
        c, a = run.cost, run.cost.accelerator
        out += [f"Exported network on {a.name} ({a.array_rows}x{a.array_cols} x{a.num_arrays}, {a.dataflow}, "
                f"exact systolic model, batch {run.hw_batch}): latency **{c.seconds * 1e6:.2f} us**, utilization "
                f"**{100 * c.utilization:.2f} %**, {c.macs:,} MACs, {_fmt(run.params)} parameters, "
                f"{len(c.layers)} array layers.", ""]
        smooth = (run.spec.provenance.get("smooth_cost") or {}) if run.spec is not None else {}
        if isinstance(smooth, dict) and "latency_us" in smooth:
            prov = run.spec.provenance   # the search's model, accelerator and batch, whatever --hw says
            on = ", ".join(([f"{prov['cost_model']} model"] if prov.get("cost_model") else [])
                           + ([f"on {prov['accelerator']}"] if prov.get("accelerator") else [])
                           + ([f"batch {prov['hw_batch']}"] if prov.get("hw_batch", 1) != 1 else []))
            out += [f"Supernet's smooth cost at export (arch.yaml provenance{': ' + on if on else ''}): "
                    f"{_fmt(smooth.get('latency_us'))} us, utilization "
                    f"{_fmt(100 * smooth['utilization']) if 'utilization' in smooth else '-'} %.", ""]
    elif run.latency_us is not None or run.utilization is not None:
        # the spec is not usable (see the notes): what `ubnas train` measured on the trained network
        hw = run.metrics.get("hardware") or {}
        on = f" on {hw['accelerator']}" if hw.get("accelerator") else ""
        lat = "-" if run.latency_us is None else f"{run.latency_us:.2f} us"
        util = "-" if run.utilization is None else f"{100 * run.utilization:.2f} %"
        macs = f", {hw['macs']:,} MACs" if hw.get("macs") is not None else ""
        out += [f"Exported network{on} (from metrics.json): latency **{lat}**, utilization **{util}**"
                f"{macs}, {_fmt(run.params)} parameters.", ""]
    if run.spec is not None:
        out += [f"Stem: {run.spec.stem_channels} channels, kernel {run.spec.stem_kernel}.", ""]
        cells = []
        for i, cell in enumerate(run.spec.cells):
            nodes = "; ".join(", ".join(f"{e.op}<-{e.source}" for e in node) for node in cell.nodes)
            cells.append((i, "reduce" if cell.reduce else "normal", cell.channels, nodes))
        out += _table(("cell", "type", "channels", "nodes (op<-state)"), cells) + [""]
    if run.curves:
        cols = [c for c in CURVE_COLUMNS if any(c in row for row in run.curves)]
        # utilization in % as in the summary table (the log keeps the fraction)
        rows = [[100 * v if c == "utilization" and isinstance(v, (int, float)) else v
                 for c, v in ((c, row.get(c)) for c in cols)] for row in _subsample(run.curves)]
        cols = ["utilization %" if c == "utilization" else c for c in cols]
        out += [f"Curves ({len(run.curves)} epochs" + (", subsampled" if len(run.curves) > MAX_TABLE_ROWS
                                                       else "") + "):", ""]
        out += _table(cols, rows) + [""]
    for key in ("curves", "layers"):
        if key in figures:
            alt = re.sub(r"[\[\]]", "", run.name)   # a ] in a run name would end the alt text
            out += [f"![{alt} {key}]({figures[key]})", ""]
    for note in run.notes:
        out += [f"> {note}", ""]
    return out


REPORT_TITLE = "# ubnas report"
# the figures report_figures draws beside report.md: pareto.png, and per run STEM_curves.png and
# STEM_layers.png, STEM being the run's name in STEM_CHARS; FIGURE_LINK finds report.md's links to them
PARETO_FIGURE = "pareto.png"
RUN_FIGURES = ("curves", "layers")
STEM_CHARS = "A-Za-z0-9_.-"
FIGURE_LINK = re.compile(rf"\]\(({re.escape(PARETO_FIGURE)}|[{STEM_CHARS}]+_(?:{'|'.join(RUN_FIGURES)})\.png)\)")


def run_figure(stem: str, kind: str) -> str:
    """The file name of a run's figure of ``kind`` (one of RUN_FIGURES)."""
    return f"{stem}_{kind}.png"


def _our_report_text(report: Path) -> Optional[str]:
    """The text of ``report`` when an earlier ``ubnas report`` wrote it (it begins with
    REPORT_TITLE); None when there is no readable report.md, or it is not one of ours."""
    try:
        text = report.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.startswith(REPORT_TITLE + "\n") else None


def _refuse_foreign_files(out_dir: Path, runs: Sequence[Run], plots: bool, report_is_ours: bool,
                          previous_figures: List[str]) -> None:
    """Before anything is drawn: a report.md that no ``ubnas report`` wrote, or a PNG of a name this
    report draws that an earlier one neither drew (``drawn_by_ubnas``) nor linked
    (``previous_figures``), is the user's and would be replaced: refused."""
    report = out_dir / "report.md"
    if report.exists() and not report_is_ours:
        raise ValueError(f"--out {out_dir}: {report} exists and is not a report ubnas wrote; move it away "
                         f"or choose another --out")
    if not plots:
        return
    from .report_figures import figure_stems
    names = [run_figure(stem, kind) for stem in figure_stems(runs).values() for kind in ("curves", "layers")]
    linked = {name.lower() for name in previous_figures}
    for name in names + [PARETO_FIGURE]:
        path = out_dir / name
        if path.exists() and name.lower() not in linked and not drawn_by_ubnas(path):
            raise ValueError(f"--out {out_dir}: {path} exists and is not a figure ubnas drew; the report "
                             f"would replace it: move it away, or --no-plots, or another --out")


def write_report(runs: Sequence[Run], out_dir, plots: bool = True) -> Dict[str, Any]:
    """REPORT_DIR/report.md (+ PNGs when matplotlib is importable and ``plots``); returns the files
    written ('report', 'figures') and 'removed': the figures an earlier ``ubnas report`` in
    ``out_dir`` drew and linked that this one does not draw again (a --no-plots report, or fewer
    runs), so none pass for this one's; no other file is touched."""
    from .runtime import make_run_dir
    if not str(out_dir).strip():   # Path("") is the working directory
        raise ValueError(f"--out: expected a report directory, got {str(out_dir)!r}")
    out_dir = make_run_dir(Path(out_dir))     # an --out that is a file: a message naming --out, not errno 17
    report = out_dir / "report.md"
    earlier = _our_report_text(report)
    previous_figures = FIGURE_LINK.findall(earlier or "")   # drawn by it: removed below if not drawn again
    _refuse_foreign_files(out_dir, runs, plots, earlier is not None, previous_figures)
    # the figures are drawn apart and moved in with the new report.md: a report stopped while drawing
    # (Ctrl-C, an error) leaves the earlier report.md beside its own figures, not beside new ones
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out_dir)) if plots else None
    try:
        return _write_report(runs, out_dir, report, previous_figures, staging)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _write_report(runs: Sequence[Run], out_dir: Path, report: Path, previous_figures: List[str],
                  staging: Optional[Path]) -> Dict[str, Any]:
    """write_report's drawing (into ``staging``; None: no figures) and writing, its checks done."""
    figures: Dict[str, Dict[str, str]] = {r.name: {} for r in runs}
    keys = front_keys(runs)
    front = pareto_front(runs, keys)
    pngs: List[str] = []
    plot_note = ""
    if staging is not None:
        from . import report_figures
        plt = report_figures.pyplot()
        if plt is None:
            plot_note = "No figures: matplotlib is not installed (pip install 'ubnas[plot]')."
        else:
            stems = report_figures.figure_stems(runs)
            for run in runs:
                figures[run.name] = report_figures.run_figures(plt, run, staging, stems[run.name])
                pngs += list(figures[run.name].values())
            if any(plotted(r) for r in runs):
                pngs.append(report_figures.pareto_figure(plt, runs, front, staging, keys))
    lines = [REPORT_TITLE, "", f"{len(runs)} run(s). Latency and utilization are the exact cost of "
             f"each run's exported network (hwmodels, systolic model) at the batch of the batch column "
             f"(the batch its search costed it at, or --hw-batch).", ""]
    summary = [(r.name, r.kind, r.data_set or None, None if r.accuracy is None else round(100 * r.accuracy, 2),
                r.latency_us, None if r.utilization is None else 100 * r.utilization, r.params,
                r.accelerator_name, r.hw_batch, "yes" if r in front else "no" if plotted(r) else "")
               for r in runs]
    lines += _table(("run", "kind", "data", "accuracy %", "latency us", "utilization %", "params",
                     "accelerator", "batch", "Pareto"), summary) + [""]
    if len({keys[id(r)] for r in runs if plotted(r)}) > 1:
        lines += ["Pareto: one front per kind of accuracy, data set, accelerator and batch (they are not "
                  "comparable).", ""]
    for name, named in sorted(shared_names(runs).items()):
        lines += [f"> Accelerators of different definitions share the name {name!r} (runs "
                  f"{', '.join(r.name for r in named)}): each definition has its own front"
                  + (", and a run that records none stands apart" if not all(r.accelerator_definition for r in named)
                     else "") + ".", ""]
    if PARETO_FIGURE in pngs:
        lines += [f"![accuracy vs latency]({PARETO_FIGURE})", ""]
    if plot_note:
        lines += [f"> {plot_note}", ""]
    for run in runs:
        lines += run_markdown(run, figures[run.name])
    for name in pngs:
        os.replace(staging / name, out_dir / name)
    atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    removed = []
    drawn = {p.lower() for p in pngs}   # A_curves.png is a_curves.png on a case-insensitive file system
    for name in dict.fromkeys(previous_figures):   # only now: a failed report leaves the old one whole
        # a PNG of the user's linked from the old report.md (an appended baseline) is not ours to remove
        if name.lower() not in drawn and (out_dir / name).is_file() and drawn_by_ubnas(out_dir / name):
            (out_dir / name).unlink()
            removed.append(str(out_dir / name))
    return {"report": str(report), "figures": [str(out_dir / p) for p in pngs], "removed": removed}
