"""Figures of ``ubnas report`` (matplotlib, optional): each run's curves and per-layer cost, and
accuracy against latency over all runs with their Pareto fronts.  ``ubnas.report`` reads the runs
and writes the Markdown; this module only draws, to PNG files written atomically."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from hwmodels.yamlio import png_metadata

from .report import (PARETO_FIGURE, SEARCH_ACCURACY, STEM_CHARS, TEST_ACCURACY, Run, front_keys, plotted,
                     run_figure, unique_name)


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or None if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams["text.parse_math"] = False   # run names are text: 'lam_$x$' is no formula
    return plt


def _safe(name: str) -> str:
    return re.sub(rf"[^{STEM_CHARS}]+", "_", name).strip("._") or "run"


def figure_stems(runs: Sequence[Run]) -> Dict[str, str]:
    """Run name -> a file-name stem no other run has ('x y' and 'x_y' both sanitise to x_y)."""
    taken: set = set()   # lower case: a case-insensitive file system would merge them too
    return {run.name: unique_name(_safe(run.name), taken, str.lower) for run in runs}


def _save(plt, fig, out_dir: Path, filename: str) -> str:
    tmp = out_dir / f".{filename}.tmp.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata=png_metadata("report"))
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
    (STEM: from ``figure_stems``, unique among the report's runs)."""
    files: Dict[str, str] = {}
    held_out = "val" if run.kind == "search" else "test"
    panels = [("loss", [("train_loss", "train"), (f"{held_out}_loss", held_out)]),
              ("accuracy", [("train_acc", "train"), (f"{held_out}_acc", held_out)]),
              # the derived network's series is the cost model with exact ceilings (what a target bounds)
              ("latency (us)", [("latency_us", "supernet (smooth)"), ("derived_latency_us", "derived (exact)")]),
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
        files["curves"] = _save(plt, fig, out_dir, run_figure(stem, "curves"))
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
        a = total.accelerator   # the arrays and the batch: two runs' layer figures compare only alike
        arrays = f"{a.array_rows}x{a.array_cols}"
        arrays = f"{a.num_arrays} x {arrays}" if a.num_arrays > 1 else arrays
        fig.suptitle(f"{run.name}: exported network on {a.name} ({arrays}), batch {run.hw_batch or 1}, "
                     f"{total.seconds * 1e6:.1f} us", fontsize=10)
        fig.tight_layout()
        files["layers"] = _save(plt, fig, out_dir, run_figure(stem, "layers"))
    return files


def _machine_labels(runs: Sequence[Run], keys: Dict[int, tuple]) -> Dict[tuple, str]:
    """The machine part of each plotted run's front key (accelerator name, definition, batch) -> a
    legend label: the name, told apart by a number where one name stands for several definitions,
    and the batch where the runs are at several."""
    machines = sorted({keys[id(r)][1:] for r in runs if plotted(r)})
    batches = {batch for _, _, batch in machines}
    labels = {}
    for name, definition, batch in machines:
        alike = [m for m in machines if m[0] == name and m[2] == batch]
        label = (name or "unrecorded accelerator") + (f" #{alike.index((name, definition, batch)) + 1}"
                                                       if len(alike) > 1 else "")
        labels[(name, definition, batch)] = label + (f", batch {batch}" if len(batches) > 1 else "")
    return labels


def pareto_figure(plt, runs: Sequence[Run], front: Sequence[Run], out_dir: Path,
                  keys: Optional[Dict[int, tuple]] = None) -> str:
    """pareto.png: accuracy against exact latency of every run, each Pareto front joined.  The
    marker says the kind of accuracy; where the runs are on several machines (accelerators or
    batches), the colour says which, since their latencies do not compare.  ``keys``: ``front_keys``
    of ``runs`` (computed when not given)."""
    keys = front_keys(runs) if keys is None else keys
    fig, ax = plt.subplots(figsize=(5.6, 4))
    # by the kind of accuracy, not of run: a train run without a test accuracy shows its supernet's
    styles = {SEARCH_ACCURACY: ("o^v<>", "tab:blue", "search (supernet val acc)"),
              TEST_ACCURACY: ("sDPXd", "tab:green", "trained (test acc)")}
    machines = _machine_labels(runs, keys)
    several = len(machines) > 1
    palette = plt.rcParams["axes.prop_cycle"].by_key().get("color") or ["C0"]
    colour = {m: palette[i % len(palette)] for i, m in enumerate(machines)}
    data_sets = sorted({keys[id(r)][0][1] for r in runs if plotted(r)})   # a marker shape each, where several
    for (kind, data), (markers, kind_colour, kind_label) in (((k, d), styles[k]) for k in styles for d in data_sets):
        marker = markers[data_sets.index(data) % len(markers)]
        label = kind_label + (f", {data or 'unrecorded data'}" if len(data_sets) > 1 else "")
        for machine, machine_label in machines.items():
            pts = [r for r in runs if keys[id(r)][0] == (kind, data) and plotted(r) and keys[id(r)][1:] == machine]
            if not pts:
                continue
            ax.scatter([r.latency_us for r in pts], [100 * r.accuracy for r in pts], marker=marker,
                       color=colour[machine] if several else kind_colour,
                       label=f"{label}, {machine_label}" if several else label, zorder=3)
            for r in pts:
                ax.annotate(r.name, (r.latency_us, 100 * r.accuracy), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
    labelled = False
    for key in sorted({keys[id(r)] for r in front}):   # one front per kind of accuracy, accelerator, batch
        line = [r for r in front if keys[id(r)] == key]
        if len(line) > 1:
            ax.step([r.latency_us for r in line], [100 * r.accuracy for r in line], where="post",
                    color=colour[key[1:]] if several else "gray", ls="--", lw=1,
                    label=None if labelled or several else "Pareto fronts", zorder=2)
            labelled = True
    if labelled and several:   # the legend's entry in neutral grey, not the first machine's colour
        ax.plot([], [], color="gray", ls="--", lw=1, label="Pareto fronts (dashed, in their machine's colour)")
    ax.margins(0.12)
    batches = sorted({r.hw_batch for r in runs if plotted(r)}, key=lambda b: b or 0)
    ax.set_xlabel("latency (us, exact, " + (f"batch {batches[0]})" if len(batches) == 1
                                            else "each run's batch)"))
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs latency", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, out_dir, PARETO_FIGURE)
