#!/usr/bin/env python3
"""Time one full search step of a supernet: eager MixedOp vs torch.compile vs the fused kernels.

The step is ``ubnas.search.search_step``, the function ``ubnas search`` runs, with its
default options: weight step (forward on a batch with a Gumbel sample held fixed,
cross-entropy, backward to the weights, gradient clipping, SGD) + architecture step
(forward on another batch with the weights frozen, cross-entropy plus the hardware
cost on the ``uboost`` accelerator, backward to the architecture parameters, Adam).
``--stage joint`` (default) mixes ops and widths; ``op`` fixes the widths at their
tops (U-Boost's first stage); in ``channel`` every edge runs its one op, the same code
for every variant.  All variants start from the same weights, data and Gumbel noise
and run side by side in one process.  On CUDA: CUDA events, warm-up, median of
``--repeats`` steps, ``torch.cuda.max_memory_allocated`` (reset between variants).
Without CUDA the fused path runs its PyTorch reference backend against eager on a
small batch (no memory figures).  The first warm-up step also checks each variant against
eager, which starts from the same state: the relative difference of its validation loss and
of its weight update (the clipped weight gradients through SGD), at most ``AGREE_TOL`` (that
step runs without TF32, so fp32 rounding is all that may differ).  Exit status 1 when a
variant fails, its loss is not finite or it disagrees with eager.

    PYTHONPATH=. python3 tools/bench_search_step.py --spaces uboost_cifar,darts_cifar --batches 64,256
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import statistics
import sys
import time

import torch

from hwmodels import load_accelerator
from ubnas import kernels
from ubnas.search import (SearchConfig, cost_function, enter_stage, make_optimizers, search_step,
                          stage_latency_ref)
from ubnas.space import load_spaces
from ubnas.supernet import Supernet

IMPLS = ("eager", "compile", "fused")
# fp32 rounding leaves ~2e-4 (uboost_cifar on a CPU); a kernel 5 % off in one place leaves >= 6e-3
AGREE_TOL = {"fp32": 3e-3, "bf16": 5e-2}


@contextlib.contextmanager
def no_tf32():
    """cuDNN convolutions and matmuls in full fp32 (both default to TF32 on CUDA)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_step(net, model, batches, dtype="fp32", stage="joint", seed=0):
    """A closure that runs one ``search_step`` of ``net`` (forward through ``model``) on
    ``batches`` = [(x, y) weight batch, (x, y) architecture batch] and returns the
    architecture step's validation loss; ``ubnas search``'s default options, first epoch."""
    cfg = SearchConfig(stage=stage)
    w_opt, a_opt = make_optimizers(net, cfg)
    cost_of = cost_function(net, load_accelerator(cfg.hw), cfg)
    hard_ops = enter_stage(net, stage)   # as run_search does per stage
    latency_ref = stage_latency_ref(net, cost_of, hard_ops)   # as run_search: the cost this stage starts at
    generator = torch.Generator().manual_seed(seed + 2)   # every variant draws the same Gumbel noise
    def forward(x, arch):   # bf16: the network's forward under autocast; the hardware cost stays in fp32
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            return model(x, arch)

    def step():
        return search_step(net, batches[0], batches[1], w_opt, a_opt, cost_of, cfg, cfg.tau0, latency_ref,
                           0.0, generator, hard_ops, forward).val_loss
    return step


def profile_step(step, label):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(f"--- profile {label}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


def run_variant(base, impl, batches, dtype, stage, warmup, repeats, device, prof=False):
    net = copy.deepcopy(base).to(device)
    if impl == "fused":
        net.set_impl("auto")
    if impl == "compile":
        torch._dynamo.reset()   # a fresh static-shape graph, not one made dynamic by an earlier batch size
    model = torch.compile(net) if impl == "compile" else net
    step = make_step(net, model, batches, dtype, stage)
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    before = [p.detach().clone() for p in net.weight_parameters()]
    with no_tf32():   # the agreement check's step (untimed, part of the warm-up)
        first_loss = float(step().detach())
    update = torch.cat([(p.detach() - p0).flatten().double().cpu() for p, p0 in zip(net.weight_parameters(), before)])
    del before   # off the device before the peak is measured
    # on CUDA one more: cudnn.benchmark picks the TF32 algorithms before the timed steps
    for _ in range(max(warmup - 1, 1 if cuda else 0)):
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
    return statistics.median(times), min(times), peak, warm_s, ok, (first_loss, update)


def disagreement(first, reference) -> float:
    """Largest relative difference between two variants' first steps ((val loss, weight update))."""
    (loss, update), (ref_loss, ref_update) = first, reference
    return max(abs(loss - ref_loss) / max(abs(ref_loss), 1e-12),
               float((update - ref_update).norm() / ref_update.norm().clamp_min(1e-30)))


def measure_all(args, spaces, batches, impls, device, rows) -> None:
    """Every (space, batch, impl) variant; appends (space, batch, impl, ms, MiB, differs, status) to
    ``rows`` as each finishes (differs: vs eager's first step, None without eager; status 'ok',
    'not finite', 'DISAGREES' or 'FAILED', the last without figures), so an interrupt keeps what
    was measured.  ``impls`` must start with eager when it holds it (the others compare with it)."""
    cuda = device.type == "cuda"
    for space_name, space in spaces.items():
        torch.manual_seed(args.seed)
        base = Supernet(space, (3, 32, 32), 10)
        for b in batches:
            g = torch.Generator().manual_seed(args.seed + b)
            data = [(torch.randn(b, 3, 32, 32, generator=g).to(device),
                     torch.randint(0, 10, (b,), generator=g).to(device)) for _ in range(2)]
            reference = None   # eager's first step at this batch, once it ran
            for impl in impls:
                try:
                    med, best, peak, warm, ok, first = run_variant(base, impl, data, args.dtype, args.stage,
                                                                   args.warmup, args.repeats, device, args.profile)
                except Exception as exc:  # report and go on (e.g. a compile failure), but fail at the end
                    print(f"{space_name} b={b} {impl}: FAILED {type(exc).__name__}: {exc}"[:400], flush=True)
                    rows.append((space_name, b, impl, None, None, None, "FAILED"))
                    torch.cuda.empty_cache() if cuda else None
                    continue
                if impl == "eager":
                    reference = first
                differs = disagreement(first, reference) if reference is not None else None
                agrees = differs is None or differs <= AGREE_TOL[args.dtype]
                status = "not finite" if not ok else "ok" if agrees else "DISAGREES"
                if status == "ok" and differs is None and impl != "eager" and "eager" in impls:
                    status = "unchecked"   # eager was asked for but failed: nothing to compare with
                rows.append((space_name, b, impl, med, peak, differs, status))
                memory = f"peak {peak:.0f} MiB, " if cuda else ""
                agree = "" if differs is None or impl == "eager" else f", vs eager {differs:.1e}"
                print(f"{space_name} b={b} {impl}: {med:.2f} ms/step (min {best:.2f}), {memory}"
                      f"warm-up {warm:.1f} s, finite={ok}{agree}{'' if agrees else ' DISAGREES'}", flush=True)


def items(text: str):
    """The non-empty entries of a comma list ('tiny,' is one space, not a second one named '')."""
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="uboost_cifar,darts_cifar")
    ap.add_argument("--batches", default=None, help="comma list (default 64,256 on CUDA, 8 on CPU)")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps first (compilation, autotuning); one step, the check against eager, "
                         "runs even with 0, and at least 2 on CUDA")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: the network's forward under bf16 autocast (not an option of ubnas search)")
    ap.add_argument("--stage", choices=("joint", "op", "channel"), default="joint",
                    help="which search stage's step (default joint: ops and widths mixed)")
    ap.add_argument("--impls", default=None, help="comma list of eager,compile,fused "
                                                  "(default all on CUDA, eager,fused on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="leave torch.backends.cudnn.benchmark off (ubnas search turns it on on CUDA)")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one step per variant")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    cuda = torch.cuda.is_available()
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    device = torch.device("cuda" if cuda else "cpu")
    try:
        batches = [int(b) for b in items(args.batches or ("64,256" if cuda else "8"))]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        ap.error(f"--batches: expected a comma list of integers >= 1, got {args.batches!r}")
    impls = items(args.impls or ("eager,compile,fused" if cuda else "eager,fused"))
    unknown = [i for i in impls if i not in IMPLS]
    if unknown or not impls:
        ap.error(f"--impls: unknown {', '.join(unknown) or 'empty list'} (expected {', '.join(IMPLS)})")
    if "eager" in impls:   # first: the other variants' speedup, memory ratio and agreement compare with it
        impls = ["eager"] + [i for i in impls if i != "eager"]
    else:
        print("note: no eager variant, so no speedup, memory ratio or agreement check", flush=True)
    if args.profile and not cuda:
        print("note: --profile profiles CUDA kernels; without CUDA it does nothing", flush=True)
    try:
        spaces = load_spaces(args.spaces)
    except ValueError as exc:
        ap.error(f"--spaces: {exc}")
    if cuda:
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  dtype {args.dtype}  "
              f"stage {args.stage}  cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} "
              f"cudnn.benchmark={torch.backends.cudnn.benchmark}", flush=True)
    else:
        print(f"no CUDA: fused = {kernels.backend('auto', device).__name__} vs eager on CPU, small batch, "
              f"no memory figures; stage {args.stage}", flush=True)
    print(kernels.setup_line(device), flush=True)
    rows, interrupted = [], False
    try:
        measure_all(args, spaces, batches, impls, device, rows)
    except KeyboardInterrupt:   # timeout -s INT: the table of what was measured still prints
        print("interrupted: the table below holds the variants measured so far", flush=True)
        interrupted = True
    failed = sum(1 for row in rows if row[-1] != "ok") + (not rows)
    print()
    head = (f"{'space':14s} {'batch':>5s} {'impl':8s} {'ms/step':>9s} {'peak MiB':>9s} {'speedup':>8s} "
            f"{'mem ratio':>9s} {'vs eager':>9s}  status")
    print(head)
    print("-" * len(head))
    eager = {(space_name, b): (med, peak) for space_name, b, impl, med, peak, _, status in rows
             if impl == "eager" and status != "FAILED"}
    for space_name, b, impl, med, peak, differs, status in rows:
        if status == "FAILED":
            print(f"{space_name:14s} {b:5d} {impl:8s} {'-':>9s} {'-':>9s} {'-':>8s} {'-':>9s} {'-':>9s}  FAILED")
            continue
        ref = eager.get((space_name, b))
        speedup = f"{ref[0] / med:.2f}x" if ref else "-"
        mem_ratio = f"{ref[1] / peak:.2f}x" if ref and cuda else "-"
        peak_text = f"{peak:9.0f}" if cuda else f"{'-':>9s}"
        agree = f"{differs:9.1e}" if differs is not None and impl != "eager" else f"{'-':>9s}"
        print(f"{space_name:14s} {b:5d} {impl:8s} {med:9.2f} {peak_text} {speedup:>8s} {mem_ratio:>9s} {agree}"
              f"  {status}")
    print("speedup / mem ratio: eager over the variant, measured in this run (higher is better); vs eager: "
          f"relative difference of the first step's val loss and weight update, without TF32 (at most "
          f"{AGREE_TOL[args.dtype]:g})")
    if failed:
        print(f"{failed} variant(s) failed, gave a non-finite loss or disagreed with eager", file=sys.stderr)
    if interrupted:
        print("interrupted before every variant ran", file=sys.stderr)
    return 1 if failed or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
