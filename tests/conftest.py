"""Shared test helpers: tolerances, the covering set of options, and the
environment switches CI sets (IRNN_EXPECT_EXT, IRNN_REQUIRE_GPU)."""
import itertools
import os
import random

import pytest
import torch

import irnn_cuda

# Kernel-vs-reference tolerances per dtype, relative to
# max(1, max |expected|); half/bfloat16 round h_t every step.
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
    """max |actual - expected| / max(1, max |expected|), in float64."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    if e.numel() == 0:
        return 0.0
    return ((a - e).abs().max() / e.abs().max().clamp_min(1.0)).item()


def assert_close_rel(actual, expected, rtol, what=""):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = max_rel_err(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.3g}"


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
            f"{irnn_cuda._ops._IMPORT_ERROR}")
