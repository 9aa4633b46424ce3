"""Run metrics: ``metrics.jsonl`` (one JSON object per event), TensorBoard, a progress bar.

Events written by :func:`attnkd.engine.loop.fit` (``event`` names the kind)::

    {"event": "train", "step": 10, "epoch": 0.31, "lr": 9.5e-05, "loss": 0.42,
     "terms": {"relation_qq": 0.12, ...}, "grad_norm": 0.8, "items_per_s": 512.0, "elapsed_s": 3.1}
    {"event": "eval", "step": 250, "metrics": {"stsb_spearman": 0.81}, "elapsed_s": 60.2}
    {"event": "start" | "resume" | "stop", "step": ..., ...}

Non-finite floats are written as ``null`` so every line is strict JSON. TensorBoard scalars:
``train/{loss,lr,grad_norm,items_per_s}``, ``loss_terms/{term}`` and ``eval/{metric}``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def _tensorboard_writer(log_dir: Path, purge_step: int | None) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL only
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class MetricsWriter:
    """Append events to ``run_dir/metrics.jsonl`` and mirror numbers to TensorBoard.

    Args:
        run_dir: run directory (created if needed).
        resume: append to the existing JSONL (otherwise it is started afresh) and let
            TensorBoard purge events logged after ``start_step`` by the interrupted run.
        start_step: optimizer step the run (re)starts from.
        tensorboard: False skips TensorBoard even when it is installed.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        resume: bool = False,
        start_step: int = 0,
        tensorboard: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        mode = "a" if resume else "w"
        self._fh = open(self.path, mode, encoding="utf-8")  # noqa: SIM115 (closed in close())
        purge = start_step + 1 if resume else None
        self._tb = _tensorboard_writer(self.run_dir / "tb", purge) if tensorboard else None

    def log(self, event: dict[str, Any]) -> None:
        """Write one event (a JSON-ready dict with at least ``event`` and ``step``)."""
        self._fh.write(json.dumps(_clean(event), allow_nan=False) + "\n")
        self._fh.flush()
        if self._tb is not None:
            self._to_tensorboard(event)

    def _to_tensorboard(self, event: dict[str, Any]) -> None:
        step = event["step"]
        kind = event["event"]
        if kind == "train":
            for key in ("loss", "lr", "grad_norm", "items_per_s"):
                if isinstance(event.get(key), int | float):
                    self._tb.add_scalar(f"train/{key}", event[key], step)
            for name, value in event.get("terms", {}).items():
                self._tb.add_scalar(f"loss_terms/{name}", value, step)
        elif kind == "eval":
            for name, value in event.get("metrics", {}).items():
                self._tb.add_scalar(f"eval/{name}", value, step)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | os.PathLike, event: str | None = None) -> list[dict[str, Any]]:
    """Events of ``run_dir/metrics.jsonl`` in order, optionally only those of one kind.

    After a resume, steps logged by the interrupted run past its last checkpoint appear twice;
    the later line is the one the final weights came from.
    """
    path = Path(run_dir) / METRICS_FILE
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [r for r in rows if event is None or r.get("event") == event]


class ProgressBar:
    """tqdm bar over optimizer steps showing loss and items/s (ETA is tqdm's own).

    ``enabled=False`` disables it; when enabled, tqdm still stays quiet if stderr is not a TTY.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self._bar = tqdm(
            total=total,
            initial=initial,
            disable=None if enabled else True,
            unit="step",
            dynamic_ncols=True,
            desc="train",
        )

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` optimizer steps."""
        self._bar.update(n)

    def show(self, loss: float, items_per_s: float = 0.0) -> None:
        """Put the latest loss and throughput next to the bar."""
        post = {"loss": f"{loss:.4g}"}
        if items_per_s:
            post["items/s"] = f"{items_per_s:.1f}"
        self._bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self._bar.close()
