"""GQA -> MLA: grouped keys/values rewritten as one low-rank latent plus up-projections (TransMLA).

For a Llama-family layer, keys and values come from ``W_kv = [W_k; W_v]`` (2 H_kv d x width).
With its SVD ``W_kv = U S V^T``, the layer caches the latent ``c = x (S_r V_r^T)^T`` (rank r)
and rebuilds ``[k; v] = c U_r^T + b`` at attention time; RoPE is applied to the rebuilt keys
(positions from the model's own rotary module), so the cache holds the latent only. At full
rank (r = 2 H_kv d, the default) the conversion is exact up to float rounding; a smaller r
compresses the cache to r / (2 H_kv d) of the teacher's and is recovered by distillation
(stage ``e2e`` of ``attnkd convert``, or :mod:`attnkd.convert.e2e`).

Choosing the latent: without data, the SVD of the weights (best rank-r approximation of
``W_kv``); with calibration batches, TransMLA's activation PCA: the top-r eigenvectors ``U_r``
of the covariance of ``[k; v]`` on real tokens, latent ``c = x (U_r^T W_kv)^T``, keys/values
``c U_r^T + b`` (best rank-r reconstruction of the activations the model actually produces).
Both are exact at full rank. ``save_converted`` / ``load_converted`` handle MLA models.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from transformers.cache_utils import CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from attnkd.convert.swap import _rope
from attnkd.errors import ConfigError
from attnkd.models.adapters import adapter_for, base_model, geometry, resolve_layer


class LatentState(CacheLayerMixin):
    """Decoding cache of one MLA layer: the latent (B, S, r) of every token seen."""

    is_sliding = False

    def __init__(self) -> None:
        super().__init__()
        self.latent: Tensor | None = None

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        raise RuntimeError("an MLA layer caches its latent, not keys and values")

    def append(self, c: Tensor) -> Tensor:
        self.latent = c if self.latent is None else torch.cat([self.latent, c], dim=1)
        self.is_initialized = True
        return self.latent

    def get_seq_length(self) -> int:
        return 0 if self.latent is None else self.latent.shape[1]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.latent, self.is_initialized = None, False

    def nbytes(self) -> int:
        return 0 if self.latent is None else self.latent.numel() * self.latent.element_size()


class LatentKVAttention(nn.Module):
    """Llama-family attention with a latent KV cache; q/o projections inherited as they are."""

    def __init__(
        self,
        original: nn.Module,
        rotary: nn.Module,
        rank: int | None = None,
        covariance: Tensor | None = None,
    ):
        super().__init__()
        self.q_proj, self.o_proj = original.q_proj, original.o_proj
        self.layer_idx, self.config = original.layer_idx, original.config
        self.head_dim, self.scaling = original.head_dim, original.scaling
        self.num_key_value_groups = original.num_key_value_groups
        self.is_causal = True
        self.rotary = [rotary]  # a list: not a submodule (its buffers stay the model's)
        wk, wv = original.k_proj.weight, original.v_proj.weight
        self.kv_width = wk.shape[0]
        w = torch.cat([wk, wv]).double()  # (2 H_kv d, width)
        full = w.shape[0]
        r = full if rank is None else rank
        if not 1 <= r <= min(full, w.shape[1]):
            raise ConfigError("mla.rank", f"must be in 1..{min(full, w.shape[1])}, got {rank}")
        if covariance is None:  # data-free: best rank-r approximation of the weights
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            down, up = s[:r, None] * vh[:r], u[:, :r]
        else:  # activation PCA (TransMLA): best rank-r reconstruction of [k; v] on the data
            _, vecs = torch.linalg.eigh(covariance.double())
            up = vecs[:, -r:].flip(-1)  # (2 H_kv d, r), largest variance first
            down = up.T @ w
        self.kv_down = nn.Linear(w.shape[1], r, bias=False)
        self.kv_up = nn.Linear(r, full, bias=original.k_proj.bias is not None)
        with torch.no_grad():
            self.kv_down.weight.copy_(down.to(wk.dtype))
            self.kv_up.weight.copy_(up.to(wk.dtype))
            if self.kv_up.bias is not None:
                self.kv_up.bias.copy_(torch.cat([original.k_proj.bias, original.v_proj.bias]))
        self.to(wk.device)

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
        d = self.head_dim
        q = self.q_proj(hidden_states).view(b, s, -1, d).transpose(1, 2)
        cos, sin = position_embeddings
        q = _rope(q, cos, sin)
        c = self.kv_down(hidden_states)
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            c = self._state(cache).append(c)
        total = c.shape[1]
        kv = self.kv_up(c)
        k = kv[..., : self.kv_width].view(b, total, -1, d).transpose(1, 2)
        v = kv[..., self.kv_width :].view(b, total, -1, d).transpose(1, 2)
        if total != s:  # rotate the cached keys at their own positions
            pos = torch.arange(total, device=c.device)[None]
            cos, sin = self.rotary[0](v, position_ids=pos)
        k = _rope(k, cos, sin)
        y, _ = sdpa_attention_forward(self, q, k, v, attention_mask, scaling=self.scaling)
        return self.o_proj(y.reshape(b, s, -1)), None

    def _state(self, cache) -> LatentState:
        layers = cache.layers
        while len(layers) <= self.layer_idx:
            layers.append(LatentState())
        if not isinstance(layers[self.layer_idx], LatentState):
            if layers[self.layer_idx].get_seq_length():
                raise RuntimeError(f"layer {self.layer_idx}: cache holds keys of another attention")
            layers[self.layer_idx] = LatentState()
        return layers[self.layer_idx]


def kv_covariance(
    model: nn.Module, batches: Iterable[dict[str, Tensor]], layers: list[int]
) -> dict[int, Tensor]:
    """Per layer, the (2 H_kv d)^2 second moment of ``[k; v]`` (before RoPE, without bias) over
    the real tokens of ``batches`` (``input_ids``, ``attention_mask``), in float64."""
    adapter, base = adapter_for(model), base_model(model)
    sums: dict[int, Tensor] = {}
    count = 0
    current: dict[str, Tensor] = {}

    def hook(name):
        def record(mod, _args, out):
            current[name] = out if mod.bias is None else out - mod.bias

        return record

    handles = []
    for i in layers:
        att = base.get_submodule(adapter.attention.format(i=i))
        handles.append(att.k_proj.register_forward_hook(hook(f"{i}.k")))
        handles.append(att.v_proj.register_forward_hook(hook(f"{i}.v")))
    try:
        with torch.no_grad():
            for batch in batches:
                mask = batch["attention_mask"].bool()
                base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                for i in layers:
                    kv = torch.cat([current[f"{i}.k"], current[f"{i}.v"]], -1)[mask].double()
                    sums[i] = sums.get(i, 0) + kv.T @ kv
                count += int(mask.sum())
                current.clear()
    finally:
        for h in handles:
            h.remove()
    if not count:
        raise ValueError("kv_covariance needs at least one real token")
    return {i: x / count for i, x in sums.items()}


def convert_to_mla(
    model: nn.Module,
    rank: int | None = None,
    layers: list[int] | None = None,
    calibration: Iterable[dict[str, Tensor]] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """A copy of a Llama-family ``model`` (or ``model`` itself when ``inplace``) whose chosen
    layers (None = all) cache a rank-``rank`` latent instead of grouped keys and values (None =
    full rank, exact). With ``calibration`` batches the latent comes from activation PCA,
    otherwise from the SVD of the weights."""
    target = model if inplace else copy.deepcopy(model)
    adapter = adapter_for(target)
    if adapter.family != "llama":
        raise ConfigError("mla", f"GQA -> MLA needs a Llama-family decoder, got '{adapter.family}'")
    base = base_model(target)
    n = geometry(target.config).num_layers
    try:
        chosen = sorted({resolve_layer(i, n) for i in (range(n) if layers is None else layers)})
    except IndexError as err:
        raise ConfigError("mla.layers", str(err)) from None
    cov = kv_covariance(target, calibration, chosen) if calibration is not None else {}
    for i in chosen:
        parent_path, name = adapter.attention.format(i=i).rsplit(".", 1)
        parent = base.get_submodule(parent_path)
        setattr(parent, name, LatentKVAttention(getattr(parent, name), base.rotary_emb, rank,
                                                cov.get(i)))  # fmt: skip
    full = 2 * geometry(target.config).num_kv_heads * geometry(target.config).head_dim
    target.attnkd_conversion = {"kind": "mla", "layers": chosen, "rank": rank or full,
                                "window": 0, "chunk": None, "share": None, "topk": 0,
                                "latent": "pca" if cov else "svd"}  # fmt: skip
    return target
