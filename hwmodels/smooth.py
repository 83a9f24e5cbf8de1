"""Differentiable twin of ``hwmodels.exact`` for search losses.

The same equations evaluated in torch on batches of layers whose channel counts
may be soft (float tensors that carry gradients).  Only the ceilings change:

* ``sigmoid``: ceil(x / d) ~ first(x) + sum_{k>=1} sigmoid((x - k*d - 1/2) / t),
  t the temperature in elements.  The k = 0 step, first(x), is exactly 1 for
  x >= 1 (a layer of one channel or more has at least one tile) and a
  rescaled sigmoid from 0 at x = 0 to 1 at x = 1 below that.  Every other
  step sits half-way between the integer counts k*d and k*d + 1, so at an
  integer count x the value is off by the tails of the steps next to it,
  sigmoid(-|x - k*d - 1/2| / t) each: up to sigmoid(-1/(2t)) = 0.38, 0.27,
  0.12, 0.007 at t = 1, 0.5, 0.25, 0.1 for x = k*d or k*d + 1 (too many
  tiles at a multiple of d, too few one past it), and at most twice that
  where d is so small that two steps are near.
  Only the steps within ``window`` = 3 + ceil(10 t / d) steps of x are
  evaluated (wide enough that the ones left out are within sigmoid(-10) ~ 5e-5
  of 0 or 1, so the window moving with x leaves no visible jump; at most
  MAX_WINDOW, which only binds past t / d ~ 100, where the steps no longer
  make a ceiling and the truncation does show as jumps); the ones below are
  counted as 1, so any tile count works without overflow.
* ``straight_through``: forward is the exact staircase (the loss reports true
  cycles), backward is the sigmoid surrogate's derivative.

U-Boost's surrogate put each step ~0.125 tiles above the integer, read
values below 1 for x < 0.25 tiles and overflowed past 300 tiles.  Neither
surrogate here overflows or reads below 1 tile for x >= 1 element.
``straight_through``'s forward is exact; ``sigmoid``'s steps are centred
between the integers rather than offset, but at a finite temperature its
values at integer counts still carry the blur above (a layer whose width is
a multiple of the array side reads sigmoid(-1/(2t)) tiles too many), so
its cost converges to the exact one only as t -> 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Sequence

import torch

from .accelerator import Accelerator, as_accelerator
from .exact import MODES, fill_cycles, mode_arrays, mode_pes
from .layers import ConvLayer, Layer, LinearLayer

SURROGATES = ("sigmoid", "straight_through")
MAX_WINDOW = 1024   # steps evaluated either side of x by the sigmoid ceiling


def hard_ceil_div(x: torch.Tensor, d: float) -> torch.Tensor:
    """Number of steps k*d + 1/2 <= x (k >= 0): equals ceil(x / d) at integer x >= 0.

    Counted in float64 and returned in x's dtype: in float32, x - 1/2 rounds back to x once
    x >= 2**23, which would count one step too many at a multiple of d."""
    wide = x.detach().to(torch.float64)
    return torch.clamp(torch.floor((wide - 0.5) / d) + 1, min=0).to(x.dtype)


def _first_step(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """The k = 0 step of the sigmoid ceiling: exactly 0 for x <= 0 and exactly 1 for x >= 1
    (any layer with one channel or more has at least one tile), and in between the sigmoid
    centred at 1/2 rescaled to run from 0 to 1, so a count below one element still has a
    gradient towards it."""
    half = 0.5 / temperature
    # sigmoid(half) - sigmoid(-half) = tanh(half / 2); sigmoid(-half) = (1 - tanh(half / 2)) / 2
    span = math.tanh(half / 2)
    ramp = (torch.sigmoid((x - 0.5) / temperature) - (1 - span) / 2) / span
    ramp = torch.clamp(ramp, 0.0, 1.0)
    return torch.where(x >= 1, torch.ones_like(ramp), ramp)


def sigmoid_ceil_div(x: torch.Tensor, d: float, temperature: float) -> torch.Tensor:
    """Smooth ceil(x / d) of a count ``x`` (elements, any shape; returns the same shape).

    Steps k >= 1 are sigmoids of width ``temperature`` (elements) centred at k*d + 1/2; the
    k = 0 step is ``_first_step`` (exactly 1 once x >= 1)."""
    if not temperature > 0:
        raise ValueError(f"surrogate temperature must be > 0, got {temperature}")
    # capped: a temperature beyond ~100 steps is no ceiling any more, and must not exhaust memory
    window = min(3 + math.ceil(10 * temperature / d), MAX_WINDOW)
    last = torch.floor((x.detach() - 0.5) / d)                      # index of the last step <= x
    offsets = torch.arange(-window + 1, window + 1, device=x.device, dtype=x.dtype)
    ks = last.unsqueeze(-1) + offsets                              # (..., 2*window) nearby steps
    below = torch.clamp(last - window, min=0)                      # steps 1 .. last-window: fully on
    steps = torch.sigmoid((x.unsqueeze(-1) - ks * d - 0.5) / temperature)
    steps = torch.where(ks >= 1, steps, torch.zeros_like(steps))  # k = 0 is _first_step
    return _first_step(x, temperature) + below + steps.sum(-1)


def soft_ceil_div(x: torch.Tensor, d: float, surrogate: str = "straight_through",
                  temperature: float = 1.0) -> torch.Tensor:
    """ceil(x / d) with a gradient; see the module docstring for the surrogates."""
    if surrogate == "sigmoid":
        return sigmoid_ceil_div(x, d, temperature)
    if surrogate == "straight_through":
        soft = sigmoid_ceil_div(x, d, temperature)
        return soft + (hard_ceil_div(x, d) - soft).detach()
    raise ValueError(f"unknown surrogate {surrogate!r} (expected one of {', '.join(SURROGATES)})")


@dataclass
class SoftLayers:
    """L GEMM-lowered layers as float tensors of shape (L,), element counts.

    m, k, n: GEMM dims; repeats: independent GEMMs (groups); input/weight/
    output_elements: off-chip tensor sizes.  Any of them may require grad.
    """

    m: torch.Tensor
    k: torch.Tensor
    n: torch.Tensor
    repeats: torch.Tensor
    input_elements: torch.Tensor
    weight_elements: torch.Tensor
    output_elements: torch.Tensor

    @property
    def macs(self) -> torch.Tensor:
        return self.m * self.k * self.n * self.repeats

    def broadcast(self) -> "SoftLayers":
        """Every field expanded to one common shape (L,), so batches stack."""
        fields = SoftLayers.__dataclass_fields__
        tensors = torch.broadcast_tensors(*(getattr(self, f) for f in fields))
        return SoftLayers(**{f: t.reshape(-1) for f, t in zip(fields, tensors)})

    @staticmethod
    def stack(rows: Sequence["SoftLayers"]) -> "SoftLayers":
        fields = SoftLayers.__dataclass_fields__
        return SoftLayers(**{f: torch.cat([getattr(r, f).reshape(-1) for r in rows]) for f in fields})


def _like(*values) -> torch.Tensor:
    """A float tensor on the device (and float dtype) of the first tensor among ``values``."""
    for value in values:
        if isinstance(value, torch.Tensor):
            dtype = value.dtype if value.is_floating_point() else torch.float64
            return torch.zeros((), dtype=dtype, device=value.device)
    return torch.zeros((), dtype=torch.float64)


def _t(value, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a (1,) tensor with ``like``'s dtype and device."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype=like.dtype, device=like.device).reshape(-1)
    return torch.tensor([float(value)], dtype=like.dtype, device=like.device)


def soft_conv(in_h: int, in_w: int, in_channels, out_channels, kernel: int = 1, stride: int = 1,
              padding: int = 0, dilation: int = 1, depthwise: bool = False, batch: int = 1) -> SoftLayers:
    """A conv with (possibly soft) channel counts; tensors of counts (L,) give L variants of it.

    in_h, in_w: input map (elements); kernel: kernel x kernel; stride, padding, dilation:
    ints, both axes; depthwise: groups = in_channels = out_channels.  The geometry is checked
    as ``ConvLayer`` checks it: a ValueError, not negative sizes or a division by zero."""
    # channels stand in as 1: only the (integer) geometry is checked here
    shape = ConvLayer("soft_conv", in_h, in_w, 1, 1, kernel, kernel, stride, padding, dilation,
                      batch=batch)
    kernel, batch = shape.kernel_h, shape.batch
    in_h, in_w, out_h, out_w = shape.in_h, shape.in_w, shape.out_h, shape.out_w
    like = _like(in_channels, out_channels)
    cin, cout = _t(in_channels, like), _t(out_channels, like)
    m = _t(batch * out_h * out_w, cin)
    if depthwise:
        k, n, repeats = _t(kernel * kernel, cin), torch.ones_like(cin), cin
        weights = cin * kernel * kernel
    else:
        k, n, repeats = cin * kernel * kernel, cout, torch.ones_like(cin)
        weights = cin * cout * kernel * kernel
    return SoftLayers(m, k, n, repeats, cin * (batch * in_h * in_w),
                      weights, (cin if depthwise else cout) * (batch * out_h * out_w)).broadcast()


def soft_linear(in_features, out_features, batch: int = 1) -> SoftLayers:
    """One linear layer with (possibly soft) feature counts."""
    batch = LinearLayer("soft_linear", 1, 1, batch=batch).batch   # refused as the exact model refuses it
    like = _like(in_features, out_features)
    fin, fout = _t(in_features, like), _t(out_features, like)
    return SoftLayers(_t(batch, fin), fin, fout, torch.ones_like(fin), fin * batch, fin * fout,
                      fout * batch).broadcast()


def from_layers(layers: Sequence[Layer], dtype=torch.float64) -> SoftLayers:
    """Exact (integer) layer descriptors as a SoftLayers batch."""
    cols = {f: [] for f in SoftLayers.__dataclass_fields__}
    for layer in layers:
        g = layer.lower()
        for key, value in (("m", g.m), ("k", g.k), ("n", g.n), ("repeats", g.repeats),
                           ("input_elements", layer.input_elements()),
                           ("weight_elements", layer.weight_elements()),
                           ("output_elements", layer.output_elements())):
            cols[key].append(float(value))
    return SoftLayers(**{k: torch.tensor(v, dtype=dtype) for k, v in cols.items()})


def network_cost_torch(layers: SoftLayers, acc: "Accelerator | str", mode: str = "systolic",
                       surrogate: str = "straight_through", temperature: float = 1.0
                       ) -> Dict[str, torch.Tensor]:
    """Smooth cost of a batch of layers.

    Returns tensors: ``cycles`` and ``compute_cycles`` (L,) per layer, and
    scalars ``total_cycles``, ``seconds``, ``macs``, ``utilization`` (= total
    MACs / (total cycles * ``mode_pes(acc, mode)``): all arrays' PEs in 'systolic', one
    array's in 'uboost', as in ``hwmodels.exact``).
    """
    if mode not in MODES:
        raise ValueError(f"unknown model mode {mode!r} (expected one of {', '.join(MODES)})")
    acc = as_accelerator(acc)
    rows, cols, cal = acc.array_rows, acc.array_cols, acc.calibration

    def ceil(x, d):
        return soft_ceil_div(x, d, surrogate, temperature)

    m, k, n = layers.m, layers.k, layers.n
    if mode == "uboost" or acc.dataflow == "ws":
        a, b, streamed = ceil(k, rows), ceil(n, cols), m
    elif acc.dataflow == "os":
        a, b, streamed = ceil(m, rows), ceil(n, cols), k
    else:
        a, b, streamed = ceil(k, rows), ceil(m, cols), n
    folds = a * b * layers.repeats
    # Fold rounds over several arrays: a ceiling of its own (none with one array; uboost knows one).
    arrays = mode_arrays(acc, mode)
    rounds = folds if arrays == 1 else ceil(folds, arrays)
    fill = 0 if mode == "uboost" else fill_cycles(rows, cols, acc.dataflow)
    compute = cal.cycle_scale * rounds * (streamed + fill + cal.fold_overhead_cycles)
    cycles = compute
    if mode == "systolic":
        elements = layers.input_elements + layers.weight_elements + layers.output_elements
        # Re-reads when the layer overflows the on-chip buffer (a hard, detached decision).
        spills = (elements.detach() * acc.bytes_per_element) > acc.onchip_bytes
        if acc.dataflow == "ws":
            extra = layers.input_elements * (b - 1)
        elif acc.dataflow == "os":
            extra = layers.weight_elements * (a - 1)
        else:
            extra = layers.weight_elements * (b - 1)
        elements = elements + torch.where(spills, extra, torch.zeros_like(extra))
        memory = elements * acc.bytes_per_element / (
            acc.bandwidth_bytes_per_s * cal.bandwidth_efficiency) * acc.clock_hz
        cycles = torch.maximum(compute, memory)
    cycles = cycles + cal.layer_overhead_cycles
    total = cycles.sum()
    macs = layers.macs.sum()
    return {"cycles": cycles, "compute_cycles": compute, "total_cycles": total,
            "seconds": total / acc.clock_hz, "macs": macs,
            # an empty network has no cycles: utilization 0 as in exact.NetworkCost, not 0/0
            "utilization": macs / (torch.where(total > 0, total, torch.ones_like(total)) * mode_pes(acc, mode))}
