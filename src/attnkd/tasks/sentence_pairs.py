"""Pair-aware batches for the cached sentence teachers (``data.pair_batches: true``).

A batch of unrelated sentences holds almost only near-zero similarities, while STS is about
graded similarity of related sentences. Here every batch is made of whole training pairs of the
pair sources (``stsb:train``, ``mrpc:train``, ``rte:train``): both sentences of each pair land in
the same batch, so the teachers' similarity matrix holds the pair's graded similarity next to
the unrelated ones, and ``sentence_pair_rank`` can rank the batch's pairs as the teacher does.

Pairs are matched to the training corpus by :func:`~attnkd.data.overlap.sentence_key`: a pair
with a sentence that is not in the corpus (held out for sharing a sentence with the evaluation or
selection split or an excluded file, too short, cut by ``max_sentences``) is dropped whole, so
the hygiene of :func:`~attnkd.tasks.sentence.build_sentence_corpus` carries over to the pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attnkd.config.schema import DistillConfig
from attnkd.data.collate import DynamicPaddingCollator, TokenizedTexts
from attnkd.data.corpus import Corpus
from attnkd.data.overlap import sentence_key
from attnkd.data.sources import PAIR_SOURCES, source_pair_scores, source_pairs
from attnkd.errors import ConfigError


@dataclass
class CorpusPairs:
    """The training pairs, as row indices into the corpus, and what was left out."""

    pairs: list[tuple[int, int]]
    gold: list[float] = field(default_factory=list)
    """Gold similarity in [0, 1] of each kept pair (STS-B ``score / 5``); NaN where the source
    has no graded score (MRPC, RTE) and for mined pairs."""
    read: dict[str, int] = field(default_factory=dict)
    """Pairs in each pair source."""
    dropped: int = 0
    """Pairs with a sentence missing from the corpus, or twice the same sentence."""
    repeated: int = 0
    """Pairs already taken (the same two sentences, in either order)."""
    mined: int = 0
    """Pairs added by :func:`mine_pairs` (not already a source pair)."""
    unpaired: int = 0
    """Corpus sentences in no kept pair: pair batches never train on them."""

    def as_dict(self) -> dict:
        out = asdict(self)
        out["kept"] = len(out.pop("pairs"))
        gold = out.pop("gold")
        out["scored"] = sum(1 for g in gold if g == g)
        return out


def corpus_pairs(
    cfg: DistillConfig, corpus: Corpus, mined: list[tuple[int, int]] = ()
) -> CorpusPairs:
    """The pairs of ``data.train_sources`` whose two sentences are both in ``corpus``, then the
    ``mined`` pairs (corpus rows) not among them; a ConfigError naming ``data.pair_batches``
    when there are none."""
    d = cfg.data
    index: dict[str, int] = {}
    for i, text in enumerate(corpus.sentences):
        index.setdefault(sentence_key(text), i)
    out, seen = CorpusPairs([]), set()
    for spec in d.train_sources:
        if spec not in PAIR_SOURCES:
            continue
        pairs = source_pairs(spec, d.data_dir, bad_rows=d.bad_rows)
        scores = source_pair_scores(spec, d.data_dir, bad_rows=d.bad_rows) or [None] * len(pairs)
        out.read[spec] = len(pairs)
        for (a, b), gold in zip(pairs, scores, strict=True):
            ia, ib = index.get(sentence_key(a)), index.get(sentence_key(b))
            if ia is None or ib is None or ia == ib:
                out.dropped += 1
            elif (key := (min(ia, ib), max(ia, ib))) in seen:
                out.repeated += 1
            else:
                seen.add(key)
                out.pairs.append((ia, ib))
                out.gold.append(float("nan") if gold is None else float(gold))
    for ia, ib in mined:
        if ia != ib and (key := (min(ia, ib), max(ia, ib))) not in seen:
            seen.add(key)
            out.pairs.append((ia, ib))
            out.gold.append(float("nan"))
            out.mined += 1
    if not out.pairs:
        raise ConfigError("data.pair_batches", f"no training pair left in {d.train_sources}: "
                          f"pair batches need one of {list(PAIR_SOURCES)} or "
                          "data.mined_pairs > 0")  # fmt: skip
    paired = {i for p in out.pairs for i in p}
    out.unpaired = len(corpus.sentences) - len(paired)
    return out


def mine_pairs(
    targets: list[Tensor], weights: list[float], k: int, block: int = 1024
) -> list[tuple[int, int]]:
    """Teacher-mined related pairs: each row with its ``k`` nearest other rows by the teachers'
    cosine similarity (their matrices averaged with ``weights``, as the ensemble target is).

    ``targets``: each teacher's (n, width_i) embeddings of the same n sentences. Returns
    ``n * k`` pairs ``(row, neighbour)``, nearest first; similarities are computed ``block`` rows
    at a time, so memory stays at ``block x n``."""
    n = targets[0].shape[0]
    if k < 1 or k >= n:
        raise ConfigError("data.mined_pairs", f"must be in [1, {n - 1}] (the corpus has {n} "
                          f"sentences), got {k}")  # fmt: skip
    total = float(sum(weights))
    units = [F.normalize(t.float(), dim=-1) for t in targets]
    out: list[tuple[int, int]] = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = sum((w / total) * (u[start:stop] @ u.T) for w, u in zip(weights, units))
        sims[torch.arange(stop - start), torch.arange(start, stop)] = float("-inf")
        nearest = sims.topk(k, dim=1).indices.tolist()
        out += [(start + i, j) for i, row in enumerate(nearest) for j in row]
    return out


class PairBatches:
    """Batches of ``batch_size // 2`` whole pairs, shuffled by ``(seed, epoch)``, addressable
    by (epoch, index) for exact resume. ``batch_at`` gives the padded token batch, ``rows``
    (batch,) the corpus row of each sentence, ``pairs`` (batch // 2, 2) the batch rows of
    each pair (``[[0, 1], [2, 3], ...]``) and ``gold`` (batch // 2,) each pair's gold
    similarity (NaN where unknown; all NaN when ``gold`` is not given)."""

    def __init__(
        self,
        sentences: list[str],
        pairs: list[tuple[int, int]],
        tokenizer,
        batch_size: int,
        max_length: int,
        seed: int,
        gold: list[float] | None = None,
    ):
        if batch_size < 2 or batch_size % 2:
            raise ConfigError("train.batch_size", f"pair batches hold two sentences per pair: "
                              f"use an even batch size >= 2, got {batch_size}")  # fmt: skip
        self.per_batch = batch_size // 2
        if len(pairs) < self.per_batch:
            raise ConfigError("train.batch_size", f"{batch_size} sentences is more than the "
                              f"{len(pairs)} training pairs hold")  # fmt: skip
        self.pairs = np.asarray(pairs, dtype=np.int64)
        if gold is not None and len(gold) != len(pairs):
            raise ValueError(f"{len(gold)} gold scores for {len(pairs)} pairs")
        self.gold = np.full(len(pairs), np.nan) if gold is None else np.asarray(gold, float)
        self.seed = seed
        self.collate = DynamicPaddingCollator(tokenizer, max_length=max_length)
        self.tokens = TokenizedTexts(tokenizer, sentences, max_length)
        self._epoch, self._order = -1, np.zeros(0, dtype=np.int64)

    @property
    def num_batches(self) -> int:
        return len(self.pairs) // self.per_batch

    def _picked(self, epoch: int, index: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        return self._order[index * self.per_batch : (index + 1) * self.per_batch]

    def pairs_at(self, epoch: int, index: int) -> np.ndarray:
        """(batch // 2, 2) corpus rows of the pairs of batch ``index`` of ``epoch``."""
        return self.pairs[self._picked(epoch, index)]

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        picked = self._picked(epoch, index)
        rows = self.pairs[picked].reshape(-1).tolist()
        batch = self.collate.pad([self.tokens.ids(r) for r in rows])
        batch["rows"] = torch.tensor(rows, dtype=torch.long)
        batch["pairs"] = torch.arange(len(rows), dtype=torch.long).view(-1, 2)
        batch["gold"] = torch.tensor(self.gold[picked], dtype=torch.float32)
        return batch
