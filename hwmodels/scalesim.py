"""Optional adapter to SCALE-Sim 3.0.0, the cycle-level reference simulator.

Install with ``pip install "ubnas[scalesim]"`` (SCALE-Sim 3.0.0 needs numpy < 2.3).
Every layer is written as a one-layer topology with a config file into a work
directory, simulated through SCALE-Sim's Python API and read back from its
COMPUTE_REPORT.csv.  All counts are in cycles of one R x C array.

How layers are represented (SCALE-Sim has no padding, groups, dilation or batch):

* conv, batch 1: a conv topology row on the *padded* ifmap, cropped to the extent
  the conv reads: H = (out_h - 1)*stride + kernel_h (<= in_h + 2*pad_h), same for W.
  SCALE-Sim has no padding field, and its ofmap is ceil((H - R)/stride) + 1, which
  for (H - R) % stride != 0 is one row/col more than torch's floor.
* groups g > 1 (depthwise included): g identical convs of in_channels/g inputs and
  out_channels/g filters -- what SCALE-Sim's own "DP" topology expansion does.  One
  group is simulated and its cycles are multiplied by g (= the sum over the g runs).
* conv with batch > 1, dilation > 1 or unequal strides (SCALE-Sim's conv rows
  have none of these), LinearLayer, GemmLayer: a GEMM-mode row (M, N, K) with
  M = batch*out_h*out_w (resp. batch), K = window (per group), N = outputs (per
  group), once per group.  Compute cycles depend only on (M, K, N): on SCALE-Sim
  3.0.0 a GEMM row and a conv row with the same (M, K, N) give the same compute
  cycles (checked for ws, os and is on 4x4, 4x8 and 8x4 arrays with dilated,
  unequal-stride and grouped convs, tests/test_cal_scalesim_rows.py); GEMM mode
  does not model im2col reuse in memory, which only the memory side would see.

Stall-free compute cycles (large SRAM, CALC bandwidth mode), with F = folds:
  ws: ceil(K/R)*ceil(N/C)*(2R + C + M - 2) - 1
  os: ceil(M/R)*ceil(N/C)*(R + C + K - 2) - 1
  is: ceil(K/R)*ceil(M/C)*(2R + C + N - 2) - 1
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import List, Optional

from .layers import ConvLayer, GemmLayer, LinearLayer

DEFAULT_SRAM_KB = 64 * 1024  # per operand buffer; large enough for no ofmap-drain stalls


@dataclass
class ScaleSimReport:
    """SCALE-Sim's numbers for one input layer (cycles; fractions in 0..1).

    compute_cycles = total_cycles - stall_cycles; for a grouped conv all three are
    summed over the groups.
    """

    name: str
    total_cycles: int
    stall_cycles: int
    compute_cycles: int
    overall_utilization: float
    mapping_efficiency: float


def _import_scalesim():
    try:
        from scalesim.scale_sim import scalesim
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('SCALE-Sim is not installed: pip install "ubnas[scalesim]" '
                          '(scalesim==3.0.0 with numpy<2.3)') from exc
    return scalesim


def _topology_row(layer):
    """Return (gemm_mode, csv_row, groups) for one layer of hwmodels.layers."""
    if isinstance(layer, ConvLayer):
        g = layer.groups
        # SCALE-Sim 3.0.0's conv rows have batch 1, no dilation and one stride for both axes:
        # otherwise simulate the conv's GEMM (B*Ho*Wo rows), which has the same compute cycles
        if layer.batch > 1 or layer.dilation != (1, 1) or layer.stride[0] != layer.stride[1]:
            gemm = layer.lower()
            return True, f"L,{gemm.m},{gemm.n},{gemm.k},", g
        # Padded ifmap, cropped to the rows/cols the conv reads: SCALE-Sim's ofmap is
        # ceil((H - R) / stride) + 1, one more than torch's when (H - R) % stride != 0.
        h = (layer.out_h - 1) * layer.stride[0] + layer.kernel_h
        w = (layer.out_w - 1) * layer.stride[1] + layer.kernel_w
        return False, (f"L,{h},{w},{layer.kernel_h},{layer.kernel_w},"
                       f"{layer.in_channels // g},{layer.out_channels // g},{layer.stride[0]},"), g
    if isinstance(layer, (LinearLayer, GemmLayer)):
        gemm = layer.lower()
        return True, f"L,{gemm.m},{gemm.n},{gemm.k},", gemm.repeats
    raise TypeError(f"unsupported layer type {type(layer).__name__}")


def _config_text(rows, cols, dataflow, sram_kb, bandwidth):
    """SCALE-Sim .cfg text. bandwidth None -> CALC mode (no read stalls)."""
    mode = "CALC" if bandwidth is None else "USER"
    bw = 10 if bandwidth is None else int(bandwidth)
    return f"""[general]
run_name = run

[run_presets]
InterfaceBandwidth = {mode}
UseRamulatorTrace = False

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = {sram_kb}
FilterSramSzkB = {sram_kb}
OfmapSramSzkB = {sram_kb}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Bandwidth = {bw}
Dataflow = {dataflow}
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = {bw}
IfmapSRAMBankNum = 1
IfmapSRAMBankPort = 2
FilterCustomLayout = False
FilterSRAMBankBandwidth = {bw}
FilterSRAMBankNum = 1
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40
"""


def _run_one(scalesim_cls, directory, gemm_mode, row, config_text):
    """Simulate one topology row in ``directory``; return the COMPUTE_REPORT fields."""
    os.makedirs(directory, exist_ok=True)
    cfg, topo, layout = (os.path.join(directory, f) for f in ("scale.cfg", "topo.csv", "layout.csv"))
    with open(cfg, "w") as handle:
        handle.write(config_text)
    header = "Layer,M,N,K," if gemm_mode else \
        "Layer,IFMAP Height,IFMAP Width,Filter Height,Filter Width,Channels,Num Filter,Strides,"
    with open(topo, "w") as handle:
        handle.write(header + "\n" + row + "\n")
    with open(layout, "w") as handle:  # SCALE-Sim always opens a layout file; header only
        handle.write("Layer name,\n")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy array-to-int in scalesim
        sim = scalesim_cls(save_disk_space=True, verbose=False, config=cfg, topology=topo,
                           layout=layout, input_type_gemm=gemm_mode)
        sim.run_scale(top_path=directory)
    with open(os.path.join(directory, "run", "COMPUTE_REPORT.csv")) as handle:
        records = list(csv.reader(handle, skipinitialspace=True))
    fields = dict(zip([h.strip() for h in records[0]], records[1]))
    return (int(float(fields["Total Cycles"])), int(float(fields["Stall Cycles"])),
            float(fields["Overall Util %"]) / 100.0, float(fields["Mapping Efficiency %"]) / 100.0)


def run_scalesim(layers: list, accelerator, workdir: Optional[str] = None,
                 sram_kb: Optional[int] = None, bandwidth_words_per_cycle: Optional[int] = None,
                 progress: bool = False) -> List[ScaleSimReport]:
    """Simulate ``layers`` on one array of ``accelerator`` with SCALE-Sim, one report each.

    accelerator: uses array_rows, array_cols and dataflow (num_arrays is ignored: SCALE-Sim
    3.0.0 models a single array).  sram_kb: size of each of the ifmap/filter/ofmap SRAMs in
    KiB (default 64 MiB, no ofmap-drain stalls).  bandwidth_words_per_cycle: DRAM words per
    cycle of each operand interface (USER mode, stalls when too low); None = SCALE-Sim's
    CALC mode, where reads never stall, so total_cycles == compute_cycles.
    workdir: where topology/config/report files go (default: a temporary directory).
    """
    for name, value in (("sram_kb", sram_kb), ("bandwidth_words_per_cycle", bandwidth_words_per_cycle)):
        # SCALE-Sim's config holds whole numbers: 0.5 would have become 0 words per cycle
        if value is not None and (isinstance(value, bool) or not float(value).is_integer() or value < 1):
            raise ValueError(f"run_scalesim: {name} expected a whole number >= 1 (SCALE-Sim's config holds "
                             f"integers), got {value!r}")
    scalesim_cls = _import_scalesim()
    config_text = _config_text(accelerator.array_rows, accelerator.array_cols, accelerator.dataflow,
                               int(sram_kb or DEFAULT_SRAM_KB), bandwidth_words_per_cycle)
    rows = [_topology_row(layer) for layer in layers]  # validate everything before running
    iterator = zip(layers, rows)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(list(iterator), desc="scalesim", unit="layer")
    reports = []
    with contextlib.ExitStack() as stack:
        root = workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="scalesim_"))
        for index, (layer, (gemm_mode, row, groups)) in enumerate(iterator):
            total, stall, util, mapping = _run_one(scalesim_cls, os.path.join(root, f"layer{index}"),
                                                   gemm_mode, row, config_text)
            reports.append(ScaleSimReport(name=layer.name, total_cycles=total * groups,
                                          stall_cycles=stall * groups,
                                          compute_cycles=(total - stall) * groups,
                                          overall_utilization=util, mapping_efficiency=mapping))
    return reports
