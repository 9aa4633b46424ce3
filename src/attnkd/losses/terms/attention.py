"""Attention and relation terms: MiniLM, MiniLMv2, TinyBERT (causal for decoder teachers).

Terms on attention (``attention``, ``attention_mse``) add each model's relative-position bias
when its family has one (MPNet), so they compare the attention the models really compute;
relation terms (MiniLMv2 Q-Q, K-K, V-V, MiniLM V-V) are not attention and take none.
"""

from __future__ import annotations

import math

from torch import Tensor

from attnkd.capture import Taps, split_heads
from attnkd.losses import attention as att
from attnkd.losses.position_bias import RelativePositionBias
from attnkd.losses.terms.base import LossTerm, TermError, register
from attnkd.models.adapters import AttentionGeometry

RELATION_PAIRS = {"qq": ("q", "q"), "kk": ("k", "k"), "vv": ("v", "v"), "qk": ("q", "k")}


def _check_causal(teacher: AttentionGeometry, student: AttentionGeometry, name: str) -> None:
    """Attention terms mask keys j > i for decoders: both models must agree on causality."""
    if teacher.causal != student.causal:
        kind = {True: "causal (decoder)", False: "bidirectional (encoder)"}
        raise TermError(
            "name",
            f"'{name}' compares attention of a {kind[teacher.causal]} teacher with a "
            f"{kind[student.causal]} student; both must be causal or both not",
        )


def _tensor_width(g: AttentionGeometry, kind: str) -> int:
    """Width of a captured q/k/v tensor: q has num_heads heads, k and v num_kv_heads (GQA)."""
    return (g.num_heads if kind == "q" else g.num_kv_heads) * g.head_dim


@register("relation", "MiniLMv2 self-attention relation KL (Q-Q, K-K, V-V) with relation heads")
class RelationTerm(LossTerm):
    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.heads = cfg.relation_heads or teacher.num_heads
        unknown = [r for r in cfg.relations if r not in RELATION_PAIRS]
        if unknown:
            raise TermError(
                "relations", f"unknown relations {unknown}; expected some of {list(RELATION_PAIRS)}"
            )
        _check_causal(teacher, student, cfg.name)
        for r in cfg.relations:
            self._check_widths(r, teacher, student)
        kinds = sorted({k for r in cfg.relations for k in RELATION_PAIRS[r]})
        self.teacher_kinds = self.student_kinds = tuple(kinds)

    def _check_widths(self, r: str, teacher: AttentionGeometry, student: AttentionGeometry):
        """Per relation: x and y of one model share a width that relation_heads divides."""
        x, y = RELATION_PAIRS[r]
        widths = [_tensor_width(g, k) for g in (teacher, student) for k in (x, y)]
        for who, g in (("teacher", teacher), ("student", student)):
            wx, wy = _tensor_width(g, x), _tensor_width(g, y)
            if wx != wy:
                raise TermError(
                    "relations",
                    f"relation '{r}': {who} {x} width {wx} != {y} width {wy} (grouped-query "
                    f"attention: {g.num_heads} query heads, {g.num_kv_heads} kv heads); "
                    "use 'qq', 'kk', 'vv' instead",
                )
            if wx % self.heads:
                common = math.gcd(*widths)
                fits = [d for d in range(1, common + 1) if common % d == 0]
                raise TermError(
                    "relation_heads",
                    f"relation '{r}': {who} {x} width {wx} is not divisible by "
                    f"relation_heads={self.heads}; values that fit every width of '{r}': {fits}",
                )

    def forward(self, t, s, mask):
        out = {}
        for r in self.cfg.relations:
            x, y = RELATION_PAIRS[r]
            out[r] = att.relation_kl(
                t.get(x, self.t_layer), t.get(y, self.t_layer),
                s.get(x, self.s_layer), s.get(y, self.s_layer),
                self.heads, mask=mask, causal=self.tg.causal, impl=self.cfg.impl,
            )  # fmt: skip
        return out


class _HeadwiseTerm(LossTerm):
    """Terms on per-head attention of equal head counts (MiniLM v1, TinyBERT)."""

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        if teacher.num_heads != student.num_heads:
            raise TermError(
                "name",
                f"'{cfg.name}' needs equal head counts: teacher has {teacher.num_heads}, "
                f"student {student.num_heads}; use the 'relation' loss instead",
            )
        _check_causal(teacher, student, cfg.name)

    def _heads(self, taps: Taps, kind: str, layer: int, g: AttentionGeometry) -> Tensor:
        heads = g.num_kv_heads if kind in ("k", "v") else g.num_heads
        return split_heads(taps.get(kind, layer), heads)


class _ScoresTerm(_HeadwiseTerm):
    """Terms on attention scores q k^T/sqrt(d) (+ the family's relative-position bias)."""

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.teacher_kinds = ("q", "k") + (("position_bias",) if teacher.position_bucket else ())
        self.student_kinds = ("q", "k") + (("position_bias",) if student.position_bucket else ())

    def _qk(self, taps: Taps, layer: int, g: AttentionGeometry):
        q, k = (self._heads(taps, kind, layer, g) for kind in ("q", "k"))
        bias = None
        if g.position_bucket is not None:
            bias = RelativePositionBias(taps.get("position_bias", layer), g.position_bucket)
        return q, k, bias

    def _pair(self, t: Taps, s: Taps) -> dict:
        tq, tk, tb = self._qk(t, self.t_layer, self.tg)
        sq, sk, sb = self._qk(s, self.s_layer, self.sg)
        return {
            "teacher_q": tq, "teacher_k": tk, "student_q": sq, "student_k": sk,
            "teacher_bias": tb, "student_bias": sb,
            "causal": self.tg.causal, "impl": self.cfg.impl,
        }  # fmt: skip


@register("attention", "MiniLM attention-distribution KL per head (equal head counts)")
class AttentionTerm(_ScoresTerm):
    def forward(self, t, s, mask):
        return {"at": att.attention_kl(mask=mask, **self._pair(t, s))}


@register("value_relation", "MiniLM value-relation KL softmax(V V^T/sqrt(d)) per head")
class ValueRelationTerm(_HeadwiseTerm):
    teacher_kinds = student_kinds = ("v",)

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        if teacher.num_kv_heads != student.num_kv_heads:
            raise TermError(
                "name",
                f"'{cfg.name}' compares value heads one to one: teacher has "
                f"{teacher.num_kv_heads} kv heads, student {student.num_kv_heads}; use the "
                "'relation' loss with relations [vv] instead",
            )

    def forward(self, t, s, mask):
        tv = self._heads(t, "v", self.t_layer, self.tg)
        sv = self._heads(s, "v", self.s_layer, self.sg)
        causal, impl = self.tg.causal, self.cfg.impl
        return {"vr": att.value_relation_kl(tv, sv, mask=mask, causal=causal, impl=impl)}


@register("attention_mse", "TinyBERT MSE of unnormalised attention scores QK^T/sqrt(d)")
class AttentionScoreTerm(_ScoresTerm):
    def forward(self, t, s, mask):
        return {"score_mse": att.attention_score_mse(mask=mask, **self._pair(t, s))}
