"""Random-number-generator state: seed, capture, restore, and fork around side work.

Exact resume needs every generator a training step may draw from: torch (CPU and each CUDA
device), numpy's global generator and Python's ``random``. The state is split into tensors
(stored in safetensors) and plain values (stored as JSON) so a checkpoint never pickles.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class RngState:
    """A snapshot of all generators.

    ``torch_cpu`` is torch's uint8 state tensor; ``torch_cuda`` one per visible CUDA device;
    ``numpy`` and ``python`` are JSON-ready (lists of ints and scalars).
    """

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] = field(default_factory=list)
    numpy: dict[str, Any] = field(default_factory=dict)
    python: list[Any] = field(default_factory=list)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensor part, keyed for a safetensors file (``torch.cpu``, ``torch.cuda.{i}``)."""
        out = {"torch.cpu": self.torch_cpu}
        out.update({f"torch.cuda.{i}": s for i, s in enumerate(self.torch_cuda)})
        return out

    def plain(self) -> dict[str, Any]:
        """JSON part: numpy and Python generator states."""
        return {"numpy": self.numpy, "python": self.python}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> RngState:
        """Inverse of :meth:`tensors` + :meth:`plain`."""
        n_cuda = sum(1 for k in tensors if k.startswith("torch.cuda."))
        return cls(
            torch_cpu=tensors["torch.cpu"],
            torch_cuda=[tensors[f"torch.cuda.{i}"] for i in range(n_cuda)],
            numpy=plain["numpy"],
            python=plain["python"],
        )


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy's global generator and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> RngState:
    """Snapshot every generator (copies; later draws do not change the snapshot)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return RngState(
        torch_cpu=torch.get_rng_state(),
        torch_cuda=[s.clone() for s in cuda],
        numpy={
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        python=[version, list(internal), gauss_next],
    )


def restore_rng(state: RngState) -> None:
    """Put every generator back into ``state``.

    CUDA states are restored only when the device count matches; otherwise they are skipped
    (resuming on a different machine cannot be bitwise exact anyway).
    """
    torch.set_rng_state(state.torch_cpu)
    cuda_ok = torch.cuda.is_available() and len(state.torch_cuda) == torch.cuda.device_count()
    if state.torch_cuda and cuda_ok:
        torch.cuda.set_rng_state_all(state.torch_cuda)
    n = state.numpy
    np.random.set_state(
        (
            n["kind"],
            np.asarray(n["keys"], dtype=np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss_next = state.python
    random.setstate((version, tuple(internal), gauss_next))


@contextmanager
def fork_rng() -> Iterator[None]:
    """Run a block (e.g. evaluation) without disturbing the training generators."""
    saved = capture_rng()
    try:
        yield
    finally:
        restore_rng(saved)
