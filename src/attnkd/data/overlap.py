"""Which sentences count as "the same": a normalised key for de-dup and evaluation hygiene.

Benchmark files spell one sentence in several ways: GLUE's MRPC is tokenised
(``partner , with`` / ``we 're`` / ``$ 34``) where STS-B holds the raw text (``partner, with``);
SST-2 is lower-cased with PTB quotes (`````` / ``''``) and brackets (``-LRB-``); WikiText splits
numbers and hyphens (`` @-@ ``, `` @,@ ``, `` @.@ ``) and masks rare words as ``<unk>``. Compared
as exact strings, an evaluation sentence in one spelling slips into training in another.
:func:`sentence_key` maps all of these to one key: the sentence's letters and digits only,
case-folded, after Unicode compatibility normalisation with accents removed.

Keys are coarse on purpose: two texts that differ only in punctuation or spacing share a key, so
exclusion errs toward dropping a training sentence, never toward training on an evaluation one.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_MARKERS = re.compile(r"<unk>|-[lr][rsc]b-|@[-,.]@", re.IGNORECASE)
"""Tokenisation markers that stand for punctuation or an unknown word, not for text."""


def sentence_key(text: str) -> str:
    """The comparison key of ``text``: case-folded letters and digits, nothing else.

    Steps: HTML entities unescaped (``&amp;``), NFKD (compatibility forms such as full-width
    letters and ligatures unfold) with combining marks dropped (``café`` -> ``cafe``), markers
    removed (``<unk>``, ``-LRB-``/``-RRB-``/``-LSB-``/``-RSB-``/``-LCB-``/``-RCB-``, ``@-@``),
    case-folded, then every character that is not a letter or digit dropped (spaces, punctuation,
    quotes of any style). A text with no letter or digit keeps its whitespace-collapsed,
    case-folded form instead, so "..." and "?!" stay distinct and never match a real sentence.
    """
    text = unicodedata.normalize("NFKD", html.unescape(text))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = _MARKERS.sub(" ", text).casefold()
    key = "".join(ch for ch in text if ch.isalnum())
    return key if key else " ".join(text.split())


def sentence_keys(texts: Iterable[str]) -> set[str]:
    """The distinct keys of ``texts``."""
    return {sentence_key(t) for t in texts}


@dataclass
class ExclusionCount:
    """What one held-out split (or user file) removed from the training corpus."""

    split_sentences: int
    """Distinct normalised sentences in the split."""
    found: int = 0
    """How many of those appeared in the training sources (distinct keys)."""
    removed: int = 0
    """Training sentences dropped for matching one of them (every occurrence counts)."""

    def as_dict(self) -> dict[str, int]:
        return {"split_sentences": self.split_sentences, "found": self.found,
                "removed": self.removed}  # fmt: skip


class Exclusions:
    """Named sets of sentences that must never be trained on, matched by :func:`sentence_key`.

    ``named`` maps a split name (``stsb:dev``, ``file:test.tsv``) to its sentences. A training
    sentence matching several sets counts in each of them.
    """

    def __init__(self, named: Mapping[str, Iterable[str]] | None = None):
        self._keys: dict[str, set[str]] = {}
        for name, texts in (named or {}).items():
            self._keys.setdefault(name, set()).update(sentence_keys(texts))
        self.counts = {n: ExclusionCount(len(k)) for n, k in self._keys.items()}
        self._found: dict[str, set[str]] = {n: set() for n in self._keys}
        self._all = set().union(*self._keys.values()) if self._keys else set()

    def hit(self, key: str) -> bool:
        """True if ``key`` is held out; records which sets it matched."""
        if key not in self._all:
            return False
        for name, keys in self._keys.items():
            if key in keys:
                self.counts[name].removed += 1
                self._found[name].add(key)
                self.counts[name].found = len(self._found[name])
        return True


def shared_keys(a: Iterable[str], b: Iterable[str]) -> set[str]:
    """Keys that texts ``a`` and ``b`` have in common."""
    return sentence_keys(a) & sentence_keys(b)
