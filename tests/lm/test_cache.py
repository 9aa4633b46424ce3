"""Offline teacher cache: round trip, training from it (same loss curve as the live teacher at
k = V, teacher never run), and refusal of a cache made for another teacher, tokenizer, text or
k (exit status 2, message naming the field)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_fixtures import make_tokenizer, run_overrides, tiny_llama, write_model, write_text

from attnkd.cli import main
from attnkd.config.io import apply_overrides
from attnkd.config.schema import default_recipe
from attnkd.data.teacher_cache import CacheError, TeacherCache, teacher_targets
from attnkd.lm.cache_run import run_cache_teacher

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _cfg(lm_root, *extra):
    return apply_overrides(default_recipe(), [*run_overrides(*lm_root), *extra])


@pytest.fixture(scope="module")
def full_cache(lm_root):
    """A k = V float32 cache of the tiny Llama teacher on the run's training blocks."""
    cfg = _cfg(lm_root)
    vocab = len(make_tokenizer())
    out = lm_root[2] / "cache-full"
    return run_cache_teacher(cfg, vocab, out, dtype="fp32", batch_size=5, progress=False)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_round_trip(tmp_path, lm_root, family):
    from attnkd.models.load import load_causal_lm
    from attnkd.tasks.causal_lm import lm_splits

    teacher_dir = write_model(tmp_path / family, family=family, seed=3)
    cfg = _cfg(lm_root, f"teacher.name={teacher_dir}")
    info = run_cache_teacher(cfg, 4, tmp_path / "c", dtype="fp16", batch_size=3, progress=False)
    cache = TeacherCache(tmp_path / "c")
    loaded = load_causal_lm(str(teacher_dir))
    blocks = lm_splits(cfg, loaded.tokenizer).train
    assert torch.equal(cache.input_ids(), blocks)
    rows = [5, 0, 2]
    with torch.no_grad():
        want = teacher_targets(loaded.model(input_ids=blocks[rows]).logits, 4)
    got = cache.targets(rows)
    assert torch.equal(got.ids.long(), want.ids)
    assert got.logp.dtype == torch.float16
    torch.testing.assert_close(got.logp.float(), want.logp, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(got.tail, want.tail, rtol=1e-5, atol=1e-5)
    # bytes per token: ids int32 + k int32 ids + k fp16 log-probs + fp32 tail (+ npy headers)
    assert info["tokens"] == blocks.numel()
    assert info["target_bytes_per_token"] == pytest.approx(4 * 4 + 4 * 2 + 4, rel=0.05)
    assert info["bytes_per_token"] == pytest.approx(4 + 4 * 4 + 4 * 2 + 4, rel=0.05)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["k"] == 4 and m["teacher_name"] == str(teacher_dir)
    assert set(m["files"]) == {"input_ids.npy", "topk_ids.npy", "topk_logp.npy", "tail_logp.npy"}


def test_corrupt_or_missing_files_are_refused(tmp_path, full_cache):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(full_cache["path"], copy)
    a = np.load(copy / "topk_logp.npy", mmap_mode="r+")
    a[0, 0, 0] += 1.0
    a.flush()
    del a
    with pytest.raises(CacheError, match="sha256 differs"):
        TeacherCache(copy)
    (copy / "tail_logp.npy").unlink()
    with pytest.raises(CacheError, match="tail_logp.npy is missing"):
        TeacherCache(copy, verify=False)
    with pytest.raises(CacheError, match="no manifest.json"):
        TeacherCache(tmp_path)


def _train_losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("event") == "train"]


def test_training_from_a_full_cache_follows_the_live_teacher(lm_root, full_cache, monkeypatch):
    """k = V: the cached run's loss curve equals the live-teacher run's, and the teacher's
    forward is never called while training from the cache."""
    import attnkd.distill as distill
    from attnkd.distill import run_distill

    live = run_distill(_cfg(lm_root, "name=live"), progress=False)
    calls = {"n": 0}
    real_fit = distill.fit

    def counting_fit(*args, **kw):
        from transformers import LlamaForCausalLM

        def hook(module, inputs):
            if isinstance(module, LlamaForCausalLM) and module.config.num_hidden_layers == 3:
                calls["n"] += 1

        handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        try:
            return real_fit(*args, **kw)
        finally:
            handle.remove()

    monkeypatch.setattr(distill, "fit", counting_fit)
    vocab = full_cache["k"]
    cached = run_distill(
        _cfg(lm_root, "name=cached", f"teacher.cache={full_cache['path']}",
             f"losses=[{{name: logits, kind: fkl, top_k: {vocab}}}]"),
        progress=False,
    )  # fmt: skip
    assert calls["n"] == 0
    runs = lm_root[2]
    a, b = _train_losses(runs / "live"), _train_losses(runs / "cached")
    assert len(a) == len(b) == 6
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert cached["student"]["perplexity"] == pytest.approx(live["student"]["perplexity"], 1e-3)
    assert cached["teacher"]["perplexity"] == pytest.approx(live["teacher"]["perplexity"], 1e-6)


def _distill_exit(lm_root, capsys, *extra) -> tuple[int, str]:
    code = main(["distill", *run_overrides(*lm_root), "name=refused", *extra, "--no-progress"])
    return code, capsys.readouterr().err


def test_mismatched_cache_is_refused_with_exit_2(tmp_path, lm_root, full_cache, capsys):
    path, k = full_cache["path"], full_cache["k"]
    use = [f"teacher.cache={path}", f"losses=[{{name: logits, kind: fkl, top_k: {k}}}]"]
    # another k asked for by the run
    code, err = _distill_exit(lm_root, capsys, *use[:1], "losses=[{name: logits, top_k: 3}]")
    assert code == 2 and "losses[0].top_k" in err and f"k = {k}" in err
    # ... refused by `attnkd validate` too, before any model loads; and another temperature
    args = ["validate", *run_overrides(*lm_root), use[0], "losses=[{name: logits, top_k: 3}]"]
    assert main([*args, "--no-models", "--no-data"]) == 2
    assert "losses[0].top_k" in capsys.readouterr().err
    hot = f"losses=[{{name: logits, top_k: {k}, temperature: 2.0}}]"
    code, err = _distill_exit(lm_root, capsys, use[0], hot)
    assert code == 2 and "losses[0].temperature" in err
    # another teacher (same shape, other weights)
    other = write_model(tmp_path / "other-teacher", seed=9)
    code, err = _distill_exit(lm_root, capsys, *use, f"teacher.name={other}")
    assert code == 2 and "does not match this run: its teacher is" in err
    assert "attnkd cache-teacher" in err and "Traceback" not in err
    # the same weights with another tokenizer (same size, other word order)
    retok = tmp_path / "retok"
    tiny_llama(len(make_tokenizer()), seed=0).save_pretrained(retok)
    from lm_fixtures import WORDS
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<unk>", "<s>", "</s>", *reversed(WORDS)]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(retok)  # fmt: skip
    teacher0 = lm_root[0]
    assert (retok / "model.safetensors").read_bytes() == (
        teacher0 / "model.safetensors").read_bytes()  # fmt: skip
    code, err = _distill_exit(lm_root, capsys, *use, f"teacher.name={retok}")
    assert code == 2 and "its tokenizer is" in err
    # other text
    text2 = write_text(tmp_path / "other.txt", seed=11)
    code, err = _distill_exit(lm_root, capsys, *use, f"data.train_sources=[file:{text2}]")
    assert code == 2 and "its text is" in err
    # same text, other blocks
    code, err = _distill_exit(lm_root, capsys, *use, "data.max_length=12")
    assert code == 2 and "its token blocks" in err
    # a term the cache cannot serve
    code, err = _distill_exit(
        lm_root, capsys, use[0], f"losses=[{{name: logits, top_k: {k}}}, {{name: relation}}]"
    )
    assert code == 2 and "losses[1].name" in err
    assert not (lm_root[2] / "refused" / "checkpoints").exists()  # nothing was trained


def test_cache_teacher_cli(tmp_path, lm_root, capsys):
    out = tmp_path / "cli-cache"
    args = ["cache-teacher", *run_overrides(*lm_root), "--top-k", "5", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "bytes/token" in printed and f"teacher.cache={out}" in printed
    assert TeacherCache(out).k == 5
    assert main(args) == 2  # exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args[:-1], "--top-k", "0"]) == 2
