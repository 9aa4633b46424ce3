"""Pre-packed oneDNN linear layers for batch-1 decoding on CPU (inference only).

A decoding step at batch 1 multiplies a few rows by every weight matrix of the model, so it is
bound by how fast the weights stream from memory and by the per-call packing the matmul
library does. PyTorch's default CPU path (MKL ``sgemm``) re-packs each weight on every call of
more than one row; on the 2-core AMD EPYC machine this project runs on, a SmolLM2-135M teacher
step scoring 2 tokens then costs ~1.5x a 1-token step, which alone rules out speculative
decoding (verification must cost about one step). oneDNN can reorder each weight ONCE into its
blocked layout (``torch.ops.mkldnn._reorder_linear_weight``); the call on the packed weight
(``torch.ops.mkldnn._linear_pointwise``) then reads it as stored, for 1 row and for a few.

:func:`pack_linears` swaps, in place, every ``nn.Linear`` of a frozen model (and the projection
of each :class:`~attnkd.eval.drafts.ShortlistHead`) for a :class:`PackedLinear`. The maths is
unchanged (float32; results differ from ``F.linear`` by summation order only, ~1e-6
relative); there is no backward, so the model is for ``torch.no_grad()`` use. Benchmarks that
compare decoders must pack every model they time (plain and speculative alike), so the ratio
compares algorithms, not kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnkd.errors import AttnkdError


def packing_available() -> bool:
    """True where this PyTorch build has the oneDNN packed-linear operators (CPU builds)."""
    ops = torch.ops.mkldnn
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")
        )
    except (AttributeError, RuntimeError):
        return False


class PackedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` (out, in) reordered once by oneDNN; CPU, float32, no grad.

    Shapes: x (..., in) -> (..., out). ``batch_hint`` is the row count the packed layout is
    tuned for (decoding feeds 1 to ~8 rows).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, batch_hint: int = 8):
        super().__init__()
        if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise AttnkdError(
                f"PackedLinear needs a 2-D float32 CPU weight, got {weight.dtype} "
                f"{tuple(weight.shape)} on {weight.device}"
            )
        self.out_features, self.in_features = weight.shape
        w = weight.detach().contiguous()
        self._packed = torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)
        self.bias = None if bias is None else bias.detach().contiguous()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise AttnkdError(
                f"PackedLinear expects inputs of width {self.in_features}, got {tuple(x.shape)}"
            )
        if torch.is_grad_enabled() and x.requires_grad:
            raise AttnkdError("PackedLinear has no backward: use it under torch.no_grad()")
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self._packed, self.bias, "none", [], ""
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def pack_linears(model: nn.Module, batch_hint: int = 8) -> int:
    """Replace, in place, every float32 CPU ``nn.Linear`` in ``model`` by a
    :class:`PackedLinear` and pack every ``ShortlistHead``'s rows; returns how many were packed.

    The model becomes inference-only. Raises :class:`AttnkdError` where the build lacks the
    oneDNN operators (check :func:`packing_available` first to fall back).
    """
    from attnkd.eval.drafts import ShortlistHead

    if not packing_available():
        raise AttnkdError("this PyTorch build has no oneDNN packed linear (torch.ops.mkldnn)")
    count = 0
    for parent in list(model.modules()):
        if isinstance(parent, ShortlistHead) and parent.packed is None:
            parent.packed = PackedLinear(parent.weight, parent.bias, batch_hint)
            count += 1
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Linear
                and child.weight.dtype == torch.float32
                and child.weight.device.type == "cpu"
            ):
                setattr(parent, name, PackedLinear(child.weight, child.bias, batch_hint))
                count += 1
    return count
