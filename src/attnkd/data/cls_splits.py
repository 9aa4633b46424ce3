"""Labelled splits for sequence classification (SST-2, MRPC, RTE) and their held-out hygiene.

Split names are ``DATASET:SPLIT``:

- ``mrpc:dev``, ``rte:dev``: the GLUE dev files, never trained on (the final evaluation split);
- ``sst2:heldout``: SST-2 has no dev file here, so ``SST2_HELDOUT`` whole sentences of SST-2
  train (chosen by a fixed seed, the same for every run) stand in for it;
- ``DATASET:val``: the checkpoint-selection split, ``data.val_fraction`` of the train rows
  (chosen by ``train.seed``; for SST-2 whole sentences too, ``SST2_HELDOUT`` of them).

SST-2 train holds every phrase of its sentences as its own row ("a gorgeous , witty ,
seductive movie ." and "gorgeous" and "witty , seductive movie"), so removing held-out rows
by exact match leaves their phrases in training. Held-out SST-2 rows are therefore drawn from
the *whole sentences* (rows that are no part of a longer row, as GLUE's dev set is), and every
training row that is a contiguous span of a held-out sentence is removed, compared word by
word after :func:`~attnkd.data.overlap.sentence_key` normalisation. For pairs (MRPC, RTE), a
training pair is removed when either sentence matches a sentence of a held-out split.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from attnkd.data import benchmarks as bm
from attnkd.data.benchmarks import PathLike
from attnkd.data.overlap import sentence_key
from attnkd.errors import ConfigError

SST2_HELDOUT = 872
"""Sentences in ``sst2:heldout`` and ``sst2:val`` (the size of GLUE's SST-2 dev set)."""
HELDOUT_SEED = 20240
"""Seed of ``sst2:heldout``: fixed, so every run and seed is scored on the same sentences."""

LABEL_NAMES = {
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "rte": ("entailment", "not_entailment"),
}
"""Class names by label id, as GLUE numbers them (exported as the model's ``id2label``)."""
EVAL_SPLITS = ("sst2:heldout", "mrpc:dev", "rte:dev")
SELECT_SPLITS = ("sst2:val", "mrpc:val", "rte:val")


@dataclass(frozen=True)
class ClsExample:
    """One labelled example: a sentence, or a sentence pair (``text_pair`` set)."""

    text: str
    label: int
    text_pair: str | None = None

    def sentences(self) -> tuple[str, ...]:
        return (self.text,) if self.text_pair is None else (self.text, self.text_pair)


@dataclass
class ClsSplits:
    """Training, selection and evaluation examples of one data set, and what hygiene removed."""

    dataset: str
    train: list[ClsExample]
    select: list[ClsExample]
    eval: list[ClsExample]
    select_name: str
    eval_name: str
    removed: dict[str, int] = field(default_factory=dict)
    """Training rows removed for overlapping each held-out split (by its name)."""

    @property
    def label_names(self) -> tuple[str, ...]:
        return LABEL_NAMES[self.dataset]

    def info(self) -> dict:
        return {
            "train_examples": len(self.train),
            "select_examples": len(self.select),
            "eval_examples": len(self.eval),
            "held_out_removed": dict(self.removed),
        }


def dataset_of(split: str) -> str:
    return split.partition(":")[0]


def read_examples(
    dataset: str, split: str, data_dir: PathLike | None = None, bad_rows: str = "error"
) -> list[ClsExample]:
    """Every labelled row of ``dataset``'s ``split`` file ('train' or 'dev') as examples."""
    if dataset == "sst2":
        return [
            ClsExample(r.sentence, r.label)
            for r in bm.read_sst2(split, data_dir, bad_rows=bad_rows)
        ]
    reader = {"mrpc": bm.read_mrpc, "rte": bm.read_rte}[dataset]
    return [
        ClsExample(p.sentence1, p.label, p.sentence2)
        for p in reader(split, data_dir, bad_rows=bad_rows)
    ]


def words(text: str) -> tuple[str, ...]:
    """Normalised words of ``text`` (each by :func:`sentence_key`; empty ones dropped)."""
    out = (sentence_key(w) for w in text.split())
    return tuple(w for w in out if w and w.isalnum())


def whole_sentences(texts: Sequence[str]) -> list[int]:
    """Indices of texts that are not a contiguous word span of another (longer) text.

    Uses an index from each word to the texts holding it, and tests each text only against the
    texts that hold its rarest word. Duplicate texts (same words) keep their first index.
    """
    toks = [words(t) for t in texts]
    holders: dict[str, list[int]] = defaultdict(list)
    for i, ws in enumerate(toks):
        for w in set(ws):
            holders[w].append(i)
    padded = [" " + " ".join(ws) + " " for ws in toks]
    seen: set[tuple[str, ...]] = set()
    out = []
    for i, ws in enumerate(toks):
        if not ws or ws in seen:
            continue
        seen.add(ws)
        rare = min(set(ws), key=lambda w: len(holders[w]))
        if not any(len(toks[j]) > len(ws) and padded[i] in padded[j] for j in holders[rare]):
            out.append(i)
    return out


def spans(ws: Sequence[str]) -> set[tuple[str, ...]]:
    """Every contiguous non-empty word span of ``ws``."""
    return {tuple(ws[a:b]) for a in range(len(ws)) for b in range(a + 1, len(ws) + 1)}


def _draw(indices: list[int], n: int, seed: int) -> list[int]:
    n = min(n, len(indices) - 1)
    perm = np.random.default_rng(seed).permutation(len(indices))
    return sorted(indices[int(k)] for k in perm[:n])


def _sst2_splits(rows: list[ClsExample], select_seed: int) -> ClsSplits:
    whole = whole_sentences([r.text for r in rows])
    heldout = _draw(whole, SST2_HELDOUT, HELDOUT_SEED)
    rest = sorted(set(whole) - set(heldout))
    val = _draw(rest, SST2_HELDOUT, select_seed)
    banned = {
        name: set().union(*(spans(words(rows[i].text)) for i in idx))
        for name, idx in (("sst2:heldout", heldout), ("sst2:val", val))
    }
    taken = set(heldout) | set(val)
    train, removed = [], {"sst2:heldout": 0, "sst2:val": 0}
    for i, r in enumerate(rows):
        ws = words(r.text)
        hits = [name for name, keys in banned.items() if ws in keys]
        for name in hits:
            removed[name] += 1
        if i not in taken and not hits:
            train.append(r)
    return ClsSplits(
        "sst2",
        train,
        [rows[i] for i in val],
        [rows[i] for i in heldout],
        "sst2:val",
        "sst2:heldout",
        removed,
    )


def _pair_splits(
    dataset: str,
    rows: list[ClsExample],
    dev: list[ClsExample],
    val_fraction: float,
    select_seed: int,
) -> ClsSplits:
    n_val = min(max(1, round(val_fraction * len(rows))), len(rows) - 1)
    perm = np.random.default_rng(select_seed).permutation(len(rows))
    val_idx = set(int(k) for k in perm[:n_val])
    val = [r for i, r in enumerate(rows) if i in val_idx]
    keys = {
        f"{dataset}:dev": {sentence_key(s) for r in dev for s in r.sentences()},
        f"{dataset}:val": {sentence_key(s) for r in val for s in r.sentences()},
    }
    # the selection split itself must not share a sentence with dev
    val = [r for r in val if not {sentence_key(s) for s in r.sentences()} & keys[f"{dataset}:dev"]]
    train, removed = [], dict.fromkeys(keys, 0)
    for i, r in enumerate(rows):
        if i in val_idx:
            continue
        mine = {sentence_key(s) for s in r.sentences()}
        hits = [name for name, ks in keys.items() if mine & ks]
        for name in hits:
            removed[name] += 1
        if not hits:
            train.append(r)
    return ClsSplits(dataset, train, val, dev, f"{dataset}:val", f"{dataset}:dev", removed)


def build_splits(
    eval_split: str,
    select_split: str,
    data_dir: PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    bad_rows: str = "error",
) -> ClsSplits:
    """The three splits of the data set named by ``eval_split`` (see the module docstring).

    ConfigError (at ``data.eval_task`` / ``data.select_task``) for an unknown split name or
    two splits of different data sets.
    """
    if eval_split not in EVAL_SPLITS:
        raise ConfigError("data.eval_task", f"expected one of {EVAL_SPLITS}, got '{eval_split}'")
    if select_split not in SELECT_SPLITS:
        raise ConfigError(
            "data.select_task", f"expected one of {SELECT_SPLITS}, got '{select_split}'"
        )
    dataset = dataset_of(eval_split)
    if dataset_of(select_split) != dataset:
        raise ConfigError(
            "data.select_task",
            f"'{select_split}' is not a split of {dataset} (data.eval_task is '{eval_split}')",
        )
    rows = read_examples(dataset, "train", data_dir, bad_rows)
    if dataset == "sst2":
        return _sst2_splits(rows, seed)
    dev = read_examples(dataset, "dev", data_dir, bad_rows)
    return _pair_splits(dataset, rows, dev, val_fraction, seed)
