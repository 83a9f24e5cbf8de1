"""The Triton backend of the fused mixed edge: each function has the signature of its twin in
``reference`` (read that module's docstring for shapes and names).

The kernels live in small modules:

* ``triton_dw_tile``: the multi-kernel depthwise conv, its dL/dx and dL/dw on 2-D spatial tiles
  with constexpr (k, dilation) (the default, ``tiled``): timed on an H100 (uboost_cifar, batch 256:
  385.8 ms per fused step vs 584.9 with the gathers, NOTES.md);
* ``triton_dw_gather``: the same three as (TAPS, BLOCK) gathers (``UBNAS_DW_TILED=0``), kept for
  comparison and for dL/dw of kernels larger than ``triton_dw_tile.MAX_WEIGHT_K``;
* ``triton_combine``: P_lin * BN(z) + pools + skip, its per-channel sums, the BN backward and the
  pool/skip backward;
* ``triton_common``: autotune configurations (``UBNAS_AUTOTUNE``), the jit without shape
  specialisation, relu on load that keeps NaN as torch.relu does.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import SWITCH, env_setting, triton_dw_gather, triton_dw_tile
from .reference import Spec, out_size
from .triton_combine import bn_backward, combine_forward, combine_reduce, pool_skip_backward
from .triton_common import autotune

__all__ = ["dw_forward", "dw_backward_input", "dw_backward_weight", "combine_forward", "combine_reduce",
           "bn_backward", "pool_skip_backward", "tiled", "autotune"]


def tiled(weight: bool = False) -> bool:
    """UBNAS_DW_TILED (an on/off switch, or "io"): on (the default) runs the 2-D tile depthwise
    kernels (``triton_dw_tile``), off the (TAPS, BLOCK) gathers (``triton_dw_gather``), "io" the tile
    kernels for forward and dL/dx only.  On by default because they were the faster family on an
    H100 (NOTES.md); both pass the same tests, and ``tools/gpu_check.sh bench`` times and checks both."""
    v = env_setting("UBNAS_DW_TILED", {**SWITCH, "io": "io"}, True)
    return v is True or (v == "io" and not weight)


# The depthwise entry points make their inputs contiguous (and allocate the forward's output)
# here, once for both families; the family functions only launch.
def dw_forward(x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
               out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Multi-kernel depthwise conv of relu(x): (N, C, H, W) -> (N, NK*C, Ho, Wo) (reference.dw_forward)."""
    x, w = x.contiguous(), w.contiguous()
    n, c, h, wd = x.shape
    d = torch.empty(n, len(spec) * c, out_size(h, stride), out_size(wd, stride), dtype=out_dtype or x.dtype,
                    device=x.device)
    (triton_dw_tile if tiled() else triton_dw_gather).dw_forward_into(d, x, w, spec, stride)
    return d


def dw_backward_input(dd: torch.Tensor, x: torch.Tensor, w: torch.Tensor, spec: Spec, stride: int,
                      lin: Optional[torch.Tensor] = None, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """dx = [x > 0] * (lin + sum_j dwconv_j^T(dd_j)) + extra, all (N, C, H, W) (reference.dw_backward_input)."""
    dd, x, w = dd.contiguous(), x.contiguous(), w.contiguous()
    lin = lin.contiguous() if lin is not None else None
    extra = extra.contiguous() if extra is not None else None
    family = triton_dw_tile if tiled() else triton_dw_gather
    return family.dw_backward_input(dd, x, w, spec, stride, lin, extra)


def dw_backward_weight(dd: torch.Tensor, x: torch.Tensor, spec: Spec, stride: int) -> torch.Tensor:
    """dL/dw packed flat as w, float32 (reference.dw_backward_weight); the tile kernel takes k <= 5 only."""
    dd, x = dd.contiguous(), x.contiguous()
    if tiled(weight=True) and triton_dw_tile.takes_weight(spec):
        return triton_dw_tile.dw_backward_weight(dd, x, spec, stride)
    return triton_dw_gather.dw_backward_weight(dd, x, spec, stride)
