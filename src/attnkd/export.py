"""Save a student in standard formats: Hugging Face folder + sentence-transformers files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from attnkd.atomic import atomic_dir


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
    # Students and the converted L3 have no pooler weights; model_args keeps
    # sentence-transformers from building a randomly initialised one (mean pooling never reads it).
    sbert = {
        "max_seq_length": max_seq_length,
        "do_lower_case": False,
        "model_args": {"add_pooling_layer": False},
    }
    (folder / "sentence_bert_config.json").write_text(json.dumps(sbert, indent=2))


def export_student(
    model: nn.Module,
    tokenizer,
    out_dir: str | os.PathLike,
    max_seq_length: int = 128,
    sentence_transformers: bool = True,
) -> Path:
    """Write ``out_dir`` atomically (temp folder, then rename): config.json, model.safetensors,
    tokenizer files and (for encoders) sentence-transformers files (mean pooling), so
    ``AutoModel`` / ``AutoModelForCausalLM.from_pretrained`` and ``SentenceTransformer`` load it.
    """
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if sentence_transformers:
            write_sentence_transformers_files(tmp, int(model.config.hidden_size), max_seq_length)
    return out
