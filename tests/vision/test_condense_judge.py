"""The condensation judge (ConvNet-3), siamese augmentation and judging with several seeds."""

import json

import pytest
import torch
from vision_helpers import write_tiny_fmnist

from attnkd.capture.images import FeatureCapture, VisionTap
from attnkd.vision.condense import LOW, CondenseConfig, siamese_augment
from attnkd.vision.condense_run import run_condense
from attnkd.vision.models import build_model
from attnkd.vision.prune import prune_channels


def test_judge_is_convnet3_with_a_flattened_head():
    net = build_model("cnn:condense")
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(128, 128)] * 3  # instance norm
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in net.modules()) == 3
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    assert net.head.in_features == 128 * 3 * 3  # 28 -> 14 -> 7 -> 3, flattened
    taps = [VisionTap("fmap", i) for i in range(3)] + [VisionTap("embedding")]
    with FeatureCapture(net, taps) as cap:
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert [tuple(cap.taps.get("fmap", i).shape) for i in range(3)] == [
        (2, 128, 14, 14), (2, 128, 7, 7), (2, 128, 3, 3)]  # fmt: skip
    assert cap.taps.get("embedding").shape == (2, 1152)


def test_pruning_refuses_a_flattened_head():
    with pytest.raises(ValueError, match="global-average-pool"):
        prune_channels(build_model("cnn:condense-micro"), 0.5)


def _naive_shift(x, dy, dx):
    out = torch.full_like(x, LOW)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            si, sj = i - dy, j - dx
            if 0 <= si < h and 0 <= sj < w:
                out[..., i, j] = x[..., si, sj]
    return out


@pytest.mark.parametrize("dy,dx,flip", [(0, 0, False), (2, -3, False), (-1, 3, True), (3, 0, True)])
def test_siamese_augment_matches_a_naive_shift_and_flip(dy, dx, flip):
    torch.manual_seed(1)
    x = torch.randn(3, 1, 9, 8)
    want = _naive_shift(x, dy, dx)
    want = want.flip(-1) if flip else want
    assert torch.equal(siamese_augment(x, dy, dx, flip), want)


def test_siamese_augment_is_differentiable_and_the_same_for_both_batches():
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    y = siamese_augment(x, 1, -2, True)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.sum().item() == pytest.approx(2 * 27 * 26)  # pixels that stay in the frame
    a = torch.randn(4, 1, 28, 28)
    assert torch.equal(siamese_augment(a, 2, 1, False)[:2], siamese_augment(a[:2], 2, 1, False))


def test_run_condense_records_every_judge(tmp_path):
    torch.set_num_threads(1)
    d = write_tiny_fmnist(tmp_path / "d", 100, 40)
    cfg = CondenseConfig("datadam", images_per_class=1, iterations=2, real_batch=4,
                         net="cnn:condense-micro")  # fmt: skip
    res = run_condense(cfg, tmp_path / "o", str(d), eval_steps=3, judge_seeds=[0, 1, 2])
    assert len(res["test_accuracies"]) == 3 and res["judge_seeds"] == [0, 1, 2]
    assert res["test_accuracy"] == pytest.approx(sum(res["test_accuracies"]) / 3)
    assert res["test_accuracy_std"] is not None and res["judge_net"] == "cnn:condense-micro"
    saved = json.loads((tmp_path / "o" / "condense-datadam-ipc1-s0" / "results.json").read_text())
    assert saved["test_accuracies"] == res["test_accuracies"]
    assert saved["config"]["augment"] is True
