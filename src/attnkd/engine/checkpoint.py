"""Checkpoints without pickle, written atomically.

Layout of one training checkpoint directory (e.g. ``run_dir/checkpoints/step-00000250/``; how
a run keeps several and resumes from the newest valid one is :mod:`attnkd.engine.resume`)::

    model.safetensors      module state dict (tied tensors stored once)
    optimizer.safetensors  optimizer tensors, keys ``state.{param_idx}.{name}``
    rng.safetensors        torch RNG states (``torch.cpu``, ``torch.cuda.{i}``)
    state.json             counters, best metric, optimizer scalars + param groups, numpy/python
                           RNG states, fp16 gradient-scaler state (if any), and a manifest
                           (size + sha256) of the files above

``state.json`` is written last, so a directory without it is incomplete. The whole directory is
built under a temporary name in the same parent, fsynced, then swapped in with ``os.replace``:
an interrupted save leaves the previous checkpoint intact (or, if it stopped between the two
renames, both copies complete on disk; :func:`load_checkpoint` puts the newer one back).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from attnkd.atomic import atomic_dir, fsync_dir, manifest, sha256, siblings
from attnkd.engine.rng import RngState
from attnkd.errors import AttnkdError

FORMAT_VERSION = 1
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"


class CheckpointError(AttnkdError):
    """A checkpoint file is missing, incomplete or corrupt; the message names the file."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = str(path)
        super().__init__(f"checkpoint error in {path}: {message}")


@dataclass
class TrainState:
    """Counters carried across resumes."""

    step: int = 0
    """Optimizer steps completed."""
    best_metric: float | None = None
    best_step: int | None = None
    elapsed_s: float = 0.0
    """Training wall time summed over all sessions."""
    skipped_steps: int = 0
    """Steps whose update was dropped for a non-finite loss or gradient (``nonfinite: skip``)."""


_OPTIONAL_STATE = {"skipped_steps"}  # absent from checkpoints written before it existed


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` restored besides the module and optimizer."""

    path: Path
    state: TrainState
    rng: RngState | None
    extra: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] | None = None
    """fp16 gradient-scaler state (``GradScaler.state_dict()``), if one was saved."""


# ----------------------------------------------------------------------------- JSON helpers


def _to_json(obj: Any) -> Any:
    """Tuples survive the round trip as ``{"__tuple__": [...]}`` (AdamW's ``betas``)."""
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        raise TypeError("tensors belong in safetensors, not JSON")
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_from_json(v) for v in obj["__tuple__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


# ------------------------------------------------------------------------ optimizer flattening


@dataclass
class FlatOptimizer:
    """An optimizer state dict split for storage without pickle."""

    tensors: dict[str, torch.Tensor]
    """Per-parameter tensors keyed ``state.{param_idx}.{name}`` (CPU, contiguous)."""
    plain: dict[str, Any]
    """JSON part: ``param_groups`` and non-tensor per-parameter ``scalars``."""


def flatten_optimizer(sd: dict[str, Any]) -> FlatOptimizer:
    """Split ``optimizer.state_dict()`` into tensors (``state.{idx}.{name}``) and JSON values."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return FlatOptimizer(tensors, {"param_groups": sd["param_groups"], "scalars": scalars})


def unflatten_optimizer(flat: FlatOptimizer) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    tensors, plain = flat.tensors, flat.plain
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in plain["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": plain["param_groups"]}


def _write_json(path: Path, obj: Any) -> None:
    """Plain write: only ever called inside :func:`atomic_dir`, which fsyncs and swaps."""
    path.write_text(json.dumps(_to_json(obj), indent=1), encoding="utf-8")


def _recover(target: Path) -> None:
    """If a save stopped between its two renames, move the newest complete copy into place."""
    if target.exists():
        return
    best: tuple[int, Path] | None = None
    for cand in siblings(target, "tmp") + siblings(target, "old"):
        try:
            doc = _read_state(cand)
            _verify_manifest(cand, doc)
        except CheckpointError:
            continue
        step = doc["state"]["step"]
        if best is None or step > best[0]:
            best = (step, cand)
    if best is not None:
        os.replace(best[1], target)
        fsync_dir(target.parent)


# ------------------------------------------------------------------------------ save / load


def save_checkpoint(
    path: str | os.PathLike,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    rng: RngState | None = None,
    extra: dict[str, Any] | None = None,
    scaler: dict[str, Any] | None = None,
) -> Path:
    """Atomically write module (+ optimizer, RNG, counters, ``extra``, fp16 ``scaler`` state)
    to directory ``path``."""
    target = Path(path)
    with atomic_dir(target) as tmp:
        files = [MODEL_FILE]
        save_model(module, str(tmp / MODEL_FILE))
        doc: dict[str, Any] = {"format": FORMAT_VERSION, "state": asdict(state)}
        if optimizer is not None:
            flat = flatten_optimizer(optimizer.state_dict())
            save_file(flat.tensors, str(tmp / OPTIM_FILE))
            files.append(OPTIM_FILE)
            doc["optimizer"] = flat.plain
        if rng is not None:
            save_file({k: v.contiguous() for k, v in rng.tensors().items()}, str(tmp / RNG_FILE))
            files.append(RNG_FILE)
            doc["rng"] = rng.plain()
        doc["extra"] = extra or {}
        if scaler is not None:
            doc["scaler"] = scaler
        doc["files"] = manifest(tmp, files)
        _write_json(tmp / STATE_FILE, doc)
    return target


def _read_state(directory: Path) -> dict[str, Any]:
    f = directory / STATE_FILE
    if not directory.is_dir():
        raise CheckpointError(directory, "no checkpoint directory here")
    if not f.is_file():
        raise CheckpointError(f, "missing (incomplete or not a checkpoint directory)")
    try:
        with open(f, encoding="utf-8") as fh:
            doc = _from_json(json.load(fh))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f, f"corrupt JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise CheckpointError(f, f"unknown checkpoint format (expected {FORMAT_VERSION})")
    keys = {"state", "files", "extra"}
    names = {x.name for x in fields(TrainState)}
    if (
        not keys <= set(doc)
        or not isinstance(doc["state"], dict)
        or not names - _OPTIONAL_STATE <= set(doc["state"]) <= names
    ):
        raise CheckpointError(f, f"incomplete: needs keys {sorted(keys)} and a full 'state'")
    return doc


def verify_checkpoint(path: str | os.PathLike) -> TrainState:
    """Check a checkpoint directory (state.json and every file against its manifest) without
    loading tensors; returns its counters or raises :class:`CheckpointError` naming the file."""
    directory = Path(path)
    doc = _read_state(directory)
    _verify_manifest(directory, doc)
    return TrainState(**doc["state"])


def _verify_manifest(directory: Path, doc: dict[str, Any]) -> None:
    for name, meta in doc["files"].items():
        f = directory / name
        if not f.is_file():
            raise CheckpointError(f, "missing")
        if f.stat().st_size != meta["bytes"] or sha256(f) != meta["sha256"]:
            raise CheckpointError(f, "corrupt (size or sha256 differs from state.json)")


def _load_tensors(f: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f, f"unreadable safetensors file ({e})") from None


def _fit_weights(
    f: Path, saved: dict[str, torch.Tensor], module: nn.Module
) -> dict[str, torch.Tensor]:
    """Check names and shapes against ``module``; fill in tied aliases that were stored once."""
    current = module.state_dict()
    unexpected = sorted(set(saved) - set(current))
    bad_shape = [k for k in saved if k in current and saved[k].shape != current[k].shape]
    by_storage = {
        (current[k].untyped_storage().data_ptr(), current[k].storage_offset()): k
        for k in saved
        if k in current
    }
    full, missing = dict(saved), []
    for k, t in current.items():
        if k in saved:
            continue
        alias = by_storage.get((t.untyped_storage().data_ptr(), t.storage_offset()))
        if alias is not None and current[alias].shape == t.shape:
            full[k] = saved[alias]
        else:
            missing.append(k)
    if unexpected or missing or bad_shape:
        raise CheckpointError(
            f,
            f"does not fit the module: missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}, shape mismatches {bad_shape[:5]}",
        )
    return full


def _check_optimizer_fits(f: Path, sd: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    saved = [len(g["params"]) for g in sd["param_groups"]]
    have = [len(g["params"]) for g in optimizer.param_groups]
    if saved != have:
        raise CheckpointError(
            f, f"does not fit the optimizer: parameter groups of sizes {saved}, expected {have}"
        )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for idx, pstate in sd["state"].items():
        for name, value in pstate.items():
            if (
                isinstance(value, torch.Tensor)
                and value.ndim > 0
                and value.shape != params[idx].shape
            ):
                raise CheckpointError(
                    f,
                    f"does not fit the optimizer: state.{idx}.{name} has shape "
                    f"{tuple(value.shape)}, parameter has {tuple(params[idx].shape)}",
                )


def read_state(path: str | os.PathLike) -> TrainState:
    """Counters of the checkpoint at ``path`` without loading any tensors."""
    directory = Path(path)
    _recover(directory)
    return TrainState(**_read_state(directory)["state"])


def load_checkpoint(
    path: str | os.PathLike,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> Checkpoint:
    """Load weights into ``module`` (and ``optimizer`` state if given) from directory ``path``.

    Every file is checked against the manifest first; any problem raises
    :class:`CheckpointError` naming the file. Nothing is modified unless all checks pass.
    """
    directory = Path(path)
    _recover(directory)
    doc = _read_state(directory)
    _verify_manifest(directory, doc)
    model_file = directory / MODEL_FILE
    if MODEL_FILE not in doc["files"]:
        raise CheckpointError(model_file, "not listed in state.json")
    optim_sd = None
    if optimizer is not None:
        if OPTIM_FILE not in doc["files"]:
            raise CheckpointError(directory / OPTIM_FILE, "missing (weights-only checkpoint)")
        flat = FlatOptimizer(_load_tensors(directory / OPTIM_FILE), doc["optimizer"])
        optim_sd = unflatten_optimizer(flat)
    rng = None
    if RNG_FILE in doc["files"]:
        rng = RngState.from_parts(_load_tensors(directory / RNG_FILE), doc["rng"])
    weights = _fit_weights(model_file, _load_tensors(model_file), module)
    if optimizer is not None:
        _check_optimizer_fits(directory / OPTIM_FILE, optim_sd, optimizer)
    module.load_state_dict(weights, strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(optim_sd)
    state = TrainState(**doc["state"])
    return Checkpoint(directory, state, rng, doc.get("extra", {}), doc.get("scaler"))
