"""Training batches, augmentation and splits for image classification.

Images stay uint8 in memory (60k Fashion-MNIST images are 47 MB) and are turned into floats per
batch: scaled to [0, 1], normalised with the dataset's mean/std, then (training only) shifted by
up to ``pad`` pixels with zero fill (random crop of the padded image) and flipped left-right with
probability 1/2, the standard augmentation for Fashion-MNIST/CIFAR-style small images. Batch
``i`` of epoch ``e`` depends only on (seed, e, i), so resume stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnkd.vision.idx import ImageSet

MEAN, STD = 0.2860, 0.3530
"""Fashion-MNIST training-set pixel mean and std (of values scaled to [0, 1])."""


def to_float(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) -> normalised float32."""
    return (images.float() / 255.0 - MEAN) / STD


def augment(x: Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True) -> Tensor:
    """Random shift by up to ``pad`` pixels (zero fill in pixel space) and left-right flip.

    ``x``: (B, C, H, W) normalised floats; returns the same shape.
    """
    b, c, h, w = x.shape
    if pad > 0:
        fill = -MEAN / STD  # a black pixel after normalisation
        padded = F.pad(x, (pad, pad, pad, pad), value=fill)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
        cols = (dx[:, None] + torch.arange(w)).view(b, 1, 1, w).expand(b, c, h, w)
        x = padded.gather(2, rows).gather(3, cols)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(3), x)
    return x


@dataclass
class Split:
    """Training and selection parts of the training set (a seeded, stratified-by-chance cut)."""

    train: ImageSet
    val: ImageSet


def split_train(data: ImageSet, val_fraction: float, seed: int) -> Split:
    """Hold out ``val_fraction`` of the training images (chosen by ``seed``) for selection."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=g)
    n_val = max(1, int(round(len(data) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return Split(
        ImageSet(data.images[train], data.labels[train]),
        ImageSet(data.images[val], data.labels[val]),
    )


def balanced_subset(data: ImageSet, n: int, seed: int) -> ImageSet:
    """``n`` images of ``data`` chosen at random (``seed``) with the classes as even as they can
    be: ``n // k`` of each of the ``k`` classes, one more for the first ``n % k`` classes in a
    seeded order (a class with too few images gives all it has). Order: shuffled."""
    if n < 1:
        raise ValueError(f"a subset needs at least one image, got {n}")
    g = torch.Generator().manual_seed(seed * 7_919 + 1)
    classes = data.labels.unique()
    extra = set(classes[torch.randperm(len(classes), generator=g)][: n % len(classes)].tolist())
    keep = []
    for c in classes.tolist():
        idx = (data.labels == c).nonzero().flatten()
        take = n // len(classes) + (c in extra)
        keep.append(idx[torch.randperm(len(idx), generator=g)[:take]])
    chosen = torch.cat(keep)
    chosen = chosen[torch.randperm(len(chosen), generator=g)]
    return ImageSet(data.images[chosen], data.labels[chosen])


class ImageBatches:
    """Shuffled, augmented batches ``{'pixel_values', 'labels'}`` addressable by (epoch, index)."""

    def __init__(self, data: ImageSet, batch_size: int, seed: int = 0, augment_pad: int = 2,
                 flip: bool = True):  # fmt: skip
        if len(data) < batch_size:
            raise ValueError(f"batch size {batch_size} is more than the {len(data)} images")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.pad, self.flip = augment_pad, flip
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    @property
    def num_batches(self) -> int:
        return len(self.data) // self.batch_size

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.data), generator=g)
        idx = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        g = torch.Generator().manual_seed((self.seed * 100_003 + epoch) * 10_007 + index)
        x = to_float(self.data.images[idx])
        if self.pad or self.flip:
            x = augment(x, g, self.pad, self.flip)
        return {"pixel_values": x, "labels": self.data.labels[idx]}


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageSet, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode, restored afterwards) on ``data``."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(data), batch_size):
        x = to_float(data.images[i : i + batch_size]).to(device)
        pred = model(x).argmax(-1).cpu()
        correct += int((pred == data.labels[i : i + batch_size]).sum())
    model.train(was)
    return correct / max(len(data), 1)
