"""DDK domain-aware data mixture (Liu et al. 2024, "DDK: Distilling Domain Knowledge for
Efficient Large Language Models"; METHODS.md section 4).

The training data is split into domains (for sequence classification: the labelled rows and
each unlabeled source). Every ``every`` micro-batches the teacher-student loss gap of each domain
is measured on rows held out of training, and the domains are sampled in proportion to the
smoothed gap:

    g_d = max(L_S(d) - L_T(d), 0)                      the gap of domain d
    ĝ  <- smooth · ĝ + (1 - smooth) · g                  (the first update: ĝ = g)
    w_d = floor / N + (1 - floor) · ĝ_d / Σ ĝ            (uniform when every ĝ_d is 0)

so domains where the student lags the teacher most get more of each batch, and every domain
keeps at least ``floor / N`` of it. DDK's paper smooths a softmax of the loss *ratio*; this
follows METHODS.md's rule (proportional to the smoothed gap).

The weights live in :class:`MixtureState` buffers, which the runner keeps inside the trained
module: they are checkpointed with the student, so ``--resume`` continues with exactly the
weights and history an uninterrupted run would have, and they are never exported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnkd.errors import AttnkdError, ConfigError

log = logging.getLogger("attnkd")

__all__ = ["DomainMixtureBatches", "MixtureState", "MixtureUpdate", "ddk_update"]


@dataclass
class MixtureUpdate:
    """New sampling ``weights`` (a distribution over domains) and the ``smoothed`` gap."""

    weights: Tensor
    smoothed: Tensor


def ddk_update(
    gaps: Tensor, smoothed: Tensor | None = None, smooth: float = 0.5, floor: float = 0.1
) -> MixtureUpdate:
    """One DDK update from the per-domain gaps ``L_S - L_T`` (domains,) (negative ones count as
    0); ``smoothed`` is the previous smoothed gap (None on the first update). Returns float64."""
    if not 0.0 <= smooth < 1.0:
        raise ValueError(f"smooth must be in [0, 1), got {smooth}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    g = gaps.detach().double().clamp_min(0.0)
    if not torch.isfinite(g).all():
        raise AttnkdError(f"data.mixture: a domain's loss gap is not finite ({g.tolist()})")
    s = g if smoothed is None else smooth * smoothed.double() + (1.0 - smooth) * g
    n = g.numel()
    total = s.sum()
    share = s / total if total > 0 else torch.full_like(s, 1.0 / n)
    return MixtureUpdate(weights=floor / n + (1.0 - floor) * share, smoothed=s)


MAX_UPDATES = 4096
"""Rows of the checkpointed history: fixed, so a run resumed with more steps loads its state."""


class MixtureState(nn.Module):
    """The mixture's state as buffers (checkpointed with the trained module): current
    ``weights`` and ``smoothed`` gap (domains,), ``history`` (updates, domains) of every
    update's weights (NaN rows not reached yet), ``gaps`` of every update, ``updates`` done and
    the micro-batch ``position`` of the last one (-1: none yet)."""

    def __init__(self, domains: int, max_updates: int = MAX_UPDATES):
        super().__init__()
        self.register_buffer("weights", torch.full((domains,), 1.0 / domains, dtype=torch.float64))
        self.register_buffer("smoothed", torch.zeros(domains, dtype=torch.float64))
        self.register_buffer("history", torch.full((max_updates, domains), float("nan"),
                                                   dtype=torch.float64))  # fmt: skip
        self.register_buffer("gaps", torch.full((max_updates, domains), float("nan"),
                                                dtype=torch.float64))  # fmt: skip
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("position", torch.full((), -1, dtype=torch.long))

    def record(self) -> dict[str, list]:
        """The updates so far: ``weights`` and ``gaps`` per update (lists of lists)."""
        n = int(self.updates)
        return {"weights": self.history[:n].tolist(), "gaps": self.gaps[:n].tolist()}


class DomainMixtureBatches:
    """Batches whose rows are drawn from ``domains`` by the current DDK weights.

    Micro-batch ``m = epoch * num_batches + index``: when ``m`` is a multiple of ``every`` and
    no update was made there yet, ``measure()`` gives the per-domain gaps (domains,) and the
    weights are updated; then the batch's rows per domain are drawn from a multinomial of the
    weights and, within a domain, uniformly without replacement, both seeded by (seed, m). A
    batch therefore depends only on (seed, m, the state), and the state is checkpointed.
    ``collate(rows, m)`` makes the batch (a dict with ``labels``); the current weights ride
    along as ``batch["mixture_weights"]`` (one copy per row, so rank sharding splits it too)
    for logging.
    """

    def __init__(
        self,
        domains: Sequence[Sequence[Any]],
        names: Sequence[str],
        batch_size: int,
        seed: int,
        collate: Callable[[list[Any], int], dict],
        measure: Callable[[], Tensor],
        every: int,
        state: MixtureState,
        smooth: float = 0.5,
        floor: float = 0.1,
    ):
        if len(domains) < 2 or any(len(d) == 0 for d in domains):
            sizes = dict(zip(names, (len(d) for d in domains), strict=True))
            raise AttnkdError(f"data.mixture needs two or more non-empty domains, got {sizes}")
        self.domains, self.names = domains, list(names)
        self.batch_size, self.seed, self.every = batch_size, seed, every
        self.collate, self.measure, self.state = collate, measure, state
        self.smooth, self.floor = smooth, floor
        self._num_batches = max(1, sum(len(d) for d in domains) // batch_size)

    @property
    def num_batches(self) -> int:
        return self._num_batches

    def _maybe_update(self, m: int) -> None:
        st = self.state
        if m % self.every or m <= int(st.position):
            return
        u = int(st.updates)
        if u >= st.history.shape[0]:
            raise ConfigError(
                "data.mixture_every",
                f"the mixture keeps {u} updates at most; update less often (raise "
                "data.mixture_every)",
            )
        gaps = self.measure().detach().to(st.weights.device, torch.float64)
        new = ddk_update(gaps, st.smoothed if u else None, self.smooth, self.floor)
        st.weights.copy_(new.weights)
        st.smoothed.copy_(new.smoothed)
        st.history[u].copy_(new.weights)
        st.gaps[u].copy_(gaps)
        st.updates.fill_(u + 1)
        st.position.fill_(m)
        log.info("data.mixture at micro-batch %d: %s", m, ", ".join(
            f"{n} {w:.3f} (gap {g:+.4f})" for n, w, g in
            zip(self.names, new.weights.tolist(), gaps.tolist(), strict=True)))  # fmt: skip

    def rows_at(self, m: int) -> list[Any]:
        """The rows of micro-batch ``m`` under the current weights."""
        p = self.state.weights.detach().cpu().double().numpy()
        rng = np.random.default_rng([self.seed, m])
        counts = rng.multinomial(self.batch_size, p / p.sum())
        rows: list[Any] = []
        for domain, c in zip(self.domains, counts, strict=True):
            idx = rng.choice(len(domain), size=int(c), replace=int(c) > len(domain))
            rows.extend(domain[int(i)] for i in idx)
        return rows

    def batch_at(self, epoch: int, index: int) -> dict:
        m = epoch * self._num_batches + index
        self._maybe_update(m)
        batch = self.collate(self.rows_at(m), m)
        w = self.state.weights.detach().float().cpu()
        batch["mixture_weights"] = w.expand(len(batch["labels"]), -1).clone()  # one per row
        return batch
