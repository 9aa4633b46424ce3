"""DDK data mixture for sequence classification (``data.mixture: ddk``).

Domains: the task's labelled training rows (e.g. ``sst2:train``) and each
``data.unlabeled_sources`` entry (every held-out sentence removed; ``data.max_unlabeled`` caps
each). ``data.mixture_probe`` rows of every domain are held out of training to measure the
gap. A domain's loss, for teacher and student alike, is the mean over its probe rows of the
cross-entropy with the label, or, for an unlabeled row, with the teacher's probabilities (the
teacher's own loss there is its entropy, so the gap is KL(p_T ‖ p_S)). The sampler and the update
rule are :mod:`attnkd.data.mixture`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnkd.data.cls_splits import ClsExample, ClsSplits
from attnkd.data.mixture import MAX_UPDATES, DomainMixtureBatches, MixtureState
from attnkd.errors import ConfigError
from attnkd.losses.logits import IGNORE_INDEX

log = logging.getLogger("attnkd")

__all__ = ["Mixture", "build_mixture", "domain_loss", "mixture_domains"]


def domain_loss(logits: Tensor, labels: Tensor, teacher_probs: Tensor) -> Tensor:
    """Mean per-row loss of one domain: cross-entropy with the label where there is one
    (labels != -100), else soft cross-entropy with ``teacher_probs``.

    Shapes: logits, teacher_probs (rows, classes); labels (rows,). Returns a float64 scalar
    (gaps are differences of nearly equal losses: float32 would round small ones to 0).
    """
    logp = F.log_softmax(logits.double(), dim=-1)
    soft = -(teacher_probs.double() * logp).sum(-1)
    known = labels != IGNORE_INDEX
    hard = -logp.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
    return torch.where(known, hard, soft).mean()


def mixture_domains(cfg, splits: ClsSplits, labelled: list[ClsExample]) -> list[tuple]:
    """``(name, rows)`` per domain: the labelled rows, then one per unlabeled source."""
    from attnkd.data.corpus import build_corpus

    d = cfg.data
    held = {
        name: [s for e in rows for s in e.sentences()]
        for name, rows in ((splits.eval_name, splits.eval), (splits.select_name, splits.select))
    }
    domains = [(f"{splits.dataset}:train", labelled)]
    for spec in d.unlabeled_sources:
        corpus = build_corpus([spec], d.data_dir, max_sentences=d.max_unlabeled,
                              seed=cfg.train.seed, exclude=held, bad_rows=d.bad_rows)  # fmt: skip
        domains.append((spec, [ClsExample(s, IGNORE_INDEX) for s in corpus.sentences]))
    return domains


def _split_probe(rows: list, n: int, seed: int, name: str) -> tuple[list, list]:
    if len(rows) <= n:
        raise ConfigError(
            "data.mixture_probe",
            f"domain '{name}' has {len(rows)} rows; {n} probe rows would leave none to train on",
        )
    perm = np.random.default_rng(seed).permutation(len(rows))
    probe = set(int(i) for i in perm[:n])
    return [rows[i] for i in sorted(probe)], [r for i, r in enumerate(rows) if i not in probe]


@torch.no_grad()
def class_logits(model: nn.Module, encoded, batch_size: int = 64) -> Tensor:
    """(rows, classes) float32 logits of ``encoded`` rows (an ``Encoded``), in eval mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for i in range(0, len(encoded.rows), batch_size):
            batch = encoded.pad(encoded.rows[i : i + batch_size])
            batch.pop("labels")
            out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    finally:
        model.train(was)
    return torch.cat(out)


@dataclass
class Mixture:
    """The sampler, its checkpointed state and what the results report."""

    batches: DomainMixtureBatches
    state: MixtureState
    names: list[str]
    train_rows: list[int]


def build_mixture(
    cfg, splits: ClsSplits, labelled: list[ClsExample], encode: Callable, collate: Callable,
    teacher: nn.Module, student: nn.Module,
) -> Mixture:  # fmt: skip
    """The DDK sampler over this run's domains; ``encode(rows)`` -> an ``Encoded``,
    ``collate(rows, m)`` -> a training batch."""
    d, t = cfg.data, cfg.train
    probes, train, names = [], [], []
    for i, (name, rows) in enumerate(mixture_domains(cfg, splits, labelled)):
        probe, rest = _split_probe(rows, d.mixture_probe, t.seed + 7919 * (i + 1), name)
        probes.append(encode(probe))
        train.append(encode(rest).rows)
        names.append(name)
    labels = [torch.tensor(p.labels) for p in probes]
    teacher_probs: list[Tensor] = []
    teacher_loss: list[float] = []

    def measure() -> Tensor:
        if not teacher_probs:  # the teacher is frozen: its side is computed once
            for p, y in zip(probes, labels, strict=True):
                z = class_logits(teacher, p)
                teacher_probs.append(z.double().softmax(-1))
                teacher_loss.append(float(domain_loss(z, y, teacher_probs[-1])))
        gaps = [
            float(domain_loss(class_logits(student, p), y, q)) - lt
            for p, y, q, lt in zip(probes, labels, teacher_probs, teacher_loss, strict=True)
        ]
        return torch.tensor(gaps, dtype=torch.float64)

    every = d.mixture_every * t.grad_accum
    state = MixtureState(len(names))
    batches = DomainMixtureBatches(train, names, t.batch_size, t.seed, collate, measure, every,
                                   state, d.mixture_smooth, d.mixture_floor)  # fmt: skip
    log.info("data.mixture ddk over %s", ", ".join(f"{n} ({len(r)} rows)" for n, r in
                                                   zip(names, train, strict=True)))  # fmt: skip
    return Mixture(batches, state, names, [len(r) for r in train])


def check_mixture(cfg) -> None:
    """Static checks of the ``data.mixture*`` and ``data.mask_ratio`` keys and of the terms
    that need them (ConfigError naming the key)."""
    d = cfg.data
    cls = cfg.task == "sequence_classification"
    if not 0.0 <= d.mask_ratio < 1.0:
        raise ConfigError("data.mask_ratio", f"must be in [0, 1), got {d.mask_ratio}")
    if d.mask_ratio and not cls:
        raise ConfigError("data.mask_ratio", "masked student inputs are for task "
                          "'sequence_classification' only")  # fmt: skip
    for i, term in enumerate(cfg.losses):
        if term.name in ("dmae", "dmae_visible", "cls_ofa_exit") and not cls:
            raise ConfigError(f"losses[{i}].name", f"'{term.name}' is a term of task "
                              "'sequence_classification'")  # fmt: skip
        if term.name in ("dmae", "dmae_visible") and not d.mask_ratio:
            raise ConfigError(f"losses[{i}].name", f"'{term.name}' distils on a masked student "
                              "input: set data.mask_ratio (e.g. 0.3)")  # fmt: skip
    if d.mixture not in ("", "ddk"):
        raise ConfigError("data.mixture", f"expected '' or 'ddk', got '{d.mixture}'")
    if not d.mixture:
        return
    if not cls:
        raise ConfigError("data.mixture", "'ddk' is implemented for task "
                          "'sequence_classification' only")  # fmt: skip
    if not d.unlabeled_sources:
        raise ConfigError(
            "data.mixture",
            "'ddk' mixes two or more domains: the labelled rows and each "
            "data.unlabeled_sources entry; add an unlabeled source",
        )
    if d.mixture_every < 1:
        raise ConfigError("data.mixture_every", f"must be >= 1, got {d.mixture_every}")
    if not 0.0 <= d.mixture_smooth < 1.0:
        raise ConfigError("data.mixture_smooth", f"must be in [0, 1), got {d.mixture_smooth}")
    if not 0.0 <= d.mixture_floor <= 1.0:
        raise ConfigError("data.mixture_floor", f"must be in [0, 1], got {d.mixture_floor}")
    if d.mixture_probe < 1:
        raise ConfigError("data.mixture_probe", f"must be >= 1, got {d.mixture_probe}")
    updates = cfg.train.max_steps // d.mixture_every + 1
    if updates > MAX_UPDATES:
        raise ConfigError("data.mixture_every", f"{cfg.train.max_steps} steps would make "
                          f"{updates} updates, more than the {MAX_UPDATES} kept")  # fmt: skip
