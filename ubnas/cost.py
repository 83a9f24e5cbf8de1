"""Hardware cost of the supernet under an ArchSample, through ``hwmodels.smooth``.

Every array layer of the supernet (stem, cell preprocessing, each op of each
edge, classifier) is costed at the soft widths; an op's layers are weighted by
its probability (zero, skip and pooling cost nothing, and the weights are not
renormalised over the ops that do cost).  Network utilization is the true
figure: expected MACs / (expected cycles * PEs).

Cost models: ``systolic`` and ``uboost`` (hwmodels' exact equations with smooth
ceilings), ``flops`` (every MAC at full utilization: cycles = MACs / PEs) and
``roofline`` (max of that and off-chip bytes / bandwidth).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from hwmodels import Accelerator
from hwmodels.smooth import SoftLayers, network_cost_torch, soft_conv, soft_linear

from .ops import hw_layers
from .supernet import ArchSample, Supernet

COST_MODELS = ("systolic", "uboost", "flops", "roofline")


def supernet_layers(net: Supernet, arch: ArchSample, batch: int = 1) -> Tuple[SoftLayers, torch.Tensor]:
    """All array layers of the supernet and the weight of each (op probability or 1)."""
    layers: List[SoftLayers] = []
    weights: List[torch.Tensor] = []
    one = next(iter(arch.widths.values())).new_ones(())

    def add(items, weight):
        for item in items:
            layers.append(item)
            weights.append(weight.reshape(1))

    soft = {name: w.soft_width(arch.widths[name]) for name, w in net.widths.items()}
    c_in, h, w = net.input_shape
    add([soft_conv(h, w, c_in, soft["stem"], net.space.stem_kernel, 1, net.space.stem_kernel // 2,
                   batch=batch)], one)
    for cell in net.cells:
        c = soft[cell.width_name]
        s0, s1 = cell.sources
        h1, w1 = h // s1.scale, w // s1.scale
        h0, w0 = h // s0.scale, w // s0.scale
        stride0 = s1.scale // s0.scale
        add([soft_conv(h0, w0, soft[s0.width] * s0.blocks, c, 1, stride0, batch=batch),
             soft_conv(h1, w1, soft[s1.width] * s1.blocks, c, 1, 1, batch=batch)], one)
        out_h, out_w = (h1 // 2, w1 // 2) if cell.reduce else (h1, w1)
        probs = arch.ops[cell.cell_type]
        e = 0
        for i in range(cell.nodes):
            for j in range(2 + i):
                edge = cell.edges[e]
                eh, ew = (h1, w1) if (j < 2) else (out_h, out_w)
                for k, name in enumerate(edge.op_names):
                    add(hw_layers(name, eh, ew, c, c, edge.stride, batch), probs[e, k])
                e += 1
    last = net.last
    add([soft_linear(soft[last.width] * last.blocks, net.num_classes, batch)], one)
    return SoftLayers.stack(layers), torch.cat(weights)


def supernet_cost(net: Supernet, arch: ArchSample, acc: Accelerator, model: str = "systolic",
                  surrogate: str = "straight_through", temperature: float = 1.0,
                  batch: int = 1) -> Dict[str, torch.Tensor]:
    """Expected latency (seconds, cycles) and utilization of the supernet (scalar tensors)."""
    if model not in COST_MODELS:
        raise ValueError(f"unknown cost model {model!r} (expected one of {', '.join(COST_MODELS)})")
    layers, weights = supernet_layers(net, arch, batch)
    layers = SoftLayers(**{f: getattr(layers, f).to(weights.dtype) for f in SoftLayers.__dataclass_fields__})
    macs = layers.macs
    if model in ("systolic", "uboost"):
        cycles = network_cost_torch(layers, acc, model, surrogate, temperature)["cycles"]
    else:
        cycles = macs / acc.pes
        if model == "roofline":
            elements = layers.input_elements + layers.weight_elements + layers.output_elements
            memory = elements * acc.bytes_per_element / acc.bandwidth_bytes_per_s * acc.clock_hz
            cycles = torch.maximum(cycles, memory)
    total_cycles = (weights * cycles).sum()
    total_macs = (weights * macs).sum()
    return {"cycles": total_cycles, "seconds": total_cycles / acc.clock_hz, "macs": total_macs,
            "utilization": total_macs / (total_cycles * acc.pes)}
