"""bench/gpu_check.sh --dry-run: every stage's files, flags and scripts are
in place, the stages come in priority order, their timeouts add up to
6 minutes at most (two runs fit a 15-minute GPU window), the ncu stage picks
real kernels, and --pack leaves the archive and the table."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["build", "cuda-tests", "bench", "sweep", "ncu", "sanitizer",
          "mnist", "large-h"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path):
    out, pack = tmp_path / "gc", tmp_path / "pack"
    mnist = os.environ.get("IRNN_MNIST_DIR")
    args = [str(out)] + ([mnist] if mnist and os.path.isdir(mnist) else [])
    # PYTHON: this interpreter (CI runs pytest from a venv not on PATH).
    # --pack before --dry-run: the options come in any order.
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--pack",
         str(pack), "--dry-run", *args], capture_output=True, text=True,
        timeout=300, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.findall(r"^DRY (\S+)$", proc.stdout, re.M) == STAGES
    caps = dict(re.findall(r"^CAP (\S+) (\d+)$", proc.stdout, re.M))
    assert list(caps) == STAGES
    budget = int(re.search(r"^BUDGET (\d+)$", proc.stdout, re.M).group(1))
    assert sum(int(c) for c in caps.values()) == budget <= 360
    # A stage of several runs splits its cap among them, unevenly for the
    # sanitizer (racecheck is the slow one).
    subcaps = dict(re.findall(r"^SUBCAP (\S+) (\d+)$", proc.stdout, re.M))
    for stage in ("sanitizer", "mnist", "large-h"):
        assert sum(int(c) for run, c in subcaps.items()
                   if run.startswith(stage + "-")) == int(caps[stage])
    assert int(subcaps["sanitizer-racecheck"]) > int(
        subcaps["sanitizer-synccheck"])
    summary = (out / "summary.txt").read_text()
    assert summary.splitlines()[-len(STAGES):] == [
        line for line in summary.splitlines() if line.split()[0] in STAGES]
    # --pack: OUTDIR packed (with the table) and the table beside it.
    assert (pack / "summary.txt").read_text() == summary
    with tarfile.open(pack / "gpu_check.tgz") as tar:
        names = tar.getnames()
        assert "gc/summary.txt" in names and "gc/sweep.py" in names
        assert tar.extractfile("gc/summary.txt").read().decode() == summary
    assert not list(pack.glob("*.tmp"))
    # The ncu stage profiles the forward step kernel the sweep ran at
    # H=100, B=16 (on an H100/H200 the register-resident one), and the
    # sweep's fastest and slowest step kernels (never a reduction).
    targets = (out / "ncu_targets.txt").read_text().splitlines()
    assert targets == [
        "today 100,16 regex:irnn_fwd_reg_kernel<float, 104, 1, true, true>",
        "fastest 256,16 regex:irnn_fwd_cluster_kernel<float, 256, 1, true, true>",
        "slowest 512,64 regex:irnn_bwd_cluster_kernel<float, 512, 4, true>"]
    # Without a sweep result: any register-resident forward, nothing else.
    assert (out / "ncu_targets_no_sweep.txt").read_text().splitlines() == [
        "today 100,16 regex:irnn_fwd_reg_kernel"]
    # --ncu-targets runs on the budget's clock: it imports no torch.
    check = subprocess.run(
        [sys.executable, "-c",
         "import runpy, sys; sys.argv = sys.argv[1:]; "
         "runpy.run_path(sys.argv[0], run_name='__main__'); "
         "assert 'torch' not in sys.modules, 'torch imported'",
         str(out / "sweep.py"), "--ncu-targets",
         str(out / "sweep_example.json")],
        capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.splitlines() == targets
    # The sweep ran on the CPU ops: one timed case.
    rows = json.loads((out / "sweep_cpu.json").read_text())
    assert [(r["H"], r["B"]) for r in rows] == [(8, 2)]
    assert rows[0]["fwd_us_per_step"] > 0 and rows[0]["bwd_us_per_step"] > 0
    assert "rows" not in rows[0]
    # A case under IRNN_CUDA_ROWS (ignored by the CPU ops) says so.
    forced = subprocess.run(
        [sys.executable, str(out / "sweep.py"), "--device", "cpu", "--case",
         "8,2,none", "--steps", "3", "--repeats", "1", "--json",
         str(out / "sweep_forced.json")],
        capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    rows = json.loads((out / "sweep_forced.json").read_text())
    assert [(r["H"], r["B"], r["rows"]) for r in rows] == [(8, 2, "none")]
