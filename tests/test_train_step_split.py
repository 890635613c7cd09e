"""bench/train_step_split.py runs on tiny data and reports every phase of a
training step, with shares that add up to the whole."""
import os
import subprocess
import sys

from test_seq_mnist import DATA_DIR, ROOT

SCRIPT = os.path.join(ROOT, "bench", "train_step_split.py")


def test_reports_every_phase():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, SCRIPT, "--data-dir", DATA_DIR,
                           "--steps", "3", "--warmup", "1", "--batch-size",
                           "8"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:]
            for line in done.stdout.splitlines()[2:]}
    assert list(rows) == ["index", "layer", "head", "backward", "clip",
                          "optim", "sync"], done.stdout
    shares = [float(share.rstrip("%")) for _, share in rows.values()]
    assert abs(sum(shares) - 100) < 0.5, done.stdout
