"""Sequence-level KD data: teacher samples from training-block prompts, stored with their
generation settings, read back as a ``seqkd:`` source (checksum checked), trained on."""

from __future__ import annotations

import json

import pytest
import torch
from lm_fixtures import make_tokenizer, run_overrides, tiny_gpt2, tiny_llama, write_model

from attnkd.cli import main
from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.data.sources import load_source
from attnkd.errors import DataError
from attnkd.lm.sampling import sample_continuations
from attnkd.lm.seqkd import GenerationSettings, run_generate_data

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _cfg(lm_root, *extra):
    return apply_overrides(default_recipe(), [*run_overrides(*lm_root), *extra])


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_greedy_sampling_with_kv_cache_equals_full_recompute(make):
    model = make(len(make_tokenizer()), seed=1)
    prompts = torch.randint(3, 20, (3, 5), generator=torch.Generator().manual_seed(0))
    got = sample_continuations(model, prompts, 6, temperature=0.0)
    ids = prompts.clone()
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat((ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(got, ids[:, 5:])
    # a nucleus that keeps one token is greedy
    g = torch.Generator().manual_seed(3)
    assert torch.equal(sample_continuations(model, prompts, 6, 1.0, top_p=1e-6, generator=g), got)


def test_generate_data_manifest_prompts_and_determinism(tmp_path, lm_root):
    from attnkd.models.load import load_causal_lm
    from attnkd.tasks.causal_lm import lm_splits

    cfg = _cfg(lm_root)
    s = GenerationSettings(samples=6, prompt_tokens=4, new_tokens=5, temperature=1.0, seed=7,
                           batch_size=4)  # fmt: skip
    info = run_generate_data(cfg, s, tmp_path / "a")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["settings"] == {**s.__dict__} and m["samples"] == 6 and m["generated_tokens"] == 30
    assert m["teacher_name"] == cfg.teacher.name and len(m["teacher"]) == 64
    assert info["path"] == str(tmp_path / "a")
    rows = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    loaded = load_causal_lm(cfg.teacher.name)
    train = lm_splits(cfg, loaded.tokenizer).train
    for r in rows:  # prompts are the start of training blocks; continuations have 5 tokens
        assert r["prompt_ids"] == train[r["block"], :4].tolist() and len(r["ids"]) == 5
        assert r["text"] == loaded.tokenizer.decode(r["prompt_ids"] + r["ids"],
                                                    skip_special_tokens=True)  # fmt: skip
    run_generate_data(cfg, s, tmp_path / "b")
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (
        tmp_path / "b" / "samples.jsonl").read_text()  # fmt: skip
    s2 = GenerationSettings(**{**s.__dict__, "seed": 8})
    run_generate_data(cfg, s2, tmp_path / "c")
    assert (tmp_path / "a" / "samples.jsonl").read_text() != (
        tmp_path / "c" / "samples.jsonl").read_text()  # fmt: skip
    # the source yields each sample's text
    texts = load_source(f"seqkd:{tmp_path / 'a'}")
    assert list(texts) == [r["text"] for r in rows]


def test_seqkd_source_refuses_edits_and_trains(tmp_path, lm_root, capsys):
    folder = tmp_path / "gen"
    args = ["generate-data", *run_overrides(*lm_root), "--samples", "8", "--prompt-tokens", "3",
            "--new-tokens", "12", "--out", str(folder)]  # fmt: skip
    assert main(args) == 0
    assert f"seqkd:{folder}" in capsys.readouterr().out
    assert main(args) == 2  # exists
    assert main([*args, "--overwrite", "--top-p", "0"]) == 2
    assert "--top-p" in capsys.readouterr().err
    # a run on teacher text plus the real text (eval blocks stay at the end of the real text)
    teacher, text, runs = lm_root
    code = main(["distill", *run_overrides(*lm_root), "name=seqkd-run", "train.max_steps=2",
                 f"data.train_sources=[seqkd:{folder}, file:{text}]", "--no-progress"])  # fmt: skip
    assert code == 0
    res = json.loads((runs / "seqkd-run" / "results.json").read_text())
    assert res["train"]["steps"] == 2
    # an edited samples file is refused
    path = folder / "samples.jsonl"
    path.write_text(path.read_text().replace("the", "a", 1))
    with pytest.raises(DataError, match="sha256 differs"):
        load_source(f"seqkd:{folder}")
    code = main(["distill", *run_overrides(*lm_root), "name=seqkd-bad",
                 f"data.train_sources=[seqkd:{folder}, file:{text}]", "--no-progress"])  # fmt: skip
    assert code == 2 and "sha256 differs" in capsys.readouterr().err


def test_generate_data_on_gpt2(tmp_path, lm_root):
    gpt2 = write_model(tmp_path / "gpt2", family="gpt2")
    cfg = _cfg(lm_root, f"teacher.name={gpt2}")
    info = run_generate_data(cfg, GenerationSettings(samples=3, prompt_tokens=2, new_tokens=4),
                             tmp_path / "g")  # fmt: skip
    assert info["samples"] == 3 and len(load_source(f"seqkd:{tmp_path / 'g'}")) == 3
