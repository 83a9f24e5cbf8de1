"""Build a plain ``nn.Module`` from an architecture spec (needs only torch).

The wiring is ubnas.supernet's, with one op per kept edge:

* stem: conv k x k (padding k//2, no bias) -> BN;
* cell: inputs s0 (the cell two back, or the stem) and s1 (the previous cell,
  or the stem) each go through ReLU -> 1x1 conv -> BN to ``channels`` (s0's
  conv strides by the resolution ratio s1/s0); node i sums its edges
  (``ubnas.ops.DiscreteOp``: the op followed by BN for convolutions; in a
  reduce cell the edges from states 0 and 1 have stride 2); the output is the
  concatenation of the nodes, then a 2x2 max-pool if ``pool_after``;
* global average pool -> Linear classifier.

Importing this module also teaches ``hwmodels.estimate`` the array layers of
``ubnas.ops.LinearBranch`` (it convolves with ``F.conv2d``, which a forward
hook cannot see), read off the module's own weights and the traced input.
"""
from __future__ import annotations

import os
import sys
import types
from typing import List, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import DiscreteOp, LinearBranch
from .spec import ArchSpec, CellArch, load_spec


class ReLUConvBN(nn.Module):
    """ReLU -> 1x1 conv (stride) -> BN: the preprocessing of a cell input."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(F.relu(x)))


class Cell(nn.Module):
    """One cell of an exported architecture: preprocessed inputs, the chosen op on each kept edge,
    nodes as sums of their edges, output the concatenation of the nodes (then a 2x2 max-pool if
    ``pool_after``)."""
    def __init__(self, cell: CellArch, c_prev_prev: int, c_prev: int, stride0: int):
        super().__init__()
        self.reduce, self.pool_after = cell.reduce, cell.pool_after
        c = cell.channels
        self.pre0 = ReLUConvBN(c_prev_prev, c, stride0)
        self.pre1 = ReLUConvBN(c_prev, c, 1)
        self.edges = nn.ModuleList()
        self.sources: List[List[int]] = []          # per node, the state each edge reads
        for node in cell.nodes:
            sources = []
            for edge in node:
                stride = 2 if cell.reduce and edge.source < 2 else 1
                self.edges.append(DiscreteOp(edge.op, c, c, stride))
                sources.append(edge.source)
            self.sources.append(sources)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        e = 0
        for sources in self.sources:
            node = 0
            for j in sources:
                node = node + self.edges[e](states[j])
                e += 1
            states.append(node)
        out = torch.cat(states[2:], dim=1)
        return F.max_pool2d(out, 2) if self.pool_after else out


class Network(nn.Module):
    """The exported network: stem -> cells -> global average pool -> classifier.

    ``spec_hash`` identifies the architecture (checkpoints carry it).
    """

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec_hash = spec.arch_hash()
        self.input_shape = tuple(spec.input_shape)
        k = spec.stem_kernel
        self.stem = nn.Conv2d(spec.input_shape[0], spec.stem_channels, k, padding=k // 2, bias=False)
        self.stem_bn = nn.BatchNorm2d(spec.stem_channels)
        self.cells = nn.ModuleList()
        # (channels, scale) of the two cell inputs, as in Supernet
        s0 = s1 = (spec.stem_channels, 1)
        for cell in spec.cells:
            self.cells.append(Cell(cell, s0[0], s1[0], s1[1] // s0[1]))
            scale = s1[1] * (2 if cell.reduce else 1) * (2 if cell.pool_after else 1)
            s0, s1 = s1, (cell.out_channels, scale)
        self.classifier = nn.Linear(spec.classifier_in_features, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem_bn(self.stem(x))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1))


def build_network(spec: ArchSpec) -> Network:
    """A freshly initialised ``nn.Module`` for ``spec`` (``build`` takes a spec file's path too)."""
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"build_network: expected an ArchSpec, got {type(spec).__name__}; for a spec "
                        f"file use ubnas.build(path) or ubnas.spec.load_spec(path)")
    return Network(spec)


def build(spec_or_path: Union[ArchSpec, str, os.PathLike]) -> Network:
    """``build_network`` of an ArchSpec or of a spec file path."""
    spec = spec_or_path if isinstance(spec_or_path, ArchSpec) else load_spec(spec_or_path)
    return build_network(spec)


def meta_network(spec: ArchSpec) -> Network:
    """``spec``'s network on the meta device: shapes without storage, for costing and counting
    parameters (any width or batch costs neither memory nor arithmetic)."""
    with torch.device("meta"):
        return build_network(spec)


def exact_cost(spec: ArchSpec, accelerator, batch: int = 1):
    """hwmodels' exact (systolic) ``NetworkCost`` of ``spec``'s network on ``accelerator`` at
    ``batch`` images.  Traced on the meta device (``meta_network``): a batch too large to describe
    is a ValueError."""
    from hwmodels import estimate
    return estimate(meta_network(spec), tuple(spec.input_shape), accelerator, batch=batch)


# -- hardware layers of the search-form ops, for hwmodels.estimate ----------------------------
def _linear_branch_layers(module: LinearBranch, inputs: tuple, output, batch: int):
    from hwmodels.layers import ConvLayer
    x = inputs[0]
    b, c_in, h, w = (int(d) for d in x.shape)
    op = module.op
    if op.separable:
        k = module.dw_weight.shape[-1]
        dw = ConvLayer("dw", h, w, c_in, module.dw_weight.shape[0], k, k, stride=module.stride,
                       padding=op.padding, dilation=op.dilation, groups=c_in, batch=b)
        pw = ConvLayer("pw", dw.out_h, dw.out_w, module.pw_weight.shape[1], module.pw_weight.shape[0],
                       1, 1, batch=b)
        layers = [dw, pw]
    else:
        c_out, _, kh, kw = module.weight.shape
        layers = [ConvLayer("conv", h, w, c_in, int(c_out), int(kh), int(kw), stride=module.stride,
                            padding=op.padding, dilation=op.dilation, batch=b)]
    if tuple(output.shape[-2:]) != (layers[-1].out_h, layers[-1].out_w):
        raise ValueError(f"LinearBranch {op.name}: traced output {tuple(output.shape)} does not match "
                         f"the lowered {layers[-1].out_h}x{layers[-1].out_w} map")
    return layers


try:
    from hwmodels.estimate import register_layer_handler
except ImportError:     # an hwmodels without the module estimator: nothing to teach
    pass
else:
    register_layer_handler(LinearBranch, _linear_branch_layers)


class _CallableModule(types.ModuleType):
    """``ubnas.build`` is this module (the package imports it on first use); calling it,
    ``ubnas.build(spec_or_path)``, builds the network."""

    def __call__(self, spec_or_path):
        return build(spec_or_path)


sys.modules[__name__].__class__ = _CallableModule
