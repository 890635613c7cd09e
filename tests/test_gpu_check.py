"""bench/gpu_check.sh --dry-run: every stage's files, flags and scripts are
in place, the stages come in priority order, and their timeouts add up to
5 minutes at most (two runs fit a 15-minute GPU window)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["build", "cuda-tests", "bench", "sweep", "ncu", "sanitizer",
          "mnist", "large-h"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path):
    mnist = os.environ.get("IRNN_MNIST_DIR")
    args = [str(tmp_path)] + ([mnist] if mnist and os.path.isdir(mnist) else [])
    # PYTHON: this interpreter (CI runs pytest from a venv not on PATH).
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--dry-run",
         *args], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.findall(r"^DRY (\S+)$", proc.stdout, re.M) == STAGES
    caps = dict(re.findall(r"^CAP (\S+) (\d+)$", proc.stdout, re.M))
    assert list(caps) == STAGES
    budget = int(re.search(r"^BUDGET (\d+)$", proc.stdout, re.M).group(1))
    assert sum(int(c) for c in caps.values()) == budget <= 300
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.splitlines()[-len(STAGES):] == [
        line for line in summary.splitlines() if line.split()[0] in STAGES]
    # The ncu stage profiles today's forward and the sweep's fastest and
    # slowest step kernels (never a reduction).
    targets = (tmp_path / "ncu_targets.txt").read_text().splitlines()
    assert [t.split()[0] for t in targets] == ["today", "fastest", "slowest"]
    assert "irnn_fwd_persistent_kernel<float>" in targets[0]
    assert not any("reduce_partials" in t for t in targets)
    assert targets[2].endswith("irnn_gemm_kernel<float, 4, 8, 1, 1>")
    # The sweep ran on the CPU ops: one timed case.
    rows = json.loads((tmp_path / "sweep_cpu.json").read_text())
    assert [(r["H"], r["B"]) for r in rows] == [(8, 2)]
    assert rows[0]["fwd_us_per_step"] > 0 and rows[0]["bwd_us_per_step"] > 0
