"""Loading MNIST-format IDX files into memory, and where the data is looked for."""

from __future__ import annotations

import pytest
import torch

from genmnist.data import (
    DATASETS,
    RAW_FILES,
    InMemoryDataset,
    check_dataset_name,
    default_root,
    load_dataset,
    write_idx,
)
from genmnist.errors import DataError


def test_load_dataset_returns_what_was_written(tmp_path, make_mnist_folder):
    root = tmp_path / "root"
    written = make_mnist_folder(root, n_train=30, n_test=12)
    train = load_dataset("mnist", "train", root, download=False)
    assert isinstance(train, InMemoryDataset)
    assert (train.name, train.split, len(train)) == ("mnist", "train", 30)
    assert train.images.dtype == torch.uint8 and train.images.shape == (30, 28, 28)
    assert train.labels.dtype == torch.int64 and train.labels.shape == (30,)
    assert torch.equal(train.images, written["train-images-idx3-ubyte"])
    assert torch.equal(train.labels, written["train-labels-idx1-ubyte"].long())
    test = load_dataset("mnist", "test", str(root), download=False)  # str paths work too
    assert len(test) == 12
    assert torch.equal(test.images, written["t10k-images-idx3-ubyte"])
    assert train.class_names == tuple(str(i) for i in range(10))


def test_fashion_mnist_folder(tmp_path, make_mnist_folder):
    written = make_mnist_folder(tmp_path / "m", n_train=10, n_test=10)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.parent.mkdir()
    (tmp_path / "m" / "MNIST" / "raw").rename(raw)
    data = load_dataset("fashion-mnist", "train", tmp_path, download=False)
    assert torch.equal(data.images, written["train-images-idx3-ubyte"])
    assert data.class_names[9] == "Ankle boot" and len(data.class_names) == 10


def test_batch_gives_floats_in_unit_range(idx_root):
    data = load_dataset("mnist", "train", idx_root, download=False)
    indices = torch.tensor([5, 0, 7])
    images, labels = data.batch(indices)
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(images[:, 0], data.images[indices].float() / 255)
    assert torch.equal(labels, data.labels[indices])
    assert images.max() == 1.0  # the 255 pixels map to exactly 1
    # batching does not modify the stored uint8 images
    assert data.images.dtype == torch.uint8


def test_missing_files_name_the_folder_and_files(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "train", tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    for name in RAW_FILES:
        assert name in message
    assert "download disabled" in message


def test_one_missing_file_is_reported(idx_root):
    (idx_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="not found under"):
        load_dataset("mnist", "train", idx_root, download=False)


def test_unknown_dataset_and_split(idx_root):
    with pytest.raises(DataError, match="unknown dataset 'cifar10'; choose from mnist"):
        load_dataset("cifar10", "train", idx_root, download=False)
    with pytest.raises(DataError, match="unknown split 'validation'"):
        load_dataset("mnist", "validation", idx_root, download=False)
    with pytest.raises(DataError):
        check_dataset_name("MNIST")
    assert check_dataset_name("fashion-mnist") == "fashion-mnist"
    assert set(DATASETS) == {"mnist", "fashion-mnist"}


def _raw(root):
    return root / "MNIST" / "raw"


def test_bad_magic_bytes_raise_data_error(idx_root):
    path = _raw(idx_root) / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[0:4] = b"\xde\xad\xbe\xef"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="malformed") as info:
        load_dataset("mnist", "train", idx_root, download=False)
    assert str(_raw(idx_root)) in str(info.value)


def test_label_count_mismatch_raises_data_error(idx_root):
    write_idx(_raw(idx_root) / "train-labels-idx1-ubyte", torch.zeros(50, dtype=torch.uint8))
    with pytest.raises(DataError, match="64 images but 50 labels"):
        load_dataset("mnist", "train", idx_root, download=False)


def test_labels_out_of_range_raise_data_error(idx_root):
    write_idx(_raw(idx_root) / "train-labels-idx1-ubyte", torch.full((64,), 12, dtype=torch.uint8))
    with pytest.raises(DataError, match="labels must be 0..9"):
        load_dataset("mnist", "train", idx_root, download=False)


def test_wrong_image_size_raises_data_error(idx_root):
    write_idx(
        _raw(idx_root) / "train-images-idx3-ubyte", torch.zeros(64, 32, 32, dtype=torch.uint8)
    )
    with pytest.raises(DataError, match="28x28"):
        load_dataset("mnist", "train", idx_root, download=False)


def test_truncated_file_is_reported_as_malformed(idx_root):
    path = _raw(idx_root) / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "train", idx_root, download=False)
    assert "malformed" in str(info.value)
    assert "not found" not in str(info.value)


def test_write_idx_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x", torch.zeros(2, 28, 28))


def test_write_idx_header(tmp_path):
    write_idx(tmp_path / "labels", torch.tensor([1, 2, 3], dtype=torch.uint8))
    assert (tmp_path / "labels").read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])


# --------------------------------------------------------------------------- data root
def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("GENMNIST_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".cache" / "genmnist" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "genmnist" / "data"
    monkeypatch.setenv("GENMNIST_DATA", str(tmp_path / "env"))
    assert default_root() == tmp_path / "env"
    monkeypatch.setenv("GENMNIST_DATA", "~/somewhere")
    assert default_root() == tmp_path / "home" / "somewhere"


def test_load_dataset_uses_the_resolved_root(monkeypatch, tmp_path, make_mnist_folder):
    explicit, env, xdg = tmp_path / "explicit", tmp_path / "env", tmp_path / "xdg"
    make_mnist_folder(explicit, n_train=11)
    make_mnist_folder(env, n_train=12)
    make_mnist_folder(xdg / "genmnist" / "data", n_train=13)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("GENMNIST_DATA", str(env))

    def size(data_dir=None):
        return len(load_dataset("mnist", "train", data_dir, download=False))

    assert size(explicit) == 11  # data_dir beats GENMNIST_DATA
    assert size() == 12  # GENMNIST_DATA beats XDG_CACHE_HOME
    monkeypatch.delenv("GENMNIST_DATA")
    assert size() == 13


# --------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_real_mnist_sizes(real_data):
    train = load_dataset("mnist", "train", real_data, download=False)
    test = load_dataset("mnist", "test", real_data, download=False)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 28, 28)
    assert len(train.labels) == 60000 and len(test.labels) == 10000
    assert set(train.labels.unique().tolist()) == set(range(10))
    assert train.images.max() == 255 and train.images.min() == 0
