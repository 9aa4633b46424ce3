"""Save and load converted models: ``config.json`` (the base model's Hugging Face config),
``model.safetensors`` (every weight, feature maps included) and ``conversion.json`` (what was
converted, and how to rebuild it).

Loading needs transformers, safetensors and :mod:`attnkd.convert` only, never attnkd's
training code: the base architecture is built from its config, the named layers are swapped
as at conversion, then the weights are loaded strictly (no missing or unexpected key).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from attnkd.convert.mla import convert_to_mla
from attnkd.convert.swap import ConversionSpec, convert_attention
from attnkd.errors import AttnkdError

FORMAT = "attnkd.convert"
VERSION = 1
WEIGHTS = "model.safetensors"
CONVERSION = "conversion.json"


def save_converted(model: nn.Module, folder: str | Path, tokenizer=None) -> Path:
    """Write ``model`` (returned by :func:`convert_attention` or :func:`convert_to_mla`) into
    ``folder`` atomically."""
    from safetensors.torch import save_model

    from attnkd.atomic import atomic_dir

    spec = getattr(model, "attnkd_conversion", None)
    if spec is None:
        raise AttnkdError(
            "save_converted: the model carries no conversion (use convert_attention or "
            "convert_to_mla)"
        )
    record = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": type(model).__name__,
        "add_pooling_layer": getattr(model, "pooler", None) is not None,
        "conversion": spec,
    }
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        model.config.save_pretrained(tmp)
        save_model(model, str(tmp / WEIGHTS))
        (tmp / CONVERSION).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return folder


def read_conversion(folder: str | Path) -> dict:
    """The ``conversion.json`` record of a converted-model folder (checked)."""
    path = Path(folder) / CONVERSION
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AttnkdError(f"{folder}: not a converted model (no {CONVERSION})") from None
    except json.JSONDecodeError as err:
        raise AttnkdError(f"{path}: invalid JSON ({err})") from None
    if record.get("format") != FORMAT or record.get("version") != VERSION:
        raise AttnkdError(
            f"{path}: expected format '{FORMAT}' version {VERSION}, got "
            f"{record.get('format')!r} version {record.get('version')!r}"
        )
    return record


def load_converted(folder: str | Path, attn_implementation: str = "sdpa") -> nn.Module:
    """Rebuild and load a converted model saved by :func:`save_converted` (eval mode)."""
    import transformers
    from safetensors.torch import load_model

    folder = Path(folder)
    record = read_conversion(folder)
    config = transformers.AutoConfig.from_pretrained(folder)
    config._attn_implementation = attn_implementation
    cls = getattr(transformers, record["model_class"], None)
    if cls is None:
        raise AttnkdError(f"{folder}: unknown model class {record['model_class']!r}")
    kwargs = (
        {"add_pooling_layer": record["add_pooling_layer"]} if "bert" in cls.__name__.lower() else {}
    )
    model = cls(config, **kwargs)
    conv = record["conversion"]
    if conv.get("kind") == "mla":
        model = convert_to_mla(model, rank=conv["rank"], layers=conv["layers"], inplace=True)
    else:
        model = convert_attention(model, ConversionSpec(**conv), inplace=True)
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False)
    if missing or unexpected:
        raise AttnkdError(
            f"{folder / WEIGHTS}: weights do not fit the rebuilt model "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return model.eval()
