"""Search spaces: YAML files in ``search_spaces/`` validated into dataclasses.

Errors name the file, the key and what was expected, in one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hwmodels.yamlio import is_bare_name, read_utf8, read_yaml, short_repr

from .ops import OPS
from .spec import MAX_SIZE

SPACE_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


class SpaceError(ValueError):
    """A malformed search-space file."""


@dataclass(frozen=True)
class ChannelSpec:
    """A searchable width: a window of ``candidates`` widths init, init+step, ...

    ``min``/``max`` bound every window the allocator may move to; ``dynamic``
    lets the window grow/shift/narrow during search (else it stays fixed).
    """

    init: int
    step: int
    candidates: int
    min: int
    max: int
    dynamic: bool = True

    @property
    def widths(self) -> List[int]:
        return [self.init + j * self.step for j in range(self.candidates)]


@dataclass(frozen=True)
class CellSpec:
    """One cell of a search space: whether it reduces, pools after, and its own width window."""
    reduce: bool = False       # first edges stride 2 (DARTS reduction cell)
    pool_after: bool = False   # 2x2 max-pool after the cell (U-Boost)
    channels: Optional[ChannelSpec] = None


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space YAML (``load_space``): node count, candidate ops, stem and cells."""
    name: str
    nodes: int
    ops: List[str]
    stem_kernel: int
    stem_channels: ChannelSpec
    cells: List[CellSpec]
    description: str = ""
    source: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)
    origin: str = field(default="", compare=False)   # the file read (errors name it: two may share a name)

    @property
    def edges_per_cell(self) -> int:
        return sum(2 + i for i in range(self.nodes))


TOP_KEYS = {"ubnas_space", "name", "description", "source", "nodes", "ops", "stem", "channels", "cells"}


def _need(data: dict, key: str, kind, origin: str, where: str = ""):
    path = f"{where}{key}"
    if key not in data:
        raise SpaceError(f"{origin}: missing key '{path}'")
    value = data[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SpaceError(f"{origin}: key '{path}' expected an integer, got {short_repr(value)}")
    if kind is int and value > MAX_SIZE:
        raise SpaceError(f"{origin}: key '{path}' expected at most {MAX_SIZE}, got {short_repr(value)}")
    if kind is bool and not isinstance(value, bool):
        raise SpaceError(f"{origin}: key '{path}' expected true or false, got {short_repr(value)}")
    if kind in (list, dict, str) and not isinstance(value, kind):
        noun = {list: "a list", dict: "a mapping", str: "a string"}[kind]   # YAML's words, not Python's
        raise SpaceError(f"{origin}: key '{path}' expected {noun}, got {short_repr(value)}")
    return value


def _channels(data: Any, origin: str, where: str) -> ChannelSpec:
    if not isinstance(data, dict):
        raise SpaceError(f"{origin}: key '{where.rstrip('.')}' expected a mapping, got {short_repr(data)}")
    known = {"init", "step", "candidates", "min", "max", "dynamic"}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise SpaceError(f"{origin}: unknown key '{where}{unknown[0]}' (expected {', '.join(sorted(known))})")
    values = {k: _need(data, k, int, origin, where) for k in ("init", "step", "candidates", "min", "max")}
    for key, value in values.items():
        if value < 1:
            raise SpaceError(f"{origin}: key '{where}{key}' must be >= 1, got {value}")
    dynamic = data.get("dynamic", True)
    if not isinstance(dynamic, bool):   # bool("false") is True
        raise SpaceError(f"{origin}: key '{where}dynamic' expected true or false, got {short_repr(dynamic)}")
    if values["min"] > values["max"]:   # else the window below was blamed
        raise SpaceError(f"{origin}: key '{where}min' {values['min']} exceeds '{where}max' {values['max']}")
    spec = ChannelSpec(dynamic=dynamic, **values)
    if not spec.min <= spec.init:
        raise SpaceError(f"{origin}: key '{where}init' {spec.init} is below '{where}min' {spec.min}")
    if spec.widths[-1] > spec.max:   # which of init, step and candidates overshoots is the user's call
        raise SpaceError(f"{origin}: key '{where}init' + ('{where}candidates' - 1) x '{where}step' = "
                         f"{spec.widths[-1]} exceeds '{where}max' {spec.max} (the window {spec.widths[0]}.."
                         f"{spec.widths[-1]} must lie within min..max)")
    return spec


def parse_space(data: Any, origin: str) -> SearchSpace:
    """Validate a YAML mapping into a SearchSpace (``origin`` names the file in errors)."""
    if data is None:   # what YAML reads from an empty file (or one of comments only)
        raise SpaceError(f"{origin}: the file is empty; expected a search space (see search_spaces/tiny.yaml)")
    if not isinstance(data, dict):
        raise SpaceError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    unknown = sorted(set(data) - TOP_KEYS, key=str)
    if "ubnas_spec" in data or "classifier" in data:   # an arch.yaml given as --space
        raise SpaceError(f"{origin}: this is an architecture spec (arch.yaml), not a search space: a search "
                         f"space has keys {', '.join(sorted(TOP_KEYS))} (see search_spaces/tiny.yaml)")
    if unknown:   # a misspelt key ('opps') would otherwise be dropped without a word
        raise SpaceError(f"{origin}: unknown key '{unknown[0]}' (expected {', '.join(sorted(TOP_KEYS))})")
    version = data.get("ubnas_space", 1)
    if type(version) is not int or version != 1:   # true and 1.0 equal 1, yet are no version number
        raise SpaceError(f"{origin}: key 'ubnas_space' expected 1, got {short_repr(version)}")
    # the name reaches provenance: [a, b] or true is no name; free text may be a date or a number
    if data.get("name") is not None and not isinstance(data["name"], str):
        raise SpaceError(f"{origin}: key 'name' expected a string, got {short_repr(data['name'])}")
    for key in ("description", "source"):
        if isinstance(data.get(key), (list, dict)):
            raise SpaceError(f"{origin}: key '{key}' expected text, got {short_repr(data[key])}")
    nodes = _need(data, "nodes", int, origin)
    if nodes < 1:
        raise SpaceError(f"{origin}: key 'nodes' must be >= 1, got {nodes}")
    ops = _need(data, "ops", list, origin)
    for i, op in enumerate(ops):
        if not isinstance(op, str) or op not in OPS:
            raise SpaceError(f"{origin}: key 'ops[{i}]' unknown op {short_repr(op)} (expected one of {', '.join(OPS)})")
    if not ops:
        raise SpaceError(f"{origin}: key 'ops' is empty (expected a list of ops: {', '.join(OPS)})")
    if len(set(ops)) != len(ops):
        raise SpaceError(f"{origin}: key 'ops' must list distinct ops, got {ops}")
    if all(op == "none" for op in ops):   # a network of zero edges has nothing to search or train
        raise SpaceError(f"{origin}: key 'ops' needs an op other than 'none', got {ops}")
    if len(ops) == 1:   # every edge is that op at weight 1: no op to choose, and the wiring is fixed
        raise SpaceError(f"{origin}: key 'ops' lists one op: the search could choose neither ops nor edges (a node "
                         f"sums all its input edges while searching, yet the export keeps its first two); add "
                         f"'none' ([{ops[0]}, none]), which lets it choose the edges")
    stem = _need(data, "stem", dict, origin)
    unknown = sorted(set(stem) - {"kernel", "channels"}, key=str)
    if unknown:
        raise SpaceError(f"{origin}: unknown key 'stem.{unknown[0]}' (expected channels, kernel)")
    stem_kernel = _need(stem, "kernel", int, origin, "stem.")
    if stem_kernel < 1 or stem_kernel % 2 == 0:   # 'same' padding k // 2 keeps the map size only for odd k
        raise SpaceError(f"{origin}: key 'stem.kernel' expected an odd kernel size >= 1, got {stem_kernel}")
    stem_channels = _channels(_need(stem, "channels", dict, origin, "stem."), origin, "stem.channels.")
    default = _channels(data["channels"], origin, "channels.") if "channels" in data else None
    cells = []
    for i, cell in enumerate(_need(data, "cells", list, origin)):
        where = f"cells[{i}]."
        if not isinstance(cell, dict):
            raise SpaceError(f"{origin}: key 'cells[{i}]' expected a mapping, got {short_repr(cell)}")
        unknown = sorted(set(cell) - {"reduce", "pool_after", "channels"}, key=str)
        if unknown:
            raise SpaceError(f"{origin}: unknown key '{where}{unknown[0]}' (expected reduce, pool_after, channels)")
        channels = _channels(cell["channels"], origin, where + "channels.") if "channels" in cell else default
        if channels is None:
            raise SpaceError(f"{origin}: missing key '{where}channels' (or a top-level 'channels' default)")
        for key in ("reduce", "pool_after"):
            if key in cell and not isinstance(cell[key], bool):
                raise SpaceError(f"{origin}: key '{where}{key}' expected true or false, got {short_repr(cell[key])}")
        cells.append(CellSpec(bool(cell.get("reduce", False)), bool(cell.get("pool_after", False)), channels))
    if not cells:
        raise SpaceError(f"{origin}: key 'cells' must list at least one cell")
    return SearchSpace(name=data.get("name") or Path(origin).stem, nodes=nodes, ops=list(ops),
                       stem_kernel=stem_kernel, stem_channels=stem_channels, cells=cells,
                       description=str(data.get("description") or ""), source=str(data.get("source") or ""),
                       origin=str(origin))


def space_names() -> List[str]:
    """Names of the spaces shipped in ``search_spaces/`` (``tiny``, ``uboost_cifar``, ...)."""
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def _resolve(name_or_path: str) -> Tuple[Path, bool]:
    """(path, is_shipped) of a space argument: a shipped space by a bare name (``tiny``), else a file
    path; SpaceError when neither exists."""
    name_or_path = os.fspath(name_or_path)   # a Path too
    path = Path(name_or_path)
    # a name with a directory part ('./tiny') is the user's file, never the shipped space
    bare = bool(name_or_path) and is_bare_name(name_or_path)
    try:   # exists() raises too, for a name longer than the file system allows
        if bare and not path.suffix and (SPACE_DIR / f"{name_or_path}.yaml").exists():
            return SPACE_DIR / f"{name_or_path}.yaml", True
        if not name_or_path or not path.exists():
            raise SpaceError(f"{name_or_path or '<empty>'}: no such search space or file (shipped: {', '.join(space_names())})")
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return path, False


def read_space_text(name_or_path: str) -> Tuple[str, str]:
    """(the YAML text, its path) of a shipped space by name (``tiny``) or of a YAML file path."""
    path, _ = _resolve(name_or_path)
    try:
        return read_utf8(path, SpaceError), str(path)
    except OSError as exc:
        raise SpaceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def space_location(name_or_path: str) -> str:
    """The argument as ``read_space_text`` in another working directory reads the same space: a
    shipped space's name, a file's absolute path (not read here).  SpaceError when neither is found."""
    path, shipped = _resolve(name_or_path)
    return os.fspath(name_or_path) if shipped else os.path.abspath(path)


def space_from_text(text: str, origin: str) -> SearchSpace:
    """The SearchSpace of YAML ``text`` read from ``origin`` (named in errors, and the space's default name)."""
    return parse_space(read_yaml(origin, SpaceError, text=text), origin)


def load_space(name_or_path: str) -> SearchSpace:
    """Load a shipped space by name (``tiny``) or a YAML file path."""
    return space_from_text(*read_space_text(name_or_path))


def load_spaces(names: str) -> Dict[str, SearchSpace]:
    """Spaces of a comma list of names or paths (empty items ignored), for the benchmarks' --spaces.

    SpaceError for a missing or bad one, or an empty list."""
    spaces = {}
    for name in (item.strip() for item in names.split(",")):
        if name:
            spaces[name] = load_space(name)
    if not spaces:
        raise SpaceError(f"expected a comma list of search spaces, got {short_repr(names)}")
    return spaces
