"""Searchable channel widths and dynamic channel allocation.

A ``Width`` is a window of K candidate widths lo, lo+g, ..., lo+(K-1)g with
one logit each.  Weights exist only for the window's top width.  Under op
probabilities p the layer sees the FBNetV2-style soft mask
M = sum_j p_j m_j (m_j = first w_j channels) and the cost sees the soft width
sum_j p_j w_j.

The allocator moves windows between architecture steps:
* mass piled on the top candidate (the strict favourite, holding at least
  ``edge_mass`` of the probability) -> shift the window up one step (new
  filters initialised, consumers' new input slices zero so the network's
  function is unchanged, logits and optimizer state extended);
* the same on the bottom candidate -> shift down one step, freeing the top filters;
* a peaked distribution in the middle (at least 0.6 on one inner candidate) ->
  halve the step (rounded down, to 1 at least) around the peak, which stays a
  candidate.
A candidate the window gains starts as a copy of an old one next to it
(logit and Adam moments: beyond the old range the edge, between two old
widths the more probable), so it ties with the candidate it came from: no
new strict favourite and no peak that narrows again until new gradients say
so, and a move never triggers the next on its own (nor does a window of 2
swing back and forth).  A window of one candidate never moves.  min/max always hold, and every decision
depends only on the logits, so it is deterministic for a seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .space import ChannelSpec


class Width(nn.Module):
    """One searchable width. ``logits`` (K,) is an architecture parameter."""

    def __init__(self, name: str, spec: ChannelSpec, fixed_range: bool = False):
        super().__init__()
        self.name = name
        self.min, self.max = spec.min, spec.max
        self.dynamic = spec.dynamic and not fixed_range
        if fixed_range:  # the conventional supernet: min, min + step, ... up to max, weights for the top
            lo, count = spec.min, (spec.max - spec.min) // spec.step + 1
        else:
            lo, count = spec.init, spec.candidates
        self.lo, self.step, self.count = lo, spec.step, count
        self.min_step = 1
        self.logits = nn.Parameter(torch.zeros(count))
        self.forced: Optional[int] = None   # a discrete width overriding the soft mask

    @property
    def top(self) -> int:
        """Physical channels (the window's top width)."""
        return self.lo + (self.count - 1) * self.step

    @property
    def candidates(self) -> List[int]:
        return [self.lo + j * self.step for j in range(self.count)]

    def widths_tensor(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.candidates, dtype=like.dtype, device=like.device)

    def mask(self, probs: torch.Tensor) -> torch.Tensor:
        """Soft channel mask (top,): mask[c] = sum_j p_j [c < w_j]."""
        channels = torch.arange(self.top, device=probs.device).unsqueeze(1)
        if self.forced is not None:
            return (channels.squeeze(1) < self.forced).to(probs.dtype)
        steps = (channels < self.widths_tensor(probs).unsqueeze(0)).to(probs.dtype)  # (top, K)
        return steps @ probs

    def soft_width(self, probs: torch.Tensor) -> torch.Tensor:
        """Expected width sum_j p_j w_j (a scalar tensor carrying gradients)."""
        if self.forced is not None:
            return probs.new_tensor(float(self.forced))
        return (probs * self.widths_tensor(probs)).sum()

    def chosen(self) -> int:
        """The most probable candidate (the exported width)."""
        return self.forced if self.forced is not None else self.candidates[int(self.logits.argmax())]

    def extra_repr(self) -> str:
        return f"{self.name}: {self.candidates}"


@dataclass(frozen=True)
class Binding:
    """Dimension ``dim`` of tensor ``attr`` on ``module`` spans ``blocks`` copies of width ``width``.

    init: how new slices start: 'random' (new filters), 'zero' (consumer input
    slices, so the function is unchanged), 'one' (BN scale / running var).
    """

    module: nn.Module
    attr: str
    dim: int
    width: str
    blocks: int = 1
    init: str = "random"


def resize_dim(tensor: torch.Tensor, dim: int, old: int, new: int, blocks: int, init: str,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Resize ``dim`` from blocks*old to blocks*new channels, keeping the first min(old, new) of each block."""
    shape = list(tensor.shape)
    assert shape[dim] == blocks * old, (shape, dim, blocks, old)
    view = tensor.reshape(shape[:dim] + [blocks, old] + shape[dim + 1:])
    keep = min(old, new)
    kept = view.narrow(dim + 1, 0, keep)
    if new > old:
        pad_shape = list(view.shape)
        pad_shape[dim + 1] = new - old
        if init == "zero":
            pad = torch.zeros(pad_shape, dtype=tensor.dtype, device=tensor.device)
        elif init == "one":
            pad = torch.ones(pad_shape, dtype=tensor.dtype, device=tensor.device)
        else:
            std = float(tensor.detach().float().std()) if tensor.numel() > 1 else 1.0
            pad = torch.randn(pad_shape, generator=generator, dtype=torch.float32).to(tensor) * std
        kept = torch.cat([kept, pad], dim=dim + 1)
    return kept.reshape(shape[:dim] + [blocks * new] + shape[dim + 1:]).contiguous()


def carry_index(logits: torch.Tensor, old: List[int], new: List[int]) -> List[int]:
    """For each new candidate, the old candidate whose logit and optimizer state it takes: the same
    width; beyond the old range, the nearest edge; between two old widths, the more probable one.
    A gained candidate thus starts next to the candidate it grew from (``GAINED_LOGIT_OFFSET``
    below it), and a move never makes a new favourite (nor a peak that narrows again) without
    new gradients."""
    values = logits.detach().cpu().tolist()
    index = []
    for width in new:
        upper = int(np.searchsorted(old, width))   # first old width >= width
        if upper < len(old) and old[upper] == width:
            index.append(upper)
        elif upper == 0 or upper == len(old):
            index.append(min(upper, len(old) - 1))
        else:
            index.append(upper if values[upper] > values[upper - 1] else upper - 1)
    return index


def _carry(values: torch.Tensor, index: List[int]) -> torch.Tensor:
    return values[torch.tensor(index, device=values.device)].clone()


# A gained candidate's logit sits this far below the one it copies.  An exact tie would let the
# argmax (lowest index first) export a width no step has trained: the new bottom after a shift
# down, the copy below the peak after a narrowing.  One Adam step (~lr) outweighs it.
GAINED_LOGIT_OFFSET = 1e-3

# the allocator's generator is seeded with seed + this: its draws stay apart from the search's
# (seed, + 1, + 2), and runtime.MAX_SEED keeps the sum below torch's 32-bit seed range
ALLOCATOR_SEED_OFFSET = 7919


def _gained_below(logits: torch.Tensor, gained: List[bool]) -> torch.Tensor:
    """``logits`` with each gained entry moved strictly below its value (by the offset, or at
    least to the next float down where the logit is too large for the offset to register)."""
    mask = torch.tensor(gained, device=logits.device)
    lowered = torch.minimum(logits - GAINED_LOGIT_OFFSET, torch.nextafter(logits, logits.new_tensor(-math.inf)))
    return torch.where(mask, lowered, logits)


def edge_mass(count: int) -> float:
    """Probability the top or bottom of ``count`` candidates needs to move the window: 1.5x its
    uniform share, at most 0.6 (the narrowing peak) -- 0.6 for 2, 0.375 for 4, 0.1875 for 8."""
    return min(0.6, 1.5 / count)


def plan_move(width: Width, peak: float = 0.6) -> Optional[Tuple[str, int, int, int]]:
    """Decide a window move from the logits: (event, lo, step, count) or None."""
    if not width.dynamic or width.count < 2:   # one candidate: p = 1 always, which is no evidence
        return None
    probs = torch.softmax(width.logits.detach().double(), 0)
    best = int(probs.argmax())
    top_p = float(probs[best])
    unique = int((probs == probs[best]).sum()) == 1
    lo, step, count = width.lo, width.step, width.count
    piled = unique and top_p >= edge_mass(count)
    if piled and best == count - 1 and width.top + step <= width.max:
        return ("grow", lo + step, step, count)
    if piled and best == 0 and lo - step >= width.min:
        return ("shift_down", lo - step, step, count)
    if 0 < best < count - 1 and top_p >= peak and step // 2 >= width.min_step:   # (an odd step too: 3 -> 1)
        new_step = step // 2
        centre = lo + best * step
        # the peak stays on the new grid: ``below`` candidates under it, as centred as min/max allow
        below = min(count // 2, (centre - width.min) // new_step)
        below = max(below, count - 1 - (width.max - centre) // new_step)
        return ("narrow", centre - below * new_step, new_step, count)
    return None


class ChannelAllocator:
    """Applies window moves to a supernet's widths, parameters and optimizer states."""

    def __init__(self, widths: Dict[str, Width], bindings: List[Binding], seed: int = 0):
        self.widths = widths
        self.bindings = bindings
        self.generator = torch.Generator().manual_seed(seed + ALLOCATOR_SEED_OFFSET)
        self.log: List[dict] = []

    def step(self, optimizers: List[torch.optim.Optimizer], step: int, decisions=None) -> List[dict]:
        """Check every width and apply the moves (or the given ``decisions``); returns the events."""
        decisions = decisions if decisions is not None else self.plan()
        events = []
        for name, move in decisions.items():
            if move is None:
                continue
            event, lo, step_, count = move
            width = self.widths[name]
            before = width.candidates
            self.apply(name, lo, step_, count, optimizers)
            record = {"step": step, "width": name, "event": event, "before": before, "after": width.candidates}
            events.append(record)
            self.log.append(record)
        return events

    def plan(self) -> Dict[str, Optional[tuple]]:
        return {name: plan_move(width) for name, width in self.widths.items()}

    def apply(self, name: str, lo: int, step: int, count: int, optimizers) -> None:
        width = self.widths[name]
        old_top, old_candidates = width.top, width.candidates
        new_candidates = [lo + j * step for j in range(count)]
        new_top = new_candidates[-1]
        # 1. parameters and buffers bound to this width, and their optimizer states
        if new_top != old_top:
            for binding in (b for b in self.bindings if b.width == name):
                self._resize_tensor(binding, old_top, new_top, optimizers)
        # 2. logits and their optimizer state follow the candidates
        old_logits = width.logits
        index = carry_index(old_logits, old_candidates, new_candidates)
        gained = [c not in old_candidates for c in new_candidates]
        new_logits = nn.Parameter(_gained_below(_carry(old_logits.data, index), gained))
        width.lo, width.step, width.count = lo, step, count
        width.logits = new_logits
        self._swap_state(optimizers, old_logits, new_logits,
                         lambda t: _carry(t, index) if t.dim() == 1 else t)

    def _resize_tensor(self, binding: Binding, old: int, new: int, optimizers) -> None:
        module, attr = binding.module, binding.attr
        current = getattr(module, attr)
        resized = resize_dim(current.data, binding.dim, old, new, binding.blocks, binding.init, self.generator)
        if isinstance(current, nn.Parameter):
            param = nn.Parameter(resized, requires_grad=current.requires_grad)
            setattr(module, attr, param)
            self._swap_state(optimizers, current, param,
                             lambda t: resize_dim(t, binding.dim, old, new, binding.blocks, "zero")
                             if t.shape == current.shape else t)
        else:
            module._buffers[attr] = resized
        # the sizes torch modules print and hwmodels.estimate reads follow the resized tensor
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = resized.shape[0]
        elif isinstance(module, nn.Conv2d) and attr == "weight":
            module.out_channels, module.in_channels = resized.shape[0], resized.shape[1] * module.groups
        elif isinstance(module, nn.Linear) and attr == "weight":
            module.out_features, module.in_features = resized.shape

    @staticmethod
    def _swap_state(optimizers, old: nn.Parameter, new: nn.Parameter, convert) -> None:
        for opt in optimizers:
            for group in opt.param_groups:
                for i, p in enumerate(group["params"]):
                    if p is old:
                        group["params"][i] = new
            if old in opt.state:
                state = opt.state.pop(old)
                opt.state[new] = {k: convert(v) if torch.is_tensor(v) and v.dim() > 0 else v
                                  for k, v in state.items()}
