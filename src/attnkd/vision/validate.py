"""Validation of an ``image_classification`` recipe before any model loads or trains."""

from __future__ import annotations

from pathlib import Path

from attnkd.config.schema import DistillConfig
from attnkd.errors import AttnkdError, ConfigError, DataError
from attnkd.models.adapters import geometry


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def _model_config(name: str, key: str):
    from attnkd.vision.io import CONFIG, is_image_model, load_image_model
    from attnkd.vision.models import BUILDERS

    if name in BUILDERS:
        return BUILDERS.get(name)
    if not is_image_model(name):
        raise ConfigError(
            key, f"'{name}' is neither an image builder ({', '.join(BUILDERS)}) nor a folder "
            f"with an image model's {CONFIG}",
        )  # fmt: skip
    try:
        return load_image_model(name).config
    except AttnkdError as err:
        raise ConfigError(key, str(err)) from err


def validate_image(cfg: DistillConfig, check_data: bool = True, check_models: bool = True) -> None:
    """Train settings, loss names and layers, models and the idx files; ConfigError on the first
    problem."""
    from attnkd.losses.terms import TERMS, TermError, VisionTerm
    from attnkd.vision.models import NO_TEACHER, NoTeacher

    t = cfg.train
    _check(t.lr > 0, "train.lr", f"must be > 0, got {t.lr}")
    _check(t.max_steps >= 0, "train.max_steps", f"must be >= 0, got {t.max_steps}")
    _check(t.batch_size >= 2, "train.batch_size", f"must be >= 2, got {t.batch_size}")
    _check(t.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {t.grad_accum}")
    _check(0 < cfg.data.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")
    m = cfg.data.max_images
    _check(m is None or m >= t.batch_size, "data.max_images",
           f"must be at least train.batch_size ({t.batch_size}) or null, got {m}")  # fmt: skip
    _check(bool(cfg.losses), "losses", "needs at least one loss term")
    for i, term in enumerate(cfg.losses):
        key = f"losses[{i}]"
        _check(term.name in TERMS, f"{key}.name", f"unknown loss '{term.name}'")
        _check(issubclass(TERMS.get(term.name).cls, VisionTerm), f"{key}.name",
               f"'{term.name}' is not an image loss term (see `attnkd ls losses`)")  # fmt: skip
        _check(term.weight >= 0, f"{key}.weight", "must be >= 0")
        _check(term.temperature > 0, f"{key}.temperature", "must be > 0")
    if check_models:
        _check(cfg.student.init not in ("teacher", NO_TEACHER), "student.init",
               "name an image builder (e.g. cnn:small) or a saved image model folder")  # fmt: skip
        sg = geometry(_model_config(cfg.student.init, "student.init"))
        name = cfg.teacher.name
        if name == NO_TEACHER:
            tg = geometry(NoTeacher.config)
        elif not Path(name).exists() and ":" not in name:
            _check(bool(cfg.teacher.recipe), "teacher.name",
                   f"folder not found: {name} (and no teacher.recipe to train it)")  # fmt: skip
            from attnkd.recipes import find_recipe

            recipe = cfg.teacher.recipe
            _check(Path(recipe).is_file() or find_recipe(recipe) is not None, "teacher.recipe",
                   f"neither a file nor a packaged recipe: {recipe}")  # fmt: skip
            tg = None  # known once the teacher stage has run
        else:
            tg = geometry(_model_config(name, "teacher.name"))
        for i, term in enumerate(cfg.losses):
            cls = TERMS.get(term.name).cls
            _check(not (name == NO_TEACHER and cls.teacher_kinds), f"losses[{i}].name",
                   f"'{term.name}' needs a teacher but teacher.name is 'none'")  # fmt: skip
            if tg is None:
                continue
            try:
                cls(term, tg, sg)
            except IndexError as err:
                which = "teacher_layer" if "teacher" in str(err) else "student_layer"
                raise ConfigError(f"losses[{i}].{which}", str(err)) from err
            except TermError as err:
                raise ConfigError(f"losses[{i}].{err.field}", str(err)) from err
    if check_data:
        from attnkd.vision.idx import load_fashion_mnist

        for split in ("train", "test"):
            try:
                load_fashion_mnist(split, cfg.data.image_dir)
            except DataError as err:
                raise ConfigError("data.image_dir", str(err)) from err
