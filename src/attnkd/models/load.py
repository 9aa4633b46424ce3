"""Load teachers and students (weights through safetensors-backed Hugging Face loaders)."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

from torch import nn

from attnkd.errors import AttnkdError, ConfigError
from attnkd.models.adapters import (
    AttentionGeometry,
    adapter_for,
    attn_implementation_for,
    geometry,
)
from attnkd.models.hub import check_model_folder, resolve_model_path

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    path: str
    source: str
    """'local', 'packaged' or 'hub'."""
    geometry: AttentionGeometry


def load_config(name: str):
    """The Hugging Face config of a model (no weights), for validation before loading."""
    from transformers import AutoConfig

    resolved = resolve_model_path(name)
    try:
        return AutoConfig.from_pretrained(resolved.path)
    except (OSError, ValueError, TypeError) as err:  # no config.json, unknown type, bad field
        raise AttnkdError(
            f"cannot load the config of model '{name}' ({resolved.path}): {err}"
        ) from err


def load_encoder(
    name: str, attn_implementation: str = "sdpa", tokenizer: bool = True
) -> LoadedModel:
    """Load a bare encoder (``AutoModel``) and its tokenizer from a name, folder or packaged copy.

    Only safetensors weights are accepted (``use_safetensors=True``): no unpickling. Families
    without fused attention (MPNet) get 'eager' when 'sdpa' is asked for.
    """
    from transformers import MODEL_MAPPING, AutoConfig, AutoModel, AutoTokenizer

    resolved = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(resolved.path)
        try:
            adapter_for(config.model_type)
        except ValueError as err:
            raise AttnkdError(f"cannot use model '{name}': {err}") from None
        if resolved.source != "hub":
            check_model_folder(resolved.path, name, tokenizer=tokenizer)
        model_cls = MODEL_MAPPING[type(config)]
        kwargs = {}
        if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters:
            kwargs["add_pooling_layer"] = False  # mean pooling never reads the pooler (BERT, MPNet)
        impl = attn_implementation_for(model_cls, attn_implementation)
        model = AutoModel.from_pretrained(
            resolved.path,
            attn_implementation=impl,
            use_safetensors=True,
            **kwargs,
        )
        tok = AutoTokenizer.from_pretrained(resolved.path) if tokenizer else None
    except (OSError, ValueError, TypeError) as err:
        raise AttnkdError(f"cannot load model '{name}' from {resolved.path}: {err}") from err
    return LoadedModel(model, tok, resolved.path, resolved.source, geometry(model.config))


def load_causal_lm(
    name: str, attn_implementation: str = "sdpa", tokenizer: bool = True
) -> LoadedModel:
    """Load a decoder with its LM head (``AutoModelForCausalLM``) and its tokenizer.

    For causal families only (Llama, Mistral, Qwen2; e.g. the packaged SmolLM2-135M-Instruct).
    Safetensors weights only. A tokenizer without a pad token gets its eos token as pad; pad
    positions are masked by ``attention_mask``, so what they hold does not matter.
    """
    from transformers import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    resolved = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(resolved.path)
        try:
            adapter = adapter_for(config.model_type)
        except ValueError as err:
            raise AttnkdError(f"cannot use model '{name}': {err}") from None
        if resolved.source != "hub":
            check_model_folder(resolved.path, name, tokenizer=tokenizer)
        if not adapter.causal:
            raise AttnkdError(
                f"cannot load model '{name}' as a causal LM: '{config.model_type}' is an encoder "
                f"family (use load_encoder)"
            )
        model_cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
        impl = attn_implementation_for(model_cls, attn_implementation)
        model = AutoModelForCausalLM.from_pretrained(
            resolved.path, attn_implementation=impl, use_safetensors=True
        )
        tok = AutoTokenizer.from_pretrained(resolved.path) if tokenizer else None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AttnkdError(f"cannot load model '{name}' from {resolved.path}: {err}") from err
    if tok is not None and tok.pad_token is None:
        if tok.eos_token is None:
            raise AttnkdError(f"the tokenizer of '{name}' has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return LoadedModel(model, tok, resolved.path, resolved.source, geometry(model.config))


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: how a teacher is held."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def freeze_parts(model: nn.Module, prefixes: list[str]) -> list[str]:
    """Freeze every parameter whose name is one of ``prefixes`` or starts with ``prefix.``
    (e.g. 'embeddings', 'encoder.layer.0'); returns the frozen names. A prefix matching no
    parameter raises :class:`ConfigError` listing the model's top-level parameter groups."""
    named = list(model.named_parameters())
    frozen = []
    for prefix in prefixes:
        hits = [(n, p) for n, p in named if n == prefix or n.startswith(prefix.rstrip(".") + ".")]
        if not hits:
            groups = sorted({".".join(n.split(".")[:2]) for n, _ in named})
            raise ConfigError(
                "student.freeze",
                f"'{prefix}' matches no parameter of the student "
                f"({type(model).__name__}); its parameters start with: {', '.join(groups[:12])}",
            )
        for name, p in hits:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


@dataclass
class FrozenEmbeddings:
    """What ``train.freeze_embeddings`` froze: the input embedding, and whether the LM head is
    the same tensor (a tied head is then frozen with it)."""

    names: list[str]
    tied_head: bool


def freeze_input_embeddings(model: nn.Module) -> FrozenEmbeddings:
    """Freeze the token embedding matrix (``get_input_embeddings().weight``).

    A decoder whose LM head is tied to it (``tie_word_embeddings``) has one tensor for both, so
    the head is frozen too: this is said in the log and in the returned record, never silently.
    Refusing freshly initialised (narrowed) embeddings is :mod:`attnkd.validate`'s job.
    """
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(False)
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is weight]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and getattr(head, "weight", None) is weight
    if tied:
        log.warning(
            "train.freeze_embeddings: the LM head is tied to the input embeddings, so it is "
            "frozen too (%s)",
            ", ".join(names) or "embeddings",
        )
    return FrozenEmbeddings(names, tied)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
