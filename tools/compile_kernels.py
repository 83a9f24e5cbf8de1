#!/usr/bin/env python3
"""Compile every Triton kernel of ubnas.kernels for a CUDA target without a GPU (default sm_90, H100).

Lowers each kernel through Triton and assembles it with the bundled ptxas, for one
representative specialisation each, and the 2-D tile depthwise kernels (the default family)
at every autotune configuration and both strides; prints the cubin size and, from the bundled
cuobjdump, registers and stack bytes per thread (a stack above 0 is register spilling, slow).
Evidence that a kernel changed on a CPU-only machine (where the tests run it in the
interpreter) also compiles for the GPU.  It checks neither values nor speed; tools/gpu_check.sh
does, on a GPU.  The installed Triton may be newer than the GPU machine's.

    PYTHONPATH=. python3 tools/compile_kernels.py [--arch 90]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

from ubnas.kernels import triton_interpreter   # imports no Triton yet

if triton_interpreter():   # the kernels' configs are then the interpreter's
    print("compile_kernels.py: unset TRITON_INTERPRET; it compiles for the GPU, which the interpreter does not",
          file=sys.stderr)
    sys.exit(2)

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ubnas.kernels import triton_combine as C, triton_dw_gather as G, triton_dw_tile as T



def known_archs() -> set:
    """Compute capabilities (90 for sm_90) that the bundled ptxas assemblers name in their help; empty
    when none can be asked.  LLVM aborts the process on a target it does not know (--arch 7)."""
    archs = set()
    for name in ("ptxas", "ptxas-blackwell"):
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(tool):
            text = subprocess.run([tool, "--help"], capture_output=True, text=True).stdout
            archs |= {int(n) for n in re.findall(r"'sm_(\d+)'", text)}
    return archs


ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 (H100/H200)")
arch, archs = ap.parse_args().arch, known_archs()
if archs and arch not in archs:
    ap.error(f"--arch {arch}: not a compute capability the bundled ptxas knows "
             f"({', '.join(map(str, sorted(archs)))})")
target = GPUTarget("cuda", arch, 32)


def resources(cubin: bytes) -> str:
    """'REG r STACK s' of a cubin (cuobjdump -res-usage), or '' when the tool is missing."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        out = subprocess.run([tool, "-res-usage", handle.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return f"REG {found[1]:>3} STACK {found[2]:>4}" if found else ""


def compile_kernel(kern, consts, ptr_types, num_warps=4):
    """(cubin size in bytes, resources) of ``kern`` with constexprs ``consts`` at ``num_warps``;
    pointers fp32 unless in ptr_types."""
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
    k = triton.compile(src, target=target, options={"num_warps": num_warps})
    return len(k.asm["cubin"]), resources(k.asm["cubin"])

tile = dict(K0=3, D0=1, K1=5, D1=1, K2=3, D2=2, K3=5, D3=2, NK=4)
cases = [
    ("_dw_fwd", G._dw_fwd, dict(STRIDE=1, TAPS=32, BLOCK=512), {"spec_ptr": "*i32"}),
    ("_dw_bwd_in", G._dw_bwd_in, dict(STRIDE=2, TAPS=32, HAS_LIN=True, HAS_EXTRA=True, BLOCK=512),
     {"spec_ptr": "*i32"}),
    ("_dw_bwd_w", G._dw_bwd_w, dict(STRIDE=1, TAPS=32, BLOCK=128), {"spec_ptr": "*i32"}),
    ("_combine_fwd", C._combine_fwd, dict(STRIDE=1, HAS_LIN=True, HAS_MAX=True, HAS_AVG=True, HAS_SKIP=True,
                                          BLOCK=1024), {}),
    ("_combine_red", C._combine_red, dict(STRIDE=2, HAS_LIN=True, HAS_MAX=True, HAS_AVG=True, HAS_SKIP=False,
                                          BLOCK=1024), {}),
    ("_bn_bwd", C._bn_bwd, dict(BATCH=True, BLOCK=1024), {}),
    ("_pool_bwd", C._pool_bwd, dict(STRIDE=2, HAS_MAX=True, HAS_AVG=True, HAS_SKIP=False, BLOCK=256), {}),
    ("_pool_bwd(skip)", C._pool_bwd, dict(STRIDE=1, HAS_MAX=True, HAS_AVG=True, HAS_SKIP=True, BLOCK=256), {}),
]
cases = [case + (4,) for case in cases]   # 4 warps, as block_configs; the tile kernels' warps follow
tile_kernels = [   # (name, kernel, its constexprs at a stride)
    ("_dw_fwd_tile", T._dw_fwd_tile, lambda stride: dict(tile, STRIDE=stride)),
    ("_dw_bwd_in_tile", T._dw_bwd_in_tile,
     lambda stride: dict(tile, STRIDE=stride, HAS_LIN=True, HAS_EXTRA=True, MASK=True)),
    ("_dw_bwd_w_tile", T._dw_bwd_w_tile, lambda stride: dict(K=5, DIL=2, STRIDE=stride)),
]
for name, kern, consts_at in tile_kernels:
    # each kernel's own autotune list (one config with UBNAS_AUTOTUNE=0): _dw_bwd_in_tile skips one
    # that spills, which a shared list would report as if it could run
    for config in kern.configs:
        shape = dict(BLOCK_H=config.kwargs["BLOCK_H"], BLOCK_W=config.kwargs["BLOCK_W"])
        at = f"{shape['BLOCK_H']}x{shape['BLOCK_W']}/{config.num_warps}w"
        for stride in (1, 2):
            cases.append((f"{name} s{stride} {at}", kern, dict(consts_at(stride), **shape), {}, config.num_warps))
ok = True
for name, kern, consts, ptrs, warps in cases:
    try:
        n, used = compile_kernel(kern, consts, ptrs, warps)
        print(f"{name:36s} sm_{target.arch} cubin {n:7d} bytes  {used}")
    except Exception as e:  # report and go on
        ok = False
        print(f"{name:36s} FAILED: {type(e).__name__}: {str(e)[:300]}")
sys.exit(0 if ok else 1)
