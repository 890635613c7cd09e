"""bench/seq_mnist.py end to end: runs never overwrite each other, bad
settings stop with one line before anything is written, resumes keep what
was there, files are written atomically, and a diverged run says so and
exits non-zero. Tiny runs on the synthetic IDX files of test_seq_mnist."""
import datetime
import os

import pytest

from test_seq_mnist import DATA_DIR, load, run
import seq_mnist

TINY = ("--limit-train", 64, "--limit-test", 16, "--hidden", 8,
        "--optimizer", "adam", "--lr", 1e-4, "--batch-size", 32)


def main(*args):
    return seq_mnist.main(["--data-dir", DATA_DIR, "--device", "cpu",
                           "--no-progress", *map(str, args)])


def read(path):
    with open(path, "rb") as f:
        return f.read()


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
