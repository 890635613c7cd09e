"""The cluster kernels (irnn_fwd_cluster_kernel and the backward's
recurrence irnn_bwd_cluster_kernel, 128 < H <= 512 on devices with
thread-block clusters) executed on the CPU (tests/emu/): the blocks of a
cluster run at the same time as OS threads, a peer's shared memory is its
own buffer, the cluster barrier is a real barrier, and clusters run in a
seeded order. Their routing, every output and gradient against the
float64 reference, lengths (padded, packed, reversed, NaN in the padding),
and both cluster orders bitwise equal.
"""
import shutil

import pytest
import torch

from conftest import TOL, max_rel_err
from irnn_cuda.reference import irnn_layer_reference

pytestmark = pytest.mark.skipif(shutil.which("g++") is None,
                                reason="needs g++ to build the emulation")

# The harness fixture, input maker and paths are test_emulation.py's; the
# lengths cases test_emulation_lengths.py's.
from test_emulation import (LARGE_H, PERSISTENT, REGISTER_FWD,  # noqa: E402,F401
                            TSAN_WARNING, _run_tsan,
                            assert_backward_from_sequence, harness,
                            make_inputs, run_and_compare, tsan_exe)
from test_emulation_lengths import run_case  # noqa: E402
import emu  # noqa: E402  (on sys.path through test_emulation)

CLUSTER_FWD, CLUSTER_BWD = 4, 5
# IRNN_CLUSTER_FWD_VARIANTS and IRNN_CLUSTER_BWD_VARIANTS: float32, float16
# and bfloat16, HP 256 (4 blocks) and 512 (8 blocks); rows per cluster 1, 2,
# 4 and 8, but the 16-bit backward's 1, 2 and 4.
CLUSTER_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CLUSTER_HP = (256, 512)
CLUSTER_ROWS = {(False, 256): (1, 2, 4, 8), (False, 512): (1, 2, 4, 8),
                (True, 256): (1, 2, 4, 8), (True, 512): (1, 2, 4, 8)}
NARROW_BWD_ROWS = (1, 2, 4)
# An H100 with 16 SMs: 4 clusters of 4 blocks (2 of 8) fill it, so a small
# batch already takes several rows per cluster and leaves a ragged last
# cluster.
SIXTEEN_SMS = dict(emu.H100, sm_count=16)
# An H100 whose GPCs hold fewer clusters than 132 SMs / blocks would: 32 of
# 4 blocks (not 33) and 14 of 8 (not 16), as the device's query
# (cudaOccupancyMaxActiveClusters) can report.
GPC_LIMITED = dict(emu.H100, clusters_of_4=32, clusters_of_8=14)
# A device where clusters launch but the query found that no cluster of 8
# fits (-1): HP 512's cluster kernels are never selected.
NO_EIGHT = dict(emu.H100, clusters_of_8=-1)


def cluster_expected(table, dtype, B, I, H, project=True, backward=False,
                     T=784):
    """(HP, rows per cluster) the routing must select, or None. The
    forward needs the input projected and at most 4 wide, or not projected
    (the ring); the backward takes any input (the GEMMs after its
    recurrence do the projection)."""
    if not table.get("cluster_launch") or dtype not in CLUSTER_DTYPES or \
            not 128 < H <= 512 or B < 1:
        return None
    if not backward and project and I > 4:
        return None
    if backward and T < 1:
        return None
    hp = min(h for h in CLUSTER_HP if h >= H)
    blocks = hp // 64
    per_wave = table.get(f"clusters_of_{blocks}") or table["sm_count"] // blocks
    if per_wave < 1:
        return None
    rows = CLUSTER_ROWS[(backward, hp)]
    if backward and dtype != torch.float32:
        rows = NARROW_BWD_ROWS
    # The fewest rows whose clusters fit one wave, else the most (waves).
    return hp, next((r for r in rows if -(-B // r) <= per_wave), rows[-1])


@pytest.mark.parametrize("table", ["h100", "a100", "sixteen", "gpcs",
                                   "no_eight"])
def test_cluster_routing(harness, table):
    """make_launch_config selects the cluster kernels exactly where the
    table says: clusters on the device, float32 or 16-bit, 128 < H <= 512; the
    forward with the input projected and at most 4 wide or not projected
    (its shared memory then the h buffers and the ring), the backward with
    any input (its grid is B / rows clusters; `blocks` is the SM count the
    GEMMs after it take, and its workspace the large-H path's)."""
    t = {"h100": emu.H100, "a100": emu.A100, "sixteen": SIXTEEN_SMS,
         "gpcs": GPC_LIMITED, "no_eight": NO_EIGHT}[table]
    seen = set()
    for dtype in (torch.float32, torch.bfloat16, torch.float16,
                  torch.float64):
        for H in (100, 128, 129, 200, 256, 257, 400, 512, 513):
            for B in (1, 14, 15, 16, 17, 28, 29, 32, 33, 34, 56, 57, 64, 65,
                      66, 67, 100, 128, 132, 133, 200, 1024):
                for I, project in ((1, True), (4, True), (5, True),
                                   (0, False)):
                    for backward in (False, True):
                        c = harness.config(t, backward, dtype, 784, B, I, H,
                                           project, True)
                        want = cluster_expected(t, dtype, B, I, H, project,
                                                backward)
                        if want is None:
                            assert c["path"] not in (CLUSTER_FWD, CLUSTER_BWD), (
                                dtype, H, B, I, c)
                            assert c["cluster"] == 1, c
                            continue
                        hp, rows = want
                        seen.add((dtype, backward, hp, rows))
                        assert c["path"] == (CLUSTER_BWD if backward else
                                             CLUSTER_FWD), (dtype, H, B, I, c)
                        assert c["cluster"] == hp // 64, c
                        assert c["threads"] == 256, c
                        assert c["rows_per_block"] == rows, c
                        if backward:
                            assert c["blocks"] == t["sm_count"], c
                            assert c["workspace"] == (784 * B * H + grad_sums(
                                dtype, 784, B, I, H, project)) * 4, c
                        else:
                            assert c["blocks"] == -(-B // rows) * (hp // 64), c
                            assert c["workspace"] == 0, c
                            if not project:
                                assert c["smem"] == 4 * (
                                    2 * rows * 4 * (hp // 4 + 4) +
                                    8 * max(rows, 4) * 64), c
                        assert c["smem"] <= t["smem_per_block_optin"], c
    if table == "h100":
        assert seen == {
            (d, bwd, hp, r) for d in CLUSTER_DTYPES
            for (bwd, hp), rows in CLUSTER_ROWS.items()
            for r in (NARROW_BWD_ROWS if bwd and d != torch.float32 else rows)}
    if table == "a100":
        assert not seen
    if table == "no_eight":
        assert seen and all(hp == 256 for _, _, hp, _ in seen), seen


def test_cluster_routing_takes_the_queried_wave(harness):
    """Where the device reports fewer clusters per wave than SMs / blocks
    (GPC_LIMITED: 32 of 4, 14 of 8), a batch that needs more clusters than
    that takes more rows per cluster instead of a second wave."""
    for H, B, rows_known, rows_unknown in (
            (256, 32, 1, 1), (256, 33, 2, 1), (256, 64, 2, 2), (256, 65, 4, 2),
            (512, 14, 1, 1), (512, 15, 2, 1), (512, 16, 2, 1), (512, 29, 4, 2),
            (512, 56, 4, 4), (512, 57, 8, 4)):
        for table, rows in ((GPC_LIMITED, rows_known), (emu.H100, rows_unknown)):
            c = harness.config(table, False, torch.float32, 784, B, 1, H, True,
                               True)
            assert (c["path"], c["rows_per_block"]) == (CLUSTER_FWD, rows), (
                H, B, table, c)
            assert c["blocks"] == -(-B // rows) * (H // 64), c


def test_cluster_routing_h200_benchmark_sizes(harness):
    """The GPU check's sizes: H = 256 and 512 at B = 16, 128, 1024 on an
    H200, and the sweep's H = 512 at B = 32 and 64, take the cluster
    forward and backward (H = 256, B = 128: 32 clusters of 4 rows, 128 of
    the 132 SMs; H = 512, B = 64: 16 clusters of 4 rows)."""
    h200 = dict(emu.H100)
    for H, B, rows, bwd_rows in ((256, 16, 1, 1), (256, 128, 4, 4),
                                 (256, 1024, 8, 8), (512, 16, 1, 1),
                                 (512, 32, 2, 2), (512, 64, 4, 4),
                                 (512, 128, 8, 8), (512, 1024, 8, 8)):
        c = harness.config(h200, False, torch.float32, 784, B, 1, H, True,
                           True)
        assert (c["path"], c["rows_per_block"]) == (CLUSTER_FWD, rows), (H, B, c)
        c = harness.config(h200, True, torch.float32, 784, B, 1, H, True,
                           True)
        assert (c["path"], c["rows_per_block"]) == (CLUSTER_BWD, bwd_rows), (
            H, B, c)


def run_forward(harness, table, T, B, I, H, *, relu=True, reverse=False,
                bias=True, store_sequence=True, project=True, seed=0,
                block_order_seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    v = make_inputs(dtype, T, B, I, H, project, bias, gen)
    out, h_n, cfg = harness.forward(table, v["x"], v["h0"], v["w_ih"],
                                    v["w_hh"], v["b_ih"], v["b_hh"], relu,
                                    reverse, store_sequence,
                                    block_order_seed=block_order_seed)
    ref = {k: (t.double() if t is not None else None) for k, t in v.items()}
    r_out, r_hn = irnn_layer_reference(ref["x"], ref["h0"], ref["w_ih"],
                                       ref["w_hh"], ref["b_ih"], ref["b_hh"],
                                       "relu" if relu else "tanh", reverse)
    return out, h_n, r_out, r_hn, cfg


# H in {129, 200, 256, 257, 400, 480, 512}, both directions, relu and tanh,
# 1 row per cluster, and 2, 4 and 8 at HP 256 and HP 512 with ragged last
# clusters (SIXTEEN_SMS), I from 1 to 4, with and without biases and the
# stored sequence.
CASES = [
    dict(H=129, B=3, T=5, I=1, relu=True, reverse=False, table="h100"),
    dict(H=129, B=11, T=4, I=2, relu=False, reverse=True, table="sixteen"),
    dict(H=256, B=2, T=4, I=4, relu=False, reverse=False, table="h100",
         bias=False),
    dict(H=256, B=13, T=3, I=1, relu=True, reverse=True, table="sixteen"),
    dict(H=200, B=7, T=4, I=3, relu=True, reverse=False, table="sixteen"),
    dict(H=256, B=21, T=3, I=2, relu=False, reverse=False, table="sixteen"),
    dict(H=257, B=2, T=4, I=3, relu=True, reverse=True, table="h100",
         store_sequence=False),
    dict(H=257, B=5, T=3, I=1, relu=False, reverse=False, table="sixteen"),
    dict(H=512, B=2, T=3, I=1, relu=False, reverse=True, table="h100"),
    dict(H=512, B=9, T=2, I=4, relu=True, reverse=False, table="sixteen"),
    dict(H=400, B=3, T=3, I=2, relu=False, reverse=False, table="sixteen"),
    dict(H=480, B=7, T=3, I=3, relu=True, reverse=True, table="sixteen"),
    # Not projected (x is [T,B,H], the ring): every HP and rows, T past the
    # ring's 8 slots in most.
    dict(H=129, B=3, T=10, I=0, relu=True, reverse=False, table="h100",
         project=False),
    dict(H=200, B=7, T=11, I=0, relu=False, reverse=True, table="sixteen",
         project=False),
    dict(H=256, B=13, T=9, I=0, relu=True, reverse=False, table="sixteen",
         project=False, bias=False),
    dict(H=256, B=21, T=4, I=0, relu=True, reverse=True, table="sixteen",
         project=False, store_sequence=False),
    dict(H=512, B=2, T=9, I=0, relu=False, reverse=False, table="h100",
         project=False),
    dict(H=300, B=9, T=10, I=0, relu=True, reverse=True, table="sixteen",
         project=False),
    dict(H=480, B=11, T=9, I=0, relu=False, reverse=False, table="sixteen",
         project=False),
    dict(H=512, B=25, T=3, I=0, relu=True, reverse=False, table="sixteen",
         project=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "H{H}-B{B}{}".format(
    "" if c.get("project", True) else "-unprojected", **c))
def test_cluster_forward_matches_reference(harness, case):
    case = dict(case)
    table = {"h100": emu.H100, "sixteen": SIXTEEN_SMS}[case.pop("table")]
    out, h_n, r_out, r_hn, cfg = run_forward(harness, table, **case,
                                             block_order_seed=7)
    want = cluster_expected(table, torch.float32, case["B"], case["I"],
                            case["H"], case.get("project", True))
    assert cfg["path"] == CLUSTER_FWD and cfg["rows_per_block"] == want[1], cfg
    tol = TOL[torch.float32]
    assert max_rel_err(h_n, r_hn) <= tol, ("h_n", max_rel_err(h_n, r_hn), cfg)
    if case.get("store_sequence", True):
        assert max_rel_err(out, r_out) <= tol, (
            "output", max_rel_err(out, r_out), cfg)
    else:
        assert out is None


def test_cluster_orders_bitwise_equal(harness):
    """Clusters in index order and in a seeded order give the same bits:
    no cluster depends on another."""
    runs = [run_forward(harness, SIXTEEN_SMS, 3, 19, 2, 200, seed=4,
                        block_order_seed=s)[:2] for s in (0, 11)]
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


# The backward: H in {129, 256, 257, 512}, both directions, relu and tanh,
# ragged last clusters, the gradient on the sequence, on h_n or on both, the
# input projected (I from 1 to 7: the forward takes another path above 4)
# or not (dx = da from the kernel itself), T beyond the prefetch ring.
BWD_CASES = [
    dict(H=129, B=3, T=4, I=1, nonlinearity="relu", reverse=False,
         grads="both", table="h100"),
    dict(H=200, B=11, T=10, I=2, nonlinearity="tanh", reverse=True,
         grads="seq", table="sixteen"),
    dict(H=256, B=7, T=9, I=1, nonlinearity="relu", reverse=False,
         grads="both", table="sixteen"),
    dict(H=140, B=21, T=3, I=None, nonlinearity="tanh", reverse=False,
         grads="last", table="sixteen"),
    dict(H=256, B=2, T=2, I=7, nonlinearity="relu", reverse=True,
         grads="last", table="h100"),
    dict(H=257, B=9, T=3, I=None, nonlinearity="tanh", reverse=False,
         grads="both", table="sixteen"),
    dict(H=512, B=2, T=3, I=3, nonlinearity="relu", reverse=False,
         grads="both", table="h100"),
    dict(H=512, B=7, T=2, I=None, nonlinearity="relu", reverse=True,
         grads="seq", table="sixteen"),
    dict(H=450, B=3, T=9, I=2, nonlinearity="tanh", reverse=False,
         grads="both", table="sixteen"),
    dict(H=500, B=11, T=9, I=None, nonlinearity="relu", reverse=False,
         grads="both", table="sixteen"),
    # The gradient on h_n only (no grad_output), T past the ring's 8 slots:
    # the slot that took grad_h_n comes round again and must hold 0.
    dict(H=200, B=3, T=12, I=2, nonlinearity="relu", reverse=False,
         grads="last", table="h100"),
    dict(H=300, B=9, T=10, I=None, nonlinearity="tanh", reverse=True,
         grads="last", table="sixteen"),
]


@pytest.mark.parametrize("case", BWD_CASES, ids=lambda c: "H{H}-B{B}".format(**c))
def test_cluster_backward_matches_reference(harness, case):
    """Every gradient of a forward+backward whose backward runs the cluster
    recurrence, against float64 autograd."""
    case = dict(case)
    table = {"h100": emu.H100, "sixteen": SIXTEEN_SMS}[case.pop("table")]
    I = case.pop("I")
    fcfg, bcfg = run_and_compare(harness, table, torch.float32, case["T"],
                                 case["B"], I or 5, case["H"],
                                 case["nonlinearity"], case["reverse"],
                                 project=I is not None, grads=case["grads"])
    want = cluster_expected(table, torch.float32, case["B"], I or 5,
                            case["H"], I is not None, backward=True)
    assert bcfg["path"] == CLUSTER_BWD and bcfg["rows_per_block"] == want[1], bcfg


# The 16-bit cluster kernels: float16 and bfloat16, HP 256 and 512, every
# rows per cluster (the backward's 4 in several waves), the input projected
# or not (the rings copy 4-byte words: odd H puts elements in either half),
# relu and tanh, both directions, T past the rings' 8 slots, the gradient
# on the sequence, on h_n or both.
NARROW_CASES = [
    dict(H=129, B=3, T=10, I=1, project=True, relu=True, reverse=False,
         grads="both", table="h100"),
    dict(H=257, B=5, T=9, I=0, project=False, relu=False, reverse=True,
         grads="last", table="sixteen"),
    dict(H=200, B=13, T=11, I=3, project=True, relu=False, reverse=False,
         grads="seq", table="sixteen"),
    dict(H=256, B=21, T=10, I=0, project=False, relu=True, reverse=False,
         grads="both", table="sixteen"),
    dict(H=511, B=2, T=9, I=4, project=True, relu=True, reverse=True,
         grads="last", table="h100"),
    dict(H=400, B=9, T=4, I=0, project=False, relu=True, reverse=False,
         grads="both", table="sixteen"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", NARROW_CASES, ids=lambda c: "H{H}-B{B}".format(**c))
def test_cluster_16bit_matches_reference(harness, dtype, case):
    """The 16-bit cluster forward against the float64 reference, and its
    backward against backward_from_sequence on the forward's own sequence
    (float64 throughout), every gradient."""
    case = dict(case)
    table = {"h100": emu.H100, "sixteen": SIXTEEN_SMS}[case.pop("table")]
    grads = case.pop("grads")
    out, h_n, r_out, r_hn, fcfg = run_forward(harness, table, **case,
                                              dtype=dtype, seed=case["H"])
    T, B, I, H = case["T"], case["B"], case["I"], case["H"]
    project = case["project"]
    want = cluster_expected(table, dtype, B, I, H, project)
    assert fcfg["path"] == CLUSTER_FWD and fcfg["rows_per_block"] == want[1], fcfg
    assert max_rel_err(h_n, r_hn) <= TOL[dtype], ("h_n", max_rel_err(h_n, r_hn))
    assert max_rel_err(out, r_out) <= TOL[dtype], ("out", max_rel_err(out, r_out))
    gen = torch.Generator().manual_seed(case["H"])
    v = make_inputs(dtype, T, B, I, H, project, True, gen)  # run_forward's
    g_out = (torch.randn(B, T, H, generator=gen).to(dtype).transpose(0, 1)
             if grads in ("seq", "both") else None)
    g_hn = (torch.randn(B, H, generator=gen).to(dtype)
            if grads in ("last", "both") else None)
    *got, bcfg = harness.backward(table, g_out, g_hn, v["x"], v["h0"],
                                  v["w_ih"], v["w_hh"], out, case["relu"],
                                  case["reverse"])
    want = cluster_expected(table, dtype, B, I, H, project, backward=True)
    assert bcfg["path"] == CLUSTER_BWD and bcfg["rows_per_block"] == want[1], bcfg
    assert_backward_from_sequence(got, bcfg, v, out, g_out, g_hn,
                                  case["relu"], case["reverse"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cluster_backward_16bit_odd_offsets(harness, dtype):
    """grad_output and the stored sequence starting 2 bytes into a 4-byte
    word (storage offset 1): the cluster backward copies the word holding
    each element and widens the half its address selects. The gradients
    equal those of the same values stored aligned, bitwise."""
    gen = torch.Generator().manual_seed(12)
    T, B, I, H = 9, 3, 2, 200
    v = make_inputs(dtype, T, B, I, H, True, True, gen)
    out, _, _ = harness.forward(emu.H100, v["x"], v["h0"], v["w_ih"],
                                v["w_hh"], v["b_ih"], v["b_hh"], True, False,
                                True)
    g_out = torch.randn(T, B, H, generator=gen).to(dtype)
    g_hn = torch.randn(B, H, generator=gen).to(dtype)

    def shifted(t):
        flat = torch.zeros(t.numel() + 1, dtype=t.dtype)
        o = flat[1:].view(t.shape)
        o.copy_(t)
        assert o.data_ptr() % 4 == 2
        return o
    aligned = harness.backward(emu.H100, g_out, g_hn, v["x"], v["h0"],
                               v["w_ih"], v["w_hh"], out.contiguous(), True,
                               False)
    odd = harness.backward(emu.H100, shifted(g_out), g_hn, v["x"], v["h0"],
                           v["w_ih"], v["w_hh"], shifted(out), True, False)
    assert aligned[5]["path"] == odd[5]["path"] == CLUSTER_BWD
    for a, b in zip(aligned[:5], odd[:5]):
        assert torch.equal(a, b)


def test_cluster_backward_orders_bitwise_equal(harness):
    """The cluster backward and the GEMMs after it give the same bits with
    clusters in index order and in a seeded order."""
    gen = torch.Generator().manual_seed(5)
    v = make_inputs(torch.float32, 4, 19, 2, 200, True, True, gen)
    out, _, _ = harness.forward(SIXTEEN_SMS, v["x"], v["h0"], v["w_ih"],
                                v["w_hh"], v["b_ih"], v["b_hh"], True, False,
                                True)
    g_out = torch.randn(4, 19, 200, generator=gen)
    runs = []
    for seed in (0, 13):
        *grads, cfg = harness.backward(SIXTEEN_SMS, g_out, None, v["x"],
                                       v["h0"], v["w_ih"], v["w_hh"], out,
                                       True, False, block_order_seed=seed)
        assert cfg["path"] == CLUSTER_BWD, cfg
        runs.append(grads)
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("H,B,reverse,packed,relu,table,project", [
    (129, 3, False, False, True, "h100", True),
    (200, 11, True, False, False, "sixteen", True),
    (256, 6, False, False, True, "sixteen", True),
    (257, 9, False, True, True, "sixteen", True),
    (300, 2, True, True, False, "h100", True),
    (129, 3, False, False, True, "h100", False),
    (256, 21, True, False, False, "sixteen", False),
    (400, 11, False, True, True, "sixteen", False),
])
def test_cluster_forward_lengths(harness, H, B, reverse, packed, relu, table,
                                 project):
    """Lengths in the cluster forward and backward (reversed and packed
    through the relayout copies), NaN and Inf in the padding, against the
    reference; with the input projected, or not (the ring, T past its 8
    slots)."""
    t = {"h100": emu.H100, "sixteen": SIXTEEN_SMS}[table]
    fcfg, bcfg = run_case(harness, t, torch.float32, 5 if project else 10, B,
                          2, H, reverse=reverse, packed=packed, relu=relu,
                          project=project, dirty=True, seed=H)
    assert fcfg["path"] == CLUSTER_FWD, fcfg
    assert bcfg["path"] == CLUSTER_BWD, bcfg


@pytest.mark.parametrize("dtype,H,B,reverse,packed,project", [
    (torch.bfloat16, 200, 6, False, False, True),
    (torch.float16, 257, 9, True, True, False),
])
def test_cluster_16bit_lengths(harness, dtype, H, B, reverse, packed, project):
    """Lengths in the 16-bit cluster forward and backward, NaN and Inf in
    the padding, against the reference."""
    fcfg, bcfg = run_case(harness, SIXTEEN_SMS, dtype, 10, B, 2, H,
                          reverse=reverse, packed=packed, project=project,
                          dirty=True, seed=H)
    assert fcfg["path"] == CLUSTER_FWD, fcfg
    assert bcfg["path"] == CLUSTER_BWD, bcfg


# ThreadSanitizer (the executable of test_emulation.py): a cluster kernel
# whose blocks write into each other's shared memory with the cluster
# barrier left out must be reported; the cluster forward and backward must
# not be.
def test_tsan_reports_planted_missing_cluster_barrier(tsan_exe):
    proc, text = _run_tsan(tsan_exe, "cluster_race")
    assert TSAN_WARNING in text, text[-3000:]


def test_tsan_cluster_forward_race_free(tsan_exe):
    proc, text = _run_tsan(tsan_exe, "cluster")
    assert TSAN_WARNING not in text, text[-6000:]
    assert proc.returncode == 0 and "cluster exchange: ok" in text and \
        "cluster: all cases agree" in text, text[-3000:]


def split_parts(rows, pieces, cap):
    """irnn_cuda_api.h's split_parts: parts of at least 1024 rows, enough
    that pieces x parts reach 264, at most 64 and cap, at least 1."""
    return max(1, min(-(-264 // pieces), rows // 1024, 64, cap))


def grad_sums(dtype, T, B, I, H, project=True):
    """grad_sums_elems: the backward's sums after da, in elements."""
    tiles = lambda m, n: -(-m // 128) * -(-n // 128)  # noqa: E731
    e = max(H * H, split_parts(T * B, -(-H // 32), 64) * H)
    if dtype == torch.float32:
        K = (T - 1) * B
        p = split_parts(K, tiles(H, H), T * B // H - 2)
        e = max(e, (p + (K % p != 0) + 1 if K else 1) * H * H)
        if project:
            p = split_parts(T * B, tiles(H, I), T * B // I - 1)
            e = max(e, (p + (T * B % p != 0)) * H * I)
    return e


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_h_workspace_within_twice_the_sequence(harness, dtype):
    """Above H = 512 (no cluster holds W_hh) both directions take the
    per-step path. Its backward keeps every step's da (float32) and the
    gradients' sums in parts (grad_sums), at most 2x the float32 [T, B, H]
    sequence at the GPU check's sizes (H = 1024, 2048; B = 16, 128, 1024),
    as the cluster backward's at H = 256 and 512; the forward needs none
    with the sequence stored, and two [B, H] states without it."""
    T = 784
    elem = torch.finfo(dtype).bits // 8
    for H in (256, 512, 1024, 2048):
        for B in (16, 128, 1024):
            seq = T * B * H * 4
            c = harness.config(emu.H100, True, dtype, T, B, 1, H, True, True)
            assert c["path"] == (LARGE_H if H > 512 else CLUSTER_BWD), (
                H, B, c)
            assert c["workspace"] == (T * B * H + grad_sums(dtype, T, B, 1, H)) * 4, (H, B, c)
            assert c["workspace"] <= 2 * seq, (H, B, c)
            if H <= 512:
                continue
            for store, want in ((True, 0), (False, 2 * B * H * elem)):
                c = harness.config(emu.H100, False, dtype, T, B, 1, H, True,
                                   store)
                assert c["path"] == LARGE_H, (H, B, c)
                assert c["workspace"] == want, (H, B, store, c)
