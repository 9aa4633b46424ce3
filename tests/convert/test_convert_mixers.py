"""Each mixer equals its naive quadratic definition; chunked == naive; recurrent == parallel."""

from __future__ import annotations

import pytest
import torch
from convert_helpers import naive_mix

from attnkd.convert import (
    HedgehogFeatureMap,
    HybridAttention,
    LinearAttention,
    MixerState,
    WindowAttention,
    banded_attention,
)

B, H, HKV, S, D = 2, 4, 2, 37, 8


def _inputs(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, S, D, generator=g) * scale
    k = torch.randn(B, HKV, S, D, generator=g) * scale
    v = torch.randn(B, HKV, S, D, generator=g)
    return q, k, v


def _padding(left: bool) -> torch.Tensor:
    m = torch.ones(B, S, dtype=torch.bool)
    if left:
        m[1, :9] = False
    else:
        m[1, -9:] = False
    return m


def _perturb(mixer, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return mixer


def _real_rows(y, mask):
    return y if mask is None else y[mask[:, None, :, None].expand_as(y)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_linear_equals_naive(causal, padding, chunk):
    q, k, v = _inputs()
    mask = None if padding is None else _padding(padding == "left")
    mixer = _perturb(LinearAttention(H, HKV, D, causal, chunk=chunk))
    y = mixer(q, k, v, mask)
    fq, fk = mixer.feature_q(q), mixer.feature_k(k)
    ref = naive_mix(None, None, v, fq, fk, 0, causal, mask)
    torch.testing.assert_close(
        _real_rows(y.double(), mask), _real_rows(ref, mask), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("kind", ["window", "hybrid"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("window,chunk", [(1, 4), (4, 4), (7, 3), (16, None), (50, None), (6, 40)])
def test_window_and_hybrid_equal_naive(kind, causal, padding, window, chunk):
    q, k, v = _inputs()
    mask = None if padding is None else _padding(padding == "left")
    cls = WindowAttention if kind == "window" else HybridAttention
    mixer = _perturb(cls(H, HKV, D, causal, window=window, chunk=chunk))
    y = mixer(q, k, v, mask)
    if kind == "hybrid":
        fq, fk = mixer.feature_q(q), mixer.feature_k(k)
        ref = naive_mix(q, k, v, fq, fk, window, causal, mask, mixer.gamma().detach())
    else:
        ref = naive_mix(q, k, v, None, None, window, causal, mask)
    torch.testing.assert_close(
        _real_rows(y.double(), mask), _real_rows(ref, mask), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("kind", ["window", "hybrid"])
@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize("window", [1, 4, 5, 16, 50])
def test_terraced_window_equals_naive(kind, padding, window):
    q, k, v = _inputs()
    mask = None if padding is None else _padding(padding == "left")
    cls = WindowAttention if kind == "window" else HybridAttention
    mixer = _perturb(cls(H, HKV, D, True, window=window, terrace=True))
    y = mixer(q, k, v, mask)
    fq = fk = gamma = None
    if kind == "hybrid":
        fq, fk, gamma = mixer.feature_q(q), mixer.feature_k(k), mixer.gamma().detach()
    ref = naive_mix(q, k, v, fq, fk, window, True, mask, gamma, terrace=True)
    torch.testing.assert_close(
        _real_rows(y.double(), mask), _real_rows(ref, mask), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize("kind", ["window", "hybrid"])
@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize(
    "window,chunk,terrace",
    [(4, 4, True), (5, 5, True), (7, 3, False), (4, None, False), (16, None, True)],
)
@pytest.mark.parametrize("sinks", [1, 3])
def test_sinks_equal_naive(kind, padding, window, chunk, terrace, sinks):
    q, k, v = _inputs()
    mask = None if padding is None else _padding(padding == "left")
    cls = WindowAttention if kind == "window" else HybridAttention
    mixer = _perturb(cls(H, HKV, D, True, window=window, chunk=chunk, terrace=terrace,
                         sinks=sinks))  # fmt: skip
    y = mixer(q, k, v, mask)
    fq = fk = gamma = None
    if kind == "hybrid":
        fq, fk, gamma = mixer.feature_q(q), mixer.feature_k(k), mixer.gamma().detach()
    ref = naive_mix(q, k, v, fq, fk, window, True, mask, gamma, terrace=terrace, sinks=sinks)
    torch.testing.assert_close(
        _real_rows(y.double(), mask), _real_rows(ref, mask), atol=1e-5, rtol=1e-4
    )


@pytest.mark.parametrize(
    "terrace,sinks,padding",
    [(False, 0, None), (True, 2, "left"), (False, 3, "right"), (True, 0, "right")],
)
def test_groups_of_chunks_give_the_same_output(monkeypatch, terrace, sinks, padding):
    """One chunk per group, a few, or all at once: the same numbers (and naive ones)."""
    import attnkd.convert._band as band

    q, k, v = _inputs(seed=6)
    mask = None if padding is None else _padding(padding == "left")
    mixer = _perturb(HybridAttention(H, HKV, D, True, window=4, terrace=terrace, sinks=sinks))
    outs = []
    for group_bytes in (1, 3 * 4 * B * HKV * 2 * 4 * 14, 1 << 30):
        monkeypatch.setattr(band, "GROUP_BYTES", group_bytes)
        outs.append(mixer(q, k, v, mask))
    fq, fk = mixer.feature_q(q), mixer.feature_k(k)
    ref = naive_mix(q, k, v, fq, fk, 4, True, mask, mixer.gamma().detach(), terrace=terrace,
                    sinks=sinks)  # fmt: skip
    for y in outs:
        torch.testing.assert_close(
            _real_rows(y.double(), mask), _real_rows(ref, mask), atol=1e-5, rtol=1e-4
        )


def test_terraced_window_sees_more_than_the_sliding_one_and_needs_causal_tiles():
    q, k, v = _inputs()
    slide = WindowAttention(H, HKV, D, True, window=4)(q, k, v)
    tiles = WindowAttention(H, HKV, D, True, window=4, terrace=True)(q, k, v)
    torch.testing.assert_close(tiles[:, :, :4], slide[:, :, :4])  # tile 0: the same keys
    for i in range(4, 8):  # tile 1 also sees all of tile 0
        assert not torch.allclose(tiles[:, :, i], slide[:, :, i])
    with pytest.raises(ValueError, match="terraced"):
        WindowAttention(H, HKV, D, False, window=4, terrace=True)
    with pytest.raises(ValueError, match="terraced"):
        HybridAttention(H, HKV, D, True, window=4, chunk=2, terrace=True)


def test_window_covering_everything_is_softmax_attention():
    q, k, v = _inputs()
    for causal in (True, False):
        y = WindowAttention(H, HKV, D, causal, window=S)(q, k, v)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=causal
        )
        torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_hybrid_is_stable_for_large_scores():
    """Scores of +-200 overflow a plain exp; the shared exp(-m) keeps the output finite."""
    q, k, v = _inputs(scale=12.0)
    mixer = HybridAttention(H, HKV, D, True, window=4)
    y = mixer(q, k, v)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters())


def test_feature_map_starts_at_identity_and_is_a_pair_of_distributions():
    fm = HedgehogFeatureMap(H, D)
    x = torch.randn(1, H, 3, D)
    f = fm(x)
    assert f.shape == (1, H, 3, 2 * D)
    torch.testing.assert_close(f[..., :D], torch.softmax(x, -1))
    torch.testing.assert_close(f[..., D:], torch.softmax(-x, -1))
    with pytest.raises(ValueError, match="expects"):
        fm(torch.randn(1, H + 1, 3, D))


KINDS = ["linear", "window", "hybrid", "window-terrace", "hybrid-terrace", "hybrid-sinks",
         "hybrid-terrace-sinks", "window-terrace-sinks"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prompt", [1, 6, 20])
@pytest.mark.parametrize("left", [True, False])
def test_recurrent_decoding_equals_parallel_token_for_token(kind, prompt, left):
    q, k, v = _inputs(seed=3)
    mask = _padding(left=True) if left else None  # generation pads on the left
    if kind == "linear":
        mixer = LinearAttention(H, HKV, D, True, chunk=8)
    else:
        cls = WindowAttention if kind.startswith("window") else HybridAttention
        mixer = cls(H, HKV, D, True, window=5, terrace="terrace" in kind,
                    sinks=3 if "sinks" in kind else 0)  # fmt: skip
    _perturb(mixer)
    if mask is None:
        mask = torch.ones(B, S, dtype=torch.bool)
    with torch.no_grad():
        full = mixer(q, k, v, mask)
        state = MixerState()
        outs = [
            mixer.step(
                q[:, :, :prompt], k[:, :, :prompt], v[:, :, :prompt], mask[:, :prompt], state
            )
        ]
        for t in range(prompt, S):
            sl = slice(t, t + 1)
            outs.append(mixer.step(q[:, :, sl], k[:, :, sl], v[:, :, sl], mask[:, sl], state))
    got = torch.cat(outs, dim=2)
    assert state.seen == S
    torch.testing.assert_close(_real_rows(got, mask), _real_rows(full, mask), atol=1e-5, rtol=1e-4)
    # the state does not grow with the context: window buffer plus fixed-size sums
    if mixer.sinks:
        assert state.sink_keys.shape[2] == mixer.sinks
    if kind != "linear":  # terraced: the newest key's tile and the one before it
        assert state.keys.shape[2] == min(S, mixer.window_keys(S - 1))
        assert state.keys.shape[2] <= (2 * mixer.window - 1 if mixer.terrace else mixer.window)
    else:
        assert state.keys.shape[2] == 0


@pytest.mark.parametrize("terrace,sinks", [(False, 0), (True, 0), (True, 2), (False, 3)])
def test_gradients_equal_those_of_the_naive_form(terrace, sinks):
    q, k, v = _inputs(seed=4)
    mask = _padding(False)
    mixer = _perturb(HybridAttention(H, HKV, D, True, window=4, terrace=terrace, sinks=sinks))
    w = torch.randn(B, H, S, D, generator=torch.Generator().manual_seed(5)).double()
    (mixer(q, k, v, mask).double() * w).sum().backward()
    got = [p.grad.clone() for p in mixer.parameters()]
    mixer.zero_grad()
    fq, fk = mixer.feature_q(q), mixer.feature_k(k)
    ref = naive_mix(q, k, v, fq, fk, 4, True, mask, mixer.gamma(), terrace=terrace, sinks=sinks)
    (ref * w).sum().backward()
    for a, b in zip(got, (p.grad for p in mixer.parameters()), strict=True):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-3)


def test_gradients_reach_feature_maps_and_gamma():
    q, k, v = _inputs()
    mixer = HybridAttention(H, HKV, D, True, window=4)
    mixer(q, k, v, _padding(False)).square().mean().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_banded_needs_a_part():
    _, _, v = _inputs()
    with pytest.raises(ValueError, match="window part"):
        banded_attention(None, None, v, None, None, 0, True)
