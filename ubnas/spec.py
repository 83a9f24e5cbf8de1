"""The exported architecture spec: versioned YAML (the README's "Architecture spec" section).

A spec is everything ``ubnas.build.build_network`` needs to rebuild the
searched network as a plain ``nn.Module``, plus free-form provenance::

    ubnas_spec: 1
    input_shape: [1, 8, 8]          # C, H, W
    num_classes: 10
    stem: {kernel: 3, channels: 112}
    cells:
      - reduce: false
        pool_after: true
        channels: 128
        nodes:                       # node i takes edges from states 0..i+1
          - [{from: 0, op: conv_3x3}, {from: 1, op: sep_conv_3x3}]
          - [{from: 1, op: skip_connect}, {from: 2, op: conv_3x3}]
    classifier: {in_features: 256}  # = nodes * channels of the last cell
    provenance: {...}

States 0 and 1 of a cell are its two inputs (the output of the cell two back,
or the stem, and the previous cell's output), 2+ are the cell's earlier nodes.
The wiring is ubnas.supernet's; see ubnas.build.

Loading validates everything and raises :class:`SpecError` with one line that
names the file, the key path (``cells[1].nodes[0][1].op``) and what was
expected.  Only yaml and the op registry are needed here (no search code).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from hwmodels.yamlio import YamlDumper, read_utf8, read_yaml, short_repr

SPEC_VERSION = 1
TOP_KEYS = ("ubnas_spec", "input_shape", "num_classes", "stem", "cells", "classifier", "provenance")


class SpecError(ValueError):
    """A malformed or incompatible architecture spec (one-line message)."""


@dataclass(frozen=True)
class EdgeSpec:
    """One edge of a node: ``op`` applied to state ``source`` (the YAML key ``from``)."""

    source: int
    op: str


@dataclass(frozen=True)
class CellArch:
    """One cell: ``channels`` per node; the cell outputs len(nodes) * channels channels."""

    channels: int
    nodes: Tuple[Tuple[EdgeSpec, ...], ...]
    reduce: bool = False
    pool_after: bool = False

    @property
    def out_channels(self) -> int:
        return len(self.nodes) * self.channels


@dataclass
class ArchSpec:
    """A discrete architecture. ``origin`` (the file it came from) is not saved."""

    input_shape: Tuple[int, int, int]
    num_classes: int
    stem_kernel: int
    stem_channels: int
    cells: List[CellArch]
    provenance: Dict[str, Any] = field(default_factory=dict)
    origin: str = "<spec>"

    @property
    def classifier_in_features(self) -> int:
        return self.cells[-1].out_channels if self.cells else self.stem_channels

    def arch_dict(self) -> Dict[str, Any]:
        """The architecture alone (no provenance): what the weights depend on."""
        cells = []
        for cell in self.cells:
            cells.append({
                "reduce": cell.reduce, "pool_after": cell.pool_after, "channels": cell.channels,
                "nodes": [[{"from": e.source, "op": e.op} for e in node] for node in cell.nodes]})
        return {"ubnas_spec": SPEC_VERSION, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes,
                "stem": {"kernel": self.stem_kernel, "channels": self.stem_channels},
                "cells": cells, "classifier": {"in_features": self.classifier_in_features}}

    def to_dict(self) -> Dict[str, Any]:
        data = self.arch_dict()
        data["provenance"] = _plain(self.provenance)
        return data

    def arch_hash(self) -> str:
        """A short hash of the architecture (not the provenance): checkpoints carry it."""
        text = json.dumps(self.arch_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- validation ------------------------------------------------------------------------
# the largest width, kernel, map side or class count a spec or space may give: far past any real
# network, and far below where torch's int64 shape arithmetic overflows into a traceback
MAX_SIZE = 1 << 20


def _fail(origin: str, path: str, message: str):
    raise SpecError(f"{origin}: key '{path}' {message}")


def _int(value: Any, origin: str, path: str, minimum: int = 1, what: str = "a positive integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(origin, path, f"expected {what}, got {short_repr(value)}")
    if value > MAX_SIZE:
        _fail(origin, path, f"expected at most {MAX_SIZE}, got {short_repr(value)}")
    return value


def _mapping(value: Any, origin: str, path: str, known: Tuple[str, ...], required: Tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        _fail(origin, path, f"expected a mapping with keys {', '.join(required)}, got {short_repr(value)}")
    prefix = f"{path}." if path else ""
    for key in value:
        if key not in known:
            raise SpecError(f"{origin}: unknown key '{prefix}{key}' (expected {', '.join(known)})")
    for key in required:
        if key not in value:
            raise SpecError(f"{origin}: missing key '{prefix}{key}'")
    return value


def _bool(data: dict, key: str, origin: str, path: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        _fail(origin, f"{path}.{key}", f"expected true or false, got {short_repr(value)}")
    return value


def pooled_size(size: int) -> int:
    """Map side after the 2x2 max-pool of a ``pool_after`` cell."""
    return size // 2


def strided_size(size: int, stride: int) -> int:
    """Map side after a 'same'-padded op of ``stride`` (a reduce cell's edges, a 1x1 preprocessing conv)."""
    return (size - 1) // stride + 1


def spec_from_dict(data: Any, origin: str = "<spec>") -> ArchSpec:
    """Validate a parsed YAML mapping into an ArchSpec (``origin`` names the file in errors)."""
    from .ops import OPS  # the registry is the one list of valid op names

    if not isinstance(data, dict):
        raise SpecError(f"{origin}: expected a mapping at the top level (an ubnas architecture spec), "
                        f"got {type(data).__name__}")
    if "ubnas_spec" not in data:
        raise SpecError(f"{origin}: missing key 'ubnas_spec' (expected {SPEC_VERSION}; "
                        f"is this an architecture spec exported by ubnas?)")
    version = data["ubnas_spec"]
    if isinstance(version, int) and not isinstance(version, bool) and version > SPEC_VERSION:
        raise SpecError(f"{origin}: key 'ubnas_spec' is {version}; this ubnas reads version "
                        f"{SPEC_VERSION}, upgrade ubnas")
    if version != SPEC_VERSION or not isinstance(version, int) or isinstance(version, bool):   # not 1.0
        _fail(origin, "ubnas_spec", f"expected {SPEC_VERSION}, got {short_repr(version)}")
    _mapping(data, origin, "", TOP_KEYS, TOP_KEYS[:-1])

    shape = data["input_shape"]
    if not isinstance(shape, list) or len(shape) != 3:
        _fail(origin, "input_shape", f"expected [C, H, W] (3 positive integers), got {short_repr(shape)}")
    shape = tuple(_int(v, origin, f"input_shape[{i}]") for i, v in enumerate(shape))
    num_classes = _int(data["num_classes"], origin, "num_classes")

    stem = _mapping(data["stem"], origin, "stem", ("kernel", "channels"), ("kernel", "channels"))
    stem_kernel = _int(stem["kernel"], origin, "stem.kernel")
    if stem_kernel % 2 == 0:
        _fail(origin, "stem.kernel", f"expected an odd kernel size (padding k//2 keeps the map size), "
                                     f"got {stem_kernel}")
    stem_channels = _int(stem["channels"], origin, "stem.channels")

    raw_cells = data["cells"]
    if not isinstance(raw_cells, list) or not raw_cells:
        _fail(origin, "cells", f"expected a non-empty list of cells, got {short_repr(raw_cells)}")
    cells: List[CellArch] = []
    # map sizes of the two cell inputs (s0, s1), as (h, w, scale)
    h, w = shape[1], shape[2]
    s0 = s1 = (h, w, 1)
    for c, raw in enumerate(raw_cells):
        path = f"cells[{c}]"
        cell = _mapping(raw, origin, path, ("reduce", "pool_after", "channels", "nodes"),
                        ("channels", "nodes"))
        reduce, pool_after = _bool(cell, "reduce", origin, path), _bool(cell, "pool_after", origin, path)
        channels = _int(cell["channels"], origin, f"{path}.channels")
        raw_nodes = cell["nodes"]
        if not isinstance(raw_nodes, list) or not raw_nodes:
            _fail(origin, f"{path}.nodes", f"expected a non-empty list of nodes (each a list of edges), "
                                           f"got {short_repr(raw_nodes)}")
        nodes = []
        for i, raw_node in enumerate(raw_nodes):
            npath = f"{path}.nodes[{i}]"
            if not isinstance(raw_node, list) or not raw_node:
                _fail(origin, npath, f"expected a non-empty list of edges like {{from: 0, op: conv_3x3}}, "
                                     f"got {short_repr(raw_node)}")
            edges = []
            for k, raw_edge in enumerate(raw_node):
                epath = f"{npath}[{k}]"
                edge = _mapping(raw_edge, origin, epath, ("from", "op"), ("from", "op"))
                source = edge["from"]
                if isinstance(source, bool) or not isinstance(source, int) or not 0 <= source <= i + 1:
                    _fail(origin, f"{epath}.from", f"expected a state in 0..{i + 1} (0, 1: the cell inputs, "
                                                   f"2+: earlier nodes), got {short_repr(source)}")
                op = edge["op"]
                if not isinstance(op, str) or op not in OPS:
                    _fail(origin, f"{epath}.op", f"unknown op {short_repr(op)} (expected one of {', '.join(OPS)})")
                edges.append(EdgeSpec(source, op))
            nodes.append(tuple(edges))
        # the map sizes must chain: s0's 1x1 conv strides by the resolution ratio s1/s0
        ratio = s1[2] // s0[2]
        if (strided_size(s0[0], ratio), strided_size(s0[1], ratio)) != s1[:2]:
            _fail(origin, path, f"inputs of {s0[0]}x{s0[1]} and {s1[0]}x{s1[1]} do not differ by the "
                                f"stride {ratio} (odd map sizes before a pool); use an input size "
                                f"divisible by the total downsampling")
        ch, cw = s1[0], s1[1]
        if reduce:
            ch, cw = strided_size(ch, 2), strided_size(cw, 2)
        if pool_after:
            if min(ch, cw) < 2:
                _fail(origin, f"{path}.pool_after", f"needs a map of at least 2x2 for the 2x2 max-pool, "
                                                    f"the cell's output is {ch}x{cw}")
            ch, cw = pooled_size(ch), pooled_size(cw)
        scale = s1[2] * (2 if reduce else 1) * (2 if pool_after else 1)
        s0, s1 = s1, (ch, cw, scale)
        cells.append(CellArch(channels, tuple(nodes), reduce, pool_after))

    classifier = _mapping(data["classifier"], origin, "classifier", ("in_features",), ("in_features",))
    in_features = _int(classifier["in_features"], origin, "classifier.in_features")
    last = cells[-1]
    if in_features != last.out_channels:
        _fail(origin, "classifier.in_features",
              f"expected {last.out_channels} (= {len(last.nodes)} nodes x {last.channels} channels "
              f"of cells[{len(cells) - 1}]), got {in_features}")

    provenance = data.get("provenance")
    provenance = {} if provenance is None else provenance   # 'provenance:' left empty
    if not isinstance(provenance, dict):
        _fail(origin, "provenance", f"expected a mapping, got {short_repr(provenance)}")
    return ArchSpec(shape, num_classes, stem_kernel, stem_channels, cells, dict(provenance), origin)


def searched_accelerator(spec: ArchSpec):
    """The accelerator the search costed ``spec`` on, or None when the spec cannot say.

    ``provenance.accelerator_config`` (the whole definition, calibration included: a calibrated or
    custom YAML need not be at hand) wins; older specs name a preset in ``provenance.accelerator``.
    """
    from hwmodels import load_accelerator, preset_names
    from hwmodels.accelerator import from_dict
    config = spec.provenance.get("accelerator_config")
    if config is not None:
        return from_dict(config, origin=f"{spec.origin}: provenance.accelerator_config")
    name = spec.provenance.get("accelerator")
    if isinstance(name, str) and name in preset_names():
        return load_accelerator(name)
    return None


def searched_calibration_note(spec: ArchSpec, mode: str = "systolic") -> Optional[str]:
    """A note when the accelerator recorded in ``spec`` (``searched_accelerator``) was calibrated for
    another cost model than ``mode`` (``provenance.accelerator_fit_mode``), else None."""
    from hwmodels.accelerator import mode_mismatch_note
    fitted = spec.provenance.get("accelerator_fit_mode")
    if not isinstance(fitted, str) or spec.provenance.get("accelerator_config") is None:
        return None
    return mode_mismatch_note(f"{spec.origin}'s accelerator ({spec.provenance.get('accelerator')})", mode, fitted)


def edited_since_export(spec: ArchSpec) -> bool:
    """Whether ``spec``'s architecture differs from the one its search exported
    (``provenance.arch_hash``): its provenance figures (accuracy, smooth cost) are then another
    network's.  False for specs that do not record it, or record it as no string: a hash such as
    '65580800e1570631', written bare before the loader read YAML 1.2 floats, now reads as a float."""
    exported = spec.provenance.get("arch_hash")
    return isinstance(exported, str) and exported != spec.arch_hash()


def searched_batch(spec: ArchSpec) -> int:
    """The batch size the search costed ``spec`` at (``provenance.hw_batch``, the search's
    ``--hw-batch``); 1 for a spec that does not record one.  Latency grows with it, so the
    other commands cost a spec at this batch unless told otherwise."""
    batch = spec.provenance.get("hw_batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise SpecError(f"{spec.origin}: provenance.hw_batch: expected a positive integer, got {short_repr(batch)}")
    return batch


# -- files ---------------------------------------------------------------------------------
def load_spec(path: Union[str, os.PathLike]) -> ArchSpec:
    """Read and validate a spec file; every problem is a one-line :class:`SpecError`."""
    origin = str(path)
    try:
        text = read_utf8(path, SpecError)
    except FileNotFoundError:
        raise SpecError(f"{origin}: no such architecture spec file") from None
    except IsADirectoryError:   # a run directory given for the spec it holds
        hint = f"; the search's spec is {Path(path) / 'arch.yaml'}" if (Path(path) / "arch.yaml").is_file() else ""
        raise SpecError(f"{origin}: is a directory, not an architecture spec file{hint}") from None
    except OSError as exc:
        raise SpecError(f"{origin}: cannot read the architecture spec ({exc.strerror or exc})") from None
    return spec_from_dict(read_yaml(origin, SpecError, text), origin)


class _Flow(dict):
    """A mapping written in YAML flow style ({from: 0, op: conv_3x3})."""


class _FlowList(list):
    """A list written in YAML flow style ([1, 8, 8])."""


class _Dumper(YamlDumper):
    pass


_Dumper.add_representer(_Flow, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(),
                                                                flow_style=True))
_Dumper.add_representer(_FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v,
                                                                     flow_style=True))


def dump_spec(spec: ArchSpec) -> str:
    """The spec as YAML text (edges, shapes and the stem on one line each)."""
    data = spec.to_dict()
    data["input_shape"] = _FlowList(data["input_shape"])
    data["stem"] = _Flow(data["stem"])
    data["classifier"] = _Flow(data["classifier"])
    for cell in data["cells"]:
        cell["nodes"] = [_FlowList(_Flow(e) for e in node) for node in cell["nodes"]]
    header = ("# ubnas architecture spec: rebuild with ubnas.build(path) or `ubnas train`; "
              "node i takes edges from states 0..i+1\n# (0, 1 = the two cell inputs, 2+ = earlier nodes)\n")
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def save_spec(spec: ArchSpec, path: Union[str, os.PathLike]) -> None:
    """Write ``spec`` as YAML atomically (temp file + rename)."""
    from hwmodels.yamlio import atomic_write_text
    text = dump_spec(spec)
    spec_from_dict(yaml.safe_load(text), str(path))  # never write a file load_spec would reject
    atomic_write_text(path, text)


def _plain(value: Any) -> Any:
    """Provenance as plain YAML types (tensors / numpy scalars -> numbers, tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if hasattr(value, "tolist"):        # torch / numpy scalars and arrays
        return _plain(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


# -- from a supernet -------------------------------------------------------------------------
def derive_spec(net, provenance: Dict[str, Any] | None = None, ops=None, widths=None) -> ArchSpec:
    """The discrete architecture of a searched ``ubnas.supernet.Supernet``.

    Per node keep the 2 strongest incoming edges (strength = the largest softmax
    probability over the ops other than 'none'), each with its strongest
    non-'none' op, from the op logits shared by the cells of one type; widths
    are each ``Width.chosen()``.  ``ops`` (cell type -> (edges, n_ops) one-hot rows) and
    ``widths`` (name -> channels) replace that choice (``target_fit.fit_to_target``'s).
    """
    from .supernet import derived_ops

    space = net.space
    if all(name == "none" for name in space.ops):
        raise ValueError(f"search space {space.name!r} has only the 'none' op: nothing to export")
    chosen = {n: w.chosen() for n, w in net.widths.items()} if widths is None else widths
    cells = []
    for cell in net.cells:
        probs = (derived_ops(net.op_logits[cell.cell_type], space.ops, cell.nodes) if ops is None
                 else ops[cell.cell_type])
        nodes, e = [], 0
        for i in range(cell.nodes):
            kept = [x for x in range(e, e + 2 + i) if probs[x].any()]   # edge e + j comes from state j
            nodes.append(tuple(EdgeSpec(x - e, space.ops[int(probs[x].argmax())]) for x in kept))
            e += 2 + i
        cells.append(CellArch(int(chosen[cell.width_name]), tuple(nodes),
                              bool(cell.reduce), bool(cell.pool_after)))
    # the caller's dict itself (not a copy): keys it adds later, such as the exact cost of the
    # built network, still reach the file; values become plain YAML types when saved
    info = provenance if provenance is not None else {}
    info.setdefault("search_space", space.name)
    spec = ArchSpec(tuple(int(d) for d in net.input_shape), int(net.num_classes), int(space.stem_kernel),
                    int(chosen["stem"]), cells, info, "<derived>")
    return _checked(spec)


def _checked(spec: ArchSpec) -> ArchSpec:
    """Run the loader's checks on an in-memory spec (keeps its origin)."""
    checked = spec_from_dict(spec.to_dict(), spec.origin)
    checked.provenance = spec.provenance
    return checked


def discrete_sample(net, spec):
    """The ArchSample of a derived spec: op probs one-hot on the kept ops of kept edges (zero
    elsewhere), and every width forced to the spec's (caller resets ``Width.forced``)."""
    import torch

    from .supernet import ArchSample

    ops = {}
    for cell, arch in zip(net.cells, spec.cells):
        probs = torch.zeros(net.space.edges_per_cell, len(net.space.ops), dtype=torch.float64)
        e = 0
        for i, node in enumerate(arch.nodes):
            for edge in node:
                probs[e + edge.source, net.space.ops.index(edge.op)] = 1.0
            e += 2 + i
        ops[cell.cell_type] = probs
    channels = {"stem": spec.stem_channels}
    channels.update({cell.width_name: arch.channels for cell, arch in zip(net.cells, spec.cells)})
    widths = {}
    for name, width in net.widths.items():
        width.forced = channels[name]
        widths[name] = torch.full((width.count,), 1.0 / width.count, dtype=torch.float64)
    return ArchSample(ops, widths)
