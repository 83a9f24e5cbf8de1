"""Hold a hard latency target at export: a probable derivable network within the target, found greedily.

Dual ascent holds ``--target-latency-us`` while the search runs, but the exported network is the
argmax of the logits at the last step, and there the multiplier may lag (on the tiny space with
8 epochs, 5 of 16 staged and joint runs ended above the target, by 1 to 69 %; README). A rerun costs a
whole search; instead the export starts from the derived network and makes, one at a time, the
change (an edge's op for a cheaper one, a width for a lower candidate of its window) that gives
up the least log-probability: among the changes that reach the target if there are any, else
per second saved.  Then it undoes each change that is no longer needed.  Which edges a node
keeps (DARTS' strongest two) does not change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Hashable, List, Tuple

import torch
import torch.nn.functional as F

from .supernet import ArchSample, Supernet, derived_ops

Key = Tuple[Hashable, ...]   # ("op", cell type, edge) or ("width", name)


@dataclass
class TargetFit:
    """The exported choice.  ops: cell type -> (edges, n_ops) one-hot rows on the kept edges
    (zero rows elsewhere, as ``derived_ops``); widths: name -> channels.  Latencies in seconds
    under the search's cost function: the derived network's, the fitted one's, and the floor
    (every kept edge at its cheapest op, every searched width at its window's bottom; NaN when the
    derived network is within the target)."""

    ops: Dict[str, torch.Tensor]
    widths: Dict[str, int]
    derived_seconds: float
    seconds: float
    floor_seconds: float
    changes: List[str]

    def reached(self, target_seconds: float) -> bool:
        return self.seconds <= target_seconds


def fit_to_target(net: Supernet, cost_of, target_seconds: float) -> TargetFit:
    """The derived network if it is within ``target_seconds``; else the greedy fit described in
    the module docstring (unchanged when even the floor is above the target).  ``cost_of``: an
    ArchSample -> {"seconds": tensor, ...} (``search.cost_function``)."""
    names = net.space.ops
    options: Dict[Key, List[int]] = {}
    log_probs: Dict[Key, torch.Tensor] = {}
    start: Dict[Key, int] = {}
    for cell_type, logits in net.op_logits.items():
        derived = derived_ops(logits, names, net.space.nodes)
        for edge in range(derived.shape[0]):
            if derived[edge].any():
                key = ("op", cell_type, edge)
                options[key] = [k for k, name in enumerate(names) if name != "none"]
                log_probs[key] = F.log_softmax(logits.detach()[edge].double(), dim=-1)
                start[key] = int(derived[edge].argmax())
    for name, width in net.widths.items():
        key = ("width", name)
        start[key] = width.candidates.index(width.chosen())
        # a width forced at export (a run ended in the op stage) was never searched: it stays
        options[key] = [start[key]] if width.forced is not None else list(range(width.count))
        log_probs[key] = F.log_softmax(width.logits.detach().double(), dim=-1)

    def sample(choice: Dict[Key, int]) -> ArchSample:   # float64, as the export costs the spec
        ops = {t: torch.zeros_like(logits, dtype=torch.float64) for t, logits in net.op_logits.items()}
        widths = {n: torch.zeros_like(w.logits, dtype=torch.float64) for n, w in net.widths.items()}
        for key, value in choice.items():
            if key[0] == "op":
                ops[key[1]][key[2], value] = 1.0
            else:
                widths[key[1]][value] = 1.0
        return ArchSample(ops, widths, True)

    with torch.no_grad():
        def latency(choice: Dict[Key, int]) -> float:
            return float(cost_of(sample(choice))["seconds"])

        current = dict(start)
        seconds = derived_seconds = latency(current)
        if seconds <= target_seconds:   # nothing to fit (the floor is only wanted for a note)
            return TargetFit(sample(current).ops, _widths(net, current), seconds, seconds, float("nan"), [])
        floor = {key: min(options[key]) for key in options if key[0] == "width"}
        floor.update({key: value for key, value in current.items() if key[0] == "op"})
        for edge in [k for k in options if k[0] == "op"]:   # edge costs add up: one edge at a time
            floor[edge] = min(options[edge], key=lambda op: (latency({**floor, edge: op}), op))
        floor_seconds = latency(floor)
        if floor_seconds <= target_seconds:
            while seconds > target_seconds:
                best = None
                for key, values in options.items():
                    for value in values:
                        if value == current[key]:
                            continue
                        trial = latency({**current, key: value})
                        if trial >= seconds:
                            continue
                        lost = float(log_probs[key][current[key]] - log_probs[key][value])
                        # a change that reaches the target outranks one that does not; among those
                        # the least probability lost, else the least per second saved
                        if trial <= target_seconds:
                            rank = (0, lost, -trial)
                        else:
                            rank = (1, lost / (seconds - trial), trial)
                        if best is None or rank < best[0]:
                            best = (rank, key, value, trial)
                if best is None:   # ceilings that only fall when two things change at once
                    current, seconds = dict(floor), floor_seconds
                    break
                _, key, value, seconds = best
                current[key] = value
            # undo what later changes made unnecessary, the one that gave up the most probability first
            changed = sorted((k for k in current if current[k] != start[k]),
                             key=lambda k: -float(log_probs[k][start[k]] - log_probs[k][current[k]]))
            for key in changed:
                trial = latency({**current, key: start[key]})
                if trial <= target_seconds:
                    current[key], seconds = start[key], trial
    changes = [_describe(net, key, start[key], current[key]) for key in options if current[key] != start[key]]
    return TargetFit(sample(current).ops, _widths(net, current), derived_seconds, seconds, floor_seconds, changes)


def _widths(net: Supernet, choice: Dict[Key, int]) -> Dict[str, int]:
    return {n: w.candidates[choice[("width", n)]] for n, w in net.widths.items()}


def _describe(net: Supernet, key: Key, before: int, after: int) -> str:
    """'normal cell, node 1 from state 0: conv_3x3 -> skip_connect' or 'width cell1: 72 -> 64'."""
    if key[0] == "width":
        candidates = net.widths[key[1]].candidates
        return f"width {key[1]}: {candidates[before]} -> {candidates[after]}"
    # edges in the supernet's order: node i's 2 + i inputs, from states 0 .. i + 1
    node, source = [(i, j) for i in range(net.space.nodes) for j in range(2 + i)][key[2]]
    names = net.space.ops
    return f"{key[1]} cell, node {node} from state {source}: {names[before]} -> {names[after]}"
