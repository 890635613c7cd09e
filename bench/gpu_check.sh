#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU (a lent H100/H200: its own
# Python and torch, no network, no pip). One run takes at most 6 minutes,
# so two fit a 15-minute window with the machine's start. Run from anywhere:
#
#   bash bench/gpu_check.sh [--pack DIR] OUTDIR [MNIST_DIR]           # GPU
#   bash bench/gpu_check.sh --dry-run [--pack DIR] OUTDIR [MNIST_DIR] # no GPU
#
# Stages in priority order, each under its own timeout (seconds, the sum is
# the budget, STAGE_CAPS below, 360 s in all):
#   1. build       the extension for sm_90 only (TORCH_CUDA_ARCH_LIST=9.0);
#                  the row says whether cuBLASLt was found;
#   2. cuda-tests  the CUDA tests of tests/test_variable_length.py, the
#                  device property query's and the GEMM choice's, then
#                  tests/test_cuda.py (CUDA_TESTS), with IRNN_REQUIRE_GPU=1
#                  (fail, not skip), IRNN_EXPECT_CUDA=1 and IRNN_EXPECT_EXT=1;
#                  -v, so that a timeout still leaves one line per test;
#   3. bench       bench/bench_rnn.py --device cuda --tf32 off --varlen:
#                  FusedIRNN and nn.RNN (cuDNN) in one process, and the
#                  variable-length batch (T=784, B=256, lengths uniform in
#                  [T/4, T]): FusedIRNN packed and padded, nn.RNN packed and
#                  padded. The targets of the GPU work are read from here;
#   4. sweep       every instantiated kernel ranked: each (H, B) case times
#                  forward and backward per step and names the kernels it ran;
#   5. ncu         Nsight Compute (--clock-control none, WarpStateStats and
#                  InstructionStats, one launch each) on the forward step
#                  kernel the sweep ran at H=100, B=16 ("today"), and on the
#                  sweep's fastest and slowest step kernels (ncu_targets.txt);
#   6. sanitizer   compute-sanitizer racecheck and synccheck on a small
#                  forward+backward of both paths;
#   7. mnist       given MNIST_DIR, a short training run (40 steps at batch
#                  1024) per implementation, fused and torch;
#   8. large-h     the per-step path against cuDNN, forward and fwd+bwd:
#                  H = 1024 at B = 16, 128, 1024 and H = 2048 at B = 16, 128
#                  with its GEMMs by cuBLASLt (the default), then H = 1024 at
#                  B = 16, 128 with IRNN_CUDA_GEMM=tiled (our GEMM kernel)
#                  and with IRNN_CUDA_GRAPHS=1 (the op's own CUDA graphs);
#                  H = 2048 at B = 1024 in whatever budget is left over.
# A tool that refuses the device (under gVisor, compute-sanitizer and ncu
# answer "Device not supported" or ERR_NVGPUCTRPERM) is reported as n/a; an
# ncu run that profiled no kernel (its filter matched none) fails.
# Every log and JSON goes into OUTDIR as the stage runs; a real run first
# removes what an earlier run left there. The compact table is printed last
# and saved as OUTDIR/summary.txt. The exit status is non-zero when a stage
# failed or ran out of time.
# --pack DIR: after every stage's row, and at the end, OUTDIR is packed into
# DIR/gpu_check.tgz and the table so far copied to DIR/summary.txt (each
# written under a temporary name, then moved), so that a run stopped from
# outside still leaves the stages done. For a machine that returns only a
# few files from its output folder: OUTDIR holds about 30 files and folders.
# --dry-run checks each stage's files, flags and scripts without a GPU and
# prints each stage's cap ("CAP stage seconds"), the split of a stage's cap
# among its runs ("SUBCAP run seconds") and the budget; with --pack it
# writes the archive and checks that it holds summary.txt.
set -u

# The tests of stage 2. The variable-length, device-property and GEMM-choice
# nodes run first: they are few, the device properties' test records the
# clusters of 4 and 8 the routing reads, and the GEMM choice's fails a build
# without cuBLASLt (without it the tests of the per-step GEMMs skip or test
# only the tiled kernel). Then the many cases of tests/test_cuda.py.
CUDA_TESTS=("tests/test_variable_length.py::test_cuda_packed_matches_nn_rnn"
            "tests/test_variable_length.py::test_cuda_ops_lengths_match_cpu"
            "tests/test_variable_length.py::test_cuda_lengths_without_host_sync_and_in_a_graph"
            "tests/test_cuda_host.py::test_device_props_report_failed_queries"
            "tests/test_cuda_host.py::test_cuda_gemm_choice"
            tests/test_cuda.py)
# Each stage's timeout in seconds; their sum is the run's budget.
STAGES=(build cuda-tests bench sweep ncu sanitizer mnist large-h)
# From the H200 run of 2026-11-28 (docs/gpu/2026-11-28-h200/summary.txt),
# which had 6 translation units and 53 tests:
# - build: 49 s for three architectures; it is 27 translation units (21
#   .cu) for sm_90 only here, and a timeout fails every later stage;
# - cuda-tests: 53 tests took 26 s; CUDA_TESTS are about 135, at about
#   0.28 s each, plus the interpreter's start and the collection;
# - bench: 13 s per TF32 setting then; the variable-length rows add four
#   forward+backward contenders at T=784, H = 256 and 512 at B = 16, 128
#   and 1024 (the cluster forward) six rows;
# - sweep: seventeen cases of a few ms each (four under IRNN_CUDA_ROWS),
#   the profiler's start included;
# - ncu: three runs, each Python's and CUDA's start under ncu and one
#   profiled launch;
# - sanitizer: racecheck took 18 s (5 s of it the start) on a case of three
#   configurations; the case has six now, so about 30 s. synccheck, which
#   tracks barriers only, gets the rest;
# - mnist: a one-epoch run at batch 1024 took 11-12 s of wall time per
#   implementation, little of it training (start, data, evaluation,
#   checkpoint, curves.png), so 40 steps save under a second;
# - large-h: five shapes by cuBLASLt at 3 repeats are about 7-9 s of GPU
#   work plus 4-5 s of start; the tiled and graphs runs (two shapes) are
#   mostly start.
declare -A STAGE_CAPS=([build]=70 [cuda-tests]=70 [bench]=50 [sweep]=25
                       [ncu]=20 [sanitizer]=45 [mnist]=40 [large-h]=40)
# The stages of several runs split their cap as follows (each stage's runs
# add up to its cap; ncu shares its cap evenly among its targets, a target
# that ends early leaving its time to the next).
declare -A SUB_CAPS=([sanitizer-racecheck]=30 [sanitizer-synccheck]=15
                     [mnist-fused]=20 [mnist-torch]=20
                     [large-h-cublaslt]=20 [large-h-tiled]=10 [large-h-graphs]=10)
SUB_RUNS=(sanitizer-racecheck sanitizer-synccheck mnist-fused mnist-torch
          large-h-cublaslt large-h-tiled large-h-graphs)

usage() {
  echo "usage: $0 [--dry-run] [--pack DIR] OUTDIR [MNIST_DIR]" >&2
  exit 2
}
DRY=0
PACK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --pack) [ $# -ge 2 ] || usage; PACK=$2; shift 2 ;;
    --) shift; break ;;
    -*) usage ;;
    *) break ;;
  esac
done
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1" || exit 2
OUT="$(cd "$1" && pwd)"
if [ -n "$PACK" ]; then
  mkdir -p "$PACK" || exit 2
  PACK="$(cd "$PACK" && pwd)"
  # The archive of OUTDIR cannot be written into OUTDIR (tar would read it).
  case "$PACK/" in
    "$OUT"/*) echo "--pack $PACK: must lie outside OUTDIR $OUT" >&2; exit 2 ;;
  esac
fi
# MNIST_DIR counts from the caller's directory, not from ROOT (cd below).
MNIST="${2:-}"
if [ -n "$MNIST" ] && [ -d "$MNIST" ]; then MNIST="$(cd "$MNIST" && pwd)"; fi
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET_S=0
for s in "${STAGES[@]}"; do BUDGET_S=$(( BUDGET_S + STAGE_CAPS[$s] )); done
SUMMARY="$OUT/summary.txt"
ROWS=""
FAILED=0
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# A Python killed by `timeout` loses a block-buffered stdout: the sweep's
# table, seq_mnist's header, the sanitizer case's line.
export PYTHONUNBUFFERED=1
# Only the profiling tools' logs are read for this: a test or benchmark log
# can hold "not supported on this platform" from torch itself.
REFUSED="Device not supported|ERR_NVGPUCTRPERM|not supported on this platform"

# summary [NOTE]: the table so far into OUTDIR/summary.txt.
summary() {
  {
    echo "gpu_check $( [ "$DRY" = 1 ] && echo '(dry run) ')$(date -u) in $(( $(date +%s) - START ))s of ${BUDGET_S}s${1:+ ($1)}"
    sed -n 's/^gpu /GPU: /p; s/^torch /torch: /p' "$OUT/env.txt"
    printf '%-11s %-8s %5s  %s\n' stage status time result
    printf '%s' "$ROWS"
  } > "$SUMMARY"
}

# pack: OUTDIR into PACK/gpu_check.tgz and summary.txt beside it, each under
# a temporary name first, so that a run killed meanwhile leaves the last
# complete archive.
pack() {
  [ -n "$PACK" ] || return 0
  if tar czf "$PACK/gpu_check.tgz.tmp" -C "$(dirname "$OUT")" "$(basename "$OUT")"; then
    mv -f "$PACK/gpu_check.tgz.tmp" "$PACK/gpu_check.tgz"
  else
    echo "pack: tar of $OUT failed"
  fi
  cp -f "$SUMMARY" "$PACK/summary.txt.tmp" && mv -f "$PACK/summary.txt.tmp" "$PACK/summary.txt"
}

row() {  # row STAGE STATUS SECONDS RESULT: records it, then summary and pack
  ROWS+="$(printf '%-11s %-8s %5s  %s' "$1" "$2" "$3" "$4")"$'\n'
  summary "so far"
  pack
}

# run STAGE LOG CAP CMD...: CMD under `timeout` CAP (or what is left of the
# budget), output to OUTDIR/LOG, stdin from /dev/null (the ncu loop reads
# its targets from stdin). Sets RC and DT; prints the log's tail.
run() {
  local stage=$1 log=$2 cap=$3; shift 3
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 5 ]; then
    echo "== $stage: no time left in the ${BUDGET_S}s budget"
    echo "no time left in the ${BUDGET_S}s budget" > "$OUT/$log"
    RC=124; DT=0; return
  fi
  echo "== $stage (limit ${limit}s): $*"
  local t0; t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$log" 2>&1 < /dev/null
  RC=$?
  DT=$(( $(date +%s) - t0 ))
  tail -n 4 "$OUT/$log"
}

# status LOG: ok, n/a (ncu or compute-sanitizer refused the device), timeout,
# FAIL(none) (ncu exited 0 but profiled no kernel) or FAIL(rc).
status() {
  local log="$OUT/$1" tool=0
  case "$1" in ncu_*|sanitizer_*) tool=1 ;; esac
  if [ "$RC" = 0 ]; then
    case "$1" in
      ncu_*) if grep -q "No kernels were profiled" "$log" 2>/dev/null; then
               if grep -Eq -- "$REFUSED" "$log"; then echo n/a; else echo "FAIL(none)"; fi
               return
             fi ;;
    esac
    echo ok
  elif [ "$tool" = 1 ] && grep -Eq -- "$REFUSED" "$log" 2>/dev/null; then echo n/a
  elif [ "$RC" = 124 ] || [ "$RC" = 137 ]; then echo timeout
  else echo "FAIL($RC)"; fi
}

# finish STAGE LOG SECONDS RESULT: records the stage's row.
finish() {
  local st; st=$(status "$2")
  case "$st" in ok|n/a) ;; *) FAILED=1 ;; esac
  row "$1" "$st" "${3}s" "$4"
}

need() {  # need FILE...: the dry run and the real run stop on a missing file
  for f in "$@"; do
    [ -f "$f" ] || { echo "missing $f" >&2; exit 2; }
  done
}
need_flags() {  # need_flags SCRIPT FLAG...
  local script=$1 help; help=$("$PY" "$1" --help 2>&1)
  shift
  for flag in "$@"; do
    grep -q -- "$flag" <<< "$help" || { echo "$script lacks $flag" >&2; exit 2; }
  done
}

[ -n "$PY" ] || { echo "no python found" >&2; exit 2; }
need setup.py tests/test_cuda.py csrc/cuda/irnn_kernels.cuh \
  bench/bench_rnn.py bench/seq_mnist.py bench/gpu_targets.py

if [ "$DRY" = 0 ]; then
  # What an earlier run left in OUTDIR (a warm machine, the same folder)
  # would be read as this run's: ncu takes its targets from sweep.json.
  # Only the names this script writes: OUTDIR may hold other files.
  (cd "$OUT" && rm -rf env.txt summary.txt targets.md ptxas.txt ncu_targets.txt \
    build.log test_cuda.log test_cuda.xml bench.log bench.json bench.json.tmp \
    sweep.log sweep.json ncu_*.log sanitizer_*.log mnist_*.log mnist_fused \
    mnist_torch large_h_*.log large_h_*.json large_h_*.json.tmp)
fi
[ -z "$PACK" ] || rm -f "$PACK/gpu_check.tgz" "$PACK/gpu_check.tgz.tmp" \
  "$PACK/summary.txt" "$PACK/summary.txt.tmp"

{
  date -u
  nvidia-smi 2>&1 | head -n 15
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
} > "$OUT/env.txt" 2>&1
# The budget's clock starts here: the lines above (nvidia-smi, torch's
# import and CUDA's start) belong to no stage.
START=$(date +%s)
summary "so far"
pack

# The sweep (stage 4) and the ncu targets (stage 5): one program.
cat > "$OUT/sweep.py" <<'EOF'
"""Times the CUDA ops per (H, B) case at T steps and names the kernels each
case ran; ranks the cases by forward+backward time per step.
  python sweep.py --json sweep.json            # all cases
  python sweep.py --case 100,16 --repeats 1 --no-kernels   # under ncu
  python sweep.py --case 100,2048,none      # one case, IRNN_CUDA_ROWS=none
  python sweep.py --ncu-targets sweep.json     # what ncu profiles
  python sweep.py --device cpu --case 8,2 --steps 3   # the dry run's smoke
"""
import argparse
import json
import os
import re
import statistics
import time

# torch is imported in the functions that use it: --ncu-targets runs
# between two stages, on the budget's clock, and needs none of it.

# H = 100 at B = 256 and 400: the register-resident kernels at 2 and 4
# rows per block on an H100/H200; at B = 1056, 1057 and 2048 at 8 rows in
# one wave (132 SMs), two, and two full (docs/cuda.md leaves the waves
# uncapped until these are measured); H = 512 at B = 32 and 64: the cluster
# kernels at 2 and 4 rows per cluster.
CASES = [(100, 16), (100, 128), (100, 256), (100, 400), (100, 1024),
         (100, 1056), (100, 1057), (100, 2048), (256, 16), (256, 128),
         (512, 16), (512, 32), (512, 64)]
# What the routing passes over, run under IRNN_CUDA_ROWS (docs/cuda.md,
# "Launch configuration"): H = 100 at B = 16 with 2 rows per block (the
# routing before one row per block), at B = 1024 with 4 rows in two waves
# against 8 in one, and today's kernels at B = 1024 and 2048 against the
# register-resident ones in one and two waves (the uncapped waves).
FORCED = [(100, 16, "2"), (100, 1024, "4"), (100, 1024, "none"),
          (100, 2048, "none")]
# The step kernels (forward, backward, the per-step path's GEMM), not the
# reductions and copies around them. cuBLASLt's kernels have no "irnn" in
# their names and are not listed at all.
STEP_KERNEL = r"irnn_(fwd|bwd)_(reg|cluster|persistent)_kernel|irnn_gemm_kernel"
FWD_KERNEL = r"irnn_fwd_(reg|cluster|persistent)_kernel"
# "today" without a sweep result: whatever register-resident forward runs
# (on an H100/H200, float32 H = 100 at B = 16 runs one, at HP = 104).
TODAY_FALLBACK = "irnn_fwd_reg_kernel"


def run_case(H, B, T, repeats, dev, names=True, rows=None):
    """One case's times per step; with `rows`, under IRNN_CUDA_ROWS=rows
    (restored after)."""
    if rows is not None:
        before = os.environ.get("IRNN_CUDA_ROWS")
        os.environ["IRNN_CUDA_ROWS"] = rows
        try:
            return dict(run_case(H, B, T, repeats, dev, names), rows=rows)
        finally:
            if before is None:
                os.environ.pop("IRNN_CUDA_ROWS")
            else:
                os.environ["IRNN_CUDA_ROWS"] = before
    import torch
    import irnn_cuda  # noqa: F401  (registers the ops)
    ops = torch.ops.irnn_cuda
    cuda = dev.type == "cuda"
    x = torch.randn(T, B, 1, device=dev)
    h0 = torch.zeros(B, H, device=dev)
    w_ih = torch.randn(H, 1, device=dev)
    w_hh = torch.eye(H, device=dev) + torch.randn(H, H, device=dev) / H
    b = torch.zeros(H, device=dev)

    def fwd():
        return ops.irnn_forward(x, h0, w_ih, w_hh, b, b, "relu", False, True)

    def bwd(out, h_n):
        return ops.irnn_backward(out, h_n, x, h0, w_ih, w_hh, out, "relu",
                                 False)

    def timed(f):  # us per step
        samples = []
        for _ in range(repeats):
            if cuda:
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                f()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) * 1e3 / T)
            else:
                t0 = time.perf_counter()
                f()
                samples.append((time.perf_counter() - t0) * 1e6 / T)
        return statistics.median(samples)

    out, h_n = fwd()
    bwd(out, h_n)  # warm-up
    fwd_us = timed(fwd)
    bwd_us = timed(lambda: bwd(out, h_n))
    return {"H": H, "B": B, "T": T, "fwd_us_per_step": fwd_us,
            "bwd_us_per_step": bwd_us,
            "kernels": kernels_of(lambda: bwd(*fwd()), T)
            if cuda and names else []}


def kernels_of(step, T):
    """The irnn kernels one call of step launches, with their time per step
    (torch.profiler; where CUPTI refuses, one entry saying so)."""
    import torch
    kernels = []
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        for e in prof.key_averages():
            if e.device_type.name == "CUDA" and "irnn" in e.key:
                kernels.append({"name": e.key.split("(")[0]
                                .removeprefix("void "),
                                "calls": e.count,
                                "us_per_step": e.device_time_total / T})
    except Exception as err:  # CUPTI refused: times without names
        kernels.append({"name": f"n/a ({type(err).__name__})"})
    return kernels


def ncu_targets(sweep_json):
    """Lines "tag H,B regex": "today", the forward step kernel the sweep ran
    at H=100, B=16 (without one in the sweep, any register-resident
    forward), then the step kernels with the least ("fastest") and the most
    ("slowest") time per step in the sweep (none when the sweep named no
    kernels)."""
    try:
        with open(sweep_json) as f:
            rows = json.load(f)
    except (OSError, ValueError):
        rows = []
    # Not the IRNN_CUDA_ROWS cases: ncu runs a case as the table routes it.
    named = [(r, k) for r in rows if r.get("rows") is None
             for k in r.get("kernels", [])
             if "calls" in k and re.search(STEP_KERNEL, k["name"])]
    named.sort(key=lambda rk: rk[1]["us_per_step"])

    def regex(name):
        # ncu matches the demangled name with its namespace and parameters:
        # the name without the namespace, only the regex operators escaped
        # (ncu's regex need not know "\ ").
        return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", name.split("::")[-1])

    today = [k for r, k in named if (r["H"], r["B"]) == (100, 16)
             and re.search(FWD_KERNEL, k["name"])]
    picks = [("today", 100, 16,
              regex(today[0]["name"]) if today else TODAY_FALLBACK)]
    if named:
        for tag, (r, k) in (("fastest", named[0]), ("slowest", named[-1])):
            picks.append((tag, r["H"], r["B"], regex(k["name"])))
    return [f"{tag} {H},{B} regex:{name}" for tag, H, B, name in picks]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ncu-targets", metavar="SWEEP_JSON",
                    help="print the kernels ncu profiles, and exit")
    ap.add_argument("--case", help="H,B or H,B,ROWS: run only this case "
                    "(ROWS: IRNN_CUDA_ROWS, 1, 2, 4, 8 or none)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--steps", type=int, default=784)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-kernels", action="store_true",
                    help="name no kernels (no torch.profiler): under ncu, "
                         "which CUPTI allows as its only subscriber")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.ncu_targets:
        print("\n".join(ncu_targets(args.ncu_targets)))
        return
    import torch
    if args.case:
        H, B, *forced = args.case.split(",")
        cases = [(int(H), int(B), forced[0] if forced else None)]
    else:
        cases = [(H, B, None) for H, B in CASES] + FORCED
    dev = torch.device(args.device)
    rows = []
    for H, B, forced in cases:
        try:
            rows.append(run_case(H, B, args.steps, args.repeats, dev,
                                 names=not args.no_kernels, rows=forced))
        except RuntimeError as err:
            if forced is None:
                raise
            # A variant the build lacks: said, and the sweep goes on.
            print(f"H={H} B={B} IRNN_CUDA_ROWS={forced}: {err}")
    rows.sort(key=lambda r: r["fwd_us_per_step"] + r["bwd_us_per_step"])
    print(f"{'H':>4} {'B':>5} {'rows':>5} {'fwd us/step':>12} "
          f"{'bwd us/step':>12}  kernels")
    for r in rows:
        names = ", ".join(k["name"].replace("irnn_cuda::", "")
                          for k in r["kernels"])
        print(f"{r['H']:>4} {r['B']:>5} {r.get('rows') or 'table':>5} "
              f"{r['fwd_us_per_step']:>12.2f} "
              f"{r['bwd_us_per_step']:>12.2f}  {names}")
    if dev.type == "cuda":
        # What the routing read: the clusters of 4 and 8 blocks per wave
        # (0: the query failed and SMs / blocks was taken).
        import irnn_cuda
        print("device props:", irnn_cuda._ops.cuda_device_props(
            dev.index or 0))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
EOF

cat > "$OUT/sanitize_case.py" <<'EOF'
import torch
import irnn_cuda  # noqa: F401  (registers the ops)
ops = torch.ops.irnn_cuda
# H 33 and 100 (I = 0: the input not projected) on the register-resident
# and persistent kernels, H 100 projected at one row per block (the MNIST
# case, B <= the SM count) and at 4 (B = 300); on an H100/H200 the cluster
# kernels at one row per cluster (H 257) and at 2 (H 200, 40 rows: 20 full
# clusters of 4 blocks; no ragged last cluster).
for H, B, I in ((33, 20, 1), (100, 7, 0), (100, 16, 1), (100, 300, 1),
                (257, 5, 1), (200, 40, 1)):
    x = torch.randn(5, B, I or H, device="cuda")
    h0 = torch.randn(B, H, device="cuda")
    w_ih = torch.randn(H, I, device="cuda") if I else None
    w_hh = torch.randn(H, H, device="cuda") / H ** 0.5
    b = torch.randn(H, device="cuda")
    out, h_n = ops.irnn_forward(x, h0, w_ih, w_hh, b, b, "relu", False, True)
    ops.irnn_forward(x, h0, w_ih, w_hh, b, b, "tanh", True, False)
    ops.irnn_backward(torch.randn_like(out), torch.randn_like(h_n), x, h0,
                      w_ih, w_hh, out, "relu", False)
torch.cuda.synchronize()
print("sanitize case done")
EOF

find_tool() {  # find_tool NAME: on PATH or in the CUDA toolkit
  local t; t=$(command -v "$1" || true)
  if [ -z "$t" ]; then
    for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
      if [ -n "$d" ] && [ -x "$d/bin/$1" ]; then t="$d/bin/$1"; break; fi
    done
  fi
  echo "$t"
}
SAN=$(find_tool compute-sanitizer)
NCU=$(find_tool ncu)

# tests_result LOG: pytest's last line, or after a timeout (no last line)
# the tests that got a verdict before it.
tests_result() {
  local last; last=$(grep -E '^=+ .*(passed|failed|error|skipped|no tests ran).* in [0-9.]+s' "$OUT/$1" | tail -n 1)
  if [ -n "$last" ]; then
    echo "$last"
  else
    echo "no end: $(grep -cE ' PASSED( |$)' "$OUT/$1") passed, $(grep -cE ' (FAILED|ERROR)( |$)' "$OUT/$1") failed, before it stopped"
  fi
}

if [ "$DRY" = 1 ]; then
  for s in "${STAGES[@]}"; do echo "CAP $s ${STAGE_CAPS[$s]}"; done
  for r in "${SUB_RUNS[@]}"; do echo "SUBCAP $r ${SUB_CAPS[$r]}"; done
  echo "BUDGET ${BUDGET_S}"
  "$PY" -c "import ast, sys; ast.parse(open(sys.argv[1]).read())" \
    "$OUT/sanitize_case.py" || { echo "sanitize_case.py does not parse" >&2; exit 2; }
  # The ncu stage's choice, from a sweep result shaped like a real one on an
  # H100/H200 (float32: the register-resident kernels at H = 100, the
  # cluster kernels at H = 256 and 512, a case whose profiler was refused,
  # an IRNN_CUDA_ROWS case faster than all, which ncu must pass over), and
  # without a sweep result.
  cat > "$OUT/sweep_example.json" <<'EOF'
[{"H": 100, "B": 16, "T": 784, "rows": "2", "fwd_us_per_step": 1.1, "bwd_us_per_step": 1.2,
  "kernels": [{"name": "irnn_cuda::irnn_fwd_reg_kernel<float, 104, 2, true, true>", "calls": 1, "us_per_step": 1.1}]},
 {"H": 100, "B": 16, "T": 784, "fwd_us_per_step": 2.6, "bwd_us_per_step": 3.9,
  "kernels": [{"name": "irnn_cuda::irnn_fwd_reg_kernel<float, 104, 1, true, true>", "calls": 1, "us_per_step": 2.6},
              {"name": "irnn_cuda::irnn_bwd_reg_kernel<float, 104, 1, true, true>", "calls": 1, "us_per_step": 3.8},
              {"name": "irnn_cuda::irnn_reduce_partials_kernel<float>", "calls": 1, "us_per_step": 0.01}]},
 {"H": 100, "B": 128, "T": 784, "fwd_us_per_step": 2.7, "bwd_us_per_step": 4.0,
  "kernels": [{"name": "n/a (RuntimeError)"}]},
 {"H": 256, "B": 16, "T": 784, "fwd_us_per_step": 2.2, "bwd_us_per_step": 4.6,
  "kernels": [{"name": "irnn_cuda::irnn_fwd_cluster_kernel<float, 256, 1, true, true>", "calls": 1, "us_per_step": 2.2},
              {"name": "irnn_cuda::irnn_bwd_cluster_kernel<float, 256, 1, true>", "calls": 1, "us_per_step": 4.1}]},
 {"H": 512, "B": 64, "T": 784, "fwd_us_per_step": 9.8, "bwd_us_per_step": 15.0,
  "kernels": [{"name": "irnn_cuda::irnn_fwd_cluster_kernel<float, 512, 4, true, true>", "calls": 1, "us_per_step": 9.8},
              {"name": "irnn_cuda::irnn_bwd_cluster_kernel<float, 512, 4, true>", "calls": 1, "us_per_step": 14.2}]}]
EOF
  "$PY" "$OUT/sweep.py" --ncu-targets "$OUT/sweep_example.json" > "$OUT/ncu_targets.txt" \
    || { echo "sweep.py --ncu-targets failed" >&2; exit 2; }
  "$PY" "$OUT/sweep.py" --ncu-targets "$OUT/no_sweep.json" > "$OUT/ncu_targets_no_sweep.txt" \
    || { echo "sweep.py --ncu-targets without a sweep result failed" >&2; exit 2; }
  # The sweep itself, on the CPU ops at a tiny size.
  "$PY" "$OUT/sweep.py" --device cpu --case 8,2 --steps 3 --repeats 1 \
    --json "$OUT/sweep_cpu.json" > "$OUT/sweep_cpu.log" 2>&1 \
    || { echo "sweep.py fails on the CPU (see $OUT/sweep_cpu.log)" >&2; exit 2; }
  need_flags "$OUT/sweep.py" --no-kernels --case --steps --repeats --json
  "$PY" -m pytest -q --collect-only -p no:cacheprovider "${CUDA_TESTS[@]}" \
    > "$OUT/test_cuda_collect.log" 2>&1 \
    || { echo "the CUDA tests (${CUDA_TESTS[*]}) do not collect" >&2; exit 2; }
  need_flags bench/bench_rnn.py --device --tf32 --json --varlen --shapes --repeats
  need_flags bench/seq_mnist.py --data-dir --impl --batch-size --epochs \
    --max-steps --limit-test --device --out --no-progress
  if [ -n "$MNIST" ] && [ ! -d "$MNIST" ]; then
    echo "MNIST_DIR $MNIST is not a directory" >&2; exit 2
  fi
  [ -n "$SAN" ] || echo "note: compute-sanitizer not found here (needed on the GPU machine)"
  [ -n "$NCU" ] || echo "note: ncu not found here (needed on the GPU machine)"
  for s in "${STAGES[@]}"; do echo "DRY $s"; row "$s" dry - "-"; done
else
  # 1. build, sm_90 only. Without cuBLASLt the per-step GEMM tests skip or
  # test the tiled kernel only (stage 2's GEMM-choice test fails then).
  run build build.log "${STAGE_CAPS[build]}" env TORCH_CUDA_ARCH_LIST=9.0 \
    IRNN_BUILD_CUDA=1 MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
  grep -E "ptxas info +: (Used|Compiling entry)|spill" "$OUT/build.log" > "$OUT/ptxas.txt"
  if grep -q 'cuBLASLt from' "$OUT/build.log"; then lt="cuBLASLt"
  elif grep -q 'cuBLASLt not found' "$OUT/build.log"; then lt="NO cuBLASLt"
  else lt="cuBLASLt ?"; fi
  finish build build.log "$DT" "sm_90, $(grep -c 'Compiling entry' "$OUT/ptxas.txt") kernels, $lt"

  # 2. CUDA tests, failing instead of skipping; -v flushes one line per
  # test, so a timeout (no junit XML then) still says how far it got.
  run cuda-tests test_cuda.log "${STAGE_CAPS[cuda-tests]}" env IRNN_REQUIRE_GPU=1 \
    IRNN_EXPECT_CUDA=1 IRNN_EXPECT_EXT=1 "$PY" -m pytest -v -rs --durations=15 \
    -p no:cacheprovider "${CUDA_TESTS[@]}" --junitxml="$OUT/test_cuda.xml"
  finish cuda-tests test_cuda.log "$DT" "$(tests_result test_cuda.log)"

  # 3. Against cuDNN, TF32 off: the targets are read from here. The ratio
  # columns already end in "x"; "fwd\+bwd +[0-9]" leaves out fwd+bwd:last.
  run bench bench.log "${STAGE_CAPS[bench]}" "$PY" bench/bench_rnn.py \
    --device cuda --tf32 off --varlen --json "$OUT/bench.json"
  finish bench bench.log "$DT" "$(grep -E '^ *784 +(16|1024) +1 +100 +fwd\+bwd +[0-9]' "$OUT/bench.log" \
    | awk '{printf "B=%s %s/%s ms ", $2, $6, $7}')$(grep -E '^ *784 +256 +1 +100 +(fused|torch):' "$OUT/bench.log" \
    | awk '{printf "%s %s ", $5, $7}')"

  # 4. The kernels ranked; the row shows the fastest case (the table's
  # first row after its header: a warning may come before it).
  run sweep sweep.log "${STAGE_CAPS[sweep]}" "$PY" "$OUT/sweep.py" \
    --json "$OUT/sweep.json"
  finish sweep sweep.log "$DT" "$(awk 'seen { print; exit } /fwd us\/step/ { seen = 1 }' \
    "$OUT/sweep.log" | cut -c1-60)"

  # 5. ncu on today's forward (H=100, B=16) and on the fastest and slowest
  # step kernel of the sweep, one launch each. The sweep under ncu names no
  # kernels: torch.profiler would be CUPTI's second subscriber.
  if [ -z "$NCU" ]; then
    row ncu SKIP - "ncu not found"
  else
    ncu_t0=$(date +%s); ncu_st=ok; ncu_result=""
    "$PY" "$OUT/sweep.py" --ncu-targets "$OUT/sweep.json" > "$OUT/ncu_targets.txt" 2>&1
    n_left=$(grep -c '^[a-z]* [0-9]*,[0-9]* regex:' "$OUT/ncu_targets.txt")
    [ "$n_left" -gt 0 ] || { ncu_st="FAIL(targets)"; ncu_result="no targets, see ncu_targets.txt"; }
    while read -r tag case regex; do
      [ -n "$tag" ] || continue
      # An even share of what is left of the stage's cap.
      share=$(( (STAGE_CAPS[ncu] - ($(date +%s) - ncu_t0)) / n_left ))
      n_left=$(( n_left - 1 ))
      run "ncu-$tag" "ncu_$tag.log" "$share" "$NCU" --clock-control none \
        --section WarpStateStats --section InstructionStats \
        --kernel-name-base demangled -k "$regex" --launch-count 1 \
        "$PY" "$OUT/sweep.py" --case "$case" --steps 64 --repeats 1 --no-kernels
      st=$(status "ncu_$tag.log")
      [ "$st" = ok ] || ncu_st=$st
      ncu_result+="$tag $st, "
    done < <(grep '^[a-z]* [0-9]*,[0-9]* regex:' "$OUT/ncu_targets.txt")
    case "$ncu_st" in ok|n/a) ;; *) FAILED=1 ;; esac
    row ncu "$ncu_st" "$(( $(date +%s) - ncu_t0 ))s" "${ncu_result}ncu_*.log"
  fi

  # 6. compute-sanitizer racecheck and synccheck.
  if [ -z "$SAN" ]; then
    row sanitizer SKIP - "compute-sanitizer not found"; FAILED=1
  else
    san_t0=$(date +%s); san_st=ok
    for tool in racecheck synccheck; do
      run "sanitizer-$tool" "sanitizer_$tool.log" "${SUB_CAPS[sanitizer-$tool]}" "$SAN" --tool "$tool" \
        --error-exitcode 3 "$PY" "$OUT/sanitize_case.py"
      st=$(status "sanitizer_$tool.log")
      [ "$st" = ok ] || san_st=$st
    done
    case "$san_st" in ok|n/a) ;; *) FAILED=1 ;; esac
    san_result=""
    for tool in racecheck synccheck; do
      san_result+="$tool: $(grep -oE 'ERROR SUMMARY: [0-9]+ errors?' \
        "$OUT/sanitizer_$tool.log" | tail -n 1 | sed 's/ERROR SUMMARY: //') "
    done
    row sanitizer "$san_st" "$(( $(date +%s) - san_t0 ))s" "$san_result"
  fi

  # 7. A short training run per implementation.
  if [ -z "$MNIST" ]; then
    row mnist SKIP - "no MNIST_DIR given"
  elif [ ! -d "$MNIST" ]; then
    row mnist SKIP - "MNIST_DIR $MNIST not found"
  else
    mn_t0=$(date +%s); mn_st=ok
    for impl in fused torch; do
      rm -rf "$OUT/mnist_$impl"  # the program refuses a run directory in use
      run "mnist-$impl" "mnist_$impl.log" "${SUB_CAPS[mnist-$impl]}" "$PY" bench/seq_mnist.py \
        --data-dir "$MNIST" --impl "$impl" --batch-size 1024 --epochs 1 \
        --max-steps 40 --limit-test 1024 --device cuda --no-progress \
        --out "$OUT/mnist_$impl"
      st=$(status "mnist_$impl.log")
      [ "$st" = ok ] || mn_st=$st
    done
    case "$mn_st" in ok|n/a) ;; *) FAILED=1 ;; esac
    row mnist "$mn_st" "$(( $(date +%s) - mn_t0 ))s" "mnist_{fused,torch}.log"
  fi

  # 8. The per-step path (H > 512) against cuDNN: cuBLASLt, then tiled,
  # then cuBLASLt with the op's CUDA graphs.
  lh_t0=$(date +%s); lh_st=ok
  run large-h-cublaslt large_h_cublaslt.log "${SUB_CAPS[large-h-cublaslt]}" "$PY" bench/bench_rnn.py \
    --device cuda --tf32 off --repeats 3 --json "$OUT/large_h_cublaslt.json" \
    --shapes 784x16x1x1024,784x128x1x1024,784x1024x1x1024,784x16x1x2048,784x128x1x2048
  st=$(status large_h_cublaslt.log); [ "$st" = ok ] || lh_st=$st
  run large-h-tiled large_h_tiled.log "${SUB_CAPS[large-h-tiled]}" env IRNN_CUDA_GEMM=tiled \
    "$PY" bench/bench_rnn.py --device cuda --tf32 off --repeats 2 \
    --json "$OUT/large_h_tiled.json" --shapes 784x16x1x1024,784x128x1x1024
  st=$(status large_h_tiled.log); [ "$st" = ok ] || lh_st=$st
  run large-h-graphs large_h_graphs.log "${SUB_CAPS[large-h-graphs]}" env IRNN_CUDA_GRAPHS=1 \
    "$PY" bench/bench_rnn.py --device cuda --tf32 off --repeats 3 \
    --json "$OUT/large_h_graphs.json" --shapes 784x16x1x1024,784x128x1x1024
  st=$(status large_h_graphs.log); [ "$st" = ok ] || lh_st=$st
  # H = 2048 at B = 1024 (about 10 s) only in what the budget has left over
  # from the stages before (ncu and the sanitizer are n/a under gVisor); a
  # timeout here fails nothing.
  lh_left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$lh_left" -ge 20 ]; then
    run large-h-2048 large_h_2048.log "$lh_left" "$PY" bench/bench_rnn.py \
      --device cuda --tf32 off --repeats 2 --json "$OUT/large_h_2048.json" \
      --shapes 784x1024x1x2048
    st=$(status large_h_2048.log)
    case "$st" in ok|timeout) ;; *) lh_st=$st ;; esac
  else
    echo "H=2048, B=1024: ${lh_left}s left, not run" > "$OUT/large_h_2048.log"
  fi
  [ "$lh_st" = ok ] || FAILED=1
  row large-h "$lh_st" "$(( $(date +%s) - lh_t0 ))s" "$(grep -hE '^ *784 +(16|128|1024) +1 +(1024|2048) +fwd\+bwd +[0-9]' \
    "$OUT/large_h_cublaslt.log" "$OUT/large_h_2048.log" | awk '{printf "H=%s,B=%s %s ", $4, $2, $8}')"
fi

# The speed targets against the bench and large-h JSONs: a report (no
# stage, no cap; a dry run has no JSON, so every row reads "missing").
"$PY" bench/gpu_targets.py "$OUT" > "$OUT/targets.md" 2>&1 \
  || { echo "bench/gpu_targets.py failed (see targets.md)"; FAILED=1; }
summary
pack
if [ "$DRY" = 1 ] && [ -n "$PACK" ]; then
  # What comes back from the GPU machine: the archive and the table.
  tar tzf "$PACK/gpu_check.tgz" | grep -qx "$(basename "$OUT")/summary.txt" \
    || { echo "$PACK/gpu_check.tgz does not hold summary.txt" >&2; exit 2; }
  cmp -s "$SUMMARY" "$PACK/summary.txt" \
    || { echo "$PACK/summary.txt is not the table" >&2; exit 2; }
  echo "PACK $PACK/gpu_check.tgz"
fi
echo
cat "$OUT/targets.md"
echo
cat "$SUMMARY"
exit $FAILED
