"""Builders, capture by module path (CNN feature maps, ViT q/k/v), save/load."""

import pytest
import torch

from attnkd.capture import Capture, Tap
from attnkd.capture.images import FeatureCapture, VisionTap
from attnkd.errors import AttnkdError
from attnkd.vision.io import is_image_model, load_image_model, save_image_model
from attnkd.vision.models import build_model

torch.manual_seed(0)


def test_builders_and_student_size():
    def n(name):
        return sum(p.numel() for p in build_model(name).parameters())

    assert n("cnn:teacher") >= 4 * n("cnn:small")
    x = torch.randn(3, 1, 28, 28)
    for name in ("cnn:teacher", "cnn:small", "cnn:tiny", "cnn:condense", "vit:micro"):
        assert build_model(name)(x).shape == (3, 10)


def test_cnn_feature_maps_by_module_path_and_hooks_removed():
    m = build_model("cnn:tiny")
    taps = [VisionTap("fmap", i) for i in range(3)] + [VisionTap("embedding"), VisionTap("logits")]
    with FeatureCapture(m, taps) as cap:
        logits = m(torch.randn(2, 1, 28, 28))
    assert cap.taps.get("fmap", 0).shape == (2, 4, 14, 14)
    assert cap.taps.get("fmap", 2).shape == (2, 8, 7, 7)
    assert cap.taps.get("embedding").shape == (2, 8)
    assert torch.equal(cap.taps.get("logits"), logits)
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in m.modules())
    with pytest.raises(KeyError, match="fmap@1 was not captured"):
        FeatureCapture(m, [VisionTap("fmap", 0)]).taps.get("fmap", 1)
    with pytest.raises(IndexError):
        FeatureCapture(m, [VisionTap("fmap", 5)])


def test_vit_qkv_capture_and_deit_heads():
    m = build_model("vit:micro")  # patch 7: 16 patches + 2 tokens
    taps = [VisionTap(k, 1) for k in ("q", "k", "v", "fmap")] + [VisionTap("dist_logits")]
    with FeatureCapture(m, taps) as cap:
        m(torch.randn(2, 1, 28, 28))
    assert cap.taps.get("q", 1).shape == (2, 18, 16)
    assert cap.taps.get("dist_logits").shape == (2, 10)
    m.eval()
    x = torch.randn(2, 1, 28, 28)
    with FeatureCapture(m, [VisionTap("logits"), VisionTap("dist_logits")]) as cap:
        out = m(x)
    assert torch.allclose(out, (cap.taps.get("logits") + cap.taps.get("dist_logits")) / 2)


def test_vit_qkv_through_the_transformer_capture():
    """The ViT is registered as a model family, so the transformers' q/k/v capture works too."""
    m = build_model("vit:micro")
    with Capture(m, [Tap("q", 0), Tap("v", 1)]) as cap:
        m(torch.randn(2, 1, 28, 28))
    assert cap.taps.get("q", 0).shape == (2, 18, 16)


def test_save_load_round_trip(tmp_path):
    m = build_model("cnn:tiny")
    m.eval()
    save_image_model(m, tmp_path / "m")
    assert is_image_model(str(tmp_path / "m")) and is_image_model("cnn:small")
    m2 = load_image_model(str(tmp_path / "m"))
    m2.eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(m(x), m2(x))
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "m").iterdir())
    with pytest.raises(AttnkdError, match="not a builder"):
        load_image_model(str(tmp_path / "nothing"))


def test_prune_keeps_the_most_important_channels():
    from attnkd.vision.prune import prune_channels

    m = build_model("cnn:tiny")
    m.eval()
    with torch.no_grad():  # make channels 0 and 2 of stage 0 unimportant
        m.stages[0][0][1].weight.copy_(torch.tensor([0.01, 1.0, 0.02, 2.0]))
    p = prune_channels(m, 0.5, "bn")
    assert p.config.widths == [2, 4, 4]
    assert torch.equal(p.stages[0][0][0].weight, m.stages[0][0][0].weight[[1, 3]])
    kept = m.stages[1][0][1].weight.abs().argsort(descending=True)[:4].sort().values
    assert torch.equal(p.stages[1][0][0].weight, m.stages[1][0][0].weight[kept][:, [1, 3]])
    assert sum(x.numel() for x in p.parameters()) < sum(x.numel() for x in m.parameters())
    # zero pruning is the same function
    same = prune_channels(m, 0.0, "l1")
    x = torch.randn(2, 1, 28, 28)
    same.eval()
    assert torch.allclose(same(x), m(x), atol=1e-6)


def test_group_tap_is_the_last_conv_block_before_pooling():
    for name, convs in (("cnn:large", [2, 2, 2]), ("cnn:small", [1, 1, 2])):
        m = build_model(name)
        x = torch.randn(2, 1, 28, 28)
        taps = [VisionTap(k, i) for k in ("group", "fmap") for i in range(3)]
        with FeatureCapture(m, taps) as cap:
            m(x)
        h = x
        for i, stage in enumerate(m.stages):  # naive: run the blocks one by one
            for j, block in enumerate(stage):
                h = block(h)
                if j == convs[i] - 1:
                    assert torch.equal(cap.taps.get("group", i), h)
            assert torch.equal(cap.taps.get("fmap", i), h)
        assert [cap.taps.get("group", i).shape[-1] for i in range(3)] == [28, 14, 7]
        assert [cap.taps.get("fmap", i).shape[-1] for i in range(3)] == [14, 7, 7]
