"""The GPU work's speed targets against a GPU check's measurements: one table
of every target, the row it is read from, the measured ratio and whether it
is met. A report, not a test: it prints what it finds and exits 0 (2 only
when it cannot read its input).

    python bench/gpu_targets.py OUTDIR            # a bench/gpu_check.sh folder
    python bench/gpu_targets.py --bench bench.json [--large-h a.json ...]

The targets (T = 784, I = 1, float32, TF32 off, against nn.RNN on cuDNN,
medians of FusedIRNN and nn.RNN interleaved in one process; docs/cuda.md):
- register-resident forward, H = 100: at least 3x at B = 16, 1x at every
  B of the check (16, 128, 1024), 1x at H = 64 and 128;
- register-resident backward, forward+backward, H = 100: at least 2x at
  B = 16 and 1024, 1x at B = 128, 1x at H = 64 and 128;
- cluster kernels, forward+backward: H = 256 and 512 at least 1.5x at
  B = 16 and 1x at B = 128; H = 256 at least 1x at B = 1024 (H = 512 at
  B = 1024 is reported, without a target);
- per-step path, forward+backward: H = 1024 and 2048 at least 1x at
  B = 16, 128 and 1024 (the large-H JSONs);
- variable length (T = 784, B = 256, H = 100): FusedIRNN on the
  PackedSequence no slower than FusedIRNN padded, and at least 2x nn.RNN on
  the PackedSequence.
"""
import argparse
import json
import os
import sys

# (group, mode, H, B, at least): the ratio is nn.RNN's median time over
# FusedIRNN's (bench_rnn.py's "speedup"); None: reported, no target.
TARGETS = (
    [("register forward", "fwd", 100, 16, 3.0)]
    + [("register forward", "fwd", 100, b, 1.0) for b in (128, 1024)]
    + [("register forward", "fwd", h, b, 1.0) for h in (64, 128)
       for b in (16, 1024)]
    + [("register fwd+bwd", "fwd+bwd", 100, b, 2.0) for b in (16, 1024)]
    + [("register fwd+bwd", "fwd+bwd", 100, 128, 1.0)]
    + [("register fwd+bwd", "fwd+bwd", h, b, 1.0) for h in (64, 128)
       for b in (16, 1024)]
    + [("cluster fwd+bwd", "fwd+bwd", h, 16, 1.5) for h in (256, 512)]
    + [("cluster fwd+bwd", "fwd+bwd", h, 128, 1.0) for h in (256, 512)]
    + [("cluster fwd+bwd", "fwd+bwd", 256, 1024, 1.0),
       ("cluster fwd+bwd", "fwd+bwd", 512, 1024, None)]
    + [("per-step fwd+bwd", "fwd+bwd", h, b, 1.0) for h in (1024, 2048)
       for b in (16, 128, 1024)]
)
VARLEN = (784, 256, 100)  # T, B, H of the variable-length batch


def load_rows(paths):
    """The rows of the bench_rnn.py JSONs that exist; later files' rows
    after earlier ones'. Missing files are skipped (a stage that did not
    run); an unreadable one stops the report."""
    rows = []
    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                rows += json.load(f)["rows"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"gpu_targets: cannot read {path}: {err}", file=sys.stderr)
            raise SystemExit(2)
    return rows


def find(rows, mode, H, B, T=784, I=1):
    """The first row of that shape and mode (a later duplicate, the same
    shape measured again, is ignored), or None."""
    for r in rows:
        if (r.get("mode"), r.get("H"), r.get("B"), r.get("T"), r.get("I")) == \
                (mode, H, B, T, I):
            return r
    return None


def verdict(ratio, least):
    if ratio is None:
        return "missing"
    if least is None:
        return "reported"
    return "met" if ratio >= least else "NOT met"


def report(rows):
    """The table's lines (markdown) and a count of each verdict."""
    lines = ["| group | mode | H | B | target | measured | fused ms | "
             "nn.RNN ms | verdict |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    counts = {}

    def add(group, mode, H, B, least, ratio, ours, theirs):
        v = verdict(ratio, least)
        counts[v] = counts.get(v, 0) + 1
        fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
        lines.append(f"| {group} | {mode} | {H} | {B} | "
                     f"{'-' if least is None else f'{least:g}x'} | "
                     f"{fmt(ratio, '.2f')}{'' if ratio is None else 'x'} | "
                     f"{fmt(ours, '.3f')} | {fmt(theirs, '.3f')} | {v} |")

    for group, mode, H, B, least in TARGETS:
        r = find(rows, mode, H, B)
        add(group, mode, H, B, least, r and r.get("speedup"),
            r and r.get("fused_ms"), r and r.get("torch_ms"))
    T, B, H = VARLEN
    packed = find(rows, "varlen:fused:packed", H, B, T)
    for name, least, what in (("fused:padded", 1.0, "packed vs fused padded"),
                              ("torch:packed", 2.0, "packed vs nn.RNN packed")):
        other = find(rows, f"varlen:{name}", H, B, T)
        ratio = (other["ms"] / packed["ms"]
                 if packed and other and packed.get("ms") else None)
        add("variable length", what, H, B, least, ratio,
            packed and packed.get("ms"), other and other.get("ms"))
    return lines, counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", nargs="?",
                    help="a bench/gpu_check.sh output folder (bench.json, "
                         "large_h_cublaslt.json, large_h_2048.json)")
    ap.add_argument("--bench", help="bench_rnn.py's JSON of the check's shapes")
    ap.add_argument("--large-h", nargs="*", default=[],
                    help="bench_rnn.py's JSONs of the large-H shapes")
    args = ap.parse_args(argv)
    if args.outdir:
        paths = [os.path.join(args.outdir, n) for n in
                 ("bench.json", "large_h_cublaslt.json", "large_h_2048.json")]
    elif args.bench:
        paths = [args.bench] + args.large_h
    else:
        ap.error("give OUTDIR or --bench")
    rows = load_rows(paths)
    lines, counts = report(rows)
    print("\n".join(lines))
    print()
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f" (from {sum(os.path.exists(p) for p in paths)} of {len(paths)} "
          "JSON files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
