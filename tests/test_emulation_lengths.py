"""Variable lengths in the CUDA kernels' source, executed on the CPU
(tests/emu/): every path make_launch_config can pick (register-resident
forward and backward, today's persistent kernels, the large-H GEMMs), both
directions, the padded and the packed layout, against the float64
reference with the same lengths; NaN and Inf in the padding change nothing.
"""
import shutil

import pytest
import torch

from conftest import TOL, max_rel_err
from irnn_cuda.reference import irnn_layer_reference

import irnn_cuda  # noqa: E402,F401  (registers torch.ops.irnn_cuda)

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="needs g++ to build the emulation")

# The paths, the 48 KB table (H = 120 in float32 takes the large-H path)
# and the harness fixture are test_emulation.py's.
from test_emulation import (LARGE_H, PERSISTENT, REGISTER_BWD,  # noqa: E402,F401
                            REGISTER_FWD, SMALL_SMEM, harness)
# Four SMs: B <= 4 runs one row per register-resident block; float32 runs
# 2 rows per block up to B = 8 and 4 up to 16; B <= 32 runs 8, and a
# larger batch 8 in several waves. No clusters.
FOUR_SMS = dict(sm_count=4, max_threads_per_block=1024,
                smem_per_block=48 * 1024, smem_per_block_optin=232448)


def lengths_for(B, T, seed, sort):
    """[B] lengths in 1..T holding T and 1 (B >= 2) and, with B >= 8, a run
    of equal ones, so that a block of 8 rows may end before T."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if B >= 2:
        lengths[-1] = 1
    if sort:
        lengths = lengths.sort(descending=True).values
    return lengths


def pack(t, lengths):
    """[T,B,*] -> [N,*] rows in PackedSequence order (sorted lengths)."""
    T = int(lengths.max())
    return torch.cat([t[s, :int((lengths > s).sum())] for s in range(T)])


def unpack(p, lengths, T):
    """[N,*] -> [T,B,*], zeros in the padding."""
    B = len(lengths)
    out = p.new_zeros((T, B) + tuple(p.shape[1:]))
    at = 0
    for s in range(T):
        n = int((lengths > s).sum())
        out[s, :n] = p[at:at + n]
        at += n
    return out


def run_case(harness, table, dtype, T, B, I, H, *, reverse=False,
             project=True, packed=False, relu=True, store_sequence=True,
             grads="both", sort=True, dirty=False, seed=0):
    """Forward and backward with lengths in the emulation against the
    reference; returns the forward's and the backward's configurations."""
    gen = torch.Generator().manual_seed(seed)
    lengths = lengths_for(B, T, seed + 1, sort or packed)
    pad = (torch.arange(T).view(T, 1) >= lengths.view(1, B)).unsqueeze(2)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)
    x = rnd(T, B, I if project else H)
    h0 = rnd(B, H, scale=0.5)
    w_ih = rnd(H, I, scale=0.5) if project else None
    w_hh = rnd(H, H, scale=0.9 / H ** 0.5)
    b_ih, b_hh = rnd(H, scale=0.1), rnd(H, scale=0.1)
    g_out = rnd(T, B, H) if grads in ("seq", "both") else None
    g_hn = rnd(B, H) if grads in ("last", "both") else None
    x_run, g_run = x, g_out
    if dirty:  # NaN and Inf where the rows have ended
        x_run = x.masked_fill(pad, float("nan"))
        x_run[-1].masked_fill_(pad[-1], float("inf"))
        if g_out is not None:
            g_run = g_out.masked_fill(pad, float("nan"))
    nonlinearity = "relu" if relu else "tanh"

    layout = (lambda t: pack(t, lengths)) if packed else (lambda t: t)
    out, h_n, fcfg = harness.forward(
        table, layout(x_run), h0, w_ih, w_hh, b_ih, b_hh, relu, reverse,
        store_sequence, lengths=lengths, packed=packed)
    ref = {k: (t.double().requires_grad_() if t is not None else None)
           for k, t in dict(x=x, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                            b_hh=b_hh).items()}
    r_out, r_hn = irnn_layer_reference(
        ref["x"], ref["h0"], ref["w_ih"], ref["w_hh"], ref["b_ih"],
        ref["b_hh"], nonlinearity, reverse, lengths=lengths)
    tol = TOL[dtype]
    assert torch.isfinite(h_n).all()
    assert max_rel_err(h_n, r_hn) <= tol, ("h_n", max_rel_err(h_n, r_hn), fcfg)
    if not store_sequence:
        assert out is None
        return fcfg, None
    out_padded = unpack(out, lengths, T) if packed else out
    assert torch.isfinite(out_padded).all()
    assert max_rel_err(out_padded, r_out) <= tol, (
        "output", max_rel_err(out_padded, r_out), fcfg)
    if not packed:  # zeros after each row's end, exactly
        assert (out[pad.expand_as(out)] == 0).all()

    dx, dh0, dw_ih, dw_hh, db, bcfg = harness.backward(
        table, None if g_run is None else layout(g_run), g_hn, layout(x_run),
        h0, w_ih, w_hh, out, relu, reverse, block_order_seed=seed + 3,
        lengths=lengths, packed=packed)
    if dtype in (torch.float16, torch.bfloat16):
        # A 16-bit forward's rounding moves its trajectory away from the
        # float64 one (a pre-activation near 0 may change sign): the
        # backward is held to the CPU op in float64 from the emulated
        # forward's own sequence, as test_emulation.py does.
        d = lambda t: None if t is None else t.double()  # noqa: E731
        expected = dict(zip(("dx", "dh0", "dw_ih", "dw_hh", "db"),
                            torch.ops.irnn_cuda.irnn_backward(
                                d(g_out), d(g_hn), d(x), d(h0), d(w_ih),
                                d(w_hh), d(out_padded), nonlinearity, reverse,
                                lengths)))
        if not project:
            del expected["dw_ih"]
    else:
        loss = 0
        if g_out is not None:
            loss = loss + (r_out * g_out.double()).sum()
        if g_hn is not None:
            loss = loss + (r_hn * g_hn.double()).sum()
        wrt = dict(dx=ref["x"], dh0=ref["h0"], dw_hh=ref["w_hh"],
                   db=ref["b_ih"])
        if project:
            wrt["dw_ih"] = ref["w_ih"]
        expected = dict(zip(wrt, torch.autograd.grad(
            loss, list(wrt.values()), allow_unused=True)))
    got = dict(dx=unpack(dx, lengths, T) if packed else dx, dh0=dh0,
               dw_ih=dw_ih, dw_hh=dw_hh, db=db)
    for name, e in expected.items():
        e = torch.zeros_like(got[name], dtype=torch.float64) if e is None else e
        assert torch.isfinite(got[name]).all(), (name, bcfg)
        err = max_rel_err(got[name], e)
        assert err <= tol, (name, err, bcfg)
    if not packed:  # dx is zero where the rows have ended
        assert (dx[pad.expand_as(dx)] == 0).all()
    return fcfg, bcfg


# (table, dtype, T, B, I, H, project, the forward's path, the backward's)
PATHS = [
    (FOUR_SMS, torch.float32, 9, 4, 1, 100, True, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.float32, 9, 21, 1, 100, True, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.float32, 9, 7, 2, 100, True, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.float32, 9, 13, 1, 100, True, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.float32, 8, 13, 1, 60, False, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.float32, 7, 3, 5, 40, False, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.float32, 11, 21, 3, 100, False, REGISTER_FWD,
     REGISTER_BWD),
    (FOUR_SMS, torch.float16, 7, 5, 3, 60, False, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.bfloat16, 11, 13, 3, 101, False, REGISTER_FWD,
     REGISTER_BWD),
    (FOUR_SMS, torch.float32, 7, 19, 3, 120, True, REGISTER_FWD,
     REGISTER_BWD),
    (FOUR_SMS, torch.float32, 7, 19, 3, 130, True, PERSISTENT, PERSISTENT),
    (FOUR_SMS, torch.float64, 8, 11, 2, 20, True, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.float64, 8, 11, 2, 70, True, PERSISTENT, PERSISTENT),
    (FOUR_SMS, torch.float64, 7, 6, 3, 50, False, PERSISTENT, REGISTER_BWD),
    (FOUR_SMS, torch.float16, 9, 21, 1, 100, True, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.bfloat16, 8, 3, 2, 60, True, REGISTER_FWD, REGISTER_BWD),
    (FOUR_SMS, torch.float32, 6, 40, 2, 30, True, REGISTER_FWD, REGISTER_BWD),
    (SMALL_SMEM, torch.float32, 6, 9, 3, 120, True, LARGE_H, LARGE_H),
    (SMALL_SMEM, torch.float32, 5, 70, 120, 120, False, LARGE_H, LARGE_H),
]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("case", PATHS, ids=lambda c: "-".join(
    str(v).replace("torch.", "") for v in c[1:7]))
def test_lengths_every_path(harness, case, packed, reverse):
    table, dtype, T, B, I, H, project, fwd_path, bwd_path = case
    fcfg, bcfg = run_case(harness, table, dtype, T, B, I, H, reverse=reverse,
                          project=project, packed=packed, seed=B)
    assert fcfg["path"] == fwd_path, fcfg
    assert bcfg["path"] == bwd_path, bcfg


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("case", PATHS, ids=lambda c: "-".join(
    str(v).replace("torch.", "") for v in c[1:7]))
def test_lengths_padding_is_never_read(harness, case, packed, reverse):
    """NaN and Inf in the padded input and in the gradient arriving at
    padded outputs: everything finite and as the reference."""
    table, dtype, T, B, I, H, project, _, _ = case
    run_case(harness, table, dtype, T, B, I, H, reverse=reverse,
             project=project, packed=packed, dirty=True, seed=B + 1)


@pytest.mark.parametrize("case", [
    dict(relu=False), dict(grads="seq"), dict(grads="last"),
    dict(store_sequence=False), dict(sort=False),
    dict(sort=False, reverse=True), dict(relu=False, reverse=True),
    dict(store_sequence=False, reverse=True, packed=True)],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("B", [3, 7, 13, 21], ids=["R1", "R2", "R4", "R8"])
def test_lengths_options(harness, case, B):
    """tanh, one gradient or the other, the last state only, unsorted
    lengths on the padded layout (the rows are independent there)."""
    run_case(harness, FOUR_SMS, torch.float32, 8, B, 1, 100, **case, seed=B)


def test_lengths_all_full_equals_no_lengths(harness):
    """Lengths all T give bitwise the results of the call without them."""
    T, B, H = 6, 21, 100
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(T, B, 1, generator=gen)
    h0, w_ih = torch.randn(B, H, generator=gen), torch.randn(H, 1, generator=gen)
    w_hh = torch.randn(H, H, generator=gen) * 0.09
    b = torch.randn(H, generator=gen)
    full = torch.full((B,), T, dtype=torch.int64)
    for reverse in (False, True):
        a = harness.forward(FOUR_SMS, x, h0, w_ih, w_hh, b, b, True, reverse,
                            True)
        c = harness.forward(FOUR_SMS, x, h0, w_ih, w_hh, b, b, True, reverse,
                            True, lengths=full)
        assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
        g = torch.randn(T, B, H, generator=gen)
        ga = harness.backward(FOUR_SMS, g, None, x, h0, w_ih, w_hh, a[0], True,
                              reverse)
        gc = harness.backward(FOUR_SMS, g, None, x, h0, w_ih, w_hh, a[0], True,
                              reverse, lengths=full)
        for u, v in zip(ga[:5], gc[:5]):
            assert torch.equal(u, v)


def test_lengths_out_of_range_are_clamped(harness):
    """Device lengths are not checked on the host: values outside 1..T run
    as 1 or T, and nothing is read or written out of bounds."""
    T, B, H = 5, 4, 100
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(T, B, 1, generator=gen)
    h0, w_ih = torch.randn(B, H, generator=gen), torch.randn(H, 1, generator=gen)
    w_hh = torch.randn(H, H, generator=gen) * 0.09
    wild = torch.tensor([T + 7, -3, 0, 2])
    sane = torch.tensor([T, 1, 1, 2])
    got = harness.forward(FOUR_SMS, x, h0, w_ih, w_hh, None, None, True, False,
                          True, lengths=wild)
    want = harness.forward(FOUR_SMS, x, h0, w_ih, w_hh, None, None, True,
                           False, True, lengths=sane)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
