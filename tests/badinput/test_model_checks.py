"""Model checks (issue 10, defect 4): the logits term's vocabulary check, the position limit,
freeze_embeddings on tied heads, and the memory estimate's counts against real models."""

from __future__ import annotations

import logging

import pytest
import torch
from int_helpers import bert_config, llama_config, mpnet_config

from attnkd.cli import main
from attnkd.config.schema import LossTermConfig
from attnkd.losses.terms import TermError, build_terms
from attnkd.models.adapters import geometry
from attnkd.models.load import freeze_input_embeddings
from attnkd.validate import position_limit


def test_the_logits_vocabulary_check_fires_on_geometries_from_configs():
    """It read ``vocab_size`` from the geometry, which never had one, so it could not fire."""
    teacher = geometry(llama_config(vocab_size=50))
    student = geometry(llama_config(vocab_size=60))
    assert (teacher.vocab_size, student.vocab_size) == (50, 60)
    with pytest.raises(TermError, match="teacher has 50 tokens, student 60"):
        build_terms([LossTermConfig(name="logits")], teacher, student)
    build_terms([LossTermConfig(name="logits")], teacher, geometry(llama_config(vocab_size=50)))


def test_position_limits_subtract_the_padding_offset_where_the_family_has_one():
    assert position_limit(bert_config(max_position_embeddings=128)) == 128
    assert position_limit(mpnet_config(max_position_embeddings=130, pad_token_id=1)) == 128
    assert position_limit(llama_config(max_position_embeddings=64)) == 64


def test_max_length_beyond_a_mpnet_student_is_refused(tmp_path, base_overrides, capsys):
    from int_helpers import tiny_mpnet

    folder = tmp_path / "mpnet"
    tiny_mpnet(seed=1, max_position_embeddings=102).save_pretrained(folder)  # 100 usable
    argv = ["validate", *base_overrides, f"student.init={folder}", "student.layers=null",
            "data.max_length=101", "--no-data"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'data.max_length'" in err and "100 positions" in err and "mpnet" in err


def test_freezing_a_tied_embedding_freezes_the_head_and_says_so(caplog):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(tie_word_embeddings=True))
    with caplog.at_level(logging.WARNING):
        frozen = freeze_input_embeddings(model)
    assert frozen.tied_head and not model.lm_head.weight.requires_grad
    assert "LM head is tied" in caplog.text
    untied = LlamaForCausalLM(llama_config(tie_word_embeddings=False))
    frozen = freeze_input_embeddings(untied)
    assert not frozen.tied_head and untied.lm_head.weight.requires_grad
    assert not untied.get_input_embeddings().weight.requires_grad


def test_estimate_counts_parameters_exactly_and_follows_freezing():
    from transformers import LlamaForCausalLM

    from attnkd.config.io import apply_overrides
    from attnkd.config.schema import DistillConfig
    from attnkd.estimate import estimate_memory
    from attnkd.students.build import build_student

    tc = llama_config()
    cfg = apply_overrides(DistillConfig(), [
        "task=causal_lm", "student.layers=[0, 2]", "losses=[{name: logits}]",
        "data.max_length=16", "train.batch_size=2", "train.freeze_embeddings=true",
    ])  # fmt: skip
    teacher = LlamaForCausalLM(tc)
    student, _ = build_student(teacher, [0, 2])
    est = estimate_memory(cfg, teacher_config=tc)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    assert est.parts["teacher weights"] == 4 * n_t
    assert est.parts["student weights"] == 4 * n_s
    freeze_input_embeddings(student)
    n_train = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert est.parts["student gradients"] == 4 * n_train
    assert est.parts["AdamW moments (2x)"] == 8 * n_train
    assert est.parts["captured teacher tensors"] == 2 * 16 * tc.vocab_size * 4  # the logits
    assert est.peak >= sum(est.parts[k] for k in ("teacher weights", "student weights"))
    assert est.tokens == 32 and est.peak_at


def test_validate_prints_the_estimate_and_warns_when_it_will_not_fit(
    base_overrides, monkeypatch, capsys
):
    import attnkd.estimate as estimate

    assert main(["validate", *base_overrides, "--no-data"]) == 0
    out = capsys.readouterr().out
    assert "predicted peak memory of one training step" in out and "AdamW moments" in out
    monkeypatch.setattr(estimate, "available_memory", lambda device="cpu": 1000)
    assert main(["validate", *base_overrides, "--no-data"]) == 0  # a warning, not a refusal
    captured = capsys.readouterr()
    assert "warning: predicted peak" in captured.err and "exceeds the" in captured.err
    assert "lower train.batch_size" in captured.err


def test_estimate_grows_with_tokens(base_overrides):
    from attnkd.config.io import apply_overrides
    from attnkd.config.schema import default_recipe
    from attnkd.estimate import estimate_memory

    small = estimate_memory(apply_overrides(default_recipe(), base_overrides))
    big = estimate_memory(
        apply_overrides(default_recipe(), [*base_overrides, "train.batch_size=16"])
    )
    assert big.parts["student activations"] == 4 * small.parts["student activations"]
    assert big.parts["teacher weights"] == small.parts["teacher weights"]
    assert torch.isfinite(torch.tensor(float(big.peak)))


def test_estimate_halves_a_half_precision_teacher(base_overrides):
    from attnkd.config.io import apply_overrides
    from attnkd.config.schema import default_recipe
    from attnkd.estimate import estimate_memory

    full = estimate_memory(apply_overrides(default_recipe(), base_overrides))
    half = estimate_memory(
        apply_overrides(default_recipe(), [*base_overrides, "train.teacher_dtype=bf16"])
    )
    assert 2 * half.parts["teacher weights"] == full.parts["teacher weights"]
    assert half.parts["student weights"] == full.parts["student weights"]
    assert full.device == "cpu"


def test_distill_warns_before_loading_when_the_step_will_not_fit(
    base_overrides, tmp_path, monkeypatch, caplog
):
    import attnkd.estimate as estimate

    monkeypatch.setattr(estimate, "available_memory", lambda device="cpu": 1000)
    argv = ["distill", *base_overrides, f"data.data_dir={tmp_path / 'none'}", "--no-progress"]
    with caplog.at_level(logging.WARNING, logger="attnkd"):
        assert main(argv) == 2  # the data folder is missing: validation stops it after the warning
    assert "predicted peak" in caplog.text and "exceeds the" in caplog.text
