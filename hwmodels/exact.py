"""Exact cycle and utilization model of GEMM-lowered layers on systolic arrays.

Two modes:

``uboost``  U-Boost NAS's weight-stationary model, kept as the baseline: the
            K x N weight matrix is cut into ceil(K/R) x ceil(N/C) tiles, each
            streams M rows; cycles = ceil(K/R) * ceil(N/C) * M on one R x C
            array, utilization = MACs / (cycles * R * C).  No fill/drain, no
            weight loading, no memory bound, and one array: num_arrays and
            the dataflow are ignored (``mode_pes`` is R * C).
``systolic`` the fold structure a cycle-level simulator (SCALE-Sim) counts per
            dataflow.  A fold maps an R x C block of the stationary operand on
            the array and streams T rows through it; it costs
            R + C + T - 2 cycles for T to stream and R + C - 2 for the skewed
            pipeline to fill and drain, plus R to load the stationary
            operand in ws and is (os accumulates in place: nothing to load):

                dataflow  stationary  folds                    streamed T  fold cycles
                ws        weights     ceil(K/R) * ceil(N/C)    M           2R + C + M - 2
                os        outputs     ceil(M/R) * ceil(N/C)    K           R + C + K - 2
                is        inputs      ceil(K/R) * ceil(M/C)    N           2R + C + N - 2

            This is SCALE-Sim 3.0.0's count on every one of ~900 layers we
            checked, except that its 'Total Cycles' is the index of the last
            cycle (one less per simulated GEMM) and its partial folds pad to
            the full array, as here.

            Several arrays take folds in rounds (ceil(folds / arrays)); the
            layer is bounded below by its off-chip traffic, bytes / bandwidth,
            with double buffering assumed so compute and transfers overlap.

Calibration parameters (see ``Calibration``) enter both modes the same way:
compute = cycle_scale * rounds * (fold_cycles + fold_overhead_cycles), and
cycles = max(compute, memory) + layer_overhead_cycles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Sequence

from .accelerator import Accelerator, as_accelerator
from .layers import Gemm, Layer

MODES = ("uboost", "systolic")


def mode_arrays(acc: Accelerator, mode: str) -> int:
    """Arrays a mode shares folds across: one for 'uboost' (U-Boost's model knows one array),
    num_arrays for 'systolic'.  Unknown mode: ValueError."""
    if mode not in MODES:
        raise ValueError(f"unknown model mode {mode!r} (expected one of {', '.join(MODES)})")
    return 1 if mode == "uboost" else acc.num_arrays


def above_peak(utilization):
    """Whether ``utilization`` (a number or a numpy array) exceeds 1 beyond float rounding: fewer
    cycles than MACs / PEs, which no array does (a calibration's cycle_scale below 1 can predict it)."""
    return utilization > 1 + 1e-9


def mode_pes(acc: Accelerator, mode: str) -> int:
    """PEs a mode's utilization divides by: R * C * ``mode_arrays`` (one array's for 'uboost', all
    arrays' for 'systolic').  Unknown mode: ValueError."""
    return acc.array_rows * acc.array_cols * mode_arrays(acc, mode)


@dataclass
class LayerCost:
    """Cost of one layer. Cycles are array clock cycles; seconds = cycles / clock_hz.

    utilization = macs / (cycles * PEs), PEs = ``mode_pes(acc, mode)``: all arrays in
    'systolic', one array (R * C) in 'uboost'.  ``lost`` splits the
    idle PE-cycles (cycles * PEs - macs) into partial_tiles, fill_drain,
    idle_arrays, memory_stall and overhead.  The first four count the array's
    geometry before calibration; overhead is the rest (calibration terms and
    rounding), negative when a cycle_scale < 1 takes cycles off that count.
    """

    name: str
    kind: str
    gemm: Gemm
    cycles: float
    compute_cycles: float
    memory_cycles: float
    seconds: float
    macs: int
    utilization: float
    folds: int
    bytes: int
    lost: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "m": self.gemm.m, "k": self.gemm.k,
                "n": self.gemm.n, "repeats": self.gemm.repeats, "cycles": self.cycles,
                "compute_cycles": self.compute_cycles, "memory_cycles": self.memory_cycles,
                "seconds": self.seconds, "macs": self.macs, "utilization": self.utilization,
                "folds": self.folds, "bytes": self.bytes, "lost_pe_cycles": dict(self.lost)}


def fold_geometry(gemm: Gemm, rows: int, cols: int, dataflow: str):
    """(folds along rows, folds along cols, streamed rows T) of one GEMM."""
    if dataflow == "ws":
        return math.ceil(gemm.k / rows), math.ceil(gemm.n / cols), gemm.m
    if dataflow == "os":
        return math.ceil(gemm.m / rows), math.ceil(gemm.n / cols), gemm.k
    if dataflow == "is":
        return math.ceil(gemm.k / rows), math.ceil(gemm.m / cols), gemm.n
    raise ValueError(f"unknown dataflow {dataflow!r} (expected ws, os or is)")


def fill_cycles(rows: int, cols: int, dataflow: str) -> int:
    """Cycles a fold spends beyond streaming: pipeline skew (R + C - 2) and, for
    ws/is, R to load the stationary operand."""
    return rows + cols - 2 + (0 if dataflow == "os" else rows)


def offchip_elements(layer: Layer, acc: Accelerator) -> int:
    """Elements moved off-chip: each tensor once when the layer fits on chip;
    otherwise the streamed operand is re-read once per fold of the other side."""
    inputs, weights, outputs = layer.input_elements(), layer.weight_elements(), layer.output_elements()
    if (inputs + weights + outputs) * acc.bytes_per_element <= acc.onchip_bytes:
        return inputs + weights + outputs
    gemm = layer.lower()
    row_folds, col_folds, _ = fold_geometry(gemm, acc.array_rows, acc.array_cols, acc.dataflow)
    if acc.dataflow == "ws":      # inputs stream once per column fold of weights
        inputs *= col_folds
    elif acc.dataflow == "os":    # a row fold's inputs (R x K) stay on chip; weights stream once per row fold
        weights *= row_folds
    else:                         # is: weights stream once per column fold of inputs
        weights *= col_folds
    return inputs + weights + outputs


def layer_cost(layer: Layer, acc: "Accelerator | str", mode: str = "systolic") -> LayerCost:
    """Exact cost of ``layer`` on ``acc`` (an Accelerator, a preset name or a YAML path) in ``mode``
    ('uboost' or 'systolic')."""
    acc = as_accelerator(acc)
    pes = mode_pes(acc, mode)           # validates mode
    if not hasattr(layer, "lower"):     # a Gemm is what a layer lowers to; GemmLayer is the layer
        raise TypeError(f"expected a ConvLayer, LinearLayer or GemmLayer, got {type(layer).__name__}"
                        + (" (use GemmLayer for a raw matrix product)" if isinstance(layer, Gemm) else ""))
    gemm = layer.lower()
    rows, cols = acc.array_rows, acc.array_cols
    arrays = mode_arrays(acc, mode)
    cal = acc.calibration
    macs = gemm.macs
    if mode == "uboost":
        # Paper's model: weight-stationary tiles, M rows each, nothing else.
        row_folds, col_folds = math.ceil(gemm.k / rows), math.ceil(gemm.n / cols)
        streamed, fill = gemm.m, 0
    else:
        row_folds, col_folds, streamed = fold_geometry(gemm, rows, cols, acc.dataflow)
        fill = fill_cycles(rows, cols, acc.dataflow)
    folds = row_folds * col_folds * gemm.repeats
    rounds = math.ceil(folds / arrays)
    fold_cycles = streamed + fill + cal.fold_overhead_cycles
    compute = cal.cycle_scale * rounds * fold_cycles
    elements = offchip_elements(layer, acc)
    nbytes = elements * acc.bytes_per_element
    memory = 0.0
    if mode == "systolic":
        memory = nbytes / (acc.bandwidth_bytes_per_s * cal.bandwidth_efficiency) * acc.clock_hz
    cycles = max(compute, memory) + cal.layer_overhead_cycles

    # Idle PE-cycles by cause; 'overhead' takes calibration terms and rounding.
    tile_pe_cycles = folds * streamed * rows * cols
    lost = {
        "partial_tiles": float(tile_pe_cycles - macs),
        "fill_drain": float(folds * fill * rows * cols),
        "idle_arrays": float((rounds * arrays - folds) * (streamed + fill) * rows * cols),
        "memory_stall": float(max(0.0, memory - compute) * pes),
    }
    lost["overhead"] = float(cycles * pes - macs - sum(lost.values()))
    return LayerCost(name=layer.name, kind=layer.kind, gemm=gemm, cycles=float(cycles),
                     compute_cycles=float(compute), memory_cycles=float(memory),
                     seconds=cycles / acc.clock_hz, macs=macs,
                     utilization=macs / (cycles * pes) if cycles > 0 else 0.0,
                     folds=folds, bytes=int(nbytes), lost=lost)


@dataclass
class NetworkCost:
    """Per-layer costs and totals; utilization = total MACs / (total cycles * mode_pes(accelerator, mode))."""

    layers: List[LayerCost]
    accelerator: Accelerator
    mode: str

    @property
    def cycles(self) -> float:
        return sum(c.cycles for c in self.layers)

    @property
    def compute_cycles(self) -> float:
        return sum(c.compute_cycles for c in self.layers)

    @property
    def seconds(self) -> float:
        return self.cycles / self.accelerator.clock_hz

    @property
    def macs(self) -> int:
        return sum(c.macs for c in self.layers)

    @property
    def utilization(self) -> float:
        cycles = self.cycles
        return self.macs / (cycles * mode_pes(self.accelerator, self.mode)) if cycles > 0 else 0.0

    def total(self) -> dict:
        return {"cycles": self.cycles, "compute_cycles": self.compute_cycles,
                "seconds": self.seconds, "macs": self.macs, "utilization": self.utilization}

    def as_dict(self) -> dict:
        return {"accelerator": self.accelerator.to_dict(), "mode": self.mode,
                "layers": [c.as_dict() for c in self.layers], "total": self.total()}


def network_cost(layers: Sequence[Layer] | Iterable[Layer], acc: "Accelerator | str",
                 mode: str = "systolic") -> NetworkCost:
    """Exact cost of every layer of a network and its totals (``acc`` as for ``layer_cost``)."""
    acc = as_accelerator(acc)
    return NetworkCost([layer_cost(layer, acc, mode) for layer in layers], acc, mode)
