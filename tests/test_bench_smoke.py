"""bench/bench_rnn.py runs end to end at tiny requested sizes, and its JSON
holds what the script could get wrong: a row for every requested size and
mode, FusedIRNN agreeing with nn.RNN (the largest difference recorded per
row), and each floor equal to the FLOPs it counts over the GEMM rates it
measured. Nothing about time is asserted: CI machines are too noisy."""
import copy
import json
import os
import subprocess
import sys

import pytest

import irnn_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "bench_rnn.py")
MODES = {"fwd", "fwd+bwd", "last", "fwd+bwd:last"}
# Sizes (T, B, I, H) unlike the script's --smoke set, so rows can only come
# from --shapes; I = 28 > 8 takes the unfused input projection.
REQUESTED = [(12, 2, 1, 16), (9, 4, 3, 5), (6, 3, 28, 8)]
# float32, at most 12 steps: FusedIRNN and nn.RNN differ by a few eps.
MAX_ERR = 1e-5

pytestmark = pytest.mark.skipif(not irnn_cuda.has_kernels("cpu"),
                                reason="irnn_cuda._C has no CPU kernels")

# Runs the benchmark with FusedIRNN's results off by 0.1%.
SCALED_FUSED = """
import runpy, sys
from irnn_cuda import FusedIRNN
forward = FusedIRNN.forward
def scaled(self, *args, **kwargs):
    out, h_n = forward(self, *args, **kwargs)
    return (None if out is None else out * 1.001), h_n * 1.001
FusedIRNN.forward = scaled
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_bench(json_path, prefix=(), args=()):
    shapes = ",".join("x".join(map(str, s)) for s in REQUESTED)
    proc = subprocess.run(
        [sys.executable, *prefix, BENCH, "--smoke", "--device", "cpu",
         "--shapes", shapes, "--json", str(json_path), *args],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(json_path.read_text())


def expected_floor_flop(T, B, I, H, mode):
    """The FLOPs a row's floor counts, per GEMM key, from the sizes alone."""
    fwd = 2 * T * B * H * (I + H)  # x_t W_ih^T + h_{t-1} W_hh^T per step
    step = f"step:1024x{H}x{H}"
    if not mode.startswith("fwd+bwd"):
        return {step: fwd}
    # Backward: dh and dx through the weights again, and dW as one
    # [H, T*B] x [T*B, H+I] product.
    return {step: 2 * fwd, f"dw:{H}x{T * B}x{H + I}": fwd}


def check_bench_json(result, requested):
    """Raises AssertionError where the JSON is wrong or FusedIRNN disagrees
    with nn.RNN."""
    assert result["info"]["fused_kernels"] is True
    rows = result["rows"]
    got = sorted((r["T"], r["B"], r["I"], r["H"], r["mode"]) for r in rows)
    assert got == sorted(s + (m,) for s in requested for m in MODES), got
    gemm = result["info"]["gemm"]
    for key, g in gemm.items():
        shape = tuple(int(v) for v in key.split(":")[1].split("x"))
        assert (g["m"], g["k"], g["n"]) == shape, (key, g)
        assert g["gflops"] == pytest.approx(
            2 * g["m"] * g["k"] * g["n"] / (g["best_ms"] * 1e-3) / 1e9), key
    for r in rows:
        where = f"{r['T']}x{r['B']}x{r['I']}x{r['H']} {r['mode']}"
        assert r["fused_ms"] > 0 and r["torch_ms"] > 0, where
        assert 0 <= r["max_err"] <= MAX_ERR, (
            f"{where}: FusedIRNN differs from nn.RNN by {r['max_err']:.3g}")
        flop = expected_floor_flop(r["T"], r["B"], r["I"], r["H"], r["mode"])
        assert r["floor_flop"] == flop, (where, r["floor_flop"], flop)
        floor_ms = sum(f / (gemm[k]["gflops"] * 1e9) * 1e3
                       for k, f in flop.items())
        assert r["floor_ms"] == pytest.approx(floor_ms), where


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    return run_bench(tmp_path_factory.mktemp("bench") / "bench.json")


def test_bench_json_rows_agreement_and_floors(bench_json):
    check_bench_json(bench_json, REQUESTED)


def test_check_rejects_fused_results_off_by_a_tenth_of_a_percent(tmp_path):
    """FusedIRNN's outputs and gradients 0.1% off: the former smoke test
    (positive times, speedup = torch_ms / fused_ms) passed such a run."""
    result = run_bench(tmp_path / "bench.json", ("-c", SCALED_FUSED))
    assert all(r["max_err"] > 5e-4 for r in result["rows"])
    with pytest.raises(AssertionError, match="differs from nn.RNN"):
        check_bench_json(result, REQUESTED)


def test_check_rejects_missing_rows_and_wrong_floors(bench_json):
    result = copy.deepcopy(bench_json)
    del result["rows"][4]
    with pytest.raises(AssertionError):
        check_bench_json(result, REQUESTED)
    # A floor that forgets the input projection (I) in its FLOP count.
    result = copy.deepcopy(bench_json)
    row = next(r for r in result["rows"] if r["I"] == 28 and r["mode"] == "fwd")
    key, = row["floor_flop"]
    row["floor_flop"][key] = 2 * row["T"] * row["B"] * row["H"] ** 2
    row["floor_ms"] = (row["floor_flop"][key]
                       / (result["info"]["gemm"][key]["gflops"] * 1e9) * 1e3)
    with pytest.raises(AssertionError):
        check_bench_json(result, REQUESTED)
    # A floor_ms that does not follow from its FLOPs and the measured rate.
    result = copy.deepcopy(bench_json)
    result["rows"][0]["floor_ms"] *= 2
    with pytest.raises(AssertionError):
        check_bench_json(result, REQUESTED)
    # A rate that does not follow from its GEMM's measured time.
    result = copy.deepcopy(bench_json)
    next(iter(result["info"]["gemm"].values()))["gflops"] *= 2
    with pytest.raises(AssertionError):
        check_bench_json(result, REQUESTED)


def test_bench_runs_16bit_rows(tmp_path):
    """--dtype bfloat16: every requested row and mode, the dtype recorded,
    and FusedIRNN within 0.05 of the largest value of nn.RNN's bfloat16
    results, about 13 bfloat16 eps (the two round differently: at most
    7.3e-3 measured; a wrong result, zeros say, differs by about 1)."""
    result = run_bench(tmp_path / "bench.json", args=("--dtype", "bfloat16"))
    assert result["info"]["dtype"] == "bfloat16"
    rows = result["rows"]
    got = sorted((r["T"], r["B"], r["I"], r["H"], r["mode"]) for r in rows)
    assert got == sorted(s + (m,) for s in REQUESTED for m in MODES), got
    for r in rows:
        assert 0 <= r["max_err"] <= 0.05, r
