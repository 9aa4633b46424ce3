"""Image classification (Fashion-MNIST): images in, test accuracy of CNN/ViT students out.

Models are built from names (``cnn:teacher``, ``cnn:small``, ``vit:tiny``, see
:mod:`attnkd.vision.models`) or loaded from a folder an earlier run exported. The teacher may be
``none`` (training from labels only: the teacher recipe and the no-teacher baseline); when
``teacher.name`` is a folder that does not exist yet and ``teacher.recipe`` names a recipe, that
recipe runs first (the teacher stage) and its exported student becomes the teacher.

Splits: ``data.val_fraction`` of the 60k training images (chosen by ``train.seed``) select the
best checkpoint; the 10k test images are only used for the final figures. ``data.max_images``
keeps a class-balanced part of the rest for training (the data-limited regime).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from attnkd.capture.images import FeatureCapture
from attnkd.config.schema import DistillConfig
from attnkd.engine.loop import StepOutput
from attnkd.errors import AttnkdError
from attnkd.models.adapters import geometry
from attnkd.models.load import LoadedModel
from attnkd.tasks.base import Task, TaskSetup
from attnkd.vision.data import ImageBatches, Split, accuracy, balanced_subset, split_train
from attnkd.vision.idx import load_fashion_mnist
from attnkd.vision.io import load_image_model, save_image_model
from attnkd.vision.models import NO_TEACHER, NoTeacher

log = logging.getLogger("attnkd")


def load(name: str, attn_implementation: str = "sdpa", tokenizer: bool = True) -> LoadedModel:
    """An image model by builder name or exported folder, or the stand-in for ``none``."""
    model = NoTeacher() if name == NO_TEACHER else load_image_model(name)
    return LoadedModel(model, None, name, "local", geometry(model.config))


def prepare(cfg: DistillConfig, run_recipe) -> None:
    """The teacher stage: run ``teacher.recipe`` when ``teacher.name`` is not there yet.

    ``run_recipe(cfg, resume)`` is the recipe runner (:func:`attnkd.distill.run_distill`).
    """
    name, recipe = cfg.teacher.name, cfg.teacher.recipe
    if name == NO_TEACHER or not recipe or Path(name).exists() or ":" in name:
        return
    from attnkd.config.io import load_config
    from attnkd.recipes import find_recipe

    path = recipe if Path(recipe).is_file() else (find_recipe(recipe) or recipe)
    log.info("teacher %s not found: running its recipe %s first", name, path)
    tcfg = load_config(path)
    tcfg.output_dir = cfg.output_dir
    last = Path(tcfg.output_dir) / tcfg.name / "checkpoints" / "last"
    run_recipe(tcfg, resume=last.is_dir())  # an interrupted teacher stage continues
    if not Path(name).exists():
        raise AttnkdError(
            f"teacher.recipe {recipe} ran but did not produce teacher.name {name} (its student "
            f"is exported to {Path(tcfg.output_dir) / tcfg.name / 'student'})"
        )


def make_step(teacher: nn.Module, distiller: nn.Module, model: nn.Module | None = None):
    """Teacher forward (no grad, only when a term needs it), student forward, weighted terms.

    Single-process only: ``model`` (a DDP wrapper under torchrun) is not used by image runs.
    """
    t_req, s_req = [], []
    for term in distiller.terms:
        t, s = term.taps()
        t_req += t
        s_req += s
    t_cap = FeatureCapture(teacher, t_req) if t_req else None
    s_cap = FeatureCapture(distiller.student, s_req)

    def step(batch: dict[str, Tensor]) -> StepOutput:
        x, y = batch["pixel_values"], batch["labels"]
        if t_cap is not None:
            with torch.no_grad(), t_cap:
                teacher(x)
        with s_cap:
            distiller.student(x)
        total: Tensor | None = None
        values: dict[str, float] = {}
        for term in distiller.terms:
            for name, v in term(t_cap.taps if t_cap else None, s_cap.taps, y).items():
                values[f"{term.label}/{name}"] = float(v.detach())
                total = term.weight * v if total is None else total + term.weight * v
        if t_cap is not None:
            t_cap.taps.clear()
        s_cap.taps.clear()
        assert total is not None, "a run needs at least one loss term"
        return StepOutput(loss=total, terms=values, num_items=int(x.shape[0]))

    return step


def setup(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, tok) -> TaskSetup:
    d = cfg.data
    split = split_train(load_fashion_mnist("train", d.image_dir), d.val_fraction, cfg.train.seed)
    if d.max_images is not None:  # the data-limited regime: a class-balanced part of train
        split = Split(balanced_subset(split.train, d.max_images, cfg.train.seed), split.val)
    test = load_fashion_mnist("test", d.image_dir)
    batches = ImageBatches(split.train, cfg.train.batch_size, cfg.train.seed)
    has_teacher = not isinstance(teacher, NoTeacher)

    def evaluate() -> dict[str, float]:
        return {"accuracy": accuracy(student, split.val)}

    def final() -> dict:
        s = accuracy(student, test)
        t = accuracy(teacher, test) if has_teacher else None
        return {
            "eval_split": "fashion-mnist test (10k)",
            "select_split": f"{d.val_fraction:g} of fashion-mnist train (seed {cfg.train.seed})",
            "teacher": {} if t is None else {"accuracy": t},
            "student": {"accuracy": s},
            "retention": None if t is None else s / t,
        }

    def export(folder: Path) -> Path:
        return save_image_model(student, folder)

    info = {"train_images": len(split.train), "val_images": len(split.val)}
    return TaskSetup(batches, evaluate, "accuracy", "max", final, export, train_info=info)


TASK = Task("image_classification", load, setup, make_step=make_step, prepare=prepare)
