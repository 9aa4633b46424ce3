"""Atomic directory writes: build under a temporary name, fsync, swap in with ``os.replace``."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each named file in ``directory``."""
    return {
        n: {"bytes": (directory / n).stat().st_size, "sha256": sha256(directory / n)} for n in names
    }


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``target``; on success it replaces ``target``.

    On an exception the temporary directory is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync_file(f)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old)  # replaces the empty placeholder directory
        os.replace(tmp, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
        fsync_dir(target.parent)
    _remove_stale(target)


def siblings(target: Path, kind: str) -> list[Path]:
    """Leftover ``.{name}.tmp-*`` (kind 'tmp') or ``.{name}.old-*`` (kind 'old') directories."""
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def _remove_stale(target: Path) -> None:
    for p in siblings(target, "tmp") + siblings(target, "old"):
        shutil.rmtree(p, ignore_errors=True)
