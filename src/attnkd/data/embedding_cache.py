"""Teacher sentence embeddings computed once and kept on disk (safetensors), row by row.

A slow teacher (all-mpnet-base-v2 encodes ~10-50 sentences/s on two CPU cores) is run once over
the training sentences; every later run (another seed, another recipe) reads its rows back.

One file per teacher and encoding setting, ``<root>/<key>.safetensors``, where ``key`` is a
fingerprint of the model (its config, weights and tokenizer files) and of how it encodes (max
length, pooling). The file holds ``embeddings`` (n, width) float32 and ``text_sha256`` (n, 32)
uint8: row i is the embedding of the text whose sha256 is row i, so any set of sentences is
looked up by its texts; texts not yet in the file are encoded and the file is rewritten
atomically with them added. A file whose metadata or shapes do not match the key it is read
under is refused with a :class:`CacheError` naming the file and the field; nothing is ever
unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from attnkd.atomic import atomic_file
from attnkd.errors import AttnkdError

log = logging.getLogger("attnkd")

FORMAT = "attnkd-embeddings-1"
_MODEL_FILES = ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                "special_tokens_map.json")  # fmt: skip


class CacheError(AttnkdError):
    """A cached embedding file does not match what it is read for (names the file)."""


@dataclass(frozen=True)
class CacheKey:
    """What a cached embedding depends on; ``fingerprint`` names its file."""

    model: str
    """The name the teacher was given (for people reading the metadata)."""
    model_sha256: str
    """sha256 over the model folder's config, tokenizer and weight files."""
    max_length: int
    pooling: str = "mean"

    @property
    def fingerprint(self) -> str:
        text = f"{FORMAT}|{self.model_sha256}|{self.max_length}|{self.pooling}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def metadata(self, width: int, rows: int) -> dict[str, str]:
        return {"format": FORMAT, "model": self.model, "model_sha256": self.model_sha256,
                "max_length": str(self.max_length), "pooling": self.pooling,
                "width": str(width), "rows": str(rows)}  # fmt: skip


def model_fingerprint(folder: str | Path) -> str:
    """sha256 over a model folder's config, tokenizer and ``*.safetensors`` files (contents)."""
    folder = Path(folder)
    names = [n for n in _MODEL_FILES if (folder / n).is_file()]
    names += sorted(p.name for p in folder.glob("*.safetensors"))
    if "config.json" not in names:
        raise CacheError(f"cannot fingerprint model folder {folder}: it has no config.json")
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0")
        with (folder / name).open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def text_digests(texts: Sequence[str]) -> Tensor:
    """(n, 32) uint8: the sha256 of each text's UTF-8 bytes."""
    out = torch.empty(len(texts), 32, dtype=torch.uint8)
    for i, t in enumerate(texts):
        out[i] = torch.frombuffer(bytearray(hashlib.sha256(t.encode("utf-8")).digest()),
                                  dtype=torch.uint8)  # fmt: skip
    return out


def _row_keys(digests: Tensor) -> list[bytes]:
    return [bytes(r) for r in digests.tolist()]


class EmbeddingCache:
    """Cached sentence embeddings of one teacher under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path, key: CacheKey):
        self.key = key
        self.path = Path(root) / f"{key.fingerprint}.safetensors"

    def _read(self) -> tuple[Tensor, Tensor] | None:
        """(embeddings, digests) of the file, or None when there is none yet."""
        if not self.path.is_file():
            return None
        try:
            tensors = load_file(str(self.path))
            with safe_open(str(self.path), framework="pt") as fh:
                meta = fh.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise CacheError(f"embedding cache {self.path} is unreadable: {err}; delete it "
                             "and it is rebuilt") from None  # fmt: skip
        want = self.key.metadata(0, 0)
        for field in ("format", "model_sha256", "max_length", "pooling"):
            if meta.get(field) != want[field]:
                raise CacheError(
                    f"embedding cache {self.path} does not match: {field} is "
                    f"{meta.get(field)!r} in the file, {want[field]!r} expected for teacher "
                    f"'{self.key.model}'; delete the file to rebuild it"
                )
        emb, dig = tensors.get("embeddings"), tensors.get("text_sha256")
        if emb is None or dig is None or emb.ndim != 2 or dig.shape != (emb.shape[0], 32):
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            raise CacheError(f"embedding cache {self.path} has tensors {shapes}; expected "
                             "embeddings (n, width) and text_sha256 (n, 32)")  # fmt: skip
        if str(emb.shape[0]) != meta.get("rows") or str(emb.shape[1]) != meta.get("width"):
            raise CacheError(
                f"embedding cache {self.path}: metadata says {meta.get('rows')} rows of width "
                f"{meta.get('width')}, the tensors hold {tuple(emb.shape)}"
            )
        return emb, dig

    def get(
        self,
        texts: Sequence[str],
        encode_fn: Callable[[list[str]], Tensor],
        chunk: int = 256,
    ) -> tuple[Tensor, int]:
        """Embeddings (len(texts), width) float32 in the order of ``texts``, and how many were
        newly encoded with ``encode_fn(list_of_texts) -> (m, width)``. New rows are saved every
        ``chunk`` texts, so an interrupted encoding keeps what it finished."""
        found = self._read()
        index = {} if found is None else {k: i for i, k in enumerate(_row_keys(found[1]))}
        keys = _row_keys(text_digests(texts))
        # in the order given (first occurrence), so an interrupted encoding of a corpus has
        # cached a prefix of it (a smaller max_sentences of the same corpus needs no encoding)
        missing = list({k: t for k, t in zip(keys, texts) if k not in index}.items())
        if missing:
            log.info("teacher %s: encoding %d sentences not in %s", self.key.model,
                     len(missing), self.path)  # fmt: skip
        for start in range(0, len(missing), chunk):
            part = [t for _, t in missing[start : start + chunk]]
            if start:  # another process sharing the cache may have added some meanwhile
                done = self._read()
                have = set() if done is None else set(_row_keys(done[1]))
                part = [t for t, k in zip(part, _row_keys(text_digests(part))) if k not in have]
                if not part:
                    continue
            new = encode_fn(part).float().contiguous()
            if new.ndim != 2 or new.shape[0] != len(part):
                raise ValueError(f"encode_fn returned {tuple(new.shape)} for {len(part)} texts")
            self._add(new, text_digests(part))
        found = self._read() if missing else found
        if found is None:  # no texts asked for and no file yet
            return torch.empty(0, 0), 0
        emb, dig = found
        index = {k: i for i, k in enumerate(_row_keys(dig))}
        rows = torch.tensor([index[k] for k in keys], dtype=torch.long)
        return emb[rows].clone(), len(missing)

    def _add(self, new: Tensor, new_dig: Tensor) -> None:
        """Append rows to the file under an exclusive lock, merged with what other processes
        (runs sharing this cache) wrote meanwhile; rows already there are kept as they are."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            found = self._read()
            if found is not None:
                emb, dig = found
                if new.shape[1] != emb.shape[1]:
                    raise CacheError(f"embedding cache {self.path} holds width {emb.shape[1]}, "
                                     f"the teacher now gives {new.shape[1]}")  # fmt: skip
                have = set(_row_keys(dig))
                keep = torch.tensor([k not in have for k in _row_keys(new_dig)])
                new, new_dig = torch.cat([emb, new[keep]]), torch.cat([dig, new_dig[keep]])
            self._write(new, new_dig)

    def _write(self, emb: Tensor, dig: Tensor) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = self.key.metadata(emb.shape[1], emb.shape[0])
        with atomic_file(self.path) as tmp:
            save_file({"embeddings": emb.contiguous(), "text_sha256": dig.contiguous()},
                      str(tmp), metadata=meta)  # fmt: skip
        log.info("saved %d embeddings of %s to %s", emb.shape[0], self.key.model, self.path)


def describe(path: str | Path) -> dict:
    """The metadata of a cached embedding file (for reports), as plain JSON values."""
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})
