"""Conversion stage 3 through LoRA adapters (``convert.lora``): what trains, merging, saving,
configuration errors and ``attnkd convert`` end to end with resume, on a tiny Llama."""

from __future__ import annotations

import json

import pytest
import torch
from int_helpers import (
    masked_ids_batch,
    save_tiny_llama_folder,
    tiny_bert,
    tiny_llama,
    write_story,
)
from safetensors.torch import load_file

import attnkd.convert.run as convert_run
from attnkd.cli import main
from attnkd.convert import ConversionSpec, convert_attention, load_converted, save_converted
from attnkd.convert.e2e import make_e2e_step
from attnkd.convert.lora import add_lora, lora_parameters, merge_lora
from attnkd.convert.swap import mixer_parameters
from attnkd.errors import ConfigError
from attnkd.models.load import freeze
from tiny_lms import single_thread

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
pytest.importorskip("peft")  # the lm extra
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


_one_thread = pytest.fixture(autouse=True)(single_thread)


_batch = masked_ids_batch


def _pair(layers=(1, 2)):
    teacher = freeze(tiny_llama())
    spec = ConversionSpec(kind="hybrid", window=4, layers=list(layers))
    return teacher, freeze(convert_attention(teacher, spec))


def _train(teacher, student, setup, steps: int = 4, lr: float = 1e-2):
    step = make_e2e_step(teacher, student)
    opt = torch.optim.Adam(setup.trainable, lr=lr)
    losses = []
    for i in range(steps):
        out = step(_batch(teacher.config.vocab_size, seed=i % 2))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


def test_only_adapters_and_new_parameters_train_and_inherited_weights_stay():
    teacher, student = _pair()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    setup = add_lora(student, rank=4, alpha=8, dropout=0.0, targets=TARGETS)
    # adapters on q/k/v/o of the converted layers 1 and 2 only (never layer 0, never a mixer)
    assert len(setup.modules) == 8
    assert all(".layers.1." in n or ".layers.2." in n for n in setup.modules)
    grad = {n for n, p in student.named_parameters() if p.requires_grad}
    ids = {id(p) for p in mixer_parameters(student)}
    expected = {n for n, p in student.named_parameters() if id(p) in ids}
    expected |= {n for n in dict(student.named_parameters()) if ".lora_" in n}
    assert grad == expected and any(".lora_A." in n for n in grad) and ids
    assert {id(p) for p in setup.trainable} == {
        id(p) for p in student.parameters() if p.requires_grad
    }
    losses = _train(teacher, student, setup)
    assert all(torch.isfinite(torch.tensor(losses)))
    after = student.state_dict()
    for k, v in before.items():  # PEFT renames a wrapped linear's weight to base_layer.weight
        name = k
        if k not in after:
            head, leaf = k.rsplit(".", 1)
            name = f"{head}.base_layer.{leaf}"
        if any(n in k for n in expected):
            continue
        assert torch.equal(after[name], v), k
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in student.named_parameters()
               if ".lora_B." in n)  # fmt: skip
    moved = [not torch.equal(after[n], before[n]) for n in before if n in expected]
    assert any(moved)  # the feature maps trained too


def test_merged_model_gives_the_adapted_outputs_and_saves_without_peft(tmp_path):
    teacher, student = _pair()
    setup = add_lora(student, rank=4, alpha=8, dropout=0.0, targets=TARGETS)
    _train(teacher, student, setup, steps=3)
    batch = _batch(teacher.config.vocab_size, seed=7)
    with torch.no_grad():
        wrapped = setup.peft_model(**batch).logits
        lora_out = student(**batch).logits
    merged = merge_lora(setup)
    assert merged is student
    assert not lora_parameters(merged)
    assert not any("lora" in n or "base_layer" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        plain = merged(**batch).logits
    torch.testing.assert_close(wrapped, lora_out, atol=0, rtol=0)
    torch.testing.assert_close(plain, wrapped, atol=1e-5, rtol=0)
    # the adapters changed the model: merging is not a no-op
    with torch.no_grad():
        assert (plain - _pair()[1](**batch).logits).abs().max() > 1e-4
    save_converted(merged, tmp_path / "student")
    keys = load_file(str(tmp_path / "student" / "model.safetensors")).keys()
    assert not any("lora" in k or "base_layer" in k for k in keys)
    loaded = load_converted(tmp_path / "student")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, plain, atol=1e-6, rtol=0)


def test_a_target_that_names_nothing_is_refused_with_the_valid_names():
    _, student = _pair()
    with pytest.raises(ConfigError, match=r"convert\.lora\.targets.*'qkv'.*o_proj"):
        add_lora(student, rank=4, alpha=8, dropout=0.0, targets=["q_proj", "qkv"])
    assert not lora_parameters(student)  # nothing injected
    with pytest.raises(ConfigError, match=r"convert\.lora\.targets"):  # mixers are never targets
        add_lora(student, rank=4, alpha=8, dropout=0.0, targets=["mixer.feature_map.layer"])


# ------------------------------------------------------------------------- attnkd convert


@pytest.fixture
def lm_args(tmp_path):
    teacher = save_tiny_llama_folder(tmp_path / "tiny-llama")
    text = write_story(tmp_path / "story.txt", seed=5, lines=200)
    return [
        "task=causal_lm", f"output_dir={tmp_path / 'runs'}",
        f"teacher.name={teacher}", "student.layers=null", "losses=[]",
        f"data.train_sources=[file:{text}]",
        "data.max_length=16", "train.max_steps=4", "train.max_minutes=null",
        "train.eval_every=2", "train.save_every=1", "train.batch_size=4", "train.lr=1e-2",
        "convert.kind=hybrid", "convert.window=4", "convert.layers=[1, 2]",
        "convert.stages=[transfer, e2e]", "convert.lora={rank: 4, alpha: 8}",
    ]  # fmt: skip


def test_convert_config_errors_name_the_lora_key(lm_args, capsys):
    bad = {
        "convert.lora.rank=-1": "convert.lora.rank",
        "convert.lora.dropout=1.5": "convert.lora.dropout",
        "convert.lora.targets=[]": "convert.lora.targets",
        "convert.lora.targets=[q_proj, qkv_proj]": "convert.lora.targets",
    }
    for override, key in bad.items():
        assert main(["convert", "name=bad", *lm_args, override, "--no-progress"]) == 2, override
        err = capsys.readouterr().err
        assert key in err and "Traceback" not in err, (override, err)
    assert "valid names" in _last_error(lm_args, capsys)


def _last_error(lm_args, capsys) -> str:
    main(["convert", "name=bad", *lm_args, "convert.lora.targets=[qkv_proj]", "--no-progress"])
    return capsys.readouterr().err


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_attnkd_convert_transfer_then_lora_e2e_and_resume(lm_args, tmp_path, capsys, monkeypatch):
    assert main(["convert", "name=full", *lm_args, "--no-progress"]) == 0
    run = tmp_path / "runs" / "full"
    results = json.loads((run / "results.json").read_text())
    stages = results["train"]["stages"]
    assert [s["stage"] for s in stages] == ["transfer", "e2e"]
    assert stages[1]["lora"]["modules"] == 8 and stages[1]["lora"]["trainable_params"] > 0
    # the checkpoint of the e2e stage holds the adapters; the saved student does not
    ckpt = _weights(run / "stage2-e2e" / "checkpoints" / "last")
    assert any(".lora_A." in k for k in ckpt)
    saved = _weights(run / "student")
    assert not any("lora" in k or "base_layer" in k for k in saved)
    # inherited weights outside the adapted linears are the teacher's, bit for bit
    teacher = _weights(tmp_path / "tiny-llama")
    for k in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert torch.equal(saved[k], teacher[k]), k
    assert not torch.equal(saved["model.layers.1.self_attn.q_proj.weight"],
                           teacher["model.layers.1.self_attn.q_proj.weight"])  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "eval"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["student"]["perplexity"] == pytest.approx(results["student"]["perplexity"], 1e-5)

    # interrupted in the e2e stage after 2 steps, then resumed: the same student as above
    original, calls = convert_run.make_e2e_step, []

    def interrupting(teacher, student):
        step = original(teacher, student)

        def wrapped(batch):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return step(batch)

        return wrapped

    monkeypatch.setattr(convert_run, "make_e2e_step", interrupting)
    assert main(["convert", "name=cut", *lm_args, "--no-progress"]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(convert_run, "make_e2e_step", original)
    cut = tmp_path / "runs" / "cut"
    state = json.loads((cut / "stage2-e2e" / "checkpoints" / "last" / "state.json").read_text())
    assert state["state"]["step"] == 2 and not (cut / "results.json").exists()
    assert main(["convert", "name=cut", *lm_args, "--resume", "--no-progress"]) == 0
    resumed = _weights(cut / "student")
    assert resumed.keys() == saved.keys()
    for k in saved:
        assert torch.equal(resumed[k], saved[k]), k


def test_lora_on_a_converted_bert_merges_to_the_adapted_outputs():
    teacher = freeze(tiny_bert())
    student = freeze(convert_attention(teacher, ConversionSpec(kind="linear", layers=[1])))
    with pytest.raises(ConfigError, match=r"valid names: \['dense', 'key', 'query', 'value'\]"):
        add_lora(student, rank=2, alpha=4, dropout=0.0, targets=["q_proj"])
    setup = add_lora(student, rank=2, alpha=4, dropout=0.0,
                     targets=["query", "value", "attention.output.dense"])  # fmt: skip
    assert len(setup.modules) == 3 and all(".layer.1." in n for n in setup.modules)
    _train(teacher, student, setup, steps=2)
    batch = _batch(teacher.config.vocab_size)
    with torch.no_grad():
        adapted = student(**batch).last_hidden_state
        merged = merge_lora(setup)(**batch).last_hidden_state
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_lora_dropout_follows_training_mode_while_the_model_stays_in_eval():
    teacher, student = _pair()
    add_lora(student, rank=4, alpha=8, dropout=0.5, targets=["v_proj"])
    module = convert_run.StudentModule(student)
    batch = _batch(teacher.config.vocab_size)
    with torch.no_grad():
        for p in lora_parameters(student):  # non-zero B so the adapters' dropout shows
            p.fill_(0.05)
        module.train()
        assert not student.training
        a, b = student(**batch).logits, student(**batch).logits
        assert not torch.equal(a, b)
        module.eval()
        c, d = student(**batch).logits, student(**batch).logits
        assert torch.equal(c, d)


def test_the_recipe_comment_enables_lora_stage_3(tmp_path):
    from pathlib import Path

    from attnkd.config.io import load_config

    recipe = Path(__file__).parents[2] / "recipes" / "smollm2-hybrid.yaml"
    text = recipe.read_text(encoding="utf-8")
    lines = [ln.replace("  # ", "  ", 1) for ln in text.split("\n")]
    (tmp_path / "r.yaml").write_text("\n".join(lines), encoding="utf-8")
    cfg = load_config(tmp_path / "r.yaml")
    assert cfg.convert.stages == ["transfer", "e2e"] and cfg.convert.lora.rank == 8
    assert cfg.convert.lora.targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert load_config(recipe).convert.lora.rank == 0


def test_lora_set_once_at_the_top_of_a_staged_run(base_overrides, tmp_path):
    """The transfer stage ignores ``convert.lora``; the e2e stage trains and merges adapters."""
    stages = ("stages=[{name: transfer, kind: convert, convert: {stages: [transfer]}}, "
              "{name: e2e, kind: convert, convert: {stages: [e2e]}}]")  # fmt: skip
    lora = "convert.lora={rank: 2, targets: [query, value]}"
    args = [*base_overrides, "convert.kind=hybrid", "convert.window=4", "train.max_steps=2",
            "student.layers=null", lora, stages]  # fmt: skip
    assert main(["distill", *args, "--no-progress"]) == 0
    run = tmp_path / "runs" / "tiny"
    first = _weights(run / "stages" / "01-transfer" / "student")
    final = _weights(run / "student")
    assert final.keys() == first.keys()
    changed = {k for k in first if not torch.equal(first[k], final[k])}
    # merged adapters moved query/value weights; the rest changed only in the mixers
    assert any(".query.weight" in k for k in changed) and any(".value.weight" in k for k in changed)
    assert all(k.endswith((".query.weight", ".value.weight")) or ".mixer." in k
               for k in changed), changed  # fmt: skip


def test_lora_on_mla_layers_leaves_the_latent_projections_to_full_training():
    from attnkd.convert.mla import convert_to_mla

    teacher = freeze(tiny_llama())
    student = freeze(convert_to_mla(teacher, rank=8, layers=[1]))
    with pytest.raises(ConfigError, match=r"valid names: \['down_proj', 'gate_proj', 'o_proj', "):
        add_lora(student, rank=2, alpha=4, dropout=0.0, targets=["kv_up"])
    setup = add_lora(student, rank=2, alpha=4, dropout=0.0, targets=["q_proj", "o_proj"])
    assert sorted(n.rsplit(".", 1)[-1] for n in setup.modules) == ["o_proj", "q_proj"]
    grad = {n for n, p in student.named_parameters() if p.requires_grad}
    assert any(".kv_down." in n for n in grad) and any(".kv_up." in n for n in grad)
    assert all(".lora_" in n or ".kv_down." in n or ".kv_up." in n for n in grad), grad
