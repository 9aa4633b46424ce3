"""Shared fixtures of the condensation-plan tests (scripts/vision_condense*.py)."""

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """The plan's runs/ folder pointed at an empty temporary one."""
    import vision_condense as plan

    monkeypatch.setattr(plan, "RUNS", tmp_path)
    return tmp_path
