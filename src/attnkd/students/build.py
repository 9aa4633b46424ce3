"""Build a student from a teacher: choose layers, optionally narrow, inherit weights.

Layer choice is an explicit list or a rule ('every:k', 'first:n', 'last:n'). Embeddings and the
chosen blocks are copied from the teacher; any tensor whose shape changes (a narrower width,
fewer heads, a smaller FFN) keeps its fresh initialisation, and the report lists them.
Decoders (Llama family) work the same: config lists with one entry per layer are cut with the
layers, a tied LM head stays tied to the copied embeddings, an untied one is copied.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from attnkd.models.adapters import adapter_for, attn_implementation_for, base_model, resolve_layer


@dataclass
class StudentReport:
    """What was inherited from the teacher and what was freshly initialised."""

    layers: list[int]
    inherited: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)


def select_layers(num_layers: int, layers: list[int] | None = None, rule: str = "") -> list[int]:
    """Teacher layer indices kept in the student, from an explicit list or a rule.

    Rules: ``every:k`` (layers k-1, 2k-1, ... so the last layer is kept), ``first:n``, ``last:n``,
    ``even:n`` (n layers evenly spread, the first and the last kept).
    """
    if layers:
        out = [resolve_layer(i, num_layers, "student.layers") for i in layers]
        if sorted(set(out)) != out:
            raise ValueError(f"student.layers must be increasing and unique, got {layers}")
        return out
    if not rule:
        raise ValueError("give student.layers or student.layer_rule")
    kind, _, arg = rule.partition(":")
    try:
        k = int(arg)
    except ValueError:
        raise ValueError(
            f"layer rule '{rule}': expected 'every:k', 'first:n', 'last:n' or 'even:n'"
        ) from None
    if not 1 <= k <= num_layers:
        raise ValueError(f"layer rule '{rule}': {k} must be in 1..{num_layers}")
    if kind == "every":
        return list(range(k - 1, num_layers, k))
    if kind == "first":
        return list(range(k))
    if kind == "last":
        return list(range(num_layers - k, num_layers))
    if kind == "even":
        return even_layers(num_layers, k)
    raise ValueError(f"layer rule '{rule}': expected 'every:k', 'first:n', 'last:n' or 'even:n'")


def even_layers(num_layers: int, n: int) -> list[int]:
    """``n`` of ``num_layers`` layers evenly spread (nearest index, halves to even), the first
    and the last kept: ``even_layers(6, 3) == [0, 2, 5]``, ``even_layers(6, 4) == [0, 2, 3, 5]``;
    ``n == 1`` keeps the last layer."""
    if n == 1:
        return [num_layers - 1]
    return sorted({round(i * (num_layers - 1) / (n - 1)) for i in range(n)})


def build_student(
    teacher: nn.Module,
    layers: list[int],
    hidden_size: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
    attn_implementation: str | None = None,
) -> tuple[nn.Module, StudentReport]:
    """A new model of the teacher's class with the chosen layers (and optionally narrower).

    Returns the student (train mode, on the teacher's device) and a :class:`StudentReport`.
    """
    adapter = adapter_for(teacher)
    cfg = _student_config(teacher.config, layers, hidden_size, num_heads, intermediate_size)
    if attn_implementation:
        cfg._attn_implementation = attn_implementation_for(type(teacher), attn_implementation)
    kwargs = {}
    if "add_pooling_layer" in type(teacher).__init__.__code__.co_varnames:
        kwargs["add_pooling_layer"] = getattr(teacher, "pooler", None) is not None
    student = type(teacher)(cfg, **kwargs)

    t_state = teacher.state_dict()
    prefix = _prefix(teacher)
    block = f"{prefix}{adapter.layers}."
    mapping = {}
    for key in student.state_dict():
        if key.startswith(block):
            idx, _, rest = key[len(block) :].partition(".")
            mapping[key] = f"{block}{layers[int(idx)]}.{rest}"
        else:
            mapping[key] = key
    report = StudentReport(layers=list(layers))
    new_state = student.state_dict()
    with torch.no_grad():
        for key, src in mapping.items():
            if src in t_state and t_state[src].shape == new_state[key].shape:
                new_state[key].copy_(t_state[src])
                report.inherited.append(key)
            else:
                report.fresh.append(key)
    student.load_state_dict(new_state)
    student.to(next(teacher.parameters()).device)
    student.train()
    return student, report


def student_config(
    teacher_cfg,
    layers: list[int],
    hidden_size: int | None = None,
    num_heads: int | None = None,
    intermediate_size: int | None = None,
):
    """The config :func:`build_student` gives the student (no weights; for estimates)."""
    return _student_config(teacher_cfg, layers, hidden_size, num_heads, intermediate_size)


_PER_LAYER_KEYS = ("layer_types",)
"""Config lists with one entry per layer (e.g. Qwen2's full/sliding attention per layer)."""


def _student_config(
    teacher_cfg,
    layers: list[int],
    hidden_size: int | None,
    num_heads: int | None,
    intermediate_size: int | None,
):
    """The teacher's config cut to ``layers`` (per-layer lists too) and optionally narrowed."""
    cfg = copy.deepcopy(teacher_cfg)
    n_teacher = int(teacher_cfg.num_hidden_layers)
    cfg.num_hidden_layers = len(layers)
    for key in _PER_LAYER_KEYS:
        per_layer = getattr(cfg, key, None)
        if isinstance(per_layer, list | tuple) and len(per_layer) == n_teacher:
            setattr(cfg, key, type(per_layer)(per_layer[i] for i in layers))
    if hidden_size:
        cfg.hidden_size = hidden_size
    if num_heads:
        cfg.num_attention_heads = num_heads
    if intermediate_size:
        cfg.intermediate_size = intermediate_size
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(
            f"student hidden_size {cfg.hidden_size} is not divisible by "
            f"{cfg.num_attention_heads} heads"
        )
    if (hidden_size or num_heads) and getattr(cfg, "head_dim", None):
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads  # Llama stores it explicitly
    kv = getattr(cfg, "num_key_value_heads", None)
    if kv and cfg.num_attention_heads % kv:
        raise ValueError(
            f"student num_heads {cfg.num_attention_heads} is not a multiple of the "
            f"{kv} key/value heads (grouped-query attention)"
        )
    return cfg


def _prefix(model: nn.Module) -> str:
    base = base_model(model)
    if base is model:
        return ""
    return f"{model.base_model_prefix}."
