"""Causal-LM data: raw documents, one token stream, fixed-size blocks and their batches.

A causal LM is trained and scored on consecutive blocks of a token stream, not on sentences:
each source becomes one document (its lines joined by newlines, text kept as written), the
documents are tokenised without special tokens and joined with the tokenizer's end-of-text id,
and the stream is cut into disjoint blocks of ``block_size`` tokens. The train / select / eval
splits are taken by position (eval at the end, select just before it), so no block, and no
token, is shared between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attnkd.data.benchmarks import PathLike
from attnkd.data.rows import check_bad_rows
from attnkd.data.sources import load_source
from attnkd.engine.batches import ShuffledBatches
from attnkd.errors import AttnkdError, ConfigError

_LINES_PER_CALL = 4096
"""Lines handed to the tokenizer per call (bounds peak memory, keeps the fast batch path)."""
MIN_LINE_KEY = 24
"""Shortest normalised line (letters and digits) whose repeat in training counts as a copy of
held-out text."""


def lm_texts(
    sources: Sequence[str], data_dir: PathLike | None = None, bad_rows: str = "error"
) -> list[str]:
    """One document per source spec (see :mod:`attnkd.data.sources`): its lines joined by "\\n".

    Text is kept as the source loader gives it: no length filter, no de-duplication. A source
    listed twice or giving no text at all is a :class:`ConfigError`.
    """
    check_bad_rows(bad_rows)
    if not sources:
        raise ConfigError("data.train_sources", "no sources given")
    docs: list[str] = []
    seen: set[str] = set()
    for spec in sources:
        if spec in seen:
            raise ConfigError("data.train_sources", f"source {spec!r} is listed twice")
        seen.add(spec)
        lines = list(load_source(spec, data_dir, bad_rows=bad_rows))
        if not any(line.strip() for line in lines):
            raise ConfigError("data.train_sources", f"source {spec!r} gave no text")
        docs.append("\n".join(lines))
    return docs


@dataclass
class TokenStream:
    """Token ids of several documents and where each of their lines sits in the stream."""

    ids: np.ndarray
    lines: list[str]
    """Every line of every document, in stream order."""
    spans: np.ndarray
    """(num_lines, 2) int64: token ``[start, end)`` of each line in ``ids``."""


def tokenize_stream(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Token ids of ``texts`` as one int64 stream: ``doc_0 <eos> doc_1 <eos> ... doc_n``.

    No special tokens are added (no BOS); the tokenizer's ``eos_token_id`` separates documents
    (none after the last). Each document is tokenised line by line (each line keeps its
    trailing newline), so long documents are fast and never trigger the tokenizer's
    "longer than the maximum length" warning. The ids are exactly the concatenation of the
    lines' ids; with byte-level BPE this can differ from tokenising the whole document at once
    only where a merge would cross a line end.
    """
    return tokenize_lines(tokenizer, texts).ids


def tokenize_lines(tokenizer: Any, texts: Sequence[str]) -> TokenStream:
    """:func:`tokenize_stream` that also records each line's token span."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise AttnkdError("the tokenizer has no eos token to separate documents with")
    parts: list[np.ndarray] = []
    all_lines: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for d, text in enumerate(texts):
        if d:
            parts.append(np.asarray([eos], dtype=np.int64))
            pos += 1
        lines = text.splitlines(keepends=True)
        for start in range(0, len(lines), _LINES_PER_CALL):
            chunk = lines[start : start + _LINES_PER_CALL]
            enc = tokenizer(chunk, add_special_tokens=False, verbose=False)
            for line, ids in zip(chunk, enc["input_ids"], strict=True):
                parts.append(np.asarray(ids, dtype=np.int64))
                all_lines.append(line)
                spans.append((pos, pos + len(ids)))
                pos += len(ids)
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return TokenStream(ids, all_lines, np.asarray(spans, dtype=np.int64).reshape(-1, 2))


@dataclass
class HeldOutCopies:
    """Training blocks dropped because they repeat a line of the select / eval blocks."""

    lines: int
    """Training lines whose normalised text is also a held-out line."""
    blocks: int
    """Training blocks holding any such line (dropped)."""


@dataclass
class LMSplits:
    """Disjoint blocks of one token stream, split by position (train, then select, then eval).

    Each split is an int64 tensor (num_blocks, block_size); blocks keep stream order.
    """

    train: Tensor
    select: Tensor
    """Blocks evaluated during training to pick the best checkpoint."""
    eval: Tensor
    """The final held-out blocks (the end of the stream)."""
    block_size: int
    dropped_tokens: int
    """Tokens at the end of the stream that did not fill a whole block."""
    copies: HeldOutCopies | None = None
    """Set by :func:`drop_held_out_copies`: training blocks dropped for repeating held-out text."""


def _count(fraction: float, n: int) -> int:
    return max(1, int(fraction * n + 0.5))


def split_blocks(
    ids: np.ndarray | Sequence[int], block_size: int, val_fraction: float, eval_fraction: float
) -> LMSplits:
    """Cut ``ids`` into ``n = len(ids) // block_size`` consecutive blocks and split them.

    eval = the last ``round(eval_fraction * n)`` blocks, select = the ``round(val_fraction * n)``
    just before them, train = the rest; each gets at least one block, else
    :class:`AttnkdError` naming the sizes. The incomplete tail is dropped.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise AttnkdError(f"token ids must be one flat stream, got shape {ids.shape}")
    if block_size < 2:
        raise AttnkdError(f"block_size must be at least 2 (next-token pairs), got {block_size}")
    for name, f in (("val_fraction", val_fraction), ("eval_fraction", eval_fraction)):
        if not 0.0 < f < 1.0:
            raise AttnkdError(f"{name} must be in (0, 1), got {f}")
    n = len(ids) // block_size
    n_eval, n_select = _count(eval_fraction, n), _count(val_fraction, n)
    n_train = n - n_eval - n_select
    if n_train < 1:
        raise AttnkdError(
            f"{len(ids)} tokens make {n} blocks of {block_size}: too few for {n_select} select "
            f"+ {n_eval} eval blocks and at least one train block; use more text or a smaller "
            "block_size"
        )
    blocks = torch.from_numpy(ids[: n * block_size].astype(np.int64).reshape(n, block_size))
    return LMSplits(
        train=blocks[:n_train],
        select=blocks[n_train : n_train + n_select],
        eval=blocks[n_train + n_select :],
        block_size=block_size,
        dropped_tokens=len(ids) - n * block_size,
    )


def drop_held_out_copies(
    splits: LMSplits, stream: TokenStream, min_key: int = MIN_LINE_KEY
) -> LMSplits:
    """``splits`` without the training blocks that hold a copy of a held-out line (counted in
    the result's ``copies``).

    The select and eval blocks are the end of the stream; when a training source repeats text
    that lands there (the same file listed under two specs, a document that quotes another),
    the model would train on evaluation text. Lines are compared by
    :func:`attnkd.data.overlap.sentence_key` (case, punctuation and spacing ignored); keys
    shorter than ``min_key`` characters (a speaker's name, "Amen.") are too common to count.
    A line crossing the train/held-out boundary counts as held out.
    """
    from attnkd.data.overlap import sentence_key

    size = splits.block_size
    held_start = len(splits.train) * size
    keys = [sentence_key(line) for line in stream.lines]
    held = {k for k, (_, end) in zip(keys, stream.spans, strict=True)
            if end > held_start and len(k) >= min_key}  # fmt: skip
    bad: set[int] = set()
    lines = 0
    for k, (start, end) in zip(keys, stream.spans, strict=True):
        if end <= held_start and k in held and end > start:
            lines += 1
            bad.update(range(int(start) // size, (int(end) - 1) // size + 1))
    if len(bad) >= len(splits.train):
        raise AttnkdError(
            f"every training block repeats text of the select/eval blocks ({lines} lines): "
            "the training sources hold the held-out text twice; list each file once"
        )
    keep = torch.tensor([i for i in range(len(splits.train)) if i not in bad], dtype=torch.long)
    copies = HeldOutCopies(lines=lines, blocks=len(bad))
    return LMSplits(
        splits.train[keep], splits.select, splits.eval, size, splits.dropped_tokens, copies
    )


class LMBatches:
    """Resumable batches of token blocks (satisfies ``engine.batches.ResumableBatches``).

    Each epoch the blocks are reshuffled by ``numpy.random.default_rng([seed, epoch])`` and cut
    into batches of ``batch_size`` (the incomplete last batch is dropped; fewer blocks than one
    batch give one batch of all blocks). ``batch_at(epoch, index)`` returns
    ``{"input_ids": (B, L) int64, "attention_mask": (B, L) int64 ones}`` and depends only on
    (seed, epoch, index).
    """

    def __init__(self, blocks: Tensor, batch_size: int, seed: int = 0):
        if blocks.dim() != 2 or blocks.dtype != torch.int64:
            raise AttnkdError(
                f"blocks must be an int64 (num_blocks, block_size) tensor, got "
                f"{blocks.dtype} {tuple(blocks.shape)}"
            )
        self.blocks = blocks
        self.seed = seed
        self._order = ShuffledBatches(range(blocks.shape[0]), batch_size, list, seed=seed)

    @property
    def num_batches(self) -> int:
        return self._order.num_batches

    @property
    def batch_size(self) -> int:
        return self._order.batch_size

    def indices_at(self, epoch: int, index: int) -> list[int]:
        """Block indices that make up batch ``index`` of ``epoch``."""
        return self._order.indices_at(epoch, index)

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        ids = self.blocks[torch.tensor(self.indices_at(epoch, index), dtype=torch.long)]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def __len__(self) -> int:
        return self.num_batches
