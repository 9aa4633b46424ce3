"""Stage-1 attention transfer and ``attnkd convert`` / ``attnkd eval`` on tiny BERT and Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from int_helpers import (
    masked_ids_batch,
    save_tiny_llama_folder,
    tiny_bert,
    tiny_llama,
    write_story,
)

from attnkd.cli import main
from attnkd.convert import ConversionSpec, convert_attention, load_converted
from attnkd.convert.align import make_align_step, set_trainable
from attnkd.convert.e2e import make_e2e_step
from attnkd.convert.transfer import TeacherInputs, layer_losses, make_transfer_step
from attnkd.models.load import freeze

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


_batch = masked_ids_batch


def _peaked(model, factor: float = 6.0):
    """Sharpen the attention of a randomly initialised model (scale q and k projections)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in (".query.", ".key.", ".q_proj.", ".k_proj.")):
                p.mul_(factor)
    return model


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama])
def test_a_window_over_the_whole_input_has_zero_transfer_loss(make):
    """Identical attention -> zero output MSE, on the teacher's captured layer inputs."""
    teacher = freeze(make(seed=0))
    student = convert_attention(teacher, ConversionSpec(kind="window", window=64))
    batch = _batch(teacher.config.vocab_size)
    with torch.no_grad(), TeacherInputs(teacher, [0, 1]) as cap:
        teacher(**batch)
        convs = {m.layer_idx: m for m in student.modules() if hasattr(m, "mixer")}
        for i in (0, 1):
            hidden, pos = cap.inputs[i]
            loss = layer_losses(convs[i], hidden, pos, batch["attention_mask"].bool(), "mse")
            assert loss["mse"].item() < 1e-10


@pytest.mark.parametrize(
    "make,kind,loss",
    [(tiny_bert, "linear", "ce+mse"), (tiny_llama, "linear", "ce"), (tiny_llama, "hybrid", "mse")],
)
def test_transfer_steps_lower_the_loss_and_touch_only_the_mixers(make, kind, loss):
    teacher = freeze(_peaked(make(seed=0)))
    student = freeze(convert_attention(teacher, ConversionSpec(kind=kind, window=4, chunk=4)))
    frozen = {k: v.clone() for k, v in student.state_dict().items() if ".mixer." not in k}
    params = [p for n, p in student.named_parameters() if ".mixer." in n]
    for p in params:
        p.requires_grad_(True)
    step = make_transfer_step(teacher, student, loss)
    opt = torch.optim.Adam(params, lr=3e-2)
    batch = _batch(teacher.config.vocab_size)
    terms = []
    for _ in range(15):
        out = step(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        terms.append(out.terms)
        assert set(out.terms) == set(loss.split("+"))
    # attention CE is bounded below by the teacher's entropy (nearly log(seq) in a random tiny
    # model), so it can only fall a little; the output MSE can fall to near zero
    if "ce" in loss:
        assert terms[-1]["ce"] < terms[0]["ce"] - 1e-3, terms
    if "mse" in loss:
        assert terms[-1]["mse"] < 0.97 * terms[0]["mse"], terms
    for k, v in student.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k


def test_attnkd_convert_and_eval_on_a_tiny_encoder(base_overrides, capsys, tmp_path):
    args = [*base_overrides, "convert.kind=linear", "convert.loss=ce+mse", "train.max_steps=4"]
    assert main(["convert", *args, "--no-progress"]) == 0
    run = tmp_path / "runs" / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert results["conversion"]["kind"] == "linear" and results["train"]["steps"] == 4
    assert results["student"]["new_params"] > 0
    assert (run / "student" / "conversion.json").exists()
    model = load_converted(run / "student")
    assert sum(1 for m in model.modules() if hasattr(m, "mixer")) == 4
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["student"]["spearman"] == pytest.approx(results["student"]["spearman"], abs=1e-6)


def test_convert_config_errors_exit_2(base_overrides, capsys):
    assert main(["convert", *base_overrides, "convert.kind=hybrid", "convert.loss=ce"]) == 2
    assert "convert.loss" in capsys.readouterr().err
    assert main(["convert", *base_overrides, "convert.kind=lsh"]) == 2
    assert main(["convert", *base_overrides, "convert.kind=sparse"]) == 2  # needs loss kl
    assert "convert.loss" in capsys.readouterr().err
    assert main(["convert", *base_overrides, "convert.kind=shared", "convert.share={1: 2}",
                 "convert.stages=[e2e]"]) == 2  # fmt: skip
    assert "earlier layer" in capsys.readouterr().err
    assert main(["convert", *base_overrides, "convert.kind=hybrid", "convert.stages=[x]"]) == 2
    assert main(["convert", *base_overrides, "convert.kind=hybrid", "convert.terrace=true",
                 "convert.chunk=2"]) == 2  # fmt: skip
    assert "convert.terrace" in capsys.readouterr().err
    assert main(["convert", *base_overrides]) == 2  # no convert.kind


@pytest.mark.parametrize("terrace", [False, True])
def test_attnkd_convert_hybrid_on_a_tiny_decoder(tmp_path, capsys, terrace):
    teacher = save_tiny_llama_folder(tmp_path / "tiny-llama")
    text = write_story(tmp_path / "story.txt", seed=5, lines=200)
    args = [
        "name=tiny-lm", "task=causal_lm", f"output_dir={tmp_path / 'runs'}",
        f"teacher.name={teacher}", "student.layers=null", "losses=[]",
        f"data.train_sources=[file:{text}]",
        "data.max_length=16", "train.max_steps=4", "train.max_minutes=null",
        "train.eval_every=2", "train.batch_size=4", "train.lr=1e-2",
        "convert.kind=hybrid", "convert.window=4", "convert.layers=[1, 2]",
        f"convert.terrace={str(terrace).lower()}",
    ]  # fmt: skip
    assert main(["convert", *args, "--no-progress"]) == 0
    run = tmp_path / "runs" / "tiny-lm"
    results = json.loads((run / "results.json").read_text())
    assert results["conversion"]["layers"] == [1, 2]
    assert results["conversion"]["terrace"] is terrace
    assert results["student"]["perplexity"] > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "eval"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["student"]["perplexity"] == pytest.approx(results["student"]["perplexity"], 1e-5)
    assert Path(out["student"]["path"]).name == "student"


def test_attnkd_similarity_prints_and_writes_the_table(base_overrides, capsys, tmp_path):
    out = tmp_path / "sim.json"
    assert main(["similarity", *base_overrides, "--batches", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "JS divergence" in printed and "could reuse" in printed
    res = json.loads(out.read_text())
    assert len(res["js"]) == 4 and res["batches"] == 2


def test_a_window_conversion_is_evaluated_without_training(base_overrides, tmp_path):
    """kind 'window' has nothing to train: max_steps=0 evaluates and saves it as converted."""
    args = [*base_overrides, "convert.kind=window", "convert.window=4"]
    assert main(["convert", *args, "train.max_steps=5"]) == 2
    assert main(["convert", *args, "train.max_steps=0", "--no-progress"]) == 0
    results = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert results["train"]["steps"] == 0 and results["student"]["new_params"] == 0
    model = load_converted(tmp_path / "runs" / "tiny" / "student")
    assert all(m.mixer.window == 4 for m in model.modules() if hasattr(m, "mixer"))


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama])
@pytest.mark.parametrize("stage", ["align", "e2e"])
def test_stages_2_and_3_have_zero_loss_for_identical_attention(make, stage):
    teacher = freeze(make(seed=0))
    student = convert_attention(teacher, ConversionSpec(kind="window", window=64, layers=[0, 2]))
    build = make_align_step if stage == "align" else make_e2e_step
    out = build(teacher, student)(_batch(teacher.config.vocab_size))
    assert out.loss.item() < 1e-6  # float32 rounding (KL of two equal softmaxes)


@pytest.mark.parametrize(
    "make,spec",
    [
        (tiny_llama, ConversionSpec(kind="hybrid", window=4, chunk=4, layers=[1, 2])),
        (tiny_llama, ConversionSpec(kind="shared", share={2: 0})),
        (tiny_llama, ConversionSpec(kind="sparse", topk=4, rank=4, layers=[1])),
    ],
)
@pytest.mark.parametrize("stage", ["align", "e2e"])
def test_stages_2_and_3_lower_their_loss_and_train_only_converted_layers(make, spec, stage):
    teacher = freeze(_peaked(make(seed=0)))
    student = freeze(convert_attention(teacher, spec))
    params = set_trainable(student, "attention")
    names = {n for n, p in student.named_parameters() if p.requires_grad}
    assert all(".mixer." in n or "attention" in n or "attn" in n for n in names), names
    before = {k: v.clone() for k, v in student.state_dict().items()}
    step = (make_align_step if stage == "align" else make_e2e_step)(teacher, student)
    opt = torch.optim.Adam(params, lr=1e-3)
    batch = _batch(teacher.config.vocab_size)
    losses = []
    for _ in range(8):
        out = step(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    after = student.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(".mixer." in k or "attention" in k or "attn" in k for k in changed)


def test_sparse_transfer_trains_the_estimator_on_attention_kl():
    teacher = freeze(_peaked(tiny_llama(seed=0)))
    student = freeze(convert_attention(teacher, ConversionSpec(kind="sparse", topk=3, rank=2)))
    params = [p for n, p in student.named_parameters() if ".mixer." in n]
    for p in params:
        p.requires_grad_(True)
    step = make_transfer_step(teacher, student, "kl")
    opt = torch.optim.Adam(params, lr=3e-2)
    batch = _batch(teacher.config.vocab_size)
    kls = []
    for _ in range(10):
        out = step(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        kls.append(out.terms["kl"])
    assert kls[-1] < kls[0] - 1e-3, kls


def test_attnkd_convert_runs_a_list_of_stages(base_overrides, tmp_path):
    args = [*base_overrides, "convert.kind=shared", "convert.share={2: 1, 3: 1}",
            "convert.stages=[align, e2e]", "train.max_steps=2"]  # fmt: skip
    assert main(["convert", *args, "--no-progress"]) == 0
    run = tmp_path / "runs" / "tiny"
    results = json.loads((run / "results.json").read_text())
    assert [s["stage"] for s in results["train"]["stages"]] == ["align", "e2e"]
    assert results["train"]["steps"] == 4
    assert (run / "stage1-align" / "metrics.jsonl").exists()
    assert (run / "stage2-e2e" / "metrics.jsonl").exists()
    model = load_converted(run / "student")
    kinds = sorted(m.mixer.kind for m in model.modules() if hasattr(m, "mixer"))
    assert kinds == ["shared", "shared", "source"]


def test_conversion_as_stage_kinds_of_a_staged_run(base_overrides, tmp_path):
    """``kind: convert`` stages: the second starts from the first's converted student."""
    stages = ("stages=[{name: transfer, kind: convert, convert: {stages: [transfer]}}, "
              "{name: e2e, kind: convert, convert: {stages: [e2e]}}]")  # fmt: skip
    args = [*base_overrides, "convert.kind=hybrid", "convert.window=4", "train.max_steps=2",
            "student.layers=null", stages]  # fmt: skip
    assert main(["distill", *args, "--no-progress"]) == 0
    run = tmp_path / "runs" / "tiny"
    first = load_converted(run / "stages" / "01-transfer" / "student")
    final = load_converted(run / "student")
    results = json.loads((run / "results.json").read_text())
    assert [s["stage"] for s in results["stages"]] == ["transfer", "e2e"]
    # stage 2 trained the attention projections of the converted student of stage 1
    a, b = first.state_dict(), final.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all("attention" in k for k in changed), changed
    maps = [k for k in a if ".mixer." in k]
    assert maps and all(torch.equal(a[k], b[k]) or k in changed for k in maps)
