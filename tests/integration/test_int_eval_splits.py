"""``attnkd eval --split NAME:SPLIT``: any known split whose file is in the data folder, laid out
as the original distribution names it; task/split mismatches and missing files are named."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
from int_helpers import WORDS, make_decoder_tokenizer, make_sentence, tiny_llama

from attnkd.cli import main
from attnkd.config.io import apply_overrides, dump_yaml
from attnkd.config.schema import default_recipe
from attnkd.errors import ConfigError, DataError
from attnkd.eval.splits import SPLITS, resolve_split
from attnkd.evaluate import document_blocks

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _sts_test(root: Path, n: int = 30) -> Path:
    rng = random.Random(11)
    rows = []
    for i in range(n):
        s1, s2 = make_sentence(rng), make_sentence(rng)
        rows.append(f"main-forums\tMSRvid\t2015test\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{s1}\t{s2}")
    (root / "stsb").mkdir(parents=True, exist_ok=True)
    path = root / "stsb" / "sts-test.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_sentence_model_on_stsb_test_writes_json(teacher_dir, tmp_path, capsys):
    _sts_test(tmp_path / "data")
    out = tmp_path / "results" / "eval.json"
    argv = ["eval", str(teacher_dir), "--teacher", str(teacher_dir), "--split", "stsb:test",
            "--data-dir", str(tmp_path / "data"), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    res = json.loads(out.read_text())
    assert res == printed and res["split"] == "stsb:test" and res["pairs"] == 30
    assert res["file"] == str(tmp_path / "data" / "stsb" / "sts-test.csv")
    for role in ("teacher", "student"):
        m = res[role]
        assert set(m) >= {"spearman", "pearson", "params", "throughput"}
        assert -100 <= m["spearman"] <= 100 and m["throughput"] > 0
    assert res["teacher"]["spearman"] == res["student"]["spearman"]  # the same model
    assert res["throughput_unit"] == "sentences/s" and res["retention"] == pytest.approx(1.0)


def test_missing_split_file_names_the_full_path(teacher_dir, tmp_path, capsys):
    (tmp_path / "stsb").mkdir()
    argv = ["eval", str(teacher_dir), "--split", "stsb:test", "--data-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "stsb" / "sts-test.csv") in err and "stsb:test" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("wikitext2:test", "'wikitext2:test' is a text split (perplexity), scored by causal_lm"),
        ("sst2:dev", "classification split (accuracy, f1), scored by no run task yet"),
        ("stsb:tset", "unknown split 'stsb:tset'; known: eval, select, stsb:val, mrpc:dev"),
    ],
)
def test_split_the_run_cannot_score_is_refused(teacher_dir, tmp_path, capsys, split, expected):
    assert main(["eval", str(teacher_dir), "--split", split, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "config error at '--split'" in err and expected in err


def test_registry_layout_and_resolution(tmp_path):
    assert SPLITS.get("stsb:test").path == "stsb/sts-test.csv"
    assert SPLITS.get("mrpc:test").path == "mrpc/msr_paraphrase_test.txt"
    assert SPLITS.get("wikitext2:test").path == "wikitext2/wiki.test.tokens"
    assert SPLITS.get("tinyshakespeare:all").metrics == ("perplexity",)
    assert SPLITS.get("rte:dev").tasks == () and SPLITS.get("stsb:dev").tasks == ("sentence",)
    with pytest.raises(DataError, match="wiki.test.tokens"):
        resolve_split("wikitext2:test", "causal_lm", tmp_path)
    with pytest.raises(
        ConfigError,
        match="an STS split .* a causal_lm run scores: eval, tinyshakespeare:all, wikitext2",
    ):
        resolve_split("stsb:dev", "causal_lm", tmp_path, also=("eval",))
    mrpc = tmp_path / "mrpc" / "msr_paraphrase_test.txt"
    mrpc.parent.mkdir()
    mrpc.write_text("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b .\tA b !\n")
    rows = SPLITS.get("mrpc:test").read(tmp_path)
    assert [(r.sentence1, r.label) for r in rows] == [("A b .", 1)]


def _lm_run(tmp_path: Path) -> tuple[Path, Path]:
    model_dir = tmp_path / "tiny-llama"
    tok = make_decoder_tokenizer(WORDS)
    tiny_llama(seed=0, vocab_size=len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    run = tmp_path / "runs" / "lm"
    shutil.copytree(model_dir, run / "student")
    cfg = apply_overrides(default_recipe(), [
        "task=causal_lm", f"teacher.name={model_dir}", "data.max_length=16",
        f"data.data_dir={tmp_path / 'data'}", "data.train_sources=[wikitext2]",
    ])  # fmt: skip
    dump_yaml(cfg, run / "config.yaml")
    rng = random.Random(2)
    wiki = tmp_path / "data" / "wikitext2"
    wiki.mkdir(parents=True)
    lines = [" = Title = ", *(make_sentence(rng) for _ in range(40))]
    (wiki / "wiki.test.tokens").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return run, model_dir


def test_lm_run_on_wikitext_test_matches_a_direct_perplexity(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, model_dir = _lm_run(tmp_path)
    out = tmp_path / "lm.json"
    assert main(["eval", str(run), "--split", "wikitext2:test", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["split"] == "wikitext2:test" and res["throughput_unit"] == "tokens/s"
    assert res["in_training_sources"] == []  # the run trained on wiki.valid, not wiki.test
    assert (run / "eval-lm-wikitext2_test.json").exists()
    tok = AutoTokenizer.from_pretrained(model_dir)
    text = (tmp_path / "data" / "wikitext2" / "wiki.test.tokens").read_text().rstrip("\n")
    blocks = document_blocks(tok, text, 16)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=blocks).logits
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1)
    )
    assert res["tokens"] == blocks.shape[0] * 15
    for role in ("teacher", "student"):
        assert res[role]["perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-4)
        assert res[role]["params"] > 0 and res[role]["throughput"] > 0
    assert main(["eval", str(run), "--split", "stsb:dev"]) == 2
    assert "scored by sentence runs; a causal_lm run scores: eval, select" in (
        capsys.readouterr().err
    )


def test_sentence_run_on_its_own_selection_split(teacher_dir, data_dir, tmp_path, capsys):
    from attnkd.tasks.sentence import eval_pairs

    run = tmp_path / "runs" / "s"
    shutil.copytree(teacher_dir, run / "student")
    cfg = apply_overrides(default_recipe(), [f"teacher.name={teacher_dir}",
                                             f"data.data_dir={data_dir}"])  # fmt: skip
    dump_yaml(cfg, run / "config.yaml")
    assert main(["eval", str(run), "--split", "select"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["split"] == "stsb:val" and res["pairs"] == len(eval_pairs(cfg, "stsb:val").scores)
    assert "file" not in res and (run / "eval-stsb_val.json").exists()
    assert main(["eval", str(run), "--split", "stsb:train"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["in_training_sources"] == ["stsb:train"]  # scored on text it was trained on
