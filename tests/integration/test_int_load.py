"""Loading teachers from local folders, export, encoding, and ``attnkd eval`` on a folder."""

from __future__ import annotations

import json

import pytest
import torch
from int_helpers import HEADS, LAYERS, VOCAB, WIDTH, tiny_bert

from attnkd.cli import main
from attnkd.errors import AttnkdError
from attnkd.eval.encode import encode, mean_pool
from attnkd.export import export_student
from attnkd.models.adapters import AttentionGeometry, attn_implementation_for
from attnkd.models.load import count_parameters, freeze, load_config, load_encoder


def test_load_local_bert_folder(teacher_dir):
    loaded = load_encoder(str(teacher_dir))
    assert loaded.source == "local" and loaded.path == str(teacher_dir.resolve())
    geometry = AttentionGeometry(LAYERS, WIDTH, HEADS, HEADS, WIDTH // HEADS, vocab_size=len(VOCAB))
    assert loaded.geometry == geometry
    assert loaded.model.config._attn_implementation == "sdpa"
    assert getattr(loaded.model, "pooler", None) is None
    assert loaded.tokenizer.pad_token_id == 0
    assert load_config(str(teacher_dir)).model_type == "bert"
    reference = tiny_bert(seed=0)  # the weights the folder was saved from
    assert count_parameters(loaded.model) == count_parameters(reference)
    for (name, a), b in zip(loaded.model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_encoder(str(teacher_dir), "eager").model.config._attn_implementation == "eager"


def test_load_mpnet_falls_back_to_eager_without_a_pooler(mpnet_dir):
    loaded = load_encoder(str(mpnet_dir), tokenizer=False)
    assert loaded.tokenizer is None
    assert loaded.model.config._attn_implementation == "eager"
    assert getattr(loaded.model, "pooler", None) is None


def test_attn_implementation_for():
    from transformers import BertModel, MPNetModel

    assert attn_implementation_for(BertModel, "sdpa") == "sdpa"
    assert attn_implementation_for(BertModel, "eager") == "eager"
    assert attn_implementation_for(MPNetModel, "sdpa") == "eager"


def test_load_errors_are_attnkd_errors(tmp_path, base_overrides, capsys):
    with pytest.raises(AttnkdError, match="does not exist"):
        load_encoder(str(tmp_path / "missing" / "model"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AttnkdError, match="cannot load"):
        load_encoder(str(empty))
    with pytest.raises(AttnkdError, match="cannot load the config"):
        load_config(str(empty))
    assert main(["validate", *base_overrides, f"teacher.name={empty}"]) == 2
    assert "config error at 'teacher.name'" in capsys.readouterr().err
    from transformers import OPTConfig  # a family without an adapter

    opt = tmp_path / "opt"
    OPTConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=2, ffn_dim=32
    ).save_pretrained(opt)
    with pytest.raises(AttnkdError, match="no adapter for model_type 'opt'"):
        load_encoder(str(opt))
    assert main(["validate", *base_overrides, f"teacher.name={opt}"]) == 2
    err = capsys.readouterr().err
    assert "config error at 'teacher.name'" in err and "'opt'" in err


def test_freeze():
    model = freeze(tiny_bert().train())
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert count_parameters(model, trainable_only=True) == 0


def test_mean_pool_and_encode_agree_with_a_naive_loop(teacher_dir, tokenizer):
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    want = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    torch.testing.assert_close(mean_pool(hidden, mask), want)
    model = load_encoder(str(teacher_dir)).model
    sentences = ["a dog .", "the big red horse is eating in the field .", "a cat"]
    got = encode(model, tokenizer, sentences, batch_size=2)
    for i, s in enumerate(sentences):  # one sentence at a time: no padding at all
        enc = tokenizer([s], return_tensors="pt")
        with torch.no_grad():
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
        torch.testing.assert_close(got[i], h[0].mean(0), atol=1e-5, rtol=1e-5)
    normed = encode(model, tokenizer, sentences, normalize=True)
    torch.testing.assert_close(normed.norm(dim=-1), torch.ones(3))


def test_export_is_atomic_and_replaces_an_old_folder(tmp_path, tokenizer):
    out = tmp_path / "student"
    export_student(tiny_bert(seed=5), tokenizer, out, max_seq_length=32)
    first = (out / "model.safetensors").read_bytes()
    export_student(tiny_bert(seed=6), tokenizer, out, max_seq_length=32)
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temp or old folders
    sbert = json.loads((out / "sentence_bert_config.json").read_text())
    assert sbert["max_seq_length"] == 32
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]


def test_eval_of_a_plain_model_folder_against_itself(teacher_dir, data_dir, capsys):
    assert main(["eval", str(teacher_dir), "--teacher", str(teacher_dir),
                 "--data-dir", str(data_dir)]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert res["retention"] == pytest.approx(1.0) and res["size_ratio"] == 1.0
    assert res["teacher"]["spearman"] == res["student"]["spearman"]
    assert not list(teacher_dir.glob("eval-*.json"))  # a model folder is not written to


def test_eval_of_a_folder_without_a_model_fails_cleanly(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "expected a run folder with student/" in capsys.readouterr().err
