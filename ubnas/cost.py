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

import functools
import weakref
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from hwmodels import Accelerator
from hwmodels.exact import MODES, mode_pes
from hwmodels.smooth import SoftLayers, network_cost_torch, soft_conv, soft_linear

from .ops import hw_layers
from .spec import strided_size
from .supernet import ArchSample, Supernet

COST_MODELS = ("systolic", "uboost", "flops", "roofline")
WIDTH_COSTS = ("expected", "soft")


FIELDS = tuple(SoftLayers.__dataclass_fields__)


@dataclass
class LayerTable:
    """The supernet's array layers for one state of its width windows, as columns of L rows.

    Field f of layer l is ``coef[0, l, f] + coef[1, l, f] c_in + coef[2, l, f] c_out +
    coef[3, l, f] c_in c_out``, with ``c_in = in_scale[l] * widths[in_slot[l]]`` and
    ``c_out = widths[out_slot[l]]``; the layer's weight is the product of
    ``probs[factor[l, :]]``.  ``widths`` and ``probs`` are flat vectors assembled per step
    (``_flat``), so a step costs a few dozen tensor ops however many layers the supernet has.
    """

    coef: torch.Tensor        # (4, L, 7) float64
    in_scale: torch.Tensor    # (L,) float64
    in_slot: torch.Tensor     # (L,) long
    out_slot: torch.Tensor    # (L,) long
    factor: torch.Tensor      # (L, 3) long

    def to(self, device: torch.device, dtype: torch.dtype) -> "LayerTable":
        return LayerTable(self.coef.to(device, dtype), self.in_scale.to(device, dtype), self.in_slot.to(device),
                          self.out_slot.to(device), self.factor.to(device))


@functools.lru_cache(maxsize=4096)
def _bilinear(make, *args) -> torch.Tensor:
    """Coefficients (4, n, 7) of the n layers ``make(*args, c_in, c_out)`` returns, each field
    a + b c_in + c c_out + d c_in c_out (checked at a further point: every layer of the op
    registry and of hwmodels.smooth is bilinear in its two channel counts)."""
    def at(c_in, c_out):
        one = torch.ones(1, dtype=torch.float64)
        layers = make(*args, c_in * one, c_out * one)
        return torch.stack([torch.cat([getattr(layer, f).reshape(1) for f in FIELDS]) for layer in layers]) \
            if layers else torch.zeros(0, len(FIELDS), dtype=torch.float64)
    f00, f10, f01, f11 = at(0.0, 0.0), at(1.0, 0.0), at(0.0, 1.0), at(1.0, 1.0)
    coef = torch.stack([f00, f10 - f00, f01 - f00, f11 - f10 - f01 + f00])
    check = coef[0] + 3 * coef[1] + 5 * coef[2] + 15 * coef[3]
    if not torch.allclose(check, at(3.0, 5.0), rtol=1e-12, atol=0):
        raise AssertionError(f"{make.__name__}{args}: layer fields are not bilinear in the channel counts")
    return coef


def _stem(h, w, c_img, kernel, batch, c_in, c_out):
    return [soft_conv(h, w, c_img, c_out, kernel, 1, kernel // 2, batch=batch)]


def _preprocess(h, w, stride, batch, c_in, c_out):
    return [soft_conv(h, w, c_in, c_out, 1, stride, batch=batch)]


def _op(name, h, w, stride, batch, c_in, c_out):
    return hw_layers(name, h, w, c_in, c_out, stride, batch)


def _classifier(classes, batch, c_in, c_out):
    return [soft_linear(c_in, classes, batch)]


def _window_state(net: Supernet, width_cost: str) -> tuple:
    return width_cost, tuple((name, w.lo, w.step, w.count, w.forced) for name, w in net.widths.items())


def _expanded(width, width_cost: str) -> bool:
    """Costed at each candidate (weights: their probabilities), or at one value (soft or forced width)."""
    return width_cost == "expected" and width.forced is None


def build_layer_table(net: Supernet, batch: int, width_cost: str) -> LayerTable:
    """The LayerTable of ``net``'s current windows: stem, cell preprocessing, every op of every
    edge (``ubnas.ops.hw_layers``), classifier; rows in that order, each layer's width variants
    next to each other."""
    w_slots, p_slots = {}, {}
    op_offset, p_next = {}, 0
    for cell_type, logits in net.op_logits.items():
        op_offset[cell_type], p_next = p_next, p_next + logits.numel()
    w_next = 0
    for name, width in net.widths.items():
        expanded = _expanded(width, width_cost)
        k = width.count if expanded else 1
        w_slots[name] = list(range(w_next, w_next + k))
        w_next += k
        if expanded:
            p_slots[name] = list(range(p_next, p_next + k))
            p_next += k
    one = p_next   # the constant 1 at the end of the flat probabilities

    def slots(name):
        return list(zip(w_slots[name], p_slots.get(name, [one] * len(w_slots[name]))))

    coefs, in_scale, in_slot, out_slot, factor = [], [], [], [], []

    def add(coef, src, blocks, dst, op_factor=one):
        """Rows for the layers ``coef`` from width ``src`` (x blocks, or None: a constant) to ``dst``."""
        if src is None:
            pairs = [(0, 0.0, w, one, p) for w, p in slots(dst)]
        elif dst is None:
            pairs = [(w, blocks, 0, p, one) for w, p in slots(src)]
        elif src == dst:
            pairs = [(w, blocks, w, p, one) for w, p in slots(src)]
        else:
            pairs = [(wi, blocks, wo, pi, po) for wi, pi in slots(src) for wo, po in slots(dst)]
        for layer in range(coef.shape[1]):
            for w_in, scale, w_out, p_in, p_out in pairs:
                coefs.append(coef[:, layer])
                in_scale.append(scale)
                in_slot.append(w_in)
                out_slot.append(w_out)
                factor.append((op_factor, p_in, p_out))

    c_img, h, w = net.input_shape
    add(_bilinear(_stem, h, w, c_img, net.space.stem_kernel, batch), None, 1, "stem")
    for cell in net.cells:
        s0, s1 = cell.sources
        (h1, w1), (h0, w0) = s1.size, s0.size   # real sizes: a reduce cell on an odd map rounds up
        for src, hh, ww, stride in ((s0, h0, w0, s1.scale // s0.scale), (s1, h1, w1, 1)):
            add(_bilinear(_preprocess, hh, ww, stride, batch), src.width, src.blocks, cell.width_name)
        out_h, out_w = (strided_size(h1, 2), strided_size(w1, 2)) if cell.reduce else (h1, w1)
        e = 0
        for i in range(cell.nodes):
            for j in range(2 + i):
                edge = cell.edges[e]
                eh, ew = (h1, w1) if j < 2 else (out_h, out_w)
                for op, name in enumerate(edge.op_names):
                    add(_bilinear(_op, name, eh, ew, edge.stride, batch), cell.width_name, 1, cell.width_name,
                        op_offset[cell.cell_type] + e * len(edge.op_names) + op)
                e += 1
    last = net.last
    add(_bilinear(_classifier, net.num_classes, batch), last.width, last.blocks, None)
    return LayerTable(torch.stack(coefs, 1), torch.tensor(in_scale, dtype=torch.float64),
                      torch.tensor(in_slot), torch.tensor(out_slot), torch.tensor(factor))


_TABLES: "weakref.WeakKeyDictionary[Supernet, dict]" = weakref.WeakKeyDictionary()


def layer_table(net: Supernet, batch: int, width_cost: str, like: torch.Tensor) -> LayerTable:
    """``build_layer_table``, cached per supernet and window state, on ``like``'s device and dtype."""
    tables = _TABLES.setdefault(net, {})
    key = (batch, _window_state(net, width_cost))
    with torch.inference_mode(False):   # a table first built under inference_mode must serve autograd later
        if key not in tables:
            if len(tables) >= 4:   # windows that moved rarely come back: keep the latest few states
                tables.pop(next(iter(tables)))
            tables[key] = {"float64": build_layer_table(net, batch, width_cost)}
        placed = tables[key]
        where = (like.device, like.dtype)
        if where not in placed:
            placed[where] = placed["float64"].to(device=like.device, dtype=like.dtype)
    return placed[where]


def _flat(net: Supernet, arch: ArchSample, width_cost: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(width values, probabilities) in the slot order of ``build_layer_table``."""
    widths, probs = [], [arch.ops[t].reshape(-1) for t in net.op_logits]
    for name, width in net.widths.items():
        p = arch.widths[name]
        if _expanded(width, width_cost):
            widths.append(width.widths_tensor(p))
            probs.append(p)
        else:   # one value: the expected width sum_j p_j w_j (carries p's gradient), or the forced one
            widths.append(width.soft_width(p).reshape(1))
    probs.append(probs[0].new_ones(1))
    return torch.cat(widths), torch.cat(probs)


def supernet_layers(net: Supernet, arch: ArchSample, batch: int = 1, width_cost: str = "expected",
                    weighted_only: bool = False) -> Tuple[SoftLayers, torch.Tensor]:
    """All array layers of the supernet (L,) and the weight of each (L,); with ``weighted_only``,
    on the CPU and no gradient wanted (no grad mode, or an ``arch`` that needs none), only the
    layers of nonzero weight.

    width_cost 'soft': each layer at the expected widths sum_j p_j w_j (weight = op
    probability).  'expected': each layer at every candidate width (pair, when input
    and output widths are different variables), weighted by the candidates'
    probabilities times the op probability, so the cost is E[cost(w)] rather than
    cost(E[w]): a mixture of 120 and 136 no longer looks like 128.
    """
    if width_cost not in WIDTH_COSTS:
        raise ValueError(f"unknown width cost {width_cost!r} (expected one of {', '.join(WIDTH_COSTS)})")
    widths, probs = _flat(net, arch, width_cost)
    table = layer_table(net, batch, width_cost, widths)
    weights = probs[table.factor].prod(1)
    coef, in_scale, in_slot, out_slot = table.coef, table.in_scale, table.in_slot, table.out_slot
    if weighted_only and weights.device.type == "cpu" and not weights.requires_grad and not widths.requires_grad:
        # a one-hot sample (the derived network each step, the export's fit) weights a few dozen of
        # the supernet's layers (of tens of thousands with --channels fixed).  Not on a GPU, where
        # the whole table is a few launches anyway (and that path stays as measured there).
        rows = weights.nonzero().squeeze(1)
        coef, in_scale, in_slot, out_slot = coef[:, rows], in_scale[rows], in_slot[rows], out_slot[rows]
        weights = weights[rows]
    c_in = in_scale * widths[in_slot]
    c_out = widths[out_slot]
    fields = coef[0] + coef[1] * c_in[:, None] + coef[2] * c_out[:, None] + coef[3] * (c_in * c_out)[:, None]
    return SoftLayers(*fields.unbind(1)), weights


def supernet_cost(net: Supernet, arch: ArchSample, acc: Accelerator, model: str = "systolic",
                  surrogate: str = "straight_through", temperature: float = 1.0,
                  batch: int = 1, width_cost: str = "expected") -> Dict[str, torch.Tensor]:
    """Expected latency (seconds, cycles) and utilization of the supernet (scalar tensors)."""
    if model not in COST_MODELS:
        raise ValueError(f"unknown cost model {model!r} (expected one of {', '.join(COST_MODELS)})")
    layers, weights = supernet_layers(net, arch, batch, width_cost, weighted_only=True)
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
    pes = mode_pes(acc, model) if model in MODES else acc.pes   # U-Boost's model knows one array
    return {"cycles": total_cycles, "seconds": total_cycles / acc.clock_hz, "macs": total_macs,
            "utilization": total_macs / (total_cycles * pes)}
