"""Reports over run directories (``ubnas report``).

A run directory is what ``ubnas search`` writes (config.yaml, search_log.csv,
arch.yaml) or what ``ubnas train`` writes (metrics.json, checkpoint.pt).  For
every run the report gives its configuration, final accuracy, the exact
latency and utilization of the exported network (``hwmodels.estimate`` of
the network built from its spec) and its curves; across runs, accuracy against
latency with the Pareto front.  REPORT_DIR/report.md always; PNG figures when
matplotlib is importable.

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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hwmodels.yamlio import atomic_write_text, read_yaml

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
                rows.append({k: _number(v) for k, v in row.items() if k is not None})
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
    for c in candidates:
        try:
            if isinstance(c, dict):
                return from_dict(c, origin="recorded accelerator")
            if isinstance(c, str) and (c in preset_names() or Path(c).is_file()):
                return load_accelerator(c)
        except ValueError:
            continue
    named = [c for c in candidates if isinstance(c, str)]
    if named:
        notes.append(f"accelerator {named[0]!r} is no preset and not recorded in the run: costed on uboost")
    return load_accelerator("uboost")


def load_run(path, name: Optional[str] = None, hw: Optional[str] = None,
             hw_batch: Optional[int] = None) -> Run:
    """Read one run directory and cost its exported network (exact systolic model) on ``hw`` (else
    the run's own accelerator) at batch ``hw_batch`` (else the batch the search costed it at)."""
    from .build import build_network
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
        model = build_network(run.spec)
        run.hw_batch = hw_batch if hw_batch is not None else searched_batch(run.spec)
        run.cost = estimate(model, run.spec.input_shape, acc, batch=run.hw_batch)
        if run.params is None:
            run.params = sum(p.numel() for p in model.parameters())
        if run.accuracy is None and isinstance(run.spec.provenance.get("final_val_acc"), (int, float)):
            run.accuracy = float(run.spec.provenance["final_val_acc"])
            run.accuracy_label = SEARCH_ACCURACY
    return run


GENERIC_DIR_NAMES = ("train",)


def _unique(base: str, taken: set, fold=lambda name: name) -> str:
    """``base``, else ``base-2``, ``base-3`` ... : the first whose ``fold`` is not in ``taken``
    (which it joins).  A/x, B/x, C/x-2: the second x must not become C's x-2."""
    name, n = base, 1
    while fold(name) in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(fold(name))
    return name


def load_runs(paths: Sequence, hw: Optional[str] = None, hw_batch: Optional[int] = None) -> List[Run]:
    taken: set = set()
    runs = []
    for p in paths:
        resolved = Path(p).resolve()
        base = resolved.name or str(p)
        if base in GENERIC_DIR_NAMES:   # runs/lam0/train (ubnas train under a search run) reads as "lam0/train"
            base = f"{resolved.parent.name}/{base}"
        runs.append(load_run(p, _unique(base, taken), hw, hw_batch))
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
    """id(run) -> its front.  Runs compare only within one front: a supernet's search val accuracy
    and a trained network's test accuracy are not comparable, nor are latencies on different
    accelerators or at different batches.  Accelerators are told apart by name, and by definition
    where one name stands for several (a YAML named like a preset); a run that records no
    definition then stands apart."""
    shared = shared_names(runs)
    return {id(r): (r.accuracy_label, r.accelerator_name or "",
                    r.accelerator_definition if r.accelerator_name in shared else "", r.hw_batch or 1)
            for r in runs}


def _plotted(run: Run) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in (run.accuracy, run.latency_us))


def pareto_front(runs: Sequence[Run]) -> List[Run]:
    """Runs no other run of the same front (``front_keys``) beats on both accuracy (higher) and
    latency (lower); runs without a finite accuracy and latency are on no front.  Sorted by front,
    then latency."""
    keys = front_keys(runs)
    points = [r for r in runs if _plotted(r)]
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
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
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
    out = [f"## {run.name} ({run.kind})", "", f"Directory: `{run.path}`", ""]
    keys = SEARCH_KEYS if run.kind == "search" else TRAIN_KEYS
    shown = [(k, run.config[k]) for k in keys if k in run.config]
    if shown:
        out += ["Config: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in shown), ""]
    if run.kind == "train" and run.spec is not None:
        searched = {k: run.spec.provenance[k] for k in ("search_space", "accelerator", "lambda_latency",
                                                          "beta_utilization", "stage", "seed")
                    if k in run.spec.provenance}
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
            out += [f"![{run.name} {key}]({figures[key]})", ""]
    for note in run.notes:
        out += [f"> {note}", ""]
    return out


def write_report(runs: Sequence[Run], out_dir, plots: bool = True) -> Dict[str, Any]:
    """REPORT_DIR/report.md (+ PNGs when matplotlib is importable); returns the files written."""
    from .runtime import make_run_dir
    out_dir = make_run_dir(Path(out_dir))     # an --out that is a file: a message naming --out, not errno 17
    figures: Dict[str, Dict[str, str]] = {r.name: {} for r in runs}
    stems = _figure_stems(runs)
    front = pareto_front(runs)
    pngs: List[str] = []
    plot_note = ""
    if plots:
        plt = _pyplot()
        if plt is None:
            plot_note = "No figures: matplotlib is not installed (pip install 'ubnas[plot]')."
        else:
            for run in runs:
                figures[run.name] = run_figures(plt, run, out_dir, stems[run.name])
                pngs += list(figures[run.name].values())
            if any(_plotted(r) for r in runs):
                pngs.append(pareto_figure(plt, runs, front, out_dir))
    lines = ["# ubnas report", "", f"{len(runs)} run(s). Latency and utilization are the exact cost of "
             f"each run's exported network (hwmodels, systolic model) at the batch of the batch column "
             f"(the batch its search costed it at, or --hw-batch).", ""]
    summary = [(r.name, r.kind, None if r.accuracy is None else round(100 * r.accuracy, 2),
                r.latency_us, None if r.utilization is None else 100 * r.utilization, r.params,
                r.accelerator_name, r.hw_batch, "yes" if r in front else "")
               for r in runs]
    lines += _table(("run", "kind", "accuracy %", "latency us", "utilization %", "params", "accelerator",
                     "batch", "Pareto"), summary) + [""]
    keys = front_keys(runs)
    if len({keys[id(r)] for r in runs if _plotted(r)}) > 1:
        lines += ["Pareto: one front per kind of accuracy, accelerator and batch (they are not comparable).",
                  ""]
    for name, named in sorted(shared_names(runs).items()):
        lines += [f"> Accelerators of different definitions share the name {name!r} (runs "
                  f"{', '.join(r.name for r in named)}): each definition has its own front"
                  + (", and a run that records none stands apart" if not all(r.accelerator_definition for r in named)
                     else "") + ".", ""]
    if "pareto.png" in [Path(p).name for p in pngs]:
        lines += ["![accuracy vs latency](pareto.png)", ""]
    if plot_note:
        lines += [f"> {plot_note}", ""]
    for run in runs:
        lines += run_markdown(run, figures[run.name])
    report = out_dir / "report.md"
    atomic_write_text(report, "\n".join(lines).rstrip() + "\n")
    return {"report": str(report), "figures": [str(out_dir / p) for p in pngs]}


# -- figures (matplotlib, optional) ----------------------------------------------------------------
def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or None if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "run"


def _figure_stems(runs: Sequence[Run]) -> Dict[str, str]:
    """Run name -> a file-name stem no other run has ('x y' and 'x_y' both sanitise to x_y)."""
    taken: set = set()   # lower case: a case-insensitive file system would merge them too
    return {run.name: _unique(_safe(run.name), taken, str.lower) for run in runs}


def _save(plt, fig, out_dir: Path, filename: str) -> str:
    import os
    tmp = out_dir / f".{filename}.tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out_dir / filename)
    return filename


def _series(rows: List[dict], key: str):
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            epoch = row.get("epoch")
            xs.append(epoch if isinstance(epoch, (int, float)) else i + 1)
            ys.append(float(value))
    return xs, ys


def run_figures(plt, run: Run, out_dir: Path, stem: str) -> Dict[str, str]:
    """STEM_curves.png (loss, accuracy, and latency/utilization of a search) and STEM_layers.png
    (STEM: from ``_figure_stems``, unique among the report's runs)."""
    files: Dict[str, str] = {}
    held_out = "val" if run.kind == "search" else "test"
    panels = [("loss", [("train_loss", "train"), (f"{held_out}_loss", held_out)]),
              ("accuracy", [("train_acc", "train"), (f"{held_out}_acc", held_out)]),
              ("latency (us, smooth cost)", [("latency_us", "supernet"), ("derived_latency_us", "derived")]),
              ("utilization (smooth cost)", [("utilization", None)])]
    panels = [(title, [(k, label) for k, label in keys if _series(run.curves, k)[0]])
              for title, keys in panels]
    panels = [p for p in panels if p[1]]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.9), squeeze=False)
        for ax, (title, keys) in zip(axes[0], panels):
            for key, label in keys:
                xs, ys = _series(run.curves, key)
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
            if title == "utilization (smooth cost)":
                ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{100 * v:.1f}%"))
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if any(label for _, label in keys):
                ax.legend(fontsize=8)
        fig.suptitle(f"{run.name} ({run.kind})", fontsize=11)
        fig.tight_layout()
        files["curves"] = _save(plt, fig, out_dir, f"{stem}_curves.png")
    if run.cost is not None and run.cost.layers:
        layers = run.cost.layers
        names = [c.name for c in layers]
        util = [100 * c.utilization for c in layers]
        lat = [c.seconds * 1e6 for c in layers]
        height = max(2.5, 0.26 * len(layers) + 1.2)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, height), sharey=True)
        y = list(range(len(layers)))
        ax1.barh(y, util, color="tab:blue")
        ax1.set_yticks(y)
        ax1.set_yticklabels(names, fontsize=7)
        ax1.invert_yaxis()
        ax1.set_xlabel("utilization (%)")
        ax1.set_xlim(0, min(100.0, max(util) * 1.3) or 1.0)     # small figures stay readable
        for yi, value in zip(y, util):
            ax1.annotate(f"{value:.2f}", (value, yi), xytext=(2, 0), textcoords="offset points",
                         va="center", fontsize=6)
        total = run.cost
        ax1.axvline(100 * total.utilization, color="k", ls="--", lw=1,
                    label=f"network {100 * total.utilization:.2f} %")
        ax1.legend(fontsize=8, loc="lower right")
        ax2.barh(y, lat, color="tab:orange")
        ax2.set_xlabel("latency (us)")
        for yi, value in zip(y, lat):
            ax2.annotate(f"{value:.2f}", (value, yi), xytext=(2, 0), textcoords="offset points",
                         va="center", fontsize=6)
        ax2.set_xlim(0, max(lat) * 1.15 or 1.0)
        for ax in (ax1, ax2):
            ax.grid(axis="x", alpha=0.3)
        a = total.accelerator
        fig.suptitle(f"{run.name}: exported network on {a.name} ({a.array_rows}x{a.array_cols}), "
                     f"{total.seconds * 1e6:.1f} us", fontsize=10)
        fig.tight_layout()
        files["layers"] = _save(plt, fig, out_dir, f"{stem}_layers.png")
    return files


def pareto_figure(plt, runs: Sequence[Run], front: Sequence[Run], out_dir: Path) -> str:
    """pareto.png: accuracy against exact latency of every run, the Pareto front joined."""
    fig, ax = plt.subplots(figsize=(5.6, 4))
    # by the kind of accuracy, not of run: a train run without a test accuracy shows its supernet's
    styles = {SEARCH_ACCURACY: ("o", "tab:blue", "search (supernet val acc)"),
              TEST_ACCURACY: ("s", "tab:green", "trained (test acc)")}
    for kind, (marker, color, label) in styles.items():
        pts = [r for r in runs if r.accuracy_label == kind and _plotted(r)]
        if pts:
            ax.scatter([r.latency_us for r in pts], [100 * r.accuracy for r in pts], marker=marker,
                       color=color, label=label, zorder=3)
            for r in pts:
                ax.annotate(r.name, (r.latency_us, 100 * r.accuracy), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
    labelled = False
    keys = front_keys(runs)
    for key in sorted({keys[id(r)] for r in front}):   # one front per kind of accuracy, accelerator, batch
        line = [r for r in front if keys[id(r)] == key]
        if len(line) > 1:
            ax.step([r.latency_us for r in line], [100 * r.accuracy for r in line], where="post",
                    color="gray", ls="--", lw=1, label=None if labelled else "Pareto fronts", zorder=2)
            labelled = True
    ax.margins(0.12)
    batches = sorted({r.hw_batch for r in runs if _plotted(r)}, key=lambda b: b or 0)
    ax.set_xlabel("latency (us, exact, " + (f"batch {batches[0]})" if len(batches) == 1
                                            else "each run's batch)"))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs latency", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, out_dir, "pareto.png")
