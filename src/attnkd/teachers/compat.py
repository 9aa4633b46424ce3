"""Which loss terms a teacher may use: tokenizer compatibility and ensemble averaging.

A loss term declares what it compares (``LossTerm.alignment``):

- ``"tokens"``: per-token tensors (attention maps and relations from q/k/v, per-token hidden
  states, embedding-layer outputs). Teacher and student must read the *same token sequence*, so
  they need one tokenizer.
- ``"vocabulary"``: next-token distributions over a vocabulary (``logits``): one shared
  vocabulary.
- ``"sentence"``: one vector per sentence (mean-pooled embeddings): no shared vocabulary needed;
  each model may tokenise the text its own way.
- ``"images"``: image terms; both models see the same pixels, tokenizers do not apply.

A teacher whose tokenizer differs from the student's may only use ``"sentence"`` terms; anything
else is refused with a :class:`attnkd.errors.ConfigError` naming the teacher and the term.
Ensemble terms (the top-level ``losses`` of a teacher set) average the teachers' taps, which is
meaningful only for outputs and features (:data:`ENSEMBLE_KINDS`), not for q/k/v.
"""

from __future__ import annotations

from attnkd.errors import ConfigError

__all__ = [
    "ENSEMBLE_KINDS",
    "NEEDS",
    "PROBABILITY_KINDS",
    "allowed_with_other_tokenizer",
    "check_ensemble_term",
    "check_tokenizer_compat",
]

NEEDS = {
    "tokens": "one token sequence shared with the student (the same tokenizer)",
    "vocabulary": "the student's vocabulary (the same tokenizer and output size)",
    "sentence": "nothing shared: sentence-level targets",
    "images": "nothing shared: the same images",
}
"""What each alignment needs, in words (used in error messages and docs)."""

PROBABILITY_KINDS = ("logits", "dist_logits")
"""Taps an ensemble combines as a mean of (tempered) probabilities."""
ENSEMBLE_KINDS = PROBABILITY_KINDS + ("embedding", "embeddings", "hidden", "fmap")
"""Taps an ensemble may combine at all (features and embeddings: a weighted mean)."""


def _term_class(name: str):
    from attnkd.losses.terms import TERMS

    return TERMS.get(name).cls


def allowed_with_other_tokenizer() -> list[str]:
    """Names of the registered terms a different-tokenizer teacher may use."""
    from attnkd.losses.terms import TERMS

    return [n for n in TERMS.names() if TERMS.get(n).cls.alignment in ("sentence", "images")]


def check_tokenizer_compat(
    teacher: str, term_names: list[str], keys: list[str], same_tokenizer: bool | None
) -> None:
    """Refuse the terms a teacher cannot use when its tokenizer differs from the student's.

    ``teacher`` names the teacher in messages; ``keys[i]`` is the config key of term ``i``
    (``teachers[1].losses[0].name``); ``same_tokenizer`` None means unknown (nothing refused).
    """
    if same_tokenizer is None or same_tokenizer:
        return
    for name, key in zip(term_names, keys, strict=True):
        alignment = _term_class(name).alignment
        if alignment in ("tokens", "vocabulary"):
            raise ConfigError(
                key,
                f"teacher '{teacher}' tokenizes differently from the student, but loss '{name}' "
                f"needs {NEEDS[alignment]}; with a different tokenizer only sentence-level terms "
                f"are allowed ({', '.join(allowed_with_other_tokenizer())})",
            )


def check_set_tokenizers(cfg, labels: list[str]) -> list[bool | None]:
    """Apply :func:`check_tokenizer_compat` to every teacher of ``cfg.teachers`` (its own terms
    and the shared ``losses``) against the student's vocabulary (the first teacher's when the
    student is cut from it); ``labels[i]`` names teacher ``i`` in messages. Returns, per
    teacher, whether its vocabulary equals the student's (None: unknown)."""
    from attnkd.models.hub import vocabulary_fingerprint

    student = cfg.student.init if cfg.student.init != "teacher" else cfg.teachers[0].name
    reference = vocabulary_fingerprint(student)
    sames = []
    for i, e in enumerate(cfg.teachers):
        fp = vocabulary_fingerprint(e.name)
        same = None if fp is None or reference is None else fp == reference
        names = [t.name for t in e.losses] + [t.name for t in cfg.losses]
        keys = [f"teachers[{i}].losses[{j}].name" for j in range(len(e.losses))]
        keys += [f"losses[{j}].name" for j in range(len(cfg.losses))]
        check_tokenizer_compat(labels[i], names, keys, same)
        sames.append(same)
    return sames


def check_ensemble_term(name: str, teacher_kinds: tuple[str, ...], key: str) -> None:
    """An ensemble term may only read taps whose average is meaningful."""
    bad = [k for k in teacher_kinds if k not in ENSEMBLE_KINDS]
    if bad:
        raise ConfigError(
            key,
            f"loss '{name}' reads the teacher's {', '.join(bad)}: an ensemble averages "
            f"outputs and features ({', '.join(ENSEMBLE_KINDS)}), and a mean of q/k/v is no "
            "teacher's attention; give this term to one teacher under teachers[i].losses",
        )
