"""Dataset condensation on tiny idx files: shapes, range, decreasing loss, the CLI command."""

import json

import pytest
import torch
from vision_helpers import write_tiny_fmnist

from attnkd.cli import main
from attnkd.vision.condense import HIGH, LOW, CondenseConfig, condense, matching_loss
from attnkd.vision.data import to_float
from attnkd.vision.idx import load_fashion_mnist
from attnkd.vision.models import build_model


@pytest.fixture
def data(tmp_path):
    torch.set_num_threads(1)
    return load_fashion_mnist("train", write_tiny_fmnist(tmp_path / "d", 100, 40))


def _held_out_loss(data, images, method, net, ipc):
    """Mean matching loss of ``images`` over 8 fixed random networks the run never saw."""
    total = 0.0
    for k in range(8):
        torch.manual_seed(10_000 + k)
        m = build_model(net)
        for c in range(10):
            real = to_float(data.images[data.labels == c])
            with torch.no_grad():
                total += float(matching_loss(m, real, images[ipc * c : ipc * (c + 1)], method))
    return total / 8


@pytest.mark.parametrize("method", ["datadam", "dm"])
@pytest.mark.parametrize("augment", [True, False])
def test_loss_decreases_and_images_stay_in_range(data, method, augment):
    cfg = CondenseConfig(method, images_per_class=2, iterations=30, real_batch=8, lr=0.1,
                         net="cnn:condense-micro", augment=augment)  # fmt: skip
    res = condense(data, cfg)
    assert res.images.shape == (20, 1, 28, 28) and res.labels.tolist() == sorted(
        list(range(10)) * 2
    )
    assert float(res.images.min()) >= LOW - 1e-6 and float(res.images.max()) <= HIGH + 1e-6
    start = condense(data, CondenseConfig("random", images_per_class=2)).images  # same picks
    before = _held_out_loss(data, start, method, cfg.net, 2)
    after = _held_out_loss(data, res.images, method, cfg.net, 2)
    assert after < 0.85 * before, (before, after)
    assert res.moved > 0 and len(res.losses) == 30


def test_random_subset_is_real_images(data):
    res = condense(data, CondenseConfig("random", images_per_class=3))
    assert res.images.shape == (30, 1, 28, 28) and not res.losses
    real = (data.images.float() / 255 - 0.2860) / 0.3530
    for img in res.images:
        assert any(torch.allclose(img, r, atol=1e-5) for r in real)


def test_datadam_loss_is_dm_plus_attention_and_zero_for_the_same_batch():
    torch.manual_seed(0)
    net = build_model("cnn:condense")
    x, y = torch.randn(6, 1, 28, 28), torch.randn(3, 1, 28, 28)
    dm, dam = matching_loss(net, x, y, "dm"), matching_loss(net, x, y, "datadam")
    assert dam.item() > dm.item() > 0
    assert matching_loss(net, x, x, "datadam").item() < 1e-10


def test_datadam_attention_term_matches_naive_pre_pooling_maps():
    """datadam − dm = attention_weight · Σ_stages ‖mean Q_real − mean Q_syn‖² of the ReLU outputs
    before each stage's pooling, with Q = Σ_c |F_c|^p flattened and L2-normalised per image."""
    torch.manual_seed(1)
    net = build_model("cnn:condense-micro").requires_grad_(False)
    x, y = torch.randn(5, 1, 28, 28), torch.randn(2, 1, 28, 28)

    def pre_pool(z):
        maps = []
        for stage in net.stages:
            z = stage[0](z)  # conv-norm-ReLU
            maps.append(z)
            z = stage[1](z)  # 2x2 average pooling
        return maps

    for power, weight in ((1.0, 100.0), (4.0, 3.0)):
        expected = 0.0
        for fr, fs in zip(pre_pool(x), pre_pool(y), strict=True):
            qr = [fr[b].abs().pow(power).sum(0).flatten() for b in range(len(fr))]
            qs = [fs[b].abs().pow(power).sum(0).flatten() for b in range(len(fs))]
            er = sum(q / q.norm() for q in qr) / len(qr)
            es = sum(q / q.norm() for q in qs) / len(qs)
            expected += float(((er - es) ** 2).sum())
        dam = matching_loss(net, x, y, "datadam", power, 1.0, weight)
        dm = matching_loss(net, x, y, "dm", power, 1.0, weight)
        assert float(dam - dm) == pytest.approx(weight * expected, rel=1e-4)


def test_condense_command_writes_grid_and_results(tmp_path, data):
    rc = main(["condense", "--method", "dm", "--ipc", "1", "--iterations", "2", "--real-batch",
               "4", "--eval-steps", "2", "--image-dir", str(tmp_path / "d"),
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 0
    folder = tmp_path / "o" / "condense-dm-ipc1-s0"
    res = json.loads((folder / "results.json").read_text())
    assert 0 <= res["test_accuracy"] <= 1 and res["synthetic_images"] == 10
    from PIL import Image

    assert Image.open(folder / "images.png").size == (30, 300)
