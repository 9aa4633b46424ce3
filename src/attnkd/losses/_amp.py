"""Custom autograd functions under mixed precision: their math never runs in half precision.

``torch.autocast`` would cast the matmuls inside a custom ``Function.forward`` to bf16/fp16.
The chunked kernels choose their own compute dtype (the inputs' promoted dtype, at least
float32, see ``compute_dtype``) and work per block, so instead of ``custom_fwd(cast_inputs=
torch.float32)`` (which would copy whole logit tensors to float32 up front) the forward runs
with autocast switched off on its inputs' devices; half-precision inputs are then read block by
block in float32 and their gradients returned in their own dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor


def autocast_off(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``forward``/``backward`` of a ``torch.autograd.Function``: run it with autocast
    disabled on every device type its tensor arguments live on."""

    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with ExitStack() as stack:
            for device_type in {a.device.type for a in args if isinstance(a, Tensor)}:
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return fn(ctx, *args)

    return wrapper
