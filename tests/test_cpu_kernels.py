"""The fused CPU kernels, called directly as torch.ops.irnn_cuda.*, against
the reference (irnn_cuda.reference, differentiated by autograd): every output
and every gradient, over a covering set of options and ragged sizes."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile

import irnn_cuda
from irnn_cuda.reference import irnn_layer_reference
from conftest import all_pairs, case_id, max_rel_err

pytestmark = pytest.mark.skipif(not irnn_cuda.has_kernels("cpu"),
                                reason="irnn_cuda._C has no CPU kernels")

ops = torch.ops.irnn_cuda
F32_EPS = torch.finfo(torch.float32).eps
NAMES = ("output", "h_n", "grad_input", "grad_h0", "grad_weight_ih",
         "grad_weight_hh", "grad_bias")

# Sizes (T, B, I, H): B not a multiple of the 16- or 8-float / 4-double
# vector width, H = 1, 33, 257, I above the fused-input limit (12 > 8),
# B = 101 for batch slices above the backward's 48-row chunk; H = 60 and 90
# (4 and 6 AVX-512 vectors) for the column tiles the others leave out.
SIZES = [(1, 1, 1, 1), (5, 3, 1, 33), (12, 9, 3, 100), (7, 17, 12, 257),
         (4, 6, 1, 5), (9, 13, 2, 8), (3, 101, 2, 20), (4, 10, 2, 90),
         (3, 8, 1, 60)]
CASES = all_pairs({
    "size": SIZES,
    "nonlinearity": ["relu", "tanh"],
    "reverse": [False, True],
    "project": [True, False],
    "bias": [True, False],
    "grad_output": [True, False],
    "grad_h_n": [True, False],
})


def make_inputs(T, B, I, H, project, bias, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
                               * scale).to(dtype)
    return {
        "input": r(T, B, I if project else H),
        "h0": r(B, H, scale=0.5),
        "weight_ih": r(H, I, scale=1.0 / I ** 0.5) if project else None,
        "weight_hh": r(H, H, scale=0.9 / H ** 0.5),
        "bias_ih": r(H, scale=0.1) if bias else None,
        "bias_hh": r(H, scale=0.1) if bias else None,
    }


def run_ops(args, nonlinearity, reverse, grad_output, grad_h_n):
    """Forward and backward through the registered ops, no autograd."""
    out, h_n = ops.irnn_forward(args["input"], args["h0"], args["weight_ih"],
                                args["weight_hh"], args["bias_ih"],
                                args["bias_hh"], nonlinearity, reverse, True)
    grads = ops.irnn_backward(grad_output, grad_h_n, args["input"], args["h0"],
                              args["weight_ih"], args["weight_hh"], out,
                              nonlinearity, reverse)
    return (out, h_n) + tuple(grads)


def run_autograd(layer, args, nonlinearity, reverse, grad_output, grad_h_n):
    """Outputs and autograd gradients of `layer` (the reference, or nn.RNN
    wrapped to the same signature), in the ops' output order."""
    H = args["weight_hh"].shape[0]
    a = {k: (v.detach().clone().requires_grad_() if v is not None else None)
         for k, v in args.items()}
    # Absent biases are zeros here so that their gradient (the ops'
    # grad_bias, computed regardless) is defined.
    for k in ("bias_ih", "bias_hh"):
        if a[k] is None:
            a[k] = torch.zeros(H, dtype=a["h0"].dtype, requires_grad=True)
    out, h_n = layer(a["input"], a["h0"], a["weight_ih"], a["weight_hh"],
                     a["bias_ih"], a["bias_hh"], nonlinearity, reverse)
    loss = out.sum() * 0
    if grad_output is not None:
        loss = loss + (out * grad_output).sum()
    if grad_h_n is not None:
        loss = loss + (h_n * grad_h_n).sum()
    wrt = [a["input"], a["h0"], a["weight_hh"], a["bias_ih"]]
    if a["weight_ih"] is not None:
        wrt.append(a["weight_ih"])
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    grads = [gr if gr is not None else torch.zeros_like(w)
             for gr, w in zip(grads, wrt)]
    g_ih = grads[4] if a["weight_ih"] is not None else torch.empty(0, dtype=out.dtype)
    return (out.detach(), h_n.detach(), grads[0], grads[1], g_ih, grads[2],
            grads[3])


def nn_rnn_layer(input, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                 nonlinearity, reverse):
    """torch.nn.RNN in the ops' signature: reverse = flipped time, a
    projected input = an identity W_ih (exact in any precision)."""
    H = weight_hh.shape[0]
    if weight_ih is None:
        weight_ih = torch.eye(H, dtype=input.dtype)
    rnn = nn.RNN(weight_ih.shape[1], H, nonlinearity=nonlinearity,
                 dtype=input.dtype)
    params = {"weight_ih_l0": weight_ih, "weight_hh_l0": weight_hh,
              "bias_ih_l0": bias_ih, "bias_hh_l0": bias_hh}
    x = input.flip(0) if reverse else input
    out, h_n = functional_call(rnn, params, (x, h0[None]))
    return (out.flip(0) if reverse else out), h_n[0]


def case_grads(case, dtype):
    T, B, I, H = case["size"]
    args = make_inputs(T, B, I, H, case["project"], case["bias"], dtype)
    g = torch.Generator().manual_seed(1)
    g_out = (torch.randn(T, B, H, generator=g, dtype=torch.float64).to(dtype)
             if case["grad_output"] else None)
    g_hn = (torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
            if case["grad_h_n"] else None)
    return args, g_out, g_hn


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_ops_match_reference_float64(case):
    args, g_out, g_hn = case_grads(case, torch.float64)
    nl, rev = case["nonlinearity"], case["reverse"]
    ours = run_ops(args, nl, rev, g_out, g_hn)
    ref = run_autograd(irnn_layer_reference, args, nl, rev, g_out, g_hn)
    for name, a, e in zip(NAMES, ours, ref):
        assert a.dtype == torch.float64 and a.shape == e.shape, name
        err = max_rel_err(a, e)
        assert err <= 1e-10, f"{name}: relative error {err:.3g}"
    _, h_n_only = ops.irnn_forward(args["input"], args["h0"], args["weight_ih"],
                                   args["weight_hh"], args["bias_ih"],
                                   args["bias_hh"], nl, rev, False)
    assert max_rel_err(h_n_only, ref[1]) <= 1e-10


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_ops_float32_error_within_4x_nn_rnn(case):
    args64, g_out64, g_hn64 = case_grads(case, torch.float64)
    nl, rev = case["nonlinearity"], case["reverse"]
    ref = run_autograd(irnn_layer_reference, args64, nl, rev, g_out64, g_hn64)
    args32 = {k: v.float() if v is not None else None for k, v in args64.items()}
    g_out32 = g_out64.float() if g_out64 is not None else None
    g_hn32 = g_hn64.float() if g_hn64 is not None else None
    ours = run_ops(args32, nl, rev, g_out32, g_hn32)
    theirs = run_autograd(nn_rnn_layer, args32, nl, rev, g_out32, g_hn32)
    for name, a, t, e in zip(NAMES, ours, theirs, ref):
        assert a.dtype == torch.float32 and a.shape == e.shape, name
        bound = 4 * max(max_rel_err(t, e), F32_EPS)
        err = max_rel_err(a, e)
        assert err <= bound, f"{name}: float32 error {err:.3g} > 4x nn.RNN's ({bound:.3g})"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_computed_in_float32(dtype):
    case = dict(CASES[0], size=(6, 5, 2, 33))
    args, g_out, g_hn = case_grads(case, dtype)
    nl, rev = case["nonlinearity"], case["reverse"]
    ours = run_ops(args, nl, rev, g_out, g_hn)
    args32 = {k: v.float() if v is not None else None for k, v in args.items()}
    expect = run_ops(args32, nl, rev,
                     g_out.float() if g_out is not None else None,
                     g_hn.float() if g_hn is not None else None)
    for name, a, e in zip(NAMES, ours, expect):
        assert a.dtype == dtype, name
        assert torch.equal(a, e.to(dtype)), name


@pytest.mark.parametrize("nonlinearity,reverse,project",
                         [("relu", False, True), ("tanh", True, True),
                          ("relu", True, False), ("tanh", False, False)])
def test_gradcheck_float64(nonlinearity, reverse, project):
    T, B, I, H = 3, 2, 2, 3
    for seed in range(100):
        args = make_inputs(T, B, I, H, project, True, torch.float64, seed)
        # Keep every pre-activation away from relu's kink at 0.
        x = args["input"] if not project else args["input"] @ args["weight_ih"].t()
        h, min_abs = args["h0"], float("inf")
        steps = range(T - 1, -1, -1) if reverse else range(T)
        for t in steps:
            a = x[t] + h @ args["weight_hh"].t() + args["bias_ih"] + args["bias_hh"]
            min_abs = min(min_abs, a.abs().min().item())
            h = a.relu() if nonlinearity == "relu" else a.tanh()
        if min_abs > 0.05:
            break
    else:
        pytest.fail("no seed keeps the pre-activations away from 0")
    names = ["input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    leaves = [args[n].requires_grad_() if args[n] is not None else None
              for n in names]

    def f(*tensors):
        out, h_n = ops.irnn_forward(*tensors, nonlinearity, reverse, True)
        return out, h_n

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("I,threads", [(1, 2), (12, 2), (None, 2), (1, 1)])
def test_gradients_bitwise_reproducible(I, threads):
    """I=1: dx, dW_ih fused; I=12: GEMMs after the loop; None: projected."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        case = {"size": (30, 37, I or 5, 100), "project": I is not None,
                "bias": True, "grad_output": True, "grad_h_n": True}
        args, g_out, g_hn = case_grads(case, torch.float32)
        first = run_ops(args, "relu", False, g_out, g_hn)
        second = run_ops(args, "relu", False, g_out, g_hn)
    finally:
        torch.set_num_threads(saved)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), f"{name} differs between two runs"


def allocated_sizes(fn):
    """Sizes of every CPU allocation `fn` makes, from the profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return [e.nbytes() for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.nbytes() > 0]


@pytest.mark.parametrize("project", [True, False])
def test_last_state_only_allocates_no_sequence(project):
    T, B, I, H = 40, 24, 1, 64
    args = make_inputs(T, B, I, H, project, True, torch.float32)
    seq_bytes = T * B * H * 4

    def call(store):
        return lambda: ops.irnn_forward(*args.values(), "relu", False, store)

    with_seq = allocated_sizes(call(True))
    assert max(with_seq) >= seq_bytes  # the profiler sees the sequence
    last_only = allocated_sizes(call(False))
    assert max(last_only) < seq_bytes, (
        f"store_sequence=False allocated {max(last_only)} bytes "
        f"(a [T,B,H] sequence is {seq_bytes})")
    out, h_n = call(False)()
    assert out.shape == (0, B, H) and h_n.shape == (B, H)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("where", ["input", "h0"])
def test_nan_propagates(nonlinearity, where):
    T, B, I, H = 6, 11, 1, 20
    args = make_inputs(T, B, I, H, True, True, torch.float64)
    if where == "input":
        args["input"][2, 4, 0] = float("nan")
    else:
        args["h0"][7, 3] = float("nan")
    g = torch.Generator().manual_seed(3)
    g_out = torch.randn(T, B, H, generator=g, dtype=torch.float64)
    ours = run_ops(args, nonlinearity, False, g_out, None)
    ref = run_autograd(irnn_layer_reference, args, nonlinearity, False, g_out, None)
    row = 4 if where == "input" else 7
    assert torch.isnan(ours[0][-1, row]).all() and torch.isnan(ours[1][row]).all()
    for name, a, e in zip(NAMES, ours, ref):
        assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{name}: NaN pattern"
        keep = ~torch.isnan(e)
        assert max_rel_err(a[keep], e[keep]) <= 1e-10, name


def test_portable_kernels_match_reference():
    """The portable build of the kernels (any CPU), forced on by
    IRNN_CPU_KERNELS=generic: float64 against the reference."""
    code = (
        "import torch, irnn_cuda, sys\n"
        "sys.path.insert(0, %r)\n"
        "import test_cpu_kernels as t\n"
        "assert irnn_cuda.cpu_kernels() == 'generic', irnn_cuda.cpu_kernels()\n"
        "for case in t.CASES[:6]:\n"
        "    t.test_ops_match_reference_float64(case)\n"
        "print('ok')\n" % os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, IRNN_CPU_KERNELS="generic")
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def float32_results_with_kernels(isa, path):
    """run_ops over every case in float32, in a process whose CPU kernels are
    capped at `isa` (IRNN_CPU_KERNELS); the results are saved to `path`."""
    code = (
        "import torch, irnn_cuda, sys\n"
        "sys.path.insert(0, %r)\n"
        "import test_cpu_kernels as t\n"
        "assert irnn_cuda.cpu_kernels() == %r, irnn_cuda.cpu_kernels()\n"
        "res = []\n"
        "for case in t.CASES:\n"
        "    args, g_out, g_hn = t.case_grads(case, torch.float32)\n"
        "    res.append(t.run_ops(args, case['nonlinearity'], case['reverse'],\n"
        "                         g_out, g_hn))\n"
        "torch.save(res, %r)\n"
        % (os.path.dirname(os.path.abspath(__file__)), isa, str(path)))
    env = dict(os.environ, IRNN_CPU_KERNELS=isa)
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(path)


@pytest.mark.skipif(irnn_cuda.cpu_kernels() != "avx512",
                    reason="the CPU kernels in use are not the AVX-512 build")
def test_avx512_kernels_equal_avx2_kernels(tmp_path):
    """The float32 kernels of the AVX-512 build (this process's) and of the
    AVX2 build sum every element in the same order, so they agree bitwise:
    the AVX2 build, which CPUs without AVX-512 run, is checked through the
    AVX-512 one's tests. The fused dx (I <= 8) is the exception: its partial
    sums are split over the vector lanes, 16 or 8."""
    wide = float32_results_with_kernels("avx512", tmp_path / "avx512.pt")
    narrow = float32_results_with_kernels("avx2", tmp_path / "avx2.pt")
    assert len(wide) == len(narrow) == len(CASES)
    fused_dx = 0
    for case, a_res, b_res in zip(CASES, wide, narrow):
        I = case["size"][2]
        for name, a, b in zip(NAMES, a_res, b_res):
            where = f"{case_id(case)}: {name}"
            assert a.shape == b.shape, where
            if name == "grad_input" and case["project"] and I <= 8:
                fused_dx += 1
                assert max_rel_err(a, b) <= 8 * F32_EPS, where
            else:
                assert torch.equal(a, b), where
    assert fused_dx > 0


def test_unknown_kernel_cap_is_refused():
    """A misspelt IRNN_CPU_KERNELS fails the first CPU op, naming the
    variable and the values it takes, instead of silently picking a build."""
    code = ("import torch, irnn_cuda\n"
            "print(irnn_cuda.cpu_kernels())\n"
            "irnn_cuda.FusedIRNN(1, 4)(torch.randn(3, 2, 1))\n")
    env = dict(os.environ, IRNN_CPU_KERNELS="avx3")
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "invalid IRNN_CPU_KERNELS" in proc.stdout
    assert "IRNN_CPU_KERNELS=avx3 is not one of avx512, avx2, generic" in proc.stderr, \
        proc.stderr[-3000:]


def test_empty_batch():
    args = make_inputs(4, 0, 1, 7, True, True, torch.float32)
    g_out = torch.randn(4, 0, 7)
    out, h_n, *grads = run_ops(args, "relu", True, g_out, None)
    assert out.shape == (4, 0, 7) and h_n.shape == (0, 7)
    assert grads[3].abs().sum() == 0 and grads[4].abs().sum() == 0
