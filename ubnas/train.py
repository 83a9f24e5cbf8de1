"""Train an exported architecture from scratch (``ubnas train``).

A plain loop in the spirit of nanoGPT's train.py: SGD with momentum, a cosine
or one-cycle learning-rate schedule computed per step, random crop + flip on
CIFAR-10, optional label smoothing.  After every epoch DIR/checkpoint.pt is
written atomically (model, optimizer, schedule position, epoch, the data
generator's and torch's RNG states, the spec's architecture hash), so
``--resume`` continues to the same weights as an uninterrupted run (CPU, same
seed).  At the end DIR/metrics.json holds the test accuracy, the parameter
count, and the MACs, latency and utilization of the network on an
accelerator (``hwmodels.estimate``, at the batch the search costed it at).  A run with epochs still to
train removes an older metrics.json first, so the file only ever describes a
finished run; a run whose loss or weights turn non-finite stops with an error
and leaves the last good checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F

from hwmodels.yamlio import atomic_write_text

from .build import build_network, exact_cost
from .data import (DATASETS, MIN_TRAIN_BATCH, DataError, augment_crop_flip, batch_count, batches, crop_padding,
                   dataset_name, ignored_data_dir_note, load_dataset, refuse_other_data)
from .distributed import launched_processes
from .runtime import (MAX_SEED, all_finite, atomic_torch_save, damaged_checkpoint, error_detail, existing_checkpoint,
                      float32_finite, ignored_flags, ignored_on_resume, is_count, load_checkpoint, make_run_dir,
                      options_given, pick_device, progress_bar, recover_set_aside, refuse_if_locked, resume_note,
                      restore_state, run_lock, say, set_aside, trajectory_problems)
from .spec import (ArchSpec, edited_since_export, load_spec, searched_accelerator, searched_batch,
                   searched_calibration_note)

SCHEDULES = ("cosine", "onecycle")
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
# files train writes only when a run finishes: any already there while epochs remain are stale
END_OF_RUN_FILES = (METRICS,)
# keys only a `ubnas search` checkpoint holds (a supernet's state), never a train one
SEARCH_CHECKPOINT_KEYS = ("arch_steps", "windows", "a_opt")
# options a resumed run takes from its checkpoint: they shape the trajectory
TRAJECTORY_KEYS = ("data", "epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule",
                   "label_smoothing", "grad_clip", "augment", "seed")
# options a resumed run takes from its checkpoint unless given again: where and on what it runs
PLACEMENT_KEYS = ("data_dir", "device", "hw")
AUGMENT_FLAG = {None: "auto", True: "on", False: "off"}   # TrainConfig.augment as --augment spells it


@dataclass
class TrainConfig:
    """Options of ``ubnas train`` (the command's flags, same names); ``validate`` checks them."""
    spec: str
    out: str = "runs/train"
    data: str = "digits"
    data_dir: Optional[str] = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    grad_clip: float = 5.0
    augment: Optional[bool] = None      # None: crop + flip on cifar10 only (data.crop_padding)
    seed: int = 0
    device: str = "auto"
    hw: Optional[str] = None            # None: the one the spec was searched on (provenance), else uboost

    def __post_init__(self):
        self.data = dataset_name(self.data)   # the rest compares with 'cifar10': one spelling from here on

    def validate(self) -> None:
        """One-line errors naming the flag.  The float checks are written so that NaN fails them
        (every comparison with NaN is false): an inf or NaN lr, weight decay or clip norm, or a
        momentum >= 1, trains to NaN weights and used to finish with exit status 0."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule: expected one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for key in ("epochs", "batch_size"):   # type checked too: a hand-edited saved config's "2" passes int()
            value = getattr(self, key)
            if not (is_count(value) and value >= 1):
                raise ValueError(f"--{key.replace('_', '-')}: expected a positive integer, got {value!r}")
        for key in ("lr", "momentum", "weight_decay", "label_smoothing", "grad_clip"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"--{key.replace('_', '-')}: expected a number, got {value!r}")
        if int(self.batch_size) < MIN_TRAIN_BATCH:   # every batch would be one image: BatchNorm fails
            raise ValueError(f"--batch-size: expected at least {MIN_TRAIN_BATCH} (BatchNorm trains on a batch's "
                             f"statistics), got {self.batch_size}")
        if not (float32_finite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr: expected a positive learning rate within float32's range (3.4e38), "
                             f"got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum: expected a value in [0, 1), got {self.momentum}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing: expected a value in [0, 1), got {self.label_smoothing}")
        if not (float32_finite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay: expected a value >= 0 within float32's range (3.4e38), "
                             f"got {self.weight_decay}")
        if not (float32_finite(self.grad_clip) and self.grad_clip >= 0):   # 0 is documented as "off"
            raise ValueError(f"--grad-clip: expected a norm > 0 within float32's range (3.4e38), or 0 for "
                             f"no clipping, got {self.grad_clip}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"--seed: expected an integer in [0, {MAX_SEED}], got {self.seed}")
        if not str(self.out).strip():   # Path("") is the current directory, whose files a start-over removes
            raise ValueError(f"--out: expected a run directory, got {self.out!r}")


# what --resume needs of a train checkpoint (load_weights needs only 'model')
RESUME_KEYS = ("config", "model", "optimizer", "scheduler", "epoch", "history", "generator", "torch_rng")


class TrainingDiverged(ValueError):
    """The training loss or the weights became non-finite (a ValueError: the CLI prints one line)."""


@dataclass
class TrainResult:
    """What ``train`` returns: the run directory, metrics.json's content, per-epoch rows, the model."""
    out_dir: Path
    metrics: Dict[str, Any] = field(default_factory=dict)
    history: List[dict] = field(default_factory=list)
    model: Optional[torch.nn.Module] = None


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total``.

    cosine: lr * (1 + cos(pi * t)) / 2.  onecycle (the shape of PyTorch's OneCycleLR):
    cosine warm-up from lr/25 to lr over the first 30 % of the steps, then
    cosine annealing to lr/1e4 (OneCycleLR's defaults end lower, at lr/2.5e5).
    """
    t = step / max(1, total)
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))
    warm, start, end = 0.3, cfg.lr / 25, cfg.lr / 1e4
    if t < warm:
        a, b, u = start, cfg.lr, t / warm
    else:
        a, b, u = cfg.lr, end, (t - warm) / (1 - warm)
    return b + (a - b) * 0.5 * (1 + math.cos(math.pi * u))


def is_search_checkpoint(ckpt) -> bool:
    """Whether a loaded checkpoint is a `ubnas search` one (a supernet, its windows and optimizers)."""
    return (isinstance(ckpt, dict) and "spec_hash" not in ckpt
            and any(key in ckpt for key in SEARCH_CHECKPOINT_KEYS))


def existing_train_checkpoint(path: Path, resume: bool):
    """``runtime.existing_checkpoint`` (loaded once), refusing a search checkpoint either way:
    training into that run directory would overwrite it (starting over) or cannot use it
    (--resume), and the search could no longer be resumed."""
    ckpt = existing_checkpoint(path, resume)
    if is_search_checkpoint(ckpt):
        raise ValueError(f"{path}: holds a search checkpoint (`ubnas search`), which training there would "
                         f"overwrite, and the search could not be resumed; choose another --out, "
                         f"e.g. {path.parent / 'train'}")
    return ckpt


def read_checkpoint(path, spec: ArchSpec) -> dict:
    """A train checkpoint for ``spec``; anything else is a one-line ValueError."""
    return _train_checkpoint(load_checkpoint(path), path, spec)


def _train_checkpoint(ckpt, path, spec: ArchSpec) -> dict:
    """``ckpt`` (loaded from ``path``) if it is a train checkpoint for ``spec``, else a one-line ValueError."""
    if not isinstance(ckpt, dict) or "spec_hash" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint written by `ubnas train` (no architecture hash); "
                         f"search checkpoints hold a supernet, not an exported network")
    if not isinstance(ckpt["model"], dict):
        raise ValueError(f"{path}: its 'model' is not a state dict (got {type(ckpt['model']).__name__}); "
                         f"expected a checkpoint.pt of `ubnas train`")
    want = spec.arch_hash()
    if ckpt["spec_hash"] != want:
        raise ValueError(f"{path}: checkpoint belongs to another architecture (hash {ckpt['spec_hash']}, "
                         f"spec {ckpt.get('spec_path', '?')}), not {spec.origin} (hash {want})")
    return ckpt


def load_weights(model: torch.nn.Module, path, spec: ArchSpec) -> dict:
    """Load a train checkpoint's weights into ``model`` built from ``spec``."""
    ckpt = read_checkpoint(path, spec)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:   # torch's first line says only "Error(s) in loading state_dict"
        raise ValueError(f"{path}: weights do not fit {spec.origin} ({error_detail(exc)})") from None
    return ckpt


def pick_accelerator(spec: ArchSpec, hw: Optional[str]):
    """(Accelerator, why): --hw if given, else the one the search used (``searched_accelerator``),
    else uboost."""
    from hwmodels import load_accelerator
    if hw:
        return load_accelerator(hw), "--hw"
    acc = searched_accelerator(spec)
    if acc is not None:
        return acc, "spec provenance"
    return load_accelerator("uboost"), "default"


def hardware_metrics(spec: ArchSpec, acc, why: str) -> Dict[str, Any]:
    """Exact cost of ``spec``'s network on ``acc`` at the batch the search costed it at
    (``searched_batch``: 1 unless the search ran with --hw-batch); ``why``: where acc came from."""
    batch = searched_batch(spec)
    cost = exact_cost(spec, acc, batch)
    return {"accelerator": acc.name, "accelerator_from": why, "accelerator_config": acc.to_dict(),
            "batch": batch, "model": "systolic",
            "macs": int(cost.macs), "cycles": float(cost.cycles), "latency_us": cost.seconds * 1e6,
            "utilization": cost.utilization}


@torch.no_grad()
def evaluate(model, x, y, batch_size: int = 512):
    """Mean cross-entropy and accuracy (fraction) of ``model`` in eval mode over x (N, ...) and
    labels y (N,), in batches of ``batch_size``, without gradients."""
    model.eval()
    loss, correct = 0.0, 0
    for xb, yb in batches(x, y, batch_size, shuffle=False, generator=None):
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return loss / len(y), correct / len(y)


def remove_stale_results(out: Path) -> None:
    """Delete the files of ``END_OF_RUN_FILES`` from ``out``: with epochs still to train, they
    belong to an earlier run, and a run interrupted now would leave them to pass for its own
    (``ubnas report`` reads metrics.json)."""
    for name in END_OF_RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _diverged(what: str, where: str, cfg: TrainConfig, ckpt_path: Path, last_good: int) -> TrainingDiverged:
    """The error for a run whose ``what`` turned non-finite at ``where`` (epoch and step); the
    checkpoint on disk is left as it was (``last_good``: its epoch, 0 when this run wrote none)."""
    if last_good:
        kept = f"{ckpt_path} keeps epoch {last_good}"
    else:   # starting over removed any earlier checkpoint
        kept = "no checkpoint of this run was written"
    return TrainingDiverged(f"training diverged: {what} at {where} (--lr {cfg.lr:g}); {kept}; "
                            f"start over with a lower --lr (--resume keeps the saved one)")


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          stop_after_epoch: Optional[int] = None, given: Optional[Iterable[str]] = None) -> TrainResult:
    """Train (or resume); ``stop_after_epoch`` simulates an interrupted run (tests).

    given: the options the user set; on --resume those of TRAJECTORY_KEYS that differ from the
    checkpoint's are named (None: the ones away from their defaults)."""
    if launched_processes() > 1:   # each rank would train alone into the same OUT
        raise ValueError("ubnas train runs in one process: launch it without torchrun (torchrun is for "
                         "ubnas search)")
    with contextlib.ExitStack() as held:   # the run directory's lock, once taken, until the run ends
        return _train(cfg, resume, progress, stop_after_epoch, given, held)


def _train(cfg: TrainConfig, resume: bool, progress: bool, stop_after_epoch: Optional[int],
           given: Optional[Iterable[str]], held: contextlib.ExitStack) -> TrainResult:
    spec = load_spec(cfg.spec)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    refuse_if_locked(out)   # before any note about a run that another process is writing
    recover_set_aside(out, (CHECKPOINT, METRICS))   # a start-over killed while setting files aside
    found = existing_train_checkpoint(ckpt_path, resume)   # before the note that it will be overwritten
    ckpt = _train_checkpoint(found, ckpt_path, spec) if resume and found is not None else None
    if ckpt is not None:
        cfg = _resumed_config(cfg, ckpt, ckpt_path, given)
    searched_on = spec.provenance.get("data")
    data_given = options_given(cfg, TrainConfig(spec=cfg.spec), ("data",), given)
    if ckpt is None and not data_given and searched_on in DATASETS and searched_on != cfg.data:
        say(f"note: training on {searched_on}, the data set {spec.origin} was searched on (pass --data to change)")
        cfg = TrainConfig(**{**asdict(cfg), "data": searched_on})
    elif ckpt is None and not data_given and searched_on is not None and searched_on not in DATASETS:
        say(f"note: {spec.origin} was searched on {searched_on!r}, which is no data set ubnas reads; "
            f"training on {cfg.data} (pass --data to choose)")
    cfg.validate()
    if cfg.data_dir is not None:   # saved absolute: a --resume from another directory finds the data
        cfg = replace(cfg, data_dir=os.path.abspath(cfg.data_dir))
    if cfg.hw:   # and the same accelerator file, not another one of that name there
        from hwmodels.accelerator import accelerator_location
        cfg = replace(cfg, hw=accelerator_location(cfg.hw))
    hardware = _metrics_hardware(spec, cfg)   # once, before training: a bad --hw or batch fails now
    device = pick_device(cfg.device)

    # ---- data and model ---------------------------------------------------------------
    data = load_dataset(cfg.data, cfg.data_dir)   # one synthetic data set for every seed
    note = ignored_data_dir_note(cfg.data, cfg.data_dir)
    if note:
        say(note)
    _check_data_fits(spec, data, cfg.data)
    fingerprint = data.fingerprint()   # what each checkpoint records of the data
    if ckpt is not None:   # --data-dir may move, not change: the schedule counts the run's images
        refuse_other_data(ckpt.get("data"), fingerprint, ckpt_path, cfg.data_dir)
    augment = cfg.augment if cfg.augment is not None else cfg.data == "cifar10"
    pad = crop_padding(data.input_shape)
    if len(data.train_y) < min(MIN_TRAIN_BATCH, cfg.batch_size):   # a smaller last batch is dropped (BatchNorm)
        raise DataError(f"{cfg.data}: {len(data.train_y)} training image(s); training needs at least "
                        f"{MIN_TRAIN_BATCH}")
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)

    torch.manual_seed(cfg.seed)
    model = build_network(spec).to(device)
    # only now (after a network too large to build): a refused run leaves no empty directory behind
    make_run_dir(out)
    held.enter_context(run_lock(out))   # before anything in OUT changes
    note = resume_note(ckpt_path, resume, METRICS)   # only now: a refused run (bad --hw, no data) says one line
    if note:
        say(note)
    # weight decay on conv / linear weights only, not on BN scales and biases
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(cfg.seed)     # shuffling and augmentation
    steps_per_epoch = batch_count(len(train_y), cfg.batch_size, MIN_TRAIN_BATCH)
    total_steps = cfg.epochs * steps_per_epoch
    start_epoch, step, history = 0, 0, []
    if ckpt is not None:
        restore_state(ckpt_path, "model", model.load_state_dict, ckpt["model"])
        restore_state(ckpt_path, "optimizer", opt.load_state_dict, ckpt["optimizer"])
        step, start_epoch = ckpt["scheduler"]["step"], ckpt["epoch"]
        history = list(ckpt["history"])
        restore_state(ckpt_path, "generator", gen.set_state, ckpt["generator"])
        restore_state(ckpt_path, "torch_rng", torch.set_rng_state, ckpt["torch_rng"])
    if ckpt is None:   # starting over: an interrupted first epoch must not leave the old run to --resume;
        set_aside(out, (CHECKPOINT, METRICS), METRICS)   # kept in OUT/previous (or interrupted), not deleted
    elif start_epoch < cfg.epochs:   # everything is validated and loaded: the directory may change now
        remove_stale_results(out)
    if progress:
        from tqdm import tqdm
        n_params = sum(p.numel() for p in model.parameters())
        tqdm.write(f"train {spec.origin} ({n_params:,} parameters) on {cfg.data} ({len(train_y)} train / "
                   f"{len(test_y)} test) for {cfg.epochs} epochs on {device}"
                   + (f", resuming after epoch {start_epoch}" if ckpt is not None else ""))

    # ---- the loop -----------------------------------------------------------------------
    last_good = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        bar = progress_bar(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", progress)
        for i, (xb, yb) in enumerate(batches(train_x, train_y, cfg.batch_size, True, gen, MIN_TRAIN_BATCH)):
            if augment:
                xb = augment_crop_flip(xb, pad, gen)
            lr = lr_at(step, total_steps, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):   # before the step: the weights stay as they were
                if bar is not None:
                    bar.close()
                raise _diverged(f"the training loss is {loss_value}", f"epoch {epoch + 1}/{cfg.epochs}, "
                                f"step {i + 1}/{steps_per_epoch}", cfg, ckpt_path, last_good)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            loss_sum += loss_value * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(yb)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.4f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        if not all_finite(model):   # the epoch's last step can blow up the weights: never save those
            raise _diverged("the weights became non-finite", f"epoch {epoch + 1}/{cfg.epochs}, "
                            f"step {steps_per_epoch}/{steps_per_epoch}", cfg, ckpt_path, last_good)
        test_loss, test_acc = evaluate(model, test_x, test_y)
        row = {"epoch": epoch + 1, "lr": lr_at(step - 1, total_steps, cfg), "train_loss": loss_sum / seen,
               "train_acc": correct / seen, "test_loss": test_loss, "test_acc": test_acc,
               "seconds": time.time() - t0}
        history.append(row)
        atomic_torch_save({
            "spec_hash": spec.arch_hash(), "spec_path": str(spec.origin), "config": asdict(cfg),
            "epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": {"schedule": cfg.schedule, "step": step, "total_steps": total_steps},
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
            "data": fingerprint,
        }, ckpt_path)
        last_good = epoch + 1
        if progress:
            from tqdm import tqdm
            tqdm.write(f"epoch {epoch + 1}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} "
                       f"| test loss {test_loss:.3f} acc {test_acc:.3f} ({row['seconds']:.1f} s)")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            return TrainResult(out, {}, history, model)

    # ---- metrics ------------------------------------------------------------------------
    test_loss, test_acc = evaluate(model, test_x, test_y)
    metrics = {
        # as given (relative: found again after the tree moves) and absolute (found from anywhere)
        "spec": str(spec.origin), "spec_abspath": os.path.abspath(spec.origin), "spec_hash": spec.arch_hash(),
        "data": cfg.data, "epochs": cfg.epochs,
        "test_acc": test_acc, "test_loss": test_loss,
        "params": sum(p.numel() for p in model.parameters()),
        "hardware": hardware,
        # all invocations of a resumed run: the per-epoch times the checkpoint carried over
        "config": asdict(cfg), "history": history,
        "train_seconds": sum(row.get("seconds", 0.0) for row in history),
        "search_provenance": spec.provenance,
    }
    atomic_write_text(out / METRICS, json.dumps(_jsonable(metrics), indent=1) + "\n")
    if progress:
        from tqdm import tqdm
        tqdm.write(summary_line(metrics, out / METRICS))
    return TrainResult(out, metrics, history, model)


def summary_line(metrics: Dict[str, Any], path: Path) -> str:
    """The line a finished run ends with (with and without --quiet): accuracy, size and the
    hardware cost, with its accelerator and batch (a latency at batch 4 is not one image's)."""
    hw = metrics["hardware"]
    return (f"test accuracy {metrics['test_acc']:.4f}; {metrics['params']:,} parameters, {hw['macs']:,} MACs, "
            f"{hw['latency_us']:.2f} us at {100 * hw['utilization']:.2f} % utilization on {hw['accelerator']}"
            + (f" at batch {hw['batch']}" if hw["batch"] != 1 else "") + f"; wrote {path}")


def _resumed_config(cfg: TrainConfig, ckpt: dict, ckpt_path: Path, given: Optional[Iterable[str]]) -> TrainConfig:
    """The checkpoint's schedule (TRAJECTORY_KEYS; a note names those given that differ), and where
    and on what it runs (PLACEMENT_KEYS): this invocation's if given, else the first run's (a CIFAR
    run resumed without --data-dir finds its data)."""
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"{ckpt_path}: checkpoint lacks {', '.join(missing)} (written by another ubnas "
                         f"version?); start over without --resume")
    saved = ckpt["config"]
    if not isinstance(saved, dict):
        raise damaged_checkpoint(ckpt_path, f"config (expected a mapping of options, got {type(saved).__name__})")
    problems = trajectory_problems(ckpt, saved.get("epochs"))
    schedule = {k: saved[k] for k in TRAJECTORY_KEYS if k in saved}
    defaults = TrainConfig(spec=cfg.spec)
    try:   # the schedule it resumes with: refused here, as the checkpoint's, not as a flag of this call
        TrainConfig(**{**asdict(defaults), **schedule}).validate()
    except (TypeError, ValueError) as exc:   # validate names flags, which this call may not have given
        problems.append("config (" + re.sub(r"^--([a-z-]+):", lambda m: f"key '{m[1].replace('-', '_')}':",
                                            str(exc)) + ")")
    scheduler = ckpt["scheduler"]
    if not isinstance(scheduler, dict) or not is_count(scheduler.get("step")):
        problems.append("scheduler (expected {'step': a whole number >= 0})")
    if not isinstance(ckpt["optimizer"], dict):
        problems.append("optimizer (expected a state dict)")
    if problems:
        raise damaged_checkpoint(ckpt_path, "; ".join(problems))
    ignored = ignored_on_resume(cfg, saved, defaults, TRAJECTORY_KEYS, given)
    if ignored:
        as_flags = {**saved, "augment": AUGMENT_FLAG.get(saved.get("augment"), saved.get("augment"))}
        say(f"note: resuming {ckpt_path} with its saved schedule; ignored: {ignored_flags(ignored, as_flags)}")
    here = options_given(cfg, defaults, PLACEMENT_KEYS, given)
    kept = {k: saved[k] for k in PLACEMENT_KEYS if k not in here and k in saved}
    return TrainConfig(**{**asdict(cfg), **schedule, **kept})


def _metrics_hardware(spec: ArchSpec, cfg: TrainConfig) -> Dict[str, Any]:
    """metrics.json's ``hardware`` (``hardware_metrics`` on the accelerator ``pick_accelerator``
    takes), with the notes on it, its batch and the spec's provenance.  Taken before training (the
    cost depends on the architecture alone): a bad --hw or provenance fails before epoch 1."""
    acc, why = pick_accelerator(spec, cfg.hw)
    if why == "default" and spec.provenance.get("accelerator"):
        say(f"note: {spec.origin} was searched on {spec.provenance['accelerator']!r}, which is no preset and "
            f"the spec does not define; metrics.json uses {acc.name} (pass --hw)")
    from hwmodels.accelerator import mode_mismatch_note
    mismatch = (mode_mismatch_note(cfg.hw, "systolic") if why == "--hw"   # metrics.json's exact model
                else searched_calibration_note(spec) if why == "spec provenance" else None)
    if mismatch:
        say(mismatch)
    hw_batch = searched_batch(spec)
    if hw_batch != 1:
        say(f"note: metrics.json costs the network at batch {hw_batch}, the one {spec.origin} was searched at")
    try:   # shapes only, in a moment
        hardware = hardware_metrics(spec, acc, why)
    except ValueError as exc:
        raise ValueError(f"{spec.origin}: cannot cost the network at provenance.hw_batch {hw_batch} ({exc})") from None
    if edited_since_export(spec):
        say(f"note: {spec.origin} was edited after the search exported it; its provenance (search accuracy, "
            f"costs) describes the network the search exported")
    return hardware


def _check_data_fits(spec: ArchSpec, data, data_name: str) -> None:
    """The spec's input shape and class count are the data set's (else a ValueError naming the key)."""
    if tuple(data.input_shape) != tuple(spec.input_shape):
        raise ValueError(f"{spec.origin}: key 'input_shape' is {list(spec.input_shape)} but data set "
                         f"{data_name} has images of {list(data.input_shape)}")
    if data.num_classes != spec.num_classes:
        raise ValueError(f"{spec.origin}: key 'num_classes' is {spec.num_classes} but data set "
                         f"{data_name} has {data.num_classes} classes")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
