"""Staged runs end to end on the tiny teacher and data: stage boundaries switch teacher, data
and frozen parts; the student carries over; resume inside stage 2 after an interruption equals
an uninterrupted run; an assistant chain runs in order; a finished run is refused without
--resume; the CLI runs and validates staged recipes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from int_helpers import fast_overrides, tiny_bert
from safetensors.torch import load_file

from attnkd.cli import main
from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.errors import AttnkdError
from attnkd.stages import MANIFEST, run_recipe, stage_plan
from attnkd.stages import kinds as stage_kinds
from attnkd.tasks.sentence import GroupedBatches

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SWITCH = ("stages=[{name: general, data: {train_sources: [stsb:train]}}, "
          "{name: task, teacher: {name: TEACHER2}, data: {train_sources: [sst2:train]}, "
          "student: {freeze: [embeddings, encoder.layer.0]}}]")  # fmt: skip


@pytest.fixture(scope="module")
def teacher2_dir(tmp_path_factory, tokenizer) -> Path:
    """A second tiny teacher (other weights, same shape and tokenizer)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-bert-2"
    tiny_bert(seed=5).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def make(tmp_path_factory, teacher_dir, data_dir, teacher2_dir):
    out = tmp_path_factory.mktemp("runs")
    base = fast_overrides(teacher_dir, data_dir, out)

    def cfg(*extra: str):
        extra = tuple(e.replace("TEACHER2", str(teacher2_dir)) for e in extra)
        return apply_overrides(default_recipe(), [*base, *extra])

    return cfg


@pytest.fixture(scope="module")
def switched(make):
    """One uninterrupted two-stage run 'full': (config, results, run folder)."""
    cfg = make("name=full", SWITCH)
    results = run_recipe(cfg, progress=False)
    return cfg, results, Path(cfg.output_dir) / cfg.name


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_stage_boundaries_switch_teacher_data_and_frozen_parts(switched, teacher_dir, teacher2_dir):
    cfg, results, run = switched
    general, task = (s["results"] for s in results["stages"])
    assert general["teacher"]["name"] == str(teacher_dir)
    assert task["teacher"]["name"] == str(teacher2_dir)
    assert general["teacher"]["spearman"] != task["teacher"]["spearman"]  # another model scored
    # data: STS-B train sentences (less held-out ones) vs the 30 SST-2 reviews (less repeats)
    t_info, g_info = task["train"], general["train"]
    assert t_info["corpus_sentences"] + t_info["duplicates_removed"] == 30
    assert t_info["held_out_removed"] == 0 and g_info["held_out_removed"] > 0
    assert g_info["corpus_sentences"] + g_info["duplicates_removed"] != 30
    first = _weights(run / "stages" / "01-general" / "student")
    second = _weights(run / "stages" / "02-task" / "student")
    cut = _weights(teacher_dir)
    frozen = [k for k in second if k.startswith(("embeddings.", "encoder.layer.0."))]
    trained = [k for k in second if k.startswith("encoder.layer.1.")]
    assert frozen and trained
    for k in frozen:  # frozen in stage 2: exactly stage 1's export (so it carried over) ...
        assert torch.equal(second[k], first[k]), k
    # ... which stage 1 had trained away from the teacher's weights (nothing frozen there)
    assert not torch.equal(first["embeddings.word_embeddings.weight"],
                           cut["embeddings.word_embeddings.weight"])  # fmt: skip
    assert any(not torch.equal(second[k], first[k]) for k in trained)
    # the run's final export is the last stage's student, and results.json says so
    final = _weights(run / "student")
    assert final.keys() == second.keys() and all(torch.equal(final[k], second[k]) for k in final)
    assert results["final_stage"] == "task" and results["student"] == task["student"]
    assert results["train"]["steps"] == 12 and results["train"]["stages"] == 2
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))
    manifest = json.loads((run / MANIFEST).read_text())
    assert [(s["folder"], s["done"]) for s in manifest["stages"]] == [
        ("01-general", True), ("02-task", True)]  # fmt: skip


def test_each_stage_is_a_normal_run_folder(switched):
    _, _, run = switched
    for folder in ("01-general", "02-task"):
        stage = run / "stages" / folder
        for name in ("config.yaml", "metrics.jsonl", "results.json", "student", "checkpoints"):
            assert (stage / name).exists(), (folder, name)


def test_a_finished_staged_run_is_refused_without_resume(switched):
    cfg, _, run = switched
    before = (run / "results.json").read_text()
    with pytest.raises(AttnkdError, match="already holds stages: pass --resume"):
        run_recipe(cfg, progress=False)
    assert (run / "results.json").read_text() == before


def test_resume_skips_finished_stages(switched, monkeypatch, caplog):
    cfg, results, _ = switched

    def no_run(*args):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setitem(stage_kinds.KINDS._items, "distill",
                        stage_kinds.StageKind("distill", no_run, ""))  # fmt: skip
    assert run_recipe(cfg, progress=False, resume=True) == results
    changed = apply_overrides(cfg, ["stages.0.train.lr=0.5"])
    with caplog.at_level("WARNING", logger="attnkd"):
        assert run_recipe(changed, progress=False, resume=True)["stages"] == results["stages"]
    assert "stage 'general' finished with other settings" in caplog.text
    assert "stage 'task'" not in caplog.text


def test_resume_inside_stage_two_equals_the_uninterrupted_run(switched, make, monkeypatch):
    _, _, full = switched
    cfg = make("name=cut", SWITCH)
    original = GroupedBatches.batch_at
    calls = []

    def interrupt_in_stage_two(self, epoch, index):
        calls.append((epoch, index))
        if len(calls) == 6 + 4:  # stage 1's 6 steps, then stage 2's 4th batch
            raise KeyboardInterrupt
        return original(self, epoch, index)

    monkeypatch.setattr(GroupedBatches, "batch_at", interrupt_in_stage_two)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, progress=False)
    run = Path(cfg.output_dir) / cfg.name
    manifest = json.loads((run / MANIFEST).read_text())
    assert [s["done"] for s in manifest["stages"]] == [True, False]
    state = json.loads((run / "stages/02-task/checkpoints/last/state.json").read_text())
    assert state["state"]["step"] == 3 and not (run / "results.json").exists()
    resumed = []

    def record(self, epoch, index):
        resumed.append((epoch, index))
        return original(self, epoch, index)

    monkeypatch.setattr(GroupedBatches, "batch_at", record)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "changed settings" warning
        results = run_recipe(cfg, progress=False, resume=True)
    assert resumed == [(0, 3), (0, 4), (0, 5)]  # stage 1 skipped; stage 2 from step 4 only
    assert results["stages"][1]["results"]["train"]["resumed_from"] == "step-00000003"
    for sub in ("student", "stages/01-general/student", "stages/02-task/checkpoints/last"):
        a, b = _weights(full / sub), _weights(run / sub)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (sub, key)


def test_assistant_chain_runs_teacher_then_assistant_then_student(make, teacher_dir, monkeypatch):
    cfg = make("name=chain", "student.layers=[0, 2]", "chain={assistant: {layers: 3}}",
               "train.max_steps=0")  # the student stage exports its cut as built  # fmt: skip
    cfg = apply_overrides(cfg, ["chain.assistant_train={max_steps: 6}"])
    order = []
    real = stage_kinds.KINDS.get("distill")

    def spy(stage_cfg, resume, progress, overwrite):
        order.append((stage_cfg.name, stage_cfg.teacher.name))
        return real.run(stage_cfg, resume, progress, overwrite)

    monkeypatch.setitem(stage_kinds.KINDS._items, "distill",
                        stage_kinds.StageKind("distill", spy, ""))  # fmt: skip
    results = run_recipe(cfg, progress=False)
    run = Path(cfg.output_dir) / cfg.name
    assistant_dir = run / "stages" / "01-assistant" / "student"
    assert order == [("01-assistant", str(teacher_dir)), ("02-student", str(assistant_dir))]
    a_res, s_res = (s["results"] for s in results["stages"])
    assert a_res["student"]["layers"] == 3 and s_res["student"]["layers"] == 2
    assert a_res["train"]["steps"] == 6 and s_res["train"]["steps"] == 0
    assert s_res["teacher"]["name"] == str(assistant_dir)
    # the student is cut from the trained assistant (layers {0, 2} of its [0, 2, 3]), not from
    # the teacher: its second layer is the assistant's third, which differs from teacher layer 3
    assistant, student, teacher = (
        _weights(assistant_dir),
        _weights(run / "student"),
        _weights(teacher_dir),
    )
    key = "encoder.layer.{}.attention.self.query.weight"
    assert torch.equal(student[key.format(1)], assistant[key.format(2)])
    assert not torch.equal(assistant[key.format(2)], teacher[key.format(3)])
    assert stage_plan(cfg)[0].cfg.student.layer_rule == "even:3"


def test_cli_validates_and_runs_a_staged_recipe(make, base_overrides, tmp_path, capsys,
                                                teacher2_dir):  # fmt: skip
    over = [*fast_overrides(Path(base_overrides[2].split("=", 1)[1]),
                            Path(base_overrides[5].split("=", 1)[1]), tmp_path / "cli"),
            SWITCH.replace("TEACHER2", str(teacher2_dir)), "train.max_steps=2"]  # fmt: skip
    assert main(["validate", *over]) == 0
    assert "stages: 01-general (distill), 02-task (distill)" in capsys.readouterr().out
    assert main(["validate", *over, "stages.1.kind=nope"]) == 2
    assert "unknown stage kind 'nope'" in capsys.readouterr().err
    assert main(["validate", *over, "stages.1.student.freeze=[nothing]"]) == 0  # checked at run
    assert main(["distill", *over, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "stage general (distill): stsb:dev Spearman" in out and "stage task" in out
    assert main(["distill", *over, "--no-progress"]) == 2  # a finished run: --resume/--overwrite
    capsys.readouterr()
    run = tmp_path / "cli" / "tiny"
    assert main(["eval", str(run)]) == 0  # the final export against the top-level teacher
    evaluated = json.loads(capsys.readouterr().out)
    final = json.loads((run / "results.json").read_text())
    assert evaluated["student"]["spearman"] == pytest.approx(final["student"]["spearman"])
    assert main(["distill", *over, "name=f2", "stages.1.student.freeze=[nothing]",
                 "--no-progress"]) == 2  # fmt: skip
    assert "'nothing' matches no parameter" in capsys.readouterr().err
