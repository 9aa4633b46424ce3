"""Where training runs and in what precision: ``train.device``, ``train.precision``,
``train.teacher_dtype``, and moving batches to the device.

- device: ``"auto"`` picks CUDA, then Apple MPS, then CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
  ``"mps"`` name one; a device this machine lacks is a :class:`ConfigError`.
- precision: ``"fp32"``; ``"bf16"`` or ``"fp16"`` run the student and teacher forwards under
  ``torch.autocast`` while the loss terms are computed in float32; fp16 adds a gradient scaler.
  The older ``train.bf16: true`` means ``precision: bf16`` (deprecated, with a warning).
- teacher_dtype: ``None`` keeps the frozen teacher in float32; ``"bf16"``/``"fp16"`` store it in
  half precision (half the memory; its taps are cast to float32 before the losses).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from attnkd.config.schema import TrainConfig
from attnkd.engine.distributed import check_strategy
from attnkd.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TEACHER_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NONFINITE_MODES = ("abort", "skip")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str) -> torch.device:
    """The ``torch.device`` that ``train.device`` names; raises ConfigError if it is unusable."""
    if not isinstance(spec, str) or not _DEVICE.match(spec):
        raise ConfigError(
            "train.device", f"expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {spec!r}"
        )
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device", f"'{spec}' asked for, but CUDA is not available")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(
                "train.device",
                f"'{spec}' asked for, but only {torch.cuda.device_count()} CUDA device(s) exist",
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not _mps_available():
        raise ConfigError("train.device", "'mps' asked for, but Apple MPS is not available")
    return device


def precision_of(cfg: TrainConfig) -> str:
    """``cfg.precision``, with the deprecated ``cfg.bf16: true`` read as ``"bf16"``."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(
            "train.precision", f"expected one of {sorted(PRECISIONS)}, got {cfg.precision!r}"
        )
    if cfg.bf16:
        if cfg.precision not in ("fp32", "bf16"):
            raise ConfigError(
                "train.bf16", f"conflicts with train.precision={cfg.precision!r}; drop train.bf16"
            )
        warnings.warn(
            "train.bf16 is deprecated; use train.precision: bf16", DeprecationWarning, stacklevel=3
        )
        return "bf16"
    return cfg.precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """Autocast dtype of a precision name (None for fp32)."""
    return PRECISIONS[precision]


def teacher_dtype_of(cfg: TrainConfig) -> torch.dtype | None:
    """The dtype to hold the frozen teacher in (None: leave it as loaded)."""
    if cfg.teacher_dtype is None:
        return None
    if cfg.teacher_dtype not in TEACHER_DTYPES:
        raise ConfigError(
            "train.teacher_dtype",
            f"expected null, 'bf16' or 'fp16', got {cfg.teacher_dtype!r}",
        )
    return TEACHER_DTYPES[cfg.teacher_dtype]


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (inside dicts, lists and tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        moved = {k: to_device(v, device) for k, v in batch.items()}
        try:
            return type(batch)(moved)  # dict, BatchEncoding, ...
        except TypeError:
            return moved
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def module_device(module: torch.nn.Module) -> torch.device:
    """Device of the module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def check_train_settings(cfg: TrainConfig) -> None:
    """The engine's own ``train.*`` checks (device available, precision, teacher dtype,
    non-finite policy, checkpoints kept, distributed strategy); called by config validation
    before anything loads."""
    resolve_device(cfg.device)
    if cfg.precision not in PRECISIONS:
        raise ConfigError(
            "train.precision", f"expected one of {sorted(PRECISIONS)}, got {cfg.precision!r}"
        )
    if cfg.bf16 and cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(
            "train.bf16", f"conflicts with train.precision={cfg.precision!r}; drop train.bf16"
        )
    teacher_dtype_of(cfg)
    if cfg.nonfinite not in NONFINITE_MODES:
        raise ConfigError(
            "train.nonfinite", f"expected one of {list(NONFINITE_MODES)}, got {cfg.nonfinite!r}"
        )
    if not isinstance(cfg.keep_checkpoints, int) or cfg.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints", f"must be >= 1, got {cfg.keep_checkpoints}")
    check_strategy(cfg.distributed)  # 'ddp' or 'fsdp' (used under torchrun only)
