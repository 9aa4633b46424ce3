"""Fixtures of the LM-data tests: one intra-op thread, a tiny Llama teacher folder and text."""

from __future__ import annotations

import pytest
from lm_fixtures import write_model, write_text

from tiny_lms import single_thread

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


@pytest.fixture(scope="module")
def lm_root(tmp_path_factory):
    """(teacher folder, text file, runs folder) shared by a test module."""
    root = tmp_path_factory.mktemp("lmdata")
    teacher = write_model(root / "tiny-llama")
    text = write_text(root / "story.txt")
    return teacher, text, root / "runs"
