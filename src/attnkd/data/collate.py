"""Batching: dynamic padding, seeded per-epoch batch orders, length-grouped batches.

Batch orders are lists of index lists computed from ``(seed, epoch)`` alone, so a resumed run
that skips the first ``k`` batches of an epoch sees exactly the batches it would have seen.
Generators are local (``numpy.random.default_rng([seed, epoch])``); global RNG state is never
touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError("tokenizer has neither a pad nor an eos token to pad with")


def token_lengths(tokenizer: Any, sentences: Sequence[str], max_length: int = 128) -> list[int]:
    """Token count of each sentence (special tokens included, capped at ``max_length``)."""
    enc = tokenizer(list(sentences), truncation=True, max_length=max_length)
    return [len(ids) for ids in enc["input_ids"]]


class TokenizedTexts:
    """Token ids of many texts, tokenised once and kept compactly (one flat int32 array).

    ``ids(i)`` gives text ``i``'s ids (special tokens included, at most ``max_length``);
    ``lengths`` their counts. Tokenises in blocks of ``block`` texts to bound peak memory.
    """

    def __init__(
        self, tokenizer: Any, texts: Sequence[str], max_length: int = 128, block: int = 8192
    ):
        parts, lengths = [], []
        for start in range(0, len(texts), block):
            chunk = list(texts[start : start + block])
            enc = tokenizer(chunk, truncation=True, max_length=max_length)
            for seq in enc["input_ids"]:
                parts.append(np.asarray(seq, dtype=np.int32))
                lengths.append(len(seq))
        self.lengths = lengths
        self._offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        self._flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.lengths)

    def ids(self, index: int) -> list[int]:
        return self._flat[self._offsets[index] : self._offsets[index + 1]].tolist()


class DynamicPaddingCollator:
    """Tokenise a batch of sentences and pad to the longest one in the batch.

    Returns ``input_ids`` and ``attention_mask``, int64 tensors of shape [B, L] where L is the
    longest tokenised sentence (at most ``max_length``); the pad side follows the tokenizer's
    ``padding_side``. Tokenizers without a pad token pad with eos (mask 0 either way).
    """

    def __init__(self, tokenizer: Any, max_length: int = 128, token_type_ids: bool = False):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.token_type_ids = token_type_ids
        self.pad_id = _pad_id(tokenizer)
        self.left = getattr(tokenizer, "padding_side", "right") == "left"

    def __call__(self, batch: Sequence[str]) -> dict[str, torch.Tensor]:
        if not batch:
            raise ValueError("cannot collate an empty batch")
        bad = [type(s).__name__ for s in batch if not isinstance(s, str)]
        if bad:
            raise TypeError(f"expected a batch of strings, found {bad[0]}")
        enc = self.tokenizer(list(batch), truncation=True, max_length=self.max_length)
        types = enc.get("token_type_ids") if self.token_type_ids else None
        return self.pad(enc["input_ids"], types)

    def pad(
        self, seqs: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Pad already tokenised ids (e.g. from :class:`TokenizedTexts`) like ``__call__``;
        ``token_type_ids`` are 0 where ``type_ids`` is not given (single-segment texts)."""
        if not seqs:
            raise ValueError("cannot collate an empty batch")
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        types = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            cols = slice(width - len(seq), width) if self.left else slice(0, len(seq))
            ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
            if type_ids is not None:
                types[row, cols] = torch.tensor(type_ids[row], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if self.token_type_ids:
            out["token_type_ids"] = types
        return out


def batches(
    items: Sized | int,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[list[int]]:
    """Index batches for one epoch, shuffled by ``(seed, epoch)``; resume with ``[k:]``."""
    n = items if isinstance(items, int) else len(items)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = _epoch_rng(seed, epoch).permutation(n) if shuffle else np.arange(n)
    out = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    if drop_last and out and len(out[-1]) < batch_size:
        out.pop()
    return out


class LengthGroupedBatches:
    """Batch sampler that puts sentences of similar length together to cut padding.

    Per epoch: shuffle all indices by ``(seed, epoch)``, sort each window of
    ``group_batches * batch_size`` indices by length (longest first), cut it into batches,
    then shuffle the order of all batches. Usable as a DataLoader ``batch_sampler``
    (call ``set_epoch``) or directly through ``batches(epoch)``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        *,
        group_batches: int = 50,
        drop_last: bool = False,
    ):
        if batch_size < 1 or group_batches < 1:
            raise ValueError("batch_size and group_batches must be positive")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.group_batches = group_batches
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """Index batches of ``epoch`` (default: the one set by ``set_epoch``)."""
        rng = _epoch_rng(self.seed, self.epoch if epoch is None else epoch)
        order = rng.permutation(len(self.lengths))
        window = self.batch_size * self.group_batches
        out: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            for i in range(0, len(chunk), self.batch_size):
                batch = chunk[i : i + self.batch_size].tolist()
                if len(batch) == self.batch_size or not self.drop_last:
                    out.append(batch)
        return [out[i] for i in rng.permutation(len(out))]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        n, b = len(self.lengths), self.batch_size
        return n // b if self.drop_last else -(-n // b)
