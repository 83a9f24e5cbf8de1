"""Data sets, search splits, batching and augmentation for ubnas (torch only).

Three data sets are known to :func:`load_dataset`:

* ``digits``: UCI optical handwritten digits, 1,797 images of shape (1, 8, 8),
  shipped in ``ubnas/data/digits.npz`` (see ``DIGITS_LICENSE.txt`` there).
* ``cifar10``: the standard CIFAR-10 python pickle batches, read from disk.
* ``synthetic``: seeded random data with learnable class structure.

Images are always (N, C, H, W) float32, normalised with the per-channel mean
and std of the training split; labels are (N,) int64. Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "cifar10", "synthetic")


def dataset_name(name):
    """``name`` as DATASETS spells it: data sets are named in any case (CIFAR10 is cifar10).  A
    value that is no string is returned as given, for the config checks to refuse."""
    return name.lower() if isinstance(name, str) else name


DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.npz")
DIGITS_SPLIT_SEED = 0  # the digits train/test split is fixed, independent of `seed`
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class DataError(ValueError):
    """A data set is unknown, missing or unreadable."""


@dataclass
class Dataset:
    """A normalised train/test pair.

    ``train_x``/``test_x``: (N, C, H, W) float32, normalised with the per-channel
    mean/std of ``train_x``; ``train_y``/``test_y``: (N,) int64 in [0, num_classes).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple:
        """(C, H, W) of one image."""
        return tuple(self.train_x.shape[1:])

    def fingerprint(self) -> dict:
        """What a checkpoint records of the data it was trained on, for a resume to check: the split
        sizes, the image shape and a hash of the labels in order (labels, not pixels: the normalised
        pixels round differently with the thread count; another copy, subset or order of the images
        changes the labels' sequence)."""
        labels = hashlib.sha256()
        for y in (self.train_y, self.test_y):
            labels.update(y.to(torch.int64).cpu().numpy().tobytes())
            labels.update(b"|")
        return {"name": self.name, "train": len(self.train_y), "test": len(self.test_y),
                "shape": list(self.input_shape), "labels_sha256": labels.hexdigest()[:16]}


def refuse_other_data(saved: dict | None, now: dict, ckpt_path, data_dir: str | None) -> None:
    """DataError when ``now`` (``Dataset.fingerprint()`` of the data loaded) is not the fingerprint a
    checkpoint saved as ``saved`` (None: a checkpoint written before fingerprints were saved, not
    checked).  A resumed run on other data would keep the step counts and schedules of the first and
    silently mix two."""
    if saved is None or now == saved:
        return

    def described(f):
        if not isinstance(f, dict):   # a damaged checkpoint: say what it holds
            return f"{type(f).__name__} {str(f)[:60]}"
        shape = f.get("shape", ())
        shape = "x".join(map(str, shape)) if isinstance(shape, (list, tuple)) else repr(shape)
        return f"{f.get('train')} training / {f.get('test')} test images of {shape} (labels {f.get('labels_sha256')})"

    where = f" in {data_dir}" if data_dir is not None else ""
    raise DataError(f"{ckpt_path} was written on other data: {described(saved)}; {now['name']}{where} now has "
                    f"{described(now)}. Resume with the data the run used, or start over without --resume")


def _normalise(train_x: torch.Tensor, test_x: torch.Tensor):
    """Scale both (N, C, H, W) splits in place with the per-channel mean/std of ``train_x``."""
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return train_x.sub_(mean).div_(std), test_x.sub_(mean).div_(std)


def _load_digits() -> tuple:
    if not os.path.isfile(DIGITS_FILE):
        raise DataError(f"shipped digits file missing: {DIGITS_FILE} (reinstall ubnas)")
    with np.load(DIGITS_FILE) as z:
        x = torch.from_numpy(z["images"].astype(np.float32)).unsqueeze(1)  # (1797, 1, 8, 8)
        y = torch.from_numpy(z["labels"].astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = round(0.2 * len(y))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te], 10


def _cifar_dir(data_dir: str | None) -> str:
    hint = (f"expected CIFAR-10 python batches {', '.join(CIFAR_FILES)} "
            f"(cifar-10-python.tar.gz from {CIFAR_URL}, extracted)")
    if data_dir is None:
        raise DataError(f"cifar10 needs --data-dir: {hint}")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):   # the archive itself, or one batch file
        raise DataError(f"--data-dir {data_dir} is a file, not a directory: give the directory that holds the "
                        f"batches (tar xzf cifar-10-python.tar.gz extracts them); {hint}")
    if not os.path.isdir(data_dir):
        raise DataError(f"CIFAR-10 directory not found: {data_dir}; {hint}")
    sub = os.path.join(data_dir, "cifar-10-batches-py")

    def missing_in(d: str) -> list:
        return [f for f in CIFAR_FILES if not os.path.isfile(os.path.join(d, f))]
    # the extracted folder, or the directory itself (an empty cifar-10-batches-py beside the
    # files, left by an unfinished extraction, must not hide them); the fuller one is named
    d = min([sub, data_dir] if os.path.isdir(sub) else [data_dir], key=lambda d: len(missing_in(d)))
    missing = missing_in(d)
    if missing:
        raise DataError(f"CIFAR-10 files missing in {d}: {', '.join(missing)}; {hint}")
    return d


def _read_cifar_batch(path: str) -> tuple:
    """One pickled batch -> (x uint8 (n, 3, 32, 32), y int64 (n,)). Only open trusted files."""
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        if not isinstance(d, dict):
            raise ValueError(f"holds a {type(d).__name__}, expected a dict with 'data' and 'labels'")
        if b"data" not in d and "data" not in d:
            raise ValueError("missing key 'data'")
        raw = np.asarray(d.get(b"data", d.get("data")))
        # a cast would wrap 300 to 44 without a word; an empty list is float64 to numpy, no pixel type
        if raw.dtype != np.uint8 and raw.size:
            if raw.dtype.kind not in "iu" or raw.min() < 0 or raw.max() > 255:
                raise ValueError(f"pixels are {raw.dtype}, expected integers in 0..255")
        data = raw.astype(np.uint8)
        if b"labels" not in d and "labels" not in d:
            raise ValueError("missing key 'labels'")
        labels = np.asarray(d.get(b"labels", d.get("labels")))
        if labels.size and labels.dtype.kind not in "iu":   # int64 would truncate 3.7 to 3
            raise ValueError(f"labels are {labels.dtype}, expected integers 0..9")
        labels = labels.astype(np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
            raise ValueError(f"data {data.shape}, labels {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise ValueError(f"labels must be 0..9, got {labels.min()}..{labels.max()}")
    except Exception as e:  # truncated/corrupt pickle, wrong keys or shapes
        raise DataError(f"corrupt CIFAR-10 batch {path}: {type(e).__name__}: {e}") from e
    # each 3072 row is the 1024 R values, then G, then B, each plane row-major 32x32
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(data_dir: str | None) -> tuple:
    d = _cifar_dir(data_dir)
    parts = [_read_cifar_batch(os.path.join(d, f)) for f in CIFAR_FILES]
    tx, ty = (np.concatenate([p[i] for p in parts[:5]]) for i in (0, 1))
    (ex, ey), t = parts[5], torch.from_numpy
    return t(tx).float(), t(ty), t(ex).float(), t(ey), 10


def _make_synthetic(seed: int, sizes: tuple, shape: tuple, num_classes: int = 10) -> tuple:
    """Class-dependent smooth mean patterns plus per-pixel Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    coarse = torch.randn(num_classes, c, max(1, h // 4), max(1, w // 4), generator=g)
    protos = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    out = []
    for n in sizes:
        y = torch.randperm(n, generator=g) % num_classes  # balanced classes
        x = protos[y] + 1.5 * torch.randn(n, c, h, w, generator=g)
        out += [x, y]
    return (*out, num_classes)


def ignored_data_dir_note(name: str, data_dir: str | None) -> str | None:
    """The note ``search`` and ``train`` print when ``--data-dir`` is given to a data set that does
    not read it (only cifar10 does), else None."""
    if data_dir is None or name == "cifar10":
        return None
    return f"note: --data-dir is read only with --data cifar10; {name} ignores {data_dir}"


def check_data_files(name: str, data_dir: str | None = None) -> None:
    """DataError when ``load_dataset(name, data_dir)`` would not find its name or files; reads no
    images (a check before minutes of other work)."""
    key = dataset_name(str(name))
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if key == "cifar10":
        _cifar_dir(data_dir)


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0,
                 synthetic_size: tuple = (2048, 512),
                 synthetic_shape: tuple = (3, 32, 32)) -> Dataset:
    """Load a data set by name (one of ``DATASETS``) as a normalised :class:`Dataset`.

    ``digits``: fixed seeded 80/20 split (1,438 train / 359 test), shape (1, 8, 8).
    ``cifar10``: 50,000 / 10,000 images (3, 32, 32) read from ``data_dir`` (the
    ``cifar-10-batches-py`` directory or its parent). ``synthetic``: sizes
    ``synthetic_size`` (train, test), image shape ``synthetic_shape``, drawn from
    ``seed``. ``seed`` only affects ``synthetic``. Raises :class:`DataError`.
    """
    key = dataset_name(str(name))
    if key == "digits":
        parts = _load_digits()
    elif key == "cifar10":
        parts = _load_cifar10(data_dir)
    elif key == "synthetic":
        parts = _make_synthetic(seed, tuple(synthetic_size), tuple(synthetic_shape))
    else:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    train_x, train_y, test_x, test_y, num_classes = parts
    for split, y in (("training", train_y), ("test", test_y)):
        if len(y) == 0:   # later a 0-step search or a division by zero
            where = f" in {data_dir}" if key == "cifar10" else ""
            raise DataError(f"{key}: the {split} split has no images{where}")
    train_x, test_x = _normalise(train_x, test_x)
    return Dataset(key, train_x.contiguous(), train_y.long(), test_x.contiguous(),
                   test_y.long(), num_classes)


def search_split(x: torch.Tensor, y: torch.Tensor, mode: str = "half", seed: int = 0):
    """Split (N, ...) ``x`` and (N,) ``y`` into weight and architecture parts.

    ``mode="half"``: DARTS' 50/50 split of the training set (weights get N // 2);
    ``mode="80_20"``: 80 % weights, 20 % architecture. Random, not stratified,
    deterministic for a ``seed``. Returns ``((x_w, y_w), (x_a, y_a))``, disjoint.
    """
    if mode not in ("half", "80_20"):
        raise DataError(f"unknown search split mode {mode!r}; valid: half, 80_20")
    n = len(y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(y.device)
    n_w = n // 2 if mode == "half" else round(0.8 * n)
    iw, ia = perm[:n_w], perm[n_w:]
    return (x[iw], y[iw]), (x[ia], y[ia])


MIN_TRAIN_BATCH = 2   # BatchNorm cannot take training statistics from one value per channel


def batch_count(n: int, batch_size: int, min_batch: int = 1) -> int:
    """How many batches :func:`batches` yields for ``n`` samples (see there for ``min_batch``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    full, rest = divmod(n, batch_size)
    return full + (rest >= min(min_batch, batch_size) and rest > 0)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool,
            generator: torch.Generator | None, min_batch: int = 1) -> Iterator[tuple]:
    """Yield ``(xb, yb)`` minibatches of (B, ...) / (B,) covering each sample once.

    With ``shuffle`` the order is ``torch.randperm(N, generator=generator)`` (a CPU
    generator; ``None`` uses torch's global RNG), so it is deterministic given the
    generator's state. A final batch of fewer than ``min_batch`` samples is dropped
    (``min_batch=batch_size`` keeps full batches only); training passes
    :data:`MIN_TRAIN_BATCH`, since a batch of one sample fails BatchNorm on a 1 x 1 map.
    """
    stop = min(len(y), batch_count(len(y), batch_size, min_batch) * batch_size)
    order = torch.randperm(len(y), generator=generator).to(y.device) if shuffle else None
    for i in range(0, stop, batch_size):
        if order is None:
            yield x[i:i + batch_size], y[i:i + batch_size]
        else:
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def crop_padding(input_shape: tuple) -> int:
    """Padding (pixels) of the random crop for images of ``input_shape`` (C, H, W): an eighth of the
    shorter side, CIFAR's 4 on 32 x 32; a fixed 4 shifted an 8 x 8 digit by half its width."""
    return max(1, round(min(input_shape[-2:]) / 8))


def augment_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding plus random horizontal flip, per sample.

    ``x``: (N, C, H, W); returns a new (N, C, H, W) tensor. Each sample is padded by
    ``padding`` zeros on every side (on normalised data zero is the channel mean),
    cropped back to H x W at a random offset and flipped left-right with p = 0.5.
    Random numbers come from the CPU ``generator``.
    """
    n, c, h, w = x.shape
    p = int(padding)
    xp = F.pad(x, (p, p, p, p)) if p > 0 else x
    oy = torch.randint(0, 2 * p + 1, (n, 1), generator=generator)
    ox = torch.randint(0, 2 * p + 1, (n, 1), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = oy + torch.arange(h)                        # (N, H)
    cols = ox + torch.arange(w)                        # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    dev = x.device
    ni = torch.arange(n, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[ni, ci, rows.to(dev)[:, None, :, None], cols.to(dev)[:, None, None, :]]
