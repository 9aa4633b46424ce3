"""``attnkd eval --speculative`` and ``--protocol`` end to end on a tiny Llama folder with a
word-level tokenizer and a text file: keys of the JSON, greedy equality, bad input exits 2."""

from __future__ import annotations

import json
import random

import pytest
import torch

from attnkd.cli import main
from attnkd.eval.drafts import self_draft
from attnkd.eval.spec_eval import SpecSettings, speculative_report
from tiny_lms import single_thread

WORDS = [f"w{i}" for i in range(40)]


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<unk>", "<s>", "</s>", *WORDS]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def _llama(layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(WORDS) + 3, hidden_size=16, intermediate_size=32,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        max_position_embeddings=256, initializer_range=0.2, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    _llama().save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "words.txt"
    lines = [" ".join(rng.choice(WORDS[:20]) for _ in range(12)) for _ in range(300)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_speculative_report_keys_and_greedy_equality():
    teacher = _llama()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 3, 4, 20, 21, 22]]
    s = SpecSettings(gamma=3, temperature=1.0, new_tokens=20)
    res = speculative_report(teacher, self_draft(teacher, 1), prompts, s)
    assert res["greedy_equal"] is True
    assert 0 <= res["alpha"] <= 1 and 1 <= res["tau"] <= 4
    assert res["speculative"]["tokens"] == res["teacher"]["tokens"] == 40
    assert res["cost_ratio"] > 0 and res["speedup"] > 0 and 1 <= res["best_gamma"] <= 8
    assert 0 <= res["alpha_teacher_forced"] <= 1


def test_gamma_zero_is_chosen_from_teacher_forced_alpha_and_costs():
    from attnkd.eval.spec_cost import choose_gamma

    teacher = _llama()
    prompts = [[5, 6, 7, 8, 9, 10], [11, 3, 4, 20, 21, 22]]
    res = speculative_report(teacher, self_draft(teacher, 1), prompts,
                             SpecSettings(gamma=0, temperature=1.0, new_tokens=8))  # fmt: skip
    assert res["gamma_chosen"] is True and 1 <= res["gamma"] <= 8
    steps = res["step_seconds"]
    v = {int(g): t / steps["teacher"] for g, t in steps["verify"].items()}
    assert res["gamma"] == choose_gamma(res["alpha_teacher_forced"], res["cost_ratio"], v)
    assert res["verify_ratio"] == pytest.approx(v[res["gamma"]])
    fixed = speculative_report(teacher, self_draft(teacher, 1), prompts,
                               SpecSettings(gamma=2, temperature=0.0, new_tokens=8))  # fmt: skip
    assert fixed["gamma"] == 2 and fixed["gamma_chosen"] is False


def test_cli_speculative_writes_json(teacher_dir, text_file, tmp_path, capsys):
    out = tmp_path / "res" / "spec.json"
    argv = ["eval", str(teacher_dir), "--speculative", "--draft", "self:1", "--gamma", "3"]
    argv += ["--prompts", "2", "--new-tokens", "10", "--text", f"file:{text_file}"]
    argv += ["--shortlist", "10", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    for key in ("alpha", "tau", "cost_ratio", "speedup", "greedy_equal", "break_even_alpha"):
        assert key in res
    assert res["greedy_equal"] is True and res["draft"] == "self:1" and res["shortlist"] == 10
    assert json.loads(capsys.readouterr().out) == res


def test_cli_speculative_packed_keeps_greedy_equality(teacher_dir, text_file, tmp_path):
    from attnkd.eval.cpu_linear import packing_available

    if not packing_available():
        pytest.skip("no oneDNN in this build")
    out = tmp_path / "spec.json"
    argv = ["eval", str(teacher_dir), "--speculative", "--draft", "self:1", "--gamma", "2"]
    argv += ["--prompts", "2", "--new-tokens", "10", "--text", f"file:{text_file}"]
    argv += ["--shortlist", "10", "--packed", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["settings"]["packed"] is True and res["greedy_equal"] is True


def test_cli_protocol_perplexity(teacher_dir, text_file, tmp_path):
    out = tmp_path / "ppl.json"
    argv = ["eval", str(teacher_dir), "--protocol", "windows:32:stride=16"]
    argv += ["--text", f"file:{text_file}", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    r = res["results"]["teacher"][f"file:{text_file}"]
    assert res["protocol"] == r["protocol"] == "windows:32:stride=16"
    assert r["scored_tokens"] == r["total_tokens"] - 1 and r["perplexity"] > 1


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--speculative", "--draft", "self:0"], "self:K"),
        (["--speculative", "--draft", "self:3"], "1..2"),
        (["--speculative", "--draft", "self:1", "--gamma", "-1"], "gamma"),
        (["--protocol", "windows:8:stride=9"], "protocol"),
    ],
)
def test_cli_bad_input_exits_2(teacher_dir, text_file, extra, msg, capsys):
    rc = main(["eval", str(teacher_dir), "--text", f"file:{text_file}", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err
