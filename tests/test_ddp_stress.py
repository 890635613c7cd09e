"""bench/ddp_stress.sh, the stress check of distributed runs, in its short
form (CI): its runs pass on a healthy program, and a failing run is counted
and its log kept. The long form (N >= 200) is run by hand; its count is in
docs/seq_mnist.md."""
import os
import subprocess
import sys

import pytest

from test_seq_mnist import DATA_DIR, ROOT

SCRIPT = os.path.join(ROOT, "bench", "ddp_stress.sh")


def stress(tmp_path, n, *args):
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run(["bash", SCRIPT, n, "--data-dir", DATA_DIR,
                           "--out", str(tmp_path / "stress"), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_short_stress_run_passes(tmp_path):
    done = stress(tmp_path, "2", "--jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ddp_stress: 0 of 2 runs failed" in done.stdout, done.stdout
    for i in (1, 2):
        assert os.path.isfile(tmp_path / "stress" / f"run_{i}" / "last.pt")


def test_failing_runs_are_counted_and_the_first_log_kept(tmp_path):
    done = stress(tmp_path, "1", "--", "--epochs", "0")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ddp_stress: 1 of 1 runs failed" in done.stdout, done.stdout
    log = tmp_path / "stress" / "first_failure.log"
    assert "seq_mnist: error:" in log.read_text()


@pytest.mark.parametrize("args", [["x"], ["0"], ["2", "--jobs", "0"],
                                  ["2", "--bogus"], ["2", "--jobs"]])
def test_usage_errors(tmp_path, args):
    done = stress(tmp_path, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ddp_stress:" in done.stderr
