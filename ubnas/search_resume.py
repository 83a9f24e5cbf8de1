"""The search checkpoint and what ``ubnas search --resume`` reads back: the checkpoint, written and
restored side by side, and checked; the saved config with this invocation's placement options; and
the space and accelerator definitions the run was started with (saved in the checkpoint, so that
files edited since do not change a resumed run)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch

from hwmodels import load_accelerator
from hwmodels.accelerator import calibrated_mode, from_dict

from .runtime import (aside_dir, atomic_torch_save, damaged_checkpoint, existing_checkpoint, ignored_flags,
                      ignored_on_resume, is_count, is_finite_number, options_given, restore_state, say,
                      trajectory_problems)
from .search_config import SearchConfig, config_from_yaml, with_located_files
from .space import read_space_text

# Options that say where and on what a run executes, not what it computes: --resume takes those
# given on its command line (a GPU run resumes on a CPU, a data set that moved is found; the run
# directory is always the one resumed), everything else from the checkpoint.
PLACEMENT_KEYS = ("out", "device", "data_dir", "kernels")
# what --resume needs of a search checkpoint (space_yaml, accelerator_config and world_size are newer:
# a checkpoint without them resumes with the files named in its config, on one process; one with
# latency_ref instead of latency_refs took a single reference for all stages, and keeps it)
CHECKPOINT_KEYS = ("config", "epoch", "arch_steps", "mu", "model", "windows", "w_opt", "a_opt",
                   "data_gen", "gumbel_gen", "alloc_gen", "torch_rng", "history", "realloc_log")


@dataclass
class Trajectory:
    """What a search carries from step to step besides its tensors and generators."""

    epoch: int = 0             # epochs done
    arch_steps: int = 0
    mu: float = 0.0            # the latency target's multiplier (dual ascent)
    # seconds, per stage ('op', 'channel', 'joint'): the latency at the stage's first step (lambda's unit)
    latency_refs: Dict[str, float] = field(default_factory=dict)
    history: List[dict] = field(default_factory=list)   # the log's rows, one per epoch


def save_search_checkpoint(path: Path, cfg: SearchConfig, state: Trajectory, net, world: int,
                           defs: "RunDefinitions", w_opt, a_opt, data_gen: torch.Generator,
                           gumbel_gen: torch.Generator, allocator, placement: Dict[str, str],
                           data_fingerprint: Dict[str, Any]) -> None:
    """Everything a resume needs to go on as if never stopped (atomically: a crash keeps the last one).
    ``placement``: the device type and kernels the run executes with (see ``placement_note``);
    ``data_fingerprint``: ``Dataset.fingerprint()`` of the data searched on (a resume checks it)."""
    atomic_torch_save({
        "config": asdict(cfg), "placement": placement, "epoch": state.epoch, "arch_steps": state.arch_steps,
        "mu": state.mu, "latency_refs": state.latency_refs, "model": net.state_dict(), "world_size": world,
        "space_yaml": defs.space_yaml, "space_origin": defs.space_origin,
        "accelerator_config": defs.accelerator.to_dict(), "accelerator_fit_mode": defs.fit_mode,
        "windows": {k: [w.lo, w.step, w.count] for k, w in net.widths.items()},
        "w_opt": w_opt.state_dict(), "a_opt": a_opt.state_dict(),
        "data_gen": data_gen.get_state(), "gumbel_gen": gumbel_gen.get_state(),
        "alloc_gen": allocator.generator.get_state(), "torch_rng": torch.get_rng_state(),
        "history": state.history, "realloc_log": allocator.log, "data": data_fingerprint,
    }, path)


def restore_search_state(checkpoint: dict, path: Path, w_opt, a_opt, data_gen: torch.Generator,
                         gumbel_gen: torch.Generator, allocator) -> Trajectory:
    """The optimizers, generators and reallocation log as ``save_search_checkpoint`` left them in
    ``path``, and the trajectory.  The supernet's windows and tensors are the caller's (they come
    before the optimizers that hold them)."""
    for key, load in (("w_opt", w_opt.load_state_dict), ("a_opt", a_opt.load_state_dict),
                      ("data_gen", data_gen.set_state), ("gumbel_gen", gumbel_gen.set_state),
                      ("alloc_gen", allocator.generator.set_state), ("torch_rng", torch.set_rng_state)):
        restore_state(path, key, load, checkpoint[key])
    allocator.log = list(checkpoint["realloc_log"])
    refs = checkpoint.get("latency_refs")
    if refs is None:   # written before each stage took its own: the one reference, as that run began
        refs = {stage: checkpoint["latency_ref"] for stage in ("op", "channel", "joint")}
    return Trajectory(checkpoint["epoch"], checkpoint["arch_steps"], checkpoint["mu"], dict(refs),
                      list(checkpoint["history"]))


def resumed_config(cfg: SearchConfig, checkpoint: dict, given: Optional[Iterable[str]], ckpt_path: Path,
                   main: bool) -> SearchConfig:
    """The checkpoint's config, with where and on what the run executes (PLACEMENT_KEYS) taken from
    this invocation: those in ``given`` (the options the user set; None: those away from their
    defaults), and always ``out``.  Options given that differ from the checkpoint's are named in a note."""
    set_here = options_given(cfg, SearchConfig(), PLACEMENT_KEYS, given)
    here = {k: getattr(cfg, k) for k in PLACEMENT_KEYS if k == "out" or k in set_here}
    saved = SearchConfig(**{**checkpoint["config"], **here})
    trajectory = [f.name for f in fields(SearchConfig) if f.name not in PLACEMENT_KEYS]
    # the saved space and hw files are located: a relative flag naming the same file is no change (one
    # not found from here is compared as given, and named, as it differs)
    changed = ignored_on_resume(_as_saved_if_same_file(with_located_files(cfg, missing_ok=True), saved),
                                asdict(saved), SearchConfig(), trajectory, given)
    if changed and main:
        say(f"note: resuming {ckpt_path} with its saved config; "
            f"ignored: {ignored_flags(changed, checkpoint['config'])}")
    return saved


def _as_saved_if_same_file(cfg: SearchConfig, saved: SearchConfig) -> SearchConfig:
    """``cfg`` with the saved ``space`` / ``hw`` path where it names the same file another way (a
    symlinked directory: the absolute paths differ as strings)."""
    for key in ("space", "hw"):
        here, there = getattr(cfg, key), getattr(saved, key)
        try:
            if here != there and os.path.samefile(here, there):
                cfg = replace(cfg, **{key: there})
        except (OSError, TypeError, ValueError):   # a shipped name, a file gone: compared as given
            pass
    return cfg


def placement_note(checkpoint: dict, placement: Dict[str, str], ckpt_path: Path) -> Optional[str]:
    """A note when a run resumes on another device type or with other kernels than it ran with (they
    sum in another order), else None.  ``placement``: {"device": "cpu" | "cuda", "kernels": "eager" |
    "reference" | "triton"}, resolved ('auto' taken to what it ran).  A checkpoint written before
    placements were saved is compared by its --device / --kernels strings."""
    before = checkpoint.get("placement")
    if before is None:
        before = {k: checkpoint["config"].get(k) for k in placement}
        if before["device"] not in (None, "auto"):   # cuda:1 ran on the device type cuda
            before["device"] = before["device"].split(":")[0]
        placement = {k: (v if before[k] != "auto" else "auto") for k, v in placement.items()}
    moved = [f"{k} {placement[k]} (it ran with {before[k]})" for k in ("device", "kernels")
             if before.get(k) is not None and placement[k] != before[k]]
    if not moved:
        return None
    return (f"note: resuming {ckpt_path} with {' and '.join(moved)}: the result agrees with an uninterrupted "
            f"run to float rounding, not bit for bit")


def refuse_lost_checkpoint(out: Path, ckpt_path: Path) -> None:
    """``--resume`` with no checkpoint where the run got past its first epoch (a logged epoch or an
    exported arch.yaml: each is written after a checkpoint): the checkpoint was deleted or moved, and
    starting over would redo the whole search.  A one-line ValueError saying so."""
    log = out / "search_log.csv"
    try:
        logged = log.is_file() and sum(1 for line in log.read_text(errors="replace").splitlines() if line.strip()) > 1
    except OSError:
        logged = False
    found = [name for name, there in (("arch.yaml", (out / "arch.yaml").is_file()), (log.name, logged)) if there]
    if found:
        raise ValueError(f"{ckpt_path}: missing, though {out} holds the run's {' and '.join(found)} (written "
                         f"only after a checkpoint); --resume cannot continue without it. Restore it, or run "
                         f"without --resume to start over (the old files move to {aside_dir(out, 'arch.yaml')})")


def restarted_config(cfg: SearchConfig, config_path: Path, given: Optional[Iterable[str]],
                     main: bool) -> SearchConfig:
    """``--resume`` where the run stopped before its first checkpoint: the run starts over with the
    options it saved in ``config_path`` (OUT/config.yaml), those the user set now winning (``given``;
    None: those away from their defaults), and ``out`` always this invocation's."""
    saved = config_from_yaml(str(config_path))
    set_here = options_given(cfg, SearchConfig(), [f.name for f in fields(SearchConfig)], given)
    restarted = SearchConfig(**{**saved, **{k: getattr(cfg, k) for k in set_here}, "out": cfg.out})
    restarted.validate(str(config_path))
    if main:
        say(f"note: {config_path.parent / 'checkpoint.pt'} was never written (the run stopped in its first "
            f"epoch); starting it over with the options in {config_path}")
    return restarted


def read_search_checkpoint(path: Path, resume: bool) -> Optional[dict]:
    """The search checkpoint at ``path``.  Another kind of checkpoint is refused either way (starting
    over would overwrite it); an unreadable one is refused on --resume and left to be overwritten
    otherwise (None)."""
    ckpt = existing_checkpoint(path, resume)
    if ckpt is None:
        return None
    if not isinstance(ckpt, dict) or "arch_steps" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint written by `ubnas search` (a `ubnas train` run?); "
                         f"choose another --out")
    if not isinstance(ckpt["config"], dict):   # starting over overwrites it
        if resume:
            raise damaged_checkpoint(path, f"config (expected a mapping of options, got "
                                           f"{type(ckpt['config']).__name__})")
        return ckpt
    unknown = set(ckpt["config"]) - {f.name for f in fields(SearchConfig)}
    if unknown and resume:
        raise ValueError(f"{path}: saved config has unknown option(s) {', '.join(sorted(unknown))} "
                         f"(written by another ubnas version?)")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if "latency_refs" not in ckpt and "latency_ref" not in ckpt:
        missing.append("latency_refs")
    if missing and resume:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)} (written by another ubnas version?); "
                         f"start over without --resume")
    if resume:
        _check_trajectory(ckpt, path)
    return ckpt


def _check_trajectory(ckpt: dict, path: Path) -> None:
    """Refuse, in one line, a checkpoint whose trajectory entries have the wrong type or range (one
    edited by hand, or damaged) before they are used: a negative epoch would run extra epochs."""
    problems = trajectory_problems(ckpt, ckpt["config"].get("epochs"))
    try:   # the options it resumes with: refused here, as the checkpoint's, not as a flag of this call
        SearchConfig(**ckpt["config"]).validate("saved config")
    except (TypeError, ValueError) as exc:
        problems.append(f"config ({exc})")
    if not is_count(ckpt["arch_steps"]):
        problems.append(f"arch_steps {ckpt['arch_steps']!r} (expected a whole number >= 0)")
    if not is_finite_number(ckpt["mu"]):
        problems.append(f"mu {ckpt['mu']!r} (expected a finite number)")
    windows = ckpt["windows"]
    if not isinstance(windows, dict) or not all(
            isinstance(w, (list, tuple)) and len(w) == 3 and all(is_count(v) for v in w) for w in windows.values()):
        problems.append("windows (expected {name: [lo, step, count]} of whole numbers)")
    for key in ("model", "w_opt", "a_opt"):
        if not isinstance(ckpt[key], dict):
            problems.append(f"{key} (expected a state dict)")
    if not isinstance(ckpt["realloc_log"], list):
        problems.append("realloc_log (expected a list)")
    if problems:
        raise damaged_checkpoint(path, "; ".join(problems))


@dataclass
class RunDefinitions:
    """What a run searches and costs on: the search space's YAML text (and the file it came from),
    the accelerator, and the cost model its calibration was fitted for (None: not calibrated)."""

    space_yaml: str
    space_origin: str
    accelerator: Any
    fit_mode: Optional[str]


def run_definitions(cfg: SearchConfig, checkpoint: Optional[dict], ckpt_path: Path, main: bool) -> RunDefinitions:
    """The definitions of cfg.space and cfg.hw, or on --resume those saved in the checkpoint, so that
    a file edited, broken or removed since does not change the run's trajectory (a note says so).
    A checkpoint from before they were saved resumes with the files."""
    saved = checkpoint if checkpoint is not None and "space_yaml" in checkpoint else None
    if saved is None:
        text, origin = read_space_text(cfg.space)
        return RunDefinitions(text, origin, load_accelerator(cfg.hw), calibrated_mode(cfg.hw))
    try:
        same = read_space_text(cfg.space)[0] == saved["space_yaml"]
    except ValueError:
        same = False
    if not same and main:
        say(f"note: search space {cfg.space} changed or cannot be read since {ckpt_path} was written; "
            f"resuming with the definition saved in it")
    try:
        same = load_accelerator(cfg.hw).to_dict() == saved["accelerator_config"]
    except ValueError:
        same = False
    if not same and main:
        say(f"note: accelerator {cfg.hw} changed or cannot be read since {ckpt_path} was written; "
            f"resuming with the definition saved in it")
    acc = from_dict(saved["accelerator_config"], origin=f"{ckpt_path} (accelerator_config)",
                    name=saved["accelerator_config"].get("name"))
    return RunDefinitions(saved["space_yaml"], saved["space_origin"], acc, saved.get("accelerator_fit_mode"))
