"""``ubnas presets``: list the shipped accelerator presets with their key figures."""
from hwmodels import load_accelerator, preset_names
from hwmodels.accelerator import PRESET_DIR


def add_parser(sub):
    parser = sub.add_parser("presets", help="list accelerator presets")
    return parser


def run(args) -> int:
    print(f"{'name':<12} {'array':>9} {'arrays':>6} {'flow':>4} {'clock MHz':>9} "
          f"{'GB/s':>7} {'on-chip MiB':>11} {'B/elem':>6}  source")
    for name in preset_names():
        acc = load_accelerator(PRESET_DIR / f"{name}.yaml")   # the shipped file, whatever the working directory holds
        print(f"{name:<12} {acc.array_rows:>4}x{acc.array_cols:<4} {acc.num_arrays:>6} {acc.dataflow:>4} "
              f"{acc.clock_hz / 1e6:>9.0f} {acc.bandwidth_bytes_per_s / 1e9:>7.0f} "
              f"{acc.onchip_bytes / 2**20:>11.4g} {acc.bytes_per_element:>6}  {acc.source}")   # 256 KiB: 0.25
    return 0
