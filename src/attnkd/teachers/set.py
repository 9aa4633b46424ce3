"""A teacher set in a run: several frozen teachers, each with its own loss terms, plus ensemble
terms that see all teachers as one virtual teacher (DESIGN.md: "ensembles as one virtual
teacher"; the student never knows how many teachers there are).

Every term is wrapped in a :class:`RoutedTerm` that knows its source: one teacher's label
(``teachers[i].losses``: Hybrid Distill's relations from one teacher, logits from another) or the
ensemble (top-level ``losses``: the weighted mean of the teachers' tempered probabilities for
logit taps, of their features for feature taps; :mod:`attnkd.teachers.targets`). A step captures
each teacher once, with exactly the taps its own and the ensemble's terms need, and hands the
terms a :class:`TeacherTaps` (taps by teacher label).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attnkd.config.schema import DistillConfig, LossTermConfig, TeacherEntry
from attnkd.errors import ConfigError
from attnkd.models.adapters import AttentionGeometry
from attnkd.teachers.compat import PROBABILITY_KINDS, check_ensemble_term
from attnkd.teachers.targets import ensemble_logits, ensemble_mean, normalise_weights

__all__ = [
    "Member",
    "RoutedTerm",
    "TeacherTaps",
    "build_set_terms",
    "member_labels",
    "reinit_",
    "teacher_taps_for",
]


def member_labels(entries: list[TeacherEntry]) -> list[str]:
    """Each teacher's label (``label`` or ``t<i>``); a ConfigError on a repeated label."""
    labels = [e.label or f"t{i}" for i, e in enumerate(entries)]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise ConfigError(f"teachers[{i}].label", f"label '{label}' is used twice")
    return labels


@dataclass
class Member:
    """One loaded teacher of the set."""

    label: str
    model: nn.Module
    geometry: AttentionGeometry
    entry: TeacherEntry


class TeacherTaps:
    """What routed terms receive in a teacher-set step: each teacher's taps by label."""

    def __init__(self, by_label: dict[str, Any]):
        self.by_label = by_label

    def of(self, label: str):
        return self.by_label[label]

    def map(self, fn: Callable) -> TeacherTaps:
        return TeacherTaps({k: fn(v) for k, v in self.by_label.items()})

    def clear(self) -> None:
        for taps in self.by_label.values():
            taps.clear()


def _kind(key) -> str:
    return key.kind if hasattr(key, "kind") else key[0]


class RoutedTerm(nn.Module):
    """A loss term reading one teacher's taps (``source`` = its label) or the ensemble's
    (``source`` = ''). Weight, taps and outputs are the inner term's; its label is prefixed by
    the source (``t1:image_kd@0>0``, ``ensemble:image_kd@0>0``)."""

    def __init__(self, term: nn.Module, source: str, labels: list[str], weights: list[float]):
        super().__init__()
        self.term, self.source = term, source
        self.labels, self.weights = labels, normalise_weights(weights, len(labels))
        self.weight = term.weight

    @property
    def label(self) -> str:
        return f"{self.source or 'ensemble'}:{self.term.label}"

    def taps(self):
        return self.term.taps()

    def forward(self, t: TeacherTaps, s, extra: Tensor) -> dict[str, Tensor]:
        return self.term(t.of(self.source) if self.source else self.combine(t), s, extra)

    def combine(self, t: TeacherTaps):
        """The virtual ensemble teacher's taps for this term: per tap, the weighted mean of the
        teachers' tempered probabilities (logit taps, returned as logits at the term's
        temperature) or of their tensors (features)."""
        per = [t.of(label) for label in self.labels]
        wanted = set(self.term.teacher_kinds)
        tau = float(self.term.cfg.temperature)
        tensors = {}
        for key in per[0].tensors:
            if _kind(key) not in wanted:
                continue
            xs = [p.tensors[key] for p in per]
            if _kind(key) in PROBABILITY_KINDS:
                tensors[key] = ensemble_logits(xs, self.weights, temperature=tau)
            else:
                tensors[key] = ensemble_mean(xs, self.weights)
        return type(per[0])(tensors=tensors)


def _build_one(cfg: LossTermConfig, tg: AttentionGeometry, sg: AttentionGeometry, key: str):
    from attnkd.losses.terms import TERMS, TermError

    try:
        return TERMS.get(cfg.name).cls(cfg, tg, sg)
    except KeyError as err:
        raise ConfigError(f"{key}.name", str(err).strip('"')) from None
    except IndexError as err:
        which = "teacher_layer" if "teacher" in str(err) else "student_layer"
        raise ConfigError(f"{key}.{which}", str(err)) from None
    except TermError as err:
        raise ConfigError(f"{key}.{err.field}", str(err)) from None


def build_set_terms(
    cfg: DistillConfig, geometries: list[AttentionGeometry], sg: AttentionGeometry
) -> nn.ModuleList:
    """Routed terms of a teacher set: each ``teachers[i].losses`` against teacher ``i``, each
    top-level ``losses`` term against the ensemble. ``geometries[i]`` is teacher ``i``'s. An
    ensemble term must read averageable taps and resolve to the same layer in every teacher."""
    labels = member_labels(cfg.teachers)
    weights = [e.weight for e in cfg.teachers]
    routed = []
    for i, (entry, tg) in enumerate(zip(cfg.teachers, geometries, strict=True)):
        for j, tc in enumerate(entry.losses):
            term = _build_one(tc, tg, sg, f"teachers[{i}].losses[{j}]")
            routed.append(RoutedTerm(term, labels[i], labels, weights))
    for j, tc in enumerate(cfg.losses):
        key = f"losses[{j}]"
        built = [_build_one(tc, tg, sg, key) for tg in geometries]
        check_ensemble_term(tc.name, built[0].teacher_kinds, f"{key}.name")
        layers = {b.t_layer for b in built if b.teacher_kinds}
        if len(layers) > 1:
            raise ConfigError(
                f"{key}.teacher_layer",
                f"teacher_layer {tc.teacher_layer} is layer {sorted(layers)} in different "
                "teachers of the ensemble (their depths differ): give the layer as a "
                "teacher-specific term under teachers[i].losses",
            )
        routed.append(RoutedTerm(built[0], "", labels, weights))
    if not routed:
        raise ConfigError("losses", "a teacher set needs at least one loss term")
    return nn.ModuleList(routed)


def teacher_taps_for(terms: nn.ModuleList, label: str) -> list:
    """The taps teacher ``label`` must capture: those of its own terms and the ensemble's."""
    taps: set = set()
    for term in terms:
        if term.source in ("", label):
            taps.update(term.taps()[0])
    return sorted(taps, key=lambda x: (x.layer, x.kind))


def reinit_(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise ``model``'s weights at random, in place (a random teacher): every module's
    ``reset_parameters``, then the family's own ``_init_weights`` where the model has one
    (Hugging Face models). Seeded; returns ``model``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
        init = getattr(model, "_init_weights", None)
        if callable(init):
            model.apply(init)
    return model
