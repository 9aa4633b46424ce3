"""Judge a condensed set: train a fresh network on it alone, test on the real test set; save it.

:func:`run_condense` is what ``attnkd condense`` runs: condense (or sample), then for each judge
seed train a freshly initialised ``cnn:condense`` network (ConvNet-3, as the papers judge) on the
synthetic images only (with shift/flip augmentation), report its accuracy on the 10k real test
images, and write the run's folder: ``images.png`` (one row per class),
``synthetic.safetensors`` and ``results.json`` (every judge's accuracy, their mean and std).

Selection hygiene: with ``val_images = V`` the LAST V training images are held out (a fixed
slice, the same for every method and seed) and the set is condensed from the rest; the judges are
also scored on the held-out slice. With ``select`` they are scored on that slice ONLY and the
test set is never read: settings (lr, iterations, weights, judge steps) are chosen that way, and
test accuracy is reported only for the settings chosen.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from attnkd.errors import ConfigError
from attnkd.vision.condense import HIGH, LOW, CondenseConfig, check_config, condense
from attnkd.vision.data import accuracy, augment
from attnkd.vision.idx import ImageSet, load_fashion_mnist
from attnkd.vision.models import build_model


def train_on_synthetic(images: Tensor, labels: Tensor, net: str = "cnn:condense",
                       steps: int = 300, lr: float = 0.01, seed: int = 0) -> nn.Module:  # fmt: skip
    """A fresh ``net`` trained on (images, labels) alone: SGD momentum 0.9, weight decay 5e-4,
    learning rate ×0.1 at half and again at three quarters of ``steps``, batches of up to 256
    images (a new shuffle every step) with shift/flip."""
    torch.manual_seed(seed)
    model = build_model(net)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [steps // 2, 3 * steps // 4], 0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(labels), generator=g)[:256]
        x = augment(images[idx], g)
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


def save_grid(images: Tensor, labels: Tensor, path: str | Path, max_per_class: int = 10) -> Path:
    """PNG grid of normalised images (one row per class, up to ``max_per_class`` columns)."""
    from PIL import Image

    classes = sorted(set(labels.tolist()))
    h, w = images.shape[-2:]
    cols = min(max_per_class, max(int((labels == c).sum()) for c in classes))
    canvas = torch.zeros(len(classes) * (h + 2), cols * (w + 2))
    for r, c in enumerate(classes):
        for j, i in enumerate(torch.nonzero(labels == c).flatten()[:cols].tolist()):
            img = (images[i, 0] - LOW) / (HIGH - LOW)
            canvas[r * (h + 2) : r * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = img
    arr = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(arr, mode="L").save(tmp)
    tmp.replace(path)
    return path


def hold_out(train: ImageSet, val_images: int) -> tuple[ImageSet, ImageSet | None]:
    """(the first len − V training images, the last V) for ``val_images = V``; V = 0 gives
    (all, None)."""
    if not 0 <= val_images < len(train):
        raise ConfigError("val_images", f"must be in [0, {len(train)}) (the training images), "
                          f"got {val_images}")  # fmt: skip
    if val_images == 0:
        return train, None
    cut = len(train) - val_images
    return (ImageSet(train.images[:cut], train.labels[:cut]),
            ImageSet(train.images[cut:], train.labels[cut:]))  # fmt: skip


def run_condense(cfg: CondenseConfig, out_dir: str | Path, image_dir: str | None = None,
                 eval_steps: int = 300, judge_seeds: list[int] | None = None,
                 val_images: int = 0, select: bool = False) -> dict:  # fmt: skip
    """Condense (from the training images less the last ``val_images``), judge (one fresh
    network per judge seed; on the held-out slice, and on the test set unless ``select``) and
    save one configuration; returns (and writes) its results."""
    check_config(cfg)
    if select and val_images < 1:
        raise ConfigError("select", "choosing settings needs a held-out slice: val_images >= 1")
    if eval_steps < 1:
        raise ConfigError("eval_steps", f"the judge needs at least 1 step, got {eval_steps}")
    train, val = hold_out(load_fashion_mnist("train", image_dir), val_images)
    test = None if select else load_fashion_mnist("test", image_dir)
    folder = Path(out_dir) / f"condense-{cfg.method}-ipc{cfg.images_per_class}-s{cfg.seed}"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = condense(train, cfg)
    condense_s = time.time() - t0
    t1 = time.time()
    judges = [cfg.seed] if judge_seeds is None else list(judge_seeds)
    accs, val_accs = [], []
    for j in judges:
        model = train_on_synthetic(res.images, res.labels, cfg.net, eval_steps, seed=j)
        if test is not None:
            accs.append(accuracy(model, test))
        if val is not None:
            val_accs.append(accuracy(model, val))
    judge_s = time.time() - t1
    save_grid(res.images, res.labels, folder / "images.png")
    save_file({"images": res.images.contiguous(), "labels": res.labels},
              str(folder / "synthetic.safetensors"))  # fmt: skip
    results = {
        "config": asdict(cfg), **_scores("test", accs), **_scores("val", val_accs),
        "judge_seeds": judges, "judge_net": cfg.net, "select": select,
        "test_images": len(test) if test is not None else 0,
        "val_images": val_images, "condensed_from_images": len(train),
        "synthetic_images": len(res.labels), "eval_steps": eval_steps,
        "condense_seconds": condense_s, "judge_seconds": judge_s,
        "total_seconds": time.time() - t0,
        "loss_first": res.losses[0] if res.losses else None,
        "loss_last": res.losses[-1] if res.losses else None,
        "pixel_range": [float(res.images.min()), float(res.images.max())],
        "mean_abs_change_from_start": res.moved,
    }  # fmt: skip
    tmp = folder / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(folder / "results.json")
    return results


def _scores(split: str, accs: list[float]) -> dict:
    """``<split>_accuracy`` (mean), ``<split>_accuracy_std`` and ``<split>_accuracies``; the
    mean and std are None where the split was not scored."""
    return {f"{split}_accuracy": statistics.fmean(accs) if accs else None,
            f"{split}_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
            f"{split}_accuracies": accs}  # fmt: skip
