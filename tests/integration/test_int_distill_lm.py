"""End to end for ``task: causal_lm``: a tiny Llama teacher (GQA, RoPE) distilled into a layer
cut with token-level KD and causal relations; perplexity of both, export, ``attnkd eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from int_helpers import save_tiny_llama_folder, write_story

from attnkd.cli import main
from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.distill import run_distill

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory):
    """A tiny Llama teacher (GQA, RoPE, peaked weights) with a word-level tokenizer, saved as a
    local model folder, and a text file of 300 sentences."""
    root = tmp_path_factory.mktemp("lm")
    teacher = save_tiny_llama_folder(root / "tiny-llama")
    return teacher, write_story(root / "story.txt", seed=5), root / "runs"


def _cfg(lm_setup, *extra):
    teacher, text, runs = lm_setup
    return apply_overrides(
        default_recipe(),
        [
            "name=tiny-lm", "task=causal_lm", f"output_dir={runs}", f"teacher.name={teacher}",
            "student.layers=[0, 2]",
            "losses=[{name: logits, kind: fkl}, {name: relation, relation_heads: 2}]",
            f"data.train_sources=[file:{text}]", "data.max_length=16",
            "data.val_fraction=0.1", "data.eval_fraction=0.1",
            "train.max_steps=6", "train.max_minutes=null", "train.eval_every=3",
            "train.save_every=3", "train.batch_size=4", "train.log_every=2", "train.lr=3e-3",
            "train.warmup_ratio=0.0", "train.freeze_embeddings=false", *extra,
        ],
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished(lm_setup):
    cfg = _cfg(lm_setup)
    return cfg, run_distill(cfg, progress=False), Path(cfg.output_dir) / cfg.name


def test_results_hold_perplexities(finished):
    cfg, results, run = finished
    assert results["task"] == "causal_lm"
    assert json.loads((run / "results.json").read_text()) == json.loads(json.dumps(results))
    t, s = results["teacher"], results["student"]
    for d in (t, s):
        assert math.isfinite(d["perplexity"]) and d["perplexity"] > 1
        assert d["perplexity"] == pytest.approx(math.exp(d["nll"]), rel=1e-9)
    assert results["retention"] == pytest.approx(t["nll"] / s["nll"])
    assert results["perplexity_ratio"] == pytest.approx(s["perplexity"] / t["perplexity"])
    assert s["layers"] == 2 and results["train"]["steps"] == 6
    assert s["best_step"] in (3, 6)
    # every logged step has both terms
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    terms = [r["terms"] for r in rows if r.get("kind", "train") == "train" and "terms" in r]
    assert terms and all(any(k.startswith("logits") for k in r) for r in terms)
    assert all(any(k.startswith("relation") for k in r) for r in terms)


def test_distillation_brings_the_student_closer_to_the_teacher(lm_setup, finished):
    """On the held-out blocks, KL(teacher || student) of the trained student is below the
    untrained cut's (the teacher is random, so perplexity itself is near the vocabulary size)."""
    from transformers import AutoModelForCausalLM

    from attnkd.data.lm import lm_texts, split_blocks, tokenize_stream
    from attnkd.losses.logits import token_divergence
    from attnkd.models.load import load_causal_lm

    cfg, results, run = finished
    cut_cfg = _cfg(lm_setup, "name=tiny-lm-cut", "train.max_steps=0")
    cut = run_distill(cut_cfg, progress=False)
    assert cut["teacher"]["perplexity"] == pytest.approx(results["teacher"]["perplexity"])
    teacher = load_causal_lm(cfg.teacher.name)
    d = cfg.data
    ids = tokenize_stream(teacher.tokenizer, lm_texts(d.train_sources, d.data_dir))
    blocks = split_blocks(ids, d.max_length, d.val_fraction, d.eval_fraction).eval
    with torch.no_grad():
        t_logits = teacher.model(input_ids=blocks).logits
        kl = {}
        for name, folder in (("trained", run), ("cut", Path(cut_cfg.output_dir) / cut_cfg.name)):
            student = AutoModelForCausalLM.from_pretrained(folder / "student").eval()
            kl[name] = token_divergence(student(input_ids=blocks).logits, t_logits).item()
    assert kl["trained"] < kl["cut"], kl


def test_exported_student_and_attnkd_eval(finished, capsys):
    from transformers import AutoModelForCausalLM

    cfg, results, run = finished
    model = AutoModelForCausalLM.from_pretrained(run / "student")
    assert model.config.num_hidden_layers == 2
    assert not (run / "student" / "modules.json").exists()  # no sentence-transformers files
    assert main(["eval", str(run), "--split", "eval"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "eval"
    assert out["student"]["perplexity"] == pytest.approx(results["student"]["perplexity"], 1e-5)
    assert out["teacher"]["perplexity"] == pytest.approx(results["teacher"]["perplexity"], 1e-5)
    assert out["speedup"] > 0 and (run / "eval-lm-eval.json").exists()
    assert out["perplexity_ratio"] == pytest.approx(results["perplexity_ratio"], 1e-5)
