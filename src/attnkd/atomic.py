"""Atomic writes for every artifact attnkd leaves on disk: files and whole directories.

Each write goes to a temporary name in the target's own folder (``.{name}.tmp-XXXX``), is
fsynced, then swapped in with ``os.replace`` and the folder fsynced, so a reader sees the old
artifact or the new one, never a mix. On any failure (an exception, ``OSError(ENOSPC)`` when the
disk fills, Ctrl-C) the temporary is removed and the previous artifact is left as it was.

>>> from attnkd.atomic import write_json, write_text, atomic_file, atomic_dir

Any package may import this module; it depends on the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_files",
    "fsync_dir",
    "manifest",
    "sha256",
    "siblings",
    "write_bytes",
    "write_json",
    "write_text",
]

FILE_MODE = 0o644
"""Finished files are ordinary readable files (``mkstemp`` would leave them owner-only)."""
DIR_MODE = 0o755


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (renames, new files) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write it (any writer that takes a path, e.g.
    ``savefig`` or ``safetensors.save_file``); on a clean exit it is fsynced and replaces
    ``path``. On an exception the temporary is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path``'s content with ``data``; returns ``path``."""
    with atomic_file(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path``'s content with ``text``."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, **kw: Any) -> Path:
    """Atomically write ``obj`` as JSON (``json.dumps`` keywords pass through) plus a newline.

    The text is built in memory first, so an object that cannot be serialised leaves nothing.
    """
    return write_text(path, json.dumps(obj, indent=indent, **kw) + "\n")


@contextmanager
def atomic_dir(target: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``target``; on success it replaces ``target``.

    Every file in it (recursively) is fsynced before the swap. On an exception the temporary
    directory is removed and ``target`` is untouched. An existing ``target`` is first renamed to
    ``.{name}.old-XXXX`` and removed after the swap; if a crash falls between the two renames
    both complete copies remain on disk (:func:`siblings` finds them; the next successful write
    removes such ``.old-*`` copies, while ``.tmp-*`` ones may be another writer's work in
    progress and are left to their owner). ``keep_existing``: if
    ``target`` appeared meanwhile (another process built the same cache entry), keep it and
    discard the new copy.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, DIR_MODE)
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file() and not f.is_symlink():
                _fsync_file(f)
        for d in [*sorted(p for p in tmp.rglob("*") if p.is_dir()), tmp]:
            fsync_dir(d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists() and keep_existing:
        shutil.rmtree(tmp, ignore_errors=True)
    elif target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old)  # replaces the empty placeholder directory
        os.replace(tmp, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
        fsync_dir(target.parent)
    for p in siblings(target, "old"):  # copies a crash left between two renames
        shutil.rmtree(p, ignore_errors=True)


@contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory inside ``folder``; on success each file written there (top
    level) is fsynced and moved over its namesake in ``folder`` with ``os.replace``. Other files
    in ``folder`` are left alone (for writing into a folder the user already has). On an
    exception nothing in ``folder`` changes and the temporary directory is removed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".attnkd.tmp-", dir=folder))
    try:
        yield tmp
        files = [f for f in sorted(tmp.iterdir()) if f.is_file()]
        for f in files:
            _fsync_file(f)
        for f in files:
            os.replace(f, folder / f.name)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def siblings(target: str | os.PathLike, kind: str) -> list[Path]:
    """Leftover ``.{name}.tmp-*`` (kind 'tmp') or ``.{name}.old-*`` (kind 'old') entries."""
    target = Path(target)
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(directory: str | os.PathLike, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each named file in ``directory`` (checked again on load)."""
    directory = Path(directory)
    return {
        n: {"bytes": (directory / n).stat().st_size, "sha256": sha256(directory / n)} for n in names
    }
