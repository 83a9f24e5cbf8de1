"""Fused mixed-edge kernels: one dispatch, two backends.

``mixed_edge(edge, x, probs, impl)`` computes ``MixedEdge.forward_eager`` with
the linear branches fused (see ``fused``):

* ``"reference"``: the fused formulation with PyTorch primitives (``reference``);
* ``"triton"``: the same formulation with Triton kernels (``triton_kernels``)
  for the multi-kernel depthwise conv and the BN/pool/skip combination; the
  full-conv superkernel and the 1x1 GEMM stay on cuDNN/cuBLAS;
* ``"auto"``: triton for CUDA tensors (but float64 ones: the Triton kernels
  accumulate in float32), reference elsewhere.

``mixed_edges(edges, x, probs, impl)`` runs the edges that read the same x
as one group (one set of launches for all of them).

The environment variable ``UBNAS_KERNELS=reference|triton`` forces either;
``UBNAS_EDGE_GROUPS=0`` makes the supernet call the fused path edge by edge.
On/off variables (these and the Triton kernels' UBNAS_DW_TILED, UBNAS_AUTOTUNE)
take 1/0, true/false, on/off, yes/no in any case and raise ValueError on
anything else (``env_setting``).
Triton is imported only when a Triton path is taken.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch

from . import reference
from .fused import FusedEdge, compose, edge_plan, fused_mixed_edge, fused_mixed_edges

IMPLS = ("reference", "triton", "auto")

__all__ = ["mixed_edge", "mixed_edges", "group_edges", "backend", "env_setting", "triton_interpreter", "SWITCH",
           "IMPLS", "FusedEdge", "compose", "edge_plan", "reference"]

# the spellings of an on/off environment variable
SWITCH = {**dict.fromkeys(("1", "true", "on", "yes"), True), **dict.fromkeys(("0", "false", "off", "no"), False)}


def env_setting(name: str, accepted: Dict[str, Any], default: Any) -> Any:
    """``accepted[value]`` for the environment variable ``name`` (stripped, any case), ``default`` when
    unset or empty; ValueError naming the variable, its value and the accepted ones for anything else."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() not in accepted:
        raise ValueError(f"{name}={raw!r} is not understood: use one of {', '.join(accepted)} (any case)")
    return accepted[raw.lower()]


def triton_interpreter() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's CPU interpreter, read as Triton reads it
    (1, true, on, yes in any case)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def backend(impl: str, device: torch.device, dtype: Optional[torch.dtype] = None):
    """The kernel module for ``impl`` on ``device`` (after the UBNAS_KERNELS override).  'auto' takes
    the reference for float64 ``dtype``: the Triton kernels accumulate in float32."""
    forced = env_setting("UBNAS_KERNELS", {"reference": "reference", "triton": "triton"}, None)
    impl = forced or impl
    if impl not in IMPLS:
        raise ValueError(f"unknown kernel impl {impl!r} (expected one of {', '.join(IMPLS)})")
    kind = torch.device(device).type
    if impl == "auto":
        impl = "triton" if kind == "cuda" and dtype != torch.float64 else "reference"
    if impl == "triton" and kind != "cuda" and not triton_interpreter():
        # a forced value overrides --kernels: only the variable's value can help then
        fix = ("unset UBNAS_KERNELS or set it to reference" if forced else "use 'auto' or 'reference'")
        by = f" (set by UBNAS_KERNELS={os.environ['UBNAS_KERNELS'].strip()})" if forced else ""
        raise ValueError(f"kernels 'triton'{by} need CUDA tensors, got {kind} ones "
                         f"({fix}; TRITON_INTERPRET=1 runs the kernels on a CPU, slowly)")
    if impl == "triton":
        from . import triton_kernels
        return triton_kernels
    return reference


SETUP_ENV = ("UBNAS_KERNELS", "UBNAS_DW_TILED", "UBNAS_AUTOTUNE", "UBNAS_EDGE_GROUPS", "TRITON_INTERPRET")


def setup_line(device: torch.device) -> str:
    """Which kernels ``impl='auto'`` runs on ``device`` and the environment that chose them, for a
    benchmark's log (a stray UBNAS_KERNELS=reference would otherwise pass for the Triton path)."""
    env = " ".join(f"{k}={os.environ[k]}" for k in SETUP_ENV if os.environ.get(k)) or "no UBNAS_*/TRITON_* set"
    return f"kernels 'auto' = {backend('auto', device).__name__}; {env}"


def mixed_edge(edge, x: torch.Tensor, probs: torch.Tensor, impl: str = "auto",
               fold: Optional[bool] = None) -> torch.Tensor:
    """Fused ``edge.forward_eager(x, probs)``: x (N, C, H, W), probs (n_ops,) -> (N, C, Ho, Wo).

    ``fold`` (default ``fused.FOLD_SEPARABLE``) folds separable ops that fit in the
    full-conv superkernel into it instead of the depthwise pass.
    """
    return fused_mixed_edge(edge, x, probs, backend(impl, x.device, x.dtype), fold)


def group_edges() -> bool:
    """UBNAS_EDGE_GROUPS (an on/off switch, default on): the supernet runs the edges leaving a cell
    state as one group."""
    return env_setting("UBNAS_EDGE_GROUPS", SWITCH, True)


def mixed_edges(edges, x: torch.Tensor, probs: torch.Tensor, impl: str = "auto",
                fold: Optional[bool] = None) -> List[torch.Tensor]:
    """Fused ``[e.forward_eager(x, probs[i]) for i, e in enumerate(edges)]`` in one call.

    edges: MixedEdges with the same op list, width and stride; x (N, C, H, W);
    probs (G, n_ops) -> G tensors (N, C, Ho, Wo).
    """
    return fused_mixed_edges(edges, x, probs, backend(impl, x.device, x.dtype), fold)
