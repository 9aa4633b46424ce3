"""What ``train.freeze_embeddings`` freezes (the README's "embeddings frozen"): the input word
embedding matrix only; position and token-type embeddings and the embedding LayerNorm train."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from attnkd.distill import run_distill


def test_freeze_embeddings_keeps_the_word_embeddings_only(make_cfg, teacher_dir):
    losses = "losses=[{name: relation}, {name: hidden_mse}]"
    cfg = make_cfg("name=frozen", "train.freeze_embeddings=true", "train.max_steps=3",
                   "train.eval_every=3", losses)  # fmt: skip
    run_distill(cfg, progress=False)
    student = load_file(Path(cfg.output_dir) / cfg.name / "student" / "model.safetensors")
    teacher = load_file(teacher_dir / "model.safetensors")

    def key(name: str) -> str:
        return next(k for k in teacher if k.endswith(name))

    word = key("embeddings.word_embeddings.weight")
    assert torch.equal(student[word], teacher[word])
    for name in ("embeddings.position_embeddings.weight", "embeddings.LayerNorm.weight"):
        assert not torch.equal(student[key(name)], teacher[key(name)]), name
