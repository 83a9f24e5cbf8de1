"""Hardware cost of the supernet under an ArchSample, through ``hwmodels.smooth``.

Every array layer of the supernet (stem, cell preprocessing, each op of each
edge, classifier) is costed at every candidate width (or at the expected width,
``width_cost='soft'``); an op's layers are weighted by its probability times the
widths' (zero, skip and pooling cost nothing, and the weights are not
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
from .spec import strided_size
from .supernet import ArchSample, Supernet

COST_MODELS = ("systolic", "uboost", "flops", "roofline")
WIDTH_COSTS = ("expected", "soft")


def supernet_layers(net: Supernet, arch: ArchSample, batch: int = 1,
                    width_cost: str = "expected") -> Tuple[SoftLayers, torch.Tensor]:
    """All array layers of the supernet and the weight of each.

    width_cost 'soft': each layer at the expected widths sum_j p_j w_j (weight = op
    probability).  'expected': each layer at every candidate width (pair, when input
    and output widths are different variables), weighted by the candidates'
    probabilities times the op probability, so the cost is E[cost(w)] rather than
    cost(E[w]): a mixture of 120 and 136 no longer looks like 128.
    """
    if width_cost not in WIDTH_COSTS:
        raise ValueError(f"unknown width cost {width_cost!r} (expected one of {', '.join(WIDTH_COSTS)})")
    layers: List[SoftLayers] = []
    weights: List[torch.Tensor] = []
    one = next(iter(arch.widths.values())).new_ones(1)

    def values(name):
        """(width values (K,), their probabilities (K,)) of a width variable."""
        width, probs = net.widths[name], arch.widths[name]
        if width_cost == "soft" or width.forced is not None:
            return width.soft_width(probs).reshape(1), one
        return width.widths_tensor(probs), probs

    def pair(src, blocks, dst):
        """Input/output channel counts of a layer from width ``src`` (x blocks) to ``dst``."""
        w_in, p_in = values(src)
        w_out, p_out = values(dst)
        if src == dst:
            return w_in * blocks, w_out, p_out
        return ((w_in * blocks)[:, None].expand(-1, len(w_out)).reshape(-1),
                w_out[None, :].expand(len(w_in), -1).reshape(-1), (p_in[:, None] * p_out[None, :]).reshape(-1))

    def add(items, weight):
        for item in items:
            layers.append(item)
            weights.append(weight.reshape(-1).expand(len(item.m)))

    c_in, h, w = net.input_shape
    k = net.space.stem_kernel
    w_stem, p_stem = values("stem")
    add([soft_conv(h, w, c_in, w_stem, k, 1, k // 2, batch=batch)], p_stem)
    for cell in net.cells:
        s0, s1 = cell.sources
        (h1, w1), (h0, w0) = s1.size, s0.size   # real sizes: a reduce cell on an odd map rounds up
        for (src, hh, ww, stride) in ((s0, h0, w0, s1.scale // s0.scale), (s1, h1, w1, 1)):
            cin, cout, weight = pair(src.width, src.blocks, cell.width_name)
            add([soft_conv(hh, ww, cin, cout, 1, stride, batch=batch)], weight)
        c, p_c = values(cell.width_name)
        out_h, out_w = (strided_size(h1, 2), strided_size(w1, 2)) if cell.reduce else (h1, w1)
        probs = arch.ops[cell.cell_type]
        e = 0
        for i in range(cell.nodes):
            for j in range(2 + i):
                edge = cell.edges[e]
                eh, ew = (h1, w1) if (j < 2) else (out_h, out_w)
                for op, name in enumerate(edge.op_names):
                    add(hw_layers(name, eh, ew, c, c, edge.stride, batch), probs[e, op] * p_c)
                e += 1
    last = net.last
    w_last, p_last = values(last.width)
    add([soft_linear(w_last * last.blocks, net.num_classes, batch)], p_last)
    return SoftLayers.stack(layers), torch.cat(weights)


def supernet_cost(net: Supernet, arch: ArchSample, acc: Accelerator, model: str = "systolic",
                  surrogate: str = "straight_through", temperature: float = 1.0,
                  batch: int = 1, width_cost: str = "expected") -> Dict[str, torch.Tensor]:
    """Expected latency (seconds, cycles) and utilization of the supernet (scalar tensors)."""
    if model not in COST_MODELS:
        raise ValueError(f"unknown cost model {model!r} (expected one of {', '.join(COST_MODELS)})")
    layers, weights = supernet_layers(net, arch, batch, width_cost)
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
