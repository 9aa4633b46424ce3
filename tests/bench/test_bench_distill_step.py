"""bench/distill_step.py: the peer-style losses against independent formulas, and a smoke run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from attnkd.losses.attention import attention_kl, relation_kl

_PATH = Path(__file__).resolve().parents[2] / "bench" / "distill_step.py"
_spec = importlib.util.spec_from_file_location("bench_distill_step", _PATH)
ds = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ds  # dataclasses look their module up
_spec.loader.exec_module(ds)


def _mask(lengths, seq):
    return torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]


def _probs(q, k, mask):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return s.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)


def _loop_kl(pt, ps, mask):
    """Per (batch, head, real row): sum over real keys of p_t log(p_t / p_s); plain mean."""
    vals = []
    for b in range(pt.shape[0]):
        n = int(mask[b].sum())
        for h in range(pt.shape[1]):
            for i in range(n):
                t, s = pt[b, h, i, :n], ps[b, h, i, :n]
                vals.append(float((t * (t / s).log()).sum()))
    return sum(vals) / len(vals)


def test_peer_prob_kl_matches_loop_and_attnkd():
    g = torch.Generator().manual_seed(0)
    tq, tk, sq, sk = (torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64) for _ in range(4))
    mask = _mask([7, 4], 7)
    pt, ps = _probs(tq, tk, mask), _probs(sq, sk, mask)
    got = ds._peer_prob_kl(pt, ps, mask)
    assert got.item() == pytest.approx(_loop_kl(pt, ps, mask), rel=1e-10)
    ref = attention_kl(tq, tk, sq, sk, mask=mask, impl="naive")
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    assert ds._peer_prob_kl(pt, pt, mask).item() == pytest.approx(0.0, abs=1e-12)


def test_peer_prob_kl_gradient_is_finite_with_padding():
    g = torch.Generator().manual_seed(1)
    mask = _mask([5, 2], 5)
    pt = _probs(*(torch.randn(2, 2, 5, 3, generator=g) for _ in range(2)), mask)
    sq = torch.randn(2, 2, 5, 3, generator=g, requires_grad=True)
    ds._peer_prob_kl(pt, _probs(sq, sq, mask), mask).backward()
    assert torch.isfinite(sq.grad).all()


def test_peer_value_relation_matches_relation_kl():
    g = torch.Generator().manual_seed(2)
    heads, mask = 3, _mask([6, 3, 5], 6)
    vt = torch.randn(3, 6, 12, generator=g, dtype=torch.float64)
    vs = torch.randn(3, 6, 9, generator=g, dtype=torch.float64)
    pt = ds._peer_value_probs(vt, heads, mask)
    vh = vt.view(3, 6, heads, 4).transpose(1, 2)
    assert torch.allclose(pt, _probs(vh, vh, mask), rtol=1e-12, atol=0)
    got = ds._peer_prob_kl(pt, ds._peer_value_probs(vs, heads, mask), mask)
    ref = relation_kl(vt, vt, vs, vs, heads, mask=mask, impl="naive")
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)


@pytest.mark.slow
def test_quick_run_and_every_variant_trains(tmp_path):
    cfg = ds.StepConfig(**ds.QUICK)
    models = ds.build(cfg)
    before = models.student.classifier.weight.clone()
    for name, step in ds.make_steps(models, cfg).items():
        assert math.isfinite(step()), name
    assert not torch.equal(before, models.student.classifier.weight)
    assert all(not p.requires_grad for p in models.teacher.parameters())
    assert ds.memory_probe(cfg, "relations", steps=1) >= 0

    out = tmp_path / "r.json"
    assert ds.main(["--quick", "--rounds", "1", "--warmup", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for v in ds.VARIANTS:
        assert res[f"{v}_s"] > 0 and len(res["times_s"][v]) == 1
    assert res["ratios"]["floor"] == 1.0 and res["paired_ratios"]["floor"] == 1.0
    assert res["config"]["batch"] == ds.QUICK["batch"]


def test_paired_ratios_use_the_same_round():
    times = {"floor": [1.0, 2.0, 4.0], "x": [1.1, 2.2, 4.0]}
    got = ds.paired_ratios(times)
    assert got["floor"] == 1.0 and got["x"] == pytest.approx(1.1)
