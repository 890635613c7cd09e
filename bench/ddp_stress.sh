#!/usr/bin/env bash
# Stress check for distributed runs of bench/seq_mnist.py: N short
# two-process (gloo, CPU) torchrun runs, J at a time, each checked for a
# clean end. Prints the failure count and keeps the first failing run's log.
#
#   bash bench/ddp_stress.sh N [--jobs J] [--data-dir DIR] [--out DIR] [-- ARGS...]
#
#   N           runs in all
#   --jobs J    runs at the same time (default 3)
#   --data-dir  MNIST IDX files (default ../shared/data/mnist)
#   --out DIR   where each run's folder and log go (default: a new temp dir)
#   -- ARGS     extra bench/seq_mnist.py arguments for every run
#
# A run passes when torchrun exits 0, rank 0 reports both ranks ("over 2
# ranks"), last.pt exists, and no rank printed a C++ abort ("terminate
# called"), a Python traceback or a signal. Exit status: 0 when every run
# passed, 1 otherwise, 2 on a usage error. $PYTHON picks the interpreter.
set -u
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
N=$1; shift
case $N in ''|*[!0-9]*) echo "ddp_stress: N must be a positive integer, got '$N'" >&2; exit 2;; esac
[ "$N" -ge 1 ] || { echo "ddp_stress: N must be at least 1" >&2; exit 2; }
JOBS=3
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
DATA="$ROOT/../shared/data/mnist"
OUT=""
EXTRA=()
while [ $# -gt 0 ]; do
  case $1 in
    --jobs|--data-dir|--out)
      [ $# -ge 2 ] || { echo "ddp_stress: $1 needs a value" >&2; exit 2; };;&
    --jobs) JOBS=$2; shift 2;;
    --data-dir) DATA=$2; shift 2;;
    --out) OUT=$2; shift 2;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "ddp_stress: unknown argument '$1'" >&2; usage;;
  esac
done
case $JOBS in ''|*[!0-9]*|0) echo "ddp_stress: --jobs must be a positive integer, got '$JOBS'" >&2; exit 2;; esac
[ -d "$DATA" ] || { echo "ddp_stress: --data-dir $DATA is not a directory" >&2; exit 2; }
PY=${PYTHON:-python}
if [ -z "$OUT" ]; then OUT=$(mktemp -d "${TMPDIR:-/tmp}/ddp_stress.XXXXXX"); fi
mkdir -p "$OUT" || exit 2
export OMP_NUM_THREADS=1
# A rank that aborts prints its Python threads' stacks into its log.
export PYTHONFAULTHANDLER=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# One run; its verdict is the file $OUT/run_I.verdict (ok, or why not).
one_run() {
  local i=$1 dir="$OUT/run_$1" log="$OUT/run_$1.log" rc why=""
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 \
    "$ROOT/bench/seq_mnist.py" --data-dir "$DATA" --device cpu --no-progress \
    --limit-train 128 --limit-test 16 --hidden 16 --optimizer sgd --lr 0.1 \
    --clip-norm 0.01 --batch-size 32 --max-steps 2 --out "$dir" \
    ${EXTRA[@]+"${EXTRA[@]}"} > "$log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then why="exit status $rc"
  elif ! grep -q "over 2 ranks" "$log"; then why="no 'over 2 ranks' line"
  elif [ ! -f "$dir/last.pt" ]; then why="no last.pt"
  elif grep -q -e "terminate called" -e "Traceback" -e "Signal" -e "SIGABRT" -e "core dumped" "$log"
  then why="an abort, traceback or signal in the log"
  fi
  echo "${why:-ok}" > "$OUT/run_$i.verdict"
}

START=$(date +%s)
running=0
for i in $(seq 1 "$N"); do
  one_run "$i" &
  running=$((running + 1))
  if [ $running -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait

failed=0
first=""
for i in $(seq 1 "$N"); do
  verdict=$(cat "$OUT/run_$i.verdict" 2>/dev/null || echo "no verdict")
  if [ "$verdict" != ok ]; then
    failed=$((failed + 1))
    if [ -z "$first" ]; then
      first=$i
      cp "$OUT/run_$i.log" "$OUT/first_failure.log"
      echo "first failure: run $i ($verdict); its log: $OUT/first_failure.log"
    fi
  fi
done
echo "ddp_stress: $failed of $N runs failed ($JOBS at a time, $(( $(date +%s) - START )) s, logs in $OUT)"
[ $failed -eq 0 ]
