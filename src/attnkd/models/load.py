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


@dataclass(frozen=True)
class _Head:
    """One kind of Hugging Face model a loader builds: its transformers mapping and Auto class,
    whether the family must be causal (None: either), and the error when it is not."""

    mapping: str
    auto: str
    causal: bool | None
    wrong_family: str = ""
    """Message for the wrong family, formatted with ``name`` and ``model_type``."""
    drop_pooler: bool = False
    """Build without the pooler where the class has one (mean pooling never reads it)."""


HEADS = {
    "encoder": _Head("MODEL_MAPPING", "AutoModel", None, drop_pooler=True),
    "causal_lm": _Head(
        "MODEL_FOR_CAUSAL_LM_MAPPING",
        "AutoModelForCausalLM",
        True,
        "cannot load model '{name}' as a causal LM: '{model_type}' is an encoder family "
        "(use load_encoder)",
    ),
    "sequence_classification": _Head(
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING",
        "AutoModelForSequenceClassification",
        False,
        "model '{name}' is a decoder; sequence_classification needs an encoder (BERT, MPNet)",
    ),
}
"""The model kinds :func:`load_pretrained` builds, by name."""


def load_pretrained(
    name: str, head: str, attn_implementation: str = "sdpa", tokenizer: bool = True
) -> LoadedModel:
    """Load model ``name`` (hub id, folder or packaged copy) as ``head`` (a key of
    :data:`HEADS`) with its tokenizer: the one preamble every loader shares.

    Resolves the name, checks the family has an adapter (and is causal or not, as ``head``
    asks), checks a local folder's files, picks the attention implementation the class
    supports, and loads safetensors weights only (no unpickling). Any failure is an
    :class:`AttnkdError` naming the model.
    """
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    spec = HEADS[head]
    resolved = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(resolved.path)
        try:
            adapter = adapter_for(config.model_type)
        except ValueError as err:
            raise AttnkdError(f"cannot use model '{name}': {err}") from None
        if spec.causal is not None and adapter.causal != spec.causal:
            raise AttnkdError(spec.wrong_family.format(name=name, model_type=config.model_type))
        if resolved.source != "hub":
            check_model_folder(resolved.path, name, tokenizer=tokenizer)
        model_cls = getattr(transformers, spec.mapping)[type(config)]
        kwargs = {}
        if spec.drop_pooler and "add_pooling_layer" in inspect.signature(model_cls).parameters:
            kwargs["add_pooling_layer"] = False  # BERT, MPNet
        impl = attn_implementation_for(model_cls, attn_implementation)
        model = getattr(transformers, spec.auto).from_pretrained(
            resolved.path, attn_implementation=impl, use_safetensors=True, **kwargs
        )
        tok = AutoTokenizer.from_pretrained(resolved.path) if tokenizer else None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AttnkdError(f"cannot load model '{name}' from {resolved.path}: {err}") from err
    return LoadedModel(model, tok, resolved.path, resolved.source, geometry(model.config))


def load_encoder(
    name: str, attn_implementation: str = "sdpa", tokenizer: bool = True
) -> LoadedModel:
    """Load a bare encoder (``AutoModel``) and its tokenizer from a name, folder or packaged copy.

    Only safetensors weights are accepted (``use_safetensors=True``): no unpickling. Families
    without fused attention (MPNet) get 'eager' when 'sdpa' is asked for.
    """
    return load_pretrained(name, "encoder", attn_implementation, tokenizer)


def load_causal_lm(
    name: str, attn_implementation: str = "sdpa", tokenizer: bool = True
) -> LoadedModel:
    """Load a decoder with its LM head (``AutoModelForCausalLM``) and its tokenizer.

    For causal families only (Llama, Mistral, Qwen2; e.g. the packaged SmolLM2-135M-Instruct).
    Safetensors weights only. A tokenizer without a pad token gets its eos token as pad; pad
    positions are masked by ``attention_mask``, so what they hold does not matter.
    """
    loaded = load_pretrained(name, "causal_lm", attn_implementation, tokenizer)
    tok = loaded.tokenizer
    if tok is not None and tok.pad_token is None:
        if tok.eos_token is None:
            raise AttnkdError(f"the tokenizer of '{name}' has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return loaded


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
