#!/usr/bin/env python3
"""Count the device operations one search step dispatches: eager MixedOp vs the fused path.

A supernet with hundreds of small edges (``darts_cifar``) is bound by the host:
every dispatched op costs a few microseconds of Python, dispatcher and launch
whatever the tensor size, so the op count per step is the floor of its step
time.  This tool counts them on any machine (no GPU needed), as the CUDA run
would issue them:

* aten ops that do device work (views, reshapes and allocations are not counted);
* ``--backend triton`` (default): the fused path runs its Triton wrappers (with
  their aten ops, e.g. the sums of partial reductions) and every kernel launch
  counts once; the kernels themselves are not executed (the tensors they would
  write hold garbage), as no count depends on values;
  ``--backend reference``: each call of a fused primitive counts once instead;
* optimizer steps are left out (on CUDA they are foreach ops, a few launches).

The step is ``ubnas.search.search_step`` as ``tools/bench_search_step.py`` runs it (weight
step + architecture step with the hardware cost, ``ubnas search``'s defaults, joint stage)
on 8x8 images: the counts do not depend on the image or batch size.  ``cost`` counts
the hardware cost's share apart (its forward and backward; the same for both variants).
``host ms`` is the median time of that step here, with the kernels stubbed under
``--backend triton``: for darts_cifar's narrow layers mostly host-side cost
(Python, dispatcher, autograd), the part of a launch-bound GPU step the CPU pays;
for uboost_cifar the CPU convolutions still dominate it.

    PYTHONPATH=. python3 tools/count_step_ops.py --spaces darts_cifar,uboost_cifar
"""
from __future__ import annotations

import argparse
import collections
import copy
import os
import statistics
import sys
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_search_step import make_step  # noqa: E402

from ubnas.kernels import reference as R  # noqa: E402
from ubnas.space import load_spaces  # noqa: E402
from ubnas.supernet import Supernet  # noqa: E402

NO_WORK = {"view", "_unsafe_view", "t", "transpose", "expand", "detach", "as_strided", "unsqueeze", "squeeze",
           "reshape", "permute", "alias", "slice", "select", "empty", "empty_strided", "lift_fresh", "split",
           "unbind", "split_with_sizes", "diagonal", "_reshape_alias", "set_", "is_same_size", "empty_like",
           "new_empty", "new_empty_strided"}
PRIMITIVES = ("dw_forward", "dw_backward_input", "dw_backward_weight", "combine_forward", "combine_reduce",
              "bn_backward", "pool_skip_backward")


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten ops by name while ``paused`` is 0."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused and name not in NO_WORK:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count_step(net, batches, counter_box, repeats=5):
    """(aten ops, primitive calls, host ms) of one search step, after one uncounted step.

    host ms: median wall time of ``repeats`` uncounted steps; with ``--backend triton`` the
    launches are stubbed, so on tiny tensors it approximates the host-side cost per step."""
    step = make_step(net, net, batches)
    host_ms = median_host_ms(step, repeats)
    counter = OpCounter()
    hooks = []
    hooks.append(register_optimizer_step_pre_hook(lambda *a: setattr(counter, "paused", counter.paused + 1)))
    hooks.append(register_optimizer_step_post_hook(lambda *a: setattr(counter, "paused", counter.paused - 1)))
    counter_box.update(counter=counter, calls=collections.Counter())
    try:
        with counter:
            step()
    finally:
        for h in hooks:
            h.remove()
        counter_box["counter"] = None
    return counter.ops, counter_box["calls"], host_ms


def median_host_ms(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (ms), after one uncounted warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def _counted(fn, name, box):
    """fn, counted as one launch of ``name`` whose inner aten ops are not counted."""
    def wrapped(*a, **k):
        counter = box.get("counter")
        if counter is None:
            return fn(*a, **k)
        box["calls"][name] += 1
        counter.paused += 1
        try:
            return fn(*a, **k)
        finally:
            counter.paused -= 1
    return wrapped


def count_cost(net, batches, repeats=5):
    """(aten ops, host ms) of the hardware cost alone, forward and backward, as the step runs it."""
    from hwmodels import load_accelerator
    from ubnas.search import SearchConfig, cost_function
    cfg = SearchConfig(stage="joint")
    cost_of = cost_function(net, load_accelerator(cfg.hw), cfg)

    def cost_step():
        with net.frozen_weights():
            arch = net.sample(cfg.relaxation, cfg.tau0)
            cost = cost_of(arch)
            (cost["seconds"] - cost["utilization"]).backward()
    host_ms = median_host_ms(cost_step, repeats)
    counter = OpCounter()
    with counter:
        cost_step()
    return counter.ops, host_ms


def instrument(backend: str, box):
    """Count reference primitives, or Triton kernel launches (interpreter), as one launch each."""
    if backend == "reference":
        for name in PRIMITIVES:
            setattr(R, name, _counted(getattr(R, name), name, box))
        return
    from triton.runtime.interpreter import InterpretedFunction

    def counted_launch(self, *a, **k):   # counted, never executed: no count depends on values
        if box.get("counter") is not None:
            box["calls"][self.__name__] += 1
    InterpretedFunction.run = counted_launch


MAX_BATCH = 64


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="darts_cifar,uboost_cifar")
    ap.add_argument("--batch", type=int, default=2, help="images per batch (the count does not depend on it)")
    ap.add_argument("--backend", choices=("triton", "reference"), default="triton")
    ap.add_argument("--top", type=int, default=0, help="also list the N most frequent ops per variant")
    args = ap.parse_args(argv)
    if not 1 <= args.batch <= MAX_BATCH or args.top < 0:   # the count is the same at any batch: a huge
        ap.error(f"--batch must be in [1, {MAX_BATCH}] and --top >= 0, "   # one only ran out of memory
                 f"got {args.batch} and {args.top}")
    try:
        spaces = load_spaces(args.spaces)
    except ValueError as exc:
        ap.error(f"--spaces: {exc}")
    if args.backend == "triton":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--backend triton needs TRITON_INTERPRET=1 before triton is imported")
        os.environ["TRITON_INTERPRET"] = "1"
    box = {}
    instrument(args.backend, box)
    if args.backend == "triton":
        print("host ms is not a like-for-like time: fused's Triton kernels are stubbed (counted, never run), "
              "so fused's is its host overhead plus the aten convolutions it still runs on the CPU")
    else:
        print("host ms: both variants compute on the CPU (fused: the PyTorch reference kernels)")
    print(f"{'space':14s} {'impl':6s} {'aten ops':>9s} {'kernels':>8s} {'total':>7s} {'eager/fused':>11s} "
          f"{'host ms':>8s}")
    for space_name, space in spaces.items():
        torch.manual_seed(0)
        base = Supernet(space, (3, 8, 8), 10)
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(args.batch, 3, 8, 8, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
                   for _ in range(2)]
        totals = {}
        for impl in ("eager", "fused"):
            net = copy.deepcopy(base)
            if impl == "fused":
                net.set_impl(args.backend)
            ops, calls, host_ms = count_step(net, batches, box)
            totals[impl] = sum(ops.values()) + sum(calls.values())
            ratio = f"{totals['eager'] / totals[impl]:.2f}x"
            print(f"{space_name:14s} {impl:6s} {sum(ops.values()):9d} {sum(calls.values()):8d} {totals[impl]:7d} "
                  f"{ratio:>11s} {host_ms:8.1f}", flush=True)
            for name, n in (ops + calls).most_common(args.top):
                print(f"{'':22s}{n:6d}  {name}")
        ops, host_ms = count_cost(copy.deepcopy(base), batches)
        print(f"{space_name:14s} {'cost':6s} {sum(ops.values()):9d} {0:8d} {sum(ops.values()):7d} {'(in both)':>11s} "
              f"{host_ms:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
