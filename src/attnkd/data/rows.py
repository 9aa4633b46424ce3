"""Row types, read statistics and the ``bad_rows`` policy shared by every reader.

A malformed row raises :class:`~attnkd.errors.DataError` naming file and line, or, with
``bad_rows="skip"``, is skipped and counted in :class:`ReadStats`. Rows are frozen
dataclasses that keep the ``path`` and ``line`` they came from (not part of equality).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from attnkd.errors import ConfigError, DataError

T = TypeVar("T")
R = TypeVar("R")

_MAX_EXAMPLES = 5


@dataclass
class ReadStats:
    """What a reader kept and skipped; ``summary()`` is one log line."""

    path: str
    rows: int = 0
    """Rows returned."""
    skipped: int = 0
    """Malformed rows skipped under ``bad_rows="skip"``."""
    examples: list[str] = field(default_factory=list)
    """The first few skip reasons, as ``path:line: message``."""

    def summary(self) -> str:
        text = f"{self.path}: {self.rows} rows"
        if self.skipped:
            text += f", {self.skipped} malformed rows skipped (first: {self.examples[0]})"
        return text


class ReadResult(list, Generic[T]):
    """A list of rows that also carries the :class:`ReadStats` of the read."""

    def __init__(self, rows: Iterable[T] = (), stats: ReadStats | None = None):
        super().__init__(rows)
        self.stats = stats if stats is not None else ReadStats(path="")


@dataclass(frozen=True)
class TextRow:
    """One line (or chunk) of a text file."""

    text: str
    path: str = field(default="", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class TableRow:
    """The chosen fields of one TSV/CSV record; index by position or by column name."""

    values: tuple[str, ...]
    names: tuple[str, ...] | None = field(default=None, compare=False, repr=False)
    path: str = field(default="", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)

    def __getitem__(self, key: int | str) -> str:
        if isinstance(key, str):
            if self.names is None or key not in self.names:
                raise KeyError(f"no column {key!r} in this row (columns: {self.names})")
            return self.values[self.names.index(key)]
        return self.values[key]


@dataclass(frozen=True)
class JsonRow:
    """The chosen fields of one JSONL record (all fields when none were chosen)."""

    values: dict[str, Any]
    path: str = field(default="", compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]


def check_bad_rows(policy: str) -> str:
    """Validate a ``bad_rows`` policy ('error' or 'skip')."""
    if policy not in ("error", "skip"):
        raise ConfigError("data.bad_rows", f"must be 'error' or 'skip', got {policy!r}")
    return policy


class RowPolicy:
    """Raises or counts a malformed row according to the ``bad_rows`` policy."""

    def __init__(self, path: Path, bad_rows: str):
        self.path = path
        self.skip = check_bad_rows(bad_rows) == "skip"
        self.stats = ReadStats(path=str(path))

    def bad(self, line: int | None, message: str, path: str | None = None) -> None:
        where = path or str(self.path)
        if not self.skip:
            raise DataError(where, line, message)
        self.stats.skipped += 1
        if len(self.stats.examples) < _MAX_EXAMPLES:
            self.stats.examples.append(f"{where}:{line}: {message}")

    def keep(self, rows: list, row: Any, convert: Callable[[Any], Any] | None) -> None:
        """Append ``row``, or ``convert(row)``; a ``ValueError`` there makes it a bad row."""
        if convert is None:
            rows.append(row)
            return
        try:
            rows.append(convert(row))
        except ValueError as err:
            self.bad(row.line, str(err), row.path)

    def result(self, rows: list[T]) -> ReadResult[T]:
        self.stats.rows = len(rows)
        return ReadResult(rows, self.stats)


def map_rows(
    rows: ReadResult[R], convert: Callable[[R], T], *, bad_rows: str = "error"
) -> ReadResult[T]:
    """Apply ``convert`` to each row; a ``ValueError`` from it becomes a bad row at that line.

    Rows must have ``path`` and ``line`` attributes. Stats carry over, skips added.
    """
    policy = RowPolicy(Path(rows.stats.path), bad_rows)
    policy.stats.skipped = rows.stats.skipped
    policy.stats.examples = list(rows.stats.examples)
    out: list[T] = []
    for row in rows:
        policy.keep(out, row, convert)
    return policy.result(out)


def parse_float(text: str, what: str) -> float:
    """Parse a finite float or raise ``ValueError`` naming ``what`` was expected."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number for {what}, found {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number for {what}, found {text!r}")
    return value


def parse_label(text: str, labels: Mapping[str, int], what: str) -> int:
    """Map a label string (e.g. '0', 'entailment') to its id or raise ``ValueError``."""
    key = text.strip()
    if key not in labels:
        raise ValueError(f"expected {what} in {sorted(labels)}, found {text!r}")
    return labels[key]
