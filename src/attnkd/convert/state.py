"""Decoding state of a converted layer: the recurrent form of window / linear / hybrid attention.

A converted layer keeps, per sequence, the last ``window`` keys and values (the window part)
and the running sums ``kv = sum_j phi(k_j) v_j^T``, ``z = sum_j phi(k_j)`` over the keys that
left the window (the linear part). Its size does not grow with the context: a step costs the
same at token 512 and token 16384.

:class:`MixerState` is a Hugging Face cache layer, so it lives in the model's ``Cache`` at the
converted layer's index (a converted layer swaps it in on first use); ``get_seq_length`` and
``get_mask_sizes`` keep position ids and masks right for the layers that stay softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import CacheLayerMixin


class MixerState(CacheLayerMixin):
    """Recurrent state of one converted layer (all tensors float32 or wider).

    keys/values: (B, H_kv, <= window, D) window buffer, oldest first; ``real``: (B, <= window)
    bool; kv: (B, H_kv, F, Dv); z: (B, H_kv, F); ``sink_*``: the attention sinks (the first
    positions, kept as softmax keys once out of the window); ``seen``: tokens processed so far.
    """

    is_sliding = False
    is_croppable = False

    def __init__(self) -> None:
        super().__init__()
        self.real: Tensor | None = None
        self.kv: Tensor | None = None
        self.z: Tensor | None = None
        self.sink_keys = self.sink_values = self.sink_real = None
        self.seen = 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        raise RuntimeError(
            "a converted attention layer keeps a recurrent state, not a key/value cache; "
            "only its own module updates it"
        )

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = self.real = self.kv = self.z = None
        self.sink_keys = self.sink_values = self.sink_real = None
        self.seen = 0
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for name in ("keys", "values", "real", "kv", "z", "sink_keys", "sink_values", "sink_real"):
            x = getattr(self, name)
            if x is not None:
                setattr(self, name, x.index_select(0, beam_idx.to(x.device)))

    def nbytes(self) -> int:
        """Bytes held (window buffer and linear state)."""
        xs = (self.keys, self.values, self.real, self.kv, self.z, self.sink_keys,
              self.sink_values, self.sink_real)  # fmt: skip
        return sum(x.numel() * x.element_size() for x in xs if x is not None)

    # ------------------------------------------------------------------ used by the mixers

    def push(self, k: Tensor, v: Tensor, real: Tensor) -> None:
        """Append keys (B, H_kv, T, D), values and their mask (B, T) to the window buffer."""
        self.keys, self.values = _cat(self.keys, k, 2), _cat(self.values, v, 2)
        self.real = _cat(self.real, real, 1)
        self.is_initialized = True

    def pop(self, keep: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """Remove all but the newest ``keep`` buffered keys; return the removed (k, v, real)."""
        if self.keys is None or self.keys.shape[2] <= keep:
            return None
        cut = self.keys.shape[2] - keep
        out = (self.keys[:, :, :cut], self.values[:, :, :cut], self.real[:, :cut])
        self.keys, self.values = self.keys[:, :, cut:], self.values[:, :, cut:]
        self.real = self.real[:, cut:]
        return out

    def push_sinks(self, k: Tensor, v: Tensor, real: Tensor) -> None:
        """Keep keys that left the window as attention sinks (softmax keys of every query)."""
        self.sink_keys, self.sink_values = _cat(self.sink_keys, k, 2), _cat(self.sink_values, v, 2)
        self.sink_real = _cat(self.sink_real, real, 1)

    def softmax_keys(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Keys, values and mask the softmax part reads: the sinks, then the window buffer."""
        if self.sink_keys is None:
            return self.keys, self.values, self.real
        if self.keys is None:
            return self.sink_keys, self.sink_values, self.sink_real
        return (torch.cat([self.sink_keys, self.keys], dim=2),
                torch.cat([self.sink_values, self.values], dim=2),
                torch.cat([self.sink_real, self.real], dim=1))  # fmt: skip

    def fold(self, fk: Tensor, v: Tensor) -> None:
        """Add keys' feature maps fk (B, H_kv, T, F) (zero at padding) and v to kv and z."""
        kv = torch.einsum("bktf,bktd->bkfd", fk, v)
        z = fk.sum(2)
        self.kv = kv if self.kv is None else self.kv + kv
        self.z = z if self.z is None else self.z + z


def _cat(old: Tensor | None, new: Tensor, dim: int) -> Tensor:
    """``new`` appended to ``old`` along ``dim`` (``new`` itself when nothing is held yet)."""
    return new if old is None else torch.cat([old, new], dim=dim)
