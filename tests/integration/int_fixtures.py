"""Fixtures shared by the integration and bad-input tests (imported by their conftest.py):
one intra-op thread, a tiny tokenizer, a tiny BERT teacher folder, a tiny data folder and the
overrides of a fast run (see int_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from int_helpers import VOCAB, fast_overrides, make_tokenizer, tiny_bert, write_data_dir


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
def data_dir(tmp_path_factory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture
def base_overrides(teacher_dir, data_dir, tmp_path) -> list[str]:
    """``key=value`` overrides of a fast run on the tiny teacher and data (see int_helpers)."""
    return fast_overrides(teacher_dir, data_dir, tmp_path / "runs")
