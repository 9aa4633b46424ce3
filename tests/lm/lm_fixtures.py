"""Tiny teacher folders (Llama with GQA + RoPE, GPT-2), a word-level tokenizer and a text file
for the LM-data tests (cache, seqkd, DPO), and the overrides of a fast causal_lm run."""

from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = ["a", "the", "man", "woman", "dog", "cat", "is", "are", "big", "small", "red", "blue",
         "playing", "eating", "running", "sitting", "in", "on", "park", "street", "garden",
         "and", "with", "ball", "food", "."]  # fmt: skip


def make_tokenizer():
    """A whitespace word-level fast tokenizer over ``<unk> <s> </s> + WORDS``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<unk>", "<s>", "</s>", *WORDS]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def tiny_llama(vocab: int, seed: int = 0, layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
        rope_theta=100.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True, initializer_range=0.2,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(vocab: int, seed: int = 0, layers: int = 3):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4, n_positions=128,
                     bos_token_id=1, eos_token_id=2, initializer_range=0.2)  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def sentence(rng: random.Random) -> str:
    words = ["the", rng.choice(["big", "small", "red"]), rng.choice(["man", "dog", "cat"]),
             "is", rng.choice(["playing", "eating", "sitting"]), "in", "the",
             rng.choice(["park", "street", "garden"]), "."]  # fmt: skip
    return " ".join(words)


def write_model(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    tok = make_tokenizer()
    model = (tiny_llama if family == "llama" else tiny_gpt2)(len(tok), seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_text(path: Path, n: int = 240, seed: int = 5) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(sentence(rng) for _ in range(n)) + "\n", encoding="utf-8")
    return path


def run_overrides(teacher: Path, text: Path, runs: Path, name: str = "tiny-lm") -> list[str]:
    """A fast causal_lm run: student = teacher layers {0, 2}, forward KL only, 6 steps."""
    return [
        f"name={name}", "task=causal_lm", f"output_dir={runs}", f"teacher.name={teacher}",
        "student.layers=[0, 2]", "losses=[{name: logits, kind: fkl}]",
        f"data.train_sources=[file:{text}]", "data.max_length=16", "data.val_fraction=0.1",
        "data.eval_fraction=0.1", "train.max_steps=6", "train.max_minutes=null",
        "train.eval_every=3", "train.save_every=3", "train.batch_size=4", "train.log_every=1",
        "train.lr=3e-3", "train.warmup_ratio=0.0", "train.freeze_embeddings=false",
    ]  # fmt: skip
