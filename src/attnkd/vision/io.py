"""Save and load image models: ``model.safetensors`` plus ``config.json`` naming the builder.

A saved folder rebuilds with :func:`load_image_model` (no pickle anywhere); ``config.json``
holds :class:`attnkd.vision.models.ImageModelConfig`'s fields under ``"attnkd_image"``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from attnkd.errors import AttnkdError
from attnkd.vision.models import BUILDERS, ImageModelConfig, build_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def save_image_model(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``folder/{config.json, model.safetensors}`` atomically (files replaced whole)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as f:
        tmp = Path(f.name)
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS)
    doc = {"attnkd_image": model.config.to_dict()}
    (folder / (CONFIG + ".tmp")).write_text(json.dumps(doc, indent=2) + "\n")
    (folder / (CONFIG + ".tmp")).replace(folder / CONFIG)
    return folder


def is_image_model(name: str) -> bool:
    """True for a builder name or a folder saved by :func:`save_image_model`."""
    if name in BUILDERS:
        return True
    path = Path(name) / CONFIG
    try:
        return path.is_file() and "attnkd_image" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def load_image_model(name: str) -> nn.Module:
    """A builder name (fresh init) or a saved folder (its weights)."""
    if name in BUILDERS:
        return build_model(name)
    folder = Path(name)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise AttnkdError(
            f"image model '{name}': not a builder ({', '.join(BUILDERS)}) nor a folder holding "
            f"{CONFIG} and {WEIGHTS}"
        )
    try:
        fields = json.loads((folder / CONFIG).read_text())["attnkd_image"]
        model = build_model(ImageModelConfig(**fields))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise AttnkdError(f"cannot load image model from {folder}: {err}") from err
    return model
