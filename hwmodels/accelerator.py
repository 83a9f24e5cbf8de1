"""The accelerator description: a dataclass loaded from (and written to) YAML."""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple, Union

from .yamlio import atomic_write_text, dump_yaml, is_bare_name, read_yaml, short_repr

PRESET_DIR = Path(__file__).with_name("presets")
DATAFLOWS = ("ws", "os", "is")


class HardwareConfigError(ValueError):
    """A preset/YAML/CSV that does not describe valid hardware or layers.

    The message is one line: the file, the key or row, and what was expected.
    """


@dataclass(frozen=True)
class Calibration:
    """Free parameters of the cost models (``hwmodels.exact`` applies them in both modes), fitted by
    ``hwmodels.calibrate`` for one mode (the accelerator YAML's ``fit_report.mode``).

    fold_overhead_cycles: extra cycles per fold (controller, weight-load slack).
    layer_overhead_cycles: fixed cycles per layer (launch, drain to memory).
    cycle_scale: multiplies the compute cycles (clock/pipeline inefficiency).
    bandwidth_efficiency: achieved share of the off-chip bandwidth, in (0, 1].
    """

    fold_overhead_cycles: float = 0.0
    layer_overhead_cycles: float = 0.0
    cycle_scale: float = 1.0
    bandwidth_efficiency: float = 1.0


@dataclass(frozen=True)
class Accelerator:
    """One or more R x C systolic arrays of multiply-accumulate cells.

    array_rows / array_cols: PEs per array (R x C); num_arrays: arrays sharing
    the folds of a layer; dataflow: ws (weight-), os (output-) or is (input-
    stationary); clock_hz: cycles per second; bandwidth_bytes_per_s: off-chip
    memory bandwidth; onchip_bytes: on-chip buffer; bytes_per_element: operand
    width (1 for int8, 2 for bf16).
    """

    name: str
    array_rows: int
    array_cols: int
    num_arrays: int = 1
    dataflow: str = "ws"
    clock_hz: float = 1.0e9
    bandwidth_bytes_per_s: float = 80.0e9
    onchip_bytes: int = 15 * 2**20
    bytes_per_element: int = 1
    calibration: Calibration = field(default_factory=Calibration)
    source: str = ""

    def __post_init__(self):
        origin = f"accelerator {self.name!r}"
        if not isinstance(self.name, str):   # save_accelerator writes it, and load_accelerator wants a string
            raise HardwareConfigError(f"{origin}: key 'name' expected a string, got {short_repr(self.name)}")
        if isinstance(self.calibration, dict):   # Accelerator(..., calibration={"cycle_scale": 2})
            _refuse_unknown_calibration_keys(self.calibration, origin)
            object.__setattr__(self, "calibration", Calibration(**self.calibration))
        if not isinstance(self.calibration, Calibration):
            raise HardwareConfigError(f"{origin}: key 'calibration' expected a Calibration or a mapping, "
                                      f"got {short_repr(self.calibration)}")
        validate(self, origin=origin)   # a bad one fails here, not as a division by 0
        # plain Python numbers: a numpy int64 (a sweep over np.arange) breaks JSON and YAML output later
        for key, kind in _FIELDS.items():
            if kind is not str:
                object.__setattr__(self, key, kind(getattr(self, key)))
        object.__setattr__(self, "calibration", Calibration(
            **{key: float(getattr(self.calibration, key)) for key in sorted(_CAL_FIELDS)}))

    @property
    def pes(self) -> int:
        """Multiply-accumulate cells over all arrays."""
        return self.array_rows * self.array_cols * self.num_arrays

    def replace(self, **changes) -> "Accelerator":
        """A copy with ``changes``, validated like any other."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {
    "array_rows": int, "array_cols": int, "num_arrays": int, "dataflow": str,
    "clock_hz": float, "bandwidth_bytes_per_s": float, "onchip_bytes": int,
    "bytes_per_element": int,
}
_REQUIRED = ("array_rows", "array_cols", "clock_hz", "bandwidth_bytes_per_s")
_CAL_FIELDS = {f.name for f in dataclasses.fields(Calibration)}


def validate(acc: Accelerator, origin: str = "<accelerator>") -> None:
    """Raise HardwareConfigError naming ``origin`` and the offending key (``acc``: anything with the
    Accelerator attributes)."""
    for key, kind in _FIELDS.items():
        value = getattr(acc, key)
        if kind is str:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or not value > 0:
            raise HardwareConfigError(f"{origin}: key '{key}' must be a positive finite number, got {short_repr(value)}")
        if kind is int and value != int(value):
            raise HardwareConfigError(f"{origin}: key '{key}' expected an integer, got {short_repr(value)}")
        if kind is int and value > MAX_EXACT_INT:   # also for Accelerator.replace (--array, --num-arrays)
            raise HardwareConfigError(f"{origin}: key '{key}' expected an integer <= 2**53, got {short_repr(value)}")
    for key in ("clock_hz", "bandwidth_bytes_per_s"):   # 1e-300 Hz made every latency inf
        if getattr(acc, key) < 1:
            raise HardwareConfigError(f"{origin}: key '{key}' must be >= 1 (per second), "
                                      f"got {short_repr(getattr(acc, key))}")
    if acc.dataflow not in DATAFLOWS:
        raise HardwareConfigError(
            f"{origin}: key 'dataflow' must be one of {', '.join(DATAFLOWS)}, got {short_repr(acc.dataflow)}")
    cal = acc.calibration
    for key in _CAL_FIELDS:
        value = getattr(cal, key)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise HardwareConfigError(f"{origin}: key 'calibration.{key}' expected a finite number, got {short_repr(value)}")
    if not 0 < cal.bandwidth_efficiency <= 1:
        raise HardwareConfigError(
            f"{origin}: key 'calibration.bandwidth_efficiency' must be in (0, 1], got {short_repr(cal.bandwidth_efficiency)}")
    if not cal.cycle_scale > 0:
        raise HardwareConfigError(f"{origin}: key 'calibration.cycle_scale' must be > 0, got {short_repr(cal.cycle_scale)}")
    for key in ("fold_overhead_cycles", "layer_overhead_cycles"):
        if getattr(cal, key) < 0:
            raise HardwareConfigError(f"{origin}: key 'calibration.{key}' must be >= 0, got {short_repr(getattr(cal, key))}")


def _refuse_unknown_calibration_keys(cal: Dict[Any, Any], origin: str) -> None:
    """HardwareConfigError naming the first key of the mapping ``cal`` that is no Calibration field."""
    bad = sorted(set(cal) - _CAL_FIELDS, key=str)
    if bad:
        raise HardwareConfigError(
            f"{origin}: unknown key 'calibration.{bad[0]}' (expected one of {', '.join(sorted(_CAL_FIELDS))})")


_KIND_NAMES = {int: "integer", float: "number", str: "string"}
MAX_EXACT_INT = 2 ** 53   # the largest count float arithmetic (the cost model's) holds exactly


def _coerce(value: Any, kind: type, key: str, origin: str):
    noun = _KIND_NAMES[kind]
    what = f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"
    if isinstance(value, bool) or value is None:
        raise HardwareConfigError(f"{origin}: key '{key}' expected {what}, got {short_repr(value)}")
    if kind is str:
        if not isinstance(value, str):
            raise HardwareConfigError(f"{origin}: key '{key}' expected a string, got {short_repr(value)}")
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise HardwareConfigError(f"{origin}: key '{key}' expected {what}, got {short_repr(value)}") from None
    except OverflowError:   # an integer past float's range
        number = math.inf
    if not math.isfinite(number):
        raise HardwareConfigError(f"{origin}: key '{key}' expected a finite {noun}, got {short_repr(value)}")
    if kind is int:
        if number != int(number):
            raise HardwareConfigError(f"{origin}: key '{key}' expected an integer, got {short_repr(value)}")
        exact = value if isinstance(value, int) else int(number)   # 2**53 + 1 is not a float
        if exact > MAX_EXACT_INT:
            raise HardwareConfigError(f"{origin}: key '{key}' expected an integer <= 2**53, got {short_repr(value)}")
        return exact
    return number


def from_dict(data: Dict[str, Any], origin: str = "<dict>", name: Optional[str] = None) -> Accelerator:
    """Build and validate an Accelerator from a YAML-like mapping."""
    if not isinstance(data, dict):
        raise HardwareConfigError(f"{origin}: expected a mapping of accelerator keys, got {type(data).__name__}")
    known = set(_FIELDS) | {"name", "calibration", "source", "fit_report", "provenance"}
    unknown = sorted(set(data) - known, key=str)
    if unknown:
        raise HardwareConfigError(
            f"{origin}: unknown key '{unknown[0]}' (expected one of {', '.join(sorted(known))})")
    for key in _REQUIRED:
        if key not in data:
            raise HardwareConfigError(f"{origin}: missing key '{key}'")
    kwargs: Dict[str, Any] = {k: _coerce(data[k], t, k, origin) for k, t in _FIELDS.items() if k in data}
    cal = data.get("calibration")
    if cal is None:               # absent, or 'calibration:' with nothing under it
        cal = {}
    if not isinstance(cal, dict):
        raise HardwareConfigError(f"{origin}: key 'calibration' expected a mapping, got {short_repr(cal)}")
    _refuse_unknown_calibration_keys(cal, origin)
    kwargs["calibration"] = Calibration(**{k: _coerce(v, float, f"calibration.{k}", origin) for k, v in cal.items()})
    if data.get("name") is not None and not isinstance(data["name"], str):
        raise HardwareConfigError(f"{origin}: key 'name' expected a string, got {short_repr(data['name'])}")
    kwargs["name"] = str(data.get("name") or name or "custom")
    kwargs["source"] = "" if data.get("source") is None else str(data["source"])   # `source:` left empty
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(Accelerator) if f.name not in kwargs}
    validate(SimpleNamespace(**defaults, **kwargs), origin)   # errors name the file, then build
    return Accelerator(**kwargs)


def preset_names():
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _resolve(name_or_path: Union[str, os.PathLike]) -> Tuple[Path, bool]:
    """(path, is_preset) of an accelerator argument: an existing file first (so a user's file
    named like a preset is that file); otherwise, when the argument has no directory part, the
    shipped preset of that name; otherwise a one-line HardwareConfigError.  A directory in the
    working directory named like a preset (a results folder 'tpu_v4/') does not hide it."""
    text = os.fspath(name_or_path)
    path = Path(text)
    bare = is_bare_name(text)
    preset = PRESET_DIR / f"{text}.yaml"
    if text and path.exists() and not (bare and path.is_dir() and preset.is_file()):
        return path, False
    if text and bare and preset.is_file():
        return preset, True
    if bare:
        raise HardwareConfigError(
            f"{text or '<empty>'}: no such preset or file (presets: {', '.join(preset_names())})")
    raise HardwareConfigError(
        f"{text}: no such file (a preset is named without a directory: {', '.join(preset_names())})")


def accelerator_location(name_or_path: Union[str, os.PathLike]) -> str:
    """The argument as ``load_accelerator`` in another working directory reads the same accelerator:
    a file's absolute path, a preset's name.  HardwareConfigError when neither is found."""
    path, preset = _resolve(name_or_path)
    return os.fspath(name_or_path) if preset else os.path.abspath(path)


def load_accelerator(name_or_path: Union[str, os.PathLike]) -> Accelerator:
    """Load a YAML file, or a preset (``uboost``, ``tpu_v2``, ...) by a name without a directory
    part when no file of that name exists."""
    path, _ = _resolve(name_or_path)
    data = read_yaml(path, HardwareConfigError)
    return from_dict(data, origin=str(path), name=path.stem)


def as_accelerator(value: "Accelerator | str | os.PathLike") -> Accelerator:
    """``value`` if it is an Accelerator, else the preset or YAML file it names (``load_accelerator``);
    a TypeError for anything else (the cost functions take either)."""
    if isinstance(value, Accelerator):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load_accelerator(value)
    raise TypeError(f"expected an Accelerator, a preset name or a YAML path, got {type(value).__name__}")


def calibrated_mode(name_or_path: Union[str, os.PathLike]) -> Optional[str]:
    """The cost model (``systolic`` or ``uboost``) an accelerator YAML's calibration was fitted for
    (its ``fit_report.mode``), or None for a preset or an uncalibrated file.  The argument is
    resolved as ``load_accelerator`` resolves it; one it cannot load is a HardwareConfigError."""
    path, preset = _resolve(name_or_path)
    if preset:
        return None
    data = read_yaml(path, HardwareConfigError)
    report = data.get("fit_report") if isinstance(data, dict) else None
    mode = report.get("mode") if isinstance(report, dict) else None
    return mode if isinstance(mode, str) else None


def mode_mismatch_note(name_or_path: Union[str, os.PathLike], mode: str,
                       fitted: Union[str, None, bool] = False) -> Optional[str]:
    """A note when ``name_or_path`` was calibrated for another cost model than ``mode``, else None.
    ``fitted``: the mode its calibration was fitted for, when already known (None: uncalibrated);
    by default read from the file (``calibrated_mode``)."""
    if fitted is False:
        fitted = calibrated_mode(name_or_path)
    if fitted is None or fitted == mode:
        return None
    return (f"note: {name_or_path} was calibrated for the {fitted} model; its calibration block is "
            f"applied to the {mode} model here, where it was not fitted")


def save_accelerator(acc: Accelerator, path: Union[str, os.PathLike], extra: Optional[Dict[str, Any]] = None) -> None:
    """Write ``acc`` (plus ``extra`` keys such as fit_report/provenance) as YAML, atomically."""
    data = acc.to_dict()
    data.update(extra or {})
    atomic_write_text(path, dump_yaml(data))
