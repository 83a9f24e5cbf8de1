"""``ubnas spaces``: list the shipped search spaces."""
from ..space import load_space, space_names


def add_parser(sub):
    return sub.add_parser("spaces", help="list shipped search spaces")


def run(args) -> int:
    print(f"{'name':<14} {'cells':>5} {'nodes':>5} {'edges/cell':>10} {'ops':>3}  widths (first cell)  description")
    for name in space_names():
        s = load_space(name)
        ch = s.cells[0].channels
        widths = f"{ch.min}..{ch.max}/{ch.step}"
        print(f"{name:<14} {len(s.cells):>5} {s.nodes:>5} {s.edges_per_cell:>10} {len(s.ops):>3}  "
              f"{widths:<19}  {s.description}")
    return 0
