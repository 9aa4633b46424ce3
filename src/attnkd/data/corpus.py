"""Build a training corpus of sentences from several sources; seeded validation splits.

The corpus is filtered (``min_chars``), cleaned of sentences that appear in a held-out split
(``exclude``: evaluation and selection splits, user files), de-duplicated (the first occurrence,
in source order, is kept), then shuffled by ``seed`` with a local NumPy generator and cut to
``max_sentences``. Exclusion and de-dup compare :func:`~attnkd.data.overlap.sentence_key`
keys (letters and digits, case-folded), so tokenised and raw spellings of one sentence match.
The same inputs always give the same corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from attnkd.data.benchmarks import PathLike
from attnkd.data.overlap import ExclusionCount, Exclusions, sentence_key
from attnkd.data.rows import check_bad_rows
from attnkd.data.sources import load_source
from attnkd.errors import ConfigError

T = TypeVar("T")


def normalize_sentence(text: str) -> str:
    """The de-dup and exclusion key (:func:`attnkd.data.overlap.sentence_key`)."""
    return sentence_key(text)


@dataclass
class SourceCount:
    """How many sentences one source gave and where they went."""

    read: int = 0
    """Sentences the source produced."""
    skipped_rows: int = 0
    """Malformed rows skipped while reading (``bad_rows="skip"``)."""
    too_short: int = 0
    excluded: int = 0
    """Dropped because they appear in ``exclude`` (a held-out split or file)."""
    duplicates: int = 0
    """Dropped as a repeat of an earlier sentence (this or an earlier source)."""
    kept: int = 0
    """Left after filtering and de-dup."""
    used: int = 0
    """In the final corpus (after ``max_sentences``)."""


@dataclass
class Corpus:
    """Training sentences plus per-source accounting."""

    sentences: list[str]
    counts: dict[str, SourceCount]
    duplicates_removed: int
    excluded: int
    seed: int
    skipped_rows: int = 0
    exclusions: dict[str, ExclusionCount] = field(default_factory=dict)
    """Per held-out split (or file): its size and what it removed from the sources."""

    def __len__(self) -> int:
        return len(self.sentences)

    def __iter__(self) -> Iterator[str]:
        return iter(self.sentences)

    def __getitem__(self, index: int) -> str:
        return self.sentences[index]

    def summary(self) -> str:
        """A few log lines: one per source, then the totals."""
        lines = [
            f"{name}: read {c.read}, short {c.too_short}, excluded {c.excluded}, "
            f"duplicates {c.duplicates}, kept {c.kept}, used {c.used}"
            + (f", malformed rows skipped {c.skipped_rows}" if c.skipped_rows else "")
            for name, c in self.counts.items()
        ]
        lines += [
            f"held out {name}: {c.split_sentences} distinct sentences, {c.found} found in the "
            f"sources, {c.removed} training sentences removed"
            for name, c in self.exclusions.items()
        ]
        lines.append(
            f"corpus: {len(self.sentences)} sentences (seed {self.seed}); "
            f"{self.duplicates_removed} duplicates and {self.excluded} held-out sentences removed"
        )
        return "\n".join(lines)


def build_corpus(
    sources: Sequence[str],
    data_dir: PathLike | None = None,
    *,
    dedup: bool = True,
    min_chars: int = 8,
    max_sentences: int | None = None,
    seed: int = 0,
    exclude: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
    bad_rows: str = "error",
) -> Corpus:
    """Read, filter, de-duplicate, shuffle and cap sentences from ``sources`` (see sources.py).

    ``min_chars`` counts characters after stripping; ``exclude`` holds sentences that must not
    be trained on, e.g. those of ``stsb:dev``: a mapping ``split name -> sentences`` (counted
    per name in ``Corpus.exclusions``) or one plain collection (counted as ``"exclude"``).
    """
    check_bad_rows(bad_rows)
    if not sources:
        raise ConfigError("data.train_sources", "no sources given")
    if max_sentences is not None and max_sentences < 1:
        raise ConfigError("data.max_sentences", f"must be positive or null, got {max_sentences}")
    if exclude is not None and not isinstance(exclude, Mapping):
        exclude = {"exclude": exclude}
    banned = Exclusions(exclude)
    seen: set[str] = set()
    counts: dict[str, SourceCount] = {}
    pool: list[str] = []
    origin: list[str] = []
    for spec in sources:
        if spec in counts:
            raise ConfigError("data.train_sources", f"source {spec!r} is listed twice")
        texts = load_source(spec, data_dir, bad_rows=bad_rows)
        count = counts[spec] = SourceCount(read=len(texts), skipped_rows=texts.stats.skipped)
        before = len(pool)
        for text in texts:
            text = text.strip()
            if len(text) < min_chars:
                count.too_short += 1
                continue
            key = sentence_key(text)
            if banned.hit(key):
                count.excluded += 1
                continue
            if dedup and key in seen:
                count.duplicates += 1
                continue
            seen.add(key)
            pool.append(text)
            origin.append(spec)
        count.kept = len(pool) - before
    if not pool:
        raise ConfigError(
            "data.train_sources", f"no sentences left from {list(sources)} (min_chars={min_chars})"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    if max_sentences is not None:
        order = order[:max_sentences]
    for i in order:
        counts[origin[i]].used += 1
    return Corpus(
        sentences=[pool[i] for i in order],
        counts=counts,
        duplicates_removed=sum(c.duplicates for c in counts.values()),
        excluded=sum(c.excluded for c in counts.values()),
        seed=seed,
        skipped_rows=sum(c.skipped_rows for c in counts.values()),
        exclusions=banned.counts,
    )


@dataclass
class Split(Generic[T]):
    """A seeded train/validation split; both keep the items' original order."""

    train: list[T]
    val: list[T]
    train_indices: list[int] = field(default_factory=list)
    val_indices: list[int] = field(default_factory=list)


def split_validation(items: Sequence[T], fraction: float, seed: int = 0) -> Split[T]:
    """Hold out ``round(fraction * n)`` items (at least 1 when n >= 2) chosen by ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = len(items)
    n_val = min(max(1, round(fraction * n)), n - 1) if n >= 2 else 0
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = sorted(int(i) for i in perm[:n_val])
    train_idx = sorted(int(i) for i in perm[n_val:])
    return Split(
        train=[items[i] for i in train_idx],
        val=[items[i] for i in val_idx],
        train_indices=train_idx,
        val_indices=val_idx,
    )
