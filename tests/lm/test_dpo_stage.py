"""The DPO preference stage on tiny Llama models: pairs ranked by the teacher, training lowers
the DPO loss, the report's figures, ``attnkd dpo`` on a finished run and its bad input."""

from __future__ import annotations

import json

import pytest
import torch
from lm_fixtures import make_tokenizer, run_overrides, tiny_llama

from attnkd.cli import main
from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.lm.dpo_stage import build_pairs, run_dpo_stage, win_rate
from attnkd.lm.sampling import continuation_logprobs

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DPO = ["dpo.prompts=8", "dpo.samples_per_prompt=3", "dpo.prompt_tokens=4", "dpo.new_tokens=5",
       "dpo.steps=6", "dpo.batch_size=4", "dpo.eval_prompts=6", "dpo.eval_blocks=4"]  # fmt: skip


def _cfg(lm_root, *extra):
    return apply_overrides(default_recipe(), [*run_overrides(*lm_root), *DPO, *extra])


def _models():
    vocab = len(make_tokenizer())
    return tiny_llama(vocab, seed=0), tiny_llama(vocab, seed=4, layers=2)


def test_pairs_are_ranked_by_the_teacher(lm_root):
    teacher, student = _models()
    cfg = _cfg(lm_root)
    prompts = torch.randint(3, 20, (8, 4), generator=torch.Generator().manual_seed(0))
    pairs = build_pairs(student, teacher, prompts, cfg, seed=0)
    assert 1 <= len(pairs) <= 8 and pairs.candidates == 8
    assert pairs.chosen.shape == pairs.rejected.shape == (len(pairs), 5)
    tc = continuation_logprobs(teacher, pairs.prompts, pairs.chosen).sum(-1)
    tr = continuation_logprobs(teacher, pairs.prompts, pairs.rejected).sum(-1)
    torch.testing.assert_close(tc, pairs.teacher_chosen)
    torch.testing.assert_close(tr, pairs.teacher_rejected)
    assert (tc > tr).all()


def test_win_rate_is_symmetric_and_half_on_ties():
    teacher, _ = _models()
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, 20, (6, 3), generator=g)
    a, b = torch.randint(3, 20, (6, 4), generator=g), torch.randint(3, 20, (6, 4), generator=g)
    ab, ba = win_rate(teacher, prompts, a, b), win_rate(teacher, prompts, b, a)
    assert ab["win_rate"] + ba["win_rate"] == pytest.approx(1.0)
    assert win_rate(teacher, prompts, a, a)["win_rate"] == 0.5
    greedy = teacher.generate(prompts, max_new_tokens=4, do_sample=False)[:, 3:]
    assert win_rate(teacher, prompts, greedy, a)["win_rate"] > 0.5


@pytest.mark.parametrize("reference", ["teacher", "student"])
def test_stage_lowers_the_dpo_loss_and_reports(tmp_path, lm_root, reference):
    teacher, student = _models()
    start = {k: v.clone() for k, v in student.state_dict().items()}
    cfg = _cfg(lm_root, "dpo.lr=1e-2", "dpo.steps=8", f"dpo.reference={reference}",
               "dpo.batch_size=8")  # fmt: skip
    res = run_dpo_stage(cfg, student, teacher, tmp_path / "stage", tokenizer=make_tokenizer())
    rows = [json.loads(x) for x in (tmp_path / "stage" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["loss"] < rows[0]["loss"]
    if reference == "student":  # the policy starts at the reference: margin 0, loss log 2
        assert rows[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert res["reference"] == reference and res["pairs"] >= 1
    assert 0.0 <= res["win_rate"] <= 1.0 and res["judged_prompts"] == 6
    assert res["before"]["perplexity"] > 1 and res["after"]["perplexity"] > 1
    assert res["before"]["perplexity"] != res["after"]["perplexity"]
    assert any(not torch.equal(start[k], v) for k, v in student.state_dict().items())
    assert (tmp_path / "stage" / "student" / "config.json").exists()
    saved = json.loads((tmp_path / "stage" / "results.json").read_text())
    assert saved["win_rate"] == res["win_rate"]


def test_attnkd_dpo_bad_input_exits_2(lm_root, capsys, tmp_path):
    """One line naming the key or the folder, before any model loads or anything trains."""
    runs = lm_root[2]
    assert main(["dpo", *run_overrides(*lm_root), "name=bad", "dpo.reference=oracle"]) == 2
    assert "dpo.reference" in capsys.readouterr().err
    assert main(["dpo", *run_overrides(*lm_root), "name=bad", "dpo.samples_per_prompt=1"]) == 2
    assert "dpo.samples_per_prompt" in capsys.readouterr().err
    assert main(["dpo", str(tmp_path)]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert not (runs / "bad").exists()


@pytest.mark.slow
def test_attnkd_dpo_on_a_finished_run(lm_root, capsys, tmp_path):
    teacher, text, runs = lm_root
    assert main(["distill", *run_overrides(*lm_root), "name=mimic", "train.max_steps=2",
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "dpo.json"
    assert main(["dpo", str(runs / "mimic"), *DPO, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "win rate" in printed and "perplexity" in printed
    res = json.loads(out.read_text())
    assert res["run_dir"] == str(runs / "mimic" / "dpo") and res["steps"] == 6
    assert (runs / "mimic" / "dpo" / "student" / "config.json").exists()
    assert main(["dpo", str(runs / "mimic"), "dpo.reference=oracle"]) == 2
    assert "dpo.reference" in capsys.readouterr().err
    # a recipe with a teacher-cut student: mimic distillation first, then the stage
    code = main(["dpo", *run_overrides(*lm_root), "name=pipeline", "train.max_steps=2", *DPO])
    assert code == 0
    assert json.loads((runs / "pipeline" / "results.json").read_text())["train"]["steps"] == 2
    assert json.loads((runs / "pipeline" / "dpo" / "results.json").read_text())["steps"] == 6


def test_stage_kind_runner(lm_root, tmp_path):
    from lm_fixtures import write_model

    from attnkd.lm.dpo_stage import dpo_stage_kind

    student = write_model(tmp_path / "student", seed=4)
    cfg = _cfg(lm_root, f"student.init={student}", f"output_dir={tmp_path / 'out'}",
               "name=stage-2")  # fmt: skip
    res = dpo_stage_kind(cfg, resume=False, progress=False, overwrite=False)
    folder = tmp_path / "out" / "stage-2"
    assert (folder / "config.yaml").exists() and (folder / "student" / "config.json").exists()
    assert dpo_stage_kind(cfg, resume=True, progress=False, overwrite=False) == json.loads(
        (folder / "results.json").read_text())  # fmt: skip
    assert res["student_from"] == str(student)


def test_dpo_as_a_stage_after_mimic_distillation(lm_root, tmp_path, capsys):
    """A staged recipe: stage 1 distils (kind distill), stage 2 is kind 'dpo' on its student."""
    teacher, text, _ = lm_root
    recipe = tmp_path / "staged.yaml"
    recipe.write_text(
        f"name: staged\ntask: causal_lm\noutput_dir: {tmp_path / 'runs'}\n"
        f"teacher: {{name: {teacher}}}\nstudent: {{layers: [0, 2]}}\n"
        "losses: [{name: logits, kind: fkl}]\n"
        f"data: {{train_sources: ['file:{text}'], max_length: 16, val_fraction: 0.1, "
        "eval_fraction: 0.1}\n"
        "train: {max_steps: 2, max_minutes: null, eval_every: 2, save_every: 2, batch_size: 4, "
        "lr: 0.003, warmup_ratio: 0.0}\n"
        "dpo: {prompts: 8, samples_per_prompt: 3, prompt_tokens: 4, new_tokens: 5, steps: 3, "
        "batch_size: 4, eval_prompts: 6, eval_blocks: 4}\n"
        "stages:\n  - {name: mimic}\n  - {name: prefer, kind: dpo, dpo: {steps: 2}}\n",
        encoding="utf-8",
    )
    assert main(["distill", str(recipe), "--no-progress"]) == 0
    run = tmp_path / "runs" / "staged"
    stage = json.loads((run / "stages" / "02-prefer" / "results.json").read_text())
    assert stage["stage"] == "dpo" and stage["steps"] == 2 and 0 <= stage["win_rate"] <= 1
    from attnkd.config.io import load_config

    ran = load_config(run / "stages" / "02-prefer" / "config.yaml")
    assert ran.student.init == str(run / "stages" / "01-mimic" / "student") and ran.dpo.steps == 2
    final = json.loads((run / "results.json").read_text())
    assert final["final_stage"] == "prefer" and (run / "student" / "config.json").exists()
