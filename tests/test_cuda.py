"""The CUDA kernels on a GPU: against the reference, against cuDNN, gradcheck,
bitwise determinism, CUDA-graph capture of a training step.

Without a GPU these skip, unless IRNN_REQUIRE_GPU=1 (bench/gpu_check.sh sets
it), which makes them fail instead. With IRNN_EXPECT_CUDA=1 (CI sets it
where nvcc is present), test_cuda_kernels_built fails when the extension
was built without its CUDA kernels; it needs no GPU.
"""
import os

import pytest
import torch

from conftest import (TF32_FLAGS_AT_START, TOL,
                      assert_module_error_within_4x_nn_rnn, max_rel_err,
                      module_outputs_and_grads, output_and_grad_names,
                      rnn_clear_of_relu_kink, tf32_flags, tf32_off)
import irnn_cuda
from irnn_cuda import FusedIRNN
from irnn_cuda.reference import irnn_layer_reference


def _has_cuda_kernels():
    return irnn_cuda.extension_loaded() and \
        torch._C._dispatch_has_kernel_for_dispatch_key(
            "irnn_cuda::irnn_forward", "CUDA") and \
        torch._C._dispatch_has_kernel_for_dispatch_key(
            "irnn_cuda::irnn_backward", "CUDA")


def test_cuda_kernels_built():
    if os.environ.get("IRNN_EXPECT_CUDA") != "1":
        pytest.skip("set IRNN_EXPECT_CUDA=1 to require the CUDA kernels")
    assert _has_cuda_kernels(), (
        "IRNN_EXPECT_CUDA=1 but irnn_cuda._C has no CUDA kernels for "
        "irnn_cuda::irnn_forward/irnn_backward (built without a CUDA toolkit?)")


@pytest.fixture
def cuda(no_tf32):
    """Skips without a GPU, or fails under IRNN_REQUIRE_GPU=1. TF32 is off
    for the test (conftest's no_tf32) and restored after it."""
    problem = None
    if not torch.cuda.is_available():
        problem = "torch.cuda.is_available() is False"
    elif not _has_cuda_kernels():
        problem = "irnn_cuda._C was built without CUDA kernels"
    if problem:
        if os.environ.get("IRNN_REQUIRE_GPU") == "1":
            pytest.fail(f"IRNN_REQUIRE_GPU=1 but {problem}")
        pytest.skip(f"needs a CUDA GPU ({problem})")
    return torch.device("cuda")


def layer_inputs(dtype, device, T, B, I, H, project, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)
    return dict(x=rnd(T, B, I if project else H), h0=rnd(B, H, scale=0.5),
                w_ih=rnd(H, I, scale=0.5) if project else None,
                w_hh=rnd(H, H, scale=0.9 / H ** 0.5), b_ih=rnd(H, scale=0.1),
                b_hh=rnd(H, scale=0.1))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64,
                                   torch.bfloat16, torch.float16])
@pytest.mark.parametrize("H,B", [(1, 300), (33, 300), (100, 200), (100, 1000),
                                 (100, 2000), (257, 9), (400, 24), (400, 60),
                                 (400, 100), (1024, 5)])
@pytest.mark.parametrize("project,nonlinearity,reverse",
                         [(True, "relu", False), (False, "tanh", True)])
def test_ops_vs_reference(cuda, dtype, H, B, project, nonlinearity, reverse):
    """Both ops, every output and gradient, persistent and large-H paths
    (on an H200 the register-resident kernels run B = 200, 300 and 1000 at
    2, 4 and 8 rows per block, and B = 2000 in several waves (8 rows; 4
    for a 16-bit input not projected; float64: today's kernel, but the
    forward at H = 1 and 33 projected, 2 rows per block, and the backward
    at H = 1 and 33, one row per block in several waves); the
    cluster kernels H = 257 at one row per
    cluster and H = 400 at B = 24, 60 and 100 at 2, 4 and 8 (the 16-bit
    backward at 4 in two waves for B = 100), projected or not)."""
    T = 5
    v = layer_inputs(dtype, cuda, T, B, 1 if project else 0, H, project)
    out, h_n = torch.ops.irnn_cuda.irnn_forward(
        v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
        nonlinearity, reverse, True)
    _, h_n_only = torch.ops.irnn_cuda.irnn_forward(
        v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
        nonlinearity, reverse, False)
    ref = {k: t.detach().cpu().double().requires_grad_() if t is not None
           else None for k, t in v.items()}
    r_out, r_hn = irnn_layer_reference(ref["x"], ref["h0"], ref["w_ih"],
                                       ref["w_hh"], ref["b_ih"], ref["b_hh"],
                                       nonlinearity, reverse)
    tol = TOL[dtype]
    assert max_rel_err(out, r_out) <= tol
    assert max_rel_err(h_n, r_hn) <= tol
    assert torch.equal(h_n, h_n_only)
    g_out = torch.randn(T, B, H, device=cuda).to(dtype)
    g_hn = torch.randn(B, H, device=cuda).to(dtype)
    grads = torch.ops.irnn_cuda.irnn_backward(
        g_out, g_hn, v["x"], v["h0"], v["w_ih"], v["w_hh"], out, nonlinearity,
        reverse)
    if dtype in (torch.float32, torch.float64):
        wrt = [ref["x"], ref["h0"], ref["w_ih"], ref["w_hh"], ref["b_ih"]]
        loss = ((r_out * g_out.cpu().double()).sum()
                + (r_hn * g_hn.cpu().double()).sum())
        expected = torch.autograd.grad(loss, [w for w in wrt if w is not None])
        if not project:
            expected = expected[:2] + (torch.empty(0),) + expected[2:]
    else:
        # h_t is rounded to 16 bits every step, so a relu gate near 0 can
        # differ from the unrounded reference's trajectory (the forward is
        # checked against it above). The backward is checked on the states
        # it was given: the float64 CPU op run on the same stored sequence.
        d = lambda t: None if t is None else t.detach().cpu().double()
        expected = torch.ops.irnn_cuda.irnn_backward(
            d(g_out), d(g_hn), d(v["x"]), d(v["h0"]), d(v["w_ih"]),
            d(v["w_hh"]), d(out), nonlinearity, reverse)
    for name, got, exp in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"), grads,
                              expected):
        assert max_rel_err(got, exp) <= tol, name


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H,B", [(100, 3), (257, 3), (400, 60), (1024, 2)])
def test_backward_grad_h_n_only(cuda, dtype, H, B):
    """The backward with the gradient on h_n only (grad_output None, as a
    direct call of the op may pass), T past the prefetch rings' 8 slots,
    against the float64 CPU op on the same stored sequence: the slot that
    took grad_h_n must not give it again (on an H200: register-resident,
    cluster at 1 and 2 or 4 rows, per-step path)."""
    T = 12
    v = layer_inputs(dtype, cuda, T, B, 2, H, True)
    out, _ = torch.ops.irnn_cuda.irnn_forward(
        v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"], "relu",
        False, True)
    g_hn = torch.randn(B, H, device=cuda).to(dtype)
    grads = torch.ops.irnn_cuda.irnn_backward(
        None, g_hn, v["x"], v["h0"], v["w_ih"], v["w_hh"], out, "relu", False)
    d = lambda t: None if t is None else t.detach().cpu().double()
    expected = torch.ops.irnn_cuda.irnn_backward(
        None, d(g_hn), d(v["x"]), d(v["h0"]), d(v["w_ih"]), d(v["w_hh"]),
        d(out), "relu", False)
    for name, got, exp in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"), grads,
                              expected):
        assert max_rel_err(got, exp) <= TOL[dtype], name


@pytest.mark.cuda
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("I,num_layers,bidirectional,batch_first",
                         [(1, 1, False, False), (16, 2, True, True)])
def test_module_vs_cudnn(cuda, nonlinearity, I, num_layers, bidirectional,
                         batch_first):
    """FusedIRNN against torch.nn.RNN (cuDNN) with the same weights: output,
    h_n and every gradient of a loss with O(1) random weights on output and
    h_n, each within 1e-4 of cuDNN's relative to its own scale."""
    torch.manual_seed(0)
    rnn = torch.nn.RNN(I, 100, num_layers, nonlinearity=nonlinearity,
                       bidirectional=bidirectional, batch_first=batch_first)
    T, B = 50, 64
    dirs = 2 if bidirectional else 1
    x = torch.randn((B, T, I) if batch_first else (T, B, I))
    hx = torch.randn(num_layers * dirs, B, 100)
    g_out = torch.randn((B, T, 100 * dirs) if batch_first else (T, B, 100 * dirs),
                        dtype=torch.float64)
    g_hn = torch.randn(hx.shape, dtype=torch.float64)
    rnn, x, hx = rnn.to(cuda), x.to(cuda), hx.to(cuda)
    ours = module_outputs_and_grads(FusedIRNN.from_rnn(rnn), x, hx, g_out,
                                    g_hn)
    theirs = module_outputs_and_grads(rnn, x, hx, g_out, g_hn)
    for name, a, b in zip(output_and_grad_names(rnn), ours, theirs,
                          strict=True):
        assert max_rel_err(a, b) <= 1e-4, name


@pytest.mark.cuda
@pytest.mark.parametrize("project", [True, False])
def test_gradcheck_float64(cuda, project):
    """gradcheck at H = 5: the register-resident float64 kernels (the
    forward projected; the backward projected and not)."""
    v = layer_inputs(torch.float64, cuda, 4, 3, 2 if project else 0, 5, project)
    names = ["x", "h0", "w_hh", "b_ih", "b_hh"] + (["w_ih"] if project else [])
    args = {k: (t.requires_grad_() if k in names else t) for k, t in v.items()}

    def f(x, h0, w_hh, b_ih, b_hh, *w_ih):
        out, h_n = torch.ops.irnn_cuda.irnn_forward(
            x, h0, w_ih[0] if w_ih else None, w_hh, b_ih, b_hh, "tanh", False,
            True)
        return out, h_n
    assert torch.autograd.gradcheck(f, [args[k] for k in names])


def float64_relu_grads(v, g_out):
    """The float64 reference of a relu layer on the CPU: output, h_n, and
    the gradients of sum(output * g_out) for x, h0, w_ih, w_hh and b_ih."""
    ref = {k: t.detach().cpu().double().requires_grad_() for k, t in v.items()}
    r_out, r_hn = irnn_layer_reference(ref["x"], ref["h0"], ref["w_ih"],
                                       ref["w_hh"], ref["b_ih"], ref["b_hh"],
                                       "relu", False)
    grads = torch.autograd.grad((r_out * g_out.cpu().double()).sum(),
                                [ref[k] for k in ("x", "h0", "w_ih", "w_hh",
                                                  "b_ih")])
    return r_out.detach(), r_hn.detach(), grads


@pytest.mark.cuda
@pytest.mark.parametrize("H,B", [(300, 99), (1024, 181)])
def test_gradient_sums_in_parts(cuda, monkeypatch, H, B):
    """Over 2,048 rows (t, b) at T = 24: dW_hh (23 B rows with a stored
    h_prev: 2,277 and 4,163) by cuBLASLt as a strided batch of 2 products
    and a call for the row left, dW_ih as a batch of 2 or 4, db as a column
    sum in 2 or 4 parts (split_parts): every gradient against float64, bitwise equal
    over two runs, and within float32 of the tiled GEMMs'. H = 300 is the
    cluster backward on an H200, 1024 the per-step path."""
    T = 24
    v = layer_inputs(torch.float32, cuda, T, B, 1, H, True)
    g_out = torch.randn(T, B, H, device=cuda)
    _, _, expected = float64_relu_grads(v, g_out)
    runs = {}
    choices = ["tiled"] + (["cublaslt"] if irnn_cuda._C.CUBLASLT else [])
    for choice in choices:
        monkeypatch.setenv("IRNN_CUDA_GEMM", choice)
        runs[choice] = []
        for _ in range(2):
            out, _ = torch.ops.irnn_cuda.irnn_forward(
                v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
                "relu", False, True)
            runs[choice].append(torch.ops.irnn_cuda.irnn_backward(
                g_out, None, v["x"], v["h0"], v["w_ih"], v["w_hh"], out,
                "relu", False))
        for a, b in zip(*runs[choice]):
            assert torch.equal(a, b), choice
        for name, got, exp in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"),
                                  runs[choice][0], expected):
            assert max_rel_err(got, exp) <= TOL[torch.float32], (choice, name)
    for name, a, b in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"),
                          runs["tiled"][0], runs[choices[-1]][0]):
        assert max_rel_err(a, b) <= TOL[torch.float32], name


@pytest.mark.cuda
@pytest.mark.parametrize("batch_first", [False, True])
def test_per_step_gemm_choices_agree(cuda, monkeypatch, batch_first):
    """The per-step path (H = 1024) with its GEMMs by cuBLASLt and by the
    tiled kernel: both within the float32 tolerance of the float64
    reference, every output and gradient, and NaN propagating; an unknown
    IRNN_CUDA_GEMM is refused by the op."""
    T, B, H = 6, 5, 1024
    v = layer_inputs(torch.float32, cuda, T, B, 2, H, True)
    if batch_first:
        v["x"] = v["x"].transpose(0, 1).contiguous().transpose(0, 1)
    g_out = torch.randn(T, B, H, device=cuda)
    r_out, r_hn, expected = float64_relu_grads(v, g_out)
    choices = ["tiled"] + (["cublaslt"] if irnn_cuda._C.CUBLASLT else [])
    for choice in choices:
        monkeypatch.setenv("IRNN_CUDA_GEMM", choice)
        assert irnn_cuda.cuda_gemm() == choice
        out, h_n = torch.ops.irnn_cuda.irnn_forward(
            v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
            "relu", False, True)
        assert max_rel_err(out, r_out) <= TOL[torch.float32], choice
        assert max_rel_err(h_n, r_hn) <= TOL[torch.float32], choice
        grads = torch.ops.irnn_cuda.irnn_backward(
            g_out, None, v["x"], v["h0"], v["w_ih"], v["w_hh"], out, "relu",
            False)
        for name, got, exp in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"),
                                  grads, expected):
            assert max_rel_err(got, exp) <= TOL[torch.float32], (choice, name)
        # relu(NaN) is NaN (a library relu epilogue would give 0).
        x_nan = v["x"].clone()
        x_nan[2, 1, 0] = float("nan")
        out, _ = torch.ops.irnn_cuda.irnn_forward(
            x_nan, v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
            "relu", False, True)
        assert out[2:, 1].isnan().all() and not out[:2].isnan().any(), choice
        assert not out[:, [0, 2, 3, 4]].isnan().any(), choice
    monkeypatch.setenv("IRNN_CUDA_GEMM", "cublas")
    with pytest.raises(RuntimeError, match="IRNN_CUDA_GEMM=cublas is not one of"):
        torch.ops.irnn_cuda.irnn_forward(
            v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
            "relu", False, True)


@pytest.mark.cuda
def test_rows_override(cuda, monkeypatch):
    """IRNN_CUDA_ROWS=2 and =none (the GPU check's sweep times them) give
    the table's results within float32 rounding (H = 100, B = 16: one row
    per block by the table); a call no variant of the named rows covers
    (the backward at H = 120 lists one row only) and an unknown value are
    refused."""
    v = layer_inputs(torch.float32, cuda, 9, 16, 1, 100, True)
    args = (v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"])

    def both():
        out, h_n = torch.ops.irnn_cuda.irnn_forward(*args, "relu", False,
                                                    True)
        grads = torch.ops.irnn_cuda.irnn_backward(
            out, h_n, v["x"], v["h0"], v["w_ih"], v["w_hh"], out, "relu",
            False)
        return [out, h_n, *grads]
    monkeypatch.delenv("IRNN_CUDA_ROWS", raising=False)
    table = both()
    for rows in ("2", "none"):
        monkeypatch.setenv("IRNN_CUDA_ROWS", rows)
        for a, b in zip(both(), table):
            assert max_rel_err(a, b) <= 1e-5, rows
    monkeypatch.setenv("IRNN_CUDA_ROWS", "8")
    w = layer_inputs(torch.float32, cuda, 3, 4, 1, 120, True)
    out, h_n = torch.ops.irnn_cuda.irnn_forward(
        w["x"], w["h0"], w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], "relu",
        False, True)  # the forward lists 8 rows at HP 128
    with pytest.raises(RuntimeError, match="IRNN_CUDA_ROWS=8, but no "
                       "register-resident variant of 8 rows"):
        torch.ops.irnn_cuda.irnn_backward(out, h_n, w["x"], w["h0"],
                                          w["w_ih"], w["w_hh"], out, "relu",
                                          False)
    monkeypatch.setenv("IRNN_CUDA_ROWS", "3")
    with pytest.raises(RuntimeError, match="IRNN_CUDA_ROWS=3 is not one of"):
        both()


@pytest.mark.cuda
@pytest.mark.parametrize("reverse", [False, True])
def test_per_step_gemm_with_lengths(cuda, monkeypatch, reverse):
    """Lengths on the per-step path (H = 1024): the library steps and the
    tiled kernel agree within float32, every output and gradient, zeros
    after each row's end."""
    if not irnn_cuda._C.CUBLASLT:
        pytest.skip("built without cuBLASLt")
    T, B, H = 6, 4, 1024
    v = layer_inputs(torch.float32, cuda, T, B, 2, H, True)
    lengths = torch.tensor([6, 3, 1, 5], device=cuda)
    g_out = torch.randn(T, B, H, device=cuda)
    runs = {}
    for choice in ("cublaslt", "tiled"):
        monkeypatch.setenv("IRNN_CUDA_GEMM", choice)
        out, h_n = torch.ops.irnn_cuda.irnn_forward(
            v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
            "relu", reverse, True, lengths)
        grads = torch.ops.irnn_cuda.irnn_backward(
            g_out, h_n, v["x"], v["h0"], v["w_ih"], v["w_hh"], out, "relu",
            reverse, lengths)
        runs[choice] = (out, h_n) + tuple(grads)
    for a, b in zip(runs["cublaslt"], runs["tiled"]):
        assert max_rel_err(a, b) <= TOL[torch.float32]
    out = runs["cublaslt"][0]
    assert not out[3:, 1].any() and not out[1:, 2].any()


@pytest.mark.cuda
@pytest.mark.parametrize("H", [1024, 100])
def test_op_graphs_match_direct_launches(cuda, monkeypatch, H):
    """IRNN_CUDA_GRAPHS=1: the per-step path's launches as one cached graph
    (a signature's first call launched directly, the next captured, then
    replayed where a call's tensors sit where the last one's did, updated
    where not) give the direct launches' results bit for bit (the same
    kernels and GEMM algorithms); H = 100 (one launch) is unaffected. An
    unknown value is refused."""
    T, B = 7, 6

    def call(v, g_out):
        out, h_n = torch.ops.irnn_cuda.irnn_forward(
            v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
            "relu", False, True)
        grads = torch.ops.irnn_cuda.irnn_backward(
            g_out, h_n, v["x"], v["h0"], v["w_ih"], v["w_hh"], out, "relu",
            False)
        return (out.clone(), h_n.clone()) + tuple(g.clone() for g in grads)

    cases = [(layer_inputs(torch.float32, cuda, T, B, 2, H, True, seed=s),
              torch.randn(T, B, H, device=cuda)) for s in (0, 1)]
    monkeypatch.setenv("IRNN_CUDA_GRAPHS", "0")
    direct = [call(*c) for c in cases]
    monkeypatch.setenv("IRNN_CUDA_GRAPHS", "1")
    # first call (direct), capture, replay (same tensors), update (new
    # tensors), replay
    runs = [call(*cases[0]), call(*cases[0]), call(*cases[0]),
            call(*cases[1]), call(*cases[1])]
    torch.cuda.synchronize()
    for got, want in zip(runs, [direct[0]] * 3 + [direct[1]] * 2):
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    monkeypatch.setenv("IRNN_CUDA_GRAPHS", "yes")
    with pytest.raises(RuntimeError, match="IRNN_CUDA_GRAPHS=yes is not one of"):
        call(*cases[0])


@pytest.mark.cuda
@pytest.mark.parametrize("H,B", [(100, 1024), (300, 64), (1024, 16)])
def test_gradients_bitwise_deterministic(cuda, H, B):
    v = layer_inputs(torch.float32, cuda, 20, B, 1, H, True)
    g_out = torch.randn(20, B, H, device=cuda)
    runs = []
    for _ in range(2):
        out, _ = torch.ops.irnn_cuda.irnn_forward(
            v["x"], v["h0"], v["w_ih"], v["w_hh"], v["b_ih"], v["b_hh"],
            "relu", False, True)
        runs.append((out,) + tuple(torch.ops.irnn_cuda.irnn_backward(
            g_out, None, v["x"], v["h0"], v["w_ih"], v["w_hh"], out, "relu",
            False)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def roomy(t):
    """The same values as t, in a storage one element longer."""
    room = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)
    room[:-1].copy_(t.reshape(-1))
    return room[:-1].view(t.shape)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_forward_odd_element_counts(cuda, dtype):
    """The 16-bit register-resident forward of an input that is not
    projected (H = 101 at B = 3 on any GPU with 3 SMs or more) reads x as
    4-byte words. With an odd element count x's storage ends mid-word, so
    the op passes a copy with a spare element; the outputs equal, bitwise,
    those of the same values in a storage with room after them."""
    T, B, H = 5, 3, 101
    v = layer_inputs(dtype, cuda, T, B, 0, H, False)
    x = v["x"]
    assert x.numel() % 2 == 1 and x.untyped_storage().nbytes() == 2 * x.numel()
    runs = [torch.ops.irnn_cuda.irnn_forward(
        xs, v["h0"], None, v["w_hh"], v["b_ih"], v["b_hh"], "relu", False, True)
        for xs in (x, roomy(x))]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("H", [101, 257])
def test_16bit_backward_odd_element_counts(cuda, dtype, H):
    """The 16-bit register-resident backward (H = 101 at B = 3 on any GPU
    with 3 SMs or more) reads x, grad_output and the sequence as 4-byte
    words, and so does the cluster backward (H = 257 on sm_90) with
    grad_output and the sequence. With odd element counts each storage ends
    mid-word, so the op passes copies with a spare element; every gradient
    equals, bitwise, the one from the same values in storages with room
    after them."""
    T, B, I = 5, 3, 3
    v = layer_inputs(dtype, cuda, T, B, I, H, True)
    ops = torch.ops.irnn_cuda
    out, _ = ops.irnn_forward(v["x"], v["h0"], v["w_ih"], v["w_hh"],
                              v["b_ih"], v["b_hh"], "relu", False, True)
    g_out = torch.randn(T, B, H, device=cuda).to(dtype)
    for t in (v["x"], out, g_out):
        assert t.numel() % 2 == 1 and t.untyped_storage().nbytes() == 2 * t.numel()
    runs = [ops.irnn_backward(g, None, x, v["h0"], v["w_ih"], v["w_hh"], o,
                              "relu", False)
            for g, x, o in ((g_out, v["x"], out),
                            (roomy(g_out), roomy(v["x"]), roomy(out)))]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("H,graphs,layers,dtype", [
    (64, "0", 1, torch.float32), (1024, "0", 1, torch.float32),
    (1024, "1", 1, torch.float32), (100, "0", 2, torch.float64)])
def test_cuda_graph_training_step(cuda, monkeypatch, H, graphs, layers, dtype):
    """Forward, loss, backward and an SGD step captured once and replayed
    give the same parameters as the same steps run eagerly; H = 1024 takes
    the per-step path, its GEMMs by cuBLASLt where the build has it, and
    with IRNN_CUDA_GRAPHS=1 launches into the caller's capture directly
    (the eager steps through the op's own graphs). Two float64 layers run
    today's kernels with more than 48 KB of shared memory, a different
    size per layer (its input width): the kernel's limit, raised for the
    larger, must stay raised when the smaller runs after it in the graph."""
    monkeypatch.setenv("IRNN_CUDA_GRAPHS", graphs)
    torch.manual_seed(0)

    def make():
        torch.manual_seed(0)
        return (FusedIRNN(1, H, num_layers=layers, device=cuda, dtype=dtype),
                torch.nn.Linear(H, 10, device=cuda, dtype=dtype))
    T, B = 30, 32
    xs = [torch.randn(T, B, 1, device=cuda, dtype=dtype) for _ in range(3)]
    ys = [torch.randint(0, 10, (B,), device=cuda) for _ in range(3)]

    def step(rnn, head, x, y, lr=0.05):
        _, h_n = rnn(x)
        loss = torch.nn.functional.cross_entropy(head(h_n[-1]), y)
        params = list(rnn.parameters()) + list(head.parameters())
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(lr * g)
        return loss.detach()

    rnn, head = make()
    eager_losses = [step(rnn, head, x, y) for x, y in zip(xs, ys)]
    eager = [p.detach().clone() for p in list(rnn.parameters()) + list(head.parameters())]

    rnn, head = make()
    static_x, static_y = xs[0].clone(), ys[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the graph, then undo it
        saved = [p.detach().clone() for p in list(rnn.parameters()) + list(head.parameters())]
        step(rnn, head, static_x, static_y)
        with torch.no_grad():
            for p, s in zip(list(rnn.parameters()) + list(head.parameters()), saved):
                p.copy_(s)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(rnn, head, static_x, static_y)
    # Capture does not run the step: replay each batch.
    graph_losses = []
    for x, y in zip(xs, ys):
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        graph_losses.append(static_loss.clone())
    torch.cuda.synchronize()
    for a, b in zip(graph_losses, eager_losses):
        assert max_rel_err(a, b) <= 1e-5
    for p, e in zip(list(rnn.parameters()) + list(head.parameters()), eager):
        assert max_rel_err(p, e) <= 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(cuda, dtype):
    """Under autocast, FusedIRNN's outputs and gradients are within 4x the
    error of nn.RNN under the same autocast (cuDNN, in float16 for either
    dtype), both against float64; the bound is never under 4 eps of
    `dtype`. Outputs are O(1) and no relu pre-activation is near 0
    (rnn_clear_of_relu_kink), so the bound is relative in earnest;
    tests/test_module.py runs the same check and values on the CPU and
    shows it rejects an all-zero output and a doubled gradient."""
    rnn, x, hx = rnn_clear_of_relu_kink(1, 100, 40, 16)
    rnn, x, hx = rnn.to(cuda), x.to(cuda), hx.to(cuda)
    assert_module_error_within_4x_nn_rnn(FusedIRNN.from_rnn(rnn), rnn, x, hx,
                                         dtype, autocast=True)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("H", [100, 257, 1024])
def test_16bit_error_within_4x_nn_rnn(cuda, dtype, nonlinearity, H):
    """End to end in 16 bits, persistent (H = 100) and large-H paths: the
    module in `dtype` against nn.RNN in `dtype` (cuDNN for float16; for
    bfloat16, which cuDNN's RNN does not take, PyTorch's own loop), outputs
    and every gradient within 4x nn.RNN's error against float64 on the same
    16-bit inputs. test_ops_vs_reference checks the backward on the states
    the kernel stored; this bounds what a user gets. tests/test_module.py
    runs the same values on the CPU."""
    rnn, x, hx = rnn_clear_of_relu_kink(8, H, 30, 16, nonlinearity)
    rnn = rnn.to(cuda, dtype)
    assert_module_error_within_4x_nn_rnn(FusedIRNN.from_rnn(rnn), rnn,
                                         x.to(cuda, dtype), hx.to(cuda, dtype),
                                         dtype)


def test_tf32_off_restores_every_flag():
    """tf32_off (the no_tf32 fixture) leaves every flag as it found it,
    whatever it found and whether the test passed; needs no GPU."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    try:
        for cudnn_tf32, matmul_tf32, benchmark in [
                (True, False, False), (False, True, True), (True, True, False)]:
            cudnn.allow_tf32, matmul.allow_tf32 = cudnn_tf32, matmul_tf32
            cudnn.benchmark = benchmark
            before = tf32_flags()
            with tf32_off():
                assert not cudnn.allow_tf32 and not matmul.allow_tf32
                assert cudnn.enabled and cudnn.benchmark == benchmark
            assert tf32_flags() == before
            with pytest.raises(KeyError):
                with tf32_off():
                    raise KeyError("a failing test")
            assert tf32_flags() == before
    finally:
        cudnn.allow_tf32 = TF32_FLAGS_AT_START[4]
        cudnn.benchmark = TF32_FLAGS_AT_START[1]
        matmul.allow_tf32 = TF32_FLAGS_AT_START[6]
        if matmul.fp32_precision != TF32_FLAGS_AT_START[7]:
            matmul.fp32_precision = TF32_FLAGS_AT_START[7]
    assert tf32_flags() == TF32_FLAGS_AT_START


def test_tf32_flags_as_the_session_found_them():
    """Runs after the GPU tests of this file (whose fixture pins TF32 off):
    the flags are as the session started, so test_ops.py's float32 bound on
    CUDA sees the same flags whatever ran before it."""
    assert tf32_flags() == TF32_FLAGS_AT_START

