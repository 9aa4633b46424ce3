"""Batch order that can be positioned: batch ``i`` of epoch ``e`` depends only on (seed, e, i).

The loop asks for micro-batch ``m = step * grad_accum + j`` as
``batch_at(*divmod(m, num_batches))``, so resuming at optimizer step ``k`` sees exactly the
batches an uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from attnkd.errors import AttnkdError


@runtime_checkable
class ResumableBatches(Protocol):
    """Deterministically ordered batches; the order may depend only on (seed, epoch, index)."""

    @property
    def num_batches(self) -> int:
        """Batches per epoch (>= 1)."""
        ...

    def batch_at(self, epoch: int, index: int) -> Any:
        """Batch ``index`` (0 <= index < num_batches) of ``epoch``."""
        ...


def position(micro_batch: int, num_batches: int) -> tuple[int, int]:
    """(epoch, index) of the ``micro_batch``-th batch drawn since the start of training."""
    return divmod(micro_batch, num_batches)


class ShuffledBatches:
    """``items`` reshuffled every epoch by a generator seeded from (seed, epoch), then collated.

    Args:
        items: the dataset (any sequence; only indexed).
        batch_size: items per batch.
        collate: list of items -> batch (whatever ``step_fn`` takes).
        seed: shuffling seed.
        drop_last: drop each epoch's incomplete final batch (keeps shapes and loss weights even);
            a dataset smaller than one batch still yields one batch of all items.
        shuffle: False keeps the original order every epoch.
    """

    def __init__(
        self,
        items: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        seed: int = 0,
        drop_last: bool = True,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise AttnkdError(f"batch_size must be >= 1, got {batch_size}")
        if len(items) == 0:
            raise AttnkdError("cannot make batches from an empty dataset")
        self.items = items
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.drop_last = drop_last
        self.shuffle = shuffle
        n = len(items)
        self._num_batches = max(1, n // batch_size if drop_last else math.ceil(n / batch_size))
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None

    @property
    def num_batches(self) -> int:
        return self._num_batches

    def order(self, epoch: int) -> np.ndarray:
        """Item indices of ``epoch`` in the order they are batched."""
        if self._perm_epoch != epoch:
            n = len(self.items)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                self._perm = rng.permutation(n)
            else:
                self._perm = np.arange(n)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def indices_at(self, epoch: int, index: int) -> list[int]:
        """Item indices that make up batch ``index`` of ``epoch``."""
        if not 0 <= index < self._num_batches:
            raise IndexError(f"batch index {index} out of range [0, {self._num_batches})")
        perm = self.order(epoch)
        return [int(i) for i in perm[index * self.batch_size : (index + 1) * self.batch_size]]

    def batch_at(self, epoch: int, index: int) -> Any:
        return self.collate([self.items[i] for i in self.indices_at(epoch, index)])

    def __len__(self) -> int:
        return self._num_batches
