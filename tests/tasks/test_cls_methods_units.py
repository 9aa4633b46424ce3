"""Pure parts of the DMAE, DDK and truncated-teacher additions against naive references:
token masking, the masked-token feature loss, the DDK weight update and sampler, the domain
loss, and a teacher that stops after the deepest tapped layer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnkd.config.schema import LossTermConfig
from attnkd.data.mixture import DomainMixtureBatches, MixtureState, ddk_update
from attnkd.data.token_mask import TokenMasker, mask_tokens
from attnkd.losses.cls_losses import masked_token_mse
from attnkd.losses.terms import build_terms
from attnkd.models.adapters import AttentionGeometry
from attnkd.tasks.sequence_classification_ddk import domain_loss
from attnkd.tasks.sequence_classification_step import run_until, teacher_stop_layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from int_helpers import VOCAB, make_tokenizer, tiny_bert  # noqa: E402

# ---------------------------------------------------------------- token masking


def test_mask_tokens_masks_the_share_of_maskable_tokens_only():
    ids = torch.arange(40).reshape(4, 10)
    maskable = torch.ones(4, 10, dtype=torch.bool)
    maskable[:, 0] = False  # [CLS]
    maskable[1, 6:] = False  # padding
    maskable[2] = False  # nothing to mask
    g = torch.Generator().manual_seed(0)
    m = mask_tokens(ids, maskable, 0.3, mask_id=-1, generator=g)
    assert m.masked.sum(1).tolist() == [3, 2, 0, 3]  # round(0.3 n), at least 1 when n > 0
    assert not (m.masked & ~maskable).any()
    assert (m.input_ids[m.masked] == -1).all() and torch.equal(
        m.input_ids[~m.masked], ids[~m.masked]
    )
    tiny = mask_tokens(ids, maskable, 0.01, -1, torch.Generator().manual_seed(0))
    assert tiny.masked.sum(1).tolist() == [1, 1, 0, 1]
    again = mask_tokens(ids, maskable, 0.3, -1, torch.Generator().manual_seed(0))
    assert torch.equal(again.masked, m.masked)


def test_token_masker_keeps_specials_and_depends_on_the_position_only(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = make_tokenizer(vocab)
    batch = dict(tok(["a big red dog is playing in the park .", "the cat"], padding=True,
                     return_tensors="pt"))  # fmt: skip
    masker = TokenMasker(tok, 0.5, seed=3)
    a, b, c = masker(batch, 7), masker(batch, 7), masker(batch, 8)
    assert torch.equal(a["masked_tokens"], b["masked_tokens"])
    assert not torch.equal(a["masked_tokens"], c["masked_tokens"])
    specials = torch.isin(batch["input_ids"], torch.tensor(tok.all_special_ids))
    assert not (a["masked_tokens"] & (specials | ~batch["attention_mask"].bool())).any()
    assert (a["student_input_ids"][a["masked_tokens"]] == tok.mask_token_id).all()
    assert torch.equal(a["input_ids"], batch["input_ids"])  # the teacher's input is whole
    assert a["masked_tokens"].sum(1).tolist() == [5, 1]  # 10 and 2 maskable words


# ---------------------------------------------------------------- masked-token feature loss


def _naive_masked_mse(s, t, att, masked, positions):
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            chosen = masked[b, i] if positions == "masked" else not masked[b, i]
            if att[b, i] and chosen:
                total += float(((s[b, i] - t[b, i]) ** 2).sum().detach())
                n += s.shape[2]
    return total / n if n else 0.0


@pytest.mark.parametrize("positions", ["masked", "visible"])
def test_masked_token_mse_matches_naive_and_ignores_other_positions(positions):
    torch.manual_seed(0)
    s, t = torch.randn(3, 6, 5, requires_grad=True), torch.randn(3, 6, 5)
    att = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]).bool()
    masked = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0]]).bool()
    got = masked_token_mse(s, t, att, masked, positions)
    assert float(got.detach()) == pytest.approx(
        _naive_masked_mse(s, t, att, masked, positions), rel=1e-5
    )
    other = masked if positions == "visible" else ~masked
    t2 = t.clone()
    t2[other | ~att] = float("nan")  # what is not compared never contributes
    assert torch.equal(masked_token_mse(s, t2, att, masked, positions), got)
    got.backward()
    assert torch.isfinite(s.grad).all() and (s.grad[other | ~att] == 0).all()
    assert float(masked_token_mse(t, t, att, masked, positions)) == 0.0


def test_masked_and_visible_parts_add_up_to_the_whole_row_loss():
    torch.manual_seed(1)
    s, t = torch.randn(2, 7, 4), torch.randn(2, 7, 4)
    att = torch.ones(2, 7, dtype=torch.bool)
    masked = torch.rand(2, 7) < 0.4
    n_m, n_v = int(masked.sum()), int((~masked).sum())
    parts = n_m * masked_token_mse(s, t, att, masked) + n_v * masked_token_mse(
        s, t, att, masked, "visible"
    )
    assert float(parts / (n_m + n_v)) == pytest.approx(float(F.mse_loss(s, t)), rel=1e-5)
    none = masked_token_mse(s.requires_grad_(), t, att, torch.zeros_like(masked))
    assert float(none.detach()) == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="positions"):
        masked_token_mse(s, t, att, masked, "all")


# ---------------------------------------------------------------- DDK update and sampler


def test_ddk_update_weights_follow_the_smoothed_gap_and_stay_a_distribution():
    gaps = torch.tensor([0.1, 0.5, 0.0, -0.3])
    u = ddk_update(gaps, None, smooth=0.5, floor=0.2)
    g = gaps.clamp_min(0).double()
    assert torch.allclose(u.weights, 0.2 / 4 + 0.8 * g / g.sum())  # the rule, written out
    assert float(u.weights.sum()) == pytest.approx(1.0)
    assert u.weights[1] > u.weights[0] > u.weights[2] == u.weights[3] == pytest.approx(0.05)
    v = ddk_update(torch.tensor([0.8, 0.1, 0.0, 0.0]), u.smoothed, smooth=0.5, floor=0.2)
    assert torch.allclose(v.smoothed, 0.5 * g + 0.5 * torch.tensor([0.8, 0.1, 0, 0]).double())
    assert v.weights[0] > v.weights[1] and v.weights[0] > u.weights[0]  # they follow the gap
    raw = ddk_update(torch.tensor([0.8, 0.1, 0.0, 0.0]), None, floor=0.2)
    assert v.weights[0] < raw.weights[0]  # ... damped by the smoothing
    assert float(v.weights.sum()) == pytest.approx(1.0)
    flat = ddk_update(torch.zeros(3), None, floor=0.0)
    assert torch.allclose(flat.weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        ddk_update(gaps, smooth=1.0)


def _sampler(gaps, every=2, floor=0.1, seed=0):
    domains = [[("a", i) for i in range(50)], [("b", i) for i in range(30)]]
    calls = []

    def measure():
        calls.append(1)
        return torch.tensor(gaps)

    def collate(rows, m):
        return {"rows": rows, "labels": torch.zeros(len(rows)), "m": m}

    state = MixtureState(2, 20)
    b = DomainMixtureBatches(domains, ["a", "b"], 8, seed, collate, measure, every, state,
                             smooth=0.5, floor=floor)  # fmt: skip
    return b, state, calls


def test_the_domain_with_the_larger_gap_fills_more_of_the_batches():
    b, state, calls = _sampler([0.02, 0.4])
    rows = [r for i in range(b.num_batches) for r in b.batch_at(0, i)["rows"]]
    share_b = sum(r[0] == "b" for r in rows) / len(rows)
    expected = 0.1 / 2 + 0.9 * 0.4 / 0.42
    assert state.weights[1] == pytest.approx(expected)
    assert abs(share_b - expected) < 0.08 and share_b > 0.8
    assert len(calls) == 5 and int(state.updates) == 5  # micro-batches 0, 2, 4, 6, 8 of 10
    hist = state.record()["weights"]
    assert len(hist) == 5 and all(sum(w) == pytest.approx(1.0) for w in hist)
    batch = b.batch_at(0, 3)
    assert batch["mixture_weights"].shape == (8, 2)
    assert torch.allclose(batch["mixture_weights"][0].double(), state.weights, atol=1e-6)


def test_a_batch_depends_only_on_seed_position_and_state():
    b1, s1, _ = _sampler([0.1, 0.3])
    b2, s2, calls2 = _sampler([0.1, 0.3])
    first = [b1.batch_at(0, i)["rows"] for i in range(5)]
    s2.load_state_dict(s1.state_dict())  # a resumed run: the state comes from the checkpoint
    assert b2.batch_at(0, 4)["rows"] == first[4] and not calls2  # no update twice at one place
    assert b2.batch_at(0, 2)["rows"] != first[4]


def test_domain_loss_matches_naive():
    torch.manual_seed(0)
    z, q = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), -1)
    y = torch.tensor([0, -100, 2, -100, 1])
    ref = []
    for i in range(5):
        logp = torch.log_softmax(z[i], 0)
        ref.append(-logp[y[i]] if y[i] >= 0 else -(q[i] * logp).sum())
    assert float(domain_loss(z, y, q)) == pytest.approx(float(torch.stack(ref).mean()), rel=1e-6)
    zt = torch.log(q)  # the teacher against its own probabilities: the gap is KL(q || p_S)
    kl = (q * (q.log() - torch.log_softmax(z, -1))).sum(-1).mean()
    none = torch.full((5,), -100)
    assert float(domain_loss(z, none, q) - domain_loss(zt, none, q)) == pytest.approx(float(kl))


# ---------------------------------------------------------------- truncated teacher


def test_a_truncated_teacher_stops_after_the_deepest_tapped_layer():
    from attnkd.capture import Capture, Tap

    model = tiny_bert(seed=0)
    ran = []
    for i, layer in enumerate(model.encoder.layer):
        layer.register_forward_hook(lambda *a, i=i: ran.append(i))
    x = {"input_ids": torch.randint(5, len(VOCAB), (2, 7)), "attention_mask": torch.ones(2, 7)}
    with torch.no_grad(), Capture(model, [Tap("hidden", 1), Tap("q", 1)]) as full:
        model(**x)
    ran.clear()
    with torch.no_grad(), Capture(model, [Tap("hidden", 1), Tap("q", 1)]) as cut:
        assert run_until(model, x, 1) is None
    assert ran == [0, 1]  # layers 2 and 3 never ran
    for kind in ("hidden", "q"):
        assert torch.equal(cut.taps.get(kind, 1), full.taps.get(kind, 1))
    assert run_until(model, x, None) is not None and ran[-1] == 3


def test_the_teacher_runs_to_its_head_only_when_a_term_reads_its_logits():
    g = AttentionGeometry(4, 32, 4, 4, 8)
    s = AttentionGeometry(2, 32, 4, 4, 8)

    def stop(*specs):
        return teacher_stop_layer(build_terms([LossTermConfig(**c) for c in specs], g, s))

    dmae = dict(name="dmae", teacher_layer=2, student_layer=1)
    assert stop(dmae, dict(name="cls_ce")) == 2
    assert stop(dmae, dict(name="hidden_mse", teacher_layer=1, student_layer=0)) == 2
    assert stop(dmae, dict(name="cls_kd")) is None
    assert stop(dict(name="cls_ofa_exit", student_layer=0)) is None
    assert stop(dict(name="cls_ce")) is None  # the teacher does not run at all
