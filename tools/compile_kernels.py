#!/usr/bin/env python3
"""Compile every Triton kernel of ubnas.kernels for a CUDA target without a GPU (default sm_90, H100).

Lowers each kernel through Triton and assembles it with the bundled ptxas, for one
representative specialisation each, and prints the cubin size: evidence that a kernel
changed on a CPU-only machine (where the tests run it in the interpreter) also compiles
for the GPU.  It checks neither values nor speed; tools/gpu_check.sh does, on a GPU.

    PYTHONPATH=. python3 tools/compile_kernels.py [--arch 90]
"""
import argparse
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ubnas.kernels import triton_combine as C, triton_dw_gather as G, triton_dw_tile as T

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 (H100/H200)")
target = GPUTarget("cuda", ap.parse_args().arch, 32)


def compile_kernel(kern, consts, ptr_types):
    """Cubin size (bytes) of ``kern`` with constexprs ``consts``; pointers fp32 unless in ptr_types."""
    jit = kern
    while not isinstance(jit, triton.runtime.jit.JITFunction):   # autotuner -> JITFunction
        jit = jit.fn
    sig = {}
    for name in jit.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = ptr_types.get(name, "*fp32")
        elif name == "inv_m":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    src = ASTSource(fn=jit, signature=sig, constexprs={(jit.arg_names.index(k),): v for k, v in consts.items()})
    k = triton.compile(src, target=target, options={"num_warps": 4})
    return len(k.asm["cubin"])

tile = dict(K0=3, D0=1, K1=5, D1=1, K2=3, D2=2, K3=5, D3=2, NK=4, STRIDE=1, BLOCK_H=16, BLOCK_W=32)
cases = [
    ("_dw_fwd", G._dw_fwd, dict(STRIDE=1, TAPS=32, BLOCK=512), {"spec_ptr": "*i32"}),
    ("_dw_bwd_in", G._dw_bwd_in, dict(STRIDE=2, TAPS=32, HAS_LIN=True, HAS_EXTRA=True, BLOCK=512),
     {"spec_ptr": "*i32"}),
    ("_dw_bwd_w", G._dw_bwd_w, dict(STRIDE=1, TAPS=32, BLOCK=128), {"spec_ptr": "*i32"}),
    ("_dw_fwd_tile", T._dw_fwd_tile, tile, {}),
    ("_dw_bwd_in_tile", T._dw_bwd_in_tile, dict(tile, HAS_LIN=True, HAS_EXTRA=True, MASK=True), {}),
    ("_dw_bwd_w_tile", T._dw_bwd_w_tile, dict(K=5, DIL=2, STRIDE=2, BLOCK_H=16, BLOCK_W=32), {}),
    ("_combine_fwd", C._combine_fwd, dict(STRIDE=1, HAS_LIN=True, HAS_MAX=True, HAS_AVG=True, HAS_SKIP=True,
                                          BLOCK=1024), {}),
    ("_combine_red", C._combine_red, dict(STRIDE=2, HAS_LIN=True, HAS_MAX=True, HAS_AVG=True, HAS_SKIP=False,
                                          BLOCK=1024), {}),
    ("_bn_bwd", C._bn_bwd, dict(BATCH=True, BLOCK=1024), {}),
    ("_pool_bwd", C._pool_bwd, dict(STRIDE=2, HAS_MAX=True, HAS_AVG=True, HAS_SKIP=False, BLOCK=256), {}),
    ("_pool_bwd(skip)", C._pool_bwd, dict(STRIDE=1, HAS_MAX=True, HAS_AVG=True, HAS_SKIP=True, BLOCK=256), {}),
]
ok = True
for name, kern, consts, ptrs in cases:
    try:
        n = compile_kernel(kern, consts, ptrs)
        print(f"{name:18s} sm_{target.arch} cubin {n} bytes")
    except Exception as e:  # report and go on
        ok = False
        print(f"{name:18s} FAILED: {type(e).__name__}: {str(e)[:300]}")
sys.exit(0 if ok else 1)
