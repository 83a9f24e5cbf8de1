"""Reading a `ubnas train` run directory for reports: metrics.json checked key by key, and the
spec the run was trained on.

The spec is the file metrics.json names, found relative to where ``ubnas train`` ran (or the
current or run directory) and used only when its architecture hash is metrics.json's
``spec_hash``: a spec edited, moved or deleted since training is never costed under the run's
name; the figures metrics.json recorded stand, with a note.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from hwmodels.yamlio import short_repr

from .runtime import INTERRUPTED, PREVIOUS, is_count, is_finite_number


def _expect(ok: bool, origin: Path, key: str, what: str, value: Any) -> None:
    """A one-line ValueError naming the file, the key and what was expected, unless ``ok``."""
    if not ok:
        raise ValueError(f"{origin}: key '{key}' expected {what}, got {short_repr(value)}")


def read_metrics(path: Path) -> Dict[str, Any]:
    """metrics.json of a train run with the keys the report uses checked: a file that is not what
    ``ubnas train`` writes is a one-line ValueError (file, key, what was expected), not a traceback
    halfway through the report.  Absent keys (and null) are allowed: they show as '-'."""
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (expected the JSON that `ubnas train` writes)") from None
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object (what `ubnas train` writes), "
                         f"got {type(metrics).__name__}")
    get = metrics.get
    _expect(get("config") is None or isinstance(get("config"), dict), path, "config",
            "a mapping of training options", get("config"))
    history = get("history")
    _expect(history is None or isinstance(history, list), path, "history", "a list of per-epoch mappings",
            history)
    for i, row in enumerate(history or []):
        _expect(isinstance(row, dict), path, f"history[{i}]", "a mapping of per-epoch figures", row)
    for key in ("spec", "spec_hash"):
        _expect(get(key) is None or isinstance(get(key), str), path, key, "a string", get(key))
    acc = get("test_acc")
    _expect(acc is None or (is_finite_number(acc) and 0 <= acc <= 1), path, "test_acc", "a fraction in [0, 1]", acc)
    _expect(get("params") is None or is_count(get("params")), path, "params",
            "a parameter count (integer >= 0)", get("params"))
    hardware = get("hardware")
    _expect(hardware is None or isinstance(hardware, dict), path, "hardware",
            "a mapping (latency_us, utilization, macs, accelerator)", hardware)
    hardware = hardware or {}
    for key in ("latency_us", "utilization"):
        value = hardware.get(key)
        _expect(value is None or (is_finite_number(value) and value >= 0), path, f"hardware.{key}",
                "a number >= 0", value)
    _expect(hardware.get("macs") is None or is_count(hardware.get("macs")), path, "hardware.macs",
            "a MAC count (integer >= 0)", hardware.get("macs"))
    _expect(hardware.get("accelerator") is None or isinstance(hardware.get("accelerator"), str), path,
            "hardware.accelerator", "an accelerator name", hardware.get("accelerator"))
    batch = hardware.get("batch")
    _expect(batch is None or (is_count(batch) and batch >= 1), path, "hardware.batch",
            "the batch its latency is at (integer >= 1)", batch)
    return metrics


def _spec_candidates(spec_file: str, run_dir: Path, config: Dict[str, Any],
                     abspath: Optional[str] = None) -> List[Path]:
    """Where the spec that metrics.json records as ``spec_file`` (and ``abspath``) may be, most
    likely first.

    ``ubnas train`` records the path as given on its command line, relative to the directory it
    ran in, and that path made absolute (``abspath``, tried first; absent in older runs).  The
    directory it ran in is the run directory minus the recorded relative ``out`` (train made
    ``cwd/out``), so a report run from anywhere finds the file, also after the tree moved; then
    the current directory, then the run directory (a spec copied next to its run).
    """
    spec = Path(spec_file)
    if spec.is_absolute():
        return [spec]
    bases: List[Path] = []
    out = config.get("out")
    if isinstance(out, str) and out and not Path(out).is_absolute() and ".." not in Path(out).parts:
        tail = Path(out).parts
        for where in (Path(os.path.abspath(run_dir)), run_dir.resolve()):   # symlinked run dirs too
            if not tail:
                bases.append(where)
            elif where.parts[-len(tail):] == tail:
                bases.append(Path(*where.parts[:-len(tail)]))
    bases += [Path.cwd(), run_dir]
    found = [Path(abspath)] if isinstance(abspath, str) and os.path.isabs(abspath) else []
    for base in bases:
        if not any(os.path.abspath(base / spec) == os.path.abspath(f) for f in found):
            found.append(base / spec)
    return found


def trained_spec(metrics: Dict[str, Any], run_dir: Path, config: Dict[str, Any], notes: List[str]):
    """(path, ArchSpec) of the spec the run was trained on, or (None, None) with a note saying why.

    The spec file may have been edited, replaced or moved since training: a spec is used only when
    its architecture hash is the ``spec_hash`` metrics.json recorded, so the report never costs a
    different network under the run's name; otherwise the figures recorded in metrics.json stand.
    """
    from .spec import load_spec
    spec_file, want = metrics.get("spec"), metrics.get("spec_hash")
    if not spec_file:
        notes.append("metrics.json records no spec: figures from metrics.json, per-layer costs omitted")
        return None, None
    if not want:
        notes.append(f"metrics.json records no spec_hash, so spec {spec_file} cannot be matched to the "
                     f"trained network: figures from metrics.json, per-layer costs omitted")
        return None, None
    mismatch = None
    candidates = _spec_candidates(spec_file, run_dir, config, metrics.get("spec_abspath"))
    # a search started over in the spec's directory set the spec it had exported aside there
    set_aside = [c.parent / kept / c.name for c in candidates for kept in (PREVIOUS, INTERRUPTED)]
    for candidate in candidates + set_aside:
        if not candidate.is_file():
            continue
        try:
            spec = load_spec(candidate)
        except ValueError as exc:     # it loaded when the run trained on it: not that file any more
            mismatch = mismatch or f"spec {candidate} no longer loads ({exc})"
            continue
        if spec.arch_hash() == want:
            if candidate in set_aside:
                notes.append(f"spec {spec_file} was replaced by a search that started over there; the trained "
                             f"network's spec is {candidate}")
            return candidate, spec
        mismatch = mismatch or (f"spec {candidate} is not the network this run trained (architecture "
                                f"hash {spec.arch_hash()}, metrics.json records {want}: edited since?)")
    if mismatch is None:
        mismatch = f"spec {spec_file} not found (looked in {', '.join(str(c) for c in candidates)})"
    notes.append(f"{mismatch}: figures from metrics.json, per-layer costs omitted")
    return None, None
