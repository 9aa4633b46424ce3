"""``teachers:`` on the sentence task: teachers that tokenise for themselves (a tiny MPNet with
its own vocabulary order) and a same-vocabulary BERT teach a student through cached
sentence-level targets; per-token terms are refused naming the teacher and the term."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from int_helpers import SPECIALS, WORDS, tiny_mpnet

from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.distill import run_distill
from attnkd.errors import ConfigError
from attnkd.eval.encode import encode
from attnkd.validate import validate


@pytest.fixture(scope="module")
def own_tokenizer_teacher(tmp_path_factory) -> Path:
    """A tiny MPNet, 48 wide, with a tokenizer whose ids differ from the student's."""
    from transformers import BertTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-mpnet-own-vocab"
    tiny_mpnet(seed=2, hidden_size=48).save_pretrained(folder)
    vocab = SPECIALS + WORDS[::-1]  # same words, other ids: a different tokenizer
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(folder)
    return folder


@pytest.fixture
def teachers_cfg(base_overrides, own_tokenizer_teacher, teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNKD_CACHE_DIR", str(tmp_path / "cache"))

    def make(*extra: str):
        teachers = (
            f"teachers=[{{name: {own_tokenizer_teacher}, label: mp, weight: 2.0, losses: "
            "[{name: sentence_similarity}, {name: sentence_mse, projector: true}]}, "
            f"{{name: {teacher_dir}, label: bert}}]"
        )
        plain = [o for o in base_overrides if not o.startswith(("teacher.name", "student.layers"))]
        return apply_overrides(default_recipe(), [*plain, teachers, f"student.init={teacher_dir}",
                               "losses=[{name: sentence_similarity}]", *extra])  # fmt: skip

    return make


def test_teachers_with_their_own_tokenizers_train_the_student_from_cached_targets(
    teachers_cfg, own_tokenizer_teacher, tmp_path
):
    from attnkd.data.embedding_cache import EmbeddingCache
    from attnkd.models.load import load_encoder
    from attnkd.tasks.sentence_teachers import teacher_cache

    cfg = teachers_cfg()
    validate(cfg)
    results = run_distill(cfg, progress=False)
    run = Path(cfg.output_dir) / cfg.name
    assert json.loads((run / "results.json").read_text())["student"] == results["student"]
    assert results["train"]["steps"] == 6
    names = [t["name"] for t in results["teachers"]]
    assert names == [str(own_tokenizer_teacher), cfg.teachers[1].name]
    assert all(-100 <= t["spearman"] <= 100 for t in results["teachers"])
    assert all(t["encoded_this_run"] > 0 for t in results["teachers"])
    assert results["retention"] == pytest.approx(
        results["student"]["spearman"] / results["teachers"][0]["spearman"]
    )
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {k for x in lines for k in x.get("terms", x)}
    assert any("ensemble:sentence_similarity" in k for k in logged)
    assert any("mp:sentence_similarity" in k for k in logged)
    assert any("mp:sentence_mse" in k for k in logged)
    assert (run / "student" / "model.safetensors").is_file()

    # the cached rows are the teacher's own embeddings, read with its own tokenizer
    t = load_encoder(str(own_tokenizer_teacher))
    cache: EmbeddingCache = teacher_cache(str(own_tokenizer_teacher), cfg.data.max_length)
    texts = ["a big dog is running in the park .", "the sad cat is sitting in the water ."]
    got, new = cache.get(texts, lambda x: encode(t.model, t.tokenizer, x, max_length=32))
    want = encode(t.model, t.tokenizer, texts, max_length=32)
    torch.testing.assert_close(got, want)
    ids_teacher = t.tokenizer(texts[0])["input_ids"]
    ids_student = load_encoder(cfg.student.init).tokenizer(texts[0])["input_ids"]
    assert ids_teacher != ids_student

    # a second run (another recipe name, same corpus) encodes nothing again
    again = run_distill(teachers_cfg("name=again", "train.max_steps=2"), progress=False)
    assert [t["encoded_this_run"] for t in again["teachers"]] == [0, 0]


@pytest.mark.parametrize("term", ["relation", "hidden_mse", "attention", "logits"])
def test_per_token_terms_are_refused_for_a_teacher_with_another_tokenizer(
    teachers_cfg, own_tokenizer_teacher, term
):
    cfg = teachers_cfg(f"teachers=[{{name: {own_tokenizer_teacher}, label: mp, losses: "
                       f"[{{name: {term}}}]}}]", "losses=[]")  # fmt: skip
    pattern = (rf"teachers\[0\]\.losses\[0\]\.name.*teacher 'mp "
               rf"\({own_tokenizer_teacher}\)' tokenizes differently.*'{term}'")  # fmt: skip
    with pytest.raises(ConfigError, match=pattern):
        validate(cfg, check_data=False)


def test_bad_teachers_settings_are_refused_before_loading(teachers_cfg, own_tokenizer_teacher):
    mp = f"{{name: {own_tokenizer_teacher}, label: mp, losses: "
    wide = f"teachers=[{mp}[{{name: sentence_mse}}]}}]"
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.losses\[0\]\.projector.*48 wide"):
        validate(teachers_cfg(wide, "losses=[]"), check_data=False)
    with pytest.raises(ConfigError, match=r"losses\[0\]\.name.*'sentence_mse'.*one width"):
        validate(teachers_cfg("losses=[{name: sentence_mse}]"), check_models=False,
                 check_data=False)  # fmt: skip
    layer = f"teachers=[{mp}[{{name: sentence_similarity, teacher_layer: 2}}]}}]"
    with pytest.raises(ConfigError, match=r"teacher_layer.*final mean-pooled"):
        validate(teachers_cfg(layer), check_data=False, check_models=False)
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.weight"):
        validate(teachers_cfg(wide.replace("label: mp", "label: mp, weight: -1")),
                 check_models=False, check_data=False)  # fmt: skip
    with pytest.raises(ConfigError, match="not both"):
        validate(teachers_cfg("teacher.name=somewhere/else"), check_models=False,
                 check_data=False)  # fmt: skip


@pytest.mark.real_model
def test_real_mpnet_teacher_has_its_own_tokenizer_and_per_token_terms_are_refused():
    """The packaged all-mpnet-base-v2 (only when its parts are installed: attnkd[mpnet])."""
    from attnkd.config.io import load_config
    from attnkd.models.hub import list_packaged, vocabulary_fingerprint
    from attnkd.recipes import find_recipe

    mpnet = "sentence-transformers/all-mpnet-base-v2"
    if not any(p.alias == mpnet and p.installed for p in list_packaged()):
        pytest.skip("all-mpnet-base-v2 parts not installed (attnkd[mpnet])")
    cfg = load_config(find_recipe("mpnet-sentence"))
    assert vocabulary_fingerprint(mpnet) != vocabulary_fingerprint(cfg.student.init)
    validate(cfg, check_data=False)
    bad = apply_overrides(cfg, [f"teachers=[{{name: {mpnet}, losses: [{{name: relation}}]}}]"])
    with pytest.raises(ConfigError, match=r"tokenizes differently.*'relation'"):
        validate(bad, check_data=False)


def test_targets_are_row_aligned_loss_is_zero_when_the_student_is_the_teacher(teacher_dir):
    """Student = teacher and targets = its own embeddings: every batch's terms are ~0, which
    fails if a batch's rows pointed at other sentences' targets."""
    import random

    from int_helpers import make_sentence

    from attnkd.config.schema import LossTermConfig, TeacherEntry
    from attnkd.models.load import load_encoder
    from attnkd.tasks.sentence import GroupedBatches
    from attnkd.tasks.sentence_teachers import SentenceTargetDistiller, _RowBatches

    rng = random.Random(0)
    sentences = sorted({make_sentence(rng) for _ in range(40)})
    t = load_encoder(str(teacher_dir))
    targets = encode(t.model, t.tokenizer, sentences, max_length=32)
    terms = [LossTermConfig(name="sentence_similarity"), LossTermConfig(name="sentence_mse")]
    entry = TeacherEntry(name=str(teacher_dir), losses=terms)
    module = SentenceTargetDistiller(t.model.eval(), [entry], [targets])
    batches = _RowBatches(GroupedBatches(sentences, t.tokenizer, 8, 32, seed=1))
    shuffled = SentenceTargetDistiller(t.model, [entry], [targets[torch.randperm(len(targets))]])
    with torch.no_grad():
        for i in range(batches.num_batches):
            batch = batches.batch_at(0, i)
            out = module(batch)
            assert float(out["loss"]) < 1e-8, (i, out)
            assert float(shuffled(batch)["loss"]) > 1e-4


def test_side_by_side_bench_runs_models_with_their_own_tokenizers(
    teacher_dir, own_tokenizer_teacher, data_dir, tmp_path, monkeypatch
):
    """bench/mpnet_sentence.py on tiny models: a teacher scored from its embedding cache, one
    encoded live, a run's student; throughput of each with its own tokenizer."""
    import importlib.util
    import shutil

    monkeypatch.setenv("ATTNKD_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ATTNKD_CACHE_DIR", str(tmp_path / "cache"))
    path = Path(__file__).resolve().parents[2] / "bench" / "mpnet_sentence.py"
    spec = importlib.util.spec_from_file_location("bench_mpnet_sentence", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = tmp_path / "runs" / "s0"
    shutil.copytree(teacher_dir, run / "student")
    row = {"spearman": 12.5, "select_spearman": 10.0, "best_step": 3}
    (run / "results.json").write_text(json.dumps({
        "seed": 0, "student": row, "retention": 0.5, "train": {"seconds_this_session": 7.0},
        "teachers": []}))  # fmt: skip
    out = tmp_path / "bench.json"
    argv = [f"--model=mpnet={own_tokenizer_teacher}", f"--model=bert={teacher_dir}",
            f"--run=student={run}", "--cached=mpnet", "--baseline=bert", "--sentences=8",
            "--rounds=1", f"--json={out}"]  # fmt: skip
    assert bench.main(argv) == 0
    got = json.loads(out.read_text())
    assert set(got["models"]) == {"mpnet", "bert", "student"}
    assert got["models"]["student"]["stsb_dev_spearman"] == 12.5
    assert got["models"]["mpnet"]["spearman_from"].startswith("embedding cache")
    assert got["models"]["bert"]["speedup_vs_baseline"] == 1.0
    assert all(m["sentences_per_s"] > 0 for m in got["models"].values())
    assert got["runs"]["student"]["dev_mean"] == 12.5
