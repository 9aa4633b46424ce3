"""Feature-matching terms: hidden states, embeddings, pooled sentence embeddings."""

from __future__ import annotations

from torch import Tensor

from attnkd.capture import Taps
from attnkd.losses import features as feat
from attnkd.losses import sentence as sim
from attnkd.losses.terms.base import LossTerm, TermError, register


def width_projector(cfg, teacher, student) -> feat.Projector | None:
    """The learned student-width -> teacher-width projector of a hidden-state term
    (``projector: true``), or None when the widths agree; differing widths without one are
    refused naming the key."""
    if cfg.projector:
        return feat.Projector(student.hidden_size, teacher.hidden_size)
    if student.hidden_size != teacher.hidden_size:
        raise TermError(
            "projector",
            f"student width {student.hidden_size} != teacher width {teacher.hidden_size}: "
            "set projector: true",
        )
    return None


class _FeatureTerm(LossTerm):
    """Feature matching with an optional learned projector student width -> teacher width."""

    tap_kind = "hidden"

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.teacher_kinds = self.student_kinds = (self.tap_kind,)
        self.projector = width_projector(cfg, teacher, student)

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
    alignment = "sentence"

    def forward(self, t, s, mask):
        ht, hs = self.pair(t, s)
        return {"mse": feat.sentence_embedding_mse(hs, ht, mask=mask)}


@register("sentence_cosine", "1 - cosine of mean-pooled sentence embeddings")
class SentenceCosineTerm(_FeatureTerm):
    alignment = "sentence"

    def forward(self, t, s, mask):
        ht, hs = self.pair(t, s)
        return {"cos": feat.sentence_embedding_cosine(hs, ht, mask=mask)}


@register("sentence_similarity", "MSE of a batch's sentence cosine-similarity matrices")
class SentenceSimilarityTerm(LossTerm):
    """Pooled hidden states of both models -> (batch, batch) cosine matrices -> MSE. Widths may
    differ; with ``teachers:`` the targets come from cached teacher embeddings instead."""

    alignment = "sentence"

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        self.teacher_kinds = self.student_kinds = ("hidden",)

    def forward(self, t, s, mask):
        ht = feat.mean_pool(t.get("hidden", self.t_layer), mask)
        hs = feat.mean_pool(s.get("hidden", self.s_layer), mask)
        return {"mse": sim.similarity_matrix_mse(hs, sim.cosine_similarity_matrix(ht))}


@register("sentence_pair_rank", "rank a batch's training pairs as the teachers do (CoSENT)")
class SentencePairRankTerm(LossTerm):
    """Runs only on cached sentence teachers with ``data.pair_batches: true``
    (:mod:`attnkd.tasks.sentence_pairs`), where each batch knows its training pairs; a live
    teacher's batches hold single sentences, so building it here is refused."""

    alignment = "sentence"

    def __init__(self, cfg, teacher, student):
        super().__init__(cfg, teacher, student)
        raise TermError("name", "sentence_pair_rank needs batches of training pairs: use it in a "
                        "`teachers:` set with data.pair_batches: true (task sentence)")  # fmt: skip
