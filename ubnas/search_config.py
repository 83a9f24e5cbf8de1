"""The options of ``ubnas search``: ``SearchConfig`` (CLI flags and --config YAML keys), their checks,
and the reading of a --config file."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Optional

from hwmodels.accelerator import accelerator_location
from hwmodels.yamlio import number_text, read_yaml, short_repr

from .cost import COST_MODELS, WIDTH_COSTS
from .data import DATASETS, MIN_TRAIN_BATCH, dataset_name
from .runtime import MAX_SEED, float32_finite
from .space import space_location
from .supernet import RELAXATIONS

STAGES = ("staged", "joint", "op", "channel")


@dataclass
class SearchConfig:
    """Every option of ``ubnas search`` (CLI flags and --config YAML keys)."""

    space: str = "tiny"
    hw: str = "uboost"
    data: str = "digits"
    data_dir: Optional[str] = None
    epochs: int = 8
    batch_size: int = 64
    lambda_latency: float = 0.2
    beta_utilization: float = 1.0
    target_latency_us: Optional[float] = None
    cost_model: str = "systolic"
    surrogate: str = "straight_through"
    temperature: float = 1.0
    hw_batch: int = 1
    width_cost: str = "expected"
    channels: str = "dynamic"
    stage: str = "staged"
    relaxation: str = "gumbel"
    tau0: float = 1.0
    tau_decay: float = 0.95
    weight_lr: float = 0.05
    weight_momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-3
    arch_weight_decay: float = 1e-3
    dual_lr: float = 0.5
    split: str = "half"
    realloc_every: int = 4
    kernels: str = "auto"
    seed: int = 0
    device: str = "auto"
    out: str = "runs/search"
    max_steps_per_epoch: Optional[int] = None

    def __post_init__(self):
        self.data = dataset_name(self.data)   # the rest compares with 'cifar10': one spelling from here on
        for key in ("space", "hw", "data_dir", "out"):   # a pathlib.Path from Python: the str the rest expects
            if isinstance(getattr(self, key), os.PathLike):
                setattr(self, key, os.fspath(getattr(self, key)))

    def validate(self, origin: str = "config") -> None:
        """One-line ValueError for a value that would break the search; ``origin`` is the --config
        file's path, or "command line" (then the error names the flag)."""
        def where(key: str) -> str:
            return f"--{key.replace('_', '-')}" if origin == "command line" else f"{origin}: key '{key}'"

        for f in fields(self):   # a hand-edited saved config ('epochs: "2"') would pass int() below, then fail
            if not _type_ok(f.type, getattr(self, f.name)):
                raise ValueError(f"{where(f.name)} expected {_base_type(f.type)}, "
                                 f"got {short_repr(getattr(self, f.name))}")
        choices = {"cost_model": COST_MODELS, "channels": ("dynamic", "fixed"), "stage": STAGES,
                   "relaxation": RELAXATIONS, "surrogate": ("sigmoid", "straight_through"),
                   "split": ("half", "80_20"), "width_cost": WIDTH_COSTS,
                   "kernels": ("eager", "reference", "triton", "auto")}
        if self.data not in DATASETS:   # (lower-cased by __post_init__)
            raise ValueError(f"{where('data')} expected one of {', '.join(DATASETS)}, got {short_repr(self.data)}")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device):
            raise ValueError(f"{where('device')} expected auto, cpu, cuda or cuda:N, got {short_repr(self.device)}")
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{where(key)} expected one of {', '.join(allowed)}, "
                                 f"got {short_repr(getattr(self, key))}")
        for key in ("epochs", "batch_size", "realloc_every", "hw_batch", "max_steps_per_epoch"):
            value = getattr(self, key)
            if value is not None and int(value) < 1:
                raise ValueError(f"{where(key)} must be >= 1, got {short_repr(value)}")
        if int(self.batch_size) < MIN_TRAIN_BATCH:   # every batch would be one image: BatchNorm fails
            raise ValueError(f"{where('batch_size')} must be >= {MIN_TRAIN_BATCH} (BatchNorm trains on a batch's "
                             f"statistics), got {short_repr(self.batch_size)}")
        # rates and scales that a sign error turns into a silently wrong search (NaN, ascent)
        for key in ("tau0", "tau_decay", "temperature", "weight_lr", "arch_lr", "grad_clip"):
            value = _as_float(getattr(self, key))
            if not (float32_finite(value) and value > 0):
                raise ValueError(f"{where(key)} must be > 0 and within float32's range (3.4e38), "
                                 f"got {short_repr(getattr(self, key))}")
        for key in ("weight_decay", "arch_weight_decay", "dual_lr", "lambda_latency", "beta_utilization"):
            value = _as_float(getattr(self, key))
            if not (float32_finite(value) and value >= 0):
                raise ValueError(f"{where(key)} must be >= 0 and within float32's range (3.4e38), "
                                 f"got {short_repr(getattr(self, key))}")
        if not self.tau_decay <= 1:   # > 1 heats the relaxation up every epoch instead of annealing it
            raise ValueError(f"{where('tau_decay')} must be in (0, 1], got {short_repr(self.tau_decay)}")
        if not 0 <= self.weight_momentum < 1:
            raise ValueError(f"{where('weight_momentum')} must be in [0, 1), got {short_repr(self.weight_momentum)}")
        if not isinstance(self.out, str) or not self.out.strip():
            raise ValueError(f"{where('out')} expected a run directory, got {short_repr(self.out)}")
        for key in ("space", "hw", "data_dir", "out"):   # the OS refuses it later as 'embedded null byte'
            if isinstance(getattr(self, key), str) and "\0" in getattr(self, key):
                raise ValueError(f"{where(key)} contains a NUL character: {short_repr(getattr(self, key))}")
        if self.target_latency_us is not None and not (float32_finite(_as_float(self.target_latency_us))
                                                       and self.target_latency_us > 0):
            raise ValueError(f"{where('target_latency_us')} must be > 0 and within float32's range (3.4e38), "
                             f"got {short_repr(self.target_latency_us)}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"{where('seed')} must be in [0, {MAX_SEED}], got {self.seed}")


def _as_float(value) -> float:
    """float(value), an integer past float's range being inf (which the checks then refuse)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def with_located_files(cfg: SearchConfig, missing_ok: bool = False) -> SearchConfig:
    """``cfg`` with ``space`` and ``hw`` as a run saves them (``space_location``,
    ``accelerator_location``): a shipped name stays a name, a file becomes its absolute path, so
    another working directory reads the same file.  One not found from here is its SpaceError or
    HardwareConfigError, or with ``missing_ok`` stays as given."""
    for key, locate in (("space", space_location), ("hw", accelerator_location)):
        try:
            cfg = replace(cfg, **{key: locate(getattr(cfg, key))})
        except ValueError:
            if not missing_ok:
                raise
    return cfg


def config_from_yaml(path: str) -> Dict[str, Any]:
    """Read a RUN.yaml of SearchConfig keys; unknown keys and wrong types are one-line errors."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of search options, got {type(data).__name__}")
    types = {f.name: f.type for f in fields(SearchConfig)}
    for key, value in data.items():
        if key not in types:
            raise ValueError(f"{path}: unknown key '{key}' (expected one of {', '.join(types)})")
        want = _base_type(types[key])
        number = number_text(value) if want == "float" and isinstance(value, str) else None
        if number is not None:   # a quoted number, "3e-3" (not "1:30.0")
            value = data[key] = number
        if not _type_ok(types[key], value):
            raise ValueError(f"{path}: key '{key}' expected {want}, got {short_repr(value)}")
    return data


def _base_type(type_text: str) -> str:
    """'int' for a field annotated 'int' or 'Optional[int]'."""
    return type_text.replace("Optional[", "").rstrip("]")


def _type_ok(type_text: str, value) -> bool:
    """Whether ``value`` fits a SearchConfig field annotated ``type_text`` (a bool is not a number)."""
    want = _base_type(type_text)
    return (value is None and "Optional" in type_text) or \
        (want == "int" and isinstance(value, int) and not isinstance(value, bool)) or \
        (want == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)) or \
        (want == "str" and isinstance(value, str))
