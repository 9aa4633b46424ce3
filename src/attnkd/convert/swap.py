"""Swap the attention of chosen layers of a copy of a model for a converted :class:`Mixer`.

Everything is inherited: the q/k/v/o projections stay the very modules (same state-dict keys),
MLPs, norms and embeddings are untouched; only ``softmax(q k^T) v`` is replaced. Supported:
BERT (bidirectional; all-MiniLM-L6-v2) and the Llama family (causal, GQA, RoPE; SmolLM2),
located through :mod:`attnkd.models.adapters`.

The converted module is called exactly like the one it replaces (transformers 5.x): Llama
passes ``position_embeddings=(cos, sin)``, a 4-D mask (or None) and a ``cache``; BERT passes
the mask and returns the per-head context before its output projection. The key padding is
read from the last row of the 4-D mask (bool: True = allowed; float: 0 = allowed), which is
the padding row for both causal and bidirectional masks.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from attnkd.convert.hybrid import HybridAttention
from attnkd.convert.linear import LinearAttention
from attnkd.convert.mixer import Mixer
from attnkd.convert.shared import SharedAttention, SourceAttention
from attnkd.convert.sparse import SparseTopKAttention
from attnkd.convert.state import MixerState
from attnkd.convert.window import WindowAttention
from attnkd.errors import ConfigError
from attnkd.models.adapters import adapter_for, base_model, geometry, resolve_layer

KINDS: dict[str, type[Mixer]] = {
    "linear": LinearAttention,
    "window": WindowAttention,
    "hybrid": HybridAttention,
    "shared": SharedAttention,
    "sparse": SparseTopKAttention,
}
SUPPORTED_FAMILIES = ("bert", "llama")


@dataclass
class ConversionSpec:
    """What to convert: ``kind`` ('linear' | 'window' | 'hybrid' | 'shared' | 'sparse'), which
    layers (None = all), the window size (window/hybrid) and the chunk size of the parallel form
    (None = window, or 64 for linear). ``shared``: ``share`` maps each sharing layer to its
    source layer (``layers`` is ignored). ``sparse``: ``topk`` keys per query, picked by scores
    estimated in ``rank`` dimensions. ``terrace`` (window/hybrid, causal): the window is cut
    in tiles of ``window`` keys and each query sees by softmax its own tile up to itself and
    the whole tile before (``window`` to ``2 window - 1`` keys; LoLCATs' "terracing"), so no
    key inside the slab is linear: cheaper than a sliding window of the same size. ``sinks``
    (window/hybrid, causal, <= chunk): the first ``sinks`` positions stay softmax keys of every
    query (StreamingLLM's attention sinks) instead of entering the linear sums."""

    kind: str = "hybrid"
    layers: list[int] | None = None
    window: int = 64
    chunk: int | None = None
    share: dict[int, int] | None = None
    topk: int = 32
    rank: int = 8
    terrace: bool = False
    sinks: int = 0

    def __post_init__(self) -> None:
        if self.share is not None:  # JSON/YAML keys may come as strings
            self.share = {int(k): int(v) for k, v in self.share.items()}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Family:
    q: str
    k: str
    v: str
    o: str | None
    rope: bool
    causal: bool


def _family(model: nn.Module) -> _Family:
    try:
        adapter = adapter_for(model)
    except ValueError as err:
        raise ConfigError("convert.model", str(err)) from None
    if adapter.family not in SUPPORTED_FAMILIES:
        raise ConfigError(
            "convert.model",
            f"attention conversion supports the families {', '.join(SUPPORTED_FAMILIES)}; "
            f"got '{adapter.family}'",
        )
    att = adapter.attention
    out = adapter.attention_output
    inner = out.startswith(att + ".")
    last = lambda p: p.rsplit(".", 1)[1]  # noqa: E731
    return _Family(
        q=last(adapter.query),
        k=last(adapter.key),
        v=last(adapter.value),
        o=last(out) if inner else None,
        rope=adapter.rope,
        causal=adapter.causal,
    )


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, S, D); cos/sin (B or 1, S, D) -> rotated x (Su et al. 2021, HF layout)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def key_padding(mask: Tensor | None, batch: int, new: int) -> Tensor | None:
    """(B, new) bool key mask of the newest ``new`` keys from a HF 2-D or 4-D mask, or None."""
    if mask is None:
        return None
    row = mask if mask.dim() == 2 else mask[:, 0, -1, :]
    allowed = row if row.dtype == torch.bool else row == 0
    return allowed[:, -new:].expand(batch, new)


class ConvertedAttention(nn.Module):
    """Drop-in replacement of a family's self-attention module with a :class:`Mixer` inside.

    Holds the original module's children under their own names (so weights keep their keys)
    plus ``mixer``. Returns ``(output, None)`` like the module it replaces (no attention
    probabilities exist).
    """

    def __init__(self, original: nn.Module, mixer: Mixer, family: _Family, layer_idx: int):
        super().__init__()
        dropped = () if mixer.needs_qk else (family.q, family.k)
        for name, child in original.named_children():
            if name not in dropped:
                self.add_module(name, child)
        self.mixer = mixer
        self.family = family
        self.layer_idx = layer_idx
        self.config = getattr(original, "config", None)

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        position_embeddings: tuple[Tensor, Tensor] | None = None,
        cache=None,
        past_key_values=None,
        **kwargs,
    ) -> tuple[Tensor, None]:
        b, s, _ = hidden_states.shape
        q, k, v = self.project(hidden_states, position_embeddings)
        f, m = self.family, self.mixer
        real = key_padding(attention_mask, b, s)
        cache = cache if cache is not None else past_key_values
        if cache is not None and m.causal:
            y = m.step(q, k, v, real, self._state(cache))
        else:
            y = m(q, k, v, real)
        y = y.transpose(1, 2).reshape(b, s, -1)
        if f.o is not None:
            y = getattr(self, f.o)(y)
        return y, None

    def project(
        self, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The inherited projections (and RoPE): q (B, H, S, D), k and v (B, H_kv, S, D)
        (q and k None for a mixer that does not use them)."""
        f, m = self.family, self.mixer
        b, s, _ = hidden_states.shape
        if not m.needs_qk:
            v = getattr(self, f.v)(hidden_states)
            return None, None, v.view(b, s, -1, m.head_dim).transpose(1, 2)
        q = getattr(self, f.q)(hidden_states).view(b, s, -1, m.head_dim).transpose(1, 2)
        k = getattr(self, f.k)(hidden_states).view(b, s, -1, m.head_dim).transpose(1, 2)
        v = getattr(self, f.v)(hidden_states).view(b, s, -1, m.head_dim).transpose(1, 2)
        if f.rope:
            if position_embeddings is None:
                raise ValueError("a rotary family needs position_embeddings=(cos, sin)")
            cos, sin = position_embeddings
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        return q, k, v

    def _state(self, cache) -> MixerState:
        """This layer's :class:`MixerState` in a HF cache, swapped in on first use."""
        layers = getattr(cache, "layers", None)
        if layers is None:
            raise TypeError(f"unsupported cache object {type(cache).__name__} (needs .layers)")
        while len(layers) <= self.layer_idx:  # lazily grown caches
            layers.append(MixerState())
        if not isinstance(layers[self.layer_idx], MixerState):
            if layers[self.layer_idx].get_seq_length():
                raise RuntimeError(f"layer {self.layer_idx}: cache holds keys of another attention")
            layers[self.layer_idx] = MixerState()
        return layers[self.layer_idx]


def build_mixer(spec: ConversionSpec, model_config, causal: bool) -> Mixer:
    """A fresh mixer of ``spec.kind`` for one layer of a model with ``model_config``."""
    if spec.kind not in KINDS:
        raise ConfigError("convert.kind", f"'{spec.kind}' is not one of {', '.join(KINDS)}")
    geo = geometry(model_config)
    heads = (geo.num_heads, geo.num_kv_heads, geo.head_dim, causal)
    if spec.kind == "linear":
        return LinearAttention(*heads, chunk=spec.chunk or 64)
    if spec.kind == "sparse":
        if spec.topk < 1 or not 1 <= spec.rank <= geo.head_dim:
            raise ConfigError(
                "convert.topk",
                f"sparse needs topk >= 1 and 1 <= rank <= {geo.head_dim}, "
                f"got topk {spec.topk}, rank {spec.rank}",
            )
        return SparseTopKAttention(*heads, topk=spec.topk, rank=spec.rank, chunk=spec.chunk)
    if spec.kind == "shared":
        raise ConfigError("convert.kind", "'shared' mixers are built by convert_attention")
    if spec.window < 1:
        raise ConfigError("convert.window", f"must be >= 1 for '{spec.kind}', got {spec.window}")
    if spec.terrace and not (causal and spec.chunk in (None, spec.window)):
        raise ConfigError(
            "convert.terrace",
            f"a terraced window needs a causal model and chunk == window ({spec.window}), "
            f"got causal={causal}, chunk {spec.chunk}",
        )
    if spec.sinks and not (causal and 0 < spec.sinks <= (spec.chunk or spec.window)):
        raise ConfigError(
            "convert.sinks",
            f"attention sinks need a causal model and 0 < sinks <= chunk "
            f"({spec.chunk or spec.window}), got causal={causal}, sinks {spec.sinks}",
        )
    return KINDS[spec.kind](*heads, window=spec.window, chunk=spec.chunk, terrace=spec.terrace,
                            sinks=spec.sinks)  # fmt: skip


def _sharing(spec: ConversionSpec, n: int) -> dict[int, int]:
    """The checked ``share`` map: every sharing layer after its source, no source sharing."""
    if not spec.share:
        raise ConfigError("convert.share", "kind 'shared' needs share: {layer: source layer}")
    try:
        share = {resolve_layer(j, n): resolve_layer(i, n) for j, i in spec.share.items()}
    except IndexError as err:
        raise ConfigError("convert.share", str(err)) from None
    for j, i in share.items():
        if i >= j:
            raise ConfigError("convert.share", f"layer {j} must share an earlier layer, got {i}")
        if i in share:
            raise ConfigError(
                "convert.share", f"layer {i} is itself shared: let layer {j} share {share[i]}"
            )
    return dict(sorted(share.items()))


def convert_attention(model: nn.Module, spec: ConversionSpec, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (or ``model`` itself when ``inplace``) with the attention of
    ``spec.layers`` replaced by ``spec.kind``; every weight is inherited.

    Works on the bare model or a task model (``LlamaForCausalLM``, ``BertModel``).
    """
    target = model if inplace else copy.deepcopy(model)
    family = _family(target)
    adapter = adapter_for(target)
    base = base_model(target)
    geo = geometry(target.config)
    n = geo.num_layers
    share = _sharing(spec, n) if spec.kind == "shared" else None
    layers = range(n) if spec.layers is None else spec.layers
    if share is not None:
        layers = set(share) | set(share.values())
    try:
        chosen = sorted({resolve_layer(i, n) for i in layers})
    except IndexError as err:
        raise ConfigError("convert.layers", str(err)) from None
    heads = (geo.num_heads, geo.num_kv_heads, geo.head_dim, family.causal)
    for i in chosen:
        path = adapter.attention.format(i=i)
        parent_path, name = path.rsplit(".", 1)
        parent = base.get_submodule(parent_path)
        original = getattr(parent, name)
        if isinstance(original, ConvertedAttention):
            raise ConfigError("convert.layers", f"layer {i} is already converted")
        if share is None:
            mixer = build_mixer(spec, target.config, family.causal)
        elif i in share:
            mixer = SharedAttention(*heads, source=share[i])
        else:
            mixer = SourceAttention(*heads)
        ref = next(original.parameters())
        mixer.to(device=ref.device)
        setattr(parent, name, ConvertedAttention(original, mixer, family, i))
    if share is not None:  # each sharing layer reads its source's slot
        convs = converted_modules(target)
        for j, i in share.items():
            convs[j].mixer.slot = convs[i].mixer.slot
    target.attnkd_conversion = {**spec.to_dict(), "layers": chosen}
    return target


def converted_modules(model: nn.Module) -> dict[int, ConvertedAttention]:
    """Layer index -> converted attention module, in layer order."""
    found = {m.layer_idx: m for m in model.modules() if isinstance(m, ConvertedAttention)}
    return dict(sorted(found.items()))


def mixer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a conversion added (feature maps, gamma): what stage 1 trains."""
    return [p for m in converted_modules(model).values() for p in m.mixer.parameters()]
