"""Human- and machine-readable reports of a ``NetworkCost``.

``format_table`` prints one row per layer: name, kind, GEMM shape M/K/N (with
``xG`` for G repeated GEMMs, e.g. depthwise), cycles, latency in microseconds,
utilization in percent (MACs / (cycles * PEs), PEs those of one array in the
``uboost`` mode, of all arrays in ``systolic``: ``exact.mode_pes``), MACs and
the dominant cause of idle PE-cycles, then the totals.  ``to_json_dict`` is ``NetworkCost.as_dict``
(the one source of truth) checked to be JSON-serialisable.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from .exact import LayerCost, NetworkCost, above_peak

LOSS_LABELS = {"partial_tiles": "partial tiles", "fill_drain": "fill/drain",
               "idle_arrays": "idle arrays", "memory_stall": "memory", "overhead": "overhead"}


def dominant_loss(cost: LayerCost) -> str:
    """Label of the largest share of idle PE-cycles, '-' when the array is never idle, 'above peak'
    when a calibration (cycle_scale < 1) predicts fewer cycles than MACs / PEs."""
    if above_peak(cost.utilization):   # negative idle time: no loss is the dominant one
        return "above peak"
    if not cost.lost:
        return "-"
    key, value = max(cost.lost.items(), key=lambda kv: kv[1])
    if value <= 1e-9 * max(cost.macs, 1):   # float noise of the 'overhead' remainder
        return "-"
    return LOSS_LABELS.get(key, key)


def _shape(cost: LayerCost) -> str:
    g = cost.gemm
    text = f"{g.m}/{g.k}/{g.n}"
    return text if g.repeats == 1 else f"{text}x{g.repeats}"


def _macs(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def format_table(net_cost: NetworkCost, batch: Optional[int] = None) -> str:
    """A fixed-width text table of every layer plus a totals line (ends with a newline); ``batch``,
    when given, is named in the title (the latencies are of that many images)."""
    acc = net_cost.accelerator
    header = ("layer", "kind", "M/K/N", "cycles", "latency us", "util %", "MACs", "dominant loss")
    rows: List[tuple] = []
    for c in net_cost.layers:
        rows.append((c.name, c.kind, _shape(c), f"{c.cycles:,.0f}", f"{c.seconds * 1e6:.3f}",
                     f"{100 * c.utilization:.2f}", _macs(c.macs), dominant_loss(c)))
    total = net_cost.total()
    rows.append(("TOTAL", "", f"{len(net_cost.layers)} layers", f"{total['cycles']:,.0f}",
                 f"{total['seconds'] * 1e6:.3f}", f"{100 * total['utilization']:.2f}",
                 _macs(total["macs"]), ""))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    left = {0, 1, 2, 7}

    def line(cells) -> str:
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(header))
    title = (f"{acc.name}: {acc.num_arrays} x {acc.array_rows}x{acc.array_cols} {acc.dataflow} "
             f"@ {acc.clock_hz / 1e6:g} MHz, {acc.bandwidth_bytes_per_s / 1e9:g} GB/s; "
             f"model {net_cost.mode}"
             + (" (one array)" if net_cost.mode == "uboost" and acc.num_arrays > 1 else "")
             + (f"; batch {batch}" if batch is not None else ""))
    out = [title, line(header), rule] + [line(r) for r in rows[:-1]] + [rule, line(rows[-1])]
    out.append(f"total: latency {total['seconds'] * 1e6:.3f} us, utilization "
               f"{100 * total['utilization']:.2f} %, {total['macs']:,} MACs, "
               f"{total['cycles']:,.0f} cycles ({total['compute_cycles']:,.0f} compute)")
    over = [c for c in net_cost.layers if above_peak(c.utilization)]
    if over:
        out.append(f"note: {len(over)} layer(s) above 100 % utilization (fewer cycles than MACs / PEs, which no "
                   f"array does): the calibration's cycle_scale {acc.calibration.cycle_scale:g} was fitted on "
                   f"layers that keep the array less busy than these; check it against larger layers")
    return "\n".join(out) + "\n"


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"cost report: {where} is {value}, not JSON-representable")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def to_json_dict(net_cost: NetworkCost) -> Dict[str, Any]:
    """``{"accelerator", "mode", "layers": [...], "total": {...}}`` as in NetworkCost.as_dict."""
    data = net_cost.as_dict()
    _check_finite(data, "cost")
    return data
