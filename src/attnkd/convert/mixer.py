"""The attention of a converted layer: parallel form for training, recurrent for decoding.

A :class:`Mixer` takes the layer's own (inherited) queries, keys and values, after RoPE where
the family has it, and replaces ``softmax(q k^T / sqrt(d)) v`` by a window part, a linear part
(learned feature maps) or both; see :mod:`attnkd.convert._band` for the formula. The kinds
(:mod:`~attnkd.convert.linear`, :mod:`~attnkd.convert.window`, :mod:`~attnkd.convert.hybrid`)
differ only in which parts they have. Trainable parameters: the feature maps and, in the
hybrid, ``log_gamma`` (one window weight per query head).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from attnkd.convert._band import add_linear, banded_attention, stabiliser
from attnkd.convert.state import MixerState


class Mixer(nn.Module):
    """Window and/or linear attention over (B, H, S, D) queries and (B, H_kv, S, D) keys/values."""

    kind = "mixer"
    needs_qk = True  # False: the layer's own queries and keys are not used (shared attention)

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        causal: bool,
        window: int = 0,
        feature_q: nn.Module | None = None,
        feature_k: nn.Module | None = None,
        learn_gamma: bool = False,
        chunk: int = 64,
        terrace: bool = False,
        sinks: int = 0,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads not divisible by {num_kv_heads} kv heads")
        if window < 0 or chunk < 1:
            raise ValueError(f"window must be >= 0 and chunk >= 1, got {window}, {chunk}")
        if terrace and not (causal and window >= 1 and chunk == window):
            raise ValueError(
                f"a terraced window needs causal attention and chunk == window >= 1, "
                f"got causal={causal}, window {window}, chunk {chunk}"
            )
        if sinks and not (causal and window >= 1 and 0 < sinks <= chunk):
            raise ValueError(
                f"attention sinks need causal attention, a window and 0 < sinks <= chunk, "
                f"got causal={causal}, window {window}, chunk {chunk}, sinks {sinks}"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal, self.window, self.chunk = causal, window, chunk
        self.terrace, self.sinks = terrace, sinks
        self.feature_q, self.feature_k = feature_q, feature_k
        self.log_gamma = nn.Parameter(torch.zeros(num_heads)) if learn_gamma else None

    @property
    def linear(self) -> bool:
        return self.feature_q is not None

    def gamma(self) -> Tensor | None:
        return None if self.log_gamma is None else self.log_gamma.exp()

    def features(self, q: Tensor, k: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """phi(q) (B, H, S, F) and phi(k) (B, H_kv, S, F), or (None, None) without a linear part."""
        if not self.linear:
            return None, None
        return self.feature_q(q), self.feature_k(k)

    def options(self) -> dict[str, Any]:
        """What rebuilds this mixer (written into the converted model's ``conversion.json``)."""
        return {"window": self.window, "chunk": self.chunk, "terrace": self.terrace,
                "sinks": self.sinks}  # fmt: skip

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Parallel form: q (B, H, S, D), k/v (B, H_kv, S, D), key_mask (B, S) -> (B, H, S, Dv)."""
        return self._banded(q, k, v, key_mask, self.feature_k(k) if self.linear else None)

    def _banded(self, q, k, v, key_mask, fk) -> Tensor:
        fq = None
        if self.linear:  # a causal window part takes the map itself: phi(q) chunk group by group
            fq = self.feature_q if self.window and self.causal else self.feature_q(q)
        return banded_attention(
            q if self.window else None,
            k if self.window else None,
            v,
            fq,
            fk,
            self.window,
            self.causal,
            key_mask,
            self.gamma(),
            self.chunk,
            self.terrace,
            self.sinks,
        )

    # ---------------------------------------------------------------- recurrent form (decoding)

    def step(
        self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, state: MixerState
    ) -> Tensor:
        """Process T new tokens given ``state`` (updated in place); returns (B, H, T, Dv).

        An empty state takes the parallel form for the whole prompt and then keeps only the last
        ``window`` keys and the linear sums; later calls go token by token. Causal mixers only.
        """
        if not self.causal:
            raise RuntimeError("bidirectional attention has no recurrent form")
        b, _, t, _ = q.shape
        real = torch.ones(b, t, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
        if state.seen == 0:  # the prompt: parallel form, its key features reused for the state
            fk = None
            if self.linear and type(self).forward is Mixer.forward:
                fk = self.feature_k(k)
                out = self._banded(q, k, v, real, fk)
            else:
                out = self.forward(q, k, v, real)
            self._absorb(k, v, real, state, t - 1, fk)
        else:
            outs = []
            for i in range(t):
                sl = slice(i, i + 1)
                self._absorb(k[:, :, sl], v[:, :, sl], real[:, sl], state, state.seen + i)
                outs.append(self._read(q[:, :, sl], state))
            out = torch.cat(outs, dim=2)
        state.seen += t
        return out

    def window_keys(self, newest: int) -> int:
        """How many of the newest keys the window holds once the key at position ``newest``
        (0-based) is in: ``window``, or with a terraced window the keys of the newest one's
        tile and of the tile before it."""
        if not self.terrace:
            return self.window
        return newest % self.window + 1 + (self.window if newest >= self.window else 0)

    def _absorb(
        self,
        k: Tensor,
        v: Tensor,
        real: Tensor,
        state: MixerState,
        newest: int,
        fk: Tensor | None = None,
    ) -> None:
        """Buffer new keys (the last at position ``newest``); move those that left the window
        into the linear sums (or drop them). ``fk``: phi(k) of these keys, when the state was
        empty (the prompt), so that the keys leaving at once need no second feature map."""
        dtype = torch.promote_types(v.dtype, torch.float32)
        m = real[:, None, :, None].to(dtype)
        fresh = state.keys is None or state.keys.shape[2] == 0
        state.push(k.to(dtype), v.to(dtype) * m, real)
        first = newest + 1 - state.keys.shape[2]  # position of the oldest buffered key
        gone = state.pop(self.window_keys(newest))
        if gone is None:
            return
        old_k, old_v, old_real = gone
        keep = max(0, min(self.sinks - first, old_k.shape[2]))  # sink keys stay softmax keys
        if keep:
            state.push_sinks(old_k[:, :, :keep], old_v[:, :, :keep], old_real[:, :keep])
        n = old_k.shape[2]
        if self.linear and n > keep:
            old_k, old_v, old_real = old_k[:, :, keep:], old_v[:, :, keep:], old_real[:, keep:]
            phi = fk[:, :, keep:n] if fk is not None and fresh else self.feature_k(old_k)
            state.fold(phi.to(dtype) * old_real[:, None, :, None].to(dtype), old_v)

    def _read(self, q: Tensor, state: MixerState) -> Tensor:
        """One query (B, H, 1, D) against the state -> (B, H, 1, Dv) (definition as in _band)."""
        b, h, _, d = q.shape
        kh, g = self.num_kv_heads, h // self.num_kv_heads
        dtype = torch.promote_types(q.dtype, torch.float32)
        qg = q.to(dtype).view(b, kh, g, d)
        dv = state.values.shape[-1] if state.values is not None else state.kv.shape[-1]
        l_num = l_den = None
        if self.linear and state.kv is not None:
            fq = self.feature_q(q).to(dtype).view(b, kh, g, -1)
            l_num = torch.einsum("bkgf,bkfd->bkgd", fq, state.kv)
            l_den = torch.einsum("bkgf,bkf->bkg", fq, state.z)[..., None]
        keys, values, real = state.softmax_keys()
        if not (self.window and keys is not None and keys.shape[2]):
            if l_num is None:  # nothing seen yet
                return torch.zeros(b, h, 1, dv, dtype=q.dtype, device=q.device)
            num, den = l_num, l_den
        else:
            s = torch.einsum("bkgd,bkld->bkgl", qg, keys) / math.sqrt(d)
            s = s.masked_fill(~real[:, None, None, :], float("-inf"))
            gamma = self.gamma()
            log_g = None if gamma is None else gamma.to(dtype).log().view(1, kh, g, 1)
            m = stabiliser(s, l_den, log_g)
            if log_g is not None:
                s = s + log_g
            e = torch.exp(s - m)
            num = torch.einsum("bkgl,bkld->bkgd", e, values)
            den = e.sum(-1, keepdim=True)
            if l_num is not None:
                num, den = add_linear(num, den, l_num, l_den, m)
        y = num / den.clamp_min(torch.finfo(dtype).tiny)
        return y.reshape(b, h, 1, dv).to(q.dtype)
