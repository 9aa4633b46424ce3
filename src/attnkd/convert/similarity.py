"""Which layers attend alike (EchoAtt's analysis): attention similarity between every pair of
layers on calibration data, the first step of shared attention (a later layer reusing an
earlier layer's attention probabilities). Rajabzadeh et al. 2024, EchoAtt.

For every pair of layers (i, j) and every head h, rows of the attention matrices are compared
on real query tokens: mean Jensen-Shannon divergence (nats, 0 = identical, ln 2 at most) and
mean cosine similarity, averaged over heads, rows and calibration batches. Attention maps come
from the eager path (``output_attentions=True``), one batch at a time (short calibration
sequences: the maps are seq x seq).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


def attention_row_similarity(
    p: Tensor, q: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean Jensen-Shannon divergence and mean cosine of attention rows.

    p, q: (B, H, S, S) attention probabilities (rows sum to 1 over allowed keys); mask (B, S)
    bool, True = real query. Returns two scalars (mean over batch, heads and real rows).
    """
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)
    kl_pm = torch.xlogy(p, p).sum(-1) - torch.xlogy(p, m).sum(-1)
    kl_qm = torch.xlogy(q, q).sum(-1) - torch.xlogy(q, m).sum(-1)
    js = 0.5 * (kl_pm + kl_qm)  # (B, H, S)
    cos = (p * q).sum(-1) / (p.norm(dim=-1) * q.norm(dim=-1)).clamp_min(1e-30)
    if mask is None:
        return js.mean(), cos.mean()
    w = mask[:, None, :].expand_as(js).double()
    n = w.sum().clamp_min(1.0)
    return (js * w).sum() / n, (cos * w).sum() / n


@dataclass
class SimilarityTable:
    """Layer x layer similarities (symmetric; js[i][i] = 0, cosine[i][i] = 1)."""

    js: list[list[float]]
    cosine: list[list[float]]
    batches: int
    tokens: int

    def suggest(self, max_js: float = 0.05) -> dict[int, int]:
        """Layer -> the earliest earlier layer whose attention it is within ``max_js`` of
        (a candidate for reuse), chaining to the first layer of each run as EchoAtt does."""
        share: dict[int, int] = {}
        for j in range(1, len(self.js)):
            for i in range(j):
                if self.js[i][j] <= max_js:
                    share[j] = share.get(i, i)
                    break
        return share

    def choose_sharing(self, count: int) -> dict[int, int]:
        """``count`` layers that reuse an earlier layer's attention, most alike first: pairs
        (i < j) in order of JS divergence, taken when j is neither shared nor a source yet and
        i is not itself shared (EchoAtt's choice without a threshold)."""
        pairs = sorted((self.js[i][j], i, j) for j in range(len(self.js)) for i in range(j))
        share: dict[int, int] = {}
        for _, i, j in pairs:
            if len(share) >= count:
                break
            if j in share or j in share.values() or i in share:
                continue
            share[j] = i
        return dict(sorted(share.items()))

    def format(self) -> str:
        n = len(self.js)
        head = "JS divergence (nats) between layers' attention; lower = more alike\n"
        lines = [head + "      " + "".join(f"{j:>8d}" for j in range(n))]
        for i in range(n):
            lines.append(f"{i:>6d}" + "".join(f"{self.js[i][j]:8.4f}" for j in range(n)))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def attention_similarity(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> SimilarityTable:
    """Similarity of every pair of layers' attention over ``batches`` (``input_ids``,
    ``attention_mask``); ``model`` must run eager attention (it is set for the call)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    js = cos = None
    count = tokens = 0
    try:
        with torch.no_grad():
            for batch in batches:
                mask = batch["attention_mask"].bool()
                out = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    output_attentions=True,
                )
                maps = out.attentions
                n = len(maps)
                if js is None:
                    js = torch.zeros(n, n, dtype=torch.float64)
                    cos = torch.zeros(n, n, dtype=torch.float64)
                for i in range(n):
                    for j in range(i + 1, n):
                        d, c = attention_row_similarity(maps[i], maps[j], mask)
                        js[i, j] += d
                        cos[i, j] += c
                count += 1
                tokens += int(mask.sum())
    finally:
        model.set_attn_implementation(previous)
    if js is None:
        raise ValueError("attention_similarity needs at least one batch")
    js, cos = js / count, cos / count  # upper triangles; mirror them
    js = js + js.T
    cos = cos + cos.T + torch.eye(len(cos), dtype=cos.dtype)
    return SimilarityTable(js.tolist(), cos.tolist(), count, tokens)
