"""Condensation options: the per-image step (scale_lr), the held-out selection slice, bad values."""

import json

import pytest
import torch
from vision_helpers import write_tiny_fmnist

from attnkd.cli import main
from attnkd.errors import ConfigError
from attnkd.vision.condense import CondenseConfig, condense
from attnkd.vision.condense_run import hold_out, run_condense
from attnkd.vision.idx import load_fashion_mnist


@pytest.fixture
def tiny(tmp_path):
    torch.set_num_threads(1)
    return write_tiny_fmnist(tmp_path / "d", 100, 40)


def _cfg(**kw):
    base = dict(method="dm", images_per_class=4, iterations=3, real_batch=4,
                net="cnn:condense-micro")  # fmt: skip
    return CondenseConfig(**{**base, **kw})


def test_scale_lr_is_the_lr_times_images_per_class(tiny):
    data = load_fashion_mnist("train", tiny)
    scaled = condense(data, _cfg(lr=0.05, scale_lr=True))
    by_hand = condense(data, _cfg(lr=0.2))
    plain = condense(data, _cfg(lr=0.05))
    assert torch.allclose(scaled.images, by_hand.images, atol=1e-6)
    assert scaled.moved > 2 * plain.moved > 0  # the same gradients, four times the step
    one = _cfg(images_per_class=1, lr=0.05)
    assert torch.equal(condense(data, one).images,
                       condense(data, _cfg(images_per_class=1, lr=0.05, scale_lr=True)).images)


@pytest.mark.parametrize("field,value", [("method", "dam"), ("images_per_class", 0),
                                         ("lr", 0.0), ("real_batch", 0), ("power", -1.0),
                                         ("iterations", -1), ("attention_weight", -1.0)])
def test_bad_values_name_the_field(tiny, field, value):
    data = load_fashion_mnist("train", tiny)
    with pytest.raises(ConfigError, match=field):
        condense(data, _cfg(**{field: value}))


def test_too_few_images_in_a_class_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match="class 0 has only 10 images"):
        condense(load_fashion_mnist("train", tiny), _cfg(images_per_class=11))


def test_hold_out_takes_the_last_images(tiny):
    data = load_fashion_mnist("train", tiny)
    rest, val = hold_out(data, 30)
    assert len(rest) == 70 and len(val) == 30
    assert torch.equal(val.images, data.images[70:]) and torch.equal(rest.labels, data.labels[:70])
    assert hold_out(data, 0) == (data, None)
    for bad in (-1, 100):
        with pytest.raises(ConfigError, match="val_images"):
            hold_out(data, bad)


def test_select_scores_only_the_held_out_slice_and_never_reads_the_test_set(tiny, tmp_path):
    for f in tiny.glob("t10k-*"):
        f.unlink()  # a selection run must not need (or touch) the test set
    cfg = _cfg(images_per_class=2, iterations=2)
    res = run_condense(cfg, tmp_path / "o", str(tiny), eval_steps=2, judge_seeds=[0, 1],
                       val_images=20, select=True)  # fmt: skip
    assert res["test_accuracy"] is None and res["test_accuracies"] == [] and res["select"]
    assert len(res["val_accuracies"]) == 2 and 0 <= res["val_accuracy"] <= 1
    assert res["condensed_from_images"] == 80 and res["val_images"] == 20
    saved = json.loads((tmp_path / "o" / "condense-dm-ipc2-s0" / "results.json").read_text())
    assert saved["val_accuracies"] == res["val_accuracies"]


def test_final_run_scores_test_and_val_and_condenses_without_the_slice(tiny, tmp_path):
    res = run_condense(_cfg(method="random", images_per_class=1), tmp_path / "o", str(tiny),
                       eval_steps=2, val_images=50)  # fmt: skip
    assert len(res["test_accuracies"]) == 1 and len(res["val_accuracies"]) == 1
    data = load_fashion_mnist("train", tiny)
    from safetensors.torch import load_file

    picked = load_file(str(tmp_path / "o" / "condense-random-ipc1-s0" / "synthetic.safetensors"))
    held = ((data.images[50:].float() / 255 - 0.2860) / 0.3530)
    for img in picked["images"]:  # every start image comes from the first 50, none from the slice
        assert not any(torch.allclose(img, h, atol=1e-5) for h in held)


@pytest.mark.parametrize("extra,needle", [(["--select"], "val_images >= 1"),
                                          (["--val-images", "100"], "val_images"),
                                          (["--lr", "-1"], "'lr'"),
                                          (["--eval-steps", "0"], "eval_steps")])
def test_cli_rejects_bad_values_with_exit_2(tiny, tmp_path, capsys, extra, needle):
    rc = main(["condense", "--method", "dm", "--ipc", "1", "--iterations", "1", "--real-batch",
               "2", "--eval-steps", "1", "--image-dir", str(tiny), "--out", str(tmp_path / "o"),
               *extra])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written
