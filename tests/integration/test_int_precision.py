"""Mixed precision and placement in the distillation runner on the tiny models: losses in float32
under bf16 autocast, the chunked autograd functions never downcast, a bf16 teacher, a short bf16
run; and --overwrite reporting only what the new run trained (D2)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from int_helpers import tiny_bert
from safetensors.torch import load_file

from attnkd.capture import Capture
from attnkd.config.schema import LossTermConfig
from attnkd.distill import Distiller, float32_taps, make_step, run_distill
from attnkd.losses import relation_kl, token_divergence
from attnkd.losses.terms import build_terms, collect_taps
from attnkd.models.adapters import geometry
from attnkd.models.load import freeze
from attnkd.students.build import build_student

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TERMS = [
    LossTermConfig(name="relation", relations=["qq", "vv"], impl="chunked"),
    LossTermConfig(name="hidden_mse", projector=True, teacher_layer=2, student_layer=1),
    LossTermConfig(name="sentence_mse", projector=True),
]


def _distiller(teacher_dtype=None):
    teacher = freeze(tiny_bert(seed=0))
    student, _ = build_student(teacher, [0, 3], hidden_size=16, num_heads=2, intermediate_size=32)
    terms = build_terms(TERMS, geometry(teacher.config), geometry(student.config))
    if teacher_dtype is not None:
        teacher.to(teacher_dtype)
    return teacher, Distiller(student.train(), terms)


def test_bf16_step_computes_every_loss_in_float32(batch):
    teacher, distiller = _distiller()
    distiller.student.eval()  # no dropout: the reference below repeats the same forwards
    step = make_step(teacher, distiller)
    with torch.autocast("cpu", torch.bfloat16):
        out = step(batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert set(out.terms) == {"relation@3>1/qq", "relation@3>1/vv", "hidden_mse@2>1/mse",
                              "sentence_mse@3>1/mse"}  # fmt: skip
    out.loss.backward()
    grads = [p.grad for p in distiller.parameters() if p.grad is not None]
    assert len(grads) > 10 and all(g.dtype == torch.float32 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)

    # Reference: the same autocast forwards, then the terms on float32 copies with autocast off.
    t_taps, s_taps = collect_taps(distiller.terms)
    with torch.autocast("cpu", torch.bfloat16):
        with torch.no_grad(), Capture(teacher, t_taps) as ct:
            teacher(**batch)
        with Capture(distiller.student, s_taps) as cs:
            distiller.student(**batch)
    assert any(x.dtype == torch.bfloat16 for x in cs.taps.tensors.values())  # really half
    t, s = float32_taps(ct.taps), float32_taps(cs.taps)
    mask = batch["attention_mask"].bool()
    want = sum(term.weight * v for term in distiller.terms for v in term(t, s, mask).values())
    assert torch.equal(out.loss.detach(), want.detach())


def test_chunked_functions_are_not_downcast_by_autocast():
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(2, 9, 8, generator=g).bfloat16() for _ in range(4)]
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    plain = relation_kl(*x, num_relation_heads=2, mask=mask, impl="chunked")
    with torch.autocast("cpu", torch.bfloat16):
        cast = relation_kl(*x, num_relation_heads=2, mask=mask, impl="chunked")
    assert plain.dtype == cast.dtype == torch.float32 and torch.equal(plain, cast)

    zs = torch.randn(2, 5, 64, generator=g).bfloat16().requires_grad_()
    zt = torch.randn(2, 5, 64, generator=g).bfloat16()
    plain = token_divergence(zs, zt, impl="chunked", chunk_size=3)
    with torch.autocast("cpu", torch.bfloat16):
        cast = token_divergence(zs, zt, impl="chunked", chunk_size=3)
    assert torch.equal(plain, cast)
    (grad,) = torch.autograd.grad(cast, zs)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()


def test_bf16_teacher_feeds_float32_losses(batch):
    teacher, distiller = _distiller(teacher_dtype=torch.bfloat16)
    assert next(teacher.parameters()).dtype == torch.bfloat16
    out = make_step(teacher, distiller)(batch)  # no autocast: a half teacher, a float32 student
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in distiller.parameters() if p.grad is not None)


def test_short_bf16_run_with_a_bf16_teacher(make_cfg):
    cfg = make_cfg("name=bf16", "train.precision=bf16", "train.teacher_dtype=bf16",
                   "train.device=cpu", "train.max_steps=4", "train.eval_every=2")  # fmt: skip
    results = run_distill(cfg, progress=False)
    assert results["train"]["steps"] == 4
    s, t = results["student"]["spearman"], results["teacher"]["spearman"]
    assert math.isfinite(s) and math.isfinite(t)
    run = Path(cfg.output_dir) / cfg.name
    weights = load_file(run / "student" / "model.safetensors")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())


def test_unavailable_device_fails_before_anything_loads(make_cfg):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from attnkd.errors import ConfigError

    cfg = make_cfg("name=nocuda", "train.device=cuda")
    with pytest.raises(ConfigError, match="train.device"):
        run_distill(cfg, progress=False)
    assert not (Path(cfg.output_dir) / "nocuda").exists()


def test_overwrite_with_zero_steps_reports_and_exports_the_student_as_built(make_cfg):
    """D2: the old run's checkpoints/best was loaded and exported as the 'new' student."""
    trained_cfg = make_cfg("name=d2")
    run_distill(trained_cfg, progress=False)
    run = Path(trained_cfg.output_dir) / "d2"
    trained = load_file(run / "student" / "model.safetensors")
    assert (run / "checkpoints" / "best").is_dir()

    baseline = make_cfg("name=baseline-d2", "train.max_steps=0")  # the student as built
    want = run_distill(baseline, progress=False)
    built = load_file(Path(baseline.output_dir) / "baseline-d2" / "student" / "model.safetensors")

    (run / "eval-stsb_dev.json").write_text("{}")  # what `attnkd eval` / `report` left
    (run / "report").mkdir()
    again = make_cfg("name=d2", "train.max_steps=0")
    got = run_distill(again, progress=False, overwrite=True)
    exported = load_file(run / "student" / "model.safetensors")
    assert all(torch.equal(exported[k], built[k]) for k in built)
    assert not all(torch.equal(exported[k], trained[k]) for k in trained)
    assert got["student"]["spearman"] == want["student"]["spearman"]
    assert got["student"]["best_step"] is None and got["train"]["steps"] == 0
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    assert not (run / "eval-stsb_dev.json").exists() and not (run / "report").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_step_under_autocast_gives_float32_losses(batch, dtype):
    teacher, distiller = _distiller(teacher_dtype=dtype)
    teacher.cuda()
    distiller.cuda()
    step = make_step(teacher, distiller)
    cuda_batch = {k: v.cuda() for k, v in batch.items()}
    with torch.autocast("cuda", dtype):
        out = step(cuda_batch)
    assert out.loss.device.type == "cuda" and out.loss.dtype == torch.float32
    out.loss.backward()
    grads = [p.grad for p in distiller.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_short_cuda_run(make_cfg):
    cfg = make_cfg("name=cuda", "train.device=cuda", "train.precision=bf16", "train.max_steps=4")
    results = run_distill(cfg, progress=False)
    assert results["train"]["steps"] == 4
    assert math.isfinite(results["student"]["spearman"])
