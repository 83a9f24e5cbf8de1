"""The search loop: bilevel DARTS-style optimisation against CE + hardware cost.

Read top to bottom: config -> data -> supernet -> optimizers -> (resume) ->
epochs of {weight step, architecture step, channel reallocation} -> log and
checkpoint every epoch -> export the spec.

loss_arch = CE + lambda * latency / latency_ref - beta * utilization (latency_ref: the
latency the current stage starts at, so lambda weighs each stage alike), or with a hard target T:
CE + mu * relu(latency / T - 1) - beta * utilization with mu raised by dual ascent (the target
takes the latency term's place; the utilization objective stays), the latency there being the
derived network's with the supernet's gradient (``target_seconds``); at export ``target_fit``
brings a derived network still above T within it.
The options live in ``search_config``; the checkpoint, and what a resume reads back, in ``search_resume``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import inspect
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F

from hwmodels.accelerator import mode_mismatch_note
from hwmodels.exact import MODES
from hwmodels.estimate import too_large_to_trace
from hwmodels.yamlio import atomic_write_text, dump_yaml

from . import distributed as dist
from .channels import ChannelAllocator
from .cost import supernet_cost
from .data import (MIN_TRAIN_BATCH, DataError, batch_count, batches, ignored_data_dir_note, load_dataset,
                   refuse_other_data, search_split)
from .kernels import backend as kernel_backend
from .runtime import (all_finite, damaged_checkpoint, error_detail, make_run_dir, pick_device, progress_bar,
                      recover_set_aside, refuse_if_locked, resume_note, run_lock, say, set_aside)
from .search_config import STAGES, SearchConfig, config_from_yaml, with_located_files
from .search_resume import (Trajectory, placement_note, read_search_checkpoint, refuse_lost_checkpoint,
                            restarted_config, restore_search_state, resumed_config, run_definitions,
                            save_search_checkpoint)
from .space import space_from_text
from .supernet import Supernet
from .target_fit import fit_to_target

__all__ = ["STAGES", "SearchConfig", "SearchResult", "config_from_yaml", "cost_function", "enter_stage",
           "export_spec", "make_optimizers", "run_search", "search_step", "stage_at"]


class SearchDiverged(ValueError):
    """A loss or the latency became non-finite (a ValueError: the CLI prints one line).  Every rank
    raises it at the same step: the figures it checks are averaged over the ranks."""

    ubnas_on_every_rank = True   # distributed.on_every_rank


# a temperature or a latency multiplier past these is the likelier cause of a NaN than a learning rate:
# logits / tau overflows float32 near tau = 1e-38 / |logit|, and mu * latency / T once mu is huge
SUSPECT_TAU, SUSPECT_MU = 1e-6, 1e6


def _diverged(what: str, where: str, ckpt_path: Path, epochs_saved: int, tau: float, mu: float,
              cfg: SearchConfig) -> SearchDiverged:
    """The error for a search whose ``what`` turned non-finite ``where``; nothing is saved after it,
    so the checkpoint on disk holds ``epochs_saved`` epochs (0: none was written).  ``tau`` and
    ``mu``: the temperature and latency multiplier then, named as the cause when extreme."""
    kept = f"{ckpt_path} keeps epoch {epochs_saved}" if epochs_saved else "no checkpoint was written"
    fixes = []
    if tau < SUSPECT_TAU:
        fixes.append(f"a larger --tau0 / --tau-decay (the temperature was {tau:.3g})")
    if mu > SUSPECT_MU:   # a step of --dual-lr alone can put mu there, whatever the target
        fixes.append(f"a smaller --dual-lr (it was {cfg.dual_lr:g}) or a reachable --target-latency-us "
                     f"(its multiplier mu was {mu:.3g}; the target is {cfg.target_latency_us:g} us)")
    if cfg.weight_lr * cfg.weight_decay > 1:   # each SGD step scales the weights by 1 - lr * decay
        fixes.append(f"a smaller --weight-decay (it was {cfg.weight_decay:g}; each SGD step multiplies the "
                     f"weights by 1 - lr * decay = {1 - cfg.weight_lr * cfg.weight_decay:.3g})")
    fixes = fixes or ["lower --weight-lr / --arch-lr"]
    return SearchDiverged(f"search diverged: {what} {where}; {kept}; start over with {' or '.join(fixes)}")


@dataclass
class SearchResult:
    """What a search leaves: its run directory, the per-epoch log rows, the exported spec (None when
    interrupted, or on ranks other than 0) and the channel reallocations."""

    out_dir: Path
    history: List[dict] = field(default_factory=list)
    spec_path: Optional[Path] = None
    realloc_log: List[dict] = field(default_factory=list)
    config: Optional[SearchConfig] = None   # the options it ran with: a resumed run's are its checkpoint's


def stage_at(cfg: SearchConfig, epoch: int) -> str:
    """'op' (ops searched at fixed widths), 'channel' (chosen ops, widths searched) or 'joint'."""
    if cfg.stage == "staged":
        return "op" if epoch < op_stage_epochs(cfg) else "channel"
    return cfg.stage


def op_stage_epochs(cfg: SearchConfig) -> int:
    """How many of cfg's epochs search the ops (stage_at 'op'): the first half of a staged run (at
    least one epoch), all of an 'op' run, none of the others."""
    if cfg.stage == "staged":
        return min(cfg.epochs, max(1, cfg.epochs // 2))
    return cfg.epochs if cfg.stage == "op" else 0


def enter_stage(net: Supernet, stage: str) -> bool:
    """Set up ``net`` for a step of ``stage`` ('op', 'channel' or 'joint'): in the op stage every
    width is fixed at its window's top.  Returns hard_ops: the channel stage runs each edge's
    chosen op alone."""
    for w in net.widths.values():
        w.forced = w.top if stage == "op" else None
    return stage == "channel"


def run_search(cfg: SearchConfig, resume: bool = False, progress: bool = True,
               stop_after_epoch: Optional[int] = None, given: Optional[Iterable[str]] = None) -> SearchResult:
    """Run (or resume) a search; ``stop_after_epoch`` simulates an interruption (tests).

    given: the options the user set (flags, --config keys); on --resume those that differ from the
    checkpoint's are named, and of PLACEMENT_KEYS only those are taken (None: the ones away from
    their defaults)."""
    with contextlib.ExitStack() as held:   # the run directory's lock, once taken, until the run ends
        return _run_search(cfg, resume, progress, stop_after_epoch, given, held)


def _run_search(cfg: SearchConfig, resume: bool, progress: bool, stop_after_epoch: Optional[int],
                given: Optional[Iterable[str]], held: contextlib.ExitStack) -> SearchResult:
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    main = dist.rank() == 0          # only rank 0 writes files and prints
    progress = progress and main
    if not dist.active():   # before any note on resuming a run another process writes; under torchrun
        refuse_if_locked(out)   # before the rendezvous in dist.world(), when no rank of this job holds it
    if dist.launched_processes() <= 1:
        recover_set_aside(out, SET_ASIDE)   # so --resume finds a run whose start-over was killed
    found = read_search_checkpoint(ckpt_path, resume)   # refuses another command's checkpoint
    checkpoint = found if resume else None
    if checkpoint is not None:   # a resumed run keeps its own trajectory
        cfg = resumed_config(cfg, checkpoint, given, ckpt_path, main)
    restart = resume and checkpoint is None and (out / "config.yaml").is_file()
    if restart:   # stopped before its first checkpoint: the same run again, not the defaults
        refuse_lost_checkpoint(out, ckpt_path)
        cfg = restarted_config(cfg, out / "config.yaml", given, main)
    cfg.validate()
    if cfg.data_dir is not None:   # saved absolute: a --resume from another directory finds the data
        cfg = replace(cfg, data_dir=os.path.abspath(cfg.data_dir))
    if checkpoint is None:   # and the same space and accelerator files (a resume reads the saved definitions)
        cfg = with_located_files(cfg)
    rank, world = dist.world(cfg.device)
    if (checkpoint is not None and checkpoint.get("world_size", 1) != world and main
            and checkpoint["epoch"] < cfg.epochs):   # a finished run recomputes nothing
        say(f"note: {ckpt_path} was written by {checkpoint.get('world_size', 1)} process(es) and resumes on "
            f"{world}: the data shards and the effective batch change, so the result will differ from "
            f"an uninterrupted run")
    check_sync = bool(os.environ.get("UBNAS_CHECK_SYNC")) and world > 1
    device = _search_device(cfg, world)

    # ---- data, model, hardware ------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    data, (xw, yw), (xa, ya) = _search_data(cfg, rank, world, device, main)
    fingerprint = data.fingerprint()   # what each checkpoint records of the data
    if checkpoint is not None:   # --data-dir may move, not change: the splits and step counts are the run's
        refuse_other_data(checkpoint.get("data"), fingerprint, ckpt_path, cfg.data_dir)
    defs = run_definitions(cfg, checkpoint, ckpt_path, main)
    acc = defs.accelerator
    mismatch = mode_mismatch_note(cfg.hw, cfg.cost_model, defs.fit_mode) if cfg.cost_model in MODES else None
    if mismatch and main:
        say(mismatch)
    net, allocator = _build_supernet(cfg, defs, data, checkpoint, ckpt_path, device)
    placement = _placement(cfg, device)   # also: kernels this device cannot run fail here, not mid-epoch
    # a finished run recomputes nothing: no note on how another placement changes its result
    moved = (placement_note(checkpoint, placement, ckpt_path)
             if checkpoint is not None and checkpoint["epoch"] < cfg.epochs else None)
    if moved and main:
        say(moved)
    # only now: a run refused above leaves OUT as it was; a refusal there stops every rank
    dist.on_rank0(lambda: _open_run_dir(out, cfg, checkpoint, resume, restart, held))
    dist.broadcast_module(net)

    cost_of = cost_function(net, acc, cfg)
    w_opt, a_opt = make_optimizers(net, cfg)
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)
    gumbel_gen = torch.Generator().manual_seed(cfg.seed + 2)
    if checkpoint is None:
        state = Trajectory()
    else:
        state = restore_search_state(checkpoint, ckpt_path, w_opt, a_opt, data_gen, gumbel_gen, allocator)
        # the log as the checkpoint has it: a run stopped between its last checkpoint and that
        # epoch's log write resumes with no epoch left to run, and its log stayed an epoch short
        dist.on_rank0(lambda: _write_log(out / "search_log.csv", state.history))
    sync_checks = 0   # steps whose weights were compared across ranks (UBNAS_CHECK_SYNC)
    steps_per_epoch = batch_count(len(yw), cfg.batch_size, MIN_TRAIN_BATCH)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)

    # ---- epochs ---------------------------------------------------------------------------
    finished_before = checkpoint is not None and state.epoch >= cfg.epochs
    for epoch in range(state.epoch, cfg.epochs):
        t0 = time.time()
        stage = stage_at(cfg, epoch)
        tau = cfg.tau0 * cfg.tau_decay ** epoch
        lr = 0.5 * cfg.weight_lr * (1 + math.cos(math.pi * epoch / cfg.epochs))
        for group in w_opt.param_groups:
            group["lr"] = lr
        hard_ops = enter_stage(net, stage)
        if stage not in state.latency_refs:
            state.latency_refs[stage] = stage_latency_ref(net, cost_of, hard_ops)
        if device.type == "cuda":   # the log's peak_mem_mb is this epoch's (epoch 1's holds autotuning)
            torch.cuda.reset_peak_memory_stats(device)
        net.train()
        sums = {"loss": 0.0, "acc": 0.0, "val_loss": 0.0, "val_acc": 0.0, "n": 0}
        weight_batches = batches(xw, yw, cfg.batch_size, True, data_gen, MIN_TRAIN_BATCH)
        arch_batches = _passes(lambda: batches(xa, ya, cfg.batch_size, True, data_gen, MIN_TRAIN_BATCH))
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs} [{stage}]", progress)
        for step, ((xb, yb), (xv, yv)) in enumerate(zip(weight_batches, arch_batches)):
            if step >= steps_per_epoch:
                break
            try:
                taken = search_step(net, (xb, yb), (xv, yv), w_opt, a_opt, cost_of, cfg, tau,
                                    state.latency_refs[stage], state.mu, gumbel_gen, hard_ops)
            except RuntimeError as err:   # an optimizer's step size past float32 (--arch-lr near 3e38)
                if "overflow" not in str(err):
                    raise
                if bar is not None:
                    bar.close()
                raise _diverged("an optimizer step overflowed float32", f"at epoch {epoch + 1}/{cfg.epochs}, "
                                f"step {step + 1}", ckpt_path, epoch, tau, state.mu, cfg) from None
            losses = {"training loss": taken.loss.item(), "validation loss": taken.val_loss.item(),
                      "latency": float(taken.cost["seconds"].detach())}
            # all ranks stop together (a NaN on one rank reaches all weights through the all-reduce)
            means = dict(zip(losses, dist.mean_over_ranks(list(losses.values()))))
            bad = [f"the {name} is {value}" for name, value in means.items() if not math.isfinite(value)]
            if bad:   # the weights or logits are lost; the checkpoint on disk is the last good epoch
                if bar is not None:
                    bar.close()
                raise _diverged(", ".join(bad), f"at epoch {epoch + 1}/{cfg.epochs}, step {step + 1}", ckpt_path,
                                epoch, tau, state.mu, cfg)
            if taken.latency_ratio is not None:   # dual ascent on the latency constraint, rank 0's ratio everywhere
                ratio = float(dist.broadcast_object(float(taken.latency_ratio.detach())))
                state.mu = max(0.0, state.mu + cfg.dual_lr * (ratio - 1))
            state.arch_steps += 1
            if stage != "op" and state.arch_steps % cfg.realloc_every == 0:
                # decided on rank 0, applied everywhere, rank 0's new tensors broadcast
                events = allocator.step([w_opt, a_opt], state.arch_steps, dist.broadcast_object(allocator.plan()))
                if events:
                    dist.broadcast_module(net)
                for event in events:
                    _say(f"  realloc {event['width']}: {event['event']} {event['before']} -> {event['after']}",
                         progress)
            if check_sync:   # BN running statistics differ per shard until the epoch's end, by design
                dist.assert_same(list(net.weight_parameters()) + list(net.arch_parameters()),
                                 f"weights and architecture parameters at step {state.arch_steps}")
                sync_checks += 1
            sums["loss"] += losses["training loss"]
            sums["acc"] += float((taken.logits.argmax(1) == yb).float().mean())
            sums["val_loss"] += losses["validation loss"]
            sums["val_acc"] += float((taken.val_logits.argmax(1) == yv).float().mean())
            sums["n"] += 1
            if bar is not None:
                bar.set_postfix(loss=f"{losses['training loss']:.3f}", acc=f"{sums['acc'] / sums['n']:.3f}",
                                lat_us=f"{losses['latency'] * 1e6:.1f}",
                                util=f"{100 * float(taken.cost['utilization'].detach()):.2f}%")
                bar.update(1)
        if bar is not None:
            bar.close()
        with torch.no_grad():
            cost = cost_of(net.sample("softmax", hard_ops=hard_ops))
            derived = bounded_cost(cost_of)(net.derived_sample())   # what a hard target bounds
        n = max(1, sums["n"])
        # every rank saw its own shard: log the mean over ranks (equal shards, equal step counts)
        means = dist.mean_over_ranks([sums[k] / n for k in ("loss", "acc", "val_loss", "val_acc")])
        row = {"epoch": epoch + 1, "stage": stage, "tau": round(tau, 5), "lr": round(lr, 6),
               "train_loss": means[0], "train_acc": means[1], "val_loss": means[2], "val_acc": means[3],
               "latency_us": float(cost["seconds"]) * 1e6, "utilization": float(cost["utilization"]),
               "derived_latency_us": float(derived["seconds"]) * 1e6,
               "mu": state.mu, "seconds": time.time() - t0, "steps": sums["n"],
               "widths": json.dumps({k: w.candidates for k, w in net.widths.items()})}
        if device.type == "cuda":
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        state.history.append(row)
        state.epoch = epoch + 1
        dist.broadcast_module(net)   # BN running statistics differ per shard: take rank 0's
        if not all_finite(net):   # the last step's update overflowed although its losses were finite
            raise _diverged("the weights or architecture parameters are not finite",
                            f"after epoch {epoch + 1}/{cfg.epochs}", ckpt_path, epoch, tau, state.mu, cfg)
        def save_epoch():   # the checkpoint first: a log never lists an epoch that no checkpoint holds
            save_search_checkpoint(ckpt_path, cfg, state, net, world, defs, w_opt, a_opt, data_gen, gumbel_gen,
                                   allocator, placement, fingerprint)
            _write_log(out / "search_log.csv", state.history)
            _say(f"epoch {epoch + 1}: loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} "
                 f"val_acc {row['val_acc']:.3f} latency {row['latency_us']:.2f} us "
                 f"utilization {100 * row['utilization']:.2f} % ({row['seconds']:.1f} s)", progress)
        dist.on_rank0(save_epoch)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            return SearchResult(out, state.history, None, allocator.log, cfg)

    exported = out / FINISHED_MARKER
    # --resume of a finished run: its arch.yaml, maybe edited by hand since, is the result; rank 0
    # decides for all (a rank whose file system differs must not export alone)
    if finished_before and dist.broadcast_object(exported.is_file() if main else None):
        if main:
            say(f"note: the run had already finished; {exported} is kept as it is (delete it to export again)")
        return SearchResult(out, state.history, exported if main else None, allocator.log, cfg)
    _export_widths(cfg, net, main)
    if check_sync:
        _say(f"sync check: weights and architecture parameters identical on {world} ranks after each of "
             f"{sync_checks} steps", main)
    if main and defs.fit_mode not in (None, "systolic"):   # the exported network is costed in systolic mode
        say(f"note: {cfg.hw} was calibrated for the {defs.fit_mode} model; arch.yaml's exact cost uses the "
            f"systolic model with that calibration, where it was not fitted")
    spec_path = dist.on_rank0(lambda: export_spec(net, cfg, acc, state.history, cost_of, data, out,
                                                  defs.fit_mode, state.latency_refs))
    return SearchResult(out, state.history, spec_path, allocator.log, cfg)


def _search_device(cfg: SearchConfig, world: int) -> torch.device:
    """cfg.device; under torchrun on GPUs, this process's GPU (LOCAL_RANK)."""
    device = pick_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":   # fixed batch shapes: let cuDNN pick its fastest convolutions (as DARTS does)
        torch.backends.cudnn.benchmark = True
    return device


def _search_data(cfg: SearchConfig, rank: int, world: int, device: torch.device, main: bool):
    """(the data set, this rank's weight split (x, y), its architecture split (x, y)) on ``device``."""
    data = load_dataset(cfg.data, cfg.data_dir)   # one synthetic data set for every seed
    note = ignored_data_dir_note(cfg.data, cfg.data_dir)
    if note and main:
        say(note)
    (xw, yw), (xa, ya) = search_split(data.train_x, data.train_y, cfg.split, seed=cfg.seed)
    xw, yw = dist.shard(xw, yw, rank, world)
    xa, ya = dist.shard(xa, ya, rank, world)
    least = min(MIN_TRAIN_BATCH, cfg.batch_size)   # a smaller last batch is dropped (BatchNorm)
    if min(len(yw), len(ya)) < least:   # else a search of 0 steps that still exports
        per = f" per process ({world} processes)" if world > 1 else ""
        raise DataError(f"{cfg.data}: {len(data.train_y)} training images leave {len(yw)} for the weights and "
                        f"{len(ya)} for the architecture{per}; each needs at least {least}")
    if too_large_to_trace(data.input_shape, cfg.hw_batch):   # else found by the export, after the search
        raise ValueError(f"--hw-batch {cfg.hw_batch}: a batch of that many {'x'.join(map(str, data.input_shape))} "
                         f"images is too large to cost")
    xw, yw, xa, ya = (t.to(device) for t in (xw, yw, xa, ya))
    return data, (xw, yw), (xa, ya)


def _build_supernet(cfg: SearchConfig, defs, data, checkpoint: Optional[dict], ckpt_path: Path,
                    device: torch.device):
    """(the supernet with the checkpoint's windows and tensors if any, on ``device`` with cfg.kernels;
    its ChannelAllocator)."""
    net = Supernet(space_from_text(defs.space_yaml, defs.space_origin), data.input_shape, data.num_classes,
                   cfg.channels)
    allocator = ChannelAllocator(dict(net.widths.items()), net.channel_bindings(), cfg.seed)
    if checkpoint is not None:   # restore window shapes before loading tensors into them
        unknown = sorted(set(checkpoint["windows"]) - set(net.widths))
        if unknown or any(count < 1 or step < 1 or lo < 1 for lo, step, count in checkpoint["windows"].values()):
            raise damaged_checkpoint(ckpt_path, f"its channel windows do not fit the search space "
                                                f"({', '.join(unknown) or 'empty or non-positive window'})")
        for name, (lo, step, count) in checkpoint["windows"].items():
            allocator.apply(name, lo, step, count, [])
        try:
            net.load_state_dict(checkpoint["model"])
        except RuntimeError as err:   # missing/unexpected keys or shapes: torch lists them
            raise damaged_checkpoint(ckpt_path, f"its model does not fit the search space ({error_detail(err)})") \
                from None
    net.to(device)
    net.set_impl(cfg.kernels)
    return net, allocator


def _placement(cfg: SearchConfig, device: torch.device) -> Dict[str, str]:
    """The device type and the kernels the run executes with: 'auto' (and UBNAS_KERNELS) resolved."""
    kernels = "eager" if cfg.kernels == "eager" else kernel_backend(cfg.kernels, device).__name__.rsplit(".", 1)[-1]
    return {"device": device.type, "kernels": "triton" if kernels == "triton_kernels" else kernels}


FINISHED_MARKER = "arch.yaml"   # written by a search that finished, and only then
# what a start-over sets aside: the run's files, and a metrics.json a report would read first
SET_ASIDE = (FINISHED_MARKER, "search_log.csv", "checkpoint.pt", "metrics.json", "config.yaml")


def _refuse_foreign_config(path: Path) -> None:
    """A lone OUT/config.yaml is overwritten by the run's own, which is right only for one that a
    search wrote (or could have): any other file of that name is the user's, and is refused."""
    try:
        config_from_yaml(str(path))
    except ValueError as err:
        raise ValueError(f"{err}; a search would overwrite this file, which is not a `ubnas search` "
                         f"config: move it away or choose another --out") from None


def _open_run_dir(out: Path, cfg: SearchConfig, checkpoint: Optional[dict], resume: bool, restart: bool,
                  held: contextlib.ExitStack) -> None:
    """Create OUT and hold its lock (in ``held``) before anything in it changes or is said to; a run
    that starts over sets the last run's files aside (OUT/previous) and writes its config."""
    make_run_dir(out)
    held.enter_context(run_lock(out))
    ckpt_path = out / "checkpoint.pt"
    note = None if restart else resume_note(ckpt_path, resume, FINISHED_MARKER)
    if note:
        say(note)
    if checkpoint is not None:
        say(f"resuming {ckpt_path} after epoch {checkpoint['epoch']} of {cfg.epochs}")
    else:   # the last run's files must not pass for this run's, nor be resumed under its config
        recover_set_aside(out, SET_ASIDE)   # a start-over killed while setting files aside
        # a lone config.yaml is a run stopped before it saved anything (or the one --resume
        # restarts): it is overwritten, and previous/ or interrupted/ keeps the last run that did
        # save something
        if any((out / name).is_file() for name in SET_ASIDE if name != "config.yaml"):
            set_aside(out, SET_ASIDE, FINISHED_MARKER)
        elif (out / "config.yaml").is_file() and not restart:
            _refuse_foreign_config(out / "config.yaml")
    atomic_write_text(out / "config.yaml", dump_yaml(asdict(cfg)))


def _export_widths(cfg: SearchConfig, net: Supernet, main: bool) -> None:
    """A run that ends in the op stage never searched its widths (their logits are untouched): it
    exports the width its ops were trained and costed at, each window's top (a note says so)."""
    widths_searched = stage_at(cfg, cfg.epochs - 1) != "op"
    for w in net.widths.values():
        w.forced = None if widths_searched else w.top
    if not widths_searched and main:
        say("note: the run ended in the op stage, so widths were not searched; arch.yaml takes each "
            "window's top width, at which the ops were trained")


def cost_function(net: Supernet, acc, cfg: SearchConfig):
    """arch -> the supernet's hardware cost (``ubnas.cost.supernet_cost``) under cfg's cost options;
    ``surrogate`` overrides cfg.surrogate for one call (``bounded_cost``)."""
    def cost_of(arch, surrogate: Optional[str] = None):
        return supernet_cost(net, arch, acc, cfg.cost_model, surrogate or cfg.surrogate, cfg.temperature,
                             cfg.hw_batch, cfg.width_cost)
    return cost_of


def bounded_cost(cost_of):
    """``cost_of`` with the exact ceilings forward (straight-through): what a hard target bounds.  The
    sigmoid surrogate's staircase is off by several % on a one-hot network, either way, so holding
    the target against it exported networks above the target, or changed ones already below it."""
    if "surrogate" not in inspect.signature(cost_of).parameters:   # a caller's own cost_of(arch)
        return cost_of
    return lambda arch: cost_of(arch, surrogate="straight_through")


def stage_latency_ref(net: Supernet, cost_of, hard_ops) -> float:
    """Lambda's unit for a stage (seconds): the relaxed supernet's latency as the stage starts, after
    ``enter_stage`` (whose ``hard_ops`` it samples with)."""
    with torch.no_grad():
        return float(cost_of(net.sample("softmax", hard_ops=hard_ops))["seconds"])


def make_optimizers(net: Supernet, cfg: SearchConfig):
    """(SGD over the weights, Adam over the architecture parameters): the bilevel optimisation."""
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=cfg.weight_lr, momentum=cfg.weight_momentum,
                            weight_decay=cfg.weight_decay)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999),
                             weight_decay=cfg.arch_weight_decay)
    return w_opt, a_opt


@dataclass
class StepResult:
    """One search step's figures: the weight step's loss and logits, the architecture step's
    validation loss, logits and hardware cost, and its latency / target (None without a target)."""

    loss: torch.Tensor
    logits: torch.Tensor
    val_loss: torch.Tensor
    val_logits: torch.Tensor
    cost: Dict[str, torch.Tensor]
    latency_ratio: Optional[torch.Tensor]


def target_seconds(relaxed_seconds: torch.Tensor, net: Supernet, cost_of) -> torch.Tensor:
    """The latency a hard target bounds: the value of the network the run would export now
    (``Supernet.derived_sample``), with the relaxed supernet's gradient (straight-through).

    The relaxed cost averages every edge's op mixture and is far from the derived cell's, either
    way (the README run's op stage: ~82 us against 15-27 us), so bounding it would constrain a
    network nobody exports; the derived cost alone has no gradient."""
    with torch.no_grad():
        derived = bounded_cost(cost_of)(net.derived_sample())["seconds"]
    return relaxed_seconds + (derived - relaxed_seconds).detach()


def search_step(net: Supernet, batch, val_batch, w_opt, a_opt, cost_of, cfg: SearchConfig, tau: float,
                latency_ref: float, mu: float, generator: torch.Generator, hard_ops: bool = False,
                model=None) -> StepResult:
    """One first-order bilevel step, as ``ubnas search`` runs it (the benchmarks time this function).

    Weight step on ``batch`` (x (B, C, H, W), labels (B,)): an architecture sampled without
    gradients and held fixed, cross-entropy, gradients averaged over ranks and clipped, SGD.
    Architecture step on ``val_batch``: weights frozen, a fresh sample, cross-entropy plus the
    hardware term (lambda * latency / latency_ref, or mu * relu(latency / T - 1) with a target T and
    ``target_seconds``' latency; minus beta * utilization either way), Adam.  ``model`` runs the
    forward passes (default ``net``; a benchmark may pass ``torch.compile(net)``); mu's dual
    ascent is the caller's.
    """
    model = net if model is None else model
    (xb, yb), (xv, yv) = batch, val_batch
    with torch.no_grad():
        arch = net.sample(cfg.relaxation, tau, generator, hard_ops)
    logits = model(xb, arch)
    loss = F.cross_entropy(logits, yb)
    w_opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.all_reduce_grads(net.weight_parameters())
    torch.nn.utils.clip_grad_norm_(net.weight_parameters(), cfg.grad_clip)
    w_opt.step()
    with net.frozen_weights():   # no weight gradients in the architecture step
        arch = net.sample(cfg.relaxation, tau, generator, hard_ops)
        val_logits = model(xv, arch)
        val_loss = F.cross_entropy(val_logits, yv)
        cost = cost_of(arch)
        if cfg.target_latency_us:   # the constraint replaces the latency term, not the utilization one
            ratio = target_seconds(cost["seconds"], net, cost_of) / (cfg.target_latency_us * 1e-6)
            latency_term = mu * F.relu(ratio - 1)
        else:
            ratio = None
            latency_term = cfg.lambda_latency * cost["seconds"] / latency_ref
        arch_loss = val_loss + latency_term - cfg.beta_utilization * cost["utilization"]
        a_opt.zero_grad(set_to_none=True)
        arch_loss.backward()
    dist.all_reduce_grads(net.arch_parameters())
    a_opt.step()
    return StepResult(loss, logits, val_loss, val_logits, cost, ratio)


def export_spec(net, cfg, acc, history, cost_of, data, out: Path, fit_mode: Optional[str] = None,
                latency_refs: Optional[Dict[str, float]] = None) -> Path:
    """Derive the discrete network, cost it exactly, and write DIR/arch.yaml.  ``fit_mode``: the
    cost model acc's calibration was fitted for (None: not calibrated), kept for the commands that
    cost the spec later; ``latency_refs``: lambda's reference per stage (seconds), recorded."""
    from .build import exact_cost
    from .spec import derive_spec, discrete_sample, save_spec

    net.eval()
    with torch.no_grad():   # as the log's last row: ops chosen (one-hot) after a channel stage
        smooth = cost_of(net.sample("softmax", hard_ops=stage_at(cfg, cfg.epochs - 1) == "channel"))
    provenance = {
        "search_space": cfg.space, "seed": cfg.seed, "stage": cfg.stage, "channels": cfg.channels,
        # a target replaces the lambda term: recorded as unused (None)
        "lambda_latency": None if cfg.target_latency_us else cfg.lambda_latency,
        # what lambda was relative to: each stage's latency at its start (smooth cost model, us)
        "latency_ref_us": None if cfg.target_latency_us or not latency_refs else
        {stage: seconds * 1e6 for stage, seconds in latency_refs.items()},
        "beta_utilization": cfg.beta_utilization, "target_latency_us": cfg.target_latency_us,
        "cost_model": cfg.cost_model,
        "data": cfg.data, "epochs": cfg.epochs, "accelerator": acc.name, "hw_batch": cfg.hw_batch,
        # the whole definition: a YAML accelerator (often a calibrated preset) is rebuilt from the spec
        "accelerator_config": acc.to_dict(), "accelerator_fit_mode": fit_mode,
        "final_val_acc": history[-1]["val_acc"] if history else None,
        "smooth_cost": {"latency_us": float(smooth["seconds"]) * 1e6,
                        "utilization": float(smooth["utilization"])},
    }
    net.cpu()
    fit = fit_to_target(net, bounded_cost(cost_of), cfg.target_latency_us * 1e-6) if cfg.target_latency_us else None
    if fit is not None and fit.changes:
        provenance["target_fit"] = {"derived_latency_us": fit.derived_seconds * 1e6,
                                    "latency_us": fit.seconds * 1e6, "changes": fit.changes}
        say(f"note: the derived network ({fit.derived_seconds * 1e6:.2f} us under the {cfg.cost_model} cost "
            f"model) is above --target-latency-us {cfg.target_latency_us:g} at the search's end; arch.yaml "
            f"takes {len(fit.changes)} change(s) of little probability that bring it to "
            f"{fit.seconds * 1e6:.2f} us (ubnas.target_fit): {'; '.join(fit.changes)}")
    spec = derive_spec(net, provenance, ops=fit.ops if fit else None, widths=fit.widths if fit else None)
    provenance["arch_hash"] = spec.arch_hash()   # tells a spec edited since from the one exported
    with torch.no_grad():   # the smooth model on the derived network: the surrogate's own gap
        exported = discrete_sample(net, spec)
        discrete = cost_of(exported)
        # and its latency as a target bounds it (exact ceilings)
        found_us = float(bounded_cost(cost_of)(exported)["seconds"]) * 1e6
    for w in net.widths.values():
        w.forced = None
    provenance["smooth_cost_discrete"] = {"latency_us": float(discrete["seconds"]) * 1e6,
                                          "utilization": float(discrete["utilization"])}
    # the search's cost model with its exact ceilings (what a target bounds); the sigmoid surrogate's
    # staircase above overcounts it by several %
    provenance["model_latency_us"] = found_us
    exact = exact_cost(spec, acc, cfg.hw_batch)
    provenance["exact_cost"] = {"latency_us": exact.seconds * 1e6, "utilization": exact.utilization,
                                "macs": int(exact.macs), "model": "systolic", "batch": cfg.hw_batch}
    # the supernet's cost as the last epoch ran it (op mixture, or the chosen ops after a channel
    # stage) vs the exported network, and the surrogate alone (with a cost model other than
    # systolic, both gaps also hold the difference between that model and the exact one)
    provenance["smooth_vs_exact_latency_gap"] = (
        provenance["smooth_cost"]["latency_us"] / provenance["exact_cost"]["latency_us"] - 1)
    provenance["discrete_smooth_vs_exact_latency_gap"] = (
        provenance["smooth_cost_discrete"]["latency_us"] / provenance["exact_cost"]["latency_us"] - 1)
    if cfg.target_latency_us:   # on record, not only in a note: `ubnas report` reads it
        provenance["target_met"] = bool(found_us <= cfg.target_latency_us * (1 + 1e-9))
    if fit is not None and not fit.reached(cfg.target_latency_us * 1e-6):   # none within the target
        say(f"note: the exported network's latency ({found_us:.2f} us under the {cfg.cost_model} cost model) "
            f"is above --target-latency-us {cfg.target_latency_us:g}, which no network derivable from the final "
            f"logits and channel windows reaches: with every kept edge at its cheapest op and every searched width at "
            f"its window's bottom it costs {fit.floor_seconds * 1e6:.2f} us")
    note = staged_target_note(cfg, history, found_us)
    if note:
        say(note)
    path = out / "arch.yaml"
    save_spec(spec, path)
    return path


def staged_target_note(cfg: SearchConfig, history: List[dict], found_us: float) -> Optional[str]:
    """A note when a staged search exports well under (below half) a target that bound its op
    stage (mu > 0 or the derived network above the target at an op-stage epoch's end): that stage
    costs every width at its window's top, so it may give up ops the final widths could afford."""
    if not cfg.target_latency_us or cfg.stage != "staged" or found_us >= 0.5 * cfg.target_latency_us:
        return None
    op_rows = [row for row in history if row["stage"] == "op"]
    if not any(row["mu"] > 0 or row.get("derived_latency_us", 0.0) > cfg.target_latency_us for row in op_rows):
        return None
    return (f"note: the exported network ({found_us:.2f} us) is well under --target-latency-us "
            f"{cfg.target_latency_us:g}: the staged search's op stage holds the target with every width at "
            f"its window's top, and the channel stage cannot bring back the ops it gave up; --stage joint "
            f"searches the widths with the ops")


def _passes(make_pass):
    """Endless batches: a new pass (``make_pass()``, freshly shuffled) whenever one ends, so a
    smaller architecture split (80_20: a quarter of the weight split) lasts the whole epoch."""
    while True:
        yield from make_pass()


def _write_log(path: Path, history: List[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0].keys()), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _say(message: str, enabled: bool) -> None:
    """Progress lines (epochs, reallocations): hidden by --quiet, unlike ``say``'s notes."""
    if enabled:
        say(message)
