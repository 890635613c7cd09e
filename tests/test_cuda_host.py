"""The CUDA host code, checked without a GPU.

- tests/host/launch_record.cpp compiles csrc/cuda/irnn_launch.cuh with g++
  and records every launch instead of running it: no operand pointer of the
  large-H backward leaves its buffer (in reverse, the last step walked has
  no step s + 1), the per-step GEMMs at B = 16, H = 256 spread over the
  SMs, and T, B >= 2^31 are refused.
- The built extension's device property query reports a failed
  cudaDeviceGetAttribute instead of returning zeros (which would silently
  pick the large-H path). On a machine without a GPU every query fails.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import irnn_cuda

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


class DeviceProps(ctypes.Structure):  # csrc/cuda/irnn_cuda_api.h
    _fields_ = [("sm_count", ctypes.c_int),
                ("max_threads_per_block", ctypes.c_int),
                ("smem_per_block", ctypes.c_int64),
                ("smem_per_block_optin", ctypes.c_int64)]


def _cuda_symbols():
    import irnn_cuda._C as ext
    lib = ctypes.CDLL(ext.__file__)
    # irnn_cuda::irnn_cuda_device_props(int, DeviceProps*, const char**)
    props = lib._ZN9irnn_cuda22irnn_cuda_device_propsEiPNS_11DevicePropsEPPKc
    props.restype = ctypes.c_int
    props.argtypes = [ctypes.c_int, ctypes.POINTER(DeviceProps),
                      ctypes.POINTER(ctypes.c_char_p)]
    # irnn_cuda::irnn_cuda_error_string(int)
    text = lib._ZN9irnn_cuda22irnn_cuda_error_stringEi
    text.restype = ctypes.c_char_p
    text.argtypes = [ctypes.c_int]
    return props, text


def test_device_props_report_failed_queries():
    if not irnn_cuda.extension_loaded() or not \
            torch._C._dispatch_has_kernel_for_dispatch_key(
                "irnn_cuda::irnn_forward", "CUDA"):
        pytest.skip("irnn_cuda._C was built without CUDA kernels")
    query, error_string = _cuda_symbols()
    sentinel = DeviceProps(-1, -1, -1, -1)
    props, failed = DeviceProps(-1, -1, -1, -1), ctypes.c_char_p()
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
