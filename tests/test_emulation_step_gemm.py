"""The per-step path with its recurrent GEMM handed to a library
(StepGemmHook in csrc/cuda/irnn_cuda_api.h, run_forward_step_gemm in
irnn_launch.cuh), executed on the CPU (tests/emu/) with a plain-loop hook
in place of cuBLASLt: the orchestration around the hook (one projection of
every step's input, one hook call per step in walking order, in place on
the output, h_n copied from the last step) against the float64 reference,
and where the launcher must keep the tiled kernel instead.
"""
import shutil

import pytest
import torch

from conftest import max_rel_err
from irnn_cuda.reference import irnn_layer_reference

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="needs g++ to build the emulation")

from test_emulation import LARGE_H, harness  # noqa: E402,F401
import emu  # noqa: E402  (on sys.path through test_emulation)

TABLE = emu.A100  # no clusters: H = 300 takes the per-step path


def inputs(T, B, I, H, project, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale  # noqa: E731
    return dict(x=r(T, B, I if project else H),
                h0=r(B, H, scale=0.5),
                w_ih=r(H, I, scale=0.5) if project else None,
                w_hh=r(H, H, scale=0.9 / H ** 0.5),
                b_ih=r(H, scale=0.1) if bias else None,
                b_hh=r(H, scale=0.1) if bias else None)


def forward(harness, v, relu=True, reverse=False, store=True, step_gemm=None,
            lengths=None):
    return harness.forward(TABLE, v["x"], v["h0"], v["w_ih"], v["w_hh"],
                           v["b_ih"], v["b_hh"], relu, reverse, store,
                           lengths=lengths, step_gemm=step_gemm)


def reference(v, relu=True, reverse=False):
    d = {k: (t.double() if t is not None else None) for k, t in v.items()}
    return irnn_layer_reference(d["x"], d["h0"], d["w_ih"], d["w_hh"],
                                d["b_ih"], d["b_hh"],
                                "relu" if relu else "tanh", reverse)


@pytest.mark.parametrize("project,I,bias,reverse", [
    (True, 1, True, False), (True, 3, True, True), (True, 2, False, False),
    (False, 0, True, False), (False, 0, True, True)])
def test_hook_forward_matches_reference(harness, project, I, bias, reverse):
    """Each step is one hook call (T in all) and the results agree with the
    float64 reference and with the tiled kernel's run."""
    T, B, H = 6, 5, 300
    v = inputs(T, B, I, H, project, bias)
    hook = {}
    out, h_n, cfg = forward(harness, v, reverse=reverse, step_gemm=hook)
    assert cfg["path"] == LARGE_H, cfg
    assert hook["calls"] == T, hook
    ref_out, ref_hn = reference(v, reverse=reverse)
    assert max_rel_err(out, ref_out) <= 2e-6
    assert max_rel_err(h_n, ref_hn) <= 2e-6
    # The last walked step's state is h_n, bit for bit.
    assert torch.equal(h_n, out[0 if reverse else -1])
    tiled_out, tiled_hn, _ = forward(harness, v, reverse=reverse)
    assert max_rel_err(out, tiled_out) <= 2e-6
    assert max_rel_err(h_n, tiled_hn) <= 2e-6


def test_hook_not_used_where_it_cannot_serve(harness):
    """The tiled kernel keeps tanh (no library epilogue), lengths, the last
    state only (no sequence to project into), and an x whose time stride is
    not B rows; a persistent-kernel size never reaches the hook."""
    T, B, I, H = 4, 3, 1, 300
    v = inputs(T, B, I, H, True, True)
    cases = [dict(relu=False), dict(store=False),
             dict(lengths=torch.tensor([4, 3, 1]))]
    for kw in cases:
        hook = {}
        forward(harness, v, step_gemm=hook, **kw)
        assert hook["calls"] == 0, kw
    strided = dict(v, x=v["x"].transpose(0, 1).contiguous().transpose(0, 1))
    hook = {}
    out, _, _ = forward(harness, strided, step_gemm=hook)
    assert hook["calls"] == 0
    assert max_rel_err(out, reference(v)[0]) <= 2e-6
    small = inputs(T, B, I, 32, True, True)
    hook = {}
    _, _, cfg = forward(harness, small, step_gemm=hook)
    assert cfg["path"] != LARGE_H and hook["calls"] == 0, cfg


def test_hook_failure_is_returned(harness):
    """A hook that fails stops the launch at that call with its code; no
    later step is run."""
    T, B, I, H = 5, 2, 1, 300
    v = inputs(T, B, I, H, True, True)
    hook = {"fail_at": 2}
    forward(harness, v, step_gemm=hook)
    assert hook["rc"] == 77 and hook["calls"] == 3, hook
