"""The registered ops, called directly as torch.ops.irnn_cuda.* (so the
reference cannot stand in for them), against the reference; gradcheck,
opcheck, torch.compile, and the op-level contract of docs/ops.md. Every
test runs on the CPU and, when a GPU is present, on CUDA."""
import os
import zlib

import pytest
import torch

import irnn_cuda
from conftest import (all_pairs, assert_close_rel, assert_error_within_4x,
                      case_id, cuda_or_skip, nn_rnn_for)
from irnn_cuda import irnn_reference, rnn_forward

# no_tf32: on CUDA the float32 bounds need cuDNN's and cuBLAS's TF32 off;
# the fixture restores the flags after each test, so no order matters.
pytestmark = [pytest.mark.skipif(
    not irnn_cuda.extension_loaded() and os.environ.get("IRNN_EXPECT_EXT") != "1",
    reason="irnn_cuda._C is not built"), pytest.mark.usefixtures("no_tf32")]

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
ops = torch.ops.irnn_cuda

CASES = all_pairs(dict(
    nonlinearity=["relu", "tanh"], batch_first=[False, True],
    bias=[False, True], num_layers=[1, 2], bidirectional=[False, True],
    project=[False, True], T=[1, 7, 50], B=[1, 3, 16], I=[1, 5],
    H=[1, 3, 33, 100]), seed=1)


def device_or_skip(device):
    if device == "cuda":
        cuda_or_skip()
        if not irnn_cuda.has_kernels("cuda"):
            pytest.fail("a GPU is present but irnn_cuda._C has no CUDA kernels")


def op_layer(project):
    """A layer function for rnn_forward that calls the forward op directly;
    `project` runs the input projection outside it (weight_ih=None)."""
    def layer(input, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, reverse,
              return_sequence):
        if project:
            input, w_ih = input @ w_ih.t(), None
        return ops.irnn_forward(input, h0, w_ih, w_hh, b_ih, b_hh,
                                nonlinearity, reverse, True)
    return layer


def network(c):
    """A float64 nn.RNN for case `c`, with a fresh CPU input and hx. The
    values come from a seed of the case's own, so a case draws the same
    weights and data whatever ran before it."""
    torch.manual_seed(zlib.crc32(case_id(c).encode()))
    rnn = nn_rnn_for(c)
    dirs = 2 if c["bidirectional"] else 1
    shape = (c["B"], c["T"], c["I"]) if c["batch_first"] else (c["T"], c["B"], c["I"])
    x = torch.randn(shape, dtype=torch.float64)
    hx = torch.randn(c["num_layers"] * dirs, c["B"], c["H"], dtype=torch.float64)
    return rnn, x, hx


def run(c, fn, weights, x, hx, seed_dtype=torch.float64):
    """Outputs and all gradients of a loss touching output and h_n, with
    the loss's random weights rounded to `seed_dtype`."""
    weights = [w.detach().clone().requires_grad_() for w in weights]
    x = x.detach().clone().requires_grad_()
    hx = hx.detach().clone().requires_grad_()
    out, h_n = fn(x, hx, weights)
    g = torch.Generator().manual_seed(5)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(seed_dtype).to(out)
    gh = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(seed_dtype).to(h_n)
    grads = torch.autograd.grad((out * go).sum() + (h_n * gh).sum(),
                                [x, hx] + weights)
    return [out, h_n] + list(grads)


def via_ops(c, project):
    return lambda x, hx, w: rnn_forward(
        x, hx, w, c["nonlinearity"], c["num_layers"], c["bidirectional"],
        c["batch_first"], 0.0, False, layer_fn=op_layer(project))


def via_reference(c):
    return lambda x, hx, w: irnn_reference(
        x, hx, w, c["nonlinearity"], c["num_layers"], c["bidirectional"],
        c["batch_first"])


NAMES = ["output", "h_n", "grad_input", "grad_hx"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_ops_float64_match_reference(c, device):
    device_or_skip(device)
    rnn, x, hx = network(c)
    w = [p.detach() for p in rnn._flat_weights]
    expected = run(c, via_reference(c), w, x, hx)
    to = lambda ts: [t.to(device) for t in ts]
    actual = run(c, via_ops(c, c["project"]), to(w), x.to(device), hx.to(device))
    for i, (a, e) in enumerate(zip(actual, expected)):
        name = NAMES[i] if i < 4 else rnn._flat_weights_names[i - 4]
        assert_close_rel(a.cpu(), e, 1e-10, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_ops_float32_error_within_4x_nn_rnn(c, device):
    """float32 error against float64 is at most 4x nn.RNN's (cuDNN's on
    CUDA), every output and gradient, on the same float32 values."""
    device_or_skip(device)
    rnn, x, hx = network(c)
    f32 = lambda ts: [t.detach().to(device, torch.float32) for t in ts]
    w, (x, hx) = f32(rnn._flat_weights), f32([x, hx])
    f64 = lambda ts: [t.cpu().double() for t in ts]
    expected = run(c, via_reference(c), f64(w), *f64([x, hx]), torch.float32)

    def via_nn_rnn(x, hx, w):
        rnn_fn = torch._VF.rnn_relu if c["nonlinearity"] == "relu" else torch._VF.rnn_tanh
        return rnn_fn(x, hx, w, c["bias"], c["num_layers"], 0.0, False,
                      c["bidirectional"], c["batch_first"])

    ours = run(c, via_ops(c, c["project"]), w, x, hx)
    theirs = run(c, via_nn_rnn, w, x, hx)
    assert_error_within_4x(ours, theirs, expected, torch.float32,
                           NAMES + rnn._flat_weights_names)


def gradcheck_inputs(device, nonlinearity, project, T=3, B=2, I=2, H=3):
    """Tiny float64 inputs whose pre-activations stay away from relu's kink."""
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
        x, h0, w_ih, w_hh = r(T, B, I), r(B, H), r(H, I), r(H, H) * 0.5
        b_ih, b_hh = r(H), r(H)
        if project:
            x, w_ih = x @ w_ih.t(), None
        # Pre-activations from the reference: every |a_t| must exceed 0.05.
        h, ok = h0, True
        for t in range(T):
            a = (x[t] if w_ih is None else x[t] @ w_ih.t()) + h @ w_hh.t() + b_ih + b_hh
            ok &= bool(a.abs().min() > 0.05)
            h = torch.relu(a) if nonlinearity == "relu" else torch.tanh(a)
        if ok:
            args = [x, h0, w_ih, w_hh, b_ih, b_hh]
            return [None if a is None else a.to(device).requires_grad_()
                    for a in args]
    raise AssertionError("no seed kept the pre-activations away from 0")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("project", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck(device, nonlinearity, project, reverse):
    device_or_skip(device)
    args = gradcheck_inputs(device, nonlinearity, project)

    def both(*a):
        return ops.irnn_forward(*a, nonlinearity, reverse, True)

    def last_only(*a):  # the gradient arrives on h_n alone
        return ops.irnn_forward(*a, nonlinearity, reverse, True)[1]

    assert torch.autograd.gradcheck(both, args)
    assert torch.autograd.gradcheck(last_only, args)


def sample_args(device, dtype=torch.float64, project=False, bias=True,
                requires_grad=True, T=4, B=3, I=2, H=5):
    x = torch.randn(T, B, H if project else I, dtype=dtype, device=device)
    h0 = torch.randn(B, H, dtype=dtype, device=device)
    w_ih = None if project else torch.randn(H, I, dtype=dtype, device=device)
    w_hh = torch.randn(H, H, dtype=dtype, device=device) * 0.3
    b = [torch.randn(H, dtype=dtype, device=device) for _ in range(2)] if bias else [None, None]
    args = [x, h0, w_ih, w_hh] + b
    return [a.requires_grad_(requires_grad) if a is not None else None
            for a in args]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("project,bias,reverse", [(False, True, False),
                                                  (True, False, True)])
def test_opcheck_forward(device, project, bias, reverse):
    device_or_skip(device)
    args = sample_args(device, project=project, bias=bias)
    torch.library.opcheck(ops.irnn_forward.default,
                          (*args, "relu", reverse, True))
    # Last state only: no sequence is stored, so no backward is possible.
    args = [a.detach() if a is not None else None for a in args]
    torch.library.opcheck(ops.irnn_forward.default,
                          (*args, "tanh", reverse, False))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward(device):
    device_or_skip(device)
    x, h0, w_ih, w_hh, b_ih, b_hh = sample_args(device, requires_grad=False)
    out, h_n = ops.irnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, "relu", False, True)
    for grad_out, grad_hn in [(torch.randn_like(out), torch.randn_like(h_n)),
                              (None, torch.randn_like(h_n)),
                              (torch.randn_like(out), None)]:
        torch.library.opcheck(ops.irnn_backward.default,
                              (grad_out, grad_hn, x, h0, w_ih, w_hh, out,
                               "relu", False))


@pytest.mark.parametrize("device", DEVICES)
def test_undefined_gradients_count_as_zero(device):
    device_or_skip(device)
    x, h0, w_ih, w_hh, _, _ = sample_args(device, requires_grad=False)
    out, h_n = ops.irnn_forward(x, h0, w_ih, w_hh, None, None, "tanh", True, True)
    gh = torch.randn_like(h_n)
    a = ops.irnn_backward(None, gh, x, h0, w_ih, w_hh, out, "tanh", True)
    b = ops.irnn_backward(torch.zeros_like(out), gh, x, h0, w_ih, w_hh, out,
                          "tanh", True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    none = ops.irnn_backward(None, None, x, h0, w_ih, w_hh, out, "tanh", True)
    assert all(bool((t == 0).all()) for t in none)


@pytest.mark.parametrize("device", DEVICES)
def test_last_state_only_returns_empty_sequence(device):
    device_or_skip(device)
    args = sample_args(device, requires_grad=False)
    out, h_n = ops.irnn_forward(*args, "relu", False, False)
    full, h_full = ops.irnn_forward(*args, "relu", False, True)
    assert out.shape == (0, 3, 5)
    assert torch.equal(h_n, h_full) and torch.equal(h_full, full[-1])


@pytest.mark.parametrize("device", DEVICES)
def test_backward_without_stored_sequence_raises(device):
    device_or_skip(device)
    args = sample_args(device)
    _, h_n = ops.irnn_forward(*args, "relu", False, False)
    with pytest.raises(RuntimeError, match="store_sequence"):
        h_n.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_raises(device):
    device_or_skip(device)
    args = sample_args(device)
    out, h_n = ops.irnn_forward(*args, "tanh", False, True)
    g = torch.autograd.grad(h_n.sum(), args[3], create_graph=True)[0]
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_op_checks_name_the_argument(device):
    device_or_skip(device)
    x, h0, w_ih, w_hh, b_ih, b_hh = sample_args(device, requires_grad=False)
    bad = [((x, h0[:1], w_ih, w_hh, b_ih, b_hh, "relu"), "h0 must have shape"),
           ((x, h0, w_ih[:, :1], w_hh, b_ih, b_hh, "relu"), "weight_ih must have shape"),
           ((x, h0, w_ih, w_hh[:2], b_ih, b_hh, "relu"), "weight_hh must be"),
           ((x, h0, w_ih, w_hh, b_ih[:2], b_hh, "relu"), "bias_ih must have shape"),
           ((x, h0.float(), w_ih, w_hh, b_ih, b_hh, "relu"), "h0 must have dtype"),
           ((x, h0, w_ih, w_hh, b_ih, b_hh, "gelu"), "nonlinearity must be"),
           ((x[:0], h0, w_ih, w_hh, b_ih, b_hh, "relu"), "at least one time step"),
           ((x, h0, None, w_hh, b_ih, b_hh, "relu"), "when weight_ih is None")]
    for args, message in bad:
        with pytest.raises(RuntimeError, match=message):
            ops.irnn_forward(*args, False, True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("c", CASES[:6], ids=case_id)
def test_compile_aot_eager_fullgraph(c, device):
    device_or_skip(device)
    torch._dynamo.reset()
    model = irnn_cuda.FusedIRNN(c["I"], c["H"], c["num_layers"],
                                nonlinearity=c["nonlinearity"], bias=c["bias"],
                                batch_first=c["batch_first"],
                                bidirectional=c["bidirectional"],
                                init="torch", device=device)
    shape = (c["B"], c["T"], c["I"]) if c["batch_first"] else (c["T"], c["B"], c["I"])
    x = torch.randn(shape, device=device, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out, h_n = compiled(x)
    gx, = torch.autograd.grad(out.sum() + h_n.sum(), x)
    ref_out, ref_h = model(x)
    ref_gx, = torch.autograd.grad(ref_out.sum() + ref_h.sum(), x)
    for a, b in [(out, ref_out), (h_n, ref_h), (gx, ref_gx)]:
        assert_close_rel(a, b, 1e-6)


def test_compile_inductor_smoke():
    torch._dynamo.reset()
    model = irnn_cuda.FusedIRNN(1, 16)
    x = torch.randn(20, 4, 1)
    compiled = torch.compile(model, fullgraph=True)
    out, h_n = compiled(x)
    ref_out, ref_h = model(x)
    assert_close_rel(out, ref_out, 1e-6)
    assert_close_rel(h_n, ref_h, 1e-6)
