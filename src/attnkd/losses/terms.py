"""Configurable loss terms: thin wrappers that pick captured tensors and call pure losses.

A term declares which taps it needs from each model (so capture installs only those hooks),
then maps them to one of the pure functions in :mod:`attnkd.losses`. Terms with learned
projectors are ``nn.Module`` s whose parameters are trained with the student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from attnkd.capture import Tap, Taps, split_heads
from attnkd.config.schema import LossTermConfig
from attnkd.losses import attention as att
from attnkd.losses import features as feat
from attnkd.losses._vocab_chunked import KINDS as DIVERGENCE_KINDS
from attnkd.losses.logits import token_divergence
from attnkd.models.adapters import AttentionGeometry, resolve_layer
from attnkd.registry import Registry


@dataclass(frozen=True)
class TermSpec:
    """A registered term: its class, a one-line description and the paper it comes from."""

    cls: type[LossTerm]
    summary: str


TERMS: Registry[TermSpec] = Registry("loss term")


class TermError(ValueError):
    """A loss term's settings do not fit the models; ``field`` names the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


RELATION_PAIRS = {"qq": ("q", "q"), "kk": ("k", "k"), "vv": ("v", "v"), "qk": ("q", "k")}


def register(name: str, summary: str):
    def deco(cls):
        cls.kind = name
        TERMS.register(name)(TermSpec(cls, summary))
        return cls

    return deco


class LossTerm(nn.Module):
    """Base: resolves layers against both geometries, declares taps, returns named values."""

    kind = ""
    teacher_kinds: tuple[str, ...] = ()
    student_kinds: tuple[str, ...] = ()

    def __init__(self, cfg: LossTermConfig, teacher: AttentionGeometry, student: AttentionGeometry):
        super().__init__()
        self.cfg = cfg
        self.weight = float(cfg.weight)
        self.tg, self.sg = teacher, student
        self.t_layer = resolve_layer(cfg.teacher_layer, teacher.num_layers, "teacher_layer")
        self.s_layer = resolve_layer(cfg.student_layer, student.num_layers, "student_layer")

    @property
    def label(self) -> str:
        return f"{self.kind}@{self.t_layer}>{self.s_layer}"

    def taps(self) -> tuple[list[Tap], list[Tap]]:
        return (
            [Tap(k, self.t_layer) for k in self.teacher_kinds],
            [Tap(k, self.s_layer) for k in self.student_kinds],
        )

    def forward(self, t: Taps, s: Taps, mask: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError


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


@register("attention", "MiniLM attention-distribution KL per head (equal head counts)")
class AttentionTerm(_HeadwiseTerm):
    teacher_kinds = student_kinds = ("q", "k")

    def forward(self, t, s, mask):
        tq, tk = (self._heads(t, k, self.t_layer, self.tg) for k in ("q", "k"))
        sq, sk = (self._heads(s, k, self.s_layer, self.sg) for k in ("q", "k"))
        causal, impl = self.tg.causal, self.cfg.impl
        return {"at": att.attention_kl(tq, tk, sq, sk, mask=mask, causal=causal, impl=impl)}


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
class AttentionScoreTerm(_HeadwiseTerm):
    teacher_kinds = student_kinds = ("q", "k")

    def forward(self, t, s, mask):
        tq, tk = (self._heads(t, k, self.t_layer, self.tg) for k in ("q", "k"))
        sq, sk = (self._heads(s, k, self.s_layer, self.sg) for k in ("q", "k"))
        causal, impl = self.tg.causal, self.cfg.impl
        loss = att.attention_score_mse(tq, tk, sq, sk, mask=mask, causal=causal, impl=impl)
        return {"score_mse": loss}


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


class _FeatureTerm(LossTerm):
    """Feature matching with an optional learned projector student width -> teacher width."""

    tap_kind = "hidden"

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.teacher_kinds = self.student_kinds = (self.tap_kind,)
        if cfg.projector:
            self.projector = feat.Projector(student.hidden_size, teacher.hidden_size)
        elif student.hidden_size != teacher.hidden_size:
            raise TermError(
                "projector",
                f"student width {student.hidden_size} != teacher width {teacher.hidden_size}: "
                "set projector: true",
            )
        else:
            self.projector = None

    def pair(self, t: Taps, s: Taps) -> tuple[Tensor, Tensor]:
        hs = s.get(self.tap_kind, self.s_layer)
        if self.projector is not None:
            hs = self.projector(hs)
        return t.get(self.tap_kind, self.t_layer), hs


@register("hidden_mse", "hidden-state MSE (TinyBERT/FitNets), optional learned projector")
class HiddenMseTerm(_FeatureTerm):
    def forward(self, t, s, mask):
        ht, hs = self.pair(t, s)
        return {"mse": feat.hidden_mse(hs, ht, mask=mask)}


@register("hidden_cosine", "hidden-state cosine distance (DistilBERT), optional projector")
class HiddenCosineTerm(_FeatureTerm):
    def forward(self, t, s, mask):
        ht, hs = self.pair(t, s)
        return {"cos": feat.hidden_cosine(hs, ht, mask=mask)}


@register("embedding_mse", "embedding-layer output MSE (TinyBERT), optional projector")
class EmbeddingMseTerm(_FeatureTerm):
    tap_kind = "embeddings"

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.t_layer = self.s_layer = 0

    def forward(self, t, s, mask):
        ht, hs = self.pair(t, s)
        return {"mse": feat.embedding_mse(hs, ht, mask=mask)}


@register("sentence_mse", "MSE of mean-pooled sentence embeddings, optional projector")
class SentenceMseTerm(_FeatureTerm):
    def forward(self, t, s, mask):
        ht, hs = self.pair(t, s)
        return {"mse": feat.sentence_embedding_mse(hs, ht, mask=mask)}


@register("sentence_cosine", "1 - cosine of mean-pooled sentence embeddings")
class SentenceCosineTerm(_FeatureTerm):
    def forward(self, t, s, mask):
        ht, hs = self.pair(t, s)
        return {"cos": feat.sentence_embedding_cosine(hs, ht, mask=mask)}


def build_terms(
    cfgs: list[LossTermConfig], teacher: AttentionGeometry, student: AttentionGeometry
) -> nn.ModuleList:
    """Instantiate every configured term (raises ValueError/IndexError on bad settings)."""
    return nn.ModuleList(TERMS.get(c.name).cls(c, teacher, student) for c in cfgs)


def collect_taps(terms: nn.ModuleList) -> tuple[list[Tap], list[Tap]]:
    """Union of the taps every term needs, for the teacher and the student."""
    t_taps: set[Tap] = set()
    s_taps: set[Tap] = set()
    for term in terms:
        t, s = term.taps()
        t_taps.update(t)
        s_taps.update(s)
    return sorted(t_taps, key=lambda x: (x.layer, x.kind)), sorted(
        s_taps, key=lambda x: (x.layer, x.kind)
    )
