"""The teacher-strategy tests share the vision tests' tiny idx writer and the integration tests'
tiny BERT, tokenizer and data fixtures."""

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_TESTS / "vision"), str(_TESTS / "integration")]

from int_fixtures import (  # noqa: E402, F401 (fixtures)
    _one_thread,
    base_overrides,
    data_dir,
    teacher_dir,
    tokenizer,
    vocab_file,
)
