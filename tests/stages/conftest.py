"""Fixtures for the staged-run tests: the integration tests' shared fixtures (a tiny BERT
teacher folder with tokenizer, a tiny data folder and the overrides of a fast run)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from int_fixtures import (  # noqa: E402, F401 (fixtures)
    _one_thread,
    base_overrides,
    data_dir,
    teacher_dir,
    tokenizer,
    vocab_file,
)
