"""Predict a training step's peak memory from the configs alone (no weights are read).

The models are instantiated on PyTorch's ``meta`` device from their ``config.json`` (exact
parameter counts for any family, zero bytes), and activations are counted per token and layer
from the widths. The prediction is the worst case of one step at ``train.batch_size`` x
``data.max_length`` tokens (every sequence padded to the full length), in float32 (the teacher
in bf16/fp16 when ``train.teacher_dtype`` says so; ``train.precision`` autocast, which keeps
some activations in half precision, is not modelled, so the estimate is then an upper bound):

- teacher weights; student weights, gradients and AdamW's two moment buffers (trainable only);
- activations autograd keeps for the student's backward (per layer: the norm/linear inputs,
  q/k/v, attention output, the MLP's intermediates; dropout masks; the (B, H, T, T) attention
  matrices where they are materialised: eager attention, or attention dropout, which sends
  CPU SDPA to its math path); the teacher's largest transient under ``no_grad``;
- captured teacher tensors (taps) and the loss terms' workspace (logits, their gradient,
  relation gradient buffers);
- AdamW's foreach temporaries at the optimizer step.

What it leaves out: the Python/PyTorch runtime itself (a few hundred MB of libraries on CPU),
the data (token ids, a corpus in memory), allocator fragmentation and CUDA context/workspaces.
``bench/memory_estimate.py`` compares it with measured peaks.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from attnkd.config.schema import DistillConfig

FLOAT = 4
"""Bytes per float32 element (weights, activations and optimizer states are float32)."""
GiB = 1 << 30
MiB = 1 << 20


@dataclass
class MemoryEstimate:
    """Predicted peak of one training step, in bytes, with its parts (``parts`` sums to
    ``peak`` plus the parts that are not live at the peak, listed in ``not_at_peak``)."""

    parts: dict[str, int]
    peak: int
    not_at_peak: list[str] = field(default_factory=list)
    tokens: int = 0
    device: str = "cpu"
    available: int | None = None
    """Free memory on the device (MemAvailable on CPU, free CUDA memory on GPU), if known."""
    peak_at: str = ""
    """The moment of the step where the peak falls ('forward/backward', 'optimizer step', ...)."""

    @property
    def fits(self) -> bool:
        return self.available is None or self.peak <= self.available

    def table(self) -> str:
        """The breakdown as aligned text lines (MiB)."""
        width = max(len(k) for k in self.parts)
        lines = [f"predicted peak memory of one training step ({self.tokens} tokens, float32):"]
        for name, value in self.parts.items():
            note = "  (not at the peak)" if name in self.not_at_peak else ""
            lines.append(f"  {name:<{width}}  {value / MiB:10.1f} MiB{note}")
        lines.append(f"  {'peak':<{width}}  {self.peak / MiB:10.1f} MiB  (at {self.peak_at})")
        if self.available is not None:
            lines.append(f"  {'available (' + self.device + ')':<{width}}"
                         f"  {self.available / MiB:10.1f} MiB")  # fmt: skip
        return "\n".join(lines)

    def warning(self) -> str | None:
        """A one-line warning when the predicted peak exceeds the available memory."""
        if self.fits:
            return None
        return (
            f"predicted peak {self.peak / GiB:.2f} GiB exceeds the {self.available / GiB:.2f} GiB "
            f"available on {self.device}: lower train.batch_size or data.max_length, use "
            "train.grad_accum, or cut the student"
        )


@dataclass
class _Shape:
    """What the activation count needs from one model's config."""

    layers: int
    width: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool
    rope: bool
    attn_dropout: float
    hidden_dropout: float
    materialised_attention: bool
    params: int
    embedding_params: int


def _model_class(config, causal: bool):
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    return (MODEL_FOR_CAUSAL_LM_MAPPING if causal else MODEL_MAPPING)[type(config)]


def _meta_params(config, causal: bool) -> tuple[int, int]:
    """(all parameters, input-embedding parameters) of the model built on the meta device."""
    import torch

    cls = _model_class(config, causal)
    kwargs = {}
    if "add_pooling_layer" in inspect.signature(cls.__init__).parameters:
        kwargs["add_pooling_layer"] = False  # as the loaders build encoders
    with torch.device("meta"):
        model = cls(config, **kwargs)
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    return total, embed


def _shape(config, causal: bool, attn_implementation: str) -> _Shape:
    from attnkd.models.adapters import adapter_for, attn_implementation_for, geometry

    g = geometry(config)
    adapter = adapter_for(config.model_type)
    ffn = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
              or 4 * g.hidden_size)  # fmt: skip
    attn_drop = float(getattr(config, "attention_probs_dropout_prob", None)
                      or getattr(config, "attention_dropout", None)
                      or getattr(config, "attn_pdrop", None) or 0.0)  # fmt: skip
    hidden_drop = float(getattr(config, "hidden_dropout_prob", None)
                        or getattr(config, "resid_pdrop", None) or 0.0)  # fmt: skip
    impl = attn_implementation_for(_model_class(config, causal), attn_implementation)
    params, embed = _meta_params(config, causal)
    return _Shape(
        layers=g.num_layers, width=g.hidden_size, ffn=ffn, heads=g.num_heads,
        kv_heads=g.num_kv_heads, head_dim=g.head_dim, vocab=int(config.vocab_size),
        gated_mlp=adapter.family == "llama", rope=adapter.rope, attn_dropout=attn_drop,
        hidden_dropout=hidden_drop, materialised_attention=impl == "eager" or attn_drop > 0,
        params=params, embedding_params=embed,
    )  # fmt: skip


def _saved_per_token_layer(s: _Shape) -> tuple[int, int]:
    """(float elements, mask bytes) autograd keeps per token and layer in training."""
    q = s.heads * s.head_dim
    kv = s.kv_heads * s.head_dim
    attn = s.width + q + 2 * kv + q + q  # norm out, q, k, v, attention out, o_proj input
    if s.rope:
        attn += q + kv  # rotated copies of q and k
    if s.kv_heads != s.heads:
        attn += 2 * q  # k and v repeated to every query head
    if s.materialised_attention:
        attn += q + 2 * kv  # q, k, v split into heads and made contiguous for the matmuls
    mlp = s.width + (4 * s.ffn if s.gated_mlp else 2 * s.ffn)
    norms = 2 * s.width  # inputs of the two residual norms
    masks = 2 * s.width if s.hidden_dropout > 0 else 0
    return attn + mlp + norms, masks


def _attention_matrix_bytes(s: _Shape, batch: int, seq: int, training: bool) -> int:
    """(B, H, T, T) matrices kept per layer where attention is materialised."""
    if not s.materialised_attention:
        return 0
    n = batch * s.heads * seq * seq
    if not training:
        return 2 * n * FLOAT  # scores and probabilities, transient
    # kept for backward: the probabilities; with dropout also its mask and the dropped copy
    return n * FLOAT * (3 if s.attn_dropout > 0 else 1)


def _loss_workspace(cfg: DistillConfig, t: _Shape, s: _Shape, tokens: int) -> tuple[int, int]:
    """(teacher taps, loss workspace) in bytes for the configured terms."""
    taps = workspace = 0
    seen: set[tuple[str, int]] = set()
    for term in cfg.losses:
        if term.name == "logits":
            if ("logits", 0) not in seen:
                taps += tokens * t.vocab * FLOAT
                seen.add(("logits", 0))
            workspace += tokens * s.vocab * FLOAT  # the gradient of the student's logits
            continue
        if term.name in ("relation", "attention", "value_relation", "attention_mse", "tinybert"):
            kinds = {"q", "k", "v"}
            widths = {"q": t.heads * t.head_dim, "k": t.kv_heads * t.head_dim,
                      "v": t.kv_heads * t.head_dim}  # fmt: skip
            s_widths = {"q": s.heads * s.head_dim, "k": s.kv_heads * s.head_dim,
                        "v": s.kv_heads * s.head_dim}  # fmt: skip
            for k in kinds:
                if (k, term.teacher_layer) not in seen:
                    taps += tokens * widths[k] * FLOAT
                    seen.add((k, term.teacher_layer))
                workspace += tokens * s_widths[k] * FLOAT  # gradient buffers formed forward
            continue
        if ("hidden", term.teacher_layer) not in seen:
            taps += tokens * t.width * FLOAT
            seen.add(("hidden", term.teacher_layer))
        workspace += tokens * s.width * FLOAT
    return taps, workspace


def _cut_student_config(cfg: DistillConfig, teacher_config):
    from attnkd.models.load import load_config
    from attnkd.students.build import select_layers, student_config

    s = cfg.student
    if s.init != "teacher":
        return load_config(s.init)
    layers = select_layers(int(teacher_config.num_hidden_layers), s.layers, s.layer_rule)
    return student_config(teacher_config, layers, s.hidden_size, s.num_heads, s.intermediate_size)


def available_memory(device: str = "cpu") -> int | None:
    """Free memory on ``device``: /proc/meminfo MemAvailable, or CUDA's free bytes."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    from attnkd.eval.memory import available_bytes

    try:
        return available_bytes() or None
    except OSError:
        return None


def _device_name(cfg: DistillConfig) -> str:
    """The device ``train.device`` resolves to ('cpu' when it cannot be resolved here)."""
    from attnkd.engine.device import resolve_device
    from attnkd.errors import ConfigError

    try:
        return str(resolve_device(getattr(cfg.train, "device", "cpu")))
    except ConfigError:
        return "cpu"


def _teacher_bytes(cfg: DistillConfig) -> int:
    """Bytes per teacher weight: 2 when ``train.teacher_dtype`` holds it in bf16/fp16."""
    return 2 if getattr(cfg.train, "teacher_dtype", None) in ("bf16", "fp16") else FLOAT


def estimate_memory(
    cfg: DistillConfig, teacher_config=None, student_config=None, device: str | None = None
) -> MemoryEstimate:
    """Predict the peak memory of one training step of ``cfg`` (see the module docstring).

    ``teacher_config``/``student_config`` are Hugging Face configs; read from the models'
    ``config.json`` when omitted (the student's is cut from the teacher's when
    ``student.init='teacher'``).
    """
    from attnkd.models.load import load_config

    causal = cfg.task == "causal_lm"
    tc = teacher_config if teacher_config is not None else load_config(cfg.teacher.name)
    sc = student_config if student_config is not None else _cut_student_config(cfg, tc)
    t = _shape(tc, causal, cfg.teacher.attn_implementation)
    s = _shape(sc, causal, cfg.student.attn_implementation)
    batch, seq = cfg.train.batch_size, cfg.data.max_length
    tokens = batch * seq

    frozen = s.embedding_params if cfg.train.freeze_embeddings else 0
    trainable = s.params - frozen
    floats, masks = _saved_per_token_layer(s)
    per_layer = tokens * (floats * FLOAT + masks) + _attention_matrix_bytes(s, batch, seq, True)
    activations = s.layers * per_layer + tokens * s.width * FLOAT * 2  # + embedding output
    if causal:
        activations += tokens * s.vocab * FLOAT  # the student's logits
    # teacher under no_grad: the largest intermediate of one layer (MLP or attention matrix)
    t_mlp = tokens * (3 * t.ffn if t.gated_mlp else 2 * t.ffn) * FLOAT
    teacher_transient = max(t_mlp, _attention_matrix_bytes(t, batch, seq, False))
    taps, workspace = _loss_workspace(cfg, t, s, tokens)
    parts = {
        "teacher weights": t.params * _teacher_bytes(cfg),
        "student weights": s.params * FLOAT,
        "student gradients": trainable * FLOAT,
        "AdamW moments (2x)": 2 * trainable * FLOAT,
        "student activations": activations,
        "teacher forward transient": teacher_transient,
        "captured teacher tensors": taps,
        "loss workspace": workspace,
        "optimizer step temporaries": trainable * FLOAT,
    }
    resident = parts["teacher weights"] + parts["student weights"] + parts["AdamW moments (2x)"]
    # three moments of a step; the peak is the largest:
    # teacher forward (its transient), student forward/backward (activations, taps, loss
    # workspace while gradients fill), optimizer step (activations gone, foreach temporaries)
    moments = {
        "teacher forward": (resident + teacher_transient, ["teacher forward transient"]),
        "forward/backward": (
            resident + parts["student gradients"] + activations + taps + workspace,
            ["student gradients", "student activations", "captured teacher tensors",
             "loss workspace"],
        ),
        "optimizer step": (
            resident + parts["student gradients"] + parts["optimizer step temporaries"],
            ["student gradients", "optimizer step temporaries"],
        ),
    }  # fmt: skip
    at, (peak, live) = max(moments.items(), key=lambda kv: kv[1][0])
    extra = set(parts) - set(live) - {"teacher weights", "student weights", "AdamW moments (2x)"}
    not_at_peak = [k for k in parts if k in extra]
    dev = device or _device_name(cfg)
    return MemoryEstimate(parts, int(peak), not_at_peak, tokens, dev, available_memory(dev), at)


__all__ = ["MemoryEstimate", "available_memory", "estimate_memory"]
