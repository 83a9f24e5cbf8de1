"""Reference layer latencies to calibrate the cycle model against (``hwmodels.calibrate``).

Reference rows are layers with a reference cycle count, from either

* SCALE-Sim (``scalesim_rows``): each (layer, array R x C, dataflow) is simulated
  once through ``hwmodels.scalesim`` and remembered in a JSON cache
  (``~/.cache/ubnas/scalesim.json`` by default) keyed by the layer's fields, the
  array, the dataflow and the SCALE-Sim version, so a re-run is instant.  The
  reference is SCALE-Sim's stall-free compute cycles, counted as cycles: its
  'Total Cycles' is the index of the last cycle, so one cycle per simulated GEMM
  is added back.  ``import_scalesim_csv`` fills the cache from a
  ``tools/scalesim_suite.py`` CSV run elsewhere;
* a measured CSV (``measured_rows``): the layer CSV columns of
  ``hwmodels.layers_csv`` plus ``measured_cycles`` or ``measured_seconds``
  (seconds x the accelerator clock), optionally ``measured_utilization``.

Every user error is a ``HardwareConfigError`` (a ValueError) with one line naming
the file (and line, for CSV rows).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from .accelerator import DATAFLOWS, MAX_EXACT_INT, Accelerator, HardwareConfigError, atomic_write_text
from .layers import GemmLayer, Layer
from .layers_csv import read_layer_table, whole_number
from .suites import layer_fields, simulated_lines
from .yamlio import short_repr

DEFAULT_CACHE = Path("~/.cache/ubnas/scalesim.json")
SCALESIM_VERSION = "3.0.0"   # the version hwmodels.scalesim supports (the [scalesim] extra pins it)
DEFAULT_MAX_SIM_CYCLES = 20000


@dataclass
class ReferenceRow:
    """One layer with its reference cycles; ``where`` names its origin for messages."""

    layer: Layer
    cycles: float
    where: str
    utilization: Optional[float] = None


@dataclass
class ReferenceSet:
    """Reference rows of one kind ('scalesim' or 'measured') and where they came from."""

    kind: str
    source: str
    rows: List[ReferenceRow]
    skipped: List[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- SCALE-Sim
def scalesim_version() -> str:
    """The installed SCALE-Sim's version, else the version the shipped cached runs come from."""
    try:
        from importlib.metadata import version
        return version("scalesim")
    except Exception:  # not installed: only cached runs can be used; they are 3.0.0 runs
        return SCALESIM_VERSION


def _shape(layer: Layer) -> dict:
    """What a layer computes, without its name."""
    if isinstance(layer, GemmLayer):
        return {"kind": "gemm", "m": layer.m, "k": layer.k, "n": layer.n, "repeats": layer.repeats}
    return layer_fields(layer)


def layer_key(layer: Layer) -> str:
    """A layer's identity for comparing sets of rows: what it computes, not its name."""
    return json.dumps(_shape(layer), sort_keys=True)


def cache_key(layer: Layer, rows: int, cols: int, dataflow: str, version: str) -> str:
    """JSON key of one SCALE-Sim run: layer fields (not its name), array, dataflow, version."""
    return json.dumps({"layer": _shape(layer), "array": [int(rows), int(cols)], "dataflow": dataflow,
                       "scalesim": version, "bandwidth": "calc"}, sort_keys=True)


def load_cache(path: Union[str, os.PathLike]) -> Dict[str, dict]:
    """SCALE-Sim runs cached at ``path`` (``cache_key`` -> cycle counts), {} when there is no
    file; HardwareConfigError naming the file when it is not a readable JSON object."""
    path = Path(path).expanduser()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HardwareConfigError(f"{path}: unreadable SCALE-Sim cache ({exc}); delete it or pass "
                                  f"another --cache") from None
    if not isinstance(data, dict):
        raise HardwareConfigError(f"{path}: SCALE-Sim cache is not a JSON object; delete it")
    for key, entry in data.items():   # one bad entry would wreck every fit on its array
        problem = _entry_problem(entry)
        if problem:
            raise HardwareConfigError(f"{path}: SCALE-Sim cache entry {short_repr(key, 60)}: {problem}; "
                                      f"delete the file or pass another --cache")
    return data


MAX_CYCLES = MAX_EXACT_INT   # counted exactly in the float arithmetic the fit does; far past any simulated run


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_CYCLES


def _entry_problem(entry) -> Optional[str]:
    """What is wrong with one cached run, or None: it needs integer cycles 0 < compute <= total."""
    if not isinstance(entry, dict):
        return f"expected a mapping of cycle counts, got {short_repr(entry, 40)}"
    for name in ("compute_cycles", "total_cycles"):
        if not _positive_int(entry.get(name)):
            return f"'{name}' expected an integer in [1, 2**53], got {short_repr(entry.get(name), 40)}"
    if entry["compute_cycles"] > entry["total_cycles"]:
        return f"compute_cycles {entry['compute_cycles']} exceed total_cycles {entry['total_cycles']}"
    if "gemms" in entry and not _positive_int(entry["gemms"]):
        return f"'gemms' expected an integer in [1, 2**53], got {short_repr(entry['gemms'], 40)}"
    return None


def save_cache(path: Union[str, os.PathLike], cache: Dict[str, dict]) -> None:
    """Add ``cache``'s runs to the SCALE-Sim cache at ``path`` and write it atomically (a crash
    leaves the old file whole).  The file is re-read and merged under a lock first, so two
    calibrations sharing a cache keep each other's runs (the last writer used to win); ``cache``
    gains the runs found there."""
    path = Path(path).expanduser()
    try:
        with _locked(path.with_name(path.name + ".lock")):
            for key, entry in load_cache(path).items():
                cache.setdefault(key, entry)
            atomic_write_text(path, json.dumps(cache, indent=0, sort_keys=True))
    except OSError as exc:   # e.g. a parent that is a file: errno alone named only that parent
        raise HardwareConfigError(f"{path}: cannot write the SCALE-Sim cache ({exc.strerror or exc}"
                                  f"{': ' + str(exc.filename) if exc.filename else ''}); "
                                  f"pass another --cache") from None


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive advisory lock on ``lock_path`` (POSIX flock; no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:   # Windows: concurrent runs may still drop each other's entries
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gemms(layer: Layer) -> int:
    """GEMMs SCALE-Sim simulates for one layer (its 'Total Cycles' is one short per GEMM)."""
    return layer.lower().repeats


def import_scalesim_csv(csv_path: Union[str, os.PathLike],
                        cache_path: Union[str, os.PathLike] = DEFAULT_CACHE) -> int:
    """Add the runs of a ``tools/scalesim_suite.py`` CSV (SCALE-Sim 3.0.0) to the cache.

    Returns the number of rows read.
    """
    table = read_layer_table(csv_path)
    need = ("array_rows", "array_cols", "dataflow", "scalesim_compute_cycles", "scalesim_total_cycles")
    missing = [c for c in need if c not in table.header]
    if missing:
        raise HardwareConfigError(f"{table.header_where}: missing column '{missing[0]}' "
                                  f"(not a SCALE-Sim suite CSV)")
    cache = load_cache(cache_path)
    imported: Dict[str, tuple] = {}   # key -> (cycles, where): a run listed twice must agree
    for row in table.rows:
        layer, record = row.layer, row.values
        parsed = {}
        for column in ("array_rows", "array_cols", "scalesim_compute_cycles", "scalesim_total_cycles"):
            text = (record.get(column) or "").strip()
            try:   # as the layer columns read theirs
                parsed[column] = whole_number(text)
            except ValueError:
                raise HardwareConfigError(f"{row.where}: column '{column}' expected an integer, "
                                          f"got {short_repr(text)}") from None
        rows, cols = parsed["array_rows"], parsed["array_cols"]
        compute, total = parsed["scalesim_compute_cycles"], parsed["scalesim_total_cycles"]
        if total > MAX_CYCLES:
            raise HardwareConfigError(f"{row.where}: column 'scalesim_total_cycles' expected at most 2**53 cycles, "
                                      f"got {short_repr(total)}")
        if not 0 < compute <= total:
            raise HardwareConfigError(f"{row.where}: expected cycle counts 0 < scalesim_compute_cycles <= "
                                      f"scalesim_total_cycles, got {compute} and {total}")
        for column, value in (("array_rows", rows), ("array_cols", cols)):
            if value < 1:
                raise HardwareConfigError(f"{row.where}: column '{column}' expected an integer >= 1, "
                                          f"got {short_repr(record[column])}")
        dataflow = record["dataflow"]   # as run: a 'WS' would be cached under a key never looked up
        if dataflow not in DATAFLOWS:
            raise HardwareConfigError(f"{row.where}: column 'dataflow' expected one of "
                                      f"{', '.join(DATAFLOWS)}, got {short_repr(dataflow)}")
        key = cache_key(layer, rows, cols, dataflow, SCALESIM_VERSION)
        if key in imported and imported[key][0] != (compute, total):
            raise HardwareConfigError(f"{row.where}: the same layer, array and dataflow as {imported[key][1]} "
                                      f"with other cycles ({compute}/{total} vs {imported[key][0][0]}/"
                                      f"{imported[key][0][1]})")
        imported[key] = ((compute, total), row.where)
        cache[key] = {"compute_cycles": compute, "total_cycles": total,
                      "stall_cycles": total - compute, "gemms": _gemms(layer)}
    save_cache(cache_path, cache)
    return len(table.rows)


def scalesim_rows(layers: Sequence[Layer], acc: Accelerator, cache_path=DEFAULT_CACHE,
                  max_sim_cycles: Optional[int] = DEFAULT_MAX_SIM_CYCLES, source: str = "",
                  progress: bool = True) -> ReferenceSet:
    """Reference rows from SCALE-Sim for ``layers`` on one array of ``acc``.

    Cached runs are reused; uncached runs longer than ``max_sim_cycles`` simulated
    cycles (SCALE-Sim steps ~1,500 cycles/s) are skipped and listed in ``skipped``.
    Each new run is added to the cache as soon as it finishes.
    """
    version = scalesim_version()
    cache = load_cache(cache_path)
    rows, cols, df = acc.array_rows, acc.array_cols, acc.dataflow
    todo, skipped = [], []
    for layer in layers:
        key = cache_key(layer, rows, cols, df, version)
        if key in cache:
            continue
        lines = simulated_lines(layer, rows, cols, df)
        if max_sim_cycles is not None and lines > max_sim_cycles:
            skipped.append(f"{layer.name} ({lines} simulated cycles)")
        elif key not in {k for k, _ in todo}:
            todo.append((key, layer))
    if todo:
        from .scalesim import _topology_row, run_scalesim
        for _, layer in todo:   # every layer checked before the first (slow) simulation
            _topology_row(layer)
        save_cache(cache_path, cache)   # and the cache writable: a bad --cache failed after the first run
        iterator = todo
        if progress:
            from tqdm import tqdm
            iterator = tqdm(todo, desc=f"scalesim {rows}x{cols} {df}", unit="layer", file=sys.stderr)
        for key, layer in iterator:
            report = run_scalesim([layer], acc)[0]
            cache[key] = {"compute_cycles": report.compute_cycles, "total_cycles": report.total_cycles,
                          "stall_cycles": report.stall_cycles, "gemms": _gemms(layer)}
            save_cache(cache_path, cache)
    out = []
    for layer in layers:
        entry = cache.get(cache_key(layer, rows, cols, df, version))
        if entry is None:
            continue
        cycles = float(entry["compute_cycles"]) + float(entry.get("gemms", _gemms(layer)))
        out.append(ReferenceRow(layer, cycles, f"{source or 'scalesim'}:{layer.name}"))
    return ReferenceSet("scalesim", source, out, skipped)


# ----------------------------------------------------------------------------- measured CSV
def measured_rows(path: Union[str, os.PathLike], acc: Accelerator) -> ReferenceSet:
    """Reference rows of a measured CSV (layer CSV + measured_cycles|measured_seconds)."""
    table = read_layer_table(path)   # layer columns: FILE:LINE errors of their own
    if "measured_cycles" not in table.header and "measured_seconds" not in table.header:
        raise HardwareConfigError(f"{table.header_where}: missing column 'measured_cycles' or "
                                  f"'measured_seconds' in the header (got {','.join(table.header)})")
    out = []
    for entry in table.rows:
        layer, row, where = entry.layer, entry.values, entry.where

        def number(column, upper=None):
            text = row.get(column, "")
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not (math.isfinite(value) and value > 0 and (upper is None or value <= upper)):
                bound = f" and <= {upper:g}" if upper is not None else ""
                raise HardwareConfigError(f"{where}: column '{column}' expected a positive number{bound}, "
                                          f"got {short_repr(text)}")
            return value

        if row.get("measured_cycles", "") and row.get("measured_seconds", ""):
            cycles, from_seconds = number("measured_cycles"), number("measured_seconds") * acc.clock_hz
            if abs(cycles - from_seconds) > 0.01 * cycles:   # which one to trust is the user's call
                raise HardwareConfigError(
                    f"{where}: 'measured_cycles' {cycles:g} and 'measured_seconds' x clock_hz "
                    f"{from_seconds:g} disagree by more than 1 % (give one, or check clock_hz)")
        elif row.get("measured_cycles", ""):
            cycles = number("measured_cycles")
        elif row.get("measured_seconds", ""):
            cycles = number("measured_seconds") * acc.clock_hz
        else:
            raise HardwareConfigError(f"{where}: expected a value in 'measured_cycles' or "
                                      f"'measured_seconds', both are empty")
        util = number("measured_utilization", upper=1.0) if row.get("measured_utilization", "") else None
        out.append(ReferenceRow(layer, cycles, f"{where} ({layer.name})", util))
    return ReferenceSet("measured", str(path), out)
