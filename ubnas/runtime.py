"""Device choice and crash-safe checkpoint writes shared by search and training."""
from __future__ import annotations

import math
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional

import torch

from hwmodels.yamlio import durable_replace


def pick_device(name: str) -> torch.device:
    """The torch device ``--device`` names: "auto" is CUDA when available, else CPU; a bad name, a
    device type other than cpu and cuda, or cuda where torch sees no GPU is a ValueError naming
    --device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch sees no CUDA device (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()   # else 'invalid device ordinal' mid-setup
        raise ValueError(f"--device {name}: this torch sees {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return device


# torch's CPU generator keeps a seed's low 32 bits (seed 2**32 ran as seed 0), and runs seed their
# generators with seed + 1, + 2 and + channels.ALLOCATOR_SEED_OFFSET: every one stays below 2**32
MAX_SEED = 2**32 - 8000
# rates, decays and temperatures meet float32 tensors: a finite value past this crashed inside torch
# ("value cannot be converted to type float without overflow") instead of a one-line error
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def float32_finite(value: float) -> bool:
    """Whether ``value`` is finite and within float32's range (NaN is not)."""
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def all_finite(module: torch.nn.Module) -> bool:
    """Whether every floating-point weight and buffer (BN statistics too) of ``module`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def options_given(cfg, default, keys: Iterable[str], given: Optional[Iterable[str]]) -> set:
    """Of ``keys``, the options the user set: those in ``given`` (flags and --config keys), or,
    without it, those whose value in ``cfg`` differs from ``default``'s."""
    if given is not None:
        return set(given) & set(keys)
    return {k for k in keys if getattr(cfg, k) != getattr(default, k)}


def expand_home(values: dict, keys: Iterable[str]) -> dict:
    """``values`` with a leading ``~`` of each path in ``keys`` expanded to the home directory, as
    a shell does for an unquoted flag: a --config file or a quoted flag would otherwise read a
    directory named '~' (and --out would create one)."""
    return {k: os.path.expanduser(v) if k in keys and isinstance(v, str) and v.startswith("~") else v
            for k, v in values.items()}


LOCK = ".ubnas.lock"   # in a run directory while a run writes it: flock-held, with the holder's pid

try:
    import fcntl
except ImportError:   # no advisory locks (Windows): runs are not locked there
    fcntl = None


@contextmanager
def run_lock(out: Path):
    """Hold ``out/.ubnas.lock`` while this process writes ``out``: a second run into the same
    directory is refused in one line instead of interleaving its files with the first's.

    The lock is an exclusive ``flock`` on that file, so the kernel releases it when its process
    dies (a killed run's lock file is simply taken over) and taking it is atomic: two runs that
    start together, or that find the same killed run's file, cannot both hold it.  The file holds
    the pid, for the refusal's message only.  Per machine: ``flock`` does not reach other hosts."""
    path = out / LOCK
    if fcntl is None:
        yield
        return
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:   # a directory (or unwritable) in the lock's place
            raise ValueError(f"--out {out}: cannot take the run lock {path} ({exc.strerror or exc}); "
                             f"remove it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(_locked_message(out, path)) from None
        except OSError as exc:   # a file system without locks
            os.close(fd)
            raise ValueError(f"--out {out}: cannot lock {path} ({exc.strerror or exc})") from None
        try:   # its last holder may have removed the file between our open and flock: lock the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)   # while still held: a waiting opener then sees a removed file
        os.close(fd)


def refuse_if_locked(out: Path) -> None:
    """A ValueError when another live process holds ``out``'s run lock.  ``run_lock`` takes the lock
    only once a run has checked its inputs; this early look spares the user notes about a run that
    will not start."""
    path = Path(out) / LOCK
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:   # none, or not a file: run_lock decides
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)   # released at close below
    except BlockingIOError:
        raise ValueError(_locked_message(Path(out), path)) from None
    except OSError:   # a file that takes no lock: run_lock decides
        pass
    finally:
        os.close(fd)


def _locked_message(out: Path, path: Path) -> str:
    try:   # the holder writes its pid just after taking the lock: it may not be there yet
        pid = int(path.read_text().strip())
        who = f"another ubnas run (pid {pid})"
    except (OSError, ValueError):
        who = "another ubnas run"
    return f"--out {out}: {who} is writing there; wait for it or choose another --out"


def make_run_dir(path: Path) -> Path:
    """Create the run directory ``path`` (and its parents) and check that it takes files; an error
    names ``--out`` and the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"--out {path}: exists and is not a directory") from None
    except OSError as exc:
        raise ValueError(f"--out {path}: cannot create the directory ({exc.strerror})") from None
    probe = path / ".ubnas_write_check.tmp"
    try:   # before any long work: a directory that takes no files would fail at the first checkpoint
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out {path}: cannot write in the directory ({exc.strerror or exc})") from None
    return path


def check_output_file(path, option: str) -> Path:
    """``path`` as an output file for ``option``, checked before any long work: it names a file
    (not a folder), its folder exists or can be made, and takes the temp file an atomic write needs.
    Every failure is a one-line ValueError naming the option."""
    text = str(path)
    path = Path(path)
    if not text.strip() or text.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        raise ValueError(f"{option} {text!r}: expected a file name")
    tmp = path.with_name(f".{path.name}.tmp")
    try:   # is_dir() and exists() raise too, for a name longer than the file system allows
        if path.is_dir():
            raise ValueError(f"{option} {path}: is a directory (expected a file name)")
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():   # mkdir would say 'File exists'
            raise ValueError(f"{option} {path}: cannot write there ({above} is a file, not a directory)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
        tmp.unlink()
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def say(message: str) -> None:
    """A note for the user: printed even with --quiet (which hides progress only), above any bar."""
    from tqdm import tqdm
    tqdm.write(message)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over ``total`` steps that vanishes when done, or None when progress is hidden."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint.  A failed write
    (disk full, permissions) removes the temp file, keeps the previous checkpoint and is a one-line
    ValueError naming the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(obj, tmp)
        durable_replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if not _is_write_failure(exc):   # a bug (say, an object torch cannot save) keeps its traceback
            raise
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: cannot write the checkpoint ({reason}); the previous one, if any, "
                         f"is kept") from None


def _is_write_failure(exc: BaseException) -> bool:
    """An OSError, or the RuntimeError torch's zip writer raises when the file cannot be written
    (disk full, permissions)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        sign in text for sign in ("PytorchStreamWriter", "inline_container", "file write failed", "open file failed"))


def load_checkpoint(path: Path) -> Any:
    """``torch.load`` of a ubnas checkpoint (tensors only); a file it cannot read is a one-line ValueError."""
    try:
        with open(path, "rb") as handle:   # a zip archive (torch.save since 1.6) or a legacy pickle
            if handle.read(2)[:1] not in (b"P", b"\x80"):
                raise ValueError(f"{path}: not a torch checkpoint (neither the zip archive torch.save "
                                 f"writes nor a pickle)")
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint") from None
    except ValueError:
        raise
    except Exception as exc:   # pickle / zip errors from a truncated file or one that is not a checkpoint
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if "weights_only" in str(exc) or "Weights only" in str(exc):   # not torch's advice to unpickle it
            reason = "it holds Python objects beyond tensors, which ubnas never unpickles"
        raise ValueError(f"{path}: not a readable torch checkpoint ({reason})") from None


def is_count(value: Any) -> bool:
    """Whether ``value`` is a whole number >= 0 (an int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (a bool is an int to Python, never a figure; JSON
    and torch checkpoints may hold NaN and Infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trajectory_problems(ckpt: Mapping[str, Any], epochs: Any) -> List[str]:
    """What is wrong with a checkpoint's ``epoch`` (epochs done, of the run's ``epochs``) and
    ``history`` (the log's rows), each as 'entry value (expected ...)'; [] when both are sound."""
    problems = []
    if not is_count(ckpt["epoch"]) or (is_count(epochs) and ckpt["epoch"] > epochs):
        problems.append(f"epoch {ckpt['epoch']!r} (expected a whole number from 0 to the run's {epochs} epochs)")
    history = ckpt["history"]
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        problems.append("history (expected a list of log rows)")
    return problems


def damaged_checkpoint(path: Path, what: str) -> ValueError:
    """The one-line error for a checkpoint ``path`` that ``what`` says is damaged (raise it)."""
    return ValueError(f"{path}: damaged checkpoint: {what}; start over without --resume")


def restore_state(path: Path, what: str, load, state: Any) -> None:
    """``load(state)`` (a ``load_state_dict`` or ``set_state``) for the entry ``what`` of checkpoint
    ``path``; torch's refusal (a state dict of other shapes or parameter groups, a generator state of
    another size: a damaged file, another ubnas or torch version) is ``damaged_checkpoint``."""
    try:
        load(state)
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise damaged_checkpoint(path, f"its {what} does not load ({error_detail(exc)})") from None


def error_detail(exc: BaseException, limit: int = 300) -> str:
    """torch's multi-line refusal (load_state_dict lists missing and unexpected keys on lines of
    their own) as one line of at most ``limit`` characters, for a one-line error."""
    detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return detail if len(detail) <= limit else detail[:limit - 3] + "..."


def existing_checkpoint(path: Path, resume: bool) -> Any:
    """What the run directory's checkpoint ``path`` holds (``load_checkpoint``), or None when there is
    none, or when it is unreadable and the run starts over (it will be overwritten); unreadable on
    --resume is the one-line error.  Callers check that it is their own kind."""
    if not Path(path).exists():
        return None
    try:
        return load_checkpoint(path)
    except ValueError:
        if resume:
            raise
        return None


def ignored_on_resume(cfg, saved: Mapping[str, Any], default, keys: Iterable[str],
                      given: Optional[Iterable[str]] = None) -> List[str]:
    """Options among ``keys`` that a run resumed with the checkpoint's ``saved`` values ignores: those
    ``given`` (set on the command line or in --config) with a value other than the saved one; without
    ``given``, those ``cfg`` sets away from both their ``default`` and the saved value."""
    if given is not None:
        given = set(given)
        return [k for k in keys if k in given and k in saved and getattr(cfg, k) != saved[k]]
    return [k for k in keys if k in saved and getattr(cfg, k) not in (saved[k], getattr(default, k))]


def ignored_flags(keys: Iterable[str], saved: Mapping[str, Any]) -> str:
    """'--lr (kept: 0.1), --seed (kept: 0)': the flags of the options ``keys`` that a resumed run
    ignores, each with the checkpoint's value that it keeps."""
    return ", ".join(f"--{k.replace('_', '-')} (kept: {saved[k]})" for k in keys)


PREVIOUS = "previous"         # where a run started over in the same directory keeps the last finished run
INTERRUPTED = "interrupted"   # ... and the last unfinished one, which must not replace a finished run's files


def aside_dir(out: Path, finished_marker: str) -> Path:
    """Where starting over in ``out`` sets the last run's files: ``out/previous`` when that run
    finished (``finished_marker`` is there), ``out/interrupted`` when it did not."""
    return out / (PREVIOUS if (out / finished_marker).is_file() else INTERRUPTED)


def set_aside(out: Path, names: Iterable[str], finished_marker: str) -> List[str]:
    """Move the files ``names`` that exist in ``out`` into ``aside_dir(out, finished_marker)``
    (replacing the run files an earlier start-over left there), so that starting over neither
    deletes a finished run nor lets its files pass for the new run's.  A run that did not finish
    goes to ``out/interrupted``: a start-over killed mid-run and started over again must not push
    the last finished run out of ``out/previous``.  Other files the user put in that directory stay.

    Atomic as a whole: the files gather in a staging directory that then replaces the old one by
    a rename, and ``recover_set_aside`` (called first) undoes or completes a move that was killed
    half-way, so a kill never splits a run between ``out`` and the kept directory, nor has the
    next start-over delete the half already moved.  Returns the names moved."""
    names = list(names)
    recover_set_aside(out, names)
    present = [name for name in names if (out / name).is_file()]
    if not present:
        return []
    keep = aside_dir(out, finished_marker)
    blocked = [keep / name for name in present if (keep / name).is_dir()]
    if keep.exists() and not keep.is_dir():
        blocked = [keep]
    if blocked:   # checked before anything moves
        raise ValueError(f"--out {out}: cannot keep the last run's files in {keep}: {blocked[0]} is "
                         f"{'not a directory' if blocked[0] == keep else 'a directory'}; move it away or "
                         f"choose another --out")
    staging, retired = _aside_temps(keep)
    staging.mkdir()
    for name in present:
        os.replace(out / name, staging / name)
    if keep.is_dir():
        for old in keep.iterdir():   # not a run file: the user's, kept with the new set
            if old.name not in names:
                os.replace(old, staging / old.name)
        os.replace(keep, retired)
    os.replace(staging, keep)   # the switch: before it the old set is whole, after it the new one
    shutil.rmtree(retired, ignore_errors=True)
    return present


def _aside_temps(keep: Path):
    """(staging, retired): where ``set_aside`` gathers the new set for ``keep`` and parks the old one."""
    return keep.with_name(f".{keep.name}.new"), keep.with_name(f".{keep.name}.old")


def recover_set_aside(out: Path, names: Iterable[str]) -> None:
    """Finish what a ``set_aside`` killed half-way left in ``out``: killed after the switch's first
    rename (the old set parked, the new one whole in staging), complete the switch; killed before,
    move the run files (``names``) back into ``out`` and the user's files back into the kept
    directory, as they were.  A run resumed after such a kill finds its files where they were."""
    names = set(names)
    for keep in (out / PREVIOUS, out / INTERRUPTED):
        staging, retired = _aside_temps(keep)
        if staging.is_dir():
            if retired.is_dir() and not keep.exists():
                os.replace(staging, keep)
            else:
                for item in staging.iterdir():
                    home = out if item.name in names else keep
                    if not (home / item.name).exists():
                        home.mkdir(exist_ok=True)
                        os.replace(item, home / item.name)
                shutil.rmtree(staging, ignore_errors=True)   # only copies of what is back in place
        if retired.is_dir():
            shutil.rmtree(retired, ignore_errors=True)


def resume_note(ckpt_path: Path, resume: bool, finished_marker: str) -> Optional[str]:
    """What a run tells the user about ``ckpt_path`` before it starts, or None when all is as asked.

    ``--resume`` with no checkpoint starts a new run (so a job restarted by a scheduler can pass it
    until its first checkpoint; a search that logged an epoch since refuses, ``search_resume.
    refuse_lost_checkpoint``); no ``--resume`` with a checkpoint starts over, setting the last run's files aside
    (``set_aside``; ``finished_marker`` is the file only a finished run has).
    """
    if resume and not ckpt_path.exists():
        return f"note: no {ckpt_path} to resume; starting a new run"
    if not resume and ckpt_path.exists():
        keep = aside_dir(ckpt_path.parent, finished_marker)
        unfinished = "" if keep.name == PREVIOUS else " (it did not finish)"
        return (f"note: {ckpt_path} exists; starting over, the last run's files move to "
                f"{keep}{unfinished} (pass --resume to continue it)")
    return None
