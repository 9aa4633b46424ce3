"""Save a student in standard formats: Hugging Face folder + sentence-transformers files.

A sentence-transformers pipeline is the Transformer followed by the modules ``modules.json``
lists (Pooling, often Normalize, sometimes Dense). A student exported for a teacher that is such
a pipeline gets the teacher's module list (:func:`copy_sentence_transformers_modules`): its
Pooling settings at the student's width, Normalize, and any other module copied as it is, so
``SentenceTransformer(student)`` encodes the way ``SentenceTransformer(teacher)`` does.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path, PurePosixPath

from torch import nn

from attnkd.atomic import atomic_dir
from attnkd.errors import AttnkdError

log = logging.getLogger("attnkd")

TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"


def write_sentence_transformers_files(folder: Path, hidden: int, max_seq_length: int) -> None:
    """modules.json (Transformer -> mean Pooling), 1_Pooling/config.json, sentence_bert_config."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    _write_sbert_config(folder, {"do_lower_case": False}, max_seq_length)


def _write_sbert_config(folder: Path, base: dict, max_seq_length: int) -> None:
    # Students and the converted L3 have no pooler weights; model_args keeps
    # sentence-transformers from building a randomly initialised one (mean pooling never reads it).
    sbert = {**base, "max_seq_length": max_seq_length}
    sbert["model_args"] = {**sbert.get("model_args", {}), "add_pooling_layer": False}
    (folder / "sentence_bert_config.json").write_text(json.dumps(sbert, indent=2))


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AttnkdError(f"{path}: cannot read the teacher's {what}: {err}") from err


def _module_dir(teacher: Path, entry, i: int) -> str:
    """A module's folder inside the teacher, checked to stay inside it ('' for the root)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise AttnkdError(f"{teacher / 'modules.json'}: entry {i} is not a module with a 'type'")
    rel = str(entry.get("path", ""))
    parts = PurePosixPath(rel).parts
    if rel.startswith(("/", "\\")) or ".." in parts:
        raise AttnkdError(
            f"{teacher / 'modules.json'}: entry {i} has path {rel!r} outside the model"
        )
    return rel


def copy_sentence_transformers_modules(
    teacher: Path, folder: Path, hidden: int, max_seq_length: int
) -> bool:
    """Give ``folder`` (a student of width ``hidden``) the module list of the sentence-
    transformers model in ``teacher``; False (nothing written) when ``teacher`` has none.

    Pooling keeps its modes with ``word_embedding_dimension`` set to ``hidden``; Normalize needs
    no files; other modules (e.g. Dense) are copied as they are when the student is as wide as
    the teacher, else AttnkdError (their weights expect the teacher's width).
    """
    listing = teacher / "modules.json"
    if not listing.is_file():
        return False
    modules = _read_json(listing, "modules.json")
    if not isinstance(modules, list) or not modules or modules[0].get("type") != TRANSFORMER:
        raise AttnkdError(f"{listing}: expected a list of modules starting with the Transformer")
    t_cfg = (
        _read_json(teacher / "config.json", "config.json")
        if (teacher / "config.json").is_file()
        else {}
    )
    t_hidden = t_cfg.get("hidden_size", hidden)
    for i, entry in enumerate(modules[1:], start=1):
        rel = _module_dir(teacher, entry, i)
        kind = entry["type"]
        src, dst = teacher / rel, folder / rel
        if kind == POOLING:
            pooling = _read_json(src / "config.json", "Pooling config")
            pooling["word_embedding_dimension"] = hidden
            dst.mkdir(parents=True, exist_ok=True)
            (dst / "config.json").write_text(json.dumps(pooling, indent=2))
        elif kind == NORMALIZE:
            dst.mkdir(parents=True, exist_ok=True)
        elif t_hidden != hidden:
            raise AttnkdError(
                f"{listing}: module {i} ({kind}) was trained on the teacher's width {t_hidden}; "
                f"a student of width {hidden} cannot reuse it"
            )
        elif rel and src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    base = {"do_lower_case": False}
    if (teacher / "sentence_bert_config.json").is_file():
        base = _read_json(teacher / "sentence_bert_config.json", "sentence_bert_config.json")
    _write_sbert_config(folder, base, max_seq_length)
    extra = teacher / "config_sentence_transformers.json"  # prompts, similarity function
    if extra.is_file():
        shutil.copyfile(extra, folder / extra.name)
    return True


def export_student(
    model: nn.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    max_seq_length: int = 128,
    sentence_transformers: bool = True,
    modules_from: str | os.PathLike | None = None,
) -> Path:
    """Write ``out_dir`` atomically (temp folder, then rename): config.json, model.safetensors,
    tokenizer files and (for encoders) sentence-transformers files, so ``AutoModel`` /
    ``AutoModelForCausalLM.from_pretrained`` and ``SentenceTransformer`` load it.

    ``modules_from``: the teacher's folder; when it is a sentence-transformers model its module
    list is reproduced (:func:`copy_sentence_transformers_modules`), otherwise (or when None)
    the pipeline is mean pooling alone.
    """
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if sentence_transformers:
            hidden = int(model.config.hidden_size)
            teacher = Path(modules_from) if modules_from is not None else None
            if teacher is None or not teacher.is_dir():
                if teacher is not None:
                    log.warning("teacher %s is not a local folder: exporting mean pooling", teacher)
                write_sentence_transformers_files(tmp, hidden, max_seq_length)
            elif not copy_sentence_transformers_modules(teacher, tmp, hidden, max_seq_length):
                write_sentence_transformers_files(tmp, hidden, max_seq_length)
    return out
