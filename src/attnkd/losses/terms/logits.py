"""Token-level KD on the next-token distributions (vocabulary divergences)."""

from __future__ import annotations

from attnkd.losses._vocab_chunked import KINDS as DIVERGENCE_KINDS
from attnkd.losses.logits import token_divergence
from attnkd.losses.terms.base import LossTerm, TermError, register


@register(
    "logits",
    "token-level KD on next-token distributions: fkl/rkl/jsd/tvd, temperature, top-k "
    "(GKD, DistillSpec, MiniLLM-style reverse KL)",
)
class LogitsTerm(LossTerm):
    """Divergence between the models' output distributions at every real token.

    Needs both models' LM-head outputs (tap ``logits``, (batch, seq, vocab)) over one shared
    vocabulary; ``cfg.kind``, ``beta``, ``temperature``, ``top_k`` and ``impl`` go to
    :func:`attnkd.losses.logits.token_divergence`. Layers do not apply.
    """

    teacher_kinds = student_kinds = ("logits",)
    alignment = "vocabulary"

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.t_layer = self.s_layer = 0
        if cfg.kind not in DIVERGENCE_KINDS:
            raise TermError(
                "kind", f"unknown divergence {cfg.kind!r}; expected one of {list(DIVERGENCE_KINDS)}"
            )
        checks = (
            ("beta", 0.0 <= cfg.beta <= 1.0, f"must be in [0, 1], got {cfg.beta}"),
            ("temperature", cfg.temperature > 0.0, f"must be > 0, got {cfg.temperature}"),
            ("top_k", cfg.top_k is None or cfg.top_k >= 1, f"must be >= 1, got {cfg.top_k}"),
            ("impl", cfg.impl in ("auto", "naive", "chunked"),
             f"must be 'auto', 'naive' or 'chunked', got {cfg.impl!r}"),
        )  # fmt: skip
        for field, ok, message in checks:
            if not ok:
                raise TermError(field, f"'logits' {field} {message}")
        vocab = (getattr(teacher, "vocab_size", None), getattr(student, "vocab_size", None))
        if None not in vocab and vocab[0] != vocab[1]:
            raise TermError("name", _vocab_message(*vocab))

    @property
    def label(self) -> str:
        return self.kind

    def forward(self, t, s, mask):
        zt, zs = t.get("logits", 0), s.get("logits", 0)
        if zt.shape[-1] != zs.shape[-1]:
            raise TermError("name", _vocab_message(zt.shape[-1], zs.shape[-1]))
        cfg = self.cfg
        value = token_divergence(
            zs, zt, kind=cfg.kind, beta=cfg.beta, temperature=cfg.temperature, mask=mask,
            impl=cfg.impl, top_k=cfg.top_k,
        )  # fmt: skip
        return {cfg.kind: value}


def _vocab_message(teacher_vocab: int, student_vocab: int) -> str:
    return (
        f"'logits' compares next-token distributions over one vocabulary: teacher has "
        f"{teacher_vocab} tokens, student {student_vocab}; the student must use the "
        "teacher's tokenizer and output size"
    )
