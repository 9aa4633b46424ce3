"""Fixtures for the data tests: the real benchmark folder (skip if absent), tiny files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attnkd import paths
from attnkd.errors import DataError


@pytest.fixture
def shared_data():
    """Return a function ``need(folder) -> data root`` that skips when the folder is absent."""

    def need(folder: str) -> Path:
        root = paths.data_dir()
        if not (root / folder).is_dir():
            pytest.skip(f"benchmark data {folder}/ not found under {root} (set ATTNKD_DATA_DIR)")
        return root

    return need


@pytest.fixture
def write(tmp_path):
    """Write ``text`` (str or bytes) to ``tmp_path/name`` and return the path."""

    def _write(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        return path

    return _write


def _check_data_error(err: BaseException, path: Path | str, line: int | None, *words: str) -> None:
    """The error is a DataError (exit 2) whose message names ``path``, ``line`` and ``words``."""
    assert isinstance(err, DataError), type(err)
    assert err.exit_code == 2
    assert err.path == str(path)
    assert err.line == line
    text = str(err)
    where = f"{path}:{line}" if line is not None else str(path)
    assert where in text, text
    for word in words:
        assert re.search(word, text), (word, text)


@pytest.fixture
def check_data_error():
    """``check(err, path, line, *regexes)``: a DataError, exit code 2, naming path:line."""
    return _check_data_error
