"""``attnkd validate`` / ``attnkd distill`` on bad configs: exit status 2, one line naming the
key, no traceback, no run folder; and the ``ls`` / ``--help`` commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from attnkd.cli import main
from attnkd.config.io import dump_yaml
from attnkd.losses.terms import TERMS

BAD = {
    "unknown key": (["train.lrr=1"], "train.lrr", "unknown key 'lrr'; did you mean 'lr'"),
    "wrong type": (["train.max_steps=many"], "train.max_steps", "expected int"),
    "wrong list type": (["student.layers=3"], "student.layers", r"expected list\[int\]"),
    "layer out of range": (["student.layers=[0,9]"], "student.layers", "index 9 out of range"),
    "unsorted layers": (["student.layers=[2,0]"], "student.layers", "increasing"),
    "relation heads": (
        ["losses.0.relation_heads=5"],
        "losses[0].relation_heads",
        "not divisible by relation_heads=5",
    ),
    "width without projector": (
        ["student.hidden_size=16", "losses=[{name: hidden_mse}]"],
        "losses[0].projector",
        "set projector: true",
    ),
    "unknown loss": (["losses.0.name=fancy"], "losses[0].name", "unknown loss 'fancy'"),
    "headwise heads": (
        ["student.num_heads=2", "losses=[{name: attention}]"],
        "losses[0].name",
        "equal head counts",
    ),
    "loss layer": (["losses.0.student_layer=2"], "losses[0].student_layer", "out of range"),
    "static check": (["train.lr=0"], "train.lr", "must be > 0"),
    "layers and rule": (["student.layer_rule=every:2"], "student.layer_rule", "not both"),
    "unknown task": (["task=vision"], "task", "expected one of"),
    "task vs teacher": (["task=causal_lm"], "task", "does not fit the teacher, an encoder"),
    "vocab kind": (["losses.0.kind=kl"], "losses[0].kind", "expected one of"),
    "missing teacher": (["teacher.name=./no/such/model"], "teacher.name", "does not exist"),
}


def _run_dirs(root: Path) -> list[Path]:
    return list(root.glob("*")) if root.exists() else []


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("command", ["validate", "distill"])
def test_bad_config_exits_2_naming_the_key(case, command, base_overrides, tmp_path, capsys):
    overrides, key, words = BAD[case]
    argv = [command, *base_overrides, *overrides]
    if command == "distill":
        argv.append("--no-progress")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert f"config error at '{key}'" in err, err
    assert re.search(words, err), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "OK" not in out
    assert _run_dirs(tmp_path / "runs") == [], "a run folder was made before validation passed"


def test_missing_data_files_name_the_source(base_overrides, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["validate", *base_overrides, f"data.data_dir={empty}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "config error at 'data.train_sources[0]'" in err
    assert str(empty / "stsb" / "sts-train.csv") in err and "file not found" in err
    assert main([*argv, "--no-data"]) == 0  # the models' configs are still fine
    assert main(["validate", *base_overrides, f"data.data_dir={tmp_path / 'nowhere'}"]) == 2
    assert "config error at 'data.data_dir'" in capsys.readouterr().err
    argv = ["distill", *base_overrides, f"data.data_dir={empty}", "--no-progress"]
    assert main(argv) == 2
    assert _run_dirs(tmp_path / "runs") == []


def test_missing_eval_split_is_named(base_overrides, data_dir, tmp_path, capsys):
    partial = tmp_path / "partial"
    for sub in ("stsb", "sst2"):
        (partial / sub).mkdir(parents=True)
    for name in ("stsb/sts-train.csv", "sst2/train.tsv"):
        (partial / name).write_bytes((data_dir / name).read_bytes())
    assert main(["validate", *base_overrides, f"data.data_dir={partial}"]) == 2
    err = capsys.readouterr().err
    assert "config error at 'data.eval_task'" in err and "sts-dev.csv" in err


def test_good_config_validates_from_overrides_and_from_a_file(make_cfg, tmp_path, capsys):
    cfg = make_cfg("losses=[{name: relation}, {name: hidden_mse, teacher_layer: 1}]")
    path = tmp_path / "recipe.yaml"
    dump_yaml(cfg, path)
    assert main(["validate", str(path)]) == 0
    assert f"{path}: OK" in capsys.readouterr().out
    assert main(["validate", str(path), "student.layers=[0,9]"]) == 2
    assert "config error at 'student.layers'" in capsys.readouterr().err
    text = path.read_text().replace("  lr:", "  lrr:")
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    line = 1 + text.splitlines().index(next(ln for ln in text.splitlines() if "lrr:" in ln))
    assert f"config error at 'train.lrr': {path}:{line}: unknown key 'lrr'" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_real_process_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "attnkd", "validate", "train.lrr=1", f"output_dir={tmp_path}/r"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc
    assert "config error at 'train.lrr'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "r").exists()


def test_ls_recipes_names_and_describes_each(capsys):
    assert main(["ls", "recipes"]) == 0
    out = capsys.readouterr().out
    shipped = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
    assert shipped
    for p in shipped:
        line = next(x for x in out.splitlines() if x.strip().startswith(p.name))
        assert len(line.split(p.name, 1)[1].strip()) > 10  # its description comment


def test_a_shipped_recipe_runs_by_name(capsys, tmp_path, monkeypatch):
    """``attnkd validate NAME`` finds the packaged recipe from any folder; a file wins."""
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "minilm-sentence", "--no-data", "--no-models"]) == 0
    assert "minilm-sentence: OK" in capsys.readouterr().out
    assert (
        main(["validate", "paraphrase-l3.yaml", "train.lr=1e-4", "--no-data", "--no-models"]) == 0
    )
    (tmp_path / "minilm-sentence").write_text("name: mine\ntrain: {lr: 1.0e-3}\n")
    from attnkd.cli import _load

    assert _load("minilm-sentence", []).name == "mine"  # the local file, not the shipped one
    assert _load("paraphrase-l3", []).name == "paraphrase-l3"
    assert main(["validate", "no-such-recipe", "--no-data", "--no-models"]) == 2


def test_ls_losses_lists_every_term(capsys):
    assert main(["ls", "losses"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert set(TERMS) <= listed
    for name in TERMS:
        assert TERMS.get(name).summary in out


@pytest.mark.parametrize("argv", [["--help"], ["distill", "--help"], ["validate", "--help"],
                                  ["eval", "--help"], ["ls", "--help"]])  # fmt: skip
def test_help_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: attnkd" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["frobnicate"], ["ls", "things"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    assert "usage: attnkd" in capsys.readouterr().err
