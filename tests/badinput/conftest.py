"""Fixtures for the bad-input tests: a tiny BERT teacher folder (with tokenizer), a tiny data
folder and the overrides of a fast run, reusing the integration helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from int_helpers import (  # noqa: E402
    VOCAB,
    fast_overrides,
    make_tokenizer,
    tiny_bert,
    write_data_dir,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
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
    folder = tmp_path_factory.mktemp("models") / "tiny-bert"
    tiny_bert(seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_data_dir(tmp_path_factory.mktemp("data"))


@pytest.fixture
def base_overrides(teacher_dir, data_dir, tmp_path) -> list[str]:
    return fast_overrides(teacher_dir, data_dir, tmp_path / "runs")
