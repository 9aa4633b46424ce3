"""Fingerprints that tie a stored teacher artifact (cache, generated text) to what made it.

Each is a hex sha256 of a canonical byte form, so two runs agree exactly when the weights, the
tokenizer or the text agree, whatever the files they were read from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ids_fingerprint", "model_fingerprint", "text_fingerprint", "tokenizer_fingerprint"]


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every state-dict entry (name, dtype, shape, bytes), sorted by name.

    Tied weights appear under each name; a model held in another dtype (``teacher_dtype``) gets
    another fingerprint, as its outputs differ.
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full definition (the fast backend's JSON when there is one,
    else the sorted vocabulary) and its special tokens."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def text_fingerprint(docs: Sequence[str]) -> str:
    """sha256 of the documents in order (each length-prefixed, UTF-8)."""
    h = hashlib.sha256()
    for d in docs:
        b = d.encode("utf-8")
        h.update(f"{len(b)}:".encode())
        h.update(b)
    return h.hexdigest()


def ids_fingerprint(ids: torch.Tensor | np.ndarray) -> str:
    """sha256 of an integer array's shape and int64 values (e.g. the training blocks)."""
    a = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    a = np.ascontiguousarray(a.astype(np.int64))
    h = hashlib.sha256(f"{a.shape}\n".encode())
    h.update(a.tobytes())
    return h.hexdigest()
