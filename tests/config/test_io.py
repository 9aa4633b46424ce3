"""Typed config I/O: strict loading, errors naming key and file:line, overrides, round trips."""

from __future__ import annotations

import dataclasses
import os
import random
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from attnkd.config.io import apply_overrides, dump_yaml, from_dict, load_config, to_dict
from attnkd.config.schema import (
    ChainConfig,
    DistillConfig,
    LossTermConfig,
    StudentConfig,
    TrainConfig,
    default_recipe,
)
from attnkd.errors import ConfigError


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _line_of(path: Path, needle: str, nth: int = 0) -> int:
    """1-based line of the nth line containing ``needle`` (found independently of the loader)."""
    hits = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if needle in line]
    return hits[nth]


def _load_error(path: Path, overrides: list[str] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert info.value.exit_code == 2
    return info.value


# --- defaults and round trips ---------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_gives_defaults(tmp_path, text):
    assert load_config(_write(tmp_path, text)) == DistillConfig()


def test_partial_file_keeps_other_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, "train:\n  lr: 0.5\nstudent:\n  layers: [1]\n"))
    expected = DistillConfig()
    expected.train.lr = 0.5
    expected.student.layers = [1]
    assert cfg == expected


def test_default_config_round_trip(tmp_path):
    path = tmp_path / "run" / "config.yaml"  # parent folder is created
    dump_yaml(DistillConfig(), path)
    assert load_config(path) == DistillConfig()
    assert from_dict(DistillConfig, to_dict(DistillConfig())) == DistillConfig()
    assert yaml.safe_load(path.read_text()) == to_dict(DistillConfig())


def test_to_dict_is_plain_and_a_copy():
    cfg = default_recipe()
    data = to_dict(cfg)
    assert list(data) == [f.name for f in dataclasses.fields(DistillConfig)]
    assert data["losses"] == [dataclasses.asdict(t) for t in cfg.losses]
    data["student"]["layers"].append(99)
    assert cfg.student.layers == [0, 2, 5]


_TRICKY_STRINGS = ["yes", "no", "on", "null", "~", "123", "1e-4", "", " lead", "a: b", "#x", "é→"]


def _random_value(tp, rng: random.Random):
    """An arbitrary value of schema type ``tp`` (written for the test, walks the type itself)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return None if rng.random() < 0.3 else _random_value(inner, rng)
    if origin is list:
        return [_random_value(args[0], rng) for _ in range(rng.randint(0, 3))]
    if origin is dict:  # a free mapping (a stage's overrides)
        keys = rng.sample(["lr", "name", "layers", "é→"], rng.randint(0, 3))
        return {k: _random_value(rng.choice([int, float, str, bool, list[int]]), rng) for k in keys}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{f.name: _random_value(hints[f.name], rng) for f in dataclasses.fields(tp)})
    if tp is bool:
        return rng.random() < 0.5
    if tp is int:
        return rng.choice([0, -1, 7, 2**40, rng.randint(-1000, 1000)])
    if tp is float:
        return rng.choice([0.0, -0.5, 1e-10, 3e-4, 1e300, rng.uniform(-10, 10)])
    if tp is str:
        return rng.choice(_TRICKY_STRINGS + [f"s{rng.randint(0, 99)}"])
    raise AssertionError(tp)


@pytest.mark.parametrize("seed", range(20))
def test_random_config_round_trip(tmp_path, seed):
    cfg = _random_value(DistillConfig, random.Random(seed))
    assert from_dict(DistillConfig, to_dict(cfg)) == cfg
    # load_config also resolves the stages (tests/stages), which random ones do not survive
    cfg = dataclasses.replace(cfg, stages=[], chain=ChainConfig())
    path = tmp_path / "c.yaml"
    dump_yaml(cfg, path)
    assert load_config(path) == cfg


def test_dump_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    dump_yaml(DistillConfig(), path)
    before = path.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("attnkd.atomic.os.replace", broken_replace)
    cfg = DistillConfig(name="other")
    with pytest.raises(OSError, match="disk full"):
        dump_yaml(cfg, path)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o644
    monkeypatch.undo()
    dump_yaml(cfg, path)  # overwrite an existing file
    assert load_config(path).name == "other"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


# --- accepted values ------------------------------------------------------------------------


def test_accepted_coercions(tmp_path):
    path = _write(
        tmp_path,
        """\
        train:
          lr: 3e-4            # YAML 1.1 reads this as the string '3e-4'
          weight_decay: "0.5" # quoted numeric string for a float
          clip_norm: 2        # int for a float
          max_steps: "12"     # numeric string for an int
          batch_size: 1e3     # whole number written in exponent form
          bf16: yes           # YAML's own boolean
          max_minutes: null   # Optional
        student:
          hidden_size: null
        """,
    )
    cfg = load_config(path)
    assert cfg.train.lr == pytest.approx(3e-4) and type(cfg.train.lr) is float
    assert cfg.train.weight_decay == 0.5
    assert cfg.train.clip_norm == 2.0 and type(cfg.train.clip_norm) is float
    assert cfg.train.max_steps == 12 and type(cfg.train.max_steps) is int
    assert cfg.train.batch_size == 1000 and type(cfg.train.batch_size) is int
    assert cfg.train.bf16 is True
    assert cfg.train.max_minutes is None and cfg.student.hidden_size is None


def test_anchors_and_merge_keys_work(tmp_path):
    path = _write(
        tmp_path,
        """\
        losses:
          - &base {name: relation, weight: 2, relations: [qq]}
          - <<: *base
            weight: 3
        """,
    )
    cfg = load_config(path)
    assert [(t.name, t.weight, t.relations) for t in cfg.losses] == [
        ("relation", 2.0, ["qq"]),
        ("relation", 3.0, ["qq"]),
    ]


# --- errors from files ----------------------------------------------------------------------


# (file text, dotted key, needle for the line of the key, words the message must contain)
_BAD_FILES = [
    ("train:\n  lrr: 0.1\n", "train.lrr", "lrr:", ["unknown key 'lrr'", "did you mean 'lr'"]),
    ("nmae: x\n", "nmae", "nmae:", ["unknown key 'nmae'", "did you mean 'name'"]),
    ("student:\n  zzzz: 1\n", "student.zzzz", "zzzz", ["known keys: init, layers"]),
    ("train:\n  lr: fast\n", "train.lr", "lr:", ["expected float, got str 'fast'", "not a number"]),
    ("train:\n  lr: null\n", "train.lr", "lr:", ["expected float, got null"]),
    ("train:\n  max_steps: 2.5\n", "train.max_steps", "max_steps", ["not a whole number"]),
    ("train:\n  bf16: 1\n", "train.bf16", "bf16", ["expected bool, got int 1"]),
    ("train:\n  bf16: 'yes'\n", "train.bf16", "bf16", ["expected bool, got str 'yes'"]),
    ("train:\n  seed: true\n", "train.seed", "seed", ["expected int, got bool True"]),
    ("teacher:\n  name: 123\n", "teacher.name", "name:", ["expected str, got int 123", "quote"]),
    ("student:\n  layers: [0,\n    x]\n", "student.layers[1]", "x]", ["expected int, got str 'x'"]),
    ("student:\n  layers: 3\n", "student.layers", "layers", ["expected list[int] or null"]),
    ("train: 5\n", "train", "train", ["expected a mapping (TrainConfig), got int 5"]),
    ("teacher: [a]\n", "teacher", "teacher", ["expected a mapping (TeacherConfig)"]),
    ("losses:\n  name: relation\n", "losses", "losses", ["expected list[a mapping"]),
    ("losses:\n  - 5\n", "losses[0]", "- 5", ["expected a mapping (LossTermConfig)"]),
    (
        "losses:\n  - name: relation\n  - name: relation\n    relation_heads: many\n",
        "losses[1].relation_heads",
        "relation_heads",
        ["expected int or null, got str 'many'"],
    ),
    (
        "losses:\n  - relations: [qq, 7]\n",
        "losses[0].relations[1]",
        "relations",
        ["expected str, got int 7"],
    ),
    ("train:\n  lr: 1\n  lr: 2\n", "train.lr", "lr:", ["duplicate key"]),
    ("train:\n  1: 2\n", "train", "train", ["keys must be strings"]),
]


@pytest.mark.parametrize(("text", "key", "needle", "words"), _BAD_FILES)
def test_file_errors_name_key_file_and_line(tmp_path, text, key, needle, words):
    path = _write(tmp_path, text)
    err = _load_error(path)
    assert err.key == key
    message = str(err)
    assert f"'{key}'" in message
    nth = 1 if "duplicate" in words[0] else 0
    assert f"{path}:{_line_of(path, needle, nth)}:" in message
    for word in words:
        assert word in message


def test_top_level_not_a_mapping(tmp_path):
    path = _write(tmp_path, "- a\n- b\n")
    err = _load_error(path)
    assert err.key == "<root>"
    assert str(path) in str(err) and "expected a mapping (DistillConfig)" in str(err)


def test_recursive_alias_is_an_error_not_a_hang(tmp_path):
    err = _load_error(_write(tmp_path, "losses: &l [*l]\n"))
    assert err.key == "losses[0]" and "expected a mapping (LossTermConfig), got list" in str(err)


def test_nested_aliases_do_not_blow_up(tmp_path):
    # 10 levels of 10 aliases each: walking every path would visit 10**10 nodes
    lines = ["a0: &a0 [1, 2]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 11)
    ]
    err = _load_error(_write(tmp_path, "\n".join(lines) + "\n"))
    assert err.key == "a0" and "unknown key 'a0'" in str(err)


def test_huge_int_for_float_is_a_clear_error(tmp_path):
    path = _write(tmp_path, f"train:\n  lr: {10**400}\n")
    err = _load_error(path)
    assert err.key == "train.lr" and "too large" in str(err) and f"{path}:2:" in str(err)


def test_missing_file(tmp_path):
    err = _load_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in err.key and "not found" in str(err)


@pytest.mark.parametrize(
    ("text", "line"),
    [("train:\n  lr: 1\n bad: [\n", 3), ("a: b: c\n", 1), ("x: [1, 2\n", 2)],
)
def test_yaml_syntax_error_names_file_and_line(tmp_path, text, line):
    path = _write(tmp_path, text)
    err = _load_error(path)
    assert err.key == f"{path}:{line}"
    assert "invalid YAML" in str(err)


def test_code_executing_tags_are_refused(tmp_path):
    path = _write(tmp_path, "name: !!python/object/apply:os.system ['echo hacked']\n")
    err = _load_error(path)
    assert err.key == f"{path}:1" and "invalid YAML" in str(err)


# --- overrides ------------------------------------------------------------------------------


def test_overrides_of_each_kind(tmp_path):
    path = _write(tmp_path, "")
    cfg = load_config(
        path,
        [
            "train.lr=3e-4",
            "student.layers=[0,2,4]",
            "teacher.name=foo",
            "losses=[{name: relation, weight: 1}, {name: hidden, projector: true}]",
            "losses.1.weight=2",
            "losses.0.relations.0=kk",
            "data.max_sentences=100",
            "train.bf16=true",
            "name = spaced ",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-4) and type(cfg.train.lr) is float
    assert cfg.student.layers == [0, 2, 4]
    assert cfg.teacher.name == "foo"
    assert cfg.losses == [
        LossTermConfig(name="relation", weight=1.0, relations=["kk", "kk", "vv"]),
        LossTermConfig(name="hidden", weight=2.0, projector=True),
    ]
    assert type(cfg.losses[1].weight) is float
    assert cfg.data.max_sentences == 100 and cfg.train.bf16 is True
    assert cfg.name == "spaced"
    # everything not overridden keeps its default
    assert cfg.train.max_steps == TrainConfig().max_steps
    assert cfg.student.init == StudentConfig().init


def test_override_to_null_and_section_replacement():
    cfg = apply_overrides(DistillConfig(), ["student.layers=null", "train={lr: 0.5}"])
    assert cfg.student.layers is None
    assert cfg.train == TrainConfig(lr=0.5)


def test_overrides_apply_in_order_and_do_not_mutate_input():
    base = default_recipe()
    cfg = apply_overrides(base, ["train.lr=1", "train.lr=2", "student.layers.0=7"])
    assert cfg.train.lr == 2.0 and cfg.student.layers == [7, 2, 5]
    assert base == default_recipe()


def test_overrides_on_top_of_file_values(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 0.5\n  seed: 3\n")
    cfg = load_config(path, ["train.lr=0.25"])
    assert (cfg.train.lr, cfg.train.seed) == (0.25, 3)


_BAD_OVERRIDES = [
    ("train.lr", "train.lr", ["malformed override", "key=value"]),
    ("=3", "=3", ["malformed override"]),
    ("train.lrr=1", "train.lrr", ["unknown key 'lrr'", "did you mean 'lr'"]),
    ("trian.lr=1", "trian", ["unknown key 'trian'", "did you mean 'train'"]),
    ("train.lr=fast", "train.lr", ["expected float, got str 'fast'"]),
    ("train.lr=null", "train.lr", ["expected float, got null"]),
    ("train.bf16=1", "train.bf16", ["expected bool, got int 1"]),
    ("student.layers=[0,x]", "student.layers[1]", ["expected int, got str 'x'"]),
    ("losses.3.weight=1", "losses", ["not an index", "length 1"]),
    ("losses.first.weight=1", "losses", ["not an index"]),
    ("losses.0.wieght=1", "losses[0].wieght", ["did you mean 'weight'"]),
    ("losses=[{name: relation, wieght: 1}]", "losses[0].wieght", ["did you mean 'weight'"]),
    ("losses={name: relation}", "losses", ["expected list["]),
    ("train.lr.x=1", "train.lr", ["cannot set 'x'"]),
    ("train.lr=[1, 2", "train.lr", ["not valid YAML"]),
    ("teacher.name=", "teacher.name", ["expected str, got null"]),
]


@pytest.mark.parametrize(("override", "key", "words"), _BAD_OVERRIDES)
def test_override_errors_name_the_override(tmp_path, override, key, words):
    err = _load_error(_write(tmp_path, ""), [override])
    assert err.key == key
    assert f"'{override}'" in str(err)
    for word in words:
        assert word in str(err)


def test_override_after_null_cannot_index():
    with pytest.raises(ConfigError) as info:
        apply_overrides(DistillConfig(), ["student.layers=null", "student.layers.0=1"])
    assert info.value.key == "student.layers" and "got null" in str(info.value)


# --- generic over any dataclass tree --------------------------------------------------------


@dataclass
class _Leaf:
    a: int = 0
    tags: list[str] | None = None


@dataclass
class _Tree:
    leaf: _Leaf = field(default_factory=_Leaf)
    leaves: list[_Leaf] = field(default_factory=list)
    maybe: _Leaf | None = None
    grid: list[list[float]] = field(default_factory=lambda: [[1.0]])


def test_from_dict_works_for_any_dataclass_tree():
    tree = from_dict(
        _Tree,
        {"leaf": {"a": 2}, "leaves": [{"tags": ["x"]}], "maybe": {}, "grid": [[1, "2.5"], []]},
    )
    assert tree == _Tree(_Leaf(2), [_Leaf(tags=["x"])], _Leaf(), [[1.0, 2.5], []])
    assert from_dict(_Tree, to_dict(tree)) == tree
    assert from_dict(_Tree, None) == _Tree()
    with pytest.raises(ConfigError) as info:
        from_dict(_Tree, {"grid": [[1.0], [2.0, "x"]]})
    assert info.value.key == "grid[1][1]" and info.value.exit_code == 2


def test_from_dict_where_prefixes_keys():
    with pytest.raises(ConfigError) as info:
        from_dict(LossTermConfig, {"weight": "heavy"}, where="losses[3]")
    assert info.value.key == "losses[3].weight"
    assert "expected float, got str 'heavy'" in str(info.value)


def test_unsupported_field_type_is_a_programming_error():
    @dataclass
    class Bad:
        table: dict[str, int] = field(default_factory=dict)

    with pytest.raises(TypeError, match="unsupported config field type"):
        from_dict(Bad, {"table": {}})
