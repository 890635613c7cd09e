"""--on-nonfinite rollback end to end: a forced non-finite step restores the
last good state with the lr halved, a run out of rollbacks stops with a
non-zero exit, and a resume keeps the count and the scale."""
import pytest

from test_seq_mnist import load, metrics, run  # puts bench/ on sys.path
from mnist_irnn import training  # noqa: E402  (isort: skip)

# 128 images at batch 32: 4 steps an epoch. SGD at a fixed lr, so the lr
# each step used shows the rollback scale.
ARGS = ("--limit-train", 128, "--limit-test", 16, "--hidden", 8,
        "--optimizer", "sgd", "--lr", 0.01, "--batch-size", 32,
        "--on-nonfinite", "rollback")


@pytest.fixture
def failing_steps(monkeypatch):
    """The steps (by count of steps before them) whose loss is made
    non-finite; records the lr every step ran with."""
    plan = {"fail": set(), "lrs": []}
    train_step = training.Run.train_step

    def step(self, start, stop, order, totals):
        if self.step in plan["fail"]:
            plan["fail"].discard(self.step)
            plan["lrs"].append(None)
            return False
        trained = train_step(self, start, stop, order, totals)
        plan["lrs"].append(self.optimizer.param_groups[0]["lr"])
        return trained

    monkeypatch.setattr(training.Run, "train_step", step)
    return plan


def test_a_nonfinite_step_rolls_back_and_halves_the_lr(tmp_path, capsys,
                                                       failing_steps):
    failing_steps["fail"] = {2}
    row, out = run(tmp_path, "run", *ARGS, "--epochs", 1)
    assert failing_steps["lrs"] == [0.01, 0.01, None, 0.005]
    assert (row["rollbacks"], row["lr_scale"]) == (1, 0.5)
    assert row["skipped_steps"] == 1
    printed = capsys.readouterr().out
    assert "rolled back to the state after step 0, lr now x0.5 " \
           "(rollback 1 of 3)" in printed
    assert "rollbacks 1 (lr x0.5)" in printed
    assert load(f"{out}/last.pt")["rollback"] == {"count": 1, "scale": 0.5}


def test_the_rolled_back_state_is_the_snapshot(tmp_path, failing_steps):
    """With the only steps after the snapshot rolled back, the weights are
    the initial ones."""
    failing_steps["fail"] = {1}
    _, out = run(tmp_path, "run", *ARGS, "--max-steps", 2)
    _, fresh = run(tmp_path, "fresh", *ARGS, "--max-steps", 1, "--lr", 1e-30)
    rolled, initial = load(f"{out}/last.pt"), load(f"{fresh}/last.pt")
    for name, value in initial["model"].items():
        assert (rolled["model"][name] - value).abs().max() < 1e-20, name


def test_out_of_rollbacks_the_run_stops_non_zero(tmp_path, failing_steps):
    failing_steps["fail"] = {1, 2, 3}
    with pytest.raises(SystemExit, match=r"non-finite loss at epoch 1, step "
                       r"4 \(batch 4 of 4\) after 2 rollbacks "
                       r"\(--max-rollbacks 2\); stopping") as stopped:
        run(tmp_path, "run", *ARGS, "--epochs", 1, "--max-rollbacks", 2)
    assert stopped.value.code != 0


def test_resume_keeps_the_rollbacks_and_the_scale(tmp_path, failing_steps):
    failing_steps["fail"] = {1}
    _, out = run(tmp_path, "run", *ARGS, "--epochs", 2, "--max-steps", 6)
    assert load(f"{out}/last.pt")["rollback"] == {"count": 1, "scale": 0.5}
    failing_steps["lrs"].clear()
    row, _ = run(tmp_path, "ignored", "--resume", out, "--out", out)
    assert failing_steps["lrs"] == [0.005, 0.005]
    assert (row["rollbacks"], row["lr_scale"]) == (1, 0.5)
    assert [r["rollbacks"] for r in metrics(out)] == [1, 1]
