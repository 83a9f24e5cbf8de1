#!/usr/bin/env python
"""Time the hardware cost models on a 50-layer network.

The layer list is resnet18-cifar's 21 layers followed by mobilenetv2-cifar's,
cut to --layers (default 50).  Timed, median over --repeats runs:

* ``hwmodels.exact.network_cost``                  (target: < 1 ms for 50 layers, scaled to --layers)
* ``hwmodels.smooth.network_cost_torch`` forward and forward+backward, when
  ``hwmodels.smooth`` is there (soft m/k/n tensors that require grad)
* ``hwmodels.scalesim.run_scalesim`` on the first --scalesim-layers layers, when
  SCALE-Sim is importable: one run per layer, each timed once; the measured total and
  per-layer times are reported as they are, next to each layer's simulated lines
  (``hwmodels.suites.simulated_lines``).  SCALE-Sim's time follows each layer's simulated
  lines plus a fixed cost per run, not the layer count, so it is not extrapolated to the
  whole list; the ratio compares it with the exact model on the same layers.

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


def int_at_least(low: int):
    """argparse type: an integer >= low."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)   # 0 would divide by zero or leave nothing to time


def main(argv=None) -> int:
    from hwmodels.exact import MODES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", default="uboost", help="accelerator preset or YAML file (default uboost)")
    parser.add_argument("--mode", choices=MODES, default="systolic",
                        help="hwmodels.exact cost model mode timed (default systolic)")
    parser.add_argument("--layers", type=positive_int, default=50,
                        help="layers of the timed network: resnet18-cifar's, then mobilenetv2-cifar's (default 50)")
    parser.add_argument("--repeats", type=positive_int, default=200,
                        help="timed runs of each analytical model; the median is reported (default 200)")
    parser.add_argument("--scalesim-layers", type=int_at_least(0), default=5,
                        help="SCALE-Sim simulates the first N of the layers, each once (default 5; slow: "
                             "minutes per layer; 0: no SCALE-Sim)")
    args = parser.parse_args(argv)

    from hwmodels import load_accelerator
    from hwmodels.accelerator import HardwareConfigError
    from hwmodels.exact import network_cost
    try:
        acc = load_accelerator(args.hw)
    except HardwareConfigError as exc:
        parser.error(f"--hw: {exc}")
    layers = network_layers(args.layers)
    rows = []

    exact_s = median_seconds(lambda: network_cost(layers, acc, args.mode), args.repeats)
    exact = network_cost(layers, acc, args.mode)
    target_s = 1e-3 * len(layers) / 50   # the goal, < 1 ms for 50 layers, scaled to --layers
    rows.append(("exact.network_cost", exact_s, "yes" if exact_s < target_s else "NO"))

    if importlib.util.find_spec("hwmodels.smooth") is not None:
        import torch
        from hwmodels import smooth
        base = smooth.from_layers(layers)

        fields = {f: getattr(base, f).clone().requires_grad_(f in ("m", "k", "n"))
                  for f in smooth.SoftLayers.__dataclass_fields__}
        leaves = smooth.SoftLayers(**fields)   # built once: the timing is the model's, not the copies'

        def forward():
            with torch.no_grad():
                return smooth.network_cost_torch(base, acc, args.mode)

        def forward_backward():
            cost = smooth.network_cost_torch(leaves, acc, args.mode)
            cost["total_cycles"].backward()
            for f in ("m", "k", "n"):
                getattr(leaves, f).grad = None

        rows.append(("smooth forward", median_seconds(forward, args.repeats), ""))
        rows.append(("smooth forward+backward", median_seconds(forward_backward, args.repeats), ""))
        smooth_total = float(forward()["total_cycles"])
        print(f"smooth/exact total cycles: {smooth_total / exact.cycles:.6f}")
    else:
        print("hwmodels.smooth not available: smooth timings left out")

    scalesim = None
    if args.scalesim_layers == 0:
        print("--scalesim-layers 0: SCALE-Sim timing left out")
    elif importlib.util.find_spec("scalesim") is not None:
        from hwmodels.scalesim import run_scalesim
        from hwmodels.suites import simulated_lines
        subset = layers[:args.scalesim_layers]
        per_layer = []
        for layer in subset:   # each layer timed on its own: the times differ widely
            start = time.perf_counter()
            run_scalesim([layer], acc)
            per_layer.append((layer.name, time.perf_counter() - start,
                              simulated_lines(layer, acc.array_rows, acc.array_cols, acc.dataflow)))
        sim_s = sum(t for _, t, _ in per_layer)
        exact_subset_s = median_seconds(lambda: network_cost(subset, acc, args.mode), args.repeats)
        rows.append((f"exact.network_cost ({len(subset)} layers)", exact_subset_s, ""))
        rows.append((f"scalesim ({len(subset)} layers, measured)", sim_s, ""))
        scalesim = (per_layer, sim_s, exact_subset_s)
    else:
        print("scalesim not importable: SCALE-Sim timing left out")

    print(f"{len(layers)} layers on {acc.name} ({acc.array_rows}x{acc.array_cols} {acc.dataflow}), "
          f"mode {args.mode}, median of {args.repeats}; python {sys.version.split()[0]}")
    target = f"< {target_s * 1e3:.3g} ms"
    print(f"{'model':<34} {'time us':>12} {target:>11}")
    for name, seconds, under in rows:
        print(f"{name:<34} {seconds * 1e6:>12.1f} {under:>11}")
    if scalesim is not None:
        per_layer, sim_s, exact_subset_s = scalesim
        lines = sum(n for _, _, n in per_layer)
        print(f"scalesim: measured on the first {len(per_layer)} layers, one run each, not extrapolated to "
              f"{len(layers)} layers (its time follows the simulated lines, not the layer count); "
              f"{sim_s / len(per_layer):.1f} s per layer on average, {lines / sim_s:,.0f} simulated lines/s")
        print(f"{'  layer':<36} {'seconds':>9} {'simulated lines':>16}")
        for name, seconds, n in per_layer:
            print(f"  {name:<34} {seconds:>9.2f} {n:>16,}")
        print(f"scalesim / exact on the same {len(per_layer)} layers: {sim_s / exact_subset_s:,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
