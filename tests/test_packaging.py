"""A non-editable install ships the recipes: build the wheel from a copy of the source, unpack it
(what ``pip install`` puts in site-packages) and run the CLI from it, away from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_recipes_and_runs_them_by_name(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src-copy"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
             "-q", "-w", str(wheels)]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("attnkd-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    shipped = sorted(p.name for p in (ROOT / "recipes").glob("*.yaml"))
    assert sorted(p.name for p in (site / "attnkd" / "recipes").glob("*.yaml")) == shipped

    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "attnkd", *argv], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    probe = cli("ls", "recipes")
    assert probe.returncode == 0, probe.stderr
    for name in shipped:
        assert name in probe.stdout
    where = subprocess.run([sys.executable, "-c", "import attnkd; print(attnkd.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where  # the unpacked wheel, not src/
    ok = cli("validate", "minilm-sentence", "--no-data", "--no-models")
    assert ok.returncode == 0 and "minilm-sentence: OK" in ok.stdout, ok.stderr
