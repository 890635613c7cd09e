"""bench/bench_rnn.py runs end to end at a tiny size (nothing about time is
asserted: CI machines are too noisy for that)."""
import json
import os
import subprocess
import sys

import pytest

import irnn_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not irnn_cuda.has_kernels("cpu"),
                    reason="irnn_cuda._C has no CPU kernels")
def test_bench_smoke_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "bench_rnn.py"), "--smoke",
         "--device", "cpu", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["info"]["fused_kernels"] is True
    rows = result["rows"]
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd", "last"}
    for r in rows:
        assert r["fused_ms"] > 0 and r["torch_ms"] > 0 and r["floor_ms"] > 0
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["fused_ms"])
