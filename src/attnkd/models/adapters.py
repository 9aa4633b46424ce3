"""Model-family adapters: where each layer's q/k/v projections, attention and outputs live.

An adapter maps a loaded Hugging Face model to module paths, so capture and student building
never special-case families. Adding a family (GPT-2, Llama with GQA and RoPE, ViT, CNNs) means
registering one more :class:`FamilyAdapter`; nothing in the core changes. Registered: BERT,
MPNet (encoders), Llama/Mistral/Qwen2 (GQA, RoPE) and GPT-2 (fused q/k/v projection).

Decoder families with rotary position embeddings (``rope=True``, e.g. Llama) rotate q and k
after the projections; :mod:`attnkd.capture.hooks` applies that rotation to what it captures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnkd.registry import Registry


@dataclass(frozen=True)
class AttentionGeometry:
    """Head layout of one model's attention."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    causal: bool = False
    """Decoder attention (each token sees only earlier ones): attention losses mask j > i."""
    position_bucket: Callable[[Tensor], Tensor] | None = None
    """Families whose attention adds a relative-position bias (MPNet): maps offsets j - i to
    rows of the bias table (captured as the 'position_bias' tap)."""
    vocab_size: int | None = None
    """Token vocabulary size (the LM head's output size); None where unknown."""


@dataclass(frozen=True)
class FamilyAdapter:
    """Module-path templates for one model family (``{i}`` is the layer index).

    Paths are relative to the *base* model (e.g. ``BertModel``), see :func:`base_model`.
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    """Path of the ``nn.ModuleList`` of transformer blocks."""
    query: str
    key: str
    value: str
    attention: str
    """Self-attention module (q/k/v projections and the attention itself)."""
    attention_output: str
    """Linear output projection of the attention; its *input* is the per-head context."""
    embeddings: str
    causal: bool = False
    rope: bool = False
    """q/k need rotary embedding applied after projection (decoder families)."""
    fused_qkv: bool = False
    """q, k and v come out of one projection (``query`` = ``key`` = ``value`` path), in
    that order along the last dimension (GPT-2's ``c_attn``); capture slices it."""
    position_bias: str | None = None
    """Module (an ``nn.Embedding`` of shape (num_buckets, heads)) whose rows, picked by
    ``position_bucket(j - i)``, are added to every layer's scaled attention scores."""
    position_bucket: Callable[[Tensor], Tensor] | None = None

    def path(self, template: str, i: int) -> str:
        return template.format(i=i)

    def layer_path(self, i: int) -> str:
        return f"{self.layers}.{i}"


ADAPTERS: Registry[FamilyAdapter] = Registry("model family")


def _register(adapter: FamilyAdapter) -> FamilyAdapter:
    ADAPTERS.register(adapter.family)(adapter)
    return adapter


BERT = _register(
    FamilyAdapter(
        family="bert",
        model_types=("bert",),
        layers="encoder.layer",
        query="encoder.layer.{i}.attention.self.query",
        key="encoder.layer.{i}.attention.self.key",
        value="encoder.layer.{i}.attention.self.value",
        attention="encoder.layer.{i}.attention.self",
        attention_output="encoder.layer.{i}.attention.output.dense",
        embeddings="embeddings",
    )
)


def mpnet_position_bucket(rel: Tensor, num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """MPNet's bucket of relative position ``rel = j - i`` (long tensor, any shape).

    Bidirectional T5-style buckets (Raffel et al. 2020; MPNet, Song et al. 2020): half the
    buckets for keys after the query, half for keys before; in each half, offsets below a
    quarter of the buckets exactly, farther ones logarithmically up to ``max_distance``. MPNet
    calls it with these defaults whatever its config's ``relative_attention_num_buckets``.
    """
    half = num_buckets // 2
    exact = half // 2
    dist = rel.abs()
    far = exact + (
        torch.log(dist.clamp_min(1).float() / exact) / math.log(max_distance / exact)
        * (half - exact)
    ).long()  # fmt: skip
    far = far.clamp_max(half - 1)
    return (rel > 0).long() * half + torch.where(dist < exact, dist, far)


MPNET = _register(
    FamilyAdapter(
        family="mpnet",
        model_types=("mpnet",),
        layers="encoder.layer",
        query="encoder.layer.{i}.attention.attn.q",
        key="encoder.layer.{i}.attention.attn.k",
        value="encoder.layer.{i}.attention.attn.v",
        attention="encoder.layer.{i}.attention.attn",
        attention_output="encoder.layer.{i}.attention.attn.o",
        embeddings="embeddings",
        position_bias="encoder.relative_attention_bias",
        position_bucket=mpnet_position_bucket,
    )
)


LLAMA = _register(
    FamilyAdapter(
        family="llama",
        # Same module tree and the same q/k path (projection, then RoPE, scale head_dim**-0.5).
        # Qwen3 (q/k norms before RoPE) and Granite (own attention scale) are deliberately not here.
        model_types=("llama", "mistral", "qwen2"),
        layers="layers",
        query="layers.{i}.self_attn.q_proj",
        key="layers.{i}.self_attn.k_proj",
        value="layers.{i}.self_attn.v_proj",
        attention="layers.{i}.self_attn",
        attention_output="layers.{i}.self_attn.o_proj",
        embeddings="embed_tokens",
        causal=True,
        rope=True,
    )
)


GPT2 = _register(
    FamilyAdapter(
        family="gpt2",
        model_types=("gpt2",),
        layers="h",
        query="h.{i}.attn.c_attn",
        key="h.{i}.attn.c_attn",
        value="h.{i}.attn.c_attn",
        attention="h.{i}.attn",
        attention_output="h.{i}.attn.c_proj",
        embeddings="drop",  # token + position embeddings, summed (then dropout)
        causal=True,
        fused_qkv=True,
    )
)


IMAGE_VIT = _register(
    FamilyAdapter(
        family="attnkd_vit",
        model_types=("attnkd_vit",),
        layers="blocks",
        query="blocks.{i}.attn.q",
        key="blocks.{i}.attn.k",
        value="blocks.{i}.attn.v",
        attention="blocks.{i}.attn",
        attention_output="blocks.{i}.attn.proj",
        embeddings="patch_embed",
    )
)
"""attnkd's own small ViT (:mod:`attnkd.vision.models`), so q/k/v capture works on it too."""


def base_model(model: nn.Module) -> nn.Module:
    """The bare transformer inside a task model (``BertForX.bert`` -> ``BertModel``)."""
    prefix = getattr(model, "base_model_prefix", None)
    if prefix and hasattr(model, prefix):
        return getattr(model, prefix)
    return model


def adapter_for(model_or_type: nn.Module | str) -> FamilyAdapter:
    """Find the adapter for a model instance or a config ``model_type`` string."""
    if isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        model_type = getattr(getattr(model_or_type, "config", None), "model_type", "")
    for name in ADAPTERS:
        adapter = ADAPTERS.get(name)
        if model_type in adapter.model_types:
            return adapter
    known = sorted({t for n in ADAPTERS for t in ADAPTERS.get(n).model_types})
    raise ValueError(f"no adapter for model_type '{model_type}'; supported: {', '.join(known)}")


def _known_adapter(model_type: str) -> FamilyAdapter | None:
    try:
        return adapter_for(model_type)
    except ValueError:  # an unknown family: geometry still describes its heads
        return None


def geometry(config) -> AttentionGeometry:
    """Attention geometry from a Hugging Face config object.

    ``head_dim`` is the config's own when it sets one (Llama may decouple it from the width);
    ``causal`` and ``position_bucket`` come from the family adapter of ``config.model_type``
    (False / None if unknown).
    """
    adapter = _known_adapter(str(getattr(config, "model_type", "") or ""))
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    return AttentionGeometry(
        num_layers=int(config.num_hidden_layers),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        causal=bool(adapter and adapter.causal),
        position_bucket=adapter.position_bucket if adapter else None,
        vocab_size=int(config.vocab_size) if getattr(config, "vocab_size", None) else None,
    )


def attn_implementation_for(model_cls: type, requested: str) -> str:
    """``requested``, or 'eager' when ``model_cls`` has no fused SDPA attention (e.g. MPNet).

    Capture reads q/k/v from the projections, so both backends serve distillation alike.
    """
    if requested == "sdpa" and not getattr(model_cls, "_supports_sdpa", False):
        return "eager"
    return requested


def resolve_layer(index: int, num_layers: int, what: str = "layer") -> int:
    """Turn a possibly negative layer index into 0..num_layers-1, or raise IndexError."""
    j = index + num_layers if index < 0 else index
    if not 0 <= j < num_layers:
        raise IndexError(f"{what} index {index} out of range for a model with {num_layers} layers")
    return j
