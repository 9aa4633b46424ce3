"""Tiny random causal LMs (Llama with GQA, GPT-2) built in the test, shared by test modules that
need a teacher and a student of the same vocabulary (``pythonpath = ["tests"]`` in pyproject)."""

from __future__ import annotations

import torch


def tiny_llama(seed: int, vocab: int, layers: int = 2):
    """Random Llama: width 16, 2 query heads sharing 1 KV head, wide init so outputs differ."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        initializer_range=0.5, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def tiny_gpt2(seed: int, vocab: int, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=layers, n_head=2, n_positions=64,
                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(seed)
    return GPT2LMHeadModel(cfg)


def single_thread():
    """Generator for a module fixture (wrap it in ``pytest.fixture(scope="module",
    autouse=True)``): tiny matmuls on a busy shared CPU run far faster on one intra-op thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
