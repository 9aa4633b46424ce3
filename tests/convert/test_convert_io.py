"""Converted models save (safetensors + conversion.json) and load without training code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from convert_helpers import batch, tiny_bert, tiny_llama

from attnkd.convert import (
    ConversionSpec,
    convert_attention,
    converted_modules,
    load_converted,
    save_converted,
)
from attnkd.errors import AttnkdError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _perturbed(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".mixer." in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("make,vocab", [(tiny_bert, 50), (tiny_llama, 60)])
@pytest.mark.parametrize("kind", ["linear", "hybrid", "shared", "sparse"])
def test_round_trip_reproduces_outputs(tmp_path, make, vocab, kind):
    share = {2: 1} if kind == "shared" else None
    spec = ConversionSpec(kind=kind, window=4, layers=[1], share=share, topk=5, rank=3)
    student = _perturbed(convert_attention(make(), spec))
    folder = save_converted(student, tmp_path / "conv")
    record = json.loads((folder / "conversion.json").read_text())
    layers = [1, 2] if kind == "shared" else [1]
    assert record["conversion"] == {
        "kind": kind,
        "layers": layers,
        "window": 4,
        "chunk": None,
        "share": {"2": 1} if share else None,
        "topk": 5,
        "rank": 3,
        "terrace": False,
        "sinks": 0,
    }
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "conversion.json",
        "model.safetensors",
    ]
    loaded = load_converted(folder)
    ids, mask = batch(vocab)
    with torch.no_grad():
        a, b = student(ids, attention_mask=mask), loaded(ids, attention_mask=mask)
    key = "logits" if hasattr(a, "logits") else "last_hidden_state"
    torch.testing.assert_close(getattr(b, key), getattr(a, key), atol=0, rtol=0)


def test_terraced_hybrid_round_trip(tmp_path):
    spec = ConversionSpec(kind="hybrid", window=4, terrace=True, sinks=2)
    student = _perturbed(convert_attention(tiny_llama(), spec))
    loaded = load_converted(save_converted(student, tmp_path / "conv"))
    assert all(m.mixer.terrace and m.mixer.sinks == 2 for m in converted_modules(loaded).values())
    ids, mask = batch(60)
    with torch.no_grad():
        a, b = student(ids, attention_mask=mask), loaded(ids, attention_mask=mask)
    torch.testing.assert_close(b.logits, a.logits, atol=0, rtol=0)


def test_loading_imports_no_training_code(tmp_path):
    student = _perturbed(convert_attention(tiny_llama(), ConversionSpec(kind="hybrid", window=4)))
    folder = save_converted(student, tmp_path / "conv")
    ids, _ = batch(60)
    with torch.no_grad():
        want = student(ids).logits[0, -1].tolist()
    script = (
        "import sys, json, torch\n"
        "from attnkd.convert import load_converted\n"
        f"m = load_converted({str(folder)!r})\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        "with torch.no_grad():\n"
        "    out = m(ids).logits[0, -1].tolist()\n"
        "bad = [n for n in sys.modules if n.startswith(('attnkd.engine', 'attnkd.losses',"
        " 'attnkd.distill', 'attnkd.convert.transfer'))]\n"
        "print(json.dumps({'out': out, 'bad': bad}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["bad"] == []
    torch.testing.assert_close(torch.tensor(got["out"]), torch.tensor(want), atol=1e-6, rtol=0)


def test_save_needs_a_converted_model_and_load_a_converted_folder(tmp_path):
    with pytest.raises(AttnkdError, match="no conversion"):
        save_converted(tiny_bert(), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(AttnkdError, match="not a converted model"):
        load_converted(tmp_path)
    (tmp_path / "conversion.json").write_text('{"format": "other"}')
    with pytest.raises(AttnkdError, match="expected format"):
        load_converted(tmp_path)
