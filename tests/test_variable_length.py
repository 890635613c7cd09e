"""Variable-length batches (docs/ops.md, revision 2): the ops' `lengths`,
the CPU kernels that compute only the rows still running, the reference,
rnn_forward's padded-plus-lengths form and FusedIRNN on a PackedSequence,
against torch.nn.RNN on the same packed batch. Also the backward's
output_mask."""
import os
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence,
                                pad_packed_sequence)

import irnn_cuda
from conftest import assert_close_rel, cuda_or_skip, tf32_off
from irnn_cuda import FusedIRNN, irnn_layer_reference, rnn_forward

pytestmark = pytest.mark.skipif(
    not irnn_cuda.extension_loaded() and os.environ.get("IRNN_EXPECT_EXT") != "1",
    reason="irnn_cuda._C is not built")

ops = torch.ops.irnn_cuda
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def random_lengths(B, T, seed, sort=True):
    """[B] lengths in 1..T that include 1 and T (when B >= 2)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if B > 1:
        lengths[B // 2] = 1
    return lengths.sort(descending=True).values if sort else lengths


def layer_args(T, B, I, H, dtype, project, seed=0, bias=True):
    """Op arguments [input, h0, weight_ih, weight_hh, bias_ih, bias_hh],
    weights scaled so that states and gradients stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    x = rand(T, B, I if project else H)
    w_ih = rand(H, I) / I ** 0.5 if project else None
    w_hh = rand(H, H) * (0.9 / H ** 0.5)
    b_ih, b_hh = (rand(H) * 0.1, rand(H) * 0.1) if bias else (None, None)
    return [x, rand(B, H), w_ih, w_hh, b_ih, b_hh]


def packed_pair(I, H, layers, bidirectional, dtype, nonlinearity="relu"):
    torch.manual_seed(0)
    rnn = nn.RNN(I, H, layers, nonlinearity=nonlinearity,
                 bidirectional=bidirectional, dtype=dtype)
    return rnn, FusedIRNN.from_rnn(rnn)


def run_packed(module, x, lengths, hx, enforce_sorted, weights_out):
    """Forward and backward of `module` on x packed with `lengths`; returns
    the padded output, h_n and the gradients of x, hx and every parameter
    for a loss that weighs every output differently."""
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, h_n = module(packed, hx)
    assert isinstance(out, PackedSequence)
    torch.testing.assert_close(out.batch_sizes, packed.batch_sizes)
    padded, out_lengths = pad_packed_sequence(out)
    torch.testing.assert_close(out_lengths, lengths)
    loss = (padded * weights_out[:padded.shape[0]]).sum() + (h_n * h_n).sum()
    grads = torch.autograd.grad(loss, [x, hx] + list(module.parameters()))
    return [padded, h_n] + list(grads)


NAMES = ["output", "h_n", "grad x", "grad hx"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("I", [1, 6, 12])
def test_packed_matches_nn_rnn(dtype, layers, bidirectional, enforce_sorted, I):
    """Outputs and every gradient equal nn.RNN's on the same PackedSequence;
    I = 1 runs the fused projection, 6 the GEMM before the op, 12 (through
    the op directly, below) the op's own GEMMs."""
    T, B, H = 11, 9, 7
    rnn, fused = packed_pair(I, H, layers, bidirectional, dtype)
    lengths = random_lengths(B, T, seed=I, sort=enforce_sorted)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, dtype=dtype, generator=g, requires_grad=True)
    hx = torch.randn(layers * (1 + bidirectional), B, H, dtype=dtype,
                     generator=g, requires_grad=True)
    w_out = torch.randn(T, B, H * (1 + bidirectional), dtype=dtype, generator=g)
    theirs = run_packed(rnn, x, lengths, hx, enforce_sorted, w_out)
    ours = run_packed(fused, x, lengths, hx, enforce_sorted, w_out)
    names = NAMES + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, ours, theirs, strict=True):
        assert_close_rel(a, b, TOL[dtype], name)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("project,I", [(True, 1), (True, 3), (True, 12),
                                       (False, None)])
def test_op_matches_reference(reverse, threads, project, I):
    """The ops with lengths against the float64 reference, on a batch large
    enough that a thread's slice takes the chunked dW_hh path (>= 48 rows)
    and on one that gathers across steps, with one and two threads (slices
    balanced by steps, not rows)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for B in (150, 5):
            T, H = 13, 9
            args = layer_args(T, B, I or H, H, torch.float64, project, seed=B)
            lengths = random_lengths(B, T, seed=B)
            leaves = [a.requires_grad_() if a is not None else None for a in args]
            out, h_n = ops.irnn_forward(*leaves, "relu", reverse, True, lengths)
            ref_out, ref_h = irnn_layer_reference(*leaves, "relu", reverse,
                                                  True, lengths)
            assert_close_rel(out, ref_out, 1e-12, "output")
            assert_close_rel(h_n, ref_h, 1e-12, "h_n")
            g = torch.Generator().manual_seed(2)
            g_out = torch.randn(out.shape, dtype=out.dtype, generator=g)
            g_h = torch.randn(h_n.shape, dtype=out.dtype, generator=g)
            wrt = [a for a in leaves if a is not None]
            ours = torch.autograd.grad([out, h_n], wrt, [g_out, g_h])
            theirs = torch.autograd.grad([ref_out, ref_h], wrt, [g_out, g_h])
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                assert_close_rel(a, b, 1e-11, f"B={B} gradient {i}")
    finally:
        torch.set_num_threads(before)


def test_padded_output_is_zero_and_h_n_is_the_last_valid_state():
    T, B, H = 6, 4, 3
    args = layer_args(T, B, 1, H, torch.float64, True)
    lengths = torch.tensor([6, 4, 2, 1])
    for reverse in (False, True):
        out, h_n = ops.irnn_forward(*args, "relu", reverse, True, lengths)
        _, h_only = ops.irnn_forward(*args, "relu", reverse, False, lengths)
        for b, n in enumerate(lengths.tolist()):
            assert (out[n:, b] == 0).all()
            # Each row alone, run over its own steps only.
            row = [a[:n, b:b + 1] if i == 0 else
                   (a[b:b + 1] if i == 1 else a) for i, a in enumerate(args)]
            ref_out, ref_h = ops.irnn_forward(*row, "relu", reverse, True)
            torch.testing.assert_close(out[:n, b], ref_out[:, 0], rtol=0, atol=1e-14)
            torch.testing.assert_close(h_n[b], ref_h[0], rtol=0, atol=1e-14)
            assert torch.equal(h_only[b], h_n[b])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("project,I", [(True, 1), (True, 12), (False, None)])
@pytest.mark.parametrize("reverse", [False, True])
def test_padding_is_never_read(dtype, project, I, reverse):
    """NaN and Inf in the padded input (and in the gradient arriving at
    padded outputs) change nothing: outputs, h_n and every gradient are
    finite and bitwise equal to the run with clean padding."""
    T, B, H = 10, 60, 8
    args = layer_args(T, B, I or H, H, dtype, project)
    lengths = random_lengths(B, T, seed=3)
    pad = torch.arange(T).view(T, 1) >= lengths.view(1, B)
    g = torch.Generator().manual_seed(4)
    g_out = torch.randn(T, B, H, dtype=dtype, generator=g)
    g_h = torch.randn(B, H, dtype=dtype, generator=g)
    results = []
    for dirty in (False, True):
        x = args[0].clone()
        go = g_out.clone()
        if dirty:
            junk = torch.tensor([float("nan"), float("inf"), -float("inf")],
                                dtype=dtype)
            x[pad] = junk.repeat(x[pad].numel() // 3 + 1)[:x[pad].numel()].view(
                x[pad].shape)
            go[pad] = float("nan")
        out, h_n = ops.irnn_forward(x, *args[1:], "relu", reverse, True, lengths)
        grads = ops.irnn_backward(go, g_h, x, args[1], args[2], args[3], out,
                                  "relu", reverse, lengths)
        results.append([out, h_n] + list(grads))
    for i, (clean, dirty) in enumerate(zip(*results)):
        assert torch.isfinite(dirty).all(), i
        assert torch.equal(clean, dirty), i


def test_padding_is_never_read_through_rnn_forward():
    """The same through rnn_forward and autograd, with an input projected
    before the op (I > FUSED_INPUT_MAX) and two bidirectional layers."""
    T, B, I, H = 9, 6, 6, 5
    rnn, fused = packed_pair(I, H, 2, True, torch.float64)
    lengths = random_lengths(B, T, seed=5, sort=False)
    pad = (torch.arange(T).view(T, 1) >= lengths.view(1, B)).unsqueeze(2)
    x = torch.randn(T, B, I, dtype=torch.float64)
    results = []
    for dirty in (False, True):
        xi = x.masked_fill(pad, float("nan")) if dirty else x.clone()
        xi.requires_grad_()
        hx = torch.zeros(4, B, H, dtype=torch.float64, requires_grad=True)
        out, h_n = rnn_forward(xi, hx, fused._flat_weights, "relu", 2, True,
                               False, 0.0, False, lengths=lengths)
        grads = torch.autograd.grad(out.sum() + h_n.sum(),
                                    [xi, hx] + list(fused.parameters()))
        grads = [grads[0].masked_fill(pad, 0)] + list(grads[1:])
        results.append([out, h_n] + grads)
    for i, (clean, dirty) in enumerate(zip(*results)):
        assert torch.isfinite(dirty).all(), i
        assert torch.equal(clean, dirty), i


def test_equal_lengths_match_the_unpacked_path():
    T, B, I, H = 12, 5, 1, 6
    rnn, fused = packed_pair(I, H, 1, True, torch.float32)
    x = torch.randn(T, B, I)
    out, h_n = fused(pack_padded_sequence(x, [T] * B))
    plain_out, plain_h = fused(x)
    padded, _ = pad_packed_sequence(out)
    assert_close_rel(padded, plain_out, 1e-6, "output")
    assert_close_rel(h_n, plain_h, 1e-6, "h_n")


def test_packed_options_as_nn_rnn():
    """batch_first is ignored for packed input, return_sequence=False gives
    h_n only, and hx is taken in the caller's batch order."""
    T, B, I, H = 7, 5, 2, 4
    torch.manual_seed(0)
    rnn = nn.RNN(I, H, nonlinearity="relu", batch_first=True)
    fused = FusedIRNN.from_rnn(rnn)
    x = torch.randn(B, T, I)
    lengths = torch.tensor([3, 7, 1, 5, 7])
    packed = pack_padded_sequence(x, lengths, batch_first=True,
                                  enforce_sorted=False)
    hx = torch.randn(1, B, H)
    out, h_n = fused(packed, hx)
    ref_out, ref_h = rnn(packed, hx)
    torch.testing.assert_close(out.data, ref_out.data)
    torch.testing.assert_close(h_n, ref_h)
    assert torch.equal(out.sorted_indices, ref_out.sorted_indices)
    none, h_only = fused(packed, hx, return_sequence=False)
    assert none is None and torch.equal(h_only, h_n)
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        fused(packed, torch.zeros(1, B + 1, H))


def test_dropout_between_layers_on_packed_input():
    """Dropout between layers draws the same masks as the reference under
    the same seed (the padded layout is shared)."""
    T, B, I, H = 8, 4, 3, 5
    fused = FusedIRNN(I, H, 3, dropout=0.5, init="torch").double().train()
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([8, 6, 6, 2])
    hx = torch.zeros(3, B, H, dtype=torch.float64)
    results = []
    for layer_fn in (irnn_cuda.irnn_layer, irnn_layer_reference):
        torch.manual_seed(7)
        results.append(rnn_forward(x, hx, fused._flat_weights, "relu", 3,
                                   False, False, 0.5, True, layer_fn=layer_fn,
                                   lengths=lengths))
    for a, b in zip(*results):
        assert_close_rel(a, b, 1e-12)


def test_functional_lengths_in_any_order():
    """rnn_forward sorts rows by length and puts them back; with
    enforce_sorted=True unsorted lengths are an error naming them."""
    T, B, I, H = 6, 4, 1, 3
    fused = FusedIRNN(I, H, init="torch").double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx = torch.randn(1, B, H, dtype=torch.float64)
    lengths = torch.tensor([2, 6, 3, 6])
    out, h_n = rnn_forward(x, hx, fused._flat_weights, "relu", 1, False,
                           False, 0.0, False, lengths=lengths)
    ref_out, ref_h = irnn_cuda.irnn_reference(x, hx, fused._flat_weights,
                                              lengths=lengths)
    assert_close_rel(out, ref_out, 1e-12)
    assert_close_rel(h_n, ref_h, 1e-12)
    with pytest.raises(RuntimeError, match="lengths must be sorted"):
        rnn_forward(x, hx, fused._flat_weights, "relu", 1, False, False, 0.0,
                    False, lengths=lengths, enforce_sorted=True)
    # batch_first: lengths still index the batch.
    out_bf, _ = rnn_forward(x.transpose(0, 1), hx, fused._flat_weights,
                            "relu", 1, False, True, 0.0, False,
                            lengths=lengths.tolist())
    assert_close_rel(out_bf.transpose(0, 1), ref_out, 1e-12)


@pytest.mark.parametrize("lengths,match", [
    (torch.tensor([3, -1]), r"lengths must be in 1\.\.T = 1\.\.4.*lengths\[1\] = -1"),
    (torch.tensor([3, 0]), r"lengths must be in 1\.\.T.*lengths\[1\] = 0"),
    (torch.tensor([5, 2]), r"lengths must be in 1\.\.T.*lengths\[0\] = 5"),
    (torch.tensor([2, 3]), r"lengths must be sorted in decreasing order"),
    (torch.tensor([3, 2, 1]), r"lengths must have shape \[B\] = \[2\]"),
    (torch.tensor([[3, 2]]), r"lengths must have shape \[B\] = \[2\]"),
    (torch.tensor([3.0, 2.0]), r"lengths must be an int64 tensor"),
    (torch.tensor([3, 2], dtype=torch.int32), r"lengths must be an int64 tensor"),
])
def test_bad_lengths_are_named(lengths, match):
    args = layer_args(4, 2, 1, 3, torch.float32, True)
    with pytest.raises(RuntimeError, match=match):
        ops.irnn_forward(*args, "relu", False, True, lengths)
    out, _ = ops.irnn_forward(*args, "relu", False, True)
    with pytest.raises(RuntimeError, match=match):
        ops.irnn_backward(out, None, args[0], args[1], args[2], args[3], out,
                          "relu", False, lengths)


def test_functional_bad_lengths():
    x, hx = torch.randn(4, 2, 1), torch.zeros(1, 2, 3)
    w = FusedIRNN(1, 3)._flat_weights
    call = lambda lengths: rnn_forward(x, hx, w, "relu", 1, False, False,  # noqa: E731
                                       0.0, False, lengths=lengths)
    with pytest.raises(TypeError, match="lengths must hold integers"):
        call(torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match=r"lengths must have shape \[B\] = \[2\]"):
        call([4, 3, 2])
    with pytest.raises(RuntimeError, match=r"lengths must be in 1\.\.T"):
        call([4, 0])


MASKS = [[True, False, False, False, False], [False, True, False, False, False],
         [False, False, True, False, False], [False, False, False, True, False],
         [False, False, False, False, True], [False, False, True, True, True],
         [True, True, True, True, True]]


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if v else "0" for v in m))
@pytest.mark.parametrize("project,I", [(True, 1), (True, 12), (False, None)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_output_mask(mask, project, I, with_lengths):
    """A gradient left out of output_mask is an empty [0]; the others equal
    the unmasked call's bitwise."""
    T, B, H = 7, 10, 6
    args = layer_args(T, B, I or H, H, torch.float32, project)
    lengths = random_lengths(B, T, seed=6) if with_lengths else None
    out, _ = ops.irnn_forward(*args, "relu", False, True, lengths)
    g = torch.randn_like(out)
    bwd = lambda m: ops.irnn_backward(g, None, args[0], args[1], args[2],  # noqa: E731
                                      args[3], out, "relu", False, lengths, m)
    full, masked = bwd([True] * 5), bwd(mask)
    for i, (a, b) in enumerate(zip(full, masked)):
        if mask[i]:
            assert torch.equal(a, b), i
        else:
            assert b.shape == (0,), i


def test_autograd_asks_only_for_needed_gradients():
    """Pixel MNIST's first layer: no gradient for the input or h0."""
    T, B, H = 5, 3, 4
    args = layer_args(T, B, 1, H, torch.float64, True)
    for a in args[2:]:
        a.requires_grad_()
    out, h_n = ops.irnn_forward(*args, "relu", False, True)
    grads = torch.autograd.grad(out.sum() + h_n.sum(), args[2:])
    ref_out, ref_h = irnn_layer_reference(*args, "relu", False, True)
    ref = torch.autograd.grad(ref_out.sum() + ref_h.sum(), args[2:])
    for a, b in zip(grads, ref):
        assert_close_rel(a, b, 1e-12)


def test_gradcheck_with_lengths():
    for reverse in (False, True):
        args = layer_args(5, 4, 2, 3, torch.float64, True, seed=8)
        args = [a.requires_grad_() for a in args]
        lengths = torch.tensor([5, 3, 3, 1])
        fn = lambda *a: ops.irnn_forward(*a, "tanh", reverse, True, lengths)  # noqa: E731
        assert torch.autograd.gradcheck(fn, args)


def test_compile_fullgraph_with_lengths():
    T, B, I, H = 9, 6, 1, 5
    fused = FusedIRNN(I, H, init="torch")
    weights = fused._flat_weights
    lengths = torch.tensor([4, 9, 1, 7, 9, 2])

    def step(x, hx, lengths):
        out, h_n = rnn_forward(x, hx, weights, "relu", 1, False, False, 0.0,
                               False, lengths=lengths)
        return out.sum() + h_n.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(T, B, I)
    hx = torch.randn(1, B, H)
    loss = compiled(x, hx, lengths)
    grads = torch.autograd.grad(loss, weights)
    ref_loss = step(x, hx, lengths)
    ref_grads = torch.autograd.grad(ref_loss, weights)
    torch.testing.assert_close(loss, ref_loss)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("I,H", [(1, 100), (12, 40), (3, 300)])
def test_cuda_packed_matches_nn_rnn(I, H, enforce_sorted):
    """FusedIRNN on a PackedSequence on CUDA (the kernels on the packed
    rows, no reference and no warning) against nn.RNN (cuDNN), two
    bidirectional layers, gradients included; H = 300 takes the large-H
    path."""
    cuda_or_skip()
    T, B = 11, 9
    rnn, fused = packed_pair(I, H, 2, True, torch.float32)
    rnn, fused = rnn.cuda(), fused.cuda()
    lengths = random_lengths(B, T, seed=I, sort=enforce_sorted)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g).cuda().requires_grad_()
    hx = (torch.randn(4, B, H, generator=g) * 0.1).cuda().requires_grad_()
    w_out = torch.randn(T, B, 2 * H, generator=g).cuda()
    # cuDNN stays on (cudnn.flags(allow_tf32=False) alone would switch it
    # off); only our run must raise no warning.
    with tf32_off():
        assert torch.backends.cudnn.enabled
        theirs = run_packed(rnn, x, lengths, hx, enforce_sorted, w_out)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ours = run_packed(fused, x, lengths, hx, enforce_sorted, w_out)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert_close_rel(a, b, 1e-4, (NAMES + [""] * 8)[i] or f"param {i}")


@pytest.mark.cuda
@pytest.mark.parametrize("where", ["cpu", "cuda"])
@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_ops_lengths_match_cpu(where, reverse):
    """The CUDA ops with lengths on the CPU (checked, copied once) or on the
    device (used in place) give the CPU ops' results."""
    cuda_or_skip()
    T, B, I, H = 12, 40, 1, 100
    args = layer_args(T, B, I, H, torch.float64, True)
    lengths = random_lengths(B, T, seed=2)
    g = torch.Generator().manual_seed(3)
    g_out, g_h = torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g)
    want = list(ops.irnn_forward(*args, "relu", reverse, True, lengths))
    want += ops.irnn_backward(g_out, g_h, args[0], args[1], args[2], args[3],
                              want[0], "relu", reverse, lengths)
    cu = [None if a is None else a.cuda() for a in args]
    dev_lengths = lengths.cuda() if where == "cuda" else lengths
    out, h_n = ops.irnn_forward(*cu, "relu", reverse, True, dev_lengths)
    got = [out, h_n] + list(ops.irnn_backward(
        g_out.cuda(), g_h.cuda(), cu[0], cu[1], cu[2], cu[3], out, "relu",
        reverse, dev_lengths))
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close_rel(a.cpu(), b, 1e-9, str(i))


@pytest.mark.cuda
def test_cuda_lengths_without_host_sync_and_in_a_graph():
    """Lengths on the device: no call synchronises with the host (the sync
    debug mode raises on one), and forward and backward are captured in a
    CUDA graph whose replay follows new lengths written in place. Lengths
    on the CPU cannot be captured and say so."""
    cuda_or_skip()
    T, B, I, H = 10, 16, 1, 100
    args = [None if a is None else a.cuda()
            for a in layer_args(T, B, I, H, torch.float32, True)]
    lengths = random_lengths(B, T, seed=4).cuda()
    g_out = torch.randn(T, B, H, device="cuda")

    def step():
        out, h_n = ops.irnn_forward(*args, "relu", True, True, lengths)
        grads = ops.irnn_backward(g_out, h_n, args[0], args[1], args[2],
                                  args[3], out, "relu", True, lengths)
        return [out, h_n] + list(grads)

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        eager = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up on a side stream, as capture wants
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b)
    lengths.copy_(random_lengths(B, T, seed=5).cuda())
    graph.replay()
    for a, b in zip(captured, step()):
        torch.testing.assert_close(a, b)
    host_lengths = lengths.cpu()
    with pytest.raises(RuntimeError, match="CUDA graph"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            ops.irnn_forward(*args, "relu", False, True, host_lengths)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("project,I", [(True, 1), (True, 12), (False, None)])
def test_packed_layout_equals_padded(reverse, project, I):
    """The ops on packed rows ([N, *] in PackedSequence.data's order, with
    lengths) give the padded call's valid rows, gradients included, bitwise:
    the kernels run the same code on either layout. (A large input's dW_ih
    is a GEMM over N rows instead of T*B, summed in another order.)"""
    T, B, H = 9, 70, 6
    args = layer_args(T, B, I or H, H, torch.float32, project)
    lengths = random_lengths(B, T, seed=9)
    g = torch.Generator().manual_seed(10)
    g_out = torch.randn(T, B, H, generator=g)
    g_h = torch.randn(B, H, generator=g)
    pack = lambda t: pack_padded_sequence(t, lengths).data  # noqa: E731
    out, h_n = ops.irnn_forward(*args, "relu", reverse, True, lengths)
    p_out, p_h = ops.irnn_forward(pack(args[0]), *args[1:], "relu", reverse,
                                  True, lengths)
    assert torch.equal(p_out, pack(out)) and torch.equal(p_h, h_n)
    _, p_h_only = ops.irnn_forward(pack(args[0]), *args[1:], "relu", reverse,
                                   False, lengths)
    assert torch.equal(p_h_only, h_n)
    grads = ops.irnn_backward(g_out, g_h, args[0], args[1], args[2], args[3],
                              out, "relu", reverse, lengths)
    p_grads = ops.irnn_backward(pack(g_out), g_h, pack(args[0]), args[1],
                                args[2], args[3], p_out, "relu", reverse,
                                lengths)
    assert torch.equal(p_grads[0], pack(grads[0]))
    for i in range(1, 5):
        if i == 2 and I == 12:
            assert_close_rel(p_grads[i], grads[i], 1e-6, "dW_ih")
        else:
            assert torch.equal(p_grads[i], grads[i]), i


def test_packed_layout_errors():
    args = layer_args(4, 3, 1, 2, torch.float32, True)
    data = torch.randn(7, 1)
    with pytest.raises(RuntimeError, match=r"sum\(lengths\) = 8 rows, got 7"):
        ops.irnn_forward(data, *args[1:], "relu", False, True,
                         torch.tensor([4, 2, 2]))
    with pytest.raises(RuntimeError, match="lengths must be sorted"):
        ops.irnn_forward(data, *args[1:], "relu", False, True,
                         torch.tensor([2, 4, 1]))
    with pytest.raises(RuntimeError, match=r"input must be \[T, B, I\] \(or \[N, I\] packed"):
        ops.irnn_forward(data, *args[1:], "relu", False, True)
