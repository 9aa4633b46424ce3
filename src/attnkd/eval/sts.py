"""STS evaluation: Spearman correlation between cosine similarity and gold scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from attnkd.eval.encode import encode


@dataclass
class StsResult:
    spearman: float
    """Spearman x 100 of cos(emb1, emb2) against the gold scores."""
    pearson: float
    n: int


def sts_eval(
    model: nn.Module,
    tokenizer,
    sentences1: Sequence[str],
    sentences2: Sequence[str],
    scores: Sequence[float],
    max_length: int = 128,
    batch_size: int = 64,
) -> StsResult:
    """Cosine of mean-pooled embeddings vs gold scores on one split (protocol of SBERT)."""
    if not (len(sentences1) == len(sentences2) == len(scores)):
        raise ValueError("sentences1, sentences2 and scores must have the same length")
    uniq = sorted(set(sentences1) | set(sentences2))
    emb = encode(model, tokenizer, uniq, batch_size=batch_size, max_length=max_length)
    return sts_from_embeddings(dict(zip(uniq, emb)), sentences1, sentences2, scores)


def sts_from_embeddings(
    embeddings: Mapping[str, Tensor],
    sentences1: Sequence[str],
    sentences2: Sequence[str],
    scores: Sequence[float],
) -> StsResult:
    """The STS figures from ready embeddings (``sentence -> (width,)``), e.g. a teacher's
    cached ones; same protocol as :func:`sts_eval`."""
    if not (len(sentences1) == len(sentences2) == len(scores)):
        raise ValueError("sentences1, sentences2 and scores must have the same length")
    a = torch.stack([embeddings[s] for s in sentences1]).float()
    b = torch.stack([embeddings[s] for s in sentences2]).float()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()
    gold = torch.tensor(list(scores), dtype=torch.float64).numpy()
    rho = spearmanr(cos, gold).statistic
    pear = float(
        torch.corrcoef(torch.stack([torch.from_numpy(cos).double(), torch.from_numpy(gold)]))[0, 1]
    )
    return StsResult(spearman=100.0 * float(rho), pearson=100.0 * pear, n=len(scores))
