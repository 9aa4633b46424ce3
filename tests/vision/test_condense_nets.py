"""Several random networks per matching iteration (``nets``): the mean of their losses."""

import importlib

import pytest
import torch
from vision_helpers import write_tiny_fmnist

from attnkd.cli import main
from attnkd.errors import ConfigError
from attnkd.vision.condense import CondenseConfig, condense
from attnkd.vision.idx import load_fashion_mnist

condense_mod = importlib.import_module("attnkd.vision.condense")  # the module, not the function


@pytest.fixture
def tiny(tmp_path):
    torch.set_num_threads(1)
    return write_tiny_fmnist(tmp_path / "d", 100, 40)


def _cfg(**kw):
    base = dict(method="datadam", images_per_class=2, iterations=2, real_batch=4, lr=0.1,
                net="cnn:condense-micro")  # fmt: skip
    return CondenseConfig(**{**base, **kw})


def test_one_net_is_the_default_run(tiny):
    data = load_fashion_mnist("train", tiny)
    a, b = condense(data, _cfg()), condense(data, _cfg(nets=1))
    assert torch.equal(a.images, b.images) and a.losses == b.losses


def test_the_step_follows_the_mean_over_distinct_nets_on_the_same_real_batch(tiny, monkeypatch):
    data = load_fashion_mnist("train", tiny)
    calls, real_loss = [], condense_mod.matching_loss

    def spy(net, real, syn, *args):
        loss = real_loss(net, real, syn, *args)
        calls.append((net, real.clone(), float(loss.detach())))
        return loss

    monkeypatch.setattr(condense_mod, "matching_loss", spy)
    res = condense(data, _cfg(nets=3, iterations=1))
    assert len(calls) == 10 * 3  # every class in each of the three networks
    for c in range(10):
        (n0, r0, _), (n1, r1, _), (n2, r2, _) = calls[3 * c : 3 * c + 3]
        assert torch.equal(r0, r1) and torch.equal(r0, r2)  # one real batch per class
        w = [next(n.parameters()) for n in (n0, n1, n2)]
        assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert res.losses[0] == pytest.approx(sum(x for *_, x in calls) / 3 / 10, rel=1e-5)
    first = next(calls[0][0].parameters()).clone()
    calls.clear()
    condense(data, _cfg(nets=1, iterations=1))  # the first of the three is the one-net run's
    assert torch.equal(next(calls[0][0].parameters()), first)


def test_nets_below_one_is_a_config_error(tiny, tmp_path, capsys):
    with pytest.raises(ConfigError, match="nets"):
        condense(load_fashion_mnist("train", tiny), _cfg(nets=0))
    rc = main(["condense", "--ipc", "1", "--iterations", "1", "--real-batch", "2",
               "--eval-steps", "1", "--nets", "0", "--image-dir", str(tiny),
               "--out", str(tmp_path / "o")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "'nets'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
