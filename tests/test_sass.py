"""A performance guard that runs on the CPU: the sm_90 SASS of the built
irnn_cuda._C, read with cuobjdump and nvdisasm (the PyPI wheels
nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm, pinned in
requirements-test.txt).

For a kernel with a per-step loop, the step loop is the innermost natural
loop (a backward branch and every block that reaches it without passing its
header) that holds a block barrier. The guard's verdict on it:
- no local memory: STACK and LOCAL of `cuobjdump -res-usage` are 0 and
  there is no LDL/STL anywhere in the kernel (a spill shows as both);
- no CALL in the step loop (a division or math routine);
- no plain global load (LDG) in the step loop: its latency lands on the
  critical path of every step; asynchronous copies (LDGSTS, and LDGDEPBAR,
  which closes a group of them) are allowed;
- exactly one block barrier in the step loop (or one cluster barrier);
- no loop inside the step loop: its trip count is decided at run time, so
  the instructions per step are not bounded by the code;
- the instructions of the step loop per row a warp computes within the
  variant's budget, and FFMA/DFMA at least the budget's share of them.

The register-resident forwards (irnn_fwd_reg_kernel) are in the build
for every variant of IRNN_REG_FWD_VARIANTS, relu and tanh, projected and
(but float64) not, and the guard passes each
(test_register_forward_within_budget); so are the
register-resident backwards (irnn_bwd_reg_kernel) of IRNN_REG_BWD_VARIANTS,
relu and tanh, with and without the fused projection
(test_register_backward_within_budget).

The budgets (docs/cuda.md, "The SASS guard", derives them):
- forward, register-resident W_hh, HP = H rounded up to 4:
  HP FFMA + HP/4 LDS.128 broadcasts of h_{t-1} + 40 = 1.25 HP + 40 per row
  and step (165 at HP = 100, 170 at HP = 104), FMA share >= 0.6;
- the same with tanh: + 16 per row (tanhf: two MUFU and 14 FFMA, FMUL,
  FSETP, FSEL), FMA share >= 0.55;
- a forward of an input that is not projected: the fused projection's 5
  instructions per row give way to the prefetch ring's 10 per row and 16
  per step (191 at HP = 104 and one row, 177 at 8), FMA share at least 0.9
  times the budget's;
- backward, K split in two: HP FFMA (HP/2 of the da chain, HP/2 of dW_hh) +
  ceil(HP/8) LDS.128 + 40 (153 at HP = 100, 157 at HP = 104);
- the same with the fused projection (I <= 4): + 45 per row for dW_ih, the
  warp sums of dx, their sum and store and the x_t copy (202 at HP = 104);
- a backward's FMA share at least 0.9 times the share its budget holds
  (HP, or HP + 4 with the projection, FMAs of the budget);
- the float64 backward (HP 64, one row): HP DFMA + HP/4 LDS.128 (two
  doubles each) + 40 = 120; with the fused projection + 45 + 7 (64-bit
  shuffles, twice the loads of x_t and of the dx sums) = 172;
- the float64 forward (HP 64, projected): HP DFMA + HP/2 LDS.128 (two
  doubles each) + 40 = 136, DFMA share >= 0.5; with tanh, CUDA's inlined
  double routine, + 104 per row, share >= 0.4.

Today's persistent kernels are the fallback for sizes the new kernels do not
instantiate. The guard rejects them (test_guard_rejects_todays_kernels),
which keeps proving that it can fail. Every kernel of the build must be
classified here (test_every_kernel_is_classified), so a new kernel cannot
escape the guard. irnn_gemm_kernel calls no 64-bit division routine.

With IRNN_EXPECT_CUDA=1 a missing extension, cubin or disassembler fails
the tests; otherwise they skip.
"""
import dataclasses
import math
import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ARCH = "sm_90"


def _expect_cuda():
    return os.environ.get("IRNN_EXPECT_CUDA") == "1"


def _unavailable(why):
    if _expect_cuda():
        pytest.fail(f"IRNN_EXPECT_CUDA=1 but {why}")
    pytest.skip(why)


def find_tool(name):
    """cuobjdump/nvdisasm: on PATH, in the nvidia wheels, or in CUDA_HOME."""
    found = shutil.which(name)
    if found:
        return found
    candidates = []
    try:
        import nvidia
        candidates += [Path(p) / sub / "bin" / name
                       for p in nvidia.__path__ for sub in ("cu13", "cu12")]
    except ImportError:
        pass
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates.append(Path(home) / "bin" / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


# --- disassembly -------------------------------------------------------

INSN = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:(@!?U?P[T0-9]+)\s+)?"
                  r"([A-Z][A-Z0-9_.]*)\s*(.*?)\s*;")
LABEL = re.compile(r"^([.$\w]+):$")
# nvdisasm -hex: the second 64-bit word of an instruction, alone on the
# next line; its bits 41-44 are the stall count the scheduler waits after
# issuing the instruction (the control bits of Volta and later).
CONTROL_WORD = re.compile(r"^\s*/\* (0x[0-9a-f]{16}) \*/\s*$")
TARGET = re.compile(r"`\(([^)]+)\)")
RES = re.compile(r"^\s*Function (\S+):\s*$")
RES_FIELDS = re.compile(r"(\w+(?:\[\d+\])?):(\d+)")
# The integer division and remainder routines nvcc emits for 64-bit / and %.
DIV64 = re.compile(r"__cuda_sm\d+_(div|rem)_[su]64")


@dataclasses.dataclass
class Insn:
    addr: int
    pred: str
    op: str
    args: str
    target: str  # branch or call target label, or ""
    stall: int = 0  # cycles before the next instruction issues


@dataclasses.dataclass
class Kernel:
    mangled: str
    name: str  # demangled, without the parameter list
    insns: list
    labels: dict  # label -> index of the instruction it precedes
    resources: dict  # cuobjdump -res-usage fields (REG, STACK, LOCAL, ...)


def parse_sass(text):
    """nvdisasm -c output -> {mangled name: (insns, labels)}."""
    funcs, cur, pending = {}, None, []
    for line in text.splitlines():
        if line.startswith(".text.") and line.endswith(":"):
            cur = funcs.setdefault(line[len(".text."):-1], ([], {}))
            pending = []
            continue
        if cur is None:
            continue
        m = CONTROL_WORD.match(line)
        if m and cur[0]:
            cur[0][-1].stall = (int(m.group(1), 16) >> 41) & 0xF
            continue
        m = INSN.match(line)
        if m:
            for label in pending:
                cur[1][label] = len(cur[0])
            pending = []
            t = TARGET.search(m.group(4))
            cur[0].append(Insn(int(m.group(1), 16), m.group(2) or "",
                               m.group(3), m.group(4), t.group(1) if t else ""))
            continue
        m = LABEL.match(line.strip())
        if m:
            pending.append(m.group(1))
    return funcs


def parse_resources(text):
    res, cur = {}, None
    for line in text.splitlines():
        m = RES.match(line)
        if m:
            cur = m.group(1)
        elif cur and "REG:" in line:
            res[cur] = {k: int(v) for k, v in RES_FIELDS.findall(line)}
    return res


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names),
                         capture_output=True, text=True, check=True).stdout
    return [re.sub(r"^void ", "", n.split("(")[0].strip())
            for n in out.splitlines()]


@lru_cache(maxsize=None)
def disassemble(so_path, workdir):
    """The ARCH kernels of a built extension, from every ARCH cubin (one per
    CUDA translation unit): {demangled name: Kernel}."""
    cuobjdump, nvdisasm = find_tool("cuobjdump"), find_tool("nvdisasm")
    listing = subprocess.run([cuobjdump, "-lelf", so_path], capture_output=True,
                             text=True, check=True).stdout
    cubins = re.findall(r"ELF file\s+\d+:\s+(\S+\.%s\.cubin)" % ARCH, listing)
    if not cubins:
        _unavailable(f"{so_path} holds no {ARCH} cubin (built for another "
                     "TORCH_CUDA_ARCH_LIST?)")
    kernels = {}
    for name in cubins:
        subprocess.run([cuobjdump, "-xelf", name, so_path], cwd=workdir,
                       capture_output=True, check=True)
        cubin = str(Path(workdir) / name)
        sass = subprocess.run([nvdisasm, "-c", "-hex", cubin],
                              capture_output=True, text=True, check=True).stdout
        res = parse_resources(subprocess.run(
            [cuobjdump, "-res-usage", cubin], capture_output=True, text=True,
            check=True).stdout)
        funcs = parse_sass(sass)
        mangled = sorted(funcs)
        for m, demangled in zip(mangled, demangle(mangled)):
            insns, labels = funcs[m]
            kernels[demangled] = Kernel(m, demangled, insns, labels,
                                        res.get(m, {}))
    return kernels


# --- control flow ------------------------------------------------------

def _is_branch(op):
    return op.startswith("BRA")


def _ends_flow(op):
    return op.startswith(("EXIT", "RET", "BPT.TRAP", "BRX", "JMX"))


def basic_blocks(k):
    """[(first, last)] instruction index ranges, and successor lists."""
    n = len(k.insns)
    leaders = {0} | {i for i in k.labels.values() if i < n}
    for i, ins in enumerate(k.insns):
        if (_is_branch(ins.op) or _ends_flow(ins.op)) and i + 1 < n:
            leaders.add(i + 1)
    starts = sorted(leaders)
    blocks = [(s, (starts[j + 1] if j + 1 < len(starts) else n) - 1)
              for j, s in enumerate(starts)]
    index = {s: j for j, (s, _) in enumerate(blocks)}
    succ = []
    for j, (s, e) in enumerate(blocks):
        ins, out = k.insns[e], []
        if _is_branch(ins.op) and ins.target in k.labels:
            out.append(index[k.labels[ins.target]])
        conditional = ins.pred not in ("", "@PT")
        falls = not (_is_branch(ins.op) or _ends_flow(ins.op)) or conditional
        if falls and j + 1 < len(blocks):
            out.append(j + 1)
        succ.append(out)
    return blocks, succ


def natural_loops(k):
    """{header block: set of blocks} for every backward branch."""
    blocks, succ = basic_blocks(k)
    pred = [[] for _ in blocks]
    for u, outs in enumerate(succ):
        for v in outs:
            pred[v].append(u)
    loops = {}
    for u, outs in enumerate(succ):
        for h in outs:
            if blocks[h][0] > blocks[u][1]:
                continue  # a forward edge
            body, stack = {h, u}, [u]
            while stack:
                x = stack.pop()
                if x == h:
                    continue
                for p in pred[x]:
                    if p not in body:
                        body.add(p)
                        stack.append(p)
            loops.setdefault(h, set()).update(body)
    return blocks, loops


def is_block_barrier(op):
    return op.startswith("BAR.SYNC") or op.startswith("BAR.RED") or \
        op.startswith("UCGABAR_WAIT")


@dataclasses.dataclass
class StepLoop:
    insns: list  # the step loop's instructions, inner loops counted once
    inner_loops: int


def step_loop(k):
    """The innermost loop holding a block barrier, or None."""
    blocks, loops = natural_loops(k)

    def insns_of(body):
        return [k.insns[i] for b in sorted(body)
                for i in range(blocks[b][0], blocks[b][1] + 1)]

    with_barrier = [body for body in loops.values()
                    if any(is_block_barrier(i.op) for i in insns_of(body))]
    if not with_barrier:
        return None
    body = min(with_barrier, key=len)
    inner = sum(1 for other in loops.values() if other < body)
    return StepLoop(insns_of(body), inner)


# --- budgets and the verdict --------------------------------------------

@dataclasses.dataclass(frozen=True)
class Budget:
    what: str
    instructions_per_row_step: int
    min_fma_share: float
    rows_per_warp: int
    cluster: bool = False  # one cluster barrier per step, not a block's


def forward_budget(H, rows_per_warp=1, relu=True, project=True,
                   double=False):
    hp = 4 * math.ceil(H / 4)
    if double:  # an LDS.128 holds two doubles; tanh is a routine
        total = hp + hp // 2 + 40 + (0 if relu else TANH_DOUBLE_PER_ROW)
        return Budget(f"register-resident forward, double"
                      f"{'' if relu else ' with tanh'}, HP = {hp}", total,
                      0.5 if relu else 0.4, rows_per_warp)
    total = hp + hp // 4 + 40 + (0 if relu else TANH_PER_ROW)
    what = "register-resident forward" + ("" if relu else " with tanh")
    if project:
        return Budget(f"{what}, HP = {hp}", total, 0.6 if relu else 0.55,
                      rows_per_warp)
    total += ring_budget(rows_per_warp)
    return Budget(f"{what} of a pre-projected input, HP = {hp}", total,
                  math.floor(90 * hp / total) / 100, rows_per_warp)


# Instructions per row-step of the forwards' fused input projection (I <=
# 4): four FFMA and the LDS.128 of the staged x_t (docs/cuda.md).
FUSED_INPUT_PER_ROW = 5
# The forwards' prefetch ring, for an input that is not projected
# (docs/cuda.md). Per row: the copy (LDGSTS, its predicate, the source's
# 64-bit step to the next row) and the element's LDS and FADD, with room
# for the select of its slice in the cluster forward. Per step, whatever
# the rows: the group's commit and wait, ptxas's three predicated-off LDS
# around the copies, the source's 64-bit step, the slots' step and wrap,
# and the shared window's base (S2UR, ULEA), which the loop computes again.
FWD_RING_PER_ROW = 10
FWD_RING_PER_STEP = 16


def ring_budget(rows_per_warp):
    """Instructions per row-step the ring adds in place of the fused
    projection."""
    return (FWD_RING_PER_ROW - FUSED_INPUT_PER_ROW +
            math.ceil(FWD_RING_PER_STEP / rows_per_warp))


# Instructions of tanhf per row (its SASS on sm_90).
TANH_PER_ROW = 16
# Instructions of tanh (double) per row: no MUFU gives it, so it is
# CUDA's routine inlined (about 28 DFMA, 45 UMOV of its constants, the
# exponent's and the sign's handling; 96-101 per row at HP 64 on sm_90).
TANH_DOUBLE_PER_ROW = 104

# Instructions per row-step of the cluster forward besides its FMAs and
# shared loads (docs/cuda.md): the sum of the four accumulators and the two
# shuffles that add the slices, the activation, the stores into the
# cluster's blocks, the out store, the cluster barrier's two halves with
# the fences the release and acquire compile to (MEMBAR, ERRBAR,
# CGAERRBAR, CCTL) and the compiler's block barrier for a cluster of one
# block, the pointer swap and the loop.
CLUSTER_FIXED_PER_ROW = 60


# Instructions per row-step of the cluster backward's recurrence besides
# its FMAs and shared loads of da (docs/cuda.md): as the forward's 60 less
# the input projection, plus the ring (the cp.async copy of g_t or h_t and
# its address step, commit and wait, the shared loads of g_t and h_t),
# phi', and the second global store (da_t for the GEMMs, dx without the
# projection).
CLUSTER_BWD_FIXED_PER_ROW = 95


# What a 16-bit type adds per row-step of the cluster kernels
# (docs/cuda.md). Forward: h rounded to the stored type and widened back,
# and the branch around the row's stores that the conversion keeps (2-8
# more than float's in the sm_90 build). Backward: the widening of the
# thread's copies of g_t and h_t in their slot (WIDEN_PER_ELEMENT each),
# the copies' word addresses and dx's conversion (9-16 more than float's).
CLUSTER_NARROW_FWD_PER_ROW = 8
CLUSTER_NARROW_BWD_PER_ROW = 16


def cluster_backward_budget(hp, rows_per_warp=1, narrow=False):
    """Per row-step of the cluster backward: a thread computes HP/4 rows of
    its unit's column of W_hh (HP/4 FFMA, HP/16 LDS.128 of da_{t+1}); the
    same with tanh (phi' = 1 - h^2 is two instructions). FMA share at least
    0.9 times the budget's."""
    fma = hp // 4
    total = (fma + hp // 16 + CLUSTER_BWD_FIXED_PER_ROW +
             (CLUSTER_NARROW_BWD_PER_ROW if narrow else 0))
    return Budget(f"{'16-bit ' if narrow else ''}cluster backward, HP = {hp}",
                  total,
                  math.floor(90 * fma / total) / 100, rows_per_warp,
                  cluster=True)


def cluster_forward_budget(hp, rows_per_warp=1, relu=True, project=True,
                           narrow=False):
    """Per row-step of the cluster forward: a thread computes HP/4 columns
    of its unit (HP/4 FFMA, HP/16 LDS.128) and the input projection (4
    FFMA), or for an input not projected the ring in its place
    (ring_budget); FMA share at least 0.9 times the budget's."""
    fma = hp // 4 + (4 if project else 0)
    total = (hp // 4 + 4 + hp // 16 + CLUSTER_FIXED_PER_ROW +
             (0 if relu else TANH_PER_ROW) +
             (0 if project else ring_budget(rows_per_warp)) +
             (CLUSTER_NARROW_FWD_PER_ROW if narrow else 0))
    what = (("16-bit " if narrow else "") + "cluster forward" +
            ("" if project else " of a pre-projected input"))
    return Budget(f"{what}{'' if relu else ' with tanh'}, HP = {hp}",
                  total, math.floor(90 * fma / total) / 100, rows_per_warp,
                  cluster=True)


# Instructions per row of the backward's fused projection (docs/cuda.md).
FUSED_PROJECTION_PER_ROW = 45
# Instructions per element a 16-bit backward widens in its ring slot each
# step (docs/cuda.md): the shared load and store, bit 1 of the source
# address (an add, a test), the half's select and conversion, and the
# branch on the row's validity.
WIDEN_PER_ELEMENT = 8
# What 8-byte elements add to the fused projection per row (double): the
# four shuffles of the dx warp sums move two registers each (+4 SHFL), and
# x_t and the dx sums take twice the 16-byte loads (+1, +2 LDS.128).
DOUBLE_PROJECTION_EXTRA = 7


def backward_budget(H, rows_per_warp=1, project=False, narrow=False,
                    double=False):
    hp = 4 * math.ceil(H / 4)
    # da_{s+1} in 16-byte broadcasts: 4 floats or 2 doubles each.
    total = hp + math.ceil(hp / (4 if double else 8)) + 40
    fma = hp
    if project:
        total += FUSED_PROJECTION_PER_ROW + (
            DOUBLE_PROJECTION_EXTRA if double else 0)
        fma += 4
    if narrow:  # g_t or h_t per row, and x_t with the projection
        total += WIDEN_PER_ELEMENT * (2 if project else 1)
    what = ("16-bit " if narrow else "double " if double else "") + (
        "register-resident backward") + (
        " with the fused projection" if project else "")
    return Budget(f"{what}, HP = {hp}", total,
                  math.floor(90 * fma / total) / 100, rows_per_warp)


def local_memory_problems(k):
    problems = [f"{field} = {k.resources[field]} bytes of local memory"
                for field in ("STACK", "LOCAL") if k.resources.get(field)]
    ldl_stl = [i for i in k.insns if i.op.startswith(("LDL", "STL"))]
    if ldl_stl:
        problems.append(f"{len(ldl_stl)} LDL/STL (spills), first at "
                        f"{ldl_stl[0].addr:#06x}")
    return problems


def verdict(k, budget):
    """The reasons k misses budget; an empty list is a pass."""
    problems = local_memory_problems(k)
    loop = step_loop(k)
    if loop is None:
        return problems + ["no step loop (no loop holds a block barrier)"]
    ops = [i.op for i in loop.insns]
    calls = [i.target for i in loop.insns if i.op.startswith("CALL")]
    if calls:
        problems.append(f"{len(calls)} CALL in the step loop ({calls[0]})")
    ldg = sum(op.startswith("LDG") and
              not op.startswith(("LDGSTS", "LDGDEPBAR")) for op in ops)
    if ldg:
        problems.append(f"{ldg} LDG in the step loop")
    if budget.cluster:
        # barrier.cluster.arrive and .wait, once each; the compiler adds a
        # BAR.SYNC taken instead of the wait when the cluster has one block.
        arrive = sum(op.startswith("UCGABAR_ARV") for op in ops)
        wait = sum(op.startswith("UCGABAR_WAIT") for op in ops)
        bar = sum(op.startswith(("BAR.SYNC", "BAR.RED")) for op in ops)
        if arrive != 1 or wait != 1 or bar > 1:
            problems.append(f"{arrive} cluster barrier arrives, {wait} waits "
                            f"and {bar} block barriers in the step loop")
    else:
        barriers = sum(is_block_barrier(op) for op in ops)
        if barriers != 1:
            problems.append(f"{barriers} block barriers in the step loop")
    if loop.inner_loops:
        problems.append(f"{loop.inner_loops} loops inside the step loop "
                        "(run-time trip counts)")
    per_row = len(ops) / budget.rows_per_warp
    if per_row > budget.instructions_per_row_step:
        problems.append(f"{per_row:.0f} instructions per row-step > "
                        f"{budget.instructions_per_row_step}")
    fma = sum(op.startswith(("FFMA", "DFMA", "HFMA2")) for op in ops)
    if fma < budget.min_fma_share * len(ops):
        problems.append(f"FMA share {fma / len(ops):.2f} < "
                        f"{budget.min_fma_share}")
    return problems


# --- the kernels of this build ------------------------------------------

DTYPES = ("float", "double", "__half", "__nv_bfloat16")
# Today's persistent kernels: the fallback, which the guard must reject.
FALLBACK = {f"irnn_cuda::irnn_{d}_persistent_kernel<{t}>": d
            for d in ("fwd", "bwd") for t in DTYPES}
GEMM = re.compile(r"irnn_cuda::irnn_gemm_kernel<")
# The register-resident forwards: <S, HP, R rows per block, relu, project>.
REG_FWD = re.compile(r"irnn_cuda::irnn_fwd_reg_kernel<(\w+), (\d+), (\d+), "
                     r"(true|false), (true|false)>$")
# Every variant the launch configuration can select (IRNN_REG_FWD_VARIANTS
# in csrc/cuda/irnn_cuda_api.h), each with relu and tanh.
REG_FWD_VARIANTS = [(t, hp, r) for t in ("float", "__half", "__nv_bfloat16")
                    for hp in (64, 104, 128) for r in (1, 2, 4, 8)] + [
    ("double", 64, 1), ("double", 64, 2)]
# The table's names of the 16-bit types (the platform layer's aliases).
REG_FWD_TYPE_NAMES = {"float": "float", "irnn_half": "__half",
                      "irnn_bf16": "__nv_bfloat16", "double": "double"}


def fwd_projections(dtype):
    """The projection settings of the forwards built: projected and not
    (the ring copies a 16-bit element as its 4-byte word); double projected
    only (no ring of doubles)."""
    return ("true",) if dtype == "double" else ("true", "false")


def reg_fwd_budget(name):
    dtype, hp, rows, relu, project = REG_FWD.match(name).groups()
    return forward_budget(int(hp), int(rows), relu == "true",
                          project == "true", double=dtype == "double")


# The register-resident backwards: <S, HP, R rows per block, relu, project>.
REG_BWD = re.compile(r"irnn_cuda::irnn_bwd_reg_kernel<(\w+), (\d+), (\d+), "
                     r"(true|false), (true|false)>$")
# Every variant of IRNN_REG_BWD_VARIANTS, each with relu and tanh, with and
# without the fused projection.
REG_BWD_VARIANTS = [("float", 64, 1), ("float", 104, 1), ("float", 104, 8),
                    ("float", 128, 1), ("float", 64, 2), ("float", 64, 4),
                    ("float", 104, 2), ("float", 104, 4)] + [
    (t, hp, r) for t in ("__half", "__nv_bfloat16")
    for hp, r in ((64, 1), (64, 2), (64, 4), (104, 1), (104, 2), (104, 4),
                  (104, 8))] + [("double", 64, 1)]


def reg_bwd_projections(dtype, rows):
    """The fused-projection settings built: with and without it, the 16-bit
    types without it at 1, 2 and 4 rows per block only
    (reg_bwd_unprojected_rows)."""
    return ("true", "false") if dtype in ("float", "double") or rows != 8 \
        else ("true",)


def reg_bwd_budget(name):
    dtype, hp, rows, _, project = REG_BWD.match(name).groups()
    return backward_budget(int(hp), int(rows), project == "true",
                           dtype in ("__half", "__nv_bfloat16"),
                           double=dtype == "double")


def table_variants(macro):
    """(type, HP, R) of every X(...) line of a variant table in
    csrc/cuda/irnn_cuda_api.h."""
    text = (Path(__file__).resolve().parent.parent / "csrc" / "cuda" /
            "irnn_cuda_api.h").read_text()
    block = re.search(r"#define %s\(X\)((?:.*\\\n)*.*)" % macro, text).group(1)
    return {(REG_FWD_TYPE_NAMES[t], int(hp), int(r)) for t, hp, r in
            re.findall(r"X\(k\w+, (\w+), (\d+), (\d+)\)", block)}
# The cluster forwards: <S, HP, R rows per cluster, relu, project>, every
# variant of IRNN_CLUSTER_FWD_VARIANTS with relu and tanh, projected or not.
CLUSTER_FWD = re.compile(r"irnn_cuda::irnn_fwd_cluster_kernel<(\w+), (\d+), "
                         r"(\d+), (true|false), (true|false)>$")
NARROW = ("__half", "__nv_bfloat16")
CLUSTER_FWD_VARIANTS = [(t, hp, r) for t in ("float",) + NARROW
                        for hp in (256, 512) for r in (1, 2, 4, 8)]


def cluster_fwd_budget(name):
    dtype, hp, rows, relu, project = CLUSTER_FWD.match(name).groups()
    return cluster_forward_budget(int(hp), int(rows), relu == "true",
                                  project == "true", narrow=dtype in NARROW)


# The cluster backwards: <S, HP, R rows per cluster, relu>, every variant
# of IRNN_CLUSTER_BWD_VARIANTS with relu and tanh.
CLUSTER_BWD = re.compile(r"irnn_cuda::irnn_bwd_cluster_kernel<(\w+), (\d+), "
                         r"(\d+), (true|false)>$")
# (The 16-bit types at 8 rows spilled with tanh: not built.)
CLUSTER_BWD_VARIANTS = [(t, hp, r) for t in ("float",) + NARROW
                        for hp in (256, 512)
                        for r in ((1, 2, 4, 8) if t == "float" else (1, 2, 4))]


def cluster_bwd_budget(name):
    dtype, hp, rows, _ = CLUSTER_BWD.match(name).groups()
    return cluster_backward_budget(int(hp), int(rows), narrow=dtype in NARROW)


# Kernels without a step loop: only the local-memory check applies.
PLAIN = re.compile(
    r"irnn_cuda::irnn_(reduce_partials|column_sum|sum_parts|relayout|"
    r"activate_rows|bwd_point)_kernel<")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    try:
        import irnn_cuda._C as ext
    except ImportError as e:
        _unavailable(f"irnn_cuda._C does not import ({e})")
    for tool in ("cuobjdump", "nvdisasm", "c++filt"):
        if find_tool(tool) is None:
            _unavailable(f"{tool} not found (pip install -r "
                         "requirements-test.txt)")
    listing = subprocess.run([find_tool("cuobjdump"), "-lelf", ext.__file__],
                             capture_output=True, text=True).stdout
    if ".cubin" not in listing:
        _unavailable("irnn_cuda._C holds no CUDA code (built without CUDA)")
    return disassemble(ext.__file__, str(tmp_path_factory.mktemp("sass")))


def test_missing_tools_fail_under_expect_cuda(monkeypatch):
    """With IRNN_EXPECT_CUDA=1 the guard fails where it would skip."""
    monkeypatch.setenv("IRNN_EXPECT_CUDA", "1")
    with pytest.raises(pytest.fail.Exception):
        _unavailable("nvdisasm not found")
    monkeypatch.delenv("IRNN_EXPECT_CUDA")
    with pytest.raises(pytest.skip.Exception):
        _unavailable("nvdisasm not found")


def test_every_kernel_is_classified(kernels):
    unknown = [n for n in kernels if n not in FALLBACK and
               not GEMM.match(n) and not PLAIN.match(n) and
               not REG_FWD.match(n) and not REG_BWD.match(n) and
               not CLUSTER_FWD.match(n) and not CLUSTER_BWD.match(n)]
    assert not unknown, (
        "kernels the SASS guard does not know; give each its budget in "
        f"tests/test_sass.py and docs/cuda.md: {unknown}")
    assert set(FALLBACK) <= set(kernels), set(FALLBACK) - set(kernels)
    assert any(GEMM.match(n) for n in kernels)


def test_no_local_memory(kernels):
    problems = {n: p for n, k in kernels.items()
                if (p := local_memory_problems(k))}
    assert not problems, problems


def test_register_forward_variants_built(kernels):
    """The build holds every variant of the table, relu and tanh, projected
    and (float32) not, and no other register-resident forward."""
    built = {n for n in kernels if REG_FWD.match(n)}
    expected = {f"irnn_cuda::irnn_fwd_reg_kernel<{t}, {hp}, {r}, {a}, {p}>"
                for t, hp, r in REG_FWD_VARIANTS for a in ("true", "false")
                for p in fwd_projections(t)}
    assert built == expected, (built ^ expected)
    assert table_variants("IRNN_REG_FWD_VARIANTS") == set(REG_FWD_VARIANTS)


@pytest.mark.parametrize("variant", [
    (t, hp, r, a, p) for t, hp, r in REG_FWD_VARIANTS
    for a in ("true", "false") for p in fwd_projections(t)],
    ids=lambda v: "-".join(map(str, v)))
def test_register_forward_within_budget(kernels, variant):
    """The guard passes every selectable register-resident forward: no
    local memory, one barrier, no LDG (the ring's copies are LDGSTS) or
    inner loop in the step, and the instructions per row-step within the
    budget (H = 100 runs at HP = 104: at most 170 with relu, 191 for a
    pre-projected input)."""
    name = "irnn_cuda::irnn_fwd_reg_kernel<%s, %d, %d, %s, %s>" % variant
    k = kernels[name]
    budget = reg_fwd_budget(name)
    assert verdict(k, budget) == [], (name, verdict(k, budget))
    if variant[:4] == ("float", 104, 1, "true"):
        limit = 170 if variant[4] == "true" else 191
        assert budget.instructions_per_row_step == limit
        assert len(step_loop(k).insns) <= limit


def test_cluster_forward_variants_built(kernels):
    """The build holds every variant of the cluster table, relu and tanh,
    projected or not, and no other cluster forward."""
    built = {n for n in kernels if CLUSTER_FWD.match(n)}
    expected = {f"irnn_cuda::irnn_fwd_cluster_kernel<{t}, {hp}, {r}, {a}, {p}>"
                for t, hp, r in CLUSTER_FWD_VARIANTS for a in ("true", "false")
                for p in fwd_projections(t)}
    assert built == expected, (built ^ expected)
    assert table_variants("IRNN_CLUSTER_FWD_VARIANTS") == set(CLUSTER_FWD_VARIANTS)


@pytest.mark.parametrize("variant", [
    (t, hp, r, a, p) for t, hp, r in CLUSTER_FWD_VARIANTS
    for a in ("true", "false") for p in fwd_projections(t)],
    ids=lambda v: "-".join(map(str, v)))
def test_cluster_forward_within_budget(kernels, variant):
    """The guard passes every selectable cluster forward: no local memory,
    one cluster barrier (arrive and wait) per step, no LDG (the ring's
    copies are LDGSTS) or inner loop in the step, and the instructions per
    row-step within the budget (at most 144 at HP = 256 and 224 at HP = 512
    with relu, 165 and 245 for a pre-projected input at one row; 8 more for
    the 16-bit types)."""
    name = "irnn_cuda::irnn_fwd_cluster_kernel<%s, %d, %d, %s, %s>" % variant
    k = kernels[name]
    budget = cluster_fwd_budget(name)
    assert verdict(k, budget) == [], (name, verdict(k, budget))
    if variant[3] == "true" and (variant[2] == 1 or variant[4] == "true"):
        limits = {"true": {256: 144, 512: 224}, "false": {256: 165, 512: 245}}
        assert budget.instructions_per_row_step == limits[variant[4]][
            variant[1]] + (CLUSTER_NARROW_FWD_PER_ROW
                           if variant[0] in NARROW else 0)


def test_cluster_kernels_hold_an_sm_alone(kernels):
    """Every cluster kernel's block holds an SM alone (256 threads of more
    than 128 registers: two would need more than the SM's 65,536), so the
    clusters of 4 and of 8 blocks the device runs at once, which
    irnn_cuda_device_props queries on the 1-row forward of each HP
    (DeviceProps::clusters_of_4, _8), count the wave of every variant."""
    names = [n for n in kernels if CLUSTER_FWD.match(n) or CLUSTER_BWD.match(n)]
    assert len(names) == 2 * (2 * len(CLUSTER_FWD_VARIANTS) +
                              len(CLUSTER_BWD_VARIANTS))
    for name in names:
        regs = int(kernels[name].resources["REG"])
        assert 2 * 256 * regs > 65536, (name, regs)


def test_cluster_backward_variants_built(kernels):
    """The build holds every variant of the cluster backward's table, relu
    and tanh, and no other."""
    built = {n for n in kernels if CLUSTER_BWD.match(n)}
    expected = {f"irnn_cuda::irnn_bwd_cluster_kernel<{t}, {hp}, {r}, {a}>"
                for t, hp, r in CLUSTER_BWD_VARIANTS for a in ("true", "false")}
    assert built == expected, (built ^ expected)
    assert table_variants("IRNN_CLUSTER_BWD_VARIANTS") == set(CLUSTER_BWD_VARIANTS)


@pytest.mark.parametrize("variant", [
    (t, hp, r, a) for t, hp, r in CLUSTER_BWD_VARIANTS
    for a in ("true", "false")], ids=lambda v: "-".join(map(str, v)))
def test_cluster_backward_within_budget(kernels, variant):
    """The guard passes every selectable cluster backward: no local memory,
    one cluster barrier per step, no LDG (the ring's copies are LDGSTS) or
    inner loop in the step, and the instructions per row-step within the
    budget (at most 175 at HP = 256 and 255 at HP = 512; 16 more for the
    16-bit types)."""
    name = "irnn_cuda::irnn_bwd_cluster_kernel<%s, %d, %d, %s>" % variant
    k = kernels[name]
    budget = cluster_bwd_budget(name)
    assert verdict(k, budget) == [], (name, verdict(k, budget))
    assert budget.instructions_per_row_step == {256: 175, 512: 255}[
        variant[1]] + (CLUSTER_NARROW_BWD_PER_ROW if variant[0] in NARROW else 0)


def test_register_backward_variants_built(kernels):
    """The build holds every variant of the backward's table, relu and
    tanh, with and without the fused projection (16-bit: without it at 2
    and 4 rows only), and no other."""
    built = {n for n in kernels if REG_BWD.match(n)}
    expected = {f"irnn_cuda::irnn_bwd_reg_kernel<{t}, {hp}, {r}, {a}, {p}>"
                for t, hp, r in REG_BWD_VARIANTS for a in ("true", "false")
                for p in reg_bwd_projections(t, r)}
    assert built == expected, (built ^ expected)
    assert table_variants("IRNN_REG_BWD_VARIANTS") == set(REG_BWD_VARIANTS)


@pytest.mark.parametrize("variant", [
    (t, hp, r, a, p) for t, hp, r in REG_BWD_VARIANTS
    for a in ("true", "false") for p in reg_bwd_projections(t, r)],
    ids=lambda v: "-".join(map(str, v)))
def test_register_backward_within_budget(kernels, variant):
    """The guard passes every selectable register-resident backward: no
    local memory, one barrier, no LDG or inner loop in the step, and the
    instructions per row-step within the budget (H = 100 runs at HP = 104:
    at most 157, and 202 with the fused projection)."""
    name = "irnn_cuda::irnn_bwd_reg_kernel<%s, %d, %d, %s, %s>" % variant
    k = kernels[name]
    budget = reg_bwd_budget(name)
    assert verdict(k, budget) == [], (name, verdict(k, budget))
    if variant[:3] == ("float", 104, 1):
        limit = 202 if variant[4] == "true" else 157
        assert budget.instructions_per_row_step == limit
        assert len(step_loop(k).insns) <= limit


@pytest.mark.parametrize("name", sorted(FALLBACK))
def test_guard_rejects_todays_kernels(kernels, name):
    """The guard's verdict on today's kernels is "fail", for the reasons the
    design study reads in their SASS (docs/cuda.md, latency model)."""
    k = kernels[name]
    budget = (forward_budget if FALLBACK[name] == "fwd" else
              backward_budget)(100)
    problems = verdict(k, budget)
    text = "; ".join(problems)
    assert problems, f"the guard passes {name}: it can no longer fail"
    # The reasons: loops inside the step (run-time H and rows per thread),
    # global loads on the critical path, far above the budget.
    assert "loops inside the step loop" in text, text
    assert "LDG in the step loop" in text, text
    assert "instructions per row-step" in text, text
    assert "FMA share" in text, text
    loop = step_loop(k)
    assert sum(is_block_barrier(i.op) for i in loop.insns) == 1
    assert len(loop.insns) > 5 * budget.instructions_per_row_step


def row_dots_path_at_one_row(k, header):
    """The instructions one row_dots iteration issues at rows_per_thread =
    1: the branch after each `ISETP ... 0x2/0x3/0x4` (row slot 1, 2, 3
    in use?) is taken, every other conditional branch falls through, and
    the walk ends at the branch back to the header."""
    path, i = [], header
    while True:
        ins = k.insns[i]
        path.append(ins)
        if _is_branch(ins.op):
            if k.labels.get(ins.target) == header:
                return path
            prev = k.insns[i - 1]
            if prev.op.startswith("ISETP") and \
                    re.search(r", 0x[234], PT$", prev.args):
                i = k.labels[ins.target]
                continue
        i += 1


def test_todays_forward_step_loop(kernels):
    """The figures docs/cuda.md's latency model starts from: the float
    forward's step loop and its row_dots loop (25 instructions per two
    k at one row per thread: 2 FFMA, 4 LDS, 125 cycles of stall counts;
    26 and 129 in the build the model was measured with, before the
    kernel took lengths)."""
    k = kernels["irnn_cuda::irnn_fwd_persistent_kernel<float>"]
    loop = step_loop(k)
    assert 1000 < len(loop.insns) < 1600, len(loop.insns)
    blocks, loops = natural_loops(k)
    dots = [body for body in loops.values()
            if sum(k.insns[i].op.startswith("FFMA")
                   for b in body for i in range(blocks[b][0],
                                                blocks[b][1] + 1)) == 8
            and not any(k.insns[i].op.startswith("LDG")
                        for b in body for i in range(blocks[b][0],
                                                     blocks[b][1] + 1))]
    assert len(dots) == 1, "row_dots: 4 row slots x 2 accumulators"
    size = sum(blocks[b][1] - blocks[b][0] + 1 for b in dots[0])
    assert size == 46, size
    header = blocks[min(dots[0])][0]
    path = row_dots_path_at_one_row(k, header)
    ops = [i.op for i in path]
    assert len(path) == 25, [hex(i.addr) for i in path]
    assert sum(op.startswith("FFMA") for op in ops) == 2
    assert sum(op.startswith("LDS") for op in ops) == 4
    assert sum(i.stall for i in path) == 125


def test_gemm_has_no_division_routine(kernels):
    gemm = {n: k for n, k in kernels.items() if GEMM.match(n)}
    for name, k in gemm.items():
        called = [i.target for i in k.insns if i.op.startswith("CALL")]
        routines = [c for c in called if DIV64.search(c)] + \
            [label for label in k.labels if DIV64.search(label)]
        assert not routines, f"{name} calls {sorted(set(routines))}"


def test_guard_sees_a_division_routine():
    """The division check recognises the routine nvcc emits (as in the
    GEMM kernel's SASS before its offsets were precomputed)."""
    sass = """.text._Z1kv:
        /*0000*/                   CALL.REL.NOINC `($__internal_7_$__cuda_sm20_div_s64) ;
        /*0010*/                   EXIT ;
$__internal_7_$__cuda_sm20_div_s64:
        /*0020*/                   RET.REL.NODEC R20 `(_Z1kv) ;
"""
    insns, labels = parse_sass(sass)["_Z1kv"]
    assert DIV64.search(insns[0].target)
    assert any(DIV64.search(label) for label in labels)


def _synthetic(body_ops, budget):
    """A kernel of one step loop with body_ops, for the verdict's tests."""
    lines = [".text._Z1kv:", "        /*0000*/ MOV R1, RZ ;", ".L_x_0:"]
    addr = 0x10
    for op in body_ops + ["BAR.SYNC.DEFER_BLOCKING 0x0",
                          "ISETP.NE.AND P0, PT, R1, RZ, PT"]:
        lines.append(f"        /*{addr:04x}*/ {op} ;")
        addr += 0x10
    lines.append(f"        /*{addr:04x}*/ @P0 BRA `(.L_x_0) ;")
    lines.append(f"        /*{addr + 0x10:04x}*/ EXIT ;")
    insns, labels = parse_sass("\n".join(lines))["_Z1kv"]
    k = Kernel("_Z1kv", "k", insns, labels, {"STACK": 0, "LOCAL": 0})
    return verdict(k, budget)


def test_verdict_passes_a_kernel_within_budget():
    """The guard is not a rejection of everything: a step loop shaped like
    the budget's design passes, and each violation is caught alone."""
    budget = forward_budget(100)
    design = ["LDS.128 R4, [R2]"] * 25 + ["FFMA R8, R4, R5, R8"] * 100 + \
        ["FADD R8, R8, R9"] * 3 + ["STS [R3], R8", "STG.E desc[UR4][R6.64], R8"]
    assert _synthetic(design, budget) == []
    assert "LDG" in " ".join(_synthetic(design + ["LDG.E R9, desc[UR4][R6.64]"],
                                        budget))
    assert _synthetic(design + ["LDGSTS [R3], desc[UR4][R6.64]",
                                "LDGDEPBAR"], budget) == []
    assert "CALL" in " ".join(_synthetic(
        design + ["CALL.REL.NOINC `($__internal_0_$__cuda_sm3x_div_rn)"],
        budget))
    assert "2 block barriers" in " ".join(_synthetic(
        design + ["BAR.SYNC.DEFER_BLOCKING 0x0"], budget))
    assert "instructions per row-step" in " ".join(_synthetic(
        design + ["IADD3 R1, R1, 0x1, RZ"] * 40, budget))
    assert "FMA share" in " ".join(_synthetic(
        design[:25] + ["FFMA R8, R4, R5, R8"] * 60 + ["FADD R8, R8, R9"] * 60,
        dataclasses.replace(budget, instructions_per_row_step=1000)))
    assert "LDL/STL" in " ".join(_synthetic(
        design + ["LDL R9, [R1]"], budget))


def test_verdict_counts_the_cluster_barrier():
    """A cluster kernel's step passes with one cluster barrier (arrive and
    wait; a BAR.SYNC beside them is the compiler's one-block path) and
    fails without either half; a block barrier alone does not count."""
    budget = dataclasses.replace(cluster_forward_budget(256),
                                 instructions_per_row_step=1000,
                                 min_fma_share=0.5)
    design = ["LDS.128 R4, [R2]"] * 16 + ["FFMA R8, R4, R5, R8"] * 68 + \
        ["ST.E desc[UR6][R32.64], R35", "MEMBAR.ALL.GPU", "UCGABAR_ARV",
         "STG.E desc[UR4][R6.64], R8", "UCGABAR_WAIT", "CCTL.IVALL"]
    # _synthetic appends one BAR.SYNC: the one-block path.
    assert _synthetic(design, budget) == []
    no_arrive = [op for op in design if op != "UCGABAR_ARV"]
    assert "0 cluster barrier arrives" in " ".join(_synthetic(no_arrive, budget))
    no_wait = [op for op in design if op != "UCGABAR_WAIT"]
    assert "0 waits" in " ".join(_synthetic(no_wait, budget))
    assert "2 block barriers" in " ".join(_synthetic(
        design + ["BAR.SYNC.DEFER_BLOCKING 0x0"], budget))


def test_budgets_match_the_docs():
    """The exact numbers docs/cuda.md derives."""
    assert forward_budget(100).instructions_per_row_step == 165
    assert forward_budget(104).instructions_per_row_step == 170
    assert forward_budget(104, relu=False).instructions_per_row_step == 186
    assert backward_budget(100).instructions_per_row_step == 153
    assert backward_budget(104).instructions_per_row_step == 157
    assert backward_budget(104, project=True).instructions_per_row_step == 202
    assert cluster_forward_budget(256).instructions_per_row_step == 144
    assert cluster_forward_budget(512).instructions_per_row_step == 224
    assert cluster_forward_budget(256, relu=False).instructions_per_row_step == 160
    assert cluster_backward_budget(256).instructions_per_row_step == 175
    assert cluster_backward_budget(512).instructions_per_row_step == 255
    assert forward_budget(104, project=False).instructions_per_row_step == 191
    assert forward_budget(104, 8, project=False).instructions_per_row_step == 177
    assert cluster_forward_budget(
        256, project=False).instructions_per_row_step == 165
    assert cluster_forward_budget(
        512, project=False).instructions_per_row_step == 245
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cuda.md"
           ).read_text()
    assert "8 rows 177 (165); cluster HP 256 / 512 at one row 165 / 245" in doc
    for n in ("165", "170", "186", "153", "157", "202", "144", "224", "160",
              "175", "255", "191"):
        assert f"**{n}**" in doc, f"docs/cuda.md does not state the budget {n}"
