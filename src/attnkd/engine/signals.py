"""SIGTERM during training: finish the current step, save a checkpoint, stop cleanly.

Schedulers (Slurm, Kubernetes, systemd) send SIGTERM before they kill a job. While
:func:`fit <attnkd.engine.loop.fit>` runs, SIGTERM only sets a flag; the loop checks it after
each optimizer step, saves the step checkpoint and raises :class:`Terminated`. The CLI turns
that into exit status 143 (128 + SIGTERM, what a shell reports for a job ended by SIGTERM), so a
scheduler can tell the run was stopped, not finished; ``--resume`` continues it exactly.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any

from attnkd.errors import Terminated

__all__ = ["StopFlag", "Terminated", "catch_sigterm"]


@dataclass
class StopFlag:
    """Set when SIGTERM arrived; read once per step. ``restore()`` puts the old handler back."""

    requested: bool = False
    _previous: Any = None
    _installed: bool = False

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False


def catch_sigterm() -> StopFlag:
    """From now until ``flag.restore()``, SIGTERM sets the returned flag instead of ending the
    process. Outside the main thread (where handlers cannot be installed) the flag stays unset.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        return flag

    def handler(signum, frame):  # noqa: ARG001
        flag.requested = True

    flag._previous = signal.signal(signal.SIGTERM, handler)
    flag._installed = True
    return flag
