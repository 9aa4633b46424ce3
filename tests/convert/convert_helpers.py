"""Tiny BERT and Llama (GQA, RoPE) models, and naive quadratic forms of the converted attentions."""

from __future__ import annotations

import torch


def tiny_bert(seed: int = 0, attn: str = "sdpa"):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertModel(cfg, add_pooling_layer=False)
    model.set_attn_implementation(attn)
    return model.eval()


def tiny_llama(seed: int = 0, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation(attn)
    return model.eval()


def batch(vocab: int, seq: int = 23, left: bool = False, seed: int = 0):
    """Two sequences; the second has 7 padding positions (left or right)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, seq), generator=g)
    mask = torch.ones(2, seq, dtype=torch.long)
    if left:
        mask[1, :7] = 0
    else:
        mask[1, -7:] = 0
    return ids, mask


def expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def naive_mix(q, k, v, fq, fk, window, causal, key_mask=None, gamma=None, terrace=False, sinks=0):
    """Full (S x S) weights: gamma*exp(s) on window keys, phi.phi on the others, one normaliser.
    ``terrace``: the window of query i is every key j <= i in i's tile of ``window`` positions
    or in the tile before. ``sinks``: keys j < sinks are window keys of every query i >= j.

    Computed in float64 without any max-shift (inputs are small)."""
    h = (q if q is not None else fq).shape[1]
    s_len = v.shape[2]
    i = torch.arange(s_len)[:, None]
    j = torch.arange(s_len)[None, :]
    diff = i - j
    allowed = torch.ones(s_len, s_len, dtype=torch.bool)
    if causal:
        allowed = diff >= 0
    allowed = allowed[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    in_win = (diff.abs() < window) if not causal else (diff >= 0) & (diff < window)
    if terrace:
        in_win = (diff >= 0) & (j // window >= i // window - 1)
    if sinks:
        in_win = in_win | ((diff >= 0) & (j < sinks))
    w = torch.zeros(v.shape[0], h, s_len, s_len, dtype=torch.float64)
    if q is not None and window > 0:
        kk = expand_kv(k, h).double()
        s = q.double() @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5
        e = s.exp()
        if gamma is not None:
            e = e * gamma.double()[None, :, None, None]
        w = w + torch.where(allowed & in_win, e, 0.0)
        lin_allowed = allowed & ~in_win
    else:
        lin_allowed = allowed
    if fq is not None:
        f = fq.double() @ expand_kv(fk, h).double().transpose(-1, -2)
        w = w + torch.where(lin_allowed, f, 0.0)
    y = w @ expand_kv(v, h).double() / w.sum(-1, keepdim=True)
    return y
