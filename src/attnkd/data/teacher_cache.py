"""Offline teacher cache: one teacher pass over the training blocks, stored per token as its
top-k log-probs plus the log of the remaining mass; training reads it instead of the teacher
(written by ``attnkd cache-teacher``, :mod:`attnkd.lm.cache_run`; matched to a run by
:mod:`attnkd.data.cache_match`).

A cache is a folder written atomically (:func:`attnkd.atomic.atomic_dir`):

- ``input_ids.npy`` (blocks, L) int32: the training blocks it was made on;
- ``topk_ids.npy`` (blocks, L, k) int32: the teacher's k most likely next tokens per position;
- ``topk_logp.npy`` (blocks, L, k) float16 or float32: their log-probs at temperature τ;
- ``tail_logp.npy`` (blocks, L) float32: ``log(1 − Σ top-k probs)`` (−inf when k = V);
- ``manifest.json``: k, τ, dtypes, shapes, sha256 and size of each file, bytes per token, and
  the fingerprints of the teacher's weights, its tokenizer, the source text and the blocks.

Opening a cache checks every file's sha256 (a corrupt or truncated file is refused); a run
whose teacher, tokenizer, text, blocks, k or temperature differs from the cache's is refused
with an error naming the field, both values and the command that rebuilds it. The arrays are
memory-mapped (``numpy.load(mmap_mode='r')``): a batch reads only its own rows. The loss that
consumes them is :func:`attnkd.losses.topk.topk_divergence` (k + 1 buckets; exact at k = V).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attnkd.atomic import atomic_dir, manifest, sha256, write_json
from attnkd.capture import Taps
from attnkd.data.lm import LMBatches
from attnkd.errors import AttnkdError, ConfigError
from attnkd.losses.topk import TopKTargets

log = logging.getLogger("attnkd")

__all__ = [
    "CacheError",
    "CachedLMBatches",
    "CachedTaps",
    "TeacherCache",
    "pop_cached_taps",
    "teacher_targets",
    "write_cache",
]

FORMAT = "attnkd-teacher-cache/1"
ARRAYS = ("input_ids", "topk_ids", "topk_logp", "tail_logp")
LOGP_DTYPES = {"fp16": np.float16, "fp32": np.float32}
CHECKED = ("teacher", "tokenizer", "text", "blocks", "k", "temperature")
"""Manifest fields a run must match, in the order they are checked."""
_BATCH_KEYS = {"topk_ids": "teacher_topk_ids", "topk_logp": "teacher_topk_logp",
               "tail_logp": "teacher_tail_logp"}  # fmt: skip


class CacheError(AttnkdError):
    """A teacher cache is missing, corrupt, or made for another teacher / text / k."""


@dataclass
class CacheKey:
    """What a cache was made from; a run must present the same values to use it."""

    teacher: str
    tokenizer: str
    text: str
    blocks: str
    k: int
    temperature: float


def teacher_targets(logits: Tensor, k: int, temperature: float = 1.0) -> TopKTargets:
    """Top-k log-probs of ``logits`` (..., V) at temperature τ and the log of the rest (...)."""
    lp = torch.log_softmax(logits.float() / temperature, dim=-1)
    top = lp.topk(k, dim=-1)
    tail = lp.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    return TopKTargets(top.indices, top.values, tail)


def write_cache(
    teacher: nn.Module,
    blocks: Tensor,
    out: str | Path,
    key: CacheKey,
    *,
    dtype: str = "fp16",
    batch_size: int = 8,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``teacher`` over ``blocks`` (num_blocks, L) and write the cache folder ``out``
    atomically (a failure leaves no folder, or the previous one). Returns the manifest."""
    if dtype not in LOGP_DTYPES:
        raise ConfigError("--dtype", f"expected one of {list(LOGP_DTYPES)}, got {dtype!r}")
    n, length = blocks.shape
    vocab = int(teacher.config.vocab_size)
    if not 1 <= key.k <= vocab:
        raise ConfigError("--top-k", f"must be in [1, {vocab}] (the vocabulary), got {key.k}")
    device = next(teacher.parameters()).device
    t0 = time.time()
    with atomic_dir(out) as tmp:
        arrays = {
            "input_ids": _open(tmp, "input_ids", np.int32, (n, length)),
            "topk_ids": _open(tmp, "topk_ids", np.int32, (n, length, key.k)),
            "topk_logp": _open(tmp, "topk_logp", LOGP_DTYPES[dtype], (n, length, key.k)),
            "tail_logp": _open(tmp, "tail_logp", np.float32, (n, length)),
        }
        with torch.no_grad(), tqdm(total=n, desc="teacher cache", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                ids = blocks[start : start + batch_size]
                logits = teacher(input_ids=ids.to(device), attention_mask=torch.ones_like(
                    ids, device=device)).logits  # fmt: skip
                t = teacher_targets(logits, key.k, key.temperature)
                rows = slice(start, start + ids.shape[0])
                arrays["input_ids"][rows] = ids.numpy().astype(np.int32)
                arrays["topk_ids"][rows] = t.ids.cpu().numpy().astype(np.int32)
                arrays["topk_logp"][rows] = t.logp.cpu().numpy().astype(LOGP_DTYPES[dtype])
                arrays["tail_logp"][rows] = t.tail.cpu().numpy()
                bar.update(ids.shape[0])
        for a in arrays.values():
            a.flush()
        del arrays
        files = manifest(tmp, [f"{a}.npy" for a in ARRAYS])
        tokens = n * length
        total = sum(f["bytes"] for f in files.values())
        targets = total - files["input_ids.npy"]["bytes"]
        info = {
            "format": FORMAT, **key.__dict__, "logp_dtype": dtype, "num_blocks": n,
            "block_size": length, "vocab_size": vocab, "tokens": tokens, "files": files,
            "bytes_per_token": total / tokens, "target_bytes_per_token": targets / tokens,
            "teacher_seconds": time.time() - t0, **(meta or {}),
        }  # fmt: skip
        write_json(tmp / "manifest.json", info)
    log.info(
        "teacher cache %s: %d tokens, k=%d, %.1f bytes/token (%.1f for the targets)",
        out,
        tokens,
        key.k,
        info["bytes_per_token"],
        info["target_bytes_per_token"],
    )
    return info


def _open(folder: Path, name: str, dtype, shape: tuple[int, ...]) -> np.memmap:
    return np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


class TeacherCache:
    """A cache folder opened for reading: ``manifest`` (dict) and memory-mapped arrays.

    ``TeacherCache(path)`` refuses a folder with no manifest, another format, a missing file,
    or a file whose size or sha256 differs from the manifest (``verify=False`` skips the
    sha256, not the sizes and shapes).
    """

    def __init__(self, path: str | Path, verify: bool = True):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise CacheError(f"{self.path} is not a teacher cache (no manifest.json); make one "
                             "with 'attnkd cache-teacher RECIPE --top-k K'")  # fmt: skip
        try:
            self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CacheError(f"{mpath}: unreadable manifest ({err})") from err
        m = self.manifest
        if m.get("format") != FORMAT:
            raise CacheError(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}")
        self.arrays: dict[str, np.ndarray] = {}
        for name in ARRAYS:
            self.arrays[name] = self._load(name, m["files"].get(f"{name}.npy"), verify)
        n, length, k = m["num_blocks"], m["block_size"], m["k"]
        want = {"input_ids": (n, length), "topk_ids": (n, length, k),
                "topk_logp": (n, length, k), "tail_logp": (n, length)}  # fmt: skip
        for name, shape in want.items():
            if self.arrays[name].shape != shape:
                raise CacheError(f"{self.path / (name + '.npy')}: shape "
                                 f"{self.arrays[name].shape}, manifest says {shape}")  # fmt: skip

    def _load(self, name: str, entry: dict | None, verify: bool) -> np.ndarray:
        f = self.path / f"{name}.npy"
        if entry is None or not f.is_file():
            raise CacheError(f"teacher cache {self.path}: {f.name} is missing")
        if f.stat().st_size != entry["bytes"]:
            raise CacheError(f"{f}: {f.stat().st_size} bytes, the manifest says {entry['bytes']} "
                             "(truncated or replaced); rebuild the cache")  # fmt: skip
        if verify and sha256(f) != entry["sha256"]:
            raise CacheError(f"{f}: sha256 differs from the manifest (corrupt); rebuild the cache")
        return np.load(f, mmap_mode="r", allow_pickle=False)

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def num_blocks(self) -> int:
        return int(self.manifest["num_blocks"])

    def check(self, run: CacheKey, rebuild: str = "attnkd cache-teacher RECIPE") -> None:
        """Refuse (CacheError) unless every field of :data:`CHECKED` equals the run's."""
        m = self.manifest
        for field in CHECKED:
            have, want = m.get(field), getattr(run, field)
            if have != want:
                what = {
                    "blocks": "token blocks (data.max_length, data.val_fraction, "
                    "data.eval_fraction or the held-out filter differ)"
                }.get(field, field)
                raise CacheError(
                    f"teacher cache {self.path} does not match this run: its {what} is "
                    f"{_short(have)}, the run's is {_short(want)}; rebuild it with "
                    f"'{rebuild} --top-k {run.k}' (or point teacher.cache at a matching one)"
                )

    def targets(self, rows: list[int]) -> TopKTargets:
        """Targets of the given cached blocks, as tensors ((len(rows), L, k) ...)."""
        idx = np.asarray(rows, dtype=np.int64)
        a = self.arrays
        return TopKTargets(
            torch.from_numpy(np.asarray(a["topk_ids"][idx])),
            torch.from_numpy(np.asarray(a["topk_logp"][idx])),
            torch.from_numpy(np.asarray(a["tail_logp"][idx])),
        )

    def input_ids(self) -> Tensor:
        return torch.from_numpy(np.asarray(self.arrays["input_ids"]).astype(np.int64))


def _short(v: Any) -> str:
    if isinstance(v, str) and len(v) == 64:
        return f"sha256 {v[:12]}…"
    return repr(v)


class CachedTaps(Taps):
    """Teacher "taps" read from a cache: no captured tensors, the top-k targets in ``topk``
    (the ``logits`` loss term uses them in place of the teacher's logits)."""

    def __init__(self, topk: TopKTargets):
        super().__init__()
        self.topk = topk


class CachedLMBatches(LMBatches):
    """:class:`LMBatches` whose batches also carry the cached teacher targets of their blocks
    (``teacher_topk_ids``, ``teacher_topk_logp``, ``teacher_tail_logp``); the step pops them
    with :func:`pop_cached_taps`. Block i of ``blocks`` is row i of the cache."""

    def __init__(self, blocks: Tensor, batch_size: int, seed: int, cache: TeacherCache):
        super().__init__(blocks, batch_size, seed)
        if cache.num_blocks != blocks.shape[0]:
            raise CacheError(f"teacher cache {cache.path} holds {cache.num_blocks} blocks, the "
                             f"run trains on {blocks.shape[0]}")  # fmt: skip
        self.cache = cache

    def batch_at(self, epoch: int, index: int) -> dict[str, Tensor]:
        rows = self.indices_at(epoch, index)
        ids = self.blocks[torch.tensor(rows, dtype=torch.long)]
        t = self.cache.targets(rows)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                _BATCH_KEYS["topk_ids"]: t.ids, _BATCH_KEYS["topk_logp"]: t.logp,
                _BATCH_KEYS["tail_logp"]: t.tail}  # fmt: skip


def pop_cached_taps(batch: dict[str, Tensor]) -> CachedTaps | None:
    """Remove the cached targets from ``batch`` (so it holds model inputs only) and return them
    as :class:`CachedTaps`; None when the batch carries none (a live teacher runs)."""
    if _BATCH_KEYS["topk_ids"] not in batch:
        return None
    ids, logp, tail = (batch.pop(_BATCH_KEYS[k]) for k in ("topk_ids", "topk_logp", "tail_logp"))
    return CachedTaps(TopKTargets(ids, logp, tail))
