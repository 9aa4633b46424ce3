"""Configurable loss terms: thin wrappers that pick captured tensors and call pure losses.

``TERMS`` maps each name a recipe can use to its class; importing this package registers them
all (attention and relation terms, the vocabulary ``logits`` term, feature terms, and the image
terms of :mod:`attnkd.losses.terms.vision`, the class-logit terms of
:mod:`attnkd.losses.terms.classification` and :mod:`attnkd.losses.terms.cls_taps`).
"""

from __future__ import annotations

from attnkd.losses.terms.attention import (
    RELATION_PAIRS,
    AttentionScoreTerm,
    AttentionTerm,
    RelationTerm,
    ValueRelationTerm,
)
from attnkd.losses.terms.base import (
    TERMS,
    LossTerm,
    TermError,
    TermSpec,
    bind_terms,
    build_terms,
    collect_taps,
    register,
)
from attnkd.losses.terms.classification import ClassificationTerm
from attnkd.losses.terms.cls_taps import (
    ClsOfaExitTerm,
    ClsTapTerm,
    ClsView,
    DmaeTerm,
    DmaeVisibleTerm,
)
from attnkd.losses.terms.features import (
    EmbeddingMseTerm,
    HiddenCosineTerm,
    HiddenMseTerm,
    SentenceCosineTerm,
    SentenceMseTerm,
    SentenceSimilarityTerm,
)
from attnkd.losses.terms.logits import LogitsTerm, NextTokenCETerm
from attnkd.losses.terms.teaching import ExitKDTerm, MixedKDTerm
from attnkd.losses.terms.vision import VisionTerm

__all__ = [
    "RELATION_PAIRS",
    "TERMS",
    "AttentionScoreTerm",
    "AttentionTerm",
    "ClassificationTerm",
    "ClsOfaExitTerm",
    "ClsTapTerm",
    "ClsView",
    "DmaeTerm",
    "DmaeVisibleTerm",
    "EmbeddingMseTerm",
    "ExitKDTerm",
    "HiddenCosineTerm",
    "HiddenMseTerm",
    "LogitsTerm",
    "LossTerm",
    "MixedKDTerm",
    "NextTokenCETerm",
    "RelationTerm",
    "SentenceCosineTerm",
    "SentenceMseTerm",
    "SentenceSimilarityTerm",
    "TermError",
    "TermSpec",
    "ValueRelationTerm",
    "VisionTerm",
    "bind_terms",
    "build_terms",
    "collect_taps",
    "register",
]
