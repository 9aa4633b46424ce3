"""GQA -> MLA (latent KV): exact before compression, decoding from the latent cache."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import batch, tiny_llama

from attnkd.convert.mla import LatentState, convert_to_mla
from attnkd.errors import ConfigError


def _real(x, mask):
    return x[mask.bool()]


@pytest.mark.parametrize("left", [False, True])
def test_full_rank_mla_reproduces_the_gqa_model(left):
    teacher = tiny_llama()
    mla = convert_to_mla(teacher)
    ids, mask = batch(60, left=left)
    with torch.no_grad():
        want = teacher(ids, attention_mask=mask).logits
        got = mla(ids, attention_mask=mask).logits
    torch.testing.assert_close(_real(got, mask), _real(want, mask), atol=1e-5, rtol=0)
    assert sum(isinstance(m, type(mla.model.layers[0].self_attn)) for m in mla.modules()) == 3


def test_decoding_from_the_latent_cache_equals_the_gqa_model():
    teacher = tiny_llama()
    mla = convert_to_mla(teacher, layers=[0, 2])
    ids, mask = batch(60, seq=15, left=True)
    with torch.no_grad():
        want = teacher(ids, attention_mask=mask).logits
        out = mla(ids[:, :5], attention_mask=mask[:, :5], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(5, 15):
            out = mla(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache)
            steps.append(out.logits)
    got = torch.cat(steps, 1)
    torch.testing.assert_close(_real(got, mask), _real(want, mask), atol=1e-5, rtol=0)
    assert isinstance(cache.layers[0], LatentState) and cache.layers[0].get_seq_length() == 15


def test_compression_shrinks_the_latent_and_stays_close():
    teacher = tiny_llama()
    full = 2 * 2 * 8  # 2 (k, v) x 2 kv heads x head dim 8
    ids, mask = batch(60)
    errors = []
    with torch.no_grad():
        want = teacher(ids).logits
        for rank in (full, full // 2, 4):
            mla = convert_to_mla(teacher, rank=rank)
            assert mla.model.layers[0].self_attn.kv_down.out_features == rank
            errors.append((mla(ids).logits - want).abs().max().item())
    assert errors[0] < 1e-5 < errors[2]
    assert errors[1] <= errors[2]
    with pytest.raises(ConfigError, match="mla.rank"):
        convert_to_mla(teacher, rank=full + 1)


def _calibration(n=3):
    return [dict(zip(("input_ids", "attention_mask"), batch(60, seed=s), strict=True))
            for s in range(n)]  # fmt: skip


def test_activation_pca_is_exact_at_full_rank_and_beats_svd_on_its_data():
    teacher = tiny_llama()
    ids, mask = batch(60, left=True)
    with torch.no_grad():
        want = teacher(ids, attention_mask=mask).logits
        pca = convert_to_mla(teacher, calibration=_calibration())
        got = pca(ids, attention_mask=mask).logits
    torch.testing.assert_close(_real(got, mask), _real(want, mask), atol=1e-5, rtol=0)
    assert pca.attnkd_conversion["latent"] == "pca"
    # at rank 4 of 32, PCA reconstructs the calibration keys/values better than the SVD
    from attnkd.convert.transfer import TeacherInputs

    cal = _calibration()
    ref = teacher.model.layers[1].self_attn
    inputs = []
    with torch.no_grad(), TeacherInputs(teacher, [1]) as cap:
        for b in cal:
            teacher(b["input_ids"], attention_mask=b["attention_mask"])
            inputs.append(cap.inputs[1][0][b["attention_mask"].bool()])
    errs = {}
    for name, data in (("svd", None), ("pca", cal)):
        att = convert_to_mla(teacher, rank=4, layers=[1], calibration=data).model.layers[1]
        with torch.no_grad():
            errs[name] = sum(
                (att.self_attn.kv_up(att.self_attn.kv_down(x))
                 - torch.cat([ref.k_proj(x), ref.v_proj(x)], -1)).square().sum().item()
                for x in inputs
            )  # fmt: skip
    assert errs["pca"] < errs["svd"], errs


def test_mla_models_save_and_load(tmp_path):
    from attnkd.convert import load_converted, save_converted

    mla = convert_to_mla(tiny_llama(), rank=8, layers=[0, 2], calibration=_calibration(2))
    folder = save_converted(mla, tmp_path / "mla")
    loaded = load_converted(folder)
    ids, mask = batch(60, left=True)
    with torch.no_grad():
        a = mla(ids, attention_mask=mask).logits
        b = loaded(ids, attention_mask=mask).logits
    torch.testing.assert_close(b, a, atol=0, rtol=0)
    assert loaded.model.layers[0].self_attn.kv_down.out_features == 8
