"""torch.distributed helpers for ``torchrun --nproc_per_node N -m ubnas search``.

Gradients are all-reduced explicitly rather than through the DDP wrapper: channel
reallocation replaces parameters mid-run, which DDP's gradient buckets (fixed at
wrap time) do not allow.  The effect is DDP's: every rank sees the mean gradient.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, List, Tuple

import torch
import torch.distributed as dist


def world(device: str = "auto") -> tuple:
    """(rank, world_size); initialises the process group when launched by torchrun.

    device: the run's ``--device``; nccl serves CUDA tensors only, so ``cpu`` takes gloo even
    where a GPU is present (as does ``UBNAS_DIST_BACKEND=gloo``).
    """
    size = launched_processes()
    if size <= 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        backend = "nccl" if cuda and os.environ.get("UBNAS_DIST_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def launched_processes() -> int:
    """How many processes torchrun started (WORLD_SIZE; 1 without torchrun); never touches the group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun); never touches the group."""
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Average .grad over ranks (one flat buffer, one collective)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s share of (x, y) (N, ...) / (N,): every world-th row from row ``rank``, cut to
    N // world rows on every rank, so the ranks take equal numbers of steps."""
    if world == 1:
        return x, y
    end = len(y) // world * world
    return x[rank:end:world], y[rank:end:world]


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not active():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a reallocation decision)."""
    if not active():
        return obj
    box: List[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def raised_on_every_rank(exc: BaseException) -> BaseException:
    """Mark ``exc`` as one that every rank raises at the same point (``shutdown`` may then wait for
    them all); returns it."""
    exc.ubnas_on_every_rank = True
    return exc


def on_every_rank(exc: BaseException) -> bool:
    """Whether ``exc`` was raised on every rank at the same point (``raised_on_every_rank``)."""
    return bool(getattr(exc, "ubnas_on_every_rank", False))


def on_rank0(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 only (files, locks), its outcome shared: its result on rank 0 (None elsewhere).

    An exception there (a refused run directory, a full disk, a bug) is raised on every rank: on
    rank 0 as is, on the others as a ValueError quoting it, so no rank is left waiting in a
    collective that rank 0 never reaches (which gloo reports as a long 'Connection closed by peer'
    traceback, or not at all until its 30-minute timeout)."""
    result, error = None, None
    if rank() == 0:
        try:
            result = fn()
        except Exception as exc:   # noqa: BLE001 - shared with the other ranks, then raised as is
            error = exc
    # the common case costs one small all-reduce; the message travels only when there is one
    failed = mean_over_ranks([float(error is not None)])[0] > 0
    message = broadcast_object(None if error is None else str(error)) if failed else None
    if error is not None:
        raise raised_on_every_rank(error)
    if message is not None:
        raise raised_on_every_rank(ValueError(f"rank 0 stopped: {message}"))
    return result


def mean_over_ranks(values: List[float]) -> List[float]:
    """Each value averaged over the ranks (one collective; the values themselves without torchrun)."""
    if not active():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flat = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(flat)
    return (flat / dist.get_world_size()).tolist()


def assert_same(tensors: Iterable[torch.Tensor], what: str) -> None:
    """Raise if ``tensors`` differ between ranks (a checksum compared across ranks).

    The checksum weighs each element by its position in the whole sequence of tensors, so values
    swapped between places, within a tensor or between two, differ too (a plain sum and sum of
    squares would not see that)."""
    if not active():
        return
    tensors = list(tensors)
    total = sum(t.numel() for t in tensors)
    checksum, offset = None, 0
    for t in tensors:
        flat = t.detach().double().flatten()
        weight = 1.0 + (torch.arange(flat.numel(), dtype=torch.float64, device=flat.device) + offset) / max(total, 1)
        part = (flat * weight).sum() + (flat ** 2).sum()
        checksum = part if checksum is None else checksum + part
        offset += flat.numel()
    if checksum is None:
        return
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise raised_on_every_rank(RuntimeError(f"ranks disagree on {what}: {[float(g) for g in gathered]}"))


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if active():
        dist.barrier()


def shutdown(every_rank: bool = True) -> None:
    """Leave the group.  ``every_rank``: every rank gets here (a finished run, or an error that all
    raise at the same point): wait for them all first, since a source rank may return from a gloo
    broadcast before the others have received it, and tearing the group down then aborts them.
    Otherwise (an error on this rank alone: a GPU out of memory, a bug) leave at once: the others
    may wait in a collective this rank never joins, and a barrier would hang with them until gloo's
    30-minute timeout; torchrun stops them once this process exits."""
    if active():
        if every_rank:
            dist.barrier()
        dist.destroy_process_group()
