"""The supernet: stem, DARTS-wired cells of mixed edges, classifier; relaxations.

Op logits are shared by all normal cells and by all reduction cells (as in
DARTS); every cell and the stem own a searchable ``Width``.  A forward pass
takes an ``ArchSample`` (op and width probabilities drawn once per step by
``Supernet.sample``) so the loss's hardware cost sees the same probabilities
as the network.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .channels import Binding, Width
from .kernels import IMPLS, group_edges, mixed_edge, mixed_edges
from .ops import LinearBranch, effective, get_op, pool_forward
from .space import SearchSpace
from .spec import pooled_size, strided_size

RELAXATIONS = ("softmax", "gumbel")
EDGES_KEPT = 2   # incoming edges per node in the derived cell (DARTS)


def derived_ops(logits: torch.Tensor, op_names: List[str], nodes: int) -> torch.Tensor:
    """The discrete cell of one cell type as op probabilities (edges, n_ops): per node the
    EDGES_KEPT strongest incoming edges (strength: the largest softmax probability over the ops
    other than 'none'; ties to the lower edge), each one-hot at its strongest op other than
    'none'; the other edges' rows are zero.  DARTS' derivation: the channel stage searches
    widths on this cell and ``spec.derive_spec`` exports it."""
    costly = [k for k, name in enumerate(op_names) if name != "none"]
    if not costly:
        raise ValueError("the search space has only the 'none' op: no cell to derive")
    probs = torch.softmax(logits.detach().double(), dim=-1)[:, costly]
    strength, best = probs.max(dim=-1)
    out = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
    e = 0
    for i in range(nodes):
        incoming = range(e, e + 2 + i)        # edge e + j comes from state j
        for x in sorted(incoming, key=lambda x: (-float(strength[x]), x))[:EDGES_KEPT]:
            out[x, costly[int(best[x])]] = 1.0
        e += 2 + i
    return out


@dataclass
class ArchSample:
    """Probabilities for one step: ops[cell_type] (edges, n_ops), widths[name] (K,).

    hard_ops: the op probabilities are one-hot or zero (channel stage: the derived cell,
    ``derived_ops``), so each kept edge runs only its chosen op and a zero row's edge is
    not run at all.
    """

    ops: Dict[str, torch.Tensor]
    widths: Dict[str, torch.Tensor]
    hard_ops: bool = False


class MixedEdge(nn.Module):
    """sum_k p_k op_k(x), with the linear branches normalised once by a shared BN:

        y = (sum_lin p_k) * BN(sum_lin p_k op_k(x)) + sum_pool/skip p_k op_k(x)

    The shared BN (affine=False) keeps the branches linear in relu(x) so they
    fuse exactly; the factor sum_lin p_k keeps the mass of the linear ops
    meaningful although BN is scale invariant.
    """

    def __init__(self, ops: List[str], channels: int, stride: int):
        super().__init__()
        self.op_names = list(ops)
        self.stride = stride
        self.defs = [effective(get_op(name), stride) for name in ops]
        self.branches = nn.ModuleDict({
            name: LinearBranch(d, channels, channels, stride)
            for name, d in zip(ops, self.defs) if d.family == "linear"})
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.impl = "eager"

    def forward(self, x: torch.Tensor, probs: torch.Tensor, chosen: Optional[int] = None) -> torch.Tensor:
        if chosen is not None:   # one-hot ops: nothing to mix or fuse
            return self.forward_single(x, chosen)
        if self.impl != "eager":
            return mixed_edge(self, x, probs, impl=self.impl)
        return self.forward_eager(x, probs)

    def forward_eager(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        linear, linear_mass, rest = None, 0, 0
        for k, (name, d) in enumerate(zip(self.op_names, self.defs)):
            if d.family == "linear":
                term = probs[k] * self.branches[name](x)
                linear = term if linear is None else linear + term
                linear_mass = linear_mass + probs[k]
            elif d.family == "pool":
                rest = rest + probs[k] * pool_forward(d, x, self.stride)
            elif d.family == "skip":
                rest = rest + probs[k] * x
        out = rest
        if linear is not None:
            out = out + linear_mass * self.bn(linear)
        if not torch.is_tensor(out):   # only 'none' on this edge
            h, w = (x.shape[2] - 1) // self.stride + 1, (x.shape[3] - 1) // self.stride + 1
            out = x.new_zeros(x.shape[0], x.shape[1], h, w)
        return out


    def forward_single(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """forward_eager with probs one-hot at op k (BN is scale invariant: BN(1 * z))."""
        d = self.defs[k]
        if d.family == "linear":
            return self.bn(self.branches[self.op_names[k]](x))
        if d.family == "pool":
            return pool_forward(d, x, self.stride)
        if d.family == "skip":
            return x
        h, w = (x.shape[2] - 1) // self.stride + 1, (x.shape[3] - 1) // self.stride + 1
        return x.new_zeros(x.shape[0], x.shape[1], h, w)


class Preprocess(nn.Module):
    """ReLU -> 1x1 conv (stride = resolution ratio) -> BN(affine=False)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(c_out, c_in, 1, 1))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bn = nn.BatchNorm2d(c_out, affine=False)

    def forward(self, x):
        return self.bn(F.conv2d(F.relu(x), self.weight, stride=self.stride))


@dataclass
class Source:
    """What feeds a cell input: width name, blocks (nodes concatenated), scale (downsampling) and
    map size (height, width) in pixels."""

    width: str
    blocks: int
    scale: int
    size: Tuple[int, int]


class SearchCell(nn.Module):
    """One searched cell: two preprocessed inputs (s0, s1), ``space.nodes`` intermediate nodes, each
    the sum of mixed edges from every earlier state, output the concatenation of the nodes
    ((N, nodes * C, H, W), or halved H and W in a reduction cell or with pool_after)."""
    def __init__(self, space: SearchSpace, index: int, s0: Source, s1: Source, widths: Dict[str, Width]):
        super().__init__()
        spec = space.cells[index]
        self.index, self.reduce, self.pool_after = index, spec.reduce, spec.pool_after
        self.nodes = space.nodes
        self.width_name = f"cell{index}"
        self.cell_type = "reduce" if spec.reduce else "normal"
        c = widths[self.width_name].top
        self.pre0 = Preprocess(widths[s0.width].top * s0.blocks, c, s1.scale // s0.scale)
        self.pre1 = Preprocess(widths[s1.width].top * s1.blocks, c, 1)
        self.sources = (s0, s1)
        self.edges = nn.ModuleList()
        for i in range(self.nodes):
            for j in range(2 + i):
                stride = 2 if self.reduce and j < 2 else 1
                self.edges.append(MixedEdge(space.ops, c, stride))

    def out_edges(self, j: int) -> List[Tuple[int, int]]:
        """(node i, edge index) of the edges that read state j (states: s0, s1, node 0, ...)."""
        return [(i, i * (i + 3) // 2 + j) for i in range(max(0, j - 1), self.nodes)]

    def forward(self, s0, s1, op_probs: torch.Tensor, mask: torch.Tensor, hard_ops: bool = False):
        m = mask.view(1, -1, 1, 1)
        states = [self.pre0(s0) * m, self.pre1(s1) * m]
        chosen = None
        if hard_ops:   # the op of each kept edge; None for an edge the derived cell drops
            kept = (op_probs != 0).any(-1).tolist()
            chosen = [k if keep else None for k, keep in zip(op_probs.argmax(-1).tolist(), kept)]
        rows = op_probs.unbind(0)   # one backward op per cell, where op_probs[e] costs one per edge
        nodes: List[Optional[torch.Tensor]] = [None] * self.nodes
        # state by state: the edges leaving a state run together (one fused call on the
        # fused path), and node j-1 is complete once states 0..j are done
        for j in range(self.nodes + 1):
            targets = self.out_edges(j)
            ys = self._run_edges(states[j], [e for _, e in targets], rows, chosen)
            for (i, _), y in zip(targets, ys):
                if y is not None:
                    nodes[i] = y if nodes[i] is None else nodes[i] + y
            if j >= 1:
                states.append(nodes[j - 1] * m)
        out = torch.cat(states[2:], dim=1)
        return F.max_pool2d(out, 2) if self.pool_after else out

    def _run_edges(self, x, index, rows, chosen):
        """The outputs of edges ``index`` (all reading x): one fused call, or edge by edge."""
        edges = [self.edges[e] for e in index]
        if chosen is not None:   # one-hot ops: each kept edge runs its op alone
            return [None if chosen[e] is None else edge(x, rows[e], chosen[e]) for edge, e in zip(edges, index)]
        impl = edges[0].impl
        if impl == "eager" or len(edges) == 1 or not group_edges():
            return [edge(x, rows[e]) for edge, e in zip(edges, index)]
        return mixed_edges(edges, x, torch.stack([rows[e] for e in index]), impl=impl)


class Supernet(nn.Module):
    """Stem conv -> cells -> global average pool -> linear classifier.

    input_shape: (C, H, W) of one image; channels: 'dynamic' windows or 'fixed'
    full ranges (weights for every width up to max).
    """

    def __init__(self, space: SearchSpace, input_shape: Tuple[int, int, int], num_classes: int,
                 channels: str = "dynamic"):
        super().__init__()
        if channels not in ("dynamic", "fixed"):
            raise ValueError(f"channels must be 'dynamic' or 'fixed', got {channels!r}")
        self.space, self.input_shape, self.num_classes = space, tuple(input_shape), num_classes
        fixed = channels == "fixed"
        self.widths = nn.ModuleDict({"stem": Width("stem", space.stem_channels, fixed)})
        for i, cell in enumerate(space.cells):
            self.widths[f"cell{i}"] = Width(f"cell{i}", cell.channels, fixed)
        cell_types = sorted({("reduce" if c.reduce else "normal") for c in space.cells})
        self.op_logits = nn.ParameterDict({
            t: nn.Parameter(1e-3 * torch.randn(space.edges_per_cell, len(space.ops))) for t in cell_types})
        k = space.stem_kernel
        self.stem = nn.Conv2d(input_shape[0], self.widths["stem"].top, k, padding=k // 2, bias=False)
        self.stem_bn = nn.BatchNorm2d(self.widths["stem"].top)
        stem = Source("stem", 1, 1, (input_shape[1], input_shape[2]))
        s0, s1 = stem, stem
        space_label = f"{space.name} ({space.origin})" if space.origin else space.name
        self.cells = nn.ModuleList()
        for i, cell in enumerate(space.cells):
            # a cell joins its two inputs after a stride s1.scale // s0.scale: odd sizes may not meet
            stride = s1.scale // s0.scale
            if tuple(strided_size(n, stride) for n in s0.size) != s1.size:
                raise ValueError(
                    f"input {input_shape[1]}x{input_shape[2]} does not fit space {space_label}: cell {i} "
                    f"gets maps {s0.size[0]}x{s0.size[1]} and {s1.size[0]}x{s1.size[1]} (use an input "
                    f"whose sides divide by {s1.scale} and stay >= 1)")
            self.cells.append(SearchCell(space, i, s0, s1, self.widths))
            scale = s1.scale * (2 if cell.reduce else 1) * (2 if cell.pool_after else 1)
            size = tuple(strided_size(n, 2) for n in s1.size) if cell.reduce else s1.size
            size = tuple(pooled_size(n) for n in size) if cell.pool_after else size
            if min(size) < 1:   # the last cell too: a 2x2 pool on a 1x1 map leaves nothing
                raise ValueError(f"input {input_shape[1]}x{input_shape[2]} does not fit space {space_label}: "
                                 f"cell {i} shrinks its {s1.size[0]}x{s1.size[1]} maps to nothing "
                                 f"(use a larger input or fewer reduce / pool_after cells)")
            s0, s1 = s1, Source(f"cell{i}", space.nodes, scale, size)
        self.last = s1
        self.classifier = nn.Linear(self.widths[s1.width].top * s1.blocks, num_classes)

    # -- architecture parameters -------------------------------------------------
    def arch_parameters(self) -> List[nn.Parameter]:
        return list(self.op_logits.values()) + [w.logits for w in self.widths.values()]

    def weight_parameters(self) -> List[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    @contextmanager
    def frozen_weights(self):
        """Weights stop requiring gradients inside the block (restored on exit, also on error).

        For the architecture step: its backward then computes no weight gradient at all
        (eager convolutions skip their weight-gradient pass; the fused edges skip theirs but
        for the dL/dW_super that dL/dp needs).  ``backward`` alone would compute them all
        and leave them in ``.grad`` unused.
        """
        weights = [p for p in self.weight_parameters() if p.requires_grad]
        for p in weights:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in weights:
                p.requires_grad_(True)

    def sample(self, relaxation: str = "softmax", tau: float = 1.0,
               generator: Optional[torch.Generator] = None, hard_ops: bool = False) -> ArchSample:
        """Op and width probabilities for one step (Gumbel noise from ``generator``)."""
        if relaxation not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {relaxation!r} (expected softmax or gumbel)")

        def relax(logits):
            if relaxation == "gumbel":
                u = torch.rand(logits.shape, generator=generator).clamp(1e-10, 1 - 1e-7).to(logits)
                logits = logits - torch.log(-torch.log(u))   # + Gumbel(0, 1) noise
            return torch.softmax(logits / tau, dim=-1)

        ops = {}
        for t, logits in self.op_logits.items():
            if hard_ops:  # channel stage: the cell that will be exported
                ops[t] = derived_ops(logits, self.space.ops, self.space.nodes)
            else:
                ops[t] = relax(logits)
        return ArchSample(ops, {n: relax(w.logits) for n, w in self.widths.items()}, hard_ops)

    def derived_sample(self) -> ArchSample:
        """The network ``spec.derive_spec`` would export now, as probabilities: each cell type's
        ``derived_ops`` and every width one-hot at its most probable candidate (a forced width
        overrides it, as in ``Width.chosen``); no gradients."""
        widths = {n: F.one_hot(w.logits.detach().argmax(), w.count).to(w.logits.dtype)
                  for n, w in self.widths.items()}
        ops = {t: derived_ops(logits, self.space.ops, self.space.nodes) for t, logits in self.op_logits.items()}
        return ArchSample(ops, widths, True)

    def forward(self, x: torch.Tensor, arch: Optional[ArchSample] = None) -> torch.Tensor:
        arch = arch or self.sample()
        stem_mask = self.widths["stem"].mask(arch.widths["stem"]).view(1, -1, 1, 1)
        s = self.stem_bn(self.stem(x)) * stem_mask
        s0 = s1 = s
        for cell in self.cells:
            mask = self.widths[cell.width_name].mask(arch.widths[cell.width_name])
            s0, s1 = s1, cell(s0, s1, arch.ops[cell.cell_type], mask, arch.hard_ops)
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

    # -- channel bindings ----------------------------------------------------------
    def channel_bindings(self) -> List[Binding]:
        """Every tensor dimension that spans a searchable width (for reallocation)."""
        b = [Binding(self.stem, "weight", 0, "stem"),
             Binding(self.stem_bn, "weight", 0, "stem", init="one"),
             Binding(self.stem_bn, "bias", 0, "stem", init="zero"),
             Binding(self.stem_bn, "running_mean", 0, "stem", init="zero"),
             Binding(self.stem_bn, "running_var", 0, "stem", init="one")]
        for cell in self.cells:
            name = cell.width_name
            for pre, src in ((cell.pre0, cell.sources[0]), (cell.pre1, cell.sources[1])):
                b += [Binding(pre, "weight", 0, name),
                      Binding(pre, "weight", 1, src.width, src.blocks, init="zero"),
                      Binding(pre.bn, "running_mean", 0, name, init="zero"),
                      Binding(pre.bn, "running_var", 0, name, init="one")]
            for edge in cell.edges:
                b += [Binding(edge.bn, "running_mean", 0, name, init="zero"),
                      Binding(edge.bn, "running_var", 0, name, init="one")]
                for branch in edge.branches.values():
                    if branch.op.separable:
                        b += [Binding(branch, "dw_weight", 0, name),
                              Binding(branch, "pw_weight", 0, name),
                              Binding(branch, "pw_weight", 1, name, init="zero")]
                    else:
                        b += [Binding(branch, "weight", 0, name),
                              Binding(branch, "weight", 1, name, init="zero")]
        b.append(Binding(self.classifier, "weight", 1, self.last.width, self.last.blocks, init="zero"))
        return b

    def set_impl(self, impl: str) -> None:
        """'eager' (per-op PyTorch), 'reference' or 'triton' (fused, see ubnas.kernels), 'auto'."""
        if impl not in ("eager",) + tuple(IMPLS):   # not at the first forward, naming all but 'eager'
            raise ValueError(f"unknown kernel impl {impl!r} (expected one of eager, {', '.join(IMPLS)})")
        for module in self.modules():
            if isinstance(module, MixedEdge):
                module.impl = impl
