"""``ubnas search``: run a hardware-aware search; every option also a --config YAML key."""
import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Tuple

from .. import distributed
from ..runtime import expand_home
from ..search import SearchConfig, config_from_yaml, run_search


def add_parser(sub):
    p = sub.add_parser("search", help="search an architecture (default: tiny space on the digits data)",
                       argument_default=argparse.SUPPRESS)
    defaults = SearchConfig()
    help_text = {
        "space": "search space name or YAML file", "hw": "accelerator preset or YAML file",
        "data": "digits | cifar10 | synthetic", "data_dir": "directory with CIFAR-10's python batches",
        "lambda_latency": "weight of latency / the latency each stage starts at (replaced by a target)",
        "beta_utilization": "weight of network utilization (subtracted)",
        "target_latency_us": "hard latency target in microseconds, for a batch of --hw-batch images "
                             "(dual ascent)",
        "cost_model": "systolic | uboost | flops | roofline", "channels": "dynamic | fixed width windows",
        "stage": "staged (ops, then widths) | joint | op | channel",
        "kernels": "mixed-edge implementation: eager | reference | triton | auto",
        "out": "run directory (config.yaml, search_log.csv, checkpoint.pt, arch.yaml)",
        "epochs": "search epochs (staged: the first half searches ops, the second widths)",
        "batch_size": "images per weight and per architecture step (per process under torchrun)",
        "surrogate": "straight_through (exact cost forward, smooth gradient) | sigmoid (smooth staircase)",
        "temperature": "width of the smooth ceiling's steps, in GEMM elements: output channels, or input "
                       "channels x k x k for a k x k conv (--surrogate sigmoid, or the straight-through "
                       "gradient under --width-cost soft)",
        "hw_batch": "batch size the hardware cost is taken at",
        "width_cost": "expected (every candidate width) | soft (the expected width only)",
        "relaxation": "gumbel (Gumbel-softmax samples) | softmax",
        "tau0": "initial softmax temperature", "tau_decay": "temperature factor per epoch, in (0, 1]",
        "weight_lr": "SGD learning rate of the weights (cosine schedule)", "arch_lr": "Adam learning rate of the "
        "architecture logits", "dual_lr": "step of the latency multiplier (with --target-latency-us)",
        "split": "half (DARTS' 50/50 weight/architecture split) | 80_20",
        "realloc_every": "architecture steps between channel-window checks",
        "weight_momentum": "SGD momentum of the weights", "weight_decay": "SGD weight decay of the weights",
        "grad_clip": "gradient norm clip of the weights (> 0)",
        "arch_weight_decay": "Adam weight decay of the architecture logits",
        "seed": "seed of the weights, data order, Gumbel noise and channel reallocation",
        "device": "auto | cpu | cuda | cuda:N", "max_steps_per_epoch": "cap on steps per epoch (quick runs)",
    }
    for f in fields(SearchConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float}.get(f.type.replace("Optional[", "").rstrip("]"), str)
        p.add_argument(flag, dest=f.name, type=kind,
                       help=f"{help_text.get(f.name, '')} (default: {getattr(defaults, f.name)})".strip())
    p.add_argument("--config", dest="config_file", metavar="RUN.yaml",
                   help="YAML file of the options above (command-line flags win)")
    p.add_argument("--resume", action="store_true", default=False,
                   help="continue from OUT/checkpoint.pt with its saved options; a run killed before its first "
                        "checkpoint starts over with OUT/config.yaml's options, flags given winning (a new run if "
                        "there is neither); a run that logged an epoch but lost its checkpoint is refused")
    p.add_argument("--quiet", action="store_true", default=False, help="no progress bar or per-epoch lines (notes still print)")
    return p


def config_from_args(args) -> Tuple[SearchConfig, Dict[str, Any]]:
    """(the validated SearchConfig, the options given) of parsed ``ubnas search`` arguments: the
    --config file's keys, then the flags given.  A bad value is a ValueError naming its flag or key."""
    values = {}
    if getattr(args, "config_file", None):
        values.update(config_from_yaml(args.config_file))
        SearchConfig(**values).validate(args.config_file)   # so a bad flag below is blamed on the flag
    names = {f.name for f in fields(SearchConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})   # only flags given (SUPPRESS)
    values = expand_home(values, ("space", "hw", "data_dir", "out"))
    cfg = SearchConfig(**values)
    cfg.validate("command line")
    return cfg, values


def _space_has_a_moving_window(space: str) -> bool:
    """Whether any width of ``space`` may move (dynamic, 2 or more candidates); True when the space
    does not load here (run_search then says why)."""
    from ..space import load_space
    try:
        loaded = load_space(space)
    except ValueError:
        return True
    return any(ch.dynamic and ch.candidates > 1 for ch in [loaded.stem_channels] + [c.channels for c in loaded.cells])


def run(args) -> int:
    cfg, values = config_from_args(args)
    # a --config file (a saved OUT/config.yaml, say) holds every option: only a flag or a value
    # away from the default says that the user meant to set it
    defaults = SearchConfig()

    def meant(name: str) -> bool:
        return name in vars(args) or getattr(cfg, name) != getattr(defaults, name)
    # notes on this command line's options: --resume on an empty OUT (a scheduler's restartable job)
    # starts a new run with them.  Not where a checkpoint's options rule, nor on a restart from the
    # config.yaml of a run stopped before its first checkpoint: its saved options merge with these
    # flags in run_search, and notes judged on the flags alone could be wrong (a saved target)
    saved = args.resume and any((Path(cfg.out) / name).is_file() for name in ("checkpoint.pt", "config.yaml"))
    if not saved and distributed.rank() == 0:
        if meant("dual_lr") and cfg.target_latency_us is None:
            print("note: --dual-lr steps the multiplier of --target-latency-us; without a target it has no effect")
        if cfg.target_latency_us is not None and cfg.dual_lr == 0:   # mu stays 0: latency never enters the loss
            print("note: --dual-lr 0 keeps the target's multiplier at 0, so the search ignores latency; only the "
                  "export's fit (ubnas.target_fit) holds the network to --target-latency-us")
        if meant("beta_utilization") and cfg.beta_utilization and cfg.cost_model == "flops":
            print("note: the flops cost model keeps every PE busy (utilization 1 for any network), so "
                  "--beta-utilization has no effect; the systolic, uboost and roofline models vary it")
        if cfg.stage == "channel":   # nothing chooses the ops: they are what the random init favours
            print("note: --stage channel searches the widths only, on the cell that the random initial op "
                  "logits favour; --stage staged (the default) chooses the ops first")
        smoothing = [f"--{n}" for n in ("surrogate", "temperature") if meant(n)]
        if smoothing and cfg.cost_model in ("flops", "roofline"):   # no tile ceilings to smooth
            print(f"note: the {cfg.cost_model} cost model has no tile ceilings, so {' and '.join(smoothing)} "
                  f"{'have' if len(smoothing) > 1 else 'has'} no effect; the systolic and uboost models use them")
        elif (meant("temperature") and cfg.surrogate == "straight_through" and cfg.width_cost == "expected"):
            # every candidate width is a constant there: no gradient flows through a ceiling
            print("note: --temperature has no effect with --surrogate straight_through and --width-cost "
                  "expected (the exact ceilings forward, and no gradient reaches them); it shapes "
                  "--surrogate sigmoid, or the gradient under --width-cost soft")
        if meant("realloc_every"):   # where no window ever moves
            why = "--channels fixed" if cfg.channels == "fixed" else "--stage op" if cfg.stage == "op" else \
                None if _space_has_a_moving_window(cfg.space) else f"the space {cfg.space}"
            if why:
                print(f"note: --realloc-every has no effect with {why} (no width window moves); it spaces the "
                      f"moves of --channels dynamic windows of 2 or more candidates in a stage that searches widths")
        if meant("lambda_latency") and cfg.target_latency_us is not None:
            print("note: --target-latency-us replaces the --lambda-latency term (--beta-utilization still applies)")
    try:
        result = run_search(cfg, resume=args.resume, progress=not args.quiet, given=set(values))
    except BaseException as exc:
        distributed.shutdown(every_rank=distributed.on_every_rank(exc))
        raise
    distributed.shutdown()
    if distributed.rank() != 0:   # the group is shut down: don't ask it (that would re-join)
        return 0
    cfg = result.config or cfg   # --resume ran on the checkpoint's options, not this command line's
    last = result.history[-1] if result.history else {}
    print(f"search done: {len(result.history)} epochs, val_acc {last.get('val_acc', float('nan')):.3f}, "
          f"supernet latency {last.get('latency_us', float('nan')):.2f} us, "
          f"utilization {100 * last.get('utilization', float('nan')):.2f} % ({cfg.cost_model} cost model, smooth"
          + (f", batch {cfg.hw_batch}" if cfg.hw_batch != 1 else "") + ")")
    if result.spec_path:   # what the user deploys: the exported network, costed exactly
        from ..spec import load_spec
        provenance = load_spec(result.spec_path).provenance
        exact = provenance.get("exact_cost") or {}
        print(f"architecture: {result.spec_path} (exact latency {exact.get('latency_us', float('nan')):.2f} us, "
              f"utilization {100 * exact.get('utilization', float('nan')):.2f} % on {provenance.get('accelerator')}"
              + (f", batch {exact['batch']}" if exact.get("batch", 1) != 1 else "") + ", systolic model)")
        # the model's exact ceilings (what a target bounds), which the sigmoid surrogate's
        # smooth_cost_discrete overcounts by several %; a spec from before they were saved has the latter
        optimised = provenance.get("model_latency_us",
                                   (provenance.get("smooth_cost_discrete") or {}).get("latency_us"))
        if cfg.cost_model != "systolic" and optimised is not None:
            bound = f" (what --target-latency-us {cfg.target_latency_us:g} bounds)" if cfg.target_latency_us else ""
            print(f"note: the search optimised the {cfg.cost_model} cost model, which puts this network at "
                  f"{optimised:.2f} us{bound}")
    print(f"run directory: {result.out_dir} (config.yaml, search_log.csv, checkpoint.pt)")
    return 0
