"""Device choice and crash-safe checkpoint writes shared by search and training."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch sees no CUDA device (use cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    return device


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temp file, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resume_note(ckpt_path: Path, resume: bool) -> Optional[str]:
    """What a run tells the user about ``ckpt_path`` before it starts, or None when all is as asked.

    ``--resume`` with no checkpoint starts a new run (so a job restarted by a scheduler can always
    pass it); no ``--resume`` with a checkpoint starts over, overwriting it.
    """
    if resume and not ckpt_path.exists():
        return f"note: no {ckpt_path} to resume; starting a new run"
    if not resume and ckpt_path.exists():
        return f"note: {ckpt_path} exists; starting over (pass --resume to continue it)"
    return None
