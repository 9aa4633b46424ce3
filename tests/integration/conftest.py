"""Fixtures for the integration tests: tiny tokenizer, tiny local model folders (BERT teacher,
MPNet), a tiny data folder, and configs for fast distillation runs (see int_helpers.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from int_helpers import (
    VOCAB,
    fast_overrides,
    make_sentence,
    make_tokenizer,
    tiny_bert,
    tiny_mpnet,
    write_data_dir,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls on a busy shared CPU run ~100x faster on one intra-op thread than on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    return make_tokenizer(vocab_file)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, tokenizer) -> Path:
    """A local model folder: tiny BERT teacher (safetensors) + tokenizer, read-only by tests."""
    folder = tmp_path_factory.mktemp("models") / "tiny-bert"
    tiny_bert(seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def mpnet_dir(tmp_path_factory) -> Path:
    """A local model folder holding a tiny MPNet (no tokenizer)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-mpnet"
    tiny_mpnet(seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture
def batch(tokenizer) -> dict[str, torch.Tensor]:
    """Three sentences of different lengths, padded (so the mask has zeros)."""
    rng = random.Random(3)
    sentences = [make_sentence(rng), "a dog .", make_sentence(rng) + " and the cat is sitting"]
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.fixture
def base_overrides(teacher_dir, data_dir, tmp_path) -> list[str]:
    """``key=value`` overrides of a fast run on the tiny teacher and data (see int_helpers)."""
    return fast_overrides(teacher_dir, data_dir, tmp_path / "runs")


@pytest.fixture
def make_cfg(base_overrides) -> Callable:
    """``make_cfg(*overrides)`` -> DistillConfig of the fast run with extra overrides."""
    from attnkd.config.io import apply_overrides
    from attnkd.config.schema import default_recipe

    def make(*extra: str):
        return apply_overrides(default_recipe(), [*base_overrides, *extra])

    return make
