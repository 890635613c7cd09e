"""bench/seq_mnist.py end to end: runs never overwrite each other, bad
settings stop with one line before anything is written, resumes keep what
was there, files are written atomically, and a diverged run says so and
exits non-zero. Tiny runs on the synthetic IDX files of test_seq_mnist."""
import builtins
import datetime
import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from test_seq_mnist import DATA_DIR, ROOT, SCRIPT, load, metrics, run
import seq_mnist

TINY = ("--limit-train", 64, "--limit-test", 16, "--hidden", 8,
        "--optimizer", "adam", "--lr", 1e-4, "--batch-size", 32)


def main(*args):
    return seq_mnist.main(["--data-dir", DATA_DIR, "--device", "cpu",
                           "--no-progress", *map(str, args)])


def read(path):
    with open(path, "rb") as f:
        return f.read()


def temporaries(out):
    return glob.glob(os.path.join(out, "*.tmp.*"))


# ------------------------------------------------ 1. runs never share a dir

def test_out_holding_a_run_is_refused(tmp_path):
    _, out = run(tmp_path, "done", *TINY, "--epochs", 2)
    before = {name: read(os.path.join(out, name))
              for name in ("last.pt", "metrics.json", "config.json")}
    with pytest.raises(SystemExit, match=r"--out .*done already holds files; "
                                         r"pass --resume"):
        run(tmp_path, "done", *TINY, "--epochs", 1)
    for name, data in before.items():
        assert read(os.path.join(out, name)) == data, name


class FrozenClock(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 1, 2, 3, 4, 5)


def test_runs_started_in_the_same_second_get_their_own_dirs(tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datetime, "datetime", FrozenClock)
    _, first = main(*TINY, "--epochs", 1, "--seed", 1)
    _, second = main(*TINY, "--epochs", 1, "--seed", 2)
    assert first != second
    assert load(os.path.join(first, "last.pt"))["config"]["seed"] == 1
    assert load(os.path.join(second, "last.pt"))["config"]["seed"] == 2


# ----------------------------------------- 2. one-line errors, nothing made

def _checkpoint_without_config(tmp_path):
    _, out = run(tmp_path, "source", *TINY, "--epochs", 1)
    state = load(os.path.join(out, "last.pt"))
    del state["config"]
    torch.save(state, os.path.join(out, "last.pt"))
    return out


BAD_SETTINGS = {
    "rmsprop lr nan": (["--optimizer", "rmsprop", "--lr", "nan"], "--lr"),
    "adam lr -1": (["--optimizer", "adam", "--lr", "-1"], "--lr"),
    "rmsprop lr -1": (["--optimizer", "rmsprop", "--lr", "-1"], "--lr"),
    "sgd lr nan": (["--optimizer", "sgd", "--lr", "nan"], "--lr"),
    "sgd lr inf": (["--optimizer", "sgd", "--lr", "inf"], "--lr"),
    "sgd clip nan": (["--optimizer", "sgd", "--clip-norm", "nan"],
                     "--clip-norm"),
    "huge seed": (["--seed", "99999999999999999"], "--seed"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_stop_before_anything_is_written(tmp_path, case):
    args, names = BAD_SETTINGS[case]
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, "run", "--limit-train", 64, "--limit-test", 16,
            "--hidden", 8, "--batch-size", 32, "--epochs", 1, *args)
    assert str(stop.value.code).startswith("seq_mnist: error: " + names)
    assert os.listdir(tmp_path) == []


def test_unusable_out_and_checkpoint_stop_with_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="seq_mnist: error: cannot create "
                                         "the run directory .*file/run: Not "
                                         "a directory"):
        main(*TINY, "--epochs", 1, "--out", tmp_path / "file" / "run")
    no_config = _checkpoint_without_config(tmp_path)
    for flag in ("--resume", "--eval-only"):
        with pytest.raises(SystemExit, match="seq_mnist: error: .*last.pt is "
                                             "an incomplete seq_mnist "
                                             "checkpoint: config"):
            main(flag, no_config)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_stops_with_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(SystemExit, match="seq_mnist: error: cannot create "
                                         "the run directory"):
        main(*TINY, "--epochs", 1, "--out", locked / "run")


def test_program_prints_one_line_and_exits_non_zero(tmp_path):
    done = subprocess.run(
        [sys.executable, SCRIPT, "--lr", "nan", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "seq_mnist: error: --lr must be a positive finite number, got nan"]
    assert not os.path.exists(tmp_path / "r")


# ------------------------------- 3. a resume keeps the config it started

def test_resume_with_nothing_to_do_keeps_everything(tmp_path, capsys):
    _, out = run(tmp_path, "run", *TINY, "--epochs", 2)
    before = {name: read(os.path.join(out, name)) for name in os.listdir(out)}
    for epochs in (2, 1):
        final, _ = main("--resume", out, "--epochs", epochs)
        assert final is None
        assert "already finished at epoch 2" in capsys.readouterr().out
        assert {name: read(os.path.join(out, name))
                for name in os.listdir(out)} == before


def test_resume_records_itself_and_keeps_the_settings(tmp_path):
    _, out = run(tmp_path, "run", *TINY, "--epochs", 1)
    main("--resume", out, "--epochs", 2)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["settings"]["epochs"] == 1
    assert config["train_images"] == 64
    [resume] = config["resumes"]
    assert (resume["from_epoch"], resume["changed"]) == (1, {"epochs": 2})
    assert "time" in resume and "command" in resume


# ------------------------------------------------ 4. atomic metrics files

def test_a_failed_metrics_write_keeps_the_old_files(tmp_path, monkeypatch):
    _, out = run(tmp_path, "run", *TINY, "--epochs", 1)
    before = {name: read(os.path.join(out, name))
              for name in ("metrics.csv", "metrics.json")}

    def cut(self, rows):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("csv.DictWriter.writerows", cut)
    with pytest.raises(OSError):
        main("--resume", out, "--epochs", 2)
    for name, data in before.items():
        assert read(os.path.join(out, name)) == data, name
    assert temporaries(out) == []


def test_resume_rewrites_a_truncated_metrics_file(tmp_path, monkeypatch):
    _, out = run(tmp_path, "run", *TINY, "--epochs", 1)
    rows = metrics(out)
    for name in ("metrics.json", "metrics.csv"):
        path = os.path.join(out, name)
        data = read(path)
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main("--resume", out, "--epochs", 2)
    assert metrics(out) == rows
    assert read(os.path.join(out, "metrics.csv")).count(b"\n") == 2


# ----------------------------------------------------- 5. no save debris

def test_a_full_disk_is_reported_plainly_and_leaves_no_debris(tmp_path,
                                                               monkeypatch):
    real_open = builtins.open

    def full_disk_for_checkpoints(path, *args, **kwargs):
        if ".pt.tmp." in str(path):
            path = "/dev/full"  # every write fails with ENOSPC
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk_for_checkpoints)
    with pytest.raises(SystemExit, match=r"seq_mnist: error: cannot write "
                                         r".*last.pt: No space left on "
                                         r"device"):
        run(tmp_path, "run", *TINY, "--epochs", 1)
    assert temporaries(str(tmp_path / "run")) == []


def test_resume_removes_stale_temporaries(tmp_path, capsys):
    _, out = run(tmp_path, "run", *TINY, "--epochs", 1)
    stale = os.path.join(out, "last.pt.tmp.99999")
    with open(stale, "wb") as f:
        f.write(b"half a checkpoint")
    main("--resume", out, "--epochs", 2)
    assert temporaries(out) == []
    assert f"removed {stale}" in capsys.readouterr().out


# ----------------------------------------------- 6. no flag goes unheard

@pytest.mark.parametrize("flag", [("--hidden", 16), ("--permute",),
                                  ("--seed", 5)])
def test_eval_only_refuses_flags_the_checkpoint_fixes(tmp_path, flag):
    _, out = run(tmp_path, "run", *TINY, "--epochs", 1)
    with pytest.raises(SystemExit, match=f"{flag[0]} .*conflicts with the "
                                         f"checkpoint"):
        main("--eval-only", out, *flag)


def test_resume_from_another_working_directory(tmp_path, monkeypatch):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    shutil.copytree(DATA_DIR, start / "mnist")
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    seq_mnist.main(["--data-dir", "mnist", "--device", "cpu",
                    "--no-progress", "--out", str(tmp_path / "run"),
                    *map(str, TINY), "--epochs", "1"])
    saved = load(str(tmp_path / "run" / "last.pt"))["config"]["data_dir"]
    assert saved == str(start / "mnist")
    monkeypatch.chdir(elsewhere)
    seq_mnist.main(["--resume", str(tmp_path / "run"), "--epochs", "2",
                    "--device", "cpu", "--no-progress"])
    assert [r["epoch"] for r in metrics(str(tmp_path / "run"))] == [1, 2]


# ---------------------------------------------- 7. divergence is not hidden

DIVERGING = ("--limit-train", 96, "--limit-test", 16, "--hidden", 32,
             "--optimizer", "sgd", "--clip-norm", 0, "--batch-size", 32,
             "--seed", 3)


def test_skipped_steps_are_counted_on_every_epoch_line(tmp_path, capsys):
    run(tmp_path, "run", *TINY, "--epochs", 2)
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("epoch ")]
    assert len(lines) == 2
    assert all("skipped 0/2 steps" in line for line in lines)


def test_a_diverged_run_exits_non_zero(tmp_path, capsys):
    with pytest.raises(SystemExit, match="seq_mnist: error: the run "
                                         "diverged: the test loss is not "
                                         "finite after epoch 1"):
        run(tmp_path, "run", *DIVERGING, "--lr", 1e3, "--epochs", 2,
            "--on-nonfinite", "skip")
    printed = capsys.readouterr().out
    assert "skipped 2/3 steps" in printed
    assert "final test accuracy" not in printed
    assert metrics(str(tmp_path / "run"))[0]["skipped_steps"] == 2


def test_stop_says_only_what_last_pt_holds(tmp_path):
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, "run", *DIVERGING, "--lr", 0.1, "--epochs", 1)
    message = str(stop.value.code)
    assert "non-finite loss at epoch 1, step 2" in message
    assert "No checkpoint was written." in message
    assert "good state" not in message


def test_an_epoch_with_every_step_skipped_is_a_divergence(tmp_path):
    from mnist_irnn import config, distributed, training
    from mnist_irnn.errors import DivergedError
    settings = config.resolve_config({
        "data_dir": DATA_DIR, "device": "cpu", "hidden": 8,
        "limit_train": 64, "limit_test": 16, "batch_size": 32})
    settings["out"] = str(tmp_path)
    trained = training.Run(settings, distributed.Dist("cpu"))
    # three steps, all skipped: the loss and the accuracy are not defined
    with pytest.raises(DivergedError, match=r"all 3 steps of epoch 1 were "
                                            r"skipped.*holds the state after "
                                            r"step 0 \(epoch 1"):
        training.end_epoch(trained, 1, 3, 3, [0.0, 0, 0, 3, 1.0])
    assert metrics(str(tmp_path))[0]["skipped_steps"] == 3


# ------------------------------------------------------ distributed teardown

RANK_1_FAILS = """
import os, runpy, sys
import torch
if os.environ["RANK"] == "1":
    def broken(*args, **kwargs):
        raise RuntimeError("rank 1 lost its optimiser")
    torch.optim.SGD.step = broken
sys.argv = [{script!r}] + sys.argv[1:]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_one_failing_rank_does_not_leave_the_other_waiting(tmp_path):
    wrapper = tmp_path / "rank_1_fails.py"
    wrapper.write_text(RANK_1_FAILS.format(script=SCRIPT))
    args = ["--data-dir", DATA_DIR, "--device", "cpu", "--no-progress",
            "--limit-train", 128, "--limit-test", 16, "--hidden", 8,
            "--optimizer", "sgd", "--lr", 0.01, "--batch-size", 32,
            "--epochs", 1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         "--nproc_per_node=2", str(wrapper), *map(str, args)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "rank 1 lost its optimiser" in done.stdout + done.stderr
