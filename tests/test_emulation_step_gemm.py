"""The per-step path with its recurrent GEMM, and the large-H and cluster
backward with their gradient GEMMs, handed to a library (GemmHook in
csrc/cuda/irnn_cuda_api.h; run_forward_step_gemm and run_backward_grad_lib
in irnn_launch.cuh), executed on the CPU (tests/emu/) with a plain-loop hook
in place of cuBLASLt, and with a column-major model of the cuBLASLt call
that irnn_ops_cuda.cpp makes: the orchestration around the hook (one
projection of every step's input, one hook call per step in walking order,
in place on the output, the activation after it, h_n copied from the last
step; the backward's steps and gradients) against the float64 reference,
and where the launcher must keep the tiled kernel instead.
"""
import shutil

import pytest
import torch

from conftest import max_rel_err
from irnn_cuda.reference import irnn_layer_reference

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="needs g++ to build the emulation")

from test_emulation import (LARGE_H, SMALL_SMEM, harness,  # noqa: E402,F401
                            make_inputs, run_and_compare)
from test_emulation_cluster import CLUSTER_BWD  # noqa: E402
import emu  # noqa: E402  (on sys.path through test_emulation)

TABLE = emu.A100  # no clusters: H = 300 takes the per-step path
# The hook's models (tests/emu/emu_harness.cpp, PlainGemm): the contract as
# a row-major loop, and the cuBLASLt call of irnn_ops_cuda.cpp (lt_problem
# in csrc/cuda/irnn_lt_map.h) evaluated as column-major cublasLtMatmul.
MODELS = ["plain", "cublaslt"]


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


@pytest.mark.parametrize("project,I,bias,reverse,relu", [
    (True, 1, True, False, True), (True, 3, True, True, True),
    (True, 2, False, False, True), (False, 0, True, False, True),
    (False, 0, True, True, True), (True, 2, True, False, False),
    (False, 0, True, True, False)])
@pytest.mark.parametrize("model", MODELS)
def test_hook_forward_matches_reference(harness, project, I, bias, reverse,
                                        relu, model):
    """Each step is one hook call (T in all) and the results agree with the
    float64 reference and with the tiled kernel's run, relu and tanh."""
    T, B, H = 6, 5, 300
    v = inputs(T, B, I, H, project, bias)
    hook = {"model": model}
    out, h_n, cfg = forward(harness, v, relu=relu, reverse=reverse,
                            step_gemm=hook)
    assert cfg["path"] == LARGE_H, cfg
    assert hook["calls"] == T, hook
    ref_out, ref_hn = reference(v, relu=relu, reverse=reverse)
    assert max_rel_err(out, ref_out) <= 2e-6
    assert max_rel_err(h_n, ref_hn) <= 2e-6
    # The last walked step's state is h_n, bit for bit.
    assert torch.equal(h_n, out[0 if reverse else -1])
    tiled_out, tiled_hn, _ = forward(harness, v, relu=relu, reverse=reverse)
    assert max_rel_err(out, tiled_out) <= 2e-6
    assert max_rel_err(h_n, tiled_hn) <= 2e-6


def test_hook_not_used_where_it_cannot_serve(harness):
    """The tiled kernel keeps the last state only (no sequence to project
    into) and an x whose time stride is not B rows; a persistent-kernel size
    never reaches the hook."""
    T, B, I, H = 4, 3, 1, 300
    v = inputs(T, B, I, H, True, True)
    hook = {}
    forward(harness, v, step_gemm=hook, store=False)
    assert hook["calls"] == 0
    strided = dict(v, x=v["x"].transpose(0, 1).contiguous().transpose(0, 1))
    hook = {}
    out, _, _ = forward(harness, strided, step_gemm=hook)
    assert hook["calls"] == 0
    assert max_rel_err(out, reference(v)[0]) <= 2e-6
    small = inputs(T, B, I, 32, True, True)
    hook = {}
    _, _, cfg = forward(harness, small, step_gemm=hook)
    assert cfg["path"] != LARGE_H and hook["calls"] == 0, cfg


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("reverse,packed,relu", [
    (False, False, True), (True, False, True), (False, True, False)])
def test_hook_forward_with_lengths(harness, model, reverse, packed, relu):
    """Lengths on the library path: each row stops at its end (zeros after
    it in the padded output), h_n is each row's last state; reversed and
    packed calls run it on run_forward's padded copy. Every output equals
    the tiled kernel's within float32 and the float64 reference's."""
    T, B, I, H = 5, 4, 2, 300
    v = inputs(T, B, I, H, True, True)
    lengths = torch.tensor([5, 4, 2, 1])  # sorted: a PackedSequence's order
    x = v["x"]
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths).data
    hook = {"model": model}
    out, h_n, cfg = harness.forward(TABLE, x, v["h0"], v["w_ih"], v["w_hh"],
                                    v["b_ih"], v["b_hh"], relu, reverse, True,
                                    lengths=lengths, packed=packed,
                                    step_gemm=hook)
    assert cfg["path"] == LARGE_H and hook["calls"] == T, hook
    tiled, tiled_hn, _ = harness.forward(TABLE, x, v["h0"], v["w_ih"],
                                         v["w_hh"], v["b_ih"], v["b_hh"],
                                         relu, reverse, True, lengths=lengths,
                                         packed=packed)
    assert max_rel_err(out, tiled) <= 2e-6
    assert max_rel_err(h_n, tiled_hn) <= 2e-6
    for b, n in enumerate(lengths.tolist()):
        one = dict(v, x=v["x"][:n, b:b + 1], h0=v["h0"][b:b + 1])
        ref_out, ref_hn = reference(one, relu=relu, reverse=reverse)
        assert max_rel_err(h_n[b:b + 1], ref_hn) <= 2e-6, b
        if not packed:
            assert max_rel_err(out[:n, b:b + 1], ref_out) <= 2e-6, b
            assert torch.equal(out[n:, b], torch.zeros_like(out[n:, b]))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_hook_lengths_padding_is_never_read(harness, model, reverse):
    """NaN in x and in the gradient at padded steps, on the library path
    (forward and backward): every output and gradient finite and bitwise
    equal to the run with zeros there."""
    T, B, I, H = 5, 4, 2, 300
    v = inputs(T, B, I, H, True, True)
    lengths = torch.tensor([5, 4, 2, 1])
    pad = (torch.arange(T).view(T, 1) >= lengths.view(1, B)).unsqueeze(2)
    g_out = torch.randn(T, B, H, generator=torch.Generator().manual_seed(1))
    runs = []
    for fill in (0.0, float("nan")):
        x = v["x"].masked_fill(pad, fill)
        hook = {"model": model}
        out, h_n, cfg = harness.forward(TABLE, x, v["h0"], v["w_ih"],
                                        v["w_hh"], v["b_ih"], v["b_hh"], True,
                                        reverse, True, lengths=lengths,
                                        step_gemm=hook)
        assert cfg["path"] == LARGE_H and hook["calls"] == T, hook
        bhook = {"model": model}
        grads = harness.backward(TABLE, g_out.masked_fill(pad, fill), None, x,
                                 v["h0"], v["w_ih"], v["w_hh"], out, True,
                                 reverse, lengths=lengths, bwd_gemm=bhook)
        assert bhook["calls"] > 0, bhook
        runs.append((out, h_n) + tuple(grads[:5]))
    for a, b in zip(*runs):
        assert torch.isfinite(b).all()
        assert torch.equal(a, b)


def test_hook_failure_is_returned(harness):
    """A hook that fails stops the launch at that call with its code; no
    later step is run."""
    T, B, I, H = 5, 2, 1, 300
    v = inputs(T, B, I, H, True, True)
    hook = {"fail_at": 2}
    forward(harness, v, step_gemm=hook)
    assert hook["rc"] == 77 and hook["calls"] == 3, hook


@pytest.mark.parametrize("nan_step", [0, 3])
def test_hook_forward_propagates_nan(harness, nan_step):
    """The activation after each hook call is the kernels' own (a library's
    relu epilogue would map NaN to 0): a NaN input at a step makes that
    step's row NaN and, through W_hh, every later state, as the tiled
    kernel's."""
    T, B, I, H = 5, 3, 1, 300
    v = inputs(T, B, I, H, True, True)
    v["x"][nan_step, 1, 0] = float("nan")
    hook = {}
    out, h_n, _ = forward(harness, v, step_gemm=hook)
    assert hook["calls"] == T
    tiled, _, _ = forward(harness, v)
    assert torch.equal(out.isnan(), tiled.isnan())
    assert out[nan_step, 1].isnan().all() and h_n[1].isnan().all()
    assert not out[:nan_step].isnan().any()


# The backward's GEMMs through the hook (bwd_gemm_suits): the recurrence's
# step GEMMs with irnn_bwd_point_kernel (run_backward_steps_lib), then
# (run_backward_grad_lib) dh0, dW_hh (the steps with a stored h_prev, then
# the h0 step added in place), and with the projection dW_ih and dx.
@pytest.mark.parametrize("T,B,I,H,project,reverse,grads", [
    (5, 4, 3, 300, True, False, "both"),
    (4, 3, 1, 300, True, True, "seq"),
    (4, 3, 0, 300, False, False, "last"),
    (1, 3, 2, 300, True, False, "both"),
])
@pytest.mark.parametrize("model", MODELS)
def test_hook_backward_matches_reference(harness, T, B, I, H, project,
                                         reverse, grads, model):
    hook = {"model": model}
    _, bcfg = run_and_compare(harness, TABLE, torch.float32, T, B, I or 5, H,
                              reverse=reverse, project=project, grads=grads,
                              expect_path=LARGE_H, bwd_gemm=hook)
    # T - 1 steps, then dh0, the h0 step of dW_hh, the other steps' (T > 1)
    # and dx; dW_ih stays tiled for run_and_compare's batch_first x.
    assert hook["calls"] == T - 1 + 2 + (T > 1) + project, hook


@pytest.mark.parametrize("model", MODELS)
def test_hook_backward_with_lengths_and_cluster(harness, model):
    """tanh, lengths (the padded copies of bwd_relayout) and the cluster
    backward (same da_t workspace, its own recurrence) go through the hook
    too."""
    hook = {"model": model}
    run_and_compare(harness, TABLE, torch.float32, 4, 3, 2, 300, "tanh",
                    bwd_gemm=hook)
    assert hook["calls"] == 3 + 4, hook  # dW_ih tiled: batch_first x
    T, B, I, H = 3, 5, 2, 300
    gen = torch.Generator().manual_seed(3)
    v = make_inputs(torch.float32, T, B, I, H, True, True, gen)
    lengths = torch.tensor([3, 1, 2, 3, 2])
    out, _, _ = harness.forward(TABLE, v["x"], v["h0"], v["w_ih"], v["w_hh"],
                                v["b_ih"], v["b_hh"], True, False, True,
                                lengths=lengths)
    g_out = torch.randn(T, B, H, generator=gen)
    hook = {"model": model}
    got = harness.backward(TABLE, g_out, None, v["x"], v["h0"], v["w_ih"],
                           v["w_hh"], out, True, False, lengths=lengths,
                           bwd_gemm=hook)
    assert hook["calls"] == T - 1 + 5 and got[-1]["path"] == LARGE_H, hook
    tiled = harness.backward(TABLE, g_out, None, v["x"], v["h0"], v["w_ih"],
                             v["w_hh"], out, True, False, lengths=lengths)
    for a, b in zip(got[:5], tiled[:5]):
        assert max_rel_err(a, b) <= 2e-6
    hook = {"model": model}
    _, bcfg = run_and_compare(harness, emu.H100, torch.float32, 3, 4, 2, 256,
                              bwd_gemm=hook)
    # The cluster kernel runs the recurrence: the gradients' calls only.
    assert bcfg["path"] == CLUSTER_BWD and hook["calls"] == 4, (bcfg, hook)


def test_hook_backward_not_used_where_it_cannot_serve(harness):
    """The tiled GEMM keeps float64 and the 16-bit types, a stored sequence
    whose time stride is not B rows, and the persistent kernels' sizes; dW_ih
    alone stays tiled for an x whose time stride is not B rows."""
    for dtype in (torch.float64, torch.bfloat16):
        hook = {}
        run_and_compare(harness, TABLE, dtype, 3, 2, 2, 300, bwd_gemm=hook)
        assert hook["calls"] == 0, dtype
    hook = {}
    _, bcfg = run_and_compare(harness, TABLE, torch.float32, 3, 2, 2, 32,
                              bwd_gemm=hook)
    assert bcfg["path"] != LARGE_H and hook["calls"] == 0, bcfg
    T, B, I, H = 3, 4, 2, 300
    v = inputs(T, B, I, H, True, True)
    out, _, _ = forward(harness, v)
    g_out = torch.randn(T, B, H)
    want = harness.backward(TABLE, g_out, None, v["x"], v["h0"], v["w_ih"],
                            v["w_hh"], out, True, False)
    strided_out = out.transpose(0, 1).contiguous().transpose(0, 1)
    hook = {}
    got = harness.backward(TABLE, g_out, None, v["x"], v["h0"], v["w_ih"],
                           v["w_hh"], strided_out, True, False, bwd_gemm=hook)
    assert hook["calls"] == 0
    for a, b in zip(got[:5], want[:5]):
        assert torch.equal(a, b)
    strided_x = v["x"].transpose(0, 1).contiguous().transpose(0, 1)
    hook = {}
    got = harness.backward(TABLE, g_out, None, strided_x, v["h0"], v["w_ih"],
                           v["w_hh"], out, True, False, bwd_gemm=hook)
    assert hook["calls"] == T - 1 + 4  # all but dW_ih
    for a, b in zip(got[:5], want[:5]):
        assert max_rel_err(a, b) <= 2e-6


@pytest.mark.parametrize("model", MODELS)
def test_hook_backward_broadcast_rows(harness, model):
    """An x or a stored sequence broadcast over time and batch (strides
    (0, 0, 1): a time stride of B rows, but rows 0 elements apart) is no
    matrix a library takes (cuBLASLt wants a leading dimension of at least
    the row's width): the gradients that read it stay tiled, and agree with
    the tiled path's."""
    T, B, I, H = 3, 4, 2, 300
    v = inputs(T, B, I, H, True, True)
    out, _, _ = forward(harness, v)
    g_out = torch.randn(T, B, H, generator=torch.Generator().manual_seed(8))
    x_b = v["x"][:1, :1].expand(T, B, I)
    out_b = out[:1, :1].expand(T, B, H)
    for x, seq, hook_calls in ((x_b, out, T - 1 + 4),  # all but dW_ih
                               (v["x"], out_b, 0)):
        want = harness.backward(TABLE, g_out, None, x, v["h0"], v["w_ih"],
                                v["w_hh"], seq, True, False)
        hook = {"model": model}
        got = harness.backward(TABLE, g_out, None, x, v["h0"], v["w_ih"],
                               v["w_hh"], seq, True, False, bwd_gemm=hook)
        assert hook["calls"] == hook_calls, (x.stride(), seq.stride(), hook)
        for a, b in zip(got[:5], want[:5]):
            assert max_rel_err(a, b) <= 2e-6


def test_hook_backward_failure_is_returned(harness):
    T, B, I, H = 3, 2, 1, 300
    v = inputs(T, B, I, H, True, True)
    out, _, _ = forward(harness, v)
    for fail_at in (1, T):  # a step's GEMM, a gradient's
        hook = {"fail_at": fail_at}
        harness.backward(TABLE, torch.randn(T, B, H), None, v["x"], v["h0"],
                         v["w_ih"], v["w_hh"], out, True, False, bwd_gemm=hook)
        assert hook["rc"] == 77 and hook["calls"] == fail_at + 1, hook


@pytest.mark.parametrize("model", MODELS)
def test_hook_backward_sums_in_parts(harness, model):
    """Past 2 x 1024 rows (t, b) the gradients are sums in parts
    (split_parts in irnn_cuda_api.h): dW_hh over (T - 1) B = 2201 rows as a
    strided batch of 2 products and a call for the one row left, then the
    h0 step; dW_ih over T B = 2272 rows as a batch of 2; db by the column
    sum in 2 parts. Every gradient against float64, and against the tiled
    path (which sums dW_hh and dW_ih unsplit)."""
    T, B, I, H = 32, 71, 3, 120
    assert harness.config(SMALL_SMEM, True, torch.float32, T, B, I,
                          H)["path"] == LARGE_H
    v = inputs(T, B, I, H, True, True, seed=5)
    out, _, _ = harness.forward(SMALL_SMEM, v["x"], v["h0"], v["w_ih"],
                                v["w_hh"], v["b_ih"], v["b_hh"], True, False,
                                True)
    g = torch.Generator().manual_seed(6)
    g_out, g_hn = torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g)
    hook = {"model": model}
    got = harness.backward(SMALL_SMEM, g_out, g_hn, v["x"], v["h0"],
                           v["w_ih"], v["w_hh"], out, True, False,
                           bwd_gemm=hook)
    # T - 1 steps; dh0; dW_hh's batch, its rest, the h0 step; dW_ih's batch;
    # dx. Products: the batches count 2 each.
    assert hook["calls"] == T - 1 + 6 and hook["max_batch"] == 2, hook
    assert hook["products"] == T - 1 + 8, hook
    tiled = harness.backward(SMALL_SMEM, g_out, g_hn, v["x"], v["h0"],
                             v["w_ih"], v["w_hh"], out, True, False)
    ref = {k: (t.double().requires_grad_() if t is not None else None)
           for k, t in v.items()}
    r_out, r_hn = reference(ref)
    loss = (r_out * g_out.double()).sum() + (r_hn * g_hn.double()).sum()
    want = torch.autograd.grad(loss, [ref["x"], ref["h0"], ref["w_ih"],
                                      ref["w_hh"], ref["b_ih"]])
    for name, a, b, w in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"), got[:5],
                             tiled[:5], want):
        assert max_rel_err(a, w) <= 1e-5, (name, max_rel_err(a, w))
        assert max_rel_err(a, b) <= 1e-5, (name, max_rel_err(a, b))
