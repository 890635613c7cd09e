"""Shared test helpers: tolerances, the error-within-4x-nn.RNN rule, TF32
pinned off around a test, the covering set of options, and the environment
switches CI sets (IRNN_EXPECT_EXT, IRNN_REQUIRE_GPU)."""
import contextlib
import copy
import itertools
import os
import random

import pytest
import torch

import irnn_cuda

# Kernel-vs-reference tolerances per dtype, relative to max |expected|;
# half/bfloat16 round h_t every step.
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 1e-2,
       torch.bfloat16: 4e-2}

REQUIRE_GPU = os.environ.get("IRNN_REQUIRE_GPU") == "1"


def cuda_or_skip():
    """Skips (or fails under IRNN_REQUIRE_GPU=1) when no GPU is usable."""
    if torch.cuda.is_available():
        return
    if REQUIRE_GPU:
        pytest.fail("IRNN_REQUIRE_GPU=1 but torch.cuda.is_available() is False")
    pytest.skip("needs a CUDA GPU")


def max_rel_err(actual, expected):
    """max |actual - expected| / max |expected|, in float64: relative to the
    data's own scale, so an output of 1e-2 is not held to an absolute bound
    (an all-zero `expected` leaves the error absolute)."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if e.numel() == 0:
        return 0.0
    scale = e.abs().max()
    return ((a - e).abs().max() / (scale if scale > 0 else 1.0)).item()


def assert_close_rel(actual, expected, rtol, what=""):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = max_rel_err(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.3g}"


def assert_error_within_4x(ours, theirs, truth, dtype, names):
    """Each of `ours` (computed in `dtype`) is at most 4x as far from
    `truth` (float64) as the matching one of `theirs` (nn.RNN's, in the same
    dtype or under the same autocast)."""
    for name, a, b, e in zip(names, ours, theirs, truth, strict=True):
        assert a.shape == b.shape == e.shape, (name, a.shape, b.shape, e.shape)
        err, err_rnn = max_rel_err(a, e), max_rel_err(b, e)
        # Floor: one eps of `dtype`. nn.RNN's error can come out near 0 by
        # chance (T = 1, H = 1, values that round exactly), or below what
        # `dtype` allows when it computes in a finer one (cuDNN runs bf16
        # autocast in float16); yet an exact result held in `dtype` is up to
        # eps/2 off, and rounding the inputs to it costs as much again.
        bound = 4 * max(err_rnn, torch.finfo(dtype).eps)
        assert err <= bound, (f"{name}: error {err:.3g} against float64 > 4x "
                              f"nn.RNN's {err_rnn:.3g} (bound {bound:.3g})")


def rnn_clear_of_relu_kink(I, H, T, B, nonlinearity="relu", seed=0):
    """A one-layer float32 nn.RNN on the CPU and inputs x [T, B, I], hx
    [1, B, H] whose float64 pre-activations all stay at least 0.2 from 0.

    Near relu's kink, one rounding flips a gate and moves that unit's
    gradient by O(1), so in 16 bits nn.RNN's and our gradient errors would
    depend on which pre-activations happen to land within a rounding of 0
    (the first H200 run failed seven 16-bit cases that way). With the
    margin, a 16-bit rounding (at most ~0.03 here) never flips a gate and
    the 4x rule compares arithmetic. nn.RNN's initialisation (init='torch')
    with the weights and bias_hh scaled by 1/4 and bias_ih = +-1: outputs
    and gradients are O(1), and half the units are off, so zero gates are
    exercised too. Drawn from its own generator: a CPU run of the same
    arguments checks the very values a GPU test gets."""
    g = torch.Generator().manual_seed(seed)
    rnn = torch.nn.RNN(I, H, nonlinearity=nonlinearity)
    bound = 1.0 / H ** 0.5
    with torch.no_grad():
        for name, p in rnn.named_parameters():
            if name == "bias_ih_l0":
                p.copy_(torch.randint(0, 2, (H,), generator=g) * 2.0 - 1.0)
            else:
                p.uniform_(-bound / 4, bound / 4, generator=g)
    x = torch.randn(T, B, I, generator=g)
    hx = torch.randn(1, B, H, generator=g)
    w = {n: p.detach().double() for n, p in rnn.named_parameters()}
    phi = torch.relu if nonlinearity == "relu" else torch.tanh
    h, margin = hx[0].double(), float("inf")
    for t in range(T):
        a = (x[t].double() @ w["weight_ih_l0"].t() + w["bias_ih_l0"]
             + h @ w["weight_hh_l0"].t() + w["bias_hh_l0"])
        margin = min(margin, a.abs().min().item())
        h = phi(a)
    assert margin >= 0.2, (f"a pre-activation comes within {margin:.3g} of 0 "
                           f"for seed {seed}: pick another seed")
    return rnn, x, hx


def module_outputs_and_grads(model, x, hx, g_out, g_hn, autocast_dtype=None):
    """[output, h_n, grad input, grad hx, grad of each parameter] of
    sum(output * g_out) + sum(h_n * g_hn), the forward under autocast when
    `autocast_dtype` is given. The seeds are float64 and the loss is summed
    in float64, so a 16-bit output receives the seed rounded once."""
    x = x.detach().clone().requires_grad_()
    hx = hx.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
        out, h_n = model(x, hx)
    loss = ((out.double() * g_out.to(out.device)).sum()
            + (h_n.double() * g_hn.to(h_n.device)).sum())
    grads = torch.autograd.grad(loss, [x, hx] + list(model.parameters()))
    return [out, h_n] + list(grads)


def output_and_grad_names(module):
    """Names for module_outputs_and_grads' list, in its order."""
    return ["output", "h_n", "grad_input", "grad_hx"] + [
        f"grad_{n}" for n, _ in module.named_parameters()]


def assert_module_error_within_4x_nn_rnn(model, rnn, x, hx, dtype,
                                         autocast=False):
    """`model` (a FusedIRNN, or a stand-in) against `rnn` (an nn.RNN with the
    same weights) on any device: their outputs, h_n and every gradient are
    compared with a float64 nn.RNN on the CPU fed the same values, and ours
    must be within 4x nn.RNN's error. With `autocast`, both run under
    autocast to `dtype` (x, hx and the modules float32); without, x, hx and
    both modules are already in `dtype`. Our outputs must come out in
    `dtype`; nn.RNN's may not (on CUDA, cuDNN runs bf16 autocast in
    float16), and the floor of the rule is set by `dtype`."""
    g = torch.Generator().manual_seed(7)
    out_shape = rnn(x, hx)[0].shape
    # Seeds representable in `dtype`: the truth then gets the same ones.
    g_out = torch.randn(out_shape, generator=g, dtype=torch.float64).to(dtype).double()
    g_hn = torch.randn(hx.shape, generator=g, dtype=torch.float64).to(dtype).double()
    truth_rnn = copy.deepcopy(rnn).cpu().double()
    truth = module_outputs_and_grads(truth_rnn, x.cpu().double(),
                                     hx.cpu().double(), g_out, g_hn)
    autocast_dtype = dtype if autocast else None
    ours = module_outputs_and_grads(model, x, hx, g_out, g_hn, autocast_dtype)
    theirs = module_outputs_and_grads(rnn, x, hx, g_out, g_hn, autocast_dtype)
    assert ours[0].dtype == ours[1].dtype == dtype, (ours[0].dtype, dtype)
    for a, b in zip(ours[2:], theirs[2:]):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert_error_within_4x(ours, theirs, truth, dtype,
                           output_and_grad_names(rnn))


def tf32_flags():
    """Every flag tf32_off touches, as a tuple to compare."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return (cudnn.enabled, cudnn.benchmark, cudnn.benchmark_limit,
            cudnn.deterministic, cudnn.allow_tf32, cudnn.rnn.fp32_precision,
            matmul.allow_tf32, matmul.fp32_precision)


# As the test session found them: no test may leave them changed.
TF32_FLAGS_AT_START = tf32_flags()


@contextlib.contextmanager
def tf32_off():
    """cuDNN's and cuBLAS's TF32 off inside the block; every flag it touches
    is restored after it, on error too. Legacy allow_tf32 flags only (what
    bench/bench_rnn.py sets): mixing them with the fp32_precision API makes
    torch raise. Restoring the matmul flag by its bool turns an unset
    fp32_precision ('none') into 'ieee', so its string is put back too."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    matmul_tf32, matmul_precision = matmul.allow_tf32, matmul.fp32_precision
    # flags() sets every argument: pass the current values of all but TF32
    # (its default enabled=False would switch cuDNN off).
    with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                     benchmark_limit=cudnn.benchmark_limit,
                     deterministic=cudnn.deterministic, allow_tf32=False):
        matmul.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32 = matmul_tf32
            if matmul.fp32_precision != matmul_precision:
                matmul.fp32_precision = matmul_precision


@pytest.fixture
def no_tf32():
    """TF32 off for the test, restored after it (see tf32_off)."""
    with tf32_off():
        yield


def all_pairs(options, seed=0):
    """A covering set: every pair of values of any two options appears in
    at least one case. `options` maps name -> list of values; returns a list
    of dicts (greedy construction, deterministic for a seed)."""
    names = list(options)
    uncovered = {(i, a, j, b)
                 for i, j in itertools.combinations(range(len(names)), 2)
                 for a in range(len(options[names[i]]))
                 for b in range(len(options[names[j]]))}
    rng = random.Random(seed)
    cases = []
    while uncovered:
        best, best_gain = None, -1
        for _ in range(60):
            pick = [rng.randrange(len(options[n])) for n in names]
            # Seed the candidate with one uncovered pair so progress is sure.
            i, a, j, b = min(uncovered) if not cases else rng.choice(
                sorted(uncovered))
            pick[i], pick[j] = a, b
            gain = sum((i2, pick[i2], j2, pick[j2]) in uncovered
                       for i2, j2 in itertools.combinations(range(len(names)), 2))
            if gain > best_gain:
                best, best_gain = pick, gain
        for i, j in itertools.combinations(range(len(names)), 2):
            uncovered.discard((i, best[i], j, best[j]))
        cases.append({n: options[n][k] for n, k in zip(names, best)})
    return cases


# The options and sizes every network-level comparison covers (all pairs).
NETWORK_OPTIONS = dict(
    nonlinearity=["relu", "tanh"], batch_first=[False, True],
    bias=[False, True], num_layers=[1, 2], bidirectional=[False, True],
    hx=[False, True], batched=[False, True], T=[1, 7, 50], B=[1, 3, 16],
    I=[1, 5], H=[1, 3, 33, 100])


def nn_rnn_for(c, dtype=torch.float64):
    """A torch.nn.RNN configured as case `c` describes."""
    return torch.nn.RNN(c["I"], c["H"], c["num_layers"],
                        nonlinearity=c["nonlinearity"], bias=c["bias"],
                        batch_first=c["batch_first"],
                        bidirectional=c["bidirectional"], dtype=dtype)


def inputs_for(c, dtype=torch.float64):
    """Fresh random (input, hx) for case `c`, requiring grad; hx is None
    when the case passes none."""
    dirs = 2 if c["bidirectional"] else 1
    if c["batched"]:
        shape = (c["B"], c["T"], c["I"]) if c["batch_first"] else (c["T"], c["B"], c["I"])
        hx_shape = (c["num_layers"] * dirs, c["B"], c["H"])
    else:
        shape, hx_shape = (c["T"], c["I"]), (c["num_layers"] * dirs, c["H"])
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    hx = torch.randn(hx_shape, dtype=dtype, requires_grad=True) if c["hx"] else None
    return x, hx


def case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_sessionstart(session):
    if os.environ.get("IRNN_EXPECT_EXT") == "1" and not irnn_cuda.extension_loaded():
        # Fail loudly at once rather than test the reference against itself.
        raise pytest.UsageError(
            "IRNN_EXPECT_EXT=1 but irnn_cuda._C did not load: "
            f"{irnn_cuda._ops._NOT_BUILT}")
