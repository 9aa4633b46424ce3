"""Fixtures for the integration tests: the shared ones (int_fixtures.py: tiny tokenizer, tiny
BERT teacher folder, tiny data folder, fast-run overrides) plus a tiny MPNet folder, a padded
batch and configs for fast distillation runs (see int_helpers.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from int_fixtures import (  # noqa: F401 (fixtures)
    _one_thread,
    base_overrides,
    data_dir,
    teacher_dir,
    tokenizer,
    vocab_file,
)
from int_helpers import make_sentence, tiny_mpnet


@pytest.fixture(scope="session")
def mpnet_dir(tmp_path_factory) -> Path:
    """A local model folder holding a tiny MPNet (no tokenizer)."""
    folder = tmp_path_factory.mktemp("models") / "tiny-mpnet"
    tiny_mpnet(seed=1).save_pretrained(folder)
    return folder


@pytest.fixture
def batch(tokenizer) -> dict[str, torch.Tensor]:  # noqa: F811 (the imported fixture)
    """Three sentences of different lengths, padded (so the mask has zeros)."""
    rng = random.Random(3)
    sentences = [make_sentence(rng), "a dog .", make_sentence(rng) + " and the cat is sitting"]
    enc = tokenizer(sentences, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any()
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.fixture
def make_cfg(base_overrides) -> Callable:  # noqa: F811 (the imported fixture)
    """``make_cfg(*overrides)`` -> DistillConfig of the fast run with extra overrides."""
    from attnkd.config.io import apply_overrides
    from attnkd.config.schema import default_recipe

    def make(*extra: str):
        return apply_overrides(default_recipe(), [*base_overrides, *extra])

    return make
