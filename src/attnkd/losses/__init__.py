"""Distillation losses: pure tensor functions (each docstring gives its formula and paper).

Public API (stable names and meanings): ``attention_kl``, ``relation_kl`` and
``token_divergence``, plus the other attention, logit and feature losses below. Attention and
relation losses take captured q/k/v, never attention probabilities, and accept
``impl="naive" | "chunked" | "auto"``; the chunked forms are exact and memory-linear in sequence
length. Configurable wrappers used by recipes live in :mod:`attnkd.losses.terms`.
"""

from attnkd.losses.attention import (
    attention_ce,
    attention_kl,
    attention_output_mse,
    attention_score_mse,
    relation_kl,
    value_relation_kl,
)
from attnkd.losses.features import (
    Projector,
    embedding_mse,
    hidden_cosine,
    hidden_mse,
    linear_cka,
    mean_pool,
    sentence_embedding_cosine,
    sentence_embedding_mse,
)
from attnkd.losses.logits import KDLoss, hinton_kd, token_divergence, token_divergence_from_hidden
from attnkd.losses.sentence import (
    cosine_similarity_matrix,
    ensemble_similarity,
    mix_gold,
    pair_similarities,
    similarity_matrix_mse,
    similarity_rank_loss,
)

__all__ = [
    "KDLoss",
    "Projector",
    "attention_ce",
    "attention_kl",
    "attention_output_mse",
    "attention_score_mse",
    "cosine_similarity_matrix",
    "embedding_mse",
    "ensemble_similarity",
    "hidden_cosine",
    "hidden_mse",
    "hinton_kd",
    "linear_cka",
    "mean_pool",
    "mix_gold",
    "pair_similarities",
    "relation_kl",
    "sentence_embedding_cosine",
    "sentence_embedding_mse",
    "similarity_matrix_mse",
    "similarity_rank_loss",
    "token_divergence",
    "token_divergence_from_hidden",
    "value_relation_kl",
]
