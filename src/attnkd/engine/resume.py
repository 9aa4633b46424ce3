"""The run's checkpoint folder: step checkpoints, the ``last`` pointer, pruning, and the newest
valid checkpoint to resume from.

Layout of ``run_dir/checkpoints/``::

    step-00000250/   a full training checkpoint (see :mod:`attnkd.engine.checkpoint`)
    step-00000500/   the newest ``train.keep_checkpoints`` of them are kept
    last -> step-00000500   symbolic link to the newest one (a copy where links are refused)
    best/            weights with the best selection metric, kept apart from the rotation

Each step checkpoint is written atomically under its own name, then ``last`` is re-pointed, then
older ones are pruned, so a kill at any moment leaves at least one complete checkpoint.
:func:`find_resumable` checks candidates newest first (``state.json`` and each file against the
sha256 manifest) and skips a corrupt or partial one with a warning naming it and why.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from attnkd.atomic import atomic_dir, fsync_dir
from attnkd.engine.checkpoint import CheckpointError, verify_checkpoint

log = logging.getLogger("attnkd")

LAST = "last"
BEST = "best"
_STEP = re.compile(r"^step-(\d{8,})$")


def step_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps (sorts by step)."""
    return f"step-{step:08d}"


def step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``step-*`` folder, oldest first (complete or not)."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _STEP.match(p.name))]
    return sorted(f for f in found if f[1].is_dir() and not f[1].is_symlink())


def point_last(ckpt_dir: Path, target: Path) -> None:
    """Make ``ckpt_dir/last`` lead to ``target`` (a sibling folder), atomically."""
    last = ckpt_dir / LAST
    if last.is_dir() and not last.is_symlink():
        shutil.rmtree(last)  # a folder from the older layout, or a copy made without links
    link = ckpt_dir / f".{LAST}.tmp-link"
    link.unlink(missing_ok=True)
    try:
        os.symlink(target.name, link, target_is_directory=True)
    except (OSError, NotImplementedError):  # no symbolic links here: keep a copy instead
        with atomic_dir(last) as tmp:
            shutil.copytree(target, tmp, dirs_exist_ok=True)
        return
    os.replace(link, last)
    fsync_dir(ckpt_dir)


def prune(ckpt_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` step checkpoints; returns what was removed."""
    old = [p for _, p in step_dirs(ckpt_dir)][: -keep or None] if keep > 0 else []
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def clear(ckpt_dir: Path) -> None:
    """Remove every checkpoint of a previous run (step folders, ``last``, ``best``, leftovers)."""
    if not ckpt_dir.exists():
        return
    for p in ckpt_dir.iterdir():
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)


def remove_leftovers(ckpt_dir: Path) -> None:
    """Remove temporary folders of saves that were killed part-way (``.*.tmp-*``)."""
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".*.tmp-*"):
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)


def has_checkpoints(ckpt_dir: Path) -> bool:
    return ckpt_dir.is_dir() and any(ckpt_dir.iterdir())


@dataclass
class ResumePoint:
    """The checkpoint :func:`find_resumable` chose and the candidates it passed over."""

    path: Path
    step: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """``(folder, reason)`` of each newer candidate that was corrupt or incomplete."""


def find_resumable(ckpt_dir: Path) -> ResumePoint | None:
    """The newest valid checkpoint in ``ckpt_dir``; each corrupt or partial one newer than it is
    skipped with a warning that names it and says why. None if there is no candidate at all (a
    run stopped before its first save); :class:`CheckpointError` if none of them is valid."""
    candidates = [p for _, p in reversed(step_dirs(ckpt_dir))]
    last = ckpt_dir / LAST
    if last.is_dir() and not last.is_symlink():  # older layout (or a copy): one more candidate
        candidates.append(last)
    if not candidates:
        return None
    skipped: list[tuple[Path, str]] = []
    for cand in candidates:  # newest first
        try:
            return ResumePoint(cand, verify_checkpoint(cand).step, skipped)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint {cand.name}: {err}", stacklevel=3)
            log.warning("skipping checkpoint %s: %s", cand.name, err)
            skipped.append((cand, str(err)))
    reasons = "; ".join(f"{p.name}: {why}" for p, why in skipped)
    raise CheckpointError(ckpt_dir, f"no valid checkpoint to resume from ({reasons})")
