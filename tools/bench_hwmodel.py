#!/usr/bin/env python
"""Time the hardware cost models on a 50-layer network.

The layer list is resnet18-cifar's 21 layers followed by mobilenetv2-cifar's,
cut to --layers (default 50).  Timed, median over --repeats runs:

* ``hwmodels.exact.network_cost``                  (target: < 1 ms for 50 layers)
* ``hwmodels.smooth.network_cost_torch`` forward and forward+backward, when
  ``hwmodels.smooth`` is there (soft m/k/n tensors that require grad)
* ``hwmodels.scalesim.run_scalesim`` on the first --scalesim-layers layers,
  when SCALE-Sim is importable, scaled to the full list, with the ratio.

Usage: python tools/bench_hwmodel.py [--hw uboost] [--mode systolic] [--repeats 200]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time


def median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def network_layers(count: int):
    from hwmodels.estimate import trace_layers
    from hwmodels.zoo import DEFAULT_INPUT, get_model
    layers = []
    for name in ("resnet18-cifar", "mobilenetv2-cifar"):
        layers += trace_layers(get_model(name), DEFAULT_INPUT)
    while len(layers) < count:            # pad by repeating (never needed for 50)
        layers += layers
    return layers[:count]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", default="uboost")
    parser.add_argument("--mode", default="systolic")
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--scalesim-layers", type=int, default=5)
    args = parser.parse_args(argv)

    from hwmodels import load_accelerator
    from hwmodels.exact import network_cost
    acc = load_accelerator(args.hw)
    layers = network_layers(args.layers)
    rows = []

    exact_s = median_seconds(lambda: network_cost(layers, acc, args.mode), args.repeats)
    exact = network_cost(layers, acc, args.mode)
    rows.append(("exact.network_cost", exact_s, "yes" if exact_s < 1e-3 else "NO"))

    if importlib.util.find_spec("hwmodels.smooth") is not None:
        import torch
        from hwmodels import smooth
        base = smooth.from_layers(layers)

        def soft():
            fields = {f: getattr(base, f).clone().requires_grad_(f in ("m", "k", "n"))
                      for f in smooth.SoftLayers.__dataclass_fields__}
            return smooth.SoftLayers(**fields)

        def forward():
            with torch.no_grad():
                return smooth.network_cost_torch(base, acc, args.mode)

        def forward_backward():
            cost = smooth.network_cost_torch(soft(), acc, args.mode)
            cost["total_cycles"].backward()

        rows.append(("smooth forward", median_seconds(forward, args.repeats), ""))
        rows.append(("smooth forward+backward", median_seconds(forward_backward, args.repeats), ""))
        smooth_total = float(forward()["total_cycles"])
        print(f"smooth/exact total cycles: {smooth_total / exact.cycles:.6f}")
    else:
        print("hwmodels.smooth not available: smooth timings left out")

    scalesim_ratio = None
    if importlib.util.find_spec("scalesim") is not None:
        from hwmodels.scalesim import run_scalesim
        subset = layers[:args.scalesim_layers]
        start = time.perf_counter()
        run_scalesim(subset, acc)
        sim_s = (time.perf_counter() - start) * len(layers) / len(subset)
        rows.append((f"scalesim ({len(subset)} layers, scaled)", sim_s, ""))
        scalesim_ratio = sim_s / exact_s
    else:
        print("scalesim not importable: SCALE-Sim timing left out")

    print(f"{len(layers)} layers on {acc.name} ({acc.array_rows}x{acc.array_cols} {acc.dataflow}), "
          f"mode {args.mode}, median of {args.repeats}; python {sys.version.split()[0]}")
    print(f"{'model':<34} {'time us':>12} {'< 1 ms':>7}")
    for name, seconds, under in rows:
        print(f"{name:<34} {seconds * 1e6:>12.1f} {under:>7}")
    if scalesim_ratio is not None:
        print(f"scalesim / exact: {scalesim_ratio:,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
