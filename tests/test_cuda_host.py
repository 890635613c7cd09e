"""The CUDA host code, checked without a GPU.

- tests/host/launch_record.cpp compiles csrc/cuda/irnn_launch.cuh with g++
  and records every launch instead of running it: no operand pointer of the
  large-H backward leaves its buffer (in reverse, the last step walked has
  no step s + 1), the per-step GEMMs at B = 16, H = 256 spread over the
  SMs, and T, B >= 2^31 are refused.
- The large-H path with an empty batch finishes in the emulation: its
  weight-gradient GEMMs have K = T * B = 0 and a (t, b) split by B = 0.
- The built extension's device property query reports a failed
  cudaDeviceGetAttribute instead of returning zeros (which would silently
  pick the large-H path). On a machine without a GPU every query fails.
"""
import ctypes
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import irnn_cuda
from irnn_cuda import _ops

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_launch_orchestration(tmp_path):
    exe = tmp_path / "launch_record"
    build = subprocess.run(
        ["g++", "-std=c++20", "-pthread", "-O0", "-Wall", "-Werror",
         "-Wno-unknown-pragmas", str(HERE / "host" / "launch_record.cpp"),
         "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 failed" in run.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_large_h_empty_batch(tmp_path):
    """Run in a subprocess: a kernel that never ends must fail the test,
    not hang the suite."""
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(HERE)!r}, {str(HERE / "emu")!r}]
        import torch
        import emu
        harness = emu.Emu(emu.build({str(tmp_path)!r}))
        # 48 KB and no opt-in: H = 300 takes the large-H path.
        table = dict(sm_count=4, max_threads_per_block=1024,
                     smem_per_block=48 * 1024, smem_per_block_optin=0)
        H = 300
        x, w_hh = torch.randn(3, 0, 1), torch.randn(H, H)
        out, h_n, cfg = harness.forward(table, x, torch.randn(0, H),
                                        torch.randn(H, 1), w_hh, None, None,
                                        True, False, True)
        assert cfg["path"] == 1, cfg
        dx, dh0, dw_ih, dw_hh, db, cfg = harness.backward(
            table, None, torch.randn(0, H), x, torch.randn(0, H),
            torch.randn(H, 1), w_hh, out, True, False)
        assert cfg["path"] == 1, cfg
        assert dw_hh.eq(0).all() and dw_ih.eq(0).all() and db.eq(0).all()
        print("done")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0 and "done" in proc.stdout, \
        proc.stdout + proc.stderr[-3000:]


def test_device_props_report_failed_queries():
    if not irnn_cuda.extension_loaded() or not \
            torch._C._dispatch_has_kernel_for_dispatch_key(
                "irnn_cuda::irnn_forward", "CUDA"):
        pytest.skip("irnn_cuda._C was built without CUDA kernels")
    DeviceProps = _ops.DeviceProps
    query, error_string = _ops.cuda_device_props_symbols()
    n = len(DeviceProps._fields_)
    sentinel = DeviceProps(*[-1] * n)
    props, failed = DeviceProps(*[-1] * n), ctypes.c_char_p()
    device = torch.cuda.device_count()  # one past the last device: invalid
    err = query(device, ctypes.byref(props), ctypes.byref(failed))
    assert err != 0, "a query of a device that does not exist succeeded"
    assert failed.value == b"cudaDevAttrMultiProcessorCount"
    assert error_string(err)
    assert bytes(props) == bytes(sentinel), "props changed by a failed query"
    if torch.cuda.is_available():
        err = query(0, ctypes.byref(props), ctypes.byref(failed))
        assert err == 0, error_string(err)
        assert props.sm_count > 0 and props.max_threads_per_block > 0
        assert props.smem_per_block > 0 and props.smem_per_block_optin > 0
        major = torch.cuda.get_device_capability(0)[0]
        assert props.cluster_launch == (1 if major >= 9 else 0), props.cluster_launch
        # Clusters per wave: queried where clusters launch, at most the
        # SMs' share (a GPC holds whole clusters only), else unknown.
        for blocks in (4, 8):
            got = getattr(props, f"clusters_of_{blocks}")
            if props.cluster_launch:
                assert 1 <= got <= props.sm_count // blocks, (blocks, got)
            else:
                assert got == 0, (blocks, got)
        assert _ops.cuda_device_props(0) == {
            name: getattr(props, name) for name, _ in DeviceProps._fields_}
    with pytest.raises(RuntimeError, match="cudaDevAttrMultiProcessorCount"):
        _ops.cuda_device_props(device)


def test_cuda_gemm_choice(monkeypatch):
    """irnn_cuda.cuda_gemm() names the GEMM of the per-step path and of the
    large-H and cluster backward's gradients. A CUDA build on a machine with
    the toolkit's or torch's cuBLASLt links it (CI: IRNN_EXPECT_CUDA=1);
    IRNN_CUDA_GEMM=tiled chooses the tiled kernel, an unknown value is
    refused."""
    if not irnn_cuda.has_kernels("cuda"):
        if os.environ.get("IRNN_EXPECT_CUDA") == "1":
            pytest.fail("IRNN_EXPECT_CUDA=1 but irnn_cuda._C has no CUDA kernels")
        assert irnn_cuda.cuda_gemm() is None
        pytest.skip("no CUDA kernels in this build")
    monkeypatch.delenv("IRNN_CUDA_GEMM", raising=False)
    if os.environ.get("IRNN_EXPECT_CUDA") == "1":
        assert irnn_cuda._C.CUBLASLT == 1, "the CUDA build did not link cuBLASLt"
    assert irnn_cuda.cuda_gemm() == ("cublaslt" if irnn_cuda._C.CUBLASLT
                                     else "tiled")
    monkeypatch.setenv("IRNN_CUDA_GEMM", "tiled")
    assert irnn_cuda.cuda_gemm() == "tiled"
    monkeypatch.setenv("IRNN_CUDA_GEMM", "cuBLAS")
    with pytest.raises(ValueError, match="not one of cublaslt, tiled"):
        irnn_cuda.cuda_gemm()
