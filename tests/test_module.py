"""FusedIRNN as a drop-in torch.nn.RNN: API, state_dict, shapes, options,
initialisation, dtypes, autocast, edge cases and bad input."""
import math

import pytest
import torch
from torch import nn

import irnn_cuda
from conftest import (NETWORK_OPTIONS, all_pairs, assert_close_rel,
                      assert_error_within_4x,
                      assert_module_error_within_4x_nn_rnn, case_id,
                      inputs_for, max_rel_err, nn_rnn_for,
                      rnn_clear_of_relu_kink)
from irnn_cuda import FusedIRNN

CASES = all_pairs(NETWORK_OPTIONS, seed=2)


def pair(c, dtype=torch.float64):
    """An nn.RNN and a FusedIRNN with the same weights."""
    rnn = nn_rnn_for(c, dtype)
    return rnn, FusedIRNN.from_rnn(rnn)


@pytest.mark.parametrize("c", CASES, ids=case_id)
def test_drop_in_for_nn_rnn(c):
    rnn, fused = pair(c)
    x, hx = inputs_for(c)
    out, h = fused(x, hx)
    ref_out, ref_h = rnn(x, hx)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape
    assert_close_rel(out, ref_out, 1e-10, "output")
    assert_close_rel(h, ref_h, 1e-10, "h_n")
    wrt = [x] + ([hx] if hx is not None else [])
    go, gh = torch.randn_like(out), torch.randn_like(h)
    ours = torch.autograd.grad((out * go).sum() + (h * gh).sum(),
                               wrt + list(fused.parameters()))
    theirs = torch.autograd.grad((ref_out * go).sum() + (ref_h * gh).sum(),
                                 wrt + list(rnn.parameters()))
    for a, b in zip(ours, theirs):
        assert_close_rel(a, b, 1e-10, "gradient")


@pytest.mark.parametrize("c", CASES[:5], ids=case_id)
def test_last_state_only_matches(c):
    rnn, fused = pair(c)
    x, hx = inputs_for(c)
    out, h = fused(x, hx, return_sequence=False)
    assert out is None
    _, ref_h = rnn(x, hx)
    assert_close_rel(h, ref_h, 1e-10, "h_n")
    gx, = torch.autograd.grad(h.sum(), x)
    ref_gx, = torch.autograd.grad(ref_h.sum(), x)
    assert_close_rel(gx, ref_gx, 1e-10, "grad_input")


def test_last_state_only_allocates_no_sequence():
    """Inference asking for h_n alone never allocates a [T,B,H] output."""
    T, B, H = 64, 8, 32
    model = FusedIRNN(1, H)
    x = torch.randn(T, B, 1)
    seq_bytes = T * B * H * 4

    def largest_allocation(**kw):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            with torch.no_grad():
                model(x, **kw)
        sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
        return max(sizes, default=0)

    assert largest_allocation() >= seq_bytes  # the check can see the sequence
    assert largest_allocation(return_sequence=False) < seq_bytes


def test_state_dict_loads_both_ways():
    rnn = nn.RNN(3, 4, 2, nonlinearity="relu", bidirectional=True)
    fused = FusedIRNN(3, 4, 2, bidirectional=True)
    assert list(rnn.state_dict()) == list(fused.state_dict())
    for (n1, p1), (n2, p2) in zip(rnn.named_parameters(), fused.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape
    fused.load_state_dict(rnn.state_dict())
    x = torch.randn(5, 2, 3)
    assert torch.allclose(fused(x)[0], rnn(x)[0], atol=1e-6)
    rnn2 = nn.RNN(3, 4, 2, nonlinearity="relu", bidirectional=True)
    rnn2.load_state_dict(fused.state_dict())
    assert torch.allclose(fused(x)[1], rnn2(x)[1], atol=1e-6)
    back = fused.to_rnn()
    assert isinstance(back, nn.RNN) and back.nonlinearity == "relu"
    assert torch.allclose(back(x)[0], rnn(x)[0], atol=1e-6)
    fused.flatten_parameters()  # a no-op, as drop-in code calls it


def test_irnn_init():
    m = FusedIRNN(1, 100, num_layers=2, identity_scale=0.5)
    assert torch.equal(m.weight_hh_l0, 0.5 * torch.eye(100))
    assert torch.equal(m.weight_hh_l1, 0.5 * torch.eye(100))
    assert m.bias_ih_l0.abs().sum() == 0 and m.bias_hh_l1.abs().sum() == 0
    w = torch.cat([m.weight_ih_l0.flatten(), m.weight_ih_l1.flatten()])
    assert 0.0008 < w.std().item() < 0.0012 and abs(w.mean().item()) < 1e-4


def test_torch_init_matches_nn_rnn_for_a_seed():
    torch.manual_seed(3)
    rnn = nn.RNN(5, 7, 2, bidirectional=True)
    torch.manual_seed(3)
    fused = FusedIRNN(5, 7, 2, nonlinearity="tanh", bidirectional=True, init="torch")
    for a, b in zip(rnn.parameters(), fused.parameters()):
        assert torch.equal(a, b)
    assert all(p.abs().max() <= 1 / math.sqrt(7) for p in fused.parameters())


def test_dropout_between_layers_only_in_training():
    torch.manual_seed(0)
    fused = FusedIRNN(3, 16, num_layers=2, dropout=0.5, init="torch")
    x = torch.randn(6, 4, 3)
    fused.eval()
    ref = fused.to_rnn().eval()
    assert torch.allclose(fused(x)[0], ref(x)[0], atol=1e-6)
    fused.train()
    a, b = fused(x)[0], fused(x)[0]
    assert not torch.equal(a, b)  # dropout draws fresh masks
    no_drop = FusedIRNN.from_rnn(ref).train()
    no_drop.dropout = 0.0
    assert not torch.allclose(a, no_drop(x)[0])


def test_max_rel_err_is_relative_on_small_data():
    """An all-zero output against outputs of 0.01: error 1, where the former
    max(1, max |expected|) denominator gave 0.01, inside a 0.05 bound."""
    expected = torch.full((4, 3), 0.01)
    assert max_rel_err(torch.zeros(4, 3), expected) == pytest.approx(1.0)
    assert max_rel_err(expected * 1.5, expected) == pytest.approx(0.5)
    assert max_rel_err(torch.full((2,), 1e-3), torch.zeros(2)) == pytest.approx(1e-3)


def test_4x_rule_floor_is_one_eps():
    """Where nn.RNN's error is 0, a result rounded once to the dtype still
    passes, and one 10 eps off does not."""
    truth = [torch.randn(50, dtype=torch.float64) + 3]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        eps = torch.finfo(dtype).eps
        assert_error_within_4x([truth[0].to(dtype)], truth, truth, dtype, ["x"])
        with pytest.raises(AssertionError, match="^x: error"):
            assert_error_within_4x([truth[0] * (1 + 10 * eps)], truth, truth,
                                   dtype, ["x"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("H", [8, 100, 257, 1024])
def test_16bit_error_within_4x_nn_rnn(dtype, nonlinearity, H):
    """bf16/fp16 modules compute in float32 and cast back: outputs and every
    gradient within 4x nn.RNN's error in the same dtype, against float64 on
    the same 16-bit inputs. test_cuda.py runs this check on a GPU with the
    same values (H = 100, 257, 1024)."""
    rnn, x, hx = rnn_clear_of_relu_kink(8, H, 30, 16, nonlinearity)
    rnn = rnn.to(dtype)
    assert_module_error_within_4x_nn_rnn(FusedIRNN.from_rnn(rnn), rnn,
                                         x.to(dtype), hx.to(dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_error_within_4x_nn_rnn(dtype):
    """Under CPU autocast FusedIRNN computes in the autocast dtype as nn.RNN
    does; outputs and every gradient within 4x nn.RNN's error. The values
    test_cuda.py::test_autocast uses on a GPU."""
    rnn, x, hx = rnn_clear_of_relu_kink(1, 100, 40, 16)
    assert_module_error_within_4x_nn_rnn(FusedIRNN.from_rnn(rnn), rnn, x, hx,
                                         dtype, autocast=True)


class ZeroOutput(nn.Module):
    """A broken stand-in: the model's output and h_n times 0."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, hx):
        out, h_n = self.model(x, hx)
        return out * 0, h_n * 0


class _DoubleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class DoubledGradient(ZeroOutput):
    """A broken stand-in: the model's exact outputs, every gradient 2x."""

    def forward(self, x, hx):
        out, h_n = self.model(x, hx)
        return _DoubleGradient.apply(out), _DoubleGradient.apply(h_n)


@pytest.mark.parametrize("broken,first_failure", [(ZeroOutput, "output"),
                                                  (DoubledGradient, "grad_")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_4x_check_rejects_a_broken_module(broken, first_failure, dtype):
    """The checks above (and test_cuda.py's on a GPU) reject an all-zero
    output, which the former autocast bound (0.2 x max(1, max |expected|)
    in bfloat16, on outputs of ~0.06) accepted, and a doubled gradient,
    which its finiteness check accepted."""
    rnn, x, hx = rnn_clear_of_relu_kink(1, 100, 40, 16)
    with pytest.raises(AssertionError, match=f"^{first_failure}"):
        assert_module_error_within_4x_nn_rnn(broken(FusedIRNN.from_rnn(rnn)),
                                             rnn, x, hx, dtype, autocast=True)
    rnn = rnn.to(dtype)
    with pytest.raises(AssertionError, match=f"^{first_failure}"):
        assert_module_error_within_4x_nn_rnn(broken(FusedIRNN.from_rnn(rnn)),
                                             rnn, x.to(dtype), hx.to(dtype),
                                             dtype)


def test_edge_cases_nn_rnn_accepts():
    rnn = nn.RNN(1, 1, nonlinearity="relu")
    fused = FusedIRNN.from_rnn(rnn)
    x = torch.randn(1, 2, 1)  # T = 1, H = 1
    for a, b in zip(fused(x), rnn(x)):
        assert torch.allclose(a, b)
    empty = torch.randn(4, 0, 1)  # an empty batch
    for a, b in zip(fused(empty), rnn(empty)):
        assert a.shape == b.shape
    wide = torch.randn(4, 3, 2)[..., :1]  # non-contiguous input
    assert not wide.is_contiguous()
    for a, b in zip(fused(wide), rnn(wide)):
        assert torch.allclose(a, b)


def test_nan_propagates():
    rnn = nn.RNN(1, 4, nonlinearity="relu")
    fused = FusedIRNN.from_rnn(rnn)
    x = torch.randn(5, 2, 1)
    x[2, 0, 0] = float("nan")
    out, h = fused(x)
    ref_out, ref_h = rnn(x)
    assert torch.equal(out.isnan(), ref_out.isnan()) and out[2:, 0].isnan().all()
    assert torch.equal(h.isnan(), ref_h.isnan())
    assert not out[:, 1].isnan().any()


def raises_like_nn_rnn(call, *args, match, **kw):
    """FusedIRNN raises the class nn.RNN raises, naming the argument."""
    rnn = nn.RNN(5, 4, nonlinearity="relu", **kw)
    fused = FusedIRNN.from_rnn(rnn)
    with pytest.raises(Exception) as theirs:
        call(rnn, *args)
    with pytest.raises(theirs.type, match=match):
        call(fused, *args)


def test_bad_input_raises_as_nn_rnn():
    fwd = lambda m, *a: m(*a)
    raises_like_nn_rnn(fwd, torch.randn(2, 3, 4, 5), match="input.*4D")
    raises_like_nn_rnn(fwd, torch.randn(5), match="input.*1D")
    raises_like_nn_rnn(fwd, torch.randn(2, 3, 6), match="input_size. Expected 5, got 6")
    raises_like_nn_rnn(fwd, torch.randn(2, 3, 5), torch.randn(1, 2, 4),
                       match=r"hidden size \(1, 3, 4\), got \[1, 2, 4\].*hx")
    raises_like_nn_rnn(fwd, torch.randn(2, 5), torch.randn(1, 3, 4),
                       match="unbatched 2-D input, hx")
    raises_like_nn_rnn(fwd, torch.randn(2, 3, 5), torch.randn(3, 4),
                       match="batched 3-D input, hx")
    raises_like_nn_rnn(fwd, torch.randn(2, 3, 5, dtype=torch.float64),
                       match=r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)")
    raises_like_nn_rnn(fwd, torch.ones(2, 3, 5, dtype=torch.int64),
                       match=r"input dtype \(torch.int64\)")
    raises_like_nn_rnn(fwd, torch.randn(2, 3, 5),
                       torch.randn(1, 3, 4, dtype=torch.float64),
                       match=r"hx dtype \(torch.float64\) does not match input")
    raises_like_nn_rnn(fwd, torch.randn(2, 3, 5), torch.randn(1, 3, 4, device="meta"),
                       match="hidden tensor at meta")
    raises_like_nn_rnn(fwd, torch.randn(0, 3, 5), match="sequence length")
    with pytest.raises(ValueError, match="nonlinearity 'gelu'"):
        FusedIRNN(5, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="dropout"):
        FusedIRNN(5, 4, dropout=1.5)
    with pytest.raises(ValueError, match="init 'xavier'"):
        FusedIRNN(5, 4, init="xavier")


def test_extension_loaded_when_expected():
    import os
    if os.environ.get("IRNN_EXPECT_EXT") != "1":
        pytest.skip("IRNN_EXPECT_EXT is not set")
    assert irnn_cuda.extension_loaded()
    assert irnn_cuda.has_kernels("cpu")
