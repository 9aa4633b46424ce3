"""Tiny Fashion-MNIST-shaped idx files for tests (no Debian package needed)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np


def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_tiny_fmnist(folder: Path, n_train: int = 200, n_test: int = 100, gz: bool = True,
                      seed: int = 0) -> Path:  # fmt: skip
    """Learnable toy data robust to shift/flip augmentation: class c is a bright horizontal band
    at row 2 + 5·(c mod 5), full width for c < 5, centred and short otherwise, on noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def make(n):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            row = 2 + 5 * (c % 5)
            images[i, row : row + 3, 2:26] = 230 if c < 5 else images[i, row : row + 3, 2:26]
            images[i, row : row + 3, 10:18] = 230
        return images.astype(np.uint8), labels.astype(np.uint8)

    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = make(n)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte"
            data = idx_bytes(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def read_json(path: Path):
    """A results.json as a dict, or None where there is none (the plan's ``read``)."""
    return json.loads(path.read_text()) if path.is_file() else None
