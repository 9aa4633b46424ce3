"""Fashion-MNIST from its original idx files (plain or gzipped), with errors that name the file.

The idx format (LeCun et al.): a 4-byte magic ``0 0 <type> <ndim>``, ``ndim`` big-endian uint32
sizes, then the values row-major. Fashion-MNIST uses type 0x08 (uint8) for images
(n, 28, 28) and labels (n,). Debian's ``dataset-fashion-mnist`` installs the four gzipped files
under ``/usr/share/datasets/fashion-mnist``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from attnkd.errors import DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_DIR = "ATTNKD_FMNIST_DIR"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageSet:
    """Images (n, 1, H, W) uint8 and labels (n,) int64."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def image_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The idx folder: ``explicit`` (``data.image_dir``), then $ATTNKD_FMNIST_DIR, then Debian's."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        str(folder / stem), None,
        f"missing (looked for {stem} and {stem}.gz); install Debian's dataset-fashion-mnist "
        f"or set data.image_dir / ${ENV_DIR}",
    )  # fmt: skip


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One idx file (``.gz`` read transparently) as an array of its declared shape."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as err:  # EOFError: truncated gzip stream
        raise DataError(str(path), None, f"cannot read: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(str(path), None, "not an idx file (bad magic number)")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(str(path), None, f"truncated header ({len(raw)} bytes)")
    shape = tuple(int(x) for x in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_DTYPES[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - head < need:
        raise DataError(
            str(path),
            None,
            f"truncated: shape {shape} needs {need} data bytes, has {len(raw) - head}",
        )
    return np.frombuffer(raw, dtype, int(np.prod(shape)), head).reshape(shape)


def load_fashion_mnist(split: str, folder: str | os.PathLike | None = None) -> ImageSet:
    """``split`` 'train' (60k) or 'test' (10k) from ``image_dir(folder)``."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got '{split}'")
    root = image_dir(folder)
    img_path, lab_path = (_find(root, stem) for stem in FILES[split])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise DataError(str(img_path), None, f"expected (n, H, W) images, got shape {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            str(lab_path), None, f"{labels.shape} labels do not match {images.shape[0]} images"
        )
    return ImageSet(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )
