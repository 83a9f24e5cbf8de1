"""Candidate operations: one registry from name to OpDef, as in DARTS' operations.py.

Each op comes in two forms that never disagree:

* ``search``: the op as it runs inside a mixed edge of the supernet.  Ops of
  family ``linear`` are linear maps of relu(x) with no normalisation of their
  own (the mixed edge normalises their weighted sum once), so the branches of
  an edge fuse exactly (see ``ubnas.kernels``).  Pool, skip and zero are
  parameter-free.
* ``discrete``: the op in an exported network: the same layers followed by
  BatchNorm, as a plain nn.Module.

``hw_layers`` lists the array layers the op costs, as ``hwmodels.smooth``
SoftLayers for (possibly soft) channel counts, so the search cost and the
module come from one description.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwmodels.smooth import SoftLayers, soft_conv


@dataclass(frozen=True)
class OpDef:
    """A candidate op: ``family`` is 'linear' (convs of relu(x)), 'pool', 'skip' or 'zero'.

    kernel/dilation/separable describe linear ops: a full kernel x kernel conv,
    or (separable) a depthwise kernel x kernel conv with ``dilation`` then a 1x1 conv.
    """

    name: str
    family: str
    kernel: int = 0
    dilation: int = 1
    separable: bool = False
    pool: str = ""

    @property
    def padding(self) -> int:
        return self.dilation * (self.kernel - 1) // 2


OPS: Dict[str, OpDef] = {op.name: op for op in (
    OpDef("none", "zero"),
    OpDef("skip_connect", "skip"),
    OpDef("max_pool_3x3", "pool", kernel=3, pool="max"),
    OpDef("avg_pool_3x3", "pool", kernel=3, pool="avg"),
    OpDef("conv_1x1", "linear", kernel=1),
    OpDef("conv_3x3", "linear", kernel=3),
    OpDef("conv_5x5", "linear", kernel=5),
    OpDef("sep_conv_3x3", "linear", kernel=3, separable=True),
    OpDef("sep_conv_5x5", "linear", kernel=5, separable=True),
    OpDef("dil_conv_3x3", "linear", kernel=3, dilation=2, separable=True),
    OpDef("dil_conv_5x5", "linear", kernel=5, dilation=2, separable=True),
)}


def get_op(name: str) -> OpDef:
    """The registered op ``name`` (``OPS``); ValueError listing the known ops otherwise."""
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r} (expected one of {', '.join(OPS)})") from None


def effective(op: OpDef, stride: int) -> OpDef:
    """A skip on a stride-2 edge must resample: it becomes a 1x1 stride-2 conv."""
    return OPS["conv_1x1"] if op.family == "skip" and stride > 1 else op


class LinearBranch(nn.Module):
    """The search form of a linear op: conv(relu(x)) or pw(dw(relu(x))), no BN.

    Weights: ``weight`` (C_out, C_in, k, k) for a full conv; ``dw_weight``
    (C_in, 1, k, k) and ``pw_weight`` (C_out, C_in, 1, 1) for a separable op.
    """

    def __init__(self, op: OpDef, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.op, self.stride = op, stride
        k = op.kernel
        if op.separable:
            self.dw_weight = nn.Parameter(torch.empty(c_in, 1, k, k))
            self.pw_weight = nn.Parameter(torch.empty(c_out, c_in, 1, 1))
            # a depthwise filter's fan is k*k (torch's fan_out counts C_in*k*k, ~sqrt(C_in) too small), and
            # no ReLU follows it: the branch then enters a mixed edge's shared BatchNorm at a full conv's scale
            nn.init.kaiming_normal_(self.dw_weight, mode="fan_in")
            nn.init.kaiming_normal_(self.pw_weight, mode="fan_out", nonlinearity="linear")
        else:
            self.weight = nn.Parameter(torch.empty(c_out, c_in, k, k))
            nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op, r = self.op, F.relu(x)
        if op.separable:
            y = F.conv2d(r, self.dw_weight, stride=self.stride, padding=op.padding,
                         dilation=op.dilation, groups=r.shape[1])
            return F.conv2d(y, self.pw_weight)
        return F.conv2d(r, self.weight, stride=self.stride, padding=op.padding, dilation=op.dilation)


def pool_forward(op: OpDef, x: torch.Tensor, stride: int) -> torch.Tensor:
    """3x3 max or average pool of a pool op, padding 1: (N, C, H, W) -> (N, C, ceil(H/stride), ceil(W/stride))."""
    if op.pool == "max":
        return F.max_pool2d(x, 3, stride=stride, padding=1)
    return F.avg_pool2d(x, 3, stride=stride, padding=1, count_include_pad=False)


class DiscreteOp(nn.Module):
    """The exported form of one op on an edge: search form + BatchNorm (linear ops)."""

    def __init__(self, name: str, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.op = effective(get_op(name), stride)
        self.stride = stride
        if self.op.family == "linear":
            self.branch = LinearBranch(self.op, c_in, c_out, stride)
            self.bn = nn.BatchNorm2d(c_out)
        elif self.op.family in ("skip", "pool") and c_in != c_out:
            raise ValueError(f"op {name!r} needs equal widths, got {c_in} -> {c_out}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        family = self.op.family
        if family == "linear":
            return self.bn(self.branch(x))
        if family == "pool":
            return pool_forward(self.op, x, self.stride)
        if family == "skip":
            return x
        h = (x.shape[2] - 1) // self.stride + 1
        w = (x.shape[3] - 1) // self.stride + 1
        return x.new_zeros(x.shape[0], x.shape[1], h, w)


def hw_layers(name: str, in_h: int, in_w: int, c_in, c_out, stride: int, batch: int = 1) -> List[SoftLayers]:
    """Array layers of op ``name`` on an in_h x in_w map; c_in/c_out may be soft tensors."""
    op = effective(get_op(name), stride)
    if op.family != "linear":
        return []       # pooling, skip and zero take no array cycles
    if op.separable:
        dw = soft_conv(in_h, in_w, c_in, c_in, op.kernel, stride, op.padding, op.dilation,
                       depthwise=True, batch=batch)
        out_h = (in_h + 2 * op.padding - op.dilation * (op.kernel - 1) - 1) // stride + 1
        out_w = (in_w + 2 * op.padding - op.dilation * (op.kernel - 1) - 1) // stride + 1
        return [dw, soft_conv(out_h, out_w, c_in, c_out, 1, batch=batch)]
    return [soft_conv(in_h, in_w, c_in, c_out, op.kernel, stride, op.padding, op.dilation, batch=batch)]

