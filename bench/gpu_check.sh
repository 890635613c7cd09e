#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU (a lent H100/H200: its own
# Python and torch, no network, no pip). Run from anywhere:
#
#   bash bench/gpu_check.sh OUTDIR [MNIST_DIR]          # on the GPU machine
#   bash bench/gpu_check.sh --dry-run OUTDIR [MNIST_DIR] # anywhere, no GPU
#
# Steps, each under `timeout` and all within one 8-minute budget:
#   1. build the extension in place against the torch found, for the
#      visible GPU's architecture only (TORCH_CUDA_ARCH_LIST);
#   2. the CUDA tests (tests/test_cuda.py) with IRNN_REQUIRE_GPU=1, so they
#      fail rather than skip;
#   3. compute-sanitizer memcheck and racecheck on a small forward+backward
#      (persistent and large-H paths);
#   4. bench/bench_rnn.py against cuDNN (T=784, H=100, I=1,
#      B in {16, 128, 1024}) with TF32 off, then on;
#   5. with MNIST_DIR: one epoch of bench/seq_mnist.py, fused and torch, at
#      batch 32 and 1024.
# Every step writes its log (and JSON where it has one) into OUTDIR as it
# goes; a summary table is printed last and saved as OUTDIR/summary.txt.
# --dry-run checks each step's files and command lines without a GPU.
set -u

DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 [--dry-run] OUTDIR [MNIST_DIR]" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
MNIST="${2:-}"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}   # 8 minutes less a margin
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY.rows"
FAILED=0
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

remaining() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# step NAME CAP_S LOG CMD...: runs CMD under timeout min(CAP_S, time left),
# output to OUTDIR/LOG, and records a summary row. In dry runs, prints it.
step() {
  local name=$1 cap=$2 log=$3; shift 3
  if [ "$DRY" = 1 ]; then
    printf 'DRY %-20s %s\n' "$name" "$*"
    printf '%-20s %-8s %6s  %s\n' "$name" "dry" "-" "$log" >> "$SUMMARY.rows"
    return 0
  fi
  local left; left=$(remaining)
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 10 ]; then
    printf '%-20s %-8s %6s  %s\n' "$name" "no-time" "-" "$log" >> "$SUMMARY.rows"
    echo "== $name: skipped, the 8-minute budget is spent"
    return 1
  fi
  echo "== $name (limit ${limit}s): $*"
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local status=ok
  if [ $rc = 124 ] || [ $rc = 137 ]; then status=timeout; elif [ $rc != 0 ]; then status="FAIL($rc)"; fi
  # A tool that refuses this machine (TOLERATE: a pattern of its log) is
  # reported as n/a rather than as a failure of the kernels.
  if [ "$status" != ok ] && [ -n "${TOLERATE:-}" ] && grep -q -- "$TOLERATE" "$OUT/$log"; then
    status=n/a
  fi
  case "$status" in ok|n/a) ;; *) FAILED=1 ;; esac
  printf '%-20s %-8s %5ss  %s\n' "$name" "$status" "$dt" "$log" >> "$SUMMARY.rows"
  tail -n 5 "$OUT/$log"
  [ "$status" = ok ]
}

skip() {  # skip NAME WHY
  printf '%-20s %-8s %6s  %s\n' "$1" "SKIP" "-" "$2" >> "$SUMMARY.rows"
  echo "SKIP $1: $2"
}

# Files every step needs.
need_files=(setup.py tests/test_cuda.py csrc/cuda/irnn_kernels.cuh)
for f in "${need_files[@]}"; do
  if [ ! -f "$f" ]; then echo "missing $f" >&2; exit 2; fi
done
[ -n "$PY" ] || { echo "no python found" >&2; exit 2; }

# 0. What machine this is.
{
  date -u
  nvidia-smi 2>&1 | head -n 15
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda); print('gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
} > "$OUT/env.txt" 2>&1

# 1. Build for the visible GPU only (fast), requiring the CUDA kernels.
if [ "$DRY" = 1 ]; then
  ARCH="9.0"
else
  ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo "")
  [ -n "$ARCH" ] || { echo "no CUDA GPU visible to torch" >&2; FAILED=1; ARCH="9.0"; }
fi
step build 200 build.log env TORCH_CUDA_ARCH_LIST="$ARCH" IRNN_BUILD_CUDA=1 \
  MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
if [ "$DRY" = 0 ]; then
  grep -E "ptxas info +: (Used|Compiling entry)|spill" "$OUT/build.log" > "$OUT/ptxas.txt" || true
fi

# 2. The CUDA tests, failing instead of skipping.
if [ "$DRY" = 1 ]; then
  "$PY" -m pytest -q --collect-only -p no:cacheprovider tests/test_cuda.py \
    > "$OUT/test_cuda_collect.log" 2>&1 \
    || { echo "tests/test_cuda.py does not collect (see $OUT/test_cuda_collect.log)" >&2; exit 2; }
fi
step cuda-tests 150 test_cuda.log env IRNN_REQUIRE_GPU=1 IRNN_EXPECT_CUDA=1 \
  "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
  --junitxml="$OUT/test_cuda.xml"

# 3. compute-sanitizer on a small forward+backward of both paths.
cat > "$OUT/sanitize_case.py" <<'EOF'
import torch
import irnn_cuda  # noqa: F401  (registers the ops)
ops = torch.ops.irnn_cuda
for H, B, I in ((33, 20, 1), (100, 7, 0), (257, 5, 1)):
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
SAN="$(command -v compute-sanitizer || true)"
if [ -z "$SAN" ]; then
  for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
    if [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ]; then SAN="$d/bin/compute-sanitizer"; break; fi
  done
fi
if [ -n "$SAN" ] || [ "$DRY" = 1 ]; then
  [ -n "$SAN" ] || echo "note: compute-sanitizer not found here (needed on the GPU machine)"
  # Under gVisor compute-sanitizer answers "Device not supported".
  for tool in memcheck racecheck; do
    TOLERATE="Device not supported" step "sanitizer-$tool" 75 \
      "sanitizer_$tool.log" "${SAN:-compute-sanitizer}" --tool "$tool" \
      --error-exitcode 3 "$PY" "$OUT/sanitize_case.py"
  done
else
  skip sanitizer "compute-sanitizer not found"; FAILED=1
fi
"$PY" -c "import ast, sys; ast.parse(open(sys.argv[1]).read())" "$OUT/sanitize_case.py" \
  || { echo "sanitize_case.py does not parse" >&2; exit 2; }

# 4. Kernel benchmark against cuDNN, TF32 off then on.
if [ -f bench/bench_rnn.py ]; then
  if [ "$DRY" = 1 ]; then
    help=$("$PY" bench/bench_rnn.py --help 2>&1)
    for flag in --device --batches --tf32 --json; do
      grep -q -- "$flag" <<< "$help" || { echo "bench_rnn.py lacks $flag" >&2; exit 2; }
    done
  fi
  for tf32 in off on; do
    step "bench-tf32-$tf32" 75 "bench_tf32_$tf32.log" "$PY" bench/bench_rnn.py \
      --device cuda --batches 16,128,1024 --tf32 "$tf32" \
      --json "$OUT/bench_tf32_$tf32.json"
  done
else
  skip bench "bench/bench_rnn.py not present (not merged yet)"
fi

# 5. One epoch of sequential MNIST per implementation and batch size.
if [ -n "$MNIST" ]; then
  if [ ! -f bench/seq_mnist.py ]; then
    skip seq-mnist "bench/seq_mnist.py not present (not merged yet)"
  elif [ ! -d "$MNIST" ]; then
    echo "MNIST_DIR $MNIST is not a directory" >&2; exit 2
  else
    if [ "$DRY" = 1 ]; then
      help=$("$PY" bench/seq_mnist.py --help 2>&1)
      for flag in --data-dir --impl --batch-size --epochs --device --out; do
        grep -q -- "$flag" <<< "$help" || { echo "seq_mnist.py lacks $flag" >&2; exit 2; }
      done
    fi
    for bs in 1024 32; do
      for impl in fused torch; do
        step "mnist-$impl-$bs" 60 "mnist_${impl}_$bs.log" "$PY" bench/seq_mnist.py \
          --data-dir "$MNIST" --impl "$impl" --batch-size "$bs" --epochs 1 \
          --device cuda --out "$OUT/mnist_${impl}_$bs"
      done
    done
  fi
else
  skip seq-mnist "no MNIST_DIR given"
fi

{
  echo "gpu_check $( [ "$DRY" = 1 ] && echo '(dry run) ')$(date -u) in $(( $(date +%s) - START ))s"
  sed -n 's/^gpu /GPU: /p; s/^torch /torch: /p' "$OUT/env.txt"
  printf '%-20s %-8s %6s  %s\n' step status time log
  cat "$SUMMARY.rows"
} > "$SUMMARY"
rm -f "$SUMMARY.rows"
if [ "$DRY" = 0 ]; then
  for tf32 in off on; do
    if [ -f "$OUT/bench_tf32_$tf32.log" ]; then
      echo "--- bench_rnn.py, TF32 $tf32 (tail)" >> "$SUMMARY"
      tail -n 12 "$OUT/bench_tf32_$tf32.log" >> "$SUMMARY"
    fi
  done
  grep -E "passed|failed|error" "$OUT/test_cuda.log" 2>/dev/null | tail -n 1 >> "$SUMMARY"
fi
echo
cat "$SUMMARY"
exit $FAILED
