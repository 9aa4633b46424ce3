"""Image losses against naive loop forms, and their properties."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnkd.capture.images import FeatureCapture
from attnkd.config.schema import LossTermConfig
from attnkd.losses import spatial
from attnkd.losses.terms import build_terms
from attnkd.models.adapters import geometry
from attnkd.vision.models import build_model

torch.manual_seed(0)


def _naive_map(f):
    b, c = f.shape[:2]
    out = torch.zeros(b, f[0, 0].numel(), dtype=torch.float64)
    for i in range(b):
        q = sum(f[i, ch].double().abs() ** 2 for ch in range(c)).flatten()
        out[i] = q / math.sqrt(float((q**2).sum()))
    return out


def test_attention_map_matches_naive():
    f = torch.randn(3, 5, 4, 4)
    assert torch.allclose(spatial.attention_map(f).double(), _naive_map(f), atol=1e-6)


@pytest.mark.parametrize("mode", ["paper", "mean"])
def test_at_loss_matches_naive(mode):
    fs, ft = torch.randn(3, 4, 6, 6), torch.randn(3, 9, 6, 6)
    qs, qt = _naive_map(fs), _naive_map(ft)
    if mode == "paper":
        ref = sum(0.5 * math.sqrt(float(((qs[i] - qt[i]) ** 2).sum())) for i in range(3)) / 3
    else:
        ref = float(((qs - qt) ** 2).sum()) / qs.numel()
    assert spatial.at_loss(fs, ft, mode=mode).item() == pytest.approx(ref, rel=1e-5)


def test_at_loss_zero_for_scaled_copy_and_finite_grads():
    fs = torch.randn(2, 4, 5, 5, requires_grad=True)
    assert spatial.at_loss(fs, 3 * fs.detach()).item() < 1e-12
    spatial.at_loss(fs, torch.randn(2, 8, 5, 5), mode="paper").backward()
    assert torch.isfinite(fs.grad).all()


def test_at_loss_pools_to_the_smaller_map_and_accepts_tokens():
    v = spatial.at_loss(torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4))
    assert v.shape == () and torch.isfinite(v)
    assert spatial.attention_map(torch.randn(2, 7, 16)).shape == (2, 7)
    with pytest.raises(ValueError, match="mode"):
        spatial.at_loss(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3), mode="x")


def test_channel_attention_matches_naive():
    f = torch.randn(2, 3, 4, 4)
    ref = torch.stack([torch.stack([f[b, c].mean() for c in range(3)]) for b in range(2)])
    ref = ref / ref.norm(dim=1, keepdim=True)
    a = spatial.channel_attention(f)
    assert torch.allclose(a, ref, atol=1e-6)
    assert spatial.channel_attention_loss(a, a).item() == 0.0


def test_self_attention_distillation_matches_naive_and_detaches_the_deeper_map():
    f0 = torch.randn(2, 3, 8, 8, requires_grad=True)
    f1 = torch.randn(2, 5, 4, 4, requires_grad=True)
    up = F.interpolate(spatial.attention_map(f1, normalize=False).view(2, 1, 4, 4), size=(8, 8),
                       mode="bilinear", align_corners=False).flatten(1)  # fmt: skip
    ref = ((spatial.attention_map(f0) - F.normalize(up, dim=1)) ** 2).mean()
    v = spatial.self_attention_distillation([f0, f1])
    assert v.item() == pytest.approx(ref.item(), rel=1e-5)
    v.backward()
    assert f1.grad is None and torch.isfinite(f0.grad).all()


def _naive_rkd_distance(es, et):
    def norm_d(e):
        n = len(e)
        d = [[float((e[i] - e[j]).norm()) if i != j else 0.0 for j in range(n)] for i in range(n)]
        mean = sum(x for row in d for x in row if x > 0) / (n * n - n)
        return torch.tensor(d) / mean

    return F.smooth_l1_loss(norm_d(es.double()).float(), norm_d(et.double()).float())


def _naive_rkd_angle(es, et):
    def angles(e):
        n, out = len(e), []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    u, w = e[j] - e[i], e[k] - e[i]
                    nu, nw = u.norm().clamp_min(1e-12), w.norm().clamp_min(1e-12)
                    out.append(float((u / nu) @ (w / nw)))
        return torch.tensor(out)

    return F.smooth_l1_loss(angles(es.double()), angles(et.double()))


def test_rkd_matches_naive_and_is_scale_invariant():
    es, et = torch.randn(5, 3), torch.randn(5, 7)
    assert spatial.rkd_distance(es, et).item() == pytest.approx(
        float(_naive_rkd_distance(es, et)), rel=1e-4)  # fmt: skip
    assert spatial.rkd_angle(es, et).item() == pytest.approx(
        float(_naive_rkd_angle(es, et)), rel=1e-4)  # fmt: skip
    assert spatial.rkd_distance(es, 4 * es).item() < 1e-8
    assert spatial.rkd_angle(es, 4 * es).item() < 1e-8
    x = es.clone().requires_grad_(True)
    (spatial.rkd_distance(x, et) + spatial.rkd_angle(x, et)).backward()
    assert torch.isfinite(x.grad).all()


def test_similarity_preserving_matches_naive():
    fs, ft = torch.randn(4, 3, 2, 2), torch.randn(4, 5, 2, 2)

    def g(f):
        a = f.flatten(1).double()
        m = torch.tensor([[float(a[i] @ a[j]) for j in range(4)] for i in range(4)])
        return m / m.norm(dim=1, keepdim=True)

    ref = float(((g(fs) - g(ft)) ** 2).sum()) / 16
    assert spatial.similarity_preserving(fs, ft).item() == pytest.approx(ref, rel=1e-5)
    assert spatial.similarity_preserving(fs, fs).item() == 0.0


def test_pkt_matches_naive():
    es, et = torch.randn(4, 3), torch.randn(4, 6)

    def p(e):
        e = e.double() / e.double().norm(dim=1, keepdim=True)
        k = torch.tensor([[(float(e[i] @ e[j]) + 1) / 2 for j in range(4)] for i in range(4)])
        return k / k.sum(1, keepdim=True)

    ps, pt = p(es), p(et)
    ref = sum(float(pt[i, j] * math.log((pt[i, j] + 1e-7) / (ps[i, j] + 1e-7)))
              for i in range(4) for j in range(4)) / 4  # fmt: skip
    assert spatial.pkt(es, et).item() == pytest.approx(ref, rel=1e-4)
    assert abs(spatial.pkt(es, es).item()) < 1e-6


def test_deit_losses():
    zd, zt = torch.randn(6, 10), torch.randn(6, 10)
    hard = spatial.deit_distillation(zd, zt, hard=True)
    assert hard.item() == pytest.approx(F.cross_entropy(zd, zt.argmax(-1)).item())
    t = 3.0
    pt = F.softmax(zt / t, -1)
    ref = (pt * (pt.log() - F.log_softmax(zd / t, -1))).sum(-1).mean() * t * t
    assert spatial.deit_distillation(zd, zt, hard=False, temperature=t).item() == pytest.approx(
        ref.item(), rel=1e-5)  # fmt: skip
    assert abs(spatial.deit_distillation(zt, zt, hard=False).item()) < 1e-6


def test_at_group_term_reads_the_maps_before_pooling():
    torch.manual_seed(0)
    t, s = build_model("cnn:large"), build_model("cnn:small")
    x = torch.randn(4, 1, 28, 28)
    cfg = [LossTermConfig(name="at_group", teacher_layer=0, student_layer=0)]
    (term,) = build_terms(cfg, geometry(t.config), geometry(s.config))
    t_taps, s_taps = term.taps()
    with FeatureCapture(t, t_taps) as tc, FeatureCapture(s, s_taps) as sc:
        t(x), s(x)
    got = term(tc.taps, sc.taps, torch.zeros(4, dtype=torch.long))["at"]
    ft = t.stages[0][1](t.stages[0][0](x))  # teacher: two conv blocks, then pooling
    fs = s.stages[0][0](x)  # student: one conv block
    assert ft.shape[-1] == fs.shape[-1] == 28
    assert torch.allclose(got, spatial.at_loss(fs, ft))
