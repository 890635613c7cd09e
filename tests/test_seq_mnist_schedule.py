"""The learning-rate schedule and the rollback state of bench/seq_mnist.py
(bench/mnist_irnn/schedule.py, rollback.py), each on its own."""
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from mnist_irnn.rollback import SNAPSHOT_EVERY, Rollback  # noqa: E402
from mnist_irnn.schedule import learning_rate  # noqa: E402


def settings(schedule="cosine", warmup=0, lr=1e-3):
    return {"lr": lr, "lr_schedule": schedule, "warmup_steps": warmup}


def test_constant_is_the_lr_at_every_step():
    for step in (0, 1, 99):
        assert learning_rate(settings("constant"), step, 100) == 1e-3


def test_warmup_rises_linearly_to_the_peak():
    config = settings("constant", warmup=4)
    assert [learning_rate(config, s, 100) for s in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_cosine_falls_from_the_peak_to_zero_after_the_warmup():
    config = settings("cosine", warmup=10)
    assert learning_rate(config, 9, 110) == pytest.approx(1e-3)
    assert learning_rate(config, 10, 110) == pytest.approx(1e-3)
    assert learning_rate(config, 60, 110) == pytest.approx(5e-4)
    assert learning_rate(config, 110, 110) == pytest.approx(0.0, abs=1e-12)
    lrs = [learning_rate(config, s, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_the_rollback_scale_multiplies_every_schedule():
    for schedule in ("constant", "cosine"):
        config = settings(schedule, warmup=3)
        for step in (0, 5, 50):
            assert learning_rate(config, step, 100, scale=0.25) == \
                pytest.approx(0.25 * learning_rate(config, step, 100))


def test_rollback_restores_the_snapshot_and_halves_the_scale():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rollback = Rollback(limit=2)
    rollback.remember(0, model, optimizer)
    good = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    for step in range(1, SNAPSHOT_EVERY):  # not a snapshot step
        rollback.remember(step, model, optimizer)
    with torch.no_grad():
        model.weight.fill_(math.nan)
    assert rollback.restore(model, optimizer) == 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, good[name]), name
    assert optimizer.state_dict()["state"] == {}
    assert (rollback.count, rollback.scale) == (1, 0.5)
    assert not rollback.exhausted()
    rollback.restore(model, optimizer)
    assert rollback.exhausted()
    assert rollback.state() == {"count": 2, "scale": 0.25}


def test_snapshots_are_taken_every_interval():
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rollback = Rollback(limit=3)
    for step in range(1, 2 * SNAPSHOT_EVERY + 7):
        rollback.remember(step, model, optimizer)
    assert rollback.snapshot[0] == 2 * SNAPSHOT_EVERY


# ------------------------------------------------------------------ recipes

from mnist_irnn import config  # noqa: E402


def test_the_default_recipe_and_the_notebook_preset():
    default = config.resolve_config({})
    assert (default["optimizer"], default["lr"], default["clip_norm"],
            default["batch_size"], default["epochs"], default["lr_schedule"],
            default["warmup_steps"]) == ("adam", 5e-5, 1.0, 32, 10, "cosine",
                                         1000)
    notebook = config.resolve_config({"preset": "notebook"})
    assert (notebook["optimizer"], notebook["lr"], notebook["clip_norm"],
            notebook["batch_size"], notebook["epochs"],
            notebook["lr_schedule"], notebook["warmup_steps"]) == (
                "rmsprop", 1e-6, None, 1024, 10, "constant", 0)
    # The published setups keep their constant lr.
    for name in ("keras-example", "paper"):
        c = config.resolve_config({"preset": name})
        assert (c["lr_schedule"], c["warmup_steps"]) == ("constant", 0), name
    # fast: the default over 40 epochs, on standardized pixels; the others
    # keep the pixels in [0, 1].
    fast = config.resolve_config({"preset": "fast"})
    assert fast["input_norm"] == "standard"
    assert dict(fast, epochs=10, preset=None, input_norm="unit") == default
    for name in ("notebook", "keras-example", "paper"):
        assert config.resolve_config({"preset": name})["input_norm"] == "unit"


def test_the_paper_preset_follows_permute():
    pixel = config.resolve_config({"preset": "paper"})
    permuted = config.resolve_config({"preset": "paper", "permute": True})
    assert (pixel["optimizer"], pixel["lr"], pixel["clip_norm"]) == (
        "sgd", 1e-8, 1.0)
    assert (permuted["lr"], permuted["clip_norm"]) == (1e-6, 10.0)
    assert config.resolve_config({"preset": "paper", "permute": True,
                                  "lr": 1e-7})["lr"] == 1e-7


def test_clip_norm_zero_turns_clipping_off():
    assert config.resolve_config({"clip_norm": 0.0})["clip_norm"] is None


def test_a_checkpoint_from_before_the_schedule_keeps_a_constant_lr():
    saved = {k: v for k, v in config.resolve_config(
        {"preset": "notebook"}).items()
        if k not in config.LEGACY and k not in config.PER_RUN}
    resumed = config.resolve_config({"epochs": 20}, saved)
    assert (resumed["lr_schedule"], resumed["warmup_steps"],
            resumed["optimizer"]) == ("constant", 0, "rmsprop")


@pytest.mark.parametrize("key", ["warmup_steps", "max_rollbacks"])
def test_negative_counts_are_refused(key):
    with pytest.raises(SystemExit, match=f"--{key.replace('_', '-')} must "
                       "not be negative"):
        config.resolve_config({key: -1})
