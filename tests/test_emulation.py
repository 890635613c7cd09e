"""The CUDA kernels' source executed on the CPU (tests/emu/).

csrc/cuda/irnn_kernels.cuh and irnn_launch.cuh are compiled with g++ against
an emulation of the CUDA built-ins (one OS thread per CUDA thread, a real
barrier for __syncthreads, shared memory private to each block, blocks one
after another) and launched with the configuration make_launch_config
returns for A100 and H100 property tables. Every output and gradient is
compared with irnn_cuda.reference; a ThreadSanitizer build looks for data
races. No GPU is needed.
"""
import itertools
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import TOL, max_rel_err
from irnn_cuda.reference import irnn_layer_reference

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "emu"))
import emu  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="needs g++ to build the emulation")

PERSISTENT, LARGE_H, REGISTER_FWD, REGISTER_BWD = 0, 1, 2, 3
# A device with no shared memory opt-in (48 KB): W_hh of H = 120 in float32
# does not fit, so the large-H path runs at a small H.
SMALL_SMEM = dict(sm_count=4, max_threads_per_block=1024,
                  smem_per_block=48 * 1024, smem_per_block_optin=48 * 1024)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    return emu.Emu(emu.build(emu.build_dir(tmp_path_factory)))


def ragged_batch(table):
    """A batch over 2 * SMs rows: 3 rows per block and a partial last block."""
    return 2 * table["sm_count"] + 5


def make_inputs(dtype, T, B, I, H, project, bias, gen):
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)
    # x as a batch_first view: time and batch strides, unit inner stride.
    x = rnd(B, T, I if project else H).transpose(0, 1)
    return dict(
        x=x, h0=rnd(B, H, scale=0.5),
        w_ih=rnd(H, I, scale=0.5) if project else None,
        w_hh=rnd(H, H, scale=0.9 / H ** 0.5),
        b_ih=rnd(H, scale=0.1) if bias else None,
        b_hh=rnd(H, scale=0.1) if bias else None)


# The register-resident forward's table (IRNN_REG_FWD_VARIANTS): float32,
# float16 and bfloat16 at HP in {64, 104, 128} with 1, 2, 4 or 8 rows per
# block, the input projected and at most 4 wide, or not projected; float64
# at HP 64 with 1 or 2 rows, projected only.
REG_FWD_HP = (64, 104, 128)
REG_FWD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REG_FWD_TABLE = {dtype: {(hp, r) for hp in REG_FWD_HP for r in (1, 2, 4, 8)}
                 for dtype in REG_FWD_DTYPES}
REG_FWD_TABLE[torch.float64] = {(64, 1), (64, 2)}


def pick_reg_variant(table, variants, B, H):
    """pick_reg_variant (csrc/cuda/irnn_cuda_api.h) restated: among the
    (HP, rows) with HP >= H whose blocks cover B in one wave, the least
    rows * HP (ties: fewer rows); without one, the most rows, then the
    least HP (several waves); None when no HP >= H is listed."""
    if B < 1:
        return None
    fits = [(r * hp, r, hp) for hp, r in variants
            if hp >= H and -(-B // r) <= table["sm_count"]]
    if fits:
        _, r, hp = min(fits)
        return hp, r
    waves = [(-r, hp) for hp, r in variants if hp >= H]
    if not waves:
        return None
    r, hp = min(waves)
    return hp, -r


def register_fwd_expected(table, dtype, B, I, H, project):
    """(HP, rows per block) the routing must select, or None."""
    if dtype not in REG_FWD_TABLE or (project and I > 4) or (
            not project and dtype == torch.float64):
        return None
    return pick_reg_variant(table, REG_FWD_TABLE[dtype], B, H)


# The register-resident backward's table (IRNN_REG_BWD_VARIANTS): HP 64
# and 104 with 1, 2 and 4 rows per block, HP 104 with 8; float32 also at
# HP 128 with one row; float64 at HP 64 with one row only. The input
# projected and at most 4 wide, or not projected (float16 and bfloat16 not
# at 8 rows); T >= 1.
_REG_BWD_COMMON = {(64, 1), (64, 2), (64, 4), (104, 1), (104, 2), (104, 4),
                   (104, 8)}
REG_BWD_TABLE = {torch.float32: _REG_BWD_COMMON | {(128, 1)},
                 torch.float16: _REG_BWD_COMMON,
                 torch.bfloat16: _REG_BWD_COMMON,
                 torch.float64: {(64, 1)}}


def register_bwd_expected(table, dtype, T, B, I, H, project):
    """(HP, rows per block) of the register-resident backward the routing
    must select, or None."""
    if dtype not in REG_BWD_TABLE or (project and I > 4) or T < 1:
        return None
    variants = REG_BWD_TABLE[dtype]
    narrow = dtype in (torch.float16, torch.bfloat16)
    if narrow and not project:  # reg_bwd_unprojected_rows
        variants = {(hp, r) for hp, r in variants if r != 8}
    return pick_reg_variant(table, variants, B, H)


def run_and_compare(harness, table, dtype, T, B, I, H, nonlinearity="relu",
                    reverse=False, project=True, bias=True, grads="both",
                    store_sequence=True, expect_path=None, seed=0,
                    backward=True, bwd_gemm=None):
    """Forward and backward in the emulation against the reference (float64
    autograd on the same rounded inputs); returns the configurations.
    expect_path is the forward's and the backward's path unless a
    register-resident kernel covers the call (register_fwd_expected,
    register_bwd_expected). bwd_gemm: as Emu.backward's."""
    gen = torch.Generator().manual_seed(seed)
    v = make_inputs(dtype, T, B, I, H, project, bias, gen)
    relu = nonlinearity == "relu"
    out, h_n, fcfg = harness.forward(table, v["x"], v["h0"], v["w_ih"],
                                     v["w_hh"], v["b_ih"], v["b_hh"], relu,
                                     reverse, store_sequence)
    if expect_path is not None:
        reg = (register_fwd_expected(table, dtype, B, I, H, project)
               if expect_path == PERSISTENT else None)
        assert fcfg["path"] == (REGISTER_FWD if reg else expect_path), fcfg
        if reg:
            assert fcfg["rows_per_block"] == reg[1], fcfg
            assert fcfg["threads"] == (reg[0] + 31) // 32 * 32, fcfg
    ref = {k: (t.double().requires_grad_() if t is not None else None)
           for k, t in v.items()}
    r_out, r_hn = irnn_layer_reference(ref["x"], ref["h0"], ref["w_ih"],
                                       ref["w_hh"], ref["b_ih"], ref["b_hh"],
                                       nonlinearity, reverse)
    tol = TOL[dtype]
    assert max_rel_err(h_n, r_hn) <= tol, ("h_n", max_rel_err(h_n, r_hn), fcfg)
    if not store_sequence:
        assert out is None
        return fcfg, None
    assert max_rel_err(out, r_out) <= tol, ("output", max_rel_err(out, r_out), fcfg)
    if not backward:
        return fcfg, None

    g_out = (torch.randn(B, T, H, generator=gen).to(dtype).transpose(0, 1)
             if grads in ("seq", "both") else None)
    g_hn = (torch.randn(B, H, generator=gen).to(dtype)
            if grads in ("last", "both") else None)
    dx, dh0, dw_ih, dw_hh, db, bcfg = harness.backward(
        table, g_out, g_hn, v["x"], v["h0"], v["w_ih"], v["w_hh"], out, relu,
        reverse, bwd_gemm=bwd_gemm)
    if expect_path is not None:
        reg = (register_bwd_expected(table, dtype, T, B, I, H, project)
               if expect_path == PERSISTENT else None)
        assert bcfg["path"] == (REGISTER_BWD if reg else expect_path), bcfg
        if reg:
            assert bcfg["threads"] == (2 * reg[0] + 31) // 32 * 32, bcfg
            assert bcfg["rows_per_block"] == reg[1], bcfg
            assert bcfg["blocks"] == -(-B // reg[1]), bcfg
    loss = 0
    if g_out is not None:
        loss = loss + (r_out * g_out.double()).sum()
    if g_hn is not None:
        loss = loss + (r_hn * g_hn.double()).sum()
    wrt = {"dx": ref["x"], "dh0": ref["h0"], "dw_hh": ref["w_hh"]}
    if project:
        wrt["dw_ih"] = ref["w_ih"]
    if bias:
        wrt["db"] = ref["b_ih"]
    expected = dict(zip(wrt, torch.autograd.grad(loss, list(wrt.values()),
                                                 allow_unused=True)))
    got = dict(dx=dx, dh0=dh0, dw_ih=dw_ih, dw_hh=dw_hh, db=db)
    for name, e in expected.items():
        e = torch.zeros_like(got[name], dtype=torch.float64) if e is None else e
        err = max_rel_err(got[name], e)
        assert err <= tol, (name, err, bcfg)
    return fcfg, bcfg


def test_launch_config_tables(harness):
    """The configuration make_launch_config gives A100 and H100 tables."""
    for table in (emu.A100, emu.H100):
        optin = table["smem_per_block_optin"]
        for backward, dtype, B in itertools.product(
                (False, True), (torch.float32, torch.float64, torch.bfloat16),
                (1, 16, 128, 1024)):
            c = harness.config(table, backward, dtype, 784, B, 1, 100)
            if backward:
                reg = register_bwd_expected(table, dtype, 784, B, 1, 100,
                                            True)
                assert c["path"] == (REGISTER_BWD if reg else PERSISTENT), c
            else:
                reg = register_fwd_expected(table, dtype, B, 1, 100, True)
                assert c["path"] == (REGISTER_FWD if reg else PERSISTENT), c
            assert c["smem"] <= optin and c["threads"] <= 512, c
            assert c["blocks"] * c["rows_per_block"] >= B, c
            assert c["blocks"] <= max(B, table["sm_count"]), c
            assert c["row_groups"] * c["rows_per_thread"] >= c["rows_per_block"]
            assert c["row_groups"] * 100 <= c["threads"], c
        # One block per row while rows are fewer than SMs.
        assert harness.config(table, False, torch.float32, 784, 16, 1, 100)[
            "blocks"] == 16
        for H in (257, 1024, 2048):
            # H = 257 runs the cluster backward where the device has
            # clusters (test_emulation_cluster.py).
            cluster = H <= 512 and table.get("cluster_launch")
            assert harness.config(table, True, torch.float32, 8, 4, 1, H)[
                "path"] == (5 if cluster else LARGE_H)
        assert harness.config(table, False, torch.float32, 8, 4, 1, 1024)[
            "path"] == LARGE_H
    # H100's larger opt-in keeps W_hh on chip for a larger H than A100 (the
    # single-block kernel's limit: without clusters, which take
    # 128 < H <= 512 forward; test_emulation_cluster.py).
    fwd = {name: max(H for H in range(1, 400, 3) if harness.config(
        table, False, torch.float32, 8, 4, 1, H)["path"] == PERSISTENT)
        for name, table in (("a100", emu.A100),
                            ("h100", dict(emu.H100, cluster_launch=0)))}
    assert 150 < fwd["a100"] < fwd["h100"], fwd


def _persistent_cases():
    """Every dtype with every H, relu and tanh, I=1, I>1 and a projected
    input, all three gradient arrivals, both directions and both tables."""
    cases = []
    for i, (dtype, H) in enumerate(itertools.product(
            (torch.float32, torch.float64, torch.bfloat16, torch.float16),
            (1, 33, 100))):
        cases.append(dict(
            table=("A100", "H100")[i % 2], dtype=dtype, H=H,
            nonlinearity=("relu", "tanh")[(i // 2) % 2],
            I=(1, 3, None)[i % 3], grads=("both", "seq", "last")[(i // 3) % 3],
            reverse=i % 4 == 1, bias=i % 5 != 2, T=(3, 4, 1)[i % 3] if i else 3))
    return cases


@pytest.mark.parametrize("case", _persistent_cases(), ids=lambda c: "-".join(
    f"{k}={str(v).replace('torch.', '')}" for k, v in c.items()))
def test_persistent_vs_reference(harness, case):
    table = {"A100": emu.A100, "H100": emu.H100}[case["table"]]
    B = ragged_batch(table)
    I = case["I"] or 7
    fcfg, bcfg = run_and_compare(
        harness, table, case["dtype"], case["T"], B, I, case["H"],
        case["nonlinearity"], case["reverse"], project=case["I"] is not None,
        bias=case["bias"], grads=case["grads"], expect_path=PERSISTENT)
    # A ragged last block, but where a register-resident kernel runs one
    # row per block (float64's backward at H <= 64).
    for cfg in (fcfg, bcfg):
        assert cfg["blocks"] >= 3, cfg
        assert B % cfg["rows_per_block"] != 0 or (
            cfg["path"] == REGISTER_BWD and cfg["rows_per_block"] == 1), cfg


# A device with few SMs: a small batch gives many rows per block.
FOUR_SMS = dict(emu.H100, sm_count=4)


@pytest.mark.parametrize("case", [
    dict(table="A100", dtype=torch.float32, H=130, B=1083, I=1,
         nonlinearity="relu", reverse=False),
    dict(table="four_sms_no_clusters", dtype=torch.bfloat16, H=130, B=207,
         I=2, nonlinearity="tanh", reverse=True),
    dict(table="four_sms", dtype=torch.float64, H=100, B=78, I=None,
         nonlinearity="relu", reverse=True),
], ids=lambda c: "-".join(f"{k}={str(v).replace('torch.', '')}"
                          for k, v in c.items()))
def test_several_rows_per_thread(harness, case):
    """Large batches on today's kernels (H > 128 in float32 and bfloat16,
    where no register-resident variant is listed, on devices without
    clusters): a thread computes 2-4 rows per step, with unused row slots
    in the last group and a ragged last block."""
    table = {"A100": emu.A100, "four_sms": FOUR_SMS,
             "four_sms_no_clusters": dict(FOUR_SMS, cluster_launch=0)}[
        case["table"]]
    fcfg, bcfg = run_and_compare(
        harness, table, case["dtype"], 3, case["B"], case["I"] or 5,
        case["H"], case["nonlinearity"], case["reverse"],
        project=case["I"] is not None, expect_path=PERSISTENT)
    for cfg in (fcfg, bcfg):
        assert cfg["rows_per_thread"] > 1, cfg
        assert cfg["blocks"] >= 3 and case["B"] % cfg["rows_per_block"], cfg


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_last_state_only(harness, dtype):
    """store_sequence=False writes h_n only (persistent and large-H)."""
    run_and_compare(harness, emu.H100, dtype, 4, ragged_batch(emu.H100), 1,
                    33, store_sequence=False, expect_path=PERSISTENT)
    run_and_compare(harness, SMALL_SMEM, dtype, 4, 5, 1, 120,
                    store_sequence=False, expect_path=LARGE_H)


@pytest.mark.parametrize("case", [
    dict(table="A100", dtype=torch.float32, H=257, I=1, T=3, B=5,
         nonlinearity="relu", reverse=False, grads="both"),
    dict(table="H100 without clusters", dtype=torch.bfloat16, H=257,
         I=None, T=2, B=3, nonlinearity="tanh", reverse=True, grads="seq"),
    dict(table="H100", dtype=torch.float64, H=257, I=2, T=2, B=4,
         nonlinearity="relu", reverse=True, grads="last"),
    dict(table="A100", dtype=torch.float32, H=1024, I=1, T=2, B=3,
         nonlinearity="tanh", reverse=False, grads="both"),
    dict(table="small", dtype=torch.float16, H=120, I=3, T=3, B=70,
         nonlinearity="relu", reverse=False, grads="both"),
], ids=lambda c: "-".join(f"{k}={str(v).replace('torch.', '')}"
                          for k, v in c.items()))
def test_large_h_vs_reference(harness, case):
    table = {"A100": emu.A100, "H100": emu.H100, "small": SMALL_SMEM,
             "H100 without clusters": dict(emu.H100, cluster_launch=0)}[
        case["table"]]
    run_and_compare(harness, table, case["dtype"], case["T"], case["B"],
                    case["I"] or 5, case["H"], case["nonlinearity"],
                    case["reverse"], project=case["I"] is not None,
                    grads=case["grads"], expect_path=LARGE_H)


# H200: 132 SMs, 227 KB of shared memory per block with opt-in.
H200 = dict(sm_count=132, max_threads_per_block=1024,
            smem_per_block=48 * 1024, smem_per_block_optin=232448)


def test_register_forward_routing(harness):
    """make_launch_config selects the register-resident forward from its
    table and routes everything else to today's kernels."""
    def cfg(B, H=100, I=1, dtype=torch.float32, backward=False, project=True,
            table=H200, T=784):
        return harness.config(table, backward, dtype, T, B, I, H, project)
    # The target: H = 100 fp32 (HP = 104, 128 threads) at B = 16 and 1024.
    c = cfg(16)
    assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
        REGISTER_FWD, 1, 128, 16), c
    c = cfg(1024)
    assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
        REGISTER_FWD, 8, 128, 128), c
    assert c["smem"] <= H200["smem_per_block"] and not c["smem_optin"], c
    # Above one wave of single rows, the fewest rows per block that fill one
    # wave: B = 256 runs 128 blocks of 2 rows.
    for B, rows in ((1, 1), (132, 1), (133, 2), (264, 2), (265, 4), (528, 4),
                    (529, 8), (1056, 8)):
        c = cfg(B)
        assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
            REGISTER_FWD, rows, 128, -(-B // rows)), (B, c)
    # H <= 64 runs at HP = 64 (64 threads), H <= 128 at HP = 128.
    for H, threads in ((1, 64), (32, 64), (64, 64), (65, 128), (128, 128)):
        c = cfg(16, H=H)
        assert c["path"] == REGISTER_FWD and c["threads"] == threads, (H, c)
    # Not projected (a stacked layer's input, or one wider than 4): by the
    # ring (8 steps of a place per thread, a 4-byte word for every dtype),
    # with the same rows per block; the h buffers and the ring of 8 rows at
    # HP 104 fit the default 48 KB.
    for dtype in REG_FWD_DTYPES:
        for B, rows in ((16, 1), (133, 2), (300, 4), (1024, 8)):
            c = cfg(B, I=100, project=False, dtype=dtype)
            assert (c["path"], c["rows_per_block"], c["threads"]) == (
                REGISTER_FWD, rows, 128), (dtype, c)
            assert c["smem"] == 4 * (2 * rows * 104 + 8 * rows * 128), c
            assert not c["smem_optin"], c
    # The 16-bit types projected: the same rows per block.
    for dtype in (torch.bfloat16, torch.float16):
        for B, rows in ((16, 1), (133, 2), (300, 4), (1024, 8)):
            c = cfg(B, dtype=dtype)
            assert (c["path"], c["rows_per_block"]) == (REGISTER_FWD, rows), c
    # More than one wave of 8-row blocks: 8 rows per block, in several
    # waves, projected or not.
    for B, project, dtype in ((1057, True, torch.float32),
                              (5000, True, torch.float32),
                              (1057, False, torch.bfloat16),
                              (2048, False, torch.float16)):
        c = cfg(B, I=1 if project else 100, project=project, dtype=dtype)
        assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
            REGISTER_FWD, 8, 128, -(-B // 8)), (B, c)
    # float64 projected at H <= 64: HP 64 (64 threads) with one row per
    # block, then 2, then 2 in several waves; its h buffers and x chunk
    # (8-byte elements) within the default 48 KB.
    for B, rows in ((16, 1), (132, 1), (133, 2), (264, 2), (265, 2),
                    (2048, 2)):
        c = cfg(B, H=64, dtype=torch.float64)
        assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
            REGISTER_FWD, rows, 64, -(-B // rows)), (B, c)
        assert c["smem"] == 8 * (2 * rows * 64 + 4 * rows * min(
            784, 32 * 1024 // (rows * 4 * 8))), c
        assert not c["smem_optin"], c
    # Today's kernels: H > 128, float64 above H = 64 or not projected, an
    # input wider than 4 that is given projected.
    for c in (cfg(16, H=129), cfg(16, dtype=torch.float64),
              cfg(16, H=65, dtype=torch.float64),
              cfg(16, I=5), cfg(16, project=False, dtype=torch.float64),
              cfg(16, H=64, I=64, project=False, dtype=torch.float64),
              cfg(2048, dtype=torch.float64)):
        assert c["path"] == PERSISTENT, c
    assert cfg(16, H=1024)["path"] == LARGE_H
    # A device whose shared memory cannot hold 8 rows' h buffers and x
    # chunk: the most rows that fit (one, at T = 784), in several waves.
    tiny = dict(H200, smem_per_block=24 * 1024, smem_per_block_optin=24 * 1024)
    assert cfg(16, H=64, table=tiny)["path"] == REGISTER_FWD
    c = cfg(1024, H=64, table=tiny)
    assert (c["path"], c["rows_per_block"], c["blocks"]) == (
        REGISTER_FWD, 1, 1024), c
    assert c["smem"] <= tiny["smem_per_block"], c
    # The routing is the rule register_fwd_expected states, everywhere.
    for table in (H200, emu.A100, FOUR_SMS):
        for B, H, I, dtype, project in itertools.product(
                (1, 4, 5, 9, 16, 17, 32, 33, 131, 133, 264, 265, 528, 529, 864,
                 1100),
                (1, 64, 65, 100, 104, 105, 128, 129), (1, 4, 5),
                (torch.float32, torch.float16, torch.bfloat16,
                 torch.float64), (True, False)):
            reg = register_fwd_expected(table, dtype, B, I, H, project)
            c = cfg(B, H=H, I=I, table=table, dtype=dtype, project=project)
            assert (c["path"] == REGISTER_FWD) == (reg is not None), (B, H, I, c)
            if reg:
                assert (c["rows_per_block"], c["threads"]) == (
                    reg[1], (reg[0] + 31) // 32 * 32), (B, H, I, dtype, c)


def _register_cases():
    """Every variant of the table (HP 64, 104, 128 x 1, 2, 4 or 8 rows per
    block) with relu and tanh, at sizes that select it on a 4-SM device:
    B <= 4 for one row per block, 5..8 for 2, 9..16 for 4, 17..32 for 8
    (most with a partial last block)."""
    cases = []
    batches = {1: (3, 4), 2: (7, 5), 4: (13, 10), 8: (21, 17)}
    for i, (H, rows, relu) in enumerate(itertools.product(
            (33, 64, 100, 128), (1, 2, 4, 8), (True, False))):
        cases.append(dict(
            dtype=torch.float32, H=H, B=batches[rows][i % 2],
            I=1 + i % 4, nonlinearity="relu" if relu else "tanh",
            reverse=i % 3 == 1, bias=i % 5 != 2, store_sequence=i % 4 != 3,
            T=(5, 2, 7)[i % 3]))
    # Not projected (float32, the ring): every HP and rows, relu and tanh,
    # T past the ring's 8 slots in most.
    for i, (H, rows, relu) in enumerate(itertools.product(
            (33, 64, 100, 128), (1, 2, 4, 8), (True, False))):
        cases.append(dict(
            dtype=torch.float32, H=H, B=batches[rows][(i + 1) % 2],
            I=(6, 100)[i % 2], project=False,
            nonlinearity="relu" if relu else "tanh", reverse=i % 3 == 0,
            bias=i % 5 != 1, store_sequence=i % 4 != 2,
            T=(11, 3, 19)[i % 3]))
    # Both 16-bit types: every HP, 1, 2, 4 and 8 rows per block, projected
    # and not (the ring's words: H odd or even, so elements in either half
    # of their words, and T past its 8 slots); the forward only (today's
    # backward misses the bfloat16 tolerance on the output of either
    # forward at H >= 120 in some of these cases).
    for i, (H, rows, dtype) in enumerate(itertools.product(
            (33, 100, 120), (1, 2, 4, 8), (torch.float16, torch.bfloat16))):
        cases.append(dict(
            dtype=dtype, H=H,
            B={1: 3, 2: 7, 4: 13, 8: 21}[rows], I=1 + i % 4,
            nonlinearity=("relu", "tanh")[(i // 2) % 2], reverse=i % 3 == 2,
            bias=i % 4 != 1, store_sequence=i % 5 != 4, T=(4, 3)[i % 2],
            backward=False))
        cases.append(dict(
            dtype=dtype, H=H,
            B={1: 4, 2: 5, 4: 10, 8: 17}[rows], I=(6, 100)[i % 2],
            project=False, nonlinearity=("relu", "tanh")[(i // 3) % 2],
            reverse=i % 3 == 1, bias=i % 4 != 2, store_sequence=i % 5 != 3,
            T=(11, 9, 3)[i % 3], backward=False))
    # float64 (HP 64, projected, accumulating in double): 1 and 2 rows per
    # block, relu and tanh, H from 1 to 64; B = 9 and 11 run 2 rows in
    # several waves (5-6 blocks on 4 SMs). The backward: today's kernel.
    for i, (H, B, relu) in enumerate(itertools.product(
            (1, 40, 64), (3, 4, 7, 11), (True, False))):
        cases.append(dict(
            dtype=torch.float64, H=H, B=B, I=1 + i % 4,
            nonlinearity="relu" if relu else "tanh", reverse=i % 3 == 1,
            bias=i % 5 != 2, store_sequence=i % 4 != 3, T=(5, 2, 7)[i % 3]))
    # More rows than one wave of 8-row blocks holds (4 SMs): 8 rows per
    # block in 5 or 6 blocks, projected and not, both directions.
    for i, (dtype, H, B, project) in enumerate((
            (torch.float32, 100, 40, True), (torch.float32, 60, 37, False),
            (torch.float32, 128, 45, True), (torch.float16, 100, 41, False),
            (torch.bfloat16, 33, 48, True))):
        cases.append(dict(
            dtype=dtype, H=H, B=B, I=(2, 7)[i % 2] if project else 100,
            project=project, nonlinearity=("relu", "tanh")[i % 2],
            reverse=i % 2 == 1, bias=i != 2, store_sequence=True,
            T=(9, 5, 3)[i % 3], backward=dtype == torch.float32))
    return cases


@pytest.mark.parametrize("case", _register_cases(), ids=lambda c: "-".join(
    f"{k}={str(v).replace('torch.', '')}" for k, v in c.items()))
def test_register_forward_vs_reference(harness, case):
    B, H, I = case["B"], case["H"], case["I"]
    fcfg, _ = run_and_compare(
        harness, FOUR_SMS, case["dtype"], case["T"], B, I, H,
        case["nonlinearity"], case["reverse"], project=case.get("project", True),
        bias=case["bias"], store_sequence=case["store_sequence"],
        expect_path=PERSISTENT, backward=case.get("backward", True))
    assert fcfg["path"] == REGISTER_FWD, fcfg


@pytest.mark.parametrize("rows,project,dtype", [
    (1, True, torch.float32), (8, True, torch.float32),
    (1, False, torch.float32), (8, False, torch.float32),
    (2, True, torch.float64)])
def test_register_forward_chunks_and_determinism(harness, rows, project,
                                                 dtype):
    """T longer than one staged chunk of x (2048 steps at one row per
    block, 256 at 8; float64 at 2 rows, 8-byte elements: 512), or not
    projected, the ring wrapping hundreds of times; reversed, with h0:
    against the reference, and bitwise equal across runs with blocks in
    different orders."""
    B, T = {1: (3, 2050), 8: (21, 260), 2: (7, 515)}[rows]
    H = 64 if dtype == torch.float64 else 100
    # Gradients on the sequence too: from h_n alone, dh0 decays over T steps
    # below float32's range (4e-49 at T = 260), which float32 rightly gives
    # as 0 and a relative check cannot compare.
    run_and_compare(harness, FOUR_SMS, dtype, T, B, 2, H,
                    reverse=True, project=project, grads="both",
                    expect_path=PERSISTENT)
    gen = torch.Generator().manual_seed(3)
    v = make_inputs(dtype, T, B, 2, H, project, True, gen)
    runs = [harness.forward(FOUR_SMS, v["x"], v["h0"], v["w_ih"], v["w_hh"],
                            v["b_ih"], v["b_hh"], True, True, True,
                            block_order_seed=seed) for seed in (0, 777)]
    assert runs[0][2]["path"] == REGISTER_FWD
    assert runs[0][2]["rows_per_block"] == rows
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_register_backward_routing(harness):
    """make_launch_config selects the register-resident backward from its
    table (float32, float16, bfloat16; one row per block at HP 64/104/128
    while B <= SMs, else the fewest rows per block listed that fill one
    wave: 2 or 4 at HP 64/104 in float32, 8 at HP 104) and routes
    everything else to today's kernels; the workspace at T = 784, B = 1024,
    H = 100 stays today's."""
    def cfg(B, H=100, I=1, dtype=torch.float32, project=True, table=H200,
            T=784):
        return harness.config(table, True, dtype, T, B, I, H, project)
    partials = 4 * (100 * 100 + 100 + 100)  # one block's dW_hh, dW_ih, db
    # The targets: H = 100 fp32 (HP = 104, 224 threads) at B = 16, 128 and
    # 1024.
    for B in (1, 16, 128, 132):
        c = cfg(B)
        assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
            REGISTER_BWD, 1, 224, B), c
        assert c["workspace"] == B * partials, c
        assert c["smem"] <= H200["smem_per_block"] and not c["smem_optin"], c
    c = cfg(1024)
    assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
        REGISTER_BWD, 8, 224, 128), c
    assert c["smem_optin"] and c["smem"] <= H200["smem_per_block_optin"], c
    # The workspace at B = 1024: 128 blocks of partial gradients, 5.2 MB, as
    # today's kernel (8 rows per block, 128 blocks) needs.
    assert c["workspace"] == 128 * partials == 5_222_400, c
    assert cfg(1024, dtype=torch.float64)["blocks"] == 128
    for B, rows in ((133, 2), (256, 2), (265, 4), (528, 4), (529, 8),
                    (1056, 8)):
        c = cfg(B)
        assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
            REGISTER_BWD, rows, 224, -(-B // rows)), (B, c)
        assert c["workspace"] == -(-B // rows) * partials, c
    # 2 and 4 rows at HP 64 too (128 threads); not at HP 128, which lists
    # one row only: above one wave, single rows in several waves.
    for B, rows in ((200, 2), (400, 4)):
        c = cfg(B, H=64)
        assert (c["path"], c["rows_per_block"], c["threads"]) == (
            REGISTER_BWD, rows, 128), (B, c)
        c = cfg(B, H=120)
        assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
            REGISTER_BWD, 1, 256, B), (B, c)
    # More than one wave of 8-row blocks: 8 rows per block in several waves,
    # with a block's partial gradients each (at B = 2048, 256 blocks: 10.4
    # MB, against 642 MB of the float32 sequence the backward reads).
    for B in (1057, 2048, 5000):
        c = cfg(B)
        assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
            REGISTER_BWD, 8, 224, -(-B // 8)), (B, c)
        assert c["workspace"] == -(-B // 8) * partials, c
    c = cfg(1024, H=105)
    assert (c["path"], c["rows_per_block"], c["blocks"]) == (
        REGISTER_BWD, 1, 1024), c
    # One step of dx (not projected: [B, H]) must stay within an int's
    # bytes; a larger batch runs today's kernel.
    limit = (2**31 - 1) // (4 * 100)
    assert cfg(limit, project=False)["path"] == REGISTER_BWD
    assert cfg(limit + 1, project=False)["path"] == PERSISTENT
    # One row per block: H <= 64 at HP = 64 (128 threads), H <= 128 at
    # HP = 128 (256); 8 rows per block at HP = 104 up to H = 104; the input
    # not projected too.
    for B, H, threads in ((16, 1, 128), (16, 64, 128), (16, 65, 224),
                          (16, 104, 224), (16, 105, 256), (16, 128, 256),
                          (1024, 1, 224), (1024, 104, 224)):
        for project in (True, False):
            c = cfg(B, H=H, project=project)
            assert c["path"] == REGISTER_BWD and c["threads"] == threads, (
                B, H, project, c)
    for c in (cfg(16, H=129), cfg(16, dtype=torch.float64), cfg(16, I=5),
              cfg(16, T=0), cfg(16, H=65, dtype=torch.float64),
              cfg(16, H=64, I=5, dtype=torch.float64)):
        assert c["path"] == PERSISTENT, c
    # float64 at H <= 64: HP 64 (128 threads), one row per block, in
    # several waves above one; projected or not; partial sums in double,
    # shared memory of 8-byte elements within the default 48 KB.
    for B, project in itertools.product((1, 16, 132, 133, 1024),
                                        (True, False)):
        c = cfg(B, H=64, dtype=torch.float64, project=project)
        assert (c["path"], c["rows_per_block"], c["threads"], c["blocks"]) == (
            REGISTER_BWD, 1, 128, B), (B, project, c)
        assert c["workspace"] == B * 8 * (64 * 64 + (64 if project else 0)
                                          + 64), c
        assert c["smem"] == 8 * (8 * 256 + 2 * 128 + 2 * 4 * 8), c
        assert not c["smem_optin"], c
    # One step of dx in bytes within an int: 8-byte elements halve the
    # batch.
    limit = (2**31 - 1) // (8 * 64)
    assert cfg(limit, H=64, project=False,
               dtype=torch.float64)["path"] == REGISTER_BWD
    assert cfg(limit + 1, H=64, project=False,
               dtype=torch.float64)["path"] == PERSISTENT
    # The 16-bit types at H = 100, projected: as float32, with the same
    # workspace (float partial sums). Not projected: 1, 2 and 4 rows per
    # block only, 4 in several waves above 4 * SMs. H > 104: today's.
    for dtype in (torch.float16, torch.bfloat16):
        for B, rows in ((16, 1), (256, 2), (400, 4), (1024, 8)):
            c = cfg(B, dtype=dtype)
            assert (c["path"], c["rows_per_block"], c["threads"]) == (
                REGISTER_BWD, rows, 224), c
            assert c["workspace"] == -(-B // rows) * partials, c
        for B, rows in ((1, 1), (16, 1), (132, 1), (133, 2), (264, 2),
                        (265, 4), (528, 4), (529, 4), (2048, 4)):
            c = cfg(B, dtype=dtype, project=False)
            assert (c["path"], c["rows_per_block"], c["threads"]) == (
                REGISTER_BWD, rows, 224), (B, c)
            assert c["workspace"] == -(-B // rows) * 4 * (100 * 100 + 100), c
        for c in (cfg(16, H=105, dtype=dtype), cfg(16, H=128, dtype=dtype)):
            assert c["path"] == PERSISTENT, c
    # The routing is the rule register_bwd_expected states, everywhere.
    for table in (H200, emu.A100, FOUR_SMS):
        for B, H, I, project, dtype in itertools.product(
                (1, 4, 5, 8, 9, 16, 17, 32, 33, 108, 109, 132, 133, 264, 265,
                 528, 529, 864, 865, 1056, 1057),
                (1, 64, 65, 100, 104, 105, 128, 129), (1, 4, 5),
                (True, False), (torch.float32, torch.bfloat16,
                                torch.float16, torch.float64)):
            reg = register_bwd_expected(table, dtype, 784, B, I, H, project)
            c = cfg(B, H=H, I=I, project=project, table=table, dtype=dtype)
            assert (c["path"] == REGISTER_BWD) == (reg is not None), (
                B, H, I, project, dtype, c)
            if reg:
                assert (c["rows_per_block"], c["threads"]) == (
                    reg[1], (2 * reg[0] + 31) // 32 * 32), (B, H, dtype, c)


def test_rows_override(harness):
    """DeviceProps::reg_rows (IRNN_CUDA_ROWS on a GPU): 1, 2, 4 or 8 picks
    only variants of that many rows per block, in one wave or several, at
    the smallest HP listed with them; -1 picks none (today's kernels); 0 is
    the table's choice. A call no variant of those rows covers runs as
    without a register-resident kernel (the CUDA op refuses it)."""
    def cfg(backward, B, rows, H=100, dtype=torch.float32, project=True):
        return harness.config(dict(H200, reg_rows=rows), backward, dtype, 784,
                              B, 1 if project else H, H, project)
    for backward, path in ((False, REGISTER_FWD), (True, REGISTER_BWD)):
        threads = 224 if backward else 128  # HP 104
        for B, rows in ((16, 2), (16, 8), (128, 4), (1024, 4), (2048, 1),
                        (5000, 2)):
            c = cfg(backward, B, rows)
            assert (c["path"], c["rows_per_block"], c["threads"],
                    c["blocks"]) == (path, rows, threads, -(-B // rows)), (
                backward, B, rows, c)
        for B in (16, 1024, 2048):
            assert cfg(backward, B, 0) == harness.config(
                H200, backward, torch.float32, 784, B, 1, 100, True)
            assert cfg(backward, B, -1)["path"] == PERSISTENT
        # Not listed: float64 at 4 rows (the forward lists 1 and 2, the
        # backward 1).
        assert cfg(backward, 16, 4, H=64,
                   dtype=torch.float64)["path"] == PERSISTENT
    # HP 128: the forward lists 8 rows, the backward one row only.
    assert cfg(False, 16, 8, H=120)["rows_per_block"] == 8
    assert cfg(True, 16, 8, H=120)["path"] == PERSISTENT
    # 16-bit, not projected: the backward has no 8-row variant.
    assert cfg(True, 16, 8, dtype=torch.float16,
               project=False)["path"] == PERSISTENT
    assert cfg(False, 16, 8, dtype=torch.float16,
               project=False)["rows_per_block"] == 8
    # A forced variant computes what the table's does: 8 rows per block in
    # several waves (B = 37 on 4 SMs) and one row per block, against the
    # float64 reference.
    for rows, B in ((8, 37), (1, 6)):
        table = dict(FOUR_SMS, reg_rows=rows)
        fcfg, bcfg = run_and_compare(harness, table, torch.float32, 9, B, 2,
                                     100, reverse=True, grads="both")
        for c, path in ((fcfg, REGISTER_FWD), (bcfg, REGISTER_BWD)):
            assert (c["path"], c["rows_per_block"]) == (path, rows), c


def _register_backward_cases():
    """Every variant of the table: one row per block (B <= 4 SMs) at every
    HP (H = 33, 64, 100, 104, 128, 120), 2 and 4 rows per block (B = 5-8,
    9-16) at HP 64 and 104 (H = 33, 64, 100, 104), 8 rows per block
    (B = 17-32, a partial last block) at H = 1, 33, 100, 104; relu and tanh, both
    directions, a projected input of width 1-4 and none, the gradient on
    the sequence, on h_n or both, with and without biases, T from 1 to
    beyond the prefetch ring (8 steps); float64 at HP 64, one row per
    block, in one wave and several."""
    cases = []
    for i, (H, relu, project) in enumerate(itertools.product(
            (33, 64, 100, 104, 128, 120), (True, False), (True, False))):
        cases.append(dict(
            H=H, B=(1, 4, 3)[i % 3], I=1 + i % 4 if project else None,
            nonlinearity="relu" if relu else "tanh", reverse=i % 3 != 1,
            bias=i % 5 != 2, grads=("both", "seq", "last", "both")[i % 4],
            T=(1, 2, 9, 13, 7, 8)[i % 6]))
    for i, (H, rows, relu) in enumerate(itertools.product(
            (33, 64, 100, 104), (2, 4), (True, False))):
        cases.append(dict(
            H=H, B={2: (5, 7, 8), 4: (9, 14, 16)}[rows][i % 3],
            I=1 + i % 4 if i % 3 else None,
            nonlinearity="relu" if relu else "tanh", reverse=i % 3 == 1,
            bias=i % 5 != 2, grads=("both", "seq", "last")[i % 3],
            T=(3, 10, 1, 9, 12)[i % 5]))
    for i, (H, relu) in enumerate(itertools.product((1, 33, 100, 104),
                                                    (True, False))):
        cases.append(dict(
            H=H, B=(29, 19, 32, 17)[i % 4], I=1 + i % 4 if i % 3 else None,
            nonlinearity="relu" if relu else "tanh", reverse=i % 3 == 1,
            bias=i % 5 != 2, grads=("both", "seq", "last")[i % 3],
            T=(3, 10, 1, 9)[i % 4]))
    # Several waves: 8 rows per block in 5-6 blocks (B = 33-48), and one
    # row per block at HP 128 (the only rows listed there) in 6-7 blocks.
    for i, (H, B) in enumerate(((100, 37), (64, 48), (104, 41), (120, 7),
                                (128, 6))):
        cases.append(dict(
            H=H, B=B, I=1 + i % 4 if i % 2 == 0 else None,
            nonlinearity="relu" if i % 3 != 1 else "tanh",
            reverse=i % 2 == 1, bias=i % 4 != 3,
            grads=("both", "seq", "last")[i % 3], T=(9, 3, 11)[i % 3]))
    # float64 (HP 64, one row per block, accumulating in double): H from 1
    # to 64, one wave (B <= 4 SMs) and several (B = 6, 9), T from 1 to
    # beyond the ring.
    for i, (H, relu, project) in enumerate(itertools.product(
            (1, 33, 64), (True, False), (True, False))):
        cases.append(dict(
            dtype="float64", H=H, B=(1, 4, 6, 9)[i % 4],
            I=1 + i % 4 if project else None,
            nonlinearity="relu" if relu else "tanh", reverse=i % 3 == 1,
            bias=i % 5 != 2, grads=("both", "seq", "last")[i % 3],
            T=(1, 9, 13, 2, 8)[i % 5]))
    return cases


@pytest.mark.parametrize("case", _register_backward_cases(),
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_register_backward_vs_reference(harness, case):
    """float32 (and float64) against the float64 reference; run_and_compare
    checks the variant the routing rule names (threads, rows, blocks)."""
    B, H = case["B"], case["H"]
    dtype = getattr(torch, case.get("dtype", "float32"))
    _, bcfg = run_and_compare(
        harness, FOUR_SMS, dtype, case["T"], B, case["I"] or 5, H,
        case["nonlinearity"], case["reverse"], project=case["I"] is not None,
        bias=case["bias"], grads=case["grads"], expect_path=PERSISTENT)
    assert bcfg["path"] == REGISTER_BWD, bcfg


def _register_backward_16bit_cases():
    """Every variant for float16 and bfloat16: 1, 2 and 4 rows per block at
    HP 64 and 104, 8 rows per block at HP 104, input projected; 1, 2 and 4
    rows per block at HP 64 and 104 not projected (4 in several waves
    too); odd and even strides,
    so the 16-bit elements sit in either half of the 4-byte words the ring
    copies."""
    cases = []
    for dtype in (torch.float16, torch.bfloat16):
        for i, (H, B) in enumerate(((33, 3), (64, 4), (100, 1), (104, 2),
                                    (65, 4), (100, 29), (33, 13), (104, 8),
                                    (40, 6), (100, 15))):
            cases.append(dict(
                dtype=dtype, H=H, B=B, I=(1, 2, 3, 4)[i % 4],
                nonlinearity="tanh" if i % 3 == 2 else "relu",
                reverse=i % 2 == 1, bias=i % 5 != 2,
                grads=("both", "seq", "last")[i % 3], T=(9, 13, 1, 8)[i % 4]))
        for i, (H, B) in enumerate(((33, 5), (100, 8), (64, 13), (104, 16),
                                    (101, 3), (40, 10), (60, 4), (100, 1),
                                    (100, 19))):
            cases.append(dict(
                dtype=dtype, H=H, B=B, I=None,
                nonlinearity="relu" if i % 3 != 1 else "tanh",
                reverse=i % 2 == 0, bias=i % 4 != 3,
                grads=("both", "seq", "last")[i % 3], T=(11, 9, 2)[i % 3]))
    return cases


def backward_from_sequence(out, h0, x, w_ih, w_hh, g_out, g_hn, relu,
                           reverse):
    """The CPU op's backward in float64 from a stored forward sequence `out`
    (phi' from the stored h_t, as a backward kernel computes it), so a
    16-bit forward's rounding, which moves the trajectory away from a
    float64 forward's, is not charged to the backward."""
    d = lambda t: None if t is None else t.double()
    return torch.ops.irnn_cuda.irnn_backward(
        d(g_out), d(g_hn), d(x), d(h0), d(w_ih), d(w_hh), d(out),
        "relu" if relu else "tanh", reverse)


def assert_backward_from_sequence(got, cfg, v, out, g_out, g_hn, relu,
                                  reverse):
    """Every gradient of `got` (dx, dh0, dw_ih, dw_hh, db; None where not
    computed) within TOL of backward_from_sequence on the inputs `v`
    (make_inputs) and the stored sequence `out`, in out's dtype."""
    expected = backward_from_sequence(out, v["h0"], v["x"], v["w_ih"],
                                      v["w_hh"], g_out, g_hn, relu, reverse)
    for name, a, e in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"), got,
                          expected):
        if a is None:
            continue
        assert a.dtype == out.dtype and a.shape == e.shape, name
        err = max_rel_err(a, e)
        assert err <= TOL[out.dtype], (name, err, cfg)


@pytest.mark.parametrize("case", _register_backward_16bit_cases(),
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_register_backward_16bit_vs_reference(harness, case):
    """The 16-bit backward against backward_from_sequence on the emulated
    forward's own sequence (float64 throughout), every gradient."""
    dtype, T, B, H = case["dtype"], case["T"], case["B"], case["H"]
    project, relu = case["I"] is not None, case["nonlinearity"] == "relu"
    gen = torch.Generator().manual_seed(3)
    v = make_inputs(dtype, T, B, case["I"] or 5, H, project, case["bias"], gen)
    out, _, _ = harness.forward(FOUR_SMS, v["x"], v["h0"], v["w_ih"],
                                v["w_hh"], v["b_ih"], v["b_hh"], relu,
                                case["reverse"], True)
    g_out = (torch.randn(B, T, H, generator=gen).to(dtype).transpose(0, 1)
             if case["grads"] in ("seq", "both") else None)
    g_hn = (torch.randn(B, H, generator=gen).to(dtype)
            if case["grads"] in ("last", "both") else None)
    *got, bcfg = harness.backward(FOUR_SMS, g_out, g_hn, v["x"], v["h0"],
                                  v["w_ih"], v["w_hh"], out, relu,
                                  case["reverse"])
    assert bcfg["path"] == REGISTER_BWD, bcfg
    want = register_bwd_expected(FOUR_SMS, dtype, T, B, case["I"], H, project)
    assert (bcfg["threads"], bcfg["rows_per_block"]) == (
        (2 * want[0] + 31) // 32 * 32, want[1]), bcfg
    assert_backward_from_sequence(got, bcfg, v, out, g_out, g_hn, relu,
                                  case["reverse"])


def relu_layer_with_grads(harness, dtype, T, B, I, H, project, reverse, gen):
    """Inputs from gen (make_inputs, biases), their relu forward on FOUR_SMS
    with the sequence stored, and random gradients for the sequence and
    h_n: (inputs, output, grad_output, grad_h_n)."""
    v = make_inputs(dtype, T, B, I, H, project, True, gen)
    out, _, _ = harness.forward(FOUR_SMS, v["x"], v["h0"], v["w_ih"],
                                v["w_hh"], v["b_ih"], v["b_hh"], True, reverse,
                                True)
    g_out = torch.randn(T, B, H, generator=gen).to(dtype)
    g_hn = torch.randn(B, H, generator=gen).to(dtype)
    return v, out, g_out, g_hn


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_register_backward_16bit_odd_offsets(harness, dtype):
    """16-bit tensors that start 2 bytes into a 4-byte word (storage offset
    1): the ring copies the word holding each element and reads the half the
    address selects. The gradients equal those of the same values stored
    aligned, bitwise."""
    gen = torch.Generator().manual_seed(11)
    T, B, I, H = 7, 5, 3, 100

    def shifted(t):
        """t's values in a tensor of t's strides whose storage starts 1
        element later."""
        t = t.contiguous()
        flat = torch.zeros(t.numel() + 1, dtype=t.dtype)
        out = flat[1:].view(t.shape)
        out.copy_(t)
        assert out.data_ptr() % 4 == 2
        return out
    v, out, g_out, g_hn = relu_layer_with_grads(harness, dtype, T, B, I, H,
                                                True, False, gen)
    x = v["x"].contiguous()
    aligned = harness.backward(FOUR_SMS, g_out, g_hn, x, v["h0"], v["w_ih"],
                               v["w_hh"], out.contiguous(), True, False)
    odd = harness.backward(FOUR_SMS, shifted(g_out), g_hn, shifted(x),
                           v["h0"], v["w_ih"], v["w_hh"], shifted(out), True,
                           False)
    assert aligned[5]["path"] == odd[5]["path"] == REGISTER_BWD
    for a, b in zip(aligned[:5], odd[:5]):
        assert torch.equal(a, b)
    expected = backward_from_sequence(out, v["h0"], x, v["w_ih"], v["w_hh"],
                                      g_out, g_hn, True, False)
    for a, e in zip(odd[:5], expected):
        assert max_rel_err(a, e) <= TOL[dtype]


def backward_in_two_block_orders(harness, dtype, T, B, I, H, project,
                                 reverse, seed, other_order):
    """A relu forward on FOUR_SMS and its backward (gradients on the
    sequence and on h_n) with blocks in index order and in the order of
    block_order_seed `other_order`: the two backward results."""
    v, out, g_out, g_hn = relu_layer_with_grads(
        harness, dtype, T, B, I, H, project, reverse,
        torch.Generator().manual_seed(seed))
    return [harness.backward(FOUR_SMS, g_out, g_hn, v["x"], v["h0"],
                             v["w_ih"], v["w_hh"], out, True, reverse,
                             block_order_seed=order)
            for order in (0, other_order)]


@pytest.mark.parametrize("B", [4, 7, 13, 29, 43])
def test_register_backward_deterministic_across_block_orders(harness, B):
    """Every gradient of the register-resident backward (1, 2, 4 and 8 rows
    per block, 8 in several waves) is bitwise equal with blocks run in two
    different orders."""
    runs = backward_in_two_block_orders(harness, torch.float32, 11, B, 2,
                                        100, True, True, 5, 4321)
    assert runs[0][5]["path"] == REGISTER_BWD
    rows = {4: 1, 7: 2, 13: 4, 29: 8, 43: 8}[B]
    assert runs[0][5]["rows_per_block"] == rows
    assert runs[0][5]["blocks"] == -(-B // rows) >= 4
    for a, b in zip(runs[0][:5], runs[1][:5]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype,H,B,project,rows", [
    (torch.float32, 50, 4, True, 1), (torch.float32, 50, 7, True, 2),
    (torch.float32, 50, 13, False, 4), (torch.float32, 120, 4, True, 1),
    (torch.float32, 100, 13, False, 4), (torch.float16, 50, 7, True, 2),
    (torch.float16, 100, 13, True, 4), (torch.bfloat16, 100, 29, True, 8),
    (torch.bfloat16, 50, 4, True, 1), (torch.float64, 64, 6, True, 1),
    (torch.float64, 40, 9, False, 1)],
    ids=lambda v: str(v).replace("torch.", ""))
def test_register_backward_variants_deterministic(harness, dtype, H, B,
                                                  project, rows):
    """HP 64 and 128, the input not projected, the 16-bit types and
    float64 (one row per block in several waves): every gradient bitwise
    equal with blocks run in two different orders."""
    runs = backward_in_two_block_orders(harness, dtype, 9, B,
                                        3 if project else H, H, project, False,
                                        6, 977)
    cfg = runs[0][5]
    assert cfg["path"] == REGISTER_BWD and cfg["rows_per_block"] == rows, cfg
    assert cfg["blocks"] == -(-B // rows) >= 4, cfg
    for a, b in zip(runs[0][:5], runs[1][:5]):
        if a is not None:
            assert torch.equal(a, b)


def test_empty_batch(harness):
    x = torch.randn(3, 0, 1)
    w_hh = torch.randn(8, 8)
    for table in (emu.H100, SMALL_SMEM):
        out, h_n, _ = harness.forward(table, x, torch.randn(0, 8),
                                      torch.randn(8, 1), w_hh, None, None,
                                      True, False, True)
        assert out.shape == (3, 0, 8) and h_n.shape == (0, 8)
        dx, dh0, dw_ih, dw_hh, db, _ = harness.backward(
            table, None, torch.randn(0, 8), x, torch.randn(0, 8),
            torch.randn(8, 1), w_hh, out, True, False)
        assert dw_hh.eq(0).all() and dw_ih.eq(0).all() and db.eq(0).all()


@pytest.mark.parametrize("table,H", [("H100", 33), ("small", 120)])
def test_backward_deterministic_across_block_orders(harness, table, H):
    """dW from blocks run in two different orders is bitwise equal."""
    table = {"H100": emu.H100, "small": SMALL_SMEM}[table]
    gen = torch.Generator().manual_seed(1)
    B, T = ragged_batch(table) if table is emu.H100 else 70, 3
    v = make_inputs(torch.float32, T, B, 1, H, True, True, gen)
    out, _, _ = harness.forward(table, v["x"], v["h0"], v["w_ih"], v["w_hh"],
                                v["b_ih"], v["b_hh"], True, False, True)
    g_out = torch.randn(T, B, H, generator=gen)
    runs = [harness.backward(table, g_out, None, v["x"], v["h0"], v["w_ih"],
                             v["w_hh"], out, True, False, block_order_seed=seed)
            for seed in (0, 12345)]
    assert runs[0][5]["blocks"] >= 3 or runs[0][5]["path"] == LARGE_H
    for a, b in zip(runs[0][:5], runs[1][:5]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("nan_step", [0, 1])
def test_nan_propagates(harness, nan_step):
    """relu is `a < 0 ? 0 : a`: a NaN input stays NaN (fmax would drop it),
    and the backward treats the NaN state as PyTorch does, on the
    register-resident backward (1, 2 and 4 rows per block) and today's. A NaN input
    at the last step leaves a NaN state that only the last step sees: dW_hh
    stays finite (that state is no step's h_{t-1})."""
    x = torch.randn(2, 3, 1)
    x[nan_step, 1, 0] = float("nan")
    out, h_n, _ = harness.forward(emu.H100, x, torch.zeros(3, 4),
                                  torch.ones(4, 1), torch.eye(4), None, None,
                                  True, False, True)
    assert out[nan_step:, 1].isnan().all() and h_n[1].isnan().all()
    assert not out[:, 0].isnan().any()
    # relu' on a NaN state passes the gradient (PyTorch's threshold_backward):
    # every gradient, NaN included, is the CPU op's (checked against autograd).
    g_out = torch.randn(2, 3, 4)
    args = (x, torch.zeros(3, 4), torch.ones(4, 1), torch.eye(4), out)
    cpu = torch.ops.irnn_cuda.irnn_backward(g_out, None, *args, "relu", False)
    if nan_step == 1:
        assert not cpu[3].isnan().any()
    # One row per block, 2 and 4 rows per block (B = 3 over 2 SMs and 1),
    # and today's kernel (8 KB of shared memory cannot hold the
    # register-resident backward's ring).
    for table, path, rows in (
            (emu.H100, REGISTER_BWD, 1),
            (dict(emu.H100, sm_count=2), REGISTER_BWD, 2),
            (dict(emu.H100, sm_count=1), REGISTER_BWD, 4),
            (dict(emu.H100, smem_per_block=8192, smem_per_block_optin=8192),
             PERSISTENT, 1)):
        *ours, cfg = harness.backward(table, g_out, None, *args, True, False)
        assert (cfg["path"], cfg["rows_per_block"]) == (path, rows), cfg
        for name, a, e in zip(("dx", "dh0", "dw_ih", "dw_hh", "db"), ours, cpu):
            torch.testing.assert_close(a, e, equal_nan=True, msg=name)


# ThreadSanitizer: a standalone executable (a TSan .so cannot be loaded into
# an uninstrumented Python), running the kernels with <= 256 threads per
# block and a kernel with a planted race that must be reported.
TSAN_WARNING = "WARNING: ThreadSanitizer: data race"
SANITIZER_MAIN = os.path.join(emu.HERE, "emu_sanitizer_main.cpp")


def _build_sanitizer(tmp_path_factory, name, flag):
    out = emu.build_dir(tmp_path_factory)
    try:
        return emu.build(out, extra_flags=("-O1", "-g", flag), output=name,
                         main=SANITIZER_MAIN)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{name} build failed:\n{exc.stderr}")


@pytest.fixture(scope="module")
def tsan_exe(tmp_path_factory):
    return _build_sanitizer(tmp_path_factory, "emu_tsan", "-fsanitize=thread")


def _run_sanitized(exe, what, **options):
    """Runs one case of a sanitizer executable with `options` in its
    environment; returns (the process, its output)."""
    proc = subprocess.run([exe, what], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, **options))
    return proc, proc.stdout + proc.stderr


def _run_tsan(exe, what):
    return _run_sanitized(
        exe, what, TSAN_OPTIONS="halt_on_error=0 report_signal_unsafe=0")


def test_tsan_reports_planted_race(tsan_exe):
    proc, text = _run_tsan(tsan_exe, "race")
    assert TSAN_WARNING in text, text[-3000:]


def test_tsan_kernels_race_free(tsan_exe):
    proc, text = _run_tsan(tsan_exe, "kernels")
    assert TSAN_WARNING not in text, text[-6000:]
    assert proc.returncode == 0 and "kernels: all cases agree" in text, text[-3000:]


# AddressSanitizer: the same executable and cases, built with
# -fsanitize=address. Every array and workspace the kernels get is
# allocated at the size the op allocates it (the 16-bit words of the
# register-resident backward aside, see emu_sanitizer_main.cpp), so a read
# or write of global memory past an end is reported, as compute-sanitizer
# memcheck would on a GPU. Shared memory is guarded by the emulation's own
# guard pages (tests/test_emu_selftest.py).
ASAN_ERROR = "ERROR: AddressSanitizer"


@pytest.fixture(scope="module")
def asan_exe(tmp_path_factory):
    return _build_sanitizer(tmp_path_factory, "emu_asan", "-fsanitize=address")


def _run_asan(exe, what):
    # Leaks are not what this checks (and LeakSanitizer needs ptrace).
    return _run_sanitized(exe, what, ASAN_OPTIONS="detect_leaks=0")


def test_asan_reports_planted_global_read(asan_exe):
    proc, text = _run_asan(asan_exe, "global_read")
    assert ASAN_ERROR + ": heap-buffer-overflow" in text, text[-3000:]
    assert "READ of size 4" in text and "global_read_kernel" in text, text[-3000:]
    assert proc.returncode != 0


@pytest.mark.parametrize("what", ["kernels", "cluster"])
def test_asan_kernels_in_bounds(asan_exe, what):
    proc, text = _run_asan(asan_exe, what)
    assert ASAN_ERROR not in text, text[-6000:]
    assert proc.returncode == 0 and f"{what}: all cases agree" in text, text[-3000:]
