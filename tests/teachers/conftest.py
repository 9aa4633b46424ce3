"""The teacher-strategy tests share the vision tests' tiny idx writer."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vision"))
