"""idx reader, errors naming the file, splits, augmentation, batches."""

import gzip

import numpy as np
import pytest
import torch
from vision_helpers import idx_bytes, write_tiny_fmnist

from attnkd.errors import DataError
from attnkd.vision.data import ImageBatches, augment, balanced_subset, split_train, to_float
from attnkd.vision.idx import load_fashion_mnist, read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_reads_tiny_idx(tmp_path, gz):
    write_tiny_fmnist(tmp_path, 30, 20, gz=gz)
    train, test = load_fashion_mnist("train", tmp_path), load_fashion_mnist("test", tmp_path)
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.labels.tolist() == [i % 10 for i in range(20)]


def test_read_idx_matches_written_values(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    assert (read_idx(tmp_path / "a") == arr).all()


def test_missing_file_is_named(tmp_path):
    write_tiny_fmnist(tmp_path, 30, 20)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist("test", tmp_path)


def test_truncated_file_is_named(tmp_path):
    arr = np.zeros((10, 28, 28), dtype=np.uint8)
    (tmp_path / "x.gz").write_bytes(gzip.compress(idx_bytes(arr)[:-100]))
    with pytest.raises(DataError, match=r"x\.gz.*truncated"):
        read_idx(tmp_path / "x.gz")
    (tmp_path / "y").write_bytes(b"\x01\x02")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "y")


def test_env_var_sets_the_folder(tmp_path, monkeypatch):
    write_tiny_fmnist(tmp_path, 30, 20)
    monkeypatch.setenv("ATTNKD_FMNIST_DIR", str(tmp_path))
    assert len(load_fashion_mnist("train")) == 30


def test_split_is_disjoint_and_seeded(tmp_path):
    write_tiny_fmnist(tmp_path, 100, 20)
    data = load_fashion_mnist("train", tmp_path)
    a, b = split_train(data, 0.2, 0), split_train(data, 0.2, 0)
    assert len(a.val) == 20 and len(a.train) == 80
    assert torch.equal(a.val.images, b.val.images)


def test_balanced_subset_is_seeded_even_and_drawn_from_the_set(tmp_path):
    write_tiny_fmnist(tmp_path, 100, 20)
    data = split_train(load_fashion_mnist("train", tmp_path), 0.2, 0).train
    a, b, c = (balanced_subset(data, 23, seed) for seed in (0, 0, 1))
    assert len(a) == 23 and torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    counts = torch.bincount(a.labels, minlength=10)
    assert counts.min() == 2 and counts.max() == 3 and int((counts == 3).sum()) == 3
    rows = {bytes(x.flatten().tolist()): int(y) for x, y in zip(data.images, data.labels)}
    assert all(rows[bytes(x.flatten().tolist())] == int(y) for x, y in zip(a.images, a.labels))
    assert len({bytes(x.flatten().tolist()) for x in a.images}) == 23  # no image twice
    assert len(balanced_subset(data, 500, 0)) == len(data)  # asks for more: gives all it has
    with pytest.raises(ValueError, match="at least one"):
        balanced_subset(data, 0, 0)


def test_augment_shifts_with_black_fill_and_flips():
    x = to_float(torch.full((4, 1, 6, 6), 255, dtype=torch.uint8))
    g = torch.Generator().manual_seed(0)
    y = augment(x, g, pad=2, flip=True)
    assert y.shape == x.shape
    black, white = float(to_float(torch.zeros(1, dtype=torch.uint8))), float(x.max())
    near = torch.isclose(y, torch.tensor(black), atol=1e-5) | torch.isclose(y, torch.tensor(white))
    assert near.all() and (y < 0).any()  # some pixels were shifted in as black
    # no shift, no flip: identity
    assert torch.equal(augment(x, g, pad=0, flip=False), x)


def test_batches_are_a_function_of_epoch_and_index(tmp_path):
    write_tiny_fmnist(tmp_path, 64, 20)
    data = load_fashion_mnist("train", tmp_path)
    b1, b2 = ImageBatches(data, 16, seed=3), ImageBatches(data, 16, seed=3)
    assert b1.num_batches == 4
    x = b1.batch_at(1, 2)
    b1.batch_at(0, 0)
    assert torch.equal(x["pixel_values"], b2.batch_at(1, 2)["pixel_values"])
    assert x["pixel_values"].shape == (16, 1, 28, 28) and x["labels"].shape == (16,)


@pytest.mark.real_model
def test_real_fashion_mnist_when_installed():
    from attnkd.vision.idx import image_dir

    if not (image_dir() / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert len(train) == 60000 and len(test) == 10000
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    m = train.images[:5000].float().mean() / 255
    assert abs(float(m) - 0.286) < 0.01
