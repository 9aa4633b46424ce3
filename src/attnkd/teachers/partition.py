"""Data partitions: several students, each owning one disjoint part of the training data.

:func:`partition_indices` cuts ``range(n)`` into ``parts`` disjoint index sets that together cover
it (a seeded permutation cut into near-equal runs), so each student trains on its own part and no
item is seen by two students or by none.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["partition_batches", "partition_indices"]


def partition_indices(n: int, parts: int, seed: int = 0) -> list[Tensor]:
    """``parts`` sorted int64 index tensors, disjoint and covering ``range(n)``; sizes differ by
    at most one. The assignment depends only on ``(n, parts, seed)``."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if n < parts:
        raise ValueError(f"cannot cut {n} items into {parts} non-empty parts")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [chunk.sort().values for chunk in torch.tensor_split(order, parts)]


def partition_batches(batches, parts: int, part: int, seed: int):
    """The task's training batches restricted to part ``part`` of ``parts`` (image batches:
    the items of that part, batched, shuffled and augmented as before)."""
    from attnkd.errors import ConfigError
    from attnkd.vision.data import ImageBatches
    from attnkd.vision.idx import ImageSet

    if not isinstance(batches, ImageBatches):
        raise ConfigError(
            "strategy.partitions", "data partitions are supported for image_classification only"
        )
    idx = partition_indices(len(batches.data), parts, seed)[part]
    data = ImageSet(batches.data.images[idx], batches.data.labels[idx])
    return ImageBatches(data, batches.batch_size, batches.seed, batches.pad, batches.flip)
