#!/usr/bin/env python3
"""Time one full search step of a supernet: eager MixedOp vs torch.compile vs the fused kernels.

A step = weight step (forward on a batch with a Gumbel sample held fixed,
cross-entropy, backward to the weights, SGD) + architecture step (forward on
another batch, cross-entropy, backward to ``net.arch_parameters()`` with the
weights frozen, Adam), as ``ubnas search`` runs it.  All variants start from the same
weights and run side by side in one process.  On CUDA: CUDA events, warm-up,
median of ``--repeats`` steps, ``torch.cuda.max_memory_allocated`` (reset
between variants).  Without CUDA the fused path runs its PyTorch reference
backend against eager on a small batch (no memory figures).

    PYTHONPATH=. python3 tools/bench_search_step.py --spaces uboost_cifar,darts_cifar --batches 64,256
"""
from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from ubnas.space import load_space
from ubnas.supernet import Supernet


def make_step(net, model, batches, dtype, tau=1.0):
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)
    arch = net.arch_parameters()
    a_opt = torch.optim.Adam(arch, lr=3e-4, betas=(0.5, 0.999))
    (x1, y1), (x2, y2) = batches
    dev = x1.device.type
    amp = dict(device_type=dev, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step():   # as in ubnas.search: sample fixed in the weight step, weights frozen in the arch step
        with torch.no_grad():
            sample = net.sample("gumbel", tau)
        with torch.autocast(**amp):
            loss = F.cross_entropy(model(x1, sample), y1)
        w_opt.zero_grad(set_to_none=True)
        loss.backward()
        w_opt.step()
        with net.frozen_weights():
            with torch.autocast(**amp):
                loss = F.cross_entropy(model(x2, net.sample("gumbel", tau)), y2)
            a_opt.zero_grad(set_to_none=True)
            loss.backward()
        a_opt.step()
        return loss
    return step


def profile_step(step, label):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(f"--- profile {label}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def run_variant(base, impl, batches, dtype, warmup, repeats, device, prof=False):
    net = copy.deepcopy(base).to(device)
    if impl == "fused":
        net.set_impl("auto")
    model = torch.compile(net) if impl == "compile" else net
    step = make_step(net, model, batches, dtype)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            loss = step()
            times.append(1e3 * (time.perf_counter() - t))
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else float("nan")
    if prof and cuda:
        profile_step(step, f"{impl} b={batches[0][0].shape[0]}")
    ok = bool(torch.isfinite(loss).item())
    del net, model, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return statistics.median(times), min(times), peak, warm_s, ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="uboost_cifar,darts_cifar")
    ap.add_argument("--batches", default=None, help="comma list (default 64,256 on CUDA, 8 on CPU)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--impls", default=None, help="comma list of eager,compile,fused "
                                                  "(default all on CUDA, eager,fused on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="leave torch.backends.cudnn.benchmark off (DARTS' search code turns it on)")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one step per variant")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    device = torch.device("cuda" if cuda else "cpu")
    batches = [int(b) for b in (args.batches or ("64,256" if cuda else "8")).split(",")]
    impls = (args.impls or ("eager,compile,fused" if cuda else "eager,fused")).split(",")
    unknown = [i for i in impls if i not in ("eager", "compile", "fused")]
    if unknown:
        ap.error(f"--impls: unknown {', '.join(unknown)} (expected eager, compile, fused)")
    spaces = {}
    for name in args.spaces.split(","):
        try:
            spaces[name] = load_space(name)
        except (ValueError, OSError) as exc:
            ap.error(f"--spaces: {exc}")
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {args.dtype}  "
              f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} cudnn.benchmark={torch.backends.cudnn.benchmark}",
              flush=True)
    else:
        print("no CUDA: fused = PyTorch reference backend vs eager on CPU, small batch, no memory figures",
              flush=True)
    rows = []
    for space_name, space in spaces.items():
        torch.manual_seed(args.seed)
        base = Supernet(space, (3, 32, 32), 10)
        for b in batches:
            g = torch.Generator().manual_seed(args.seed + b)
            data = [(torch.randn(b, 3, 32, 32, generator=g).to(device),
                     torch.randint(0, 10, (b,), generator=g).to(device)) for _ in range(2)]
            ref = None
            for impl in impls:
                try:
                    med, best, peak, warm, ok = run_variant(base, impl, data, args.dtype, args.warmup,
                                                            args.repeats, device, args.profile)
                except Exception as exc:  # report and go on (e.g. a compile failure)
                    print(f"{space_name} b={b} {impl}: FAILED {type(exc).__name__}: {exc}"[:400], flush=True)
                    torch.cuda.empty_cache() if cuda else None
                    continue
                if impl == "eager":
                    ref = (med, peak)
                rows.append((space_name, b, impl, med, best, peak, warm, ok, ref))
                print(f"{space_name} b={b} {impl}: {med:.2f} ms/step (min {best:.2f}), peak {peak:.0f} MiB, "
                      f"warm-up {warm:.1f} s, finite={ok}", flush=True)
    print()
    head = f"{'space':14s} {'batch':>5s} {'impl':8s} {'ms/step':>9s} {'peak MiB':>9s} {'speedup':>8s} {'mem ratio':>9s}"
    print(head)
    print("-" * len(head))
    for space_name, b, impl, med, best, peak, warm, ok, ref in rows:
        sp = f"{ref[0] / med:.2f}x" if ref else "-"
        mr = f"{ref[1] / peak:.2f}x" if ref and cuda else "-"
        print(f"{space_name:14s} {b:5d} {impl:8s} {med:9.2f} {peak:9.0f} {sp:>8s} {mr:>9s}")
    print("speedup / mem ratio: eager over the variant (higher is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
