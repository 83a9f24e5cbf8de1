"""Tests for ubnas.data: shipped digits, CIFAR-10 pickle reader, splits, batching, augmentation."""
import os
import re
import pickle

import numpy as np
import pytest
import torch

from ubnas import data as D


def test_digits_shipped_file_and_split():
    assert os.path.isfile(D.DIGITS_FILE)
    assert os.path.isfile(os.path.join(os.path.dirname(D.DIGITS_FILE), "DIGITS_LICENSE.txt"))
    ds = D.load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    assert len(ds.train_y) + len(ds.test_y) == 1797
    assert (len(ds.train_y), len(ds.test_y)) == (1438, 359)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert set(ds.train_y.tolist()) == set(range(10)) == set(ds.test_y.tolist())
    assert abs(ds.train_x.mean().item()) < 1e-4 and abs(ds.train_x.std().item() - 1) < 1e-3
    again = D.load_dataset("Digits", seed=5)  # split is fixed, independent of seed
    assert torch.equal(again.test_x, ds.test_x) and torch.equal(again.test_y, ds.test_y)


def test_digits_are_the_uci_test_set_with_matching_labels():
    """Without scikit-learn: the shipped file has the UCI optdigits test set's shape, value range (counts
    of set pixels in 4x4 blocks: 0..16) and class distribution (optdigits.names: 178 182 177 183 181 182
    181 179 174 180 for digits 0..9), and its labels belong to its images: a nearest-class-mean
    classifier fitted on the even rows labels the odd rows far above chance (~0.1 with shuffled labels)."""
    with np.load(D.DIGITS_FILE) as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    assert np.bincount(labels, minlength=10).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    x = images.reshape(len(images), -1).astype(np.float64)
    fit, held = np.arange(len(x)) % 2 == 0, np.arange(len(x)) % 2 == 1
    means = np.stack([x[fit & (labels == c)].mean(0) for c in range(10)])
    predicted = ((x[held][:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == labels[held]).mean() > 0.85


def test_digits_match_sklearn():
    datasets = pytest.importorskip("sklearn.datasets")
    ref = datasets.load_digits()
    with np.load(D.DIGITS_FILE) as z:
        images, labels = z["images"], z["labels"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, ref.images.astype(np.uint8))
    np.testing.assert_array_equal(images.astype(np.float64), ref.images)
    np.testing.assert_array_equal(labels, ref.target)


def _write_fake_cifar(root, n=4, seed=0):
    """Tiny batches in the real format; returns the (data, labels) written per file."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    written = {}
    for f in D.CIFAR_FILES:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(os.path.join(root, f), "wb") as fh:
            pickle.dump({b"batch_label": f.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, fh)
        written[f] = (data, labels)
    return written


def test_cifar_reader_layout(tmp_path):
    written = _write_fake_cifar(tmp_path / "cifar-10-batches-py")
    # raw reader: row = R plane (1024), then G, then B, each row-major 32x32
    x, y = D._read_cifar_batch(str(tmp_path / "cifar-10-batches-py" / "test_batch"))
    data, labels = written["test_batch"]
    assert x.shape == (4, 3, 32, 32) and y.tolist() == labels
    for i, ch, r, c in [(0, 0, 0, 0), (1, 1, 5, 7), (3, 2, 31, 31), (2, 0, 10, 3)]:
        assert x[i, ch, r, c] == data[i, ch * 1024 + r * 32 + c]
    # load_dataset accepts the parent directory and the batches directory itself
    for d in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = D.load_dataset("cifar10", data_dir=str(d))
        assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
        assert len(ds.train_y) == 20 and len(ds.test_y) == 4
        expect_y = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
        assert ds.train_y.tolist() == expect_y and ds.test_y.tolist() == labels
    # normalisation is per channel from the train split: undo it and compare pixels
    raw = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    raw = torch.from_numpy(raw.reshape(-1, 3, 32, 32)).float()
    mean, std = raw.mean(dim=(0, 2, 3), keepdim=True), raw.std(dim=(0, 2, 3), keepdim=True)
    assert ((ds.train_x * std + mean) - raw).abs().max() < 1e-3
    test_raw = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float()
    assert ((ds.test_x * std + mean) - test_raw).abs().max() < 1e-3


def test_cifar_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(D.DataError, match="nowhere") as e:
        D.load_dataset("cifar10", data_dir=str(missing))
    assert "data_batch_1" in str(e.value) and "test_batch" in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(D.DataError, match="needs --data-dir"):
        D.load_dataset("cifar10")
    _write_fake_cifar(tmp_path / "c")
    os.remove(tmp_path / "c" / "data_batch_3")
    with pytest.raises(D.DataError, match="data_batch_3") as e:
        D.load_dataset("cifar10", data_dir=str(tmp_path / "c"))
    assert str(tmp_path / "c") in str(e.value) and "cifar.html" in str(e.value)
    (tmp_path / "c" / "data_batch_3").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(D.DataError, match="data_batch_3"):
        D.load_dataset("cifar10", data_dir=str(tmp_path / "c"))
    # a pickle of something else than the batch dict (was numpy's 'truth value ... is ambiguous')
    with open(tmp_path / "c" / "data_batch_3", "wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(D.DataError, match=r"data_batch_3: ValueError: holds a list, expected a dict with 'data' "
                                          r"and 'labels'"):
        D.load_dataset("cifar10", data_dir=str(tmp_path / "c"))
    # the archive itself, or a batch file, given as the directory (was 'directory not found')
    with pytest.raises(D.DataError, match=r"data_batch_1 is a file, not a directory: .*\(tar xzf"):
        D.load_dataset("cifar10", data_dir=str(tmp_path / "c" / "data_batch_1"))


def test_an_empty_extraction_folder_does_not_hide_the_batches_beside_it(tmp_path):
    """An empty cifar-10-batches-py/ (an unfinished extraction) in --data-dir hid the batch files
    in --data-dir itself: every file was reported missing."""
    written = _write_fake_cifar(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-py").mkdir()
    data = D.load_dataset("cifar10", data_dir=str(tmp_path / "c"))
    assert data.test_y.tolist() == written["test_batch"][1]
    _write_fake_cifar(tmp_path / "c" / "cifar-10-batches-py", seed=1)   # the extracted folder wins
    data = D.load_dataset("cifar10", data_dir=str(tmp_path / "c"))
    assert data.test_y.tolist() == _write_fake_cifar(tmp_path / "d", seed=1)["test_batch"][1]


@pytest.mark.parametrize("field, value, message", [
    (b"labels", [12, 0, 1, 2], "labels must be 0..9, got 0..12"),
    (b"labels", [-1, 0, 1, 2], "labels must be 0..9, got -1..2"),
    (b"data", np.full((4, 3072), 300, dtype=np.int64), "pixels are int64, expected integers in 0..255"),
    (b"labels", [1.5, 0.0, 1.0, 2.0], "labels are float64, expected integers 0..9"),
    (b"labels", None, "missing key 'labels'"),
    (b"data", [], r"data \(0,\), labels \(4,\)"),   # np.asarray([]) is float64: not a pixel type problem
])
def test_cifar_batch_with_values_out_of_range_names_the_file(tmp_path, field, value, message):
    _write_fake_cifar(tmp_path)
    path = tmp_path / "data_batch_2"
    with open(path, "rb") as fh:
        batch = pickle.load(fh)
    if value is None:
        del batch[field]
    else:
        batch[field] = value
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)
    with pytest.raises(D.DataError, match=f"{path}.*{message}"):
        D.load_dataset("cifar10", data_dir=str(tmp_path))


@pytest.mark.parametrize("empty, split", [(("test_batch",), "test"), (D.CIFAR_FILES[:5], "training")])
def test_cifar_split_without_images_is_refused(tmp_path, empty, split):
    _write_fake_cifar(tmp_path)
    for f in empty:   # valid batches with zero rows
        with open(tmp_path / f, "wb") as fh:
            pickle.dump({b"labels": [], b"data": np.zeros((0, 3072), dtype=np.uint8)}, fh)
    with pytest.raises(D.DataError, match=f"the {split} split has no images in {tmp_path}"):
        D.load_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar_batch_with_integer_pixels_in_range_loads_as_uint8(tmp_path):
    written = _write_fake_cifar(tmp_path)
    path = tmp_path / "test_batch"
    with open(path, "rb") as fh:
        batch = pickle.load(fh)
    batch[b"data"] = batch[b"data"].astype(np.int64)
    with open(path, "wb") as fh:
        pickle.dump(batch, fh)
    x, y = D._read_cifar_batch(str(path))
    assert x.dtype == np.uint8 and np.array_equal(x.reshape(len(y), -1), written["test_batch"][0])


def test_unknown_dataset_lists_names():
    with pytest.raises(D.DataError) as e:
        D.load_dataset("mnist")
    assert all(n in str(e.value) for n in D.DATASETS)


def test_synthetic_seeded_and_shaped():
    a = D.load_dataset("synthetic", seed=1, synthetic_size=(64, 32), synthetic_shape=(3, 16, 16))
    b = D.load_dataset("synthetic", seed=1, synthetic_size=(64, 32), synthetic_shape=(3, 16, 16))
    c = D.load_dataset("synthetic", seed=2, synthetic_size=(64, 32), synthetic_shape=(3, 16, 16))
    assert a.input_shape == (3, 16, 16) and a.train_x.shape[0] == 64 and a.test_x.shape[0] == 32
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    assert a.train_y.dtype == torch.int64 and int(a.train_y.max()) < a.num_classes == 10


def test_synthetic_has_class_structure():
    ds = D.load_dataset("synthetic", synthetic_size=(1000, 500), synthetic_shape=(3, 16, 16))
    # nearest class mean (of train) on test must beat chance (10 %) clearly
    means = torch.stack([ds.train_x[ds.train_y == k].mean(0) for k in range(10)]).flatten(1)
    pred = torch.cdist(ds.test_x.flatten(1), means).argmin(1)
    assert (pred == ds.test_y).float().mean().item() > 0.5


@pytest.mark.parametrize("mode,n_w", [("half", 50), ("80_20", 81)])
def test_search_split(mode, n_w):
    x = torch.arange(101).float().view(101, 1, 1, 1)
    y = torch.arange(101)
    (xw, yw), (xa, ya) = D.search_split(x, y, mode=mode, seed=3)
    assert len(yw) == n_w and len(ya) == 101 - n_w
    assert set(yw.tolist()).isdisjoint(ya.tolist())
    assert sorted(yw.tolist() + ya.tolist()) == list(range(101))
    assert torch.equal(xw.view(-1).long(), yw)  # x and y stay paired
    (xw2, yw2), (_, ya2) = D.search_split(x, y, mode=mode, seed=3)
    assert torch.equal(yw, yw2) and torch.equal(ya, ya2)
    (_, yw3), _ = D.search_split(x, y, mode=mode, seed=4)
    assert not torch.equal(yw, yw3)
    with pytest.raises(ValueError):
        D.search_split(x, y, mode="70_30")


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_each_sample_once(shuffle):
    x = torch.arange(23).float().view(23, 1)
    y = torch.arange(23)
    g = torch.Generator().manual_seed(0)
    out = list(D.batches(x, y, 5, shuffle, g))
    assert [len(b[1]) for b in out] == [5, 5, 5, 5, 3]
    seen = torch.cat([b[1] for b in out])
    assert sorted(seen.tolist()) == list(range(23))
    assert all(torch.equal(xb.view(-1).long(), yb) for xb, yb in out)
    if shuffle:
        assert seen.tolist() != list(range(23))
        again = torch.cat([b[1] for b in D.batches(x, y, 5, True, torch.Generator().manual_seed(0))])
        assert torch.equal(seen, again)
    dropped = list(D.batches(x, y, 5, shuffle, torch.Generator().manual_seed(0), min_batch=5))
    assert [len(b[1]) for b in dropped] == [5, 5, 5, 5]


def test_batch_count_and_min_batch_match_a_plain_loop():
    for n in range(0, 14):
        y = torch.arange(n)
        for batch_size in range(1, 7):
            for min_batch in range(1, 8):
                sizes = [len(yb) for _, yb in D.batches(y.float(), y, batch_size, False, None, min_batch)]
                # reference: every batch in order, then the last one dropped if it is short and too small
                plain = [min(batch_size, n - i) for i in range(0, n, batch_size)]
                if plain and plain[-1] < min(min_batch, batch_size):
                    plain.pop()
                assert sizes == plain, (n, batch_size, min_batch)
                assert D.batch_count(n, batch_size, min_batch) == len(plain)


def test_augment_flip_and_crop():
    x = torch.randn(64, 3, 6, 5)
    g = torch.Generator().manual_seed(0)
    out = D.augment_crop_flip(x, 0, g)
    assert out.shape == x.shape
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    flipped = [torch.equal(out[i], torch.flip(x[i], dims=[-1])) for i in range(64)]
    assert all(s or f for s, f in zip(same, flipped))
    assert any(same) and any(flipped)  # both happen with p = 0.5
    # with padding, every output is a (possibly flipped) window of the zero-padded input
    p = 2
    out = D.augment_crop_flip(x, p, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(64):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                for win in [padded[i, :, dy:dy + 6, dx:dx + 5]]
                if torch.equal(out[i], win) or torch.equal(out[i], torch.flip(win, dims=[-1]))]
        assert hits
        offsets.update(hits)
    assert len(offsets) > 3
    again = D.augment_crop_flip(x, p, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_a_data_set_named_in_capitals_is_the_same_data_set_everywhere():
    """--data CIFAR10 was accepted (load_dataset reads any case) while the search's data-dir note,
    arch.yaml's provenance and train's augmentation compared with 'cifar10': augmentation was off
    and the note said the data dir was ignored although it was read."""
    from ubnas.search import SearchConfig
    from ubnas.train import TrainConfig
    assert SearchConfig(data="CIFAR10").data == "cifar10"
    assert TrainConfig(spec="arch.yaml", data="Cifar10").data == "cifar10"


def test_a_damaged_data_fingerprint_is_a_data_error_naming_it():
    """A checkpoint's 'data' that is no fingerprint dict (hand-edited, damaged) is refused in one line."""
    data = D.load_dataset("digits")
    D.refuse_other_data(None, data.fingerprint(), "run/checkpoint.pt", None)   # older checkpoints: not checked
    D.refuse_other_data(data.fingerprint(), data.fingerprint(), "run/checkpoint.pt", None)
    for damaged, said in (("abc", "str abc"), ([1], "list [1]"), ({"train": 3}, "3 training / None test"),
                          ({"shape": None}, "None training / None test images of None")):
        with pytest.raises(D.DataError, match=rf"run/checkpoint.pt was written on other data: {re.escape(said)}"):
            D.refuse_other_data(damaged, data.fingerprint(), "run/checkpoint.pt", None)
