"""What ``ubnas search --resume`` reads back: the search checkpoint, checked; the saved config with
this invocation's placement options; and the space and accelerator definitions the run was started
with (saved in the checkpoint, so that files edited since do not change a resumed run)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Optional

from hwmodels import load_accelerator
from hwmodels.accelerator import calibrated_mode, from_dict

from .runtime import existing_checkpoint, ignored_on_resume, options_given, say
from .search_config import SearchConfig, config_from_yaml
from .space import read_space_text

# Options that say where and on what a run executes, not what it computes: --resume takes those
# given on its command line (a GPU run resumes on a CPU, a data set that moved is found; the run
# directory is always the one resumed), everything else from the checkpoint.
PLACEMENT_KEYS = ("out", "device", "data_dir", "kernels")
# what --resume needs of a search checkpoint (space_yaml, accelerator_config and world_size are newer:
# a checkpoint without them resumes with the files named in its config, on one process)
CHECKPOINT_KEYS = ("config", "epoch", "arch_steps", "mu", "latency_ref", "model", "windows", "w_opt", "a_opt",
                   "data_gen", "gumbel_gen", "alloc_gen", "torch_rng", "history", "realloc_log")


def resumed_config(cfg: SearchConfig, checkpoint: dict, given: Optional[Iterable[str]], ckpt_path: Path,
                   main: bool) -> SearchConfig:
    """The checkpoint's config, with where and on what the run executes (PLACEMENT_KEYS) taken from
    this invocation: those in ``given`` (the options the user set; None: those away from their
    defaults), and always ``out``.  Options given that differ from the checkpoint's are named in a note."""
    set_here = options_given(cfg, SearchConfig(), PLACEMENT_KEYS, given)
    here = {k: getattr(cfg, k) for k in PLACEMENT_KEYS if k == "out" or k in set_here}
    saved = SearchConfig(**{**checkpoint["config"], **here})
    trajectory = [f.name for f in fields(SearchConfig) if f.name not in PLACEMENT_KEYS]
    changed = ignored_on_resume(cfg, asdict(saved), SearchConfig(), trajectory, given)
    if changed and main:
        say(f"note: resuming {ckpt_path} with its saved config; ignored: {', '.join(changed)}")
    return saved


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
    unknown = set(ckpt["config"]) - {f.name for f in fields(SearchConfig)}
    if unknown and resume:
        raise ValueError(f"{path}: saved config has unknown option(s) {', '.join(sorted(unknown))} "
                         f"(written by another ubnas version?)")
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing and resume:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)} (written by another ubnas version?); "
                         f"start over without --resume")
    return ckpt


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
