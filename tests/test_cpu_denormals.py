"""Denormals in the CPU kernels: the float32 kernels flush them to zero (in
every thread of the call), the caller's floating-point mode is the same
after the call as before it, and float64 keeps gradual underflow."""
import ctypes
import os
import platform
import shutil
import subprocess

import pytest
import torch

import irnn_cuda

pytestmark = pytest.mark.skipif(not irnn_cuda.has_kernels("cpu"),
                                reason="irnn_cuda._C has no CPU kernels")

ops = torch.ops.irnn_cuda
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny library over csrc/cpu/irnn_cpu_denormals.h that reads the calling
# thread's control word (MXCSR / FPCR) and drives the guard directly.
GUARD_PROBE = r"""
#include <stdexcept>
#include "irnn_cpu_denormals.h"
using namespace irnn_cuda;
extern "C" {
unsigned long long control_word() { return fp_control_word(); }
unsigned long long flush_bits() { return kFlushDenormalBits; }
// 1 when the guard set the flush bits inside and restored the word it found
// while unwinding an exception thrown inside it.
int guard_restores_on_throw() {
  const uint64_t before = fp_control_word();
  uint64_t inside = 0;
  try {
    FlushDenormalsGuard flush(true);
    inside = fp_control_word();
    throw std::runtime_error("inside the guard");
  } catch (const std::runtime_error&) {
  }
  return inside == (before | kFlushDenormalBits) && fp_control_word() == before;
}
}
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    if platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        pytest.skip(f"no flush-to-zero control word known on {platform.machine()}")
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to build the control-word probe")
    out = tmp_path_factory.mktemp("denormals")
    src, lib = out / "probe.cpp", out / "probe.so"
    src.write_text(GUARD_PROBE)
    subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC",
                    "-I", os.path.join(ROOT, "csrc", "cpu"), str(src), "-o", str(lib)],
                   check=True, capture_output=True, text=True)
    probe = ctypes.CDLL(str(lib))
    for name in ("control_word", "flush_bits"):
        getattr(probe, name).restype = ctypes.c_ulonglong
    return probe


@pytest.fixture
def two_threads():
    """Two intra-op threads, so a call's batch slices run on the caller and
    on a pool thread."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def tiny_product_inputs(dtype, tiny):
    """A relu layer whose every pre-activation is tiny * tiny: the input
    projection x * w_ih with x = w_ih = tiny, W_hh and h0 zero. B = 8 rows,
    so with two threads both batch slices see it."""
    T, B, H = 3, 8, 5
    return dict(input=torch.full((T, B, 1), tiny, dtype=dtype),
                h0=torch.zeros(B, H, dtype=dtype),
                weight_ih=torch.full((H, 1), tiny, dtype=dtype),
                weight_hh=torch.zeros(H, H, dtype=dtype))


def forward(a):
    return ops.irnn_forward(a["input"], a["h0"], a["weight_ih"], a["weight_hh"],
                            None, None, "relu", False, True)


def torch_still_makes_denormals():
    """True when torch's own float32 ops, on the calling thread and on the
    intra-op pool (a product over 4M elements is split between threads),
    produce denormals: no flush mode leaked out of a kernel call."""
    x = torch.full((1 << 22,), 1e-20)
    return bool(((x * x) > 0).all()) and (torch.tensor(1e-20) ** 2).item() > 0


def test_float32_forward_flushes_denormals_in_every_thread(two_threads):
    a = tiny_product_inputs(torch.float32, 1e-20)
    expected = a["input"][0, 0, 0] * a["weight_ih"][0, 0]
    assert 0 < expected.item() < torch.finfo(torch.float32).tiny  # nn.RNN's value
    out, h_n = forward(a)
    assert (out == 0).all() and (h_n == 0).all(), out
    assert torch_still_makes_denormals()


def test_float32_backward_flushes_denormals(two_threads):
    """dW_hh = sum da^T h_prev of tiny gradients and tiny states is zero."""
    T, B, H = 4, 8, 6
    x = torch.rand(T, B, 1) + 0.5
    w_ih = torch.full((H, 1), 1e-20)  # states ~1e-20: normal
    w_hh = torch.zeros(H, H)
    h0 = torch.zeros(B, H)
    out, _ = ops.irnn_forward(x, h0, w_ih, w_hh, None, None, "relu", False, True)
    assert (out > 0).all()
    grad_out = torch.full((T, B, H), 1e-20)
    grads = ops.irnn_backward(grad_out, None, x, h0, w_ih, w_hh, out, "relu",
                              False)
    exact = torch.einsum("tbi,tbj->ij", grad_out.double(), torch.cat(
        [h0[None], out[:-1]]).double())
    assert 0 < exact.abs().max() < torch.finfo(torch.float32).tiny
    assert (grads[3] == 0).all(), grads[3]
    assert torch_still_makes_denormals()


def test_float64_keeps_gradual_underflow(two_threads):
    a = tiny_product_inputs(torch.float64, 1e-155)
    expected = (a["input"][0, 0, 0] * a["weight_ih"][0, 0]).item()
    assert 0 < expected < torch.finfo(torch.float64).tiny
    out, h_n = forward(a)
    assert (out == expected).all() and (h_n == expected).all(), out


@pytest.mark.parametrize("flush_before", [False, True])
def test_caller_mode_is_restored(probe, two_threads, flush_before):
    """The control word after a call (also after a call that raised) is the
    one before it, whether the caller had flushing off or on."""
    torch.set_flush_denormal(flush_before)
    try:
        before = probe.control_word()
        assert bool(before & probe.flush_bits()) == flush_before
        forward(tiny_product_inputs(torch.float32, 1e-20))
        assert probe.control_word() == before
        bad = tiny_product_inputs(torch.float32, 1e-20)
        bad["weight_hh"] = torch.zeros(3, 3)
        with pytest.raises(RuntimeError, match="h0 must have shape"):
            forward(bad)
        assert probe.control_word() == before
    finally:
        torch.set_flush_denormal(False)
    assert torch_still_makes_denormals()


def test_guard_restores_mode_when_unwinding(probe):
    assert probe.flush_bits() != 0
    assert probe.guard_restores_on_throw() == 1
