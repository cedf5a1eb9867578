"""Data loading: bundled digits, MNIST as IDX (plain and gzipped) and npz, and malformed inputs."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tests.trainer.helpers import idx_bytes, write_idx_dir, write_npz
from trainer.config import make_config
from trainer.data import load_splits, read_idx
from trainer.errors import TrainerError


def _check_contract(x: np.ndarray, y: np.ndarray) -> None:
    assert x.dtype == np.float32 and x.shape[1:] == (28, 28, 1)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert y.dtype == np.int64 and set(np.unique(y)) <= set(range(10))


def test_bundled_digits_look_like_mnist_and_split_is_stratified():
    s = load_splits(make_config())
    assert s.sizes() == {"train": 1257, "val": 180, "test": 360}
    for x, y in ((s.x_train, s.y_train), (s.x_val, s.y_val), (s.x_test, s.y_test)):
        _check_contract(x, y)
    # Centred in a 20x20 box like MNIST: the 4-pixel border is empty, the centre is ink.
    assert s.x_test[:, :4].max() == 0 and s.x_test[:, -4:].max() == 0 and s.x_test[:, :, :4].max() == 0
    assert s.x_test.max() == 1.0
    # Stratified: each class has 36 test images (+-1).
    counts = np.bincount(s.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert s.info["name"] == "sklearn-digits" and s.info["seed"] == 0


def test_split_depends_only_on_seed():
    a, b, c = load_splits(make_config()), load_splits(make_config()), load_splits(make_config(seed=1))
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)


def test_max_train_samples_is_stratified_subset():
    s = load_splits(make_config(max_train_samples=100))
    assert len(s.y_train) == 100 and np.bincount(s.y_train).min() >= 9
    assert s.sizes()["test"] == 360


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory(tmp_path, gz):
    d = write_idx_dir(tmp_path / "mnist", gz=gz, n_train=300, n_test=100)
    s = load_splits(make_config(data=str(d)))
    assert s.sizes() == {"train": 270, "val": 30, "test": 100}
    _check_contract(s.x_train, s.y_train)
    assert s.x_train.max() == 1.0
    assert s.info["name"] == "mnist" and "IDX" in s.info["source"]


def test_npz(tmp_path):
    p = write_npz(tmp_path / "mnist.npz", n_train=200, n_test=50)
    s = load_splits(make_config(data=str(p)))
    assert s.sizes() == {"train": 180, "val": 20, "test": 50}
    _check_contract(s.x_test, s.y_test)


def test_read_idx_roundtrip_and_malformed(tmp_path):
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    (tmp_path / "ok").write_bytes(idx_bytes(arr))
    (tmp_path / "ok.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "ok"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "ok.gz"), arr)
    (tmp_path / "trunc").write_bytes(idx_bytes(arr)[:-5])
    with pytest.raises(TrainerError, match="data bytes"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "magic").write_bytes(b"\x01\x02\x03\x04" + idx_bytes(arr)[4:])
    with pytest.raises(TrainerError, match="bad magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(TrainerError, match="cannot read"):
        read_idx(tmp_path / "bad.gz")


def test_bad_data_paths(tmp_path):
    with pytest.raises(TrainerError, match="data path not found"):
        load_splits(make_config(data=str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainerError, match="train-images-idx3-ubyte"):
        load_splits(make_config(data=str(empty)))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"garbage")
    with pytest.raises(TrainerError, match=r"cannot read .*: not an \.npz file"):
        load_splits(make_config(data=str(junk)))
    text = tmp_path / "digits.txt"  # np.load alone would answer with advice about trusting pickles
    text.write_text("hello\n")
    with pytest.raises(TrainerError, match=r"not an \.npz file") as info:
        load_splits(make_config(data=str(text)))
    assert "pickle" not in str(info.value)
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=np.zeros((10, 28, 28), np.uint8))
    with pytest.raises(TrainerError, match="lacks array"):
        load_splits(make_config(data=str(partial)))
    wrong_shape = tmp_path / "shape.npz"
    z = np.zeros((20, 32, 32), np.uint8)
    np.savez(wrong_shape, x_train=z, y_train=np.arange(20) % 10, x_test=z, y_test=np.arange(20) % 10)
    with pytest.raises(TrainerError, match="expected \\[N, 28, 28\\]"):
        load_splits(make_config(data=str(wrong_shape)))
    bad_labels = tmp_path / "labels.npz"
    z = np.zeros((20, 28, 28), np.uint8)
    np.savez(bad_labels, x_train=z, y_train=np.arange(20), x_test=z, y_test=np.arange(20) % 10)
    with pytest.raises(TrainerError, match=r"labels must be integers 0\.\.9"):
        load_splits(make_config(data=str(bad_labels)))
