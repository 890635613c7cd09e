"""Kernel benchmark: FusedIRNN against torch.nn.RNN, side by side.

Both modules get the same weights (FusedIRNN.from_rnn), the same inputs, the
same autograd mode and are asked for the same outputs; each repeat times one
then the other (alternating who goes first), and the table reports medians
and their ratio. The GEMM rate of this device, measured in the same run,
gives a floor for every row: the time its matrix products alone would take.

    python bench/bench_rnn.py --device cpu --threads 2 --json bench_cpu.json
    python bench/bench_rnn.py --device cuda --tf32 off --json bench_cuda.json
    python bench/bench_rnn.py --smoke --json /tmp/smoke.json   # CI
    python bench/bench_rnn.py --shapes 784x16x1x100,28x128x28x100
    python bench/bench_rnn.py --varlen-only --threads 2   # variable length

Rows (relu, single layer):
  fwd       forward under no_grad, full output sequence;
  fwd+bwd   forward and backward of the output sequence (weights need grad);
  last      forward under no_grad asking only for h_n
            (FusedIRNN(return_sequence=False); for nn.RNN, its h_n);
  fwd+bwd:last  forward and backward of a loss on the last state only,
            h_n.sum() + out[-1].sum(). With nn.RNN's initialisation
            (spectral radius below 1) the gradients decay towards zero going
            back in time and reach denormal floats, which cost a CPU many
            times a normal float's time unless they are flushed to zero
            (the fp32 CPU kernels do; docs/cpu.md).
Variable-length rows (--varlen, --varlen-only; shape --varlen-shape,
default 784x256x1x100): lengths uniform in [T/4, T] (seed 0, in random
order), forward+backward with a gradient on every valid output, weights needing
grad. Four contenders: FusedIRNN on the PackedSequence, FusedIRNN on the
same batch padded to T, nn.RNN padded, nn.RNN on the PackedSequence (the
packing itself is done once, outside the timing). Each row of the table is
one contender, with its time and the fused packed run's speedup over it;
max_err compares FusedIRNN packed with nn.RNN packed (output and every
weight gradient).

Floors: forward = T * 2*B*H*(I+H) FLOP at the rate of a [1024,H]x[H,H]
GEMM; forward+backward adds the same again (dh and dx through the weights)
plus dW = sum_t da_t^T [x_t, h_{t-1}] as one GEMM over all T*B rows at that
GEMM's rate. Rates are each GEMM's best sample in this run. `x_floor` =
time / floor.

The JSON holds what each figure comes from: per GEMM (info.gemm, keyed
'step:MxKxN' or 'dw:MxKxN') its shape, best time and rate; per row the FLOPs
counted at each GEMM's rate (floor_flop), so floor_ms = sum of FLOPs / rate;
and max_err, the largest difference between FusedIRNN's and nn.RNN's
results (output; h_n for 'last'; output and every weight gradient for
'fwd+bwd'), relative to the largest nn.RNN value of that result.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from irnn_cuda import FusedIRNN, cpu_kernels, cuda_gemm, has_kernels

MODES = ("fwd", "fwd+bwd", "last", "fwd+bwd:last")


class Timer:
    """Wall time on the CPU; CUDA events (no host sync inside) on a GPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def time_ms(self, fn):
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def gemm_rate(timer, m, k, n, dtype, device, repeats, flop_per_sample):
    """Best time and rate of an [m,k] x [k,n] product (a: transposed view
    when m < k, as for dW = da^T h), as {m, k, n, best_ms, gflops}. The best
    sample, not the median: a floor is what the hardware can do, and on a
    shared machine the median of a GEMM measures its neighbours."""
    a = torch.randn(k, m, dtype=dtype, device=device).t() if m < k else \
        torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    inner = max(1, int(flop_per_sample // (2 * m * k * n)))
    run = lambda: [torch.mm(a, b) for _ in range(inner)]  # noqa: E731
    run()
    best_ms = min(timer.time_ms(run) / inner for _ in range(repeats))
    return {"m": m, "k": k, "n": n, "best_ms": best_ms,
            "gflops": 2 * m * k * n / (best_ms * 1e-3) / 1e9}


def largest_rel_err(ours, theirs):
    """Largest over the pairs of max |a - b| / max |b|, in float64."""
    err = 0.0
    for a, b in zip(ours, theirs, strict=True):
        a, b = a.detach().double(), b.detach().double()
        scale = b.abs().max().item()
        err = max(err, (a - b).abs().max().item() / (scale if scale > 0 else 1.0))
    return err


def make_step(model, mode, x, grad):
    """The timed closure for one module and mode; it returns the results
    the two modules must agree on."""
    fused = isinstance(model, FusedIRNN)
    params = list(model.parameters())

    if mode == "fwd":
        def step():
            with torch.no_grad():
                return [model(x)[0]]
    elif mode == "last":
        def step():
            with torch.no_grad():
                if fused:
                    return [model(x, return_sequence=False)[1]]
                return [model(x)[1]]
    elif mode == "fwd+bwd":
        def step():
            for p in params:
                p.grad = None
            out, _ = model(x)
            out.backward(grad)
            return [out.detach()] + [p.grad for p in params]
    else:
        def step():
            for p in params:
                p.grad = None
            out, h_n = model(x)
            (h_n.sum() + out[-1].sum()).backward()
            return [out.detach()] + [p.grad for p in params]
    return step


def peak_mb(fn, device):
    """MiB the CUDA caching allocator held at its peak during fn() above
    what it held before (outputs, gradients, saved tensors, workspace)."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def bench_shape(timer, device, dtype, T, B, I, H, repeats, rates, flop_per_sample,
                done=None):
    torch.manual_seed(0)
    rnn = torch.nn.RNN(I, H, nonlinearity="relu", device=device, dtype=dtype)
    fused = FusedIRNN.from_rnn(rnn)
    x = torch.randn(T, B, I, device=device, dtype=dtype)
    grad = torch.randn(T, B, H, device=device, dtype=dtype)
    flop_fwd = T * 2 * B * H * (I + H)
    step_key = f"step:1024x{H}x{H}"
    if step_key not in rates:
        rates[step_key] = gemm_rate(timer, 1024, H, H, dtype, device,
                                    max(3, repeats), flop_per_sample)
    rows = []
    for mode in MODES:
        floor_flop = {step_key: flop_fwd}
        if mode.startswith("fwd+bwd"):
            floor_flop[step_key] = 2 * flop_fwd
            dw_key = f"dw:{H}x{T * B}x{H + I}"  # [H, T*B] x [T*B, H+I]
            if dw_key not in rates:
                rates[dw_key] = gemm_rate(timer, H, T * B, H + I, dtype,
                                          device, 3, flop_per_sample)
            floor_flop[dw_key] = flop_fwd
        floor_ms = sum(flop / (rates[key]["gflops"] * 1e9) * 1e3
                       for key, flop in floor_flop.items())
        ours = make_step(fused, mode, x, grad)
        theirs = make_step(rnn, mode, x, grad)
        max_err = largest_rel_err(ours(), theirs())
        t_ours, t_theirs = [], []
        for rep in range(repeats):
            pair = [(ours, t_ours), (theirs, t_theirs)]
            for fn, acc in (pair if rep % 2 == 0 else pair[::-1]):
                acc.append(timer.time_ms(fn))
        fused_ms, torch_ms = statistics.median(t_ours), statistics.median(t_theirs)
        # The fastest repeats too: on a shared machine they are the ones
        # least disturbed by neighbours.
        fused_min, torch_min = min(t_ours), min(t_theirs)
        rows.append({"T": T, "B": B, "I": I, "H": H, "mode": mode,
                     "fused_ms": fused_ms, "torch_ms": torch_ms,
                     "speedup": torch_ms / fused_ms, "max_err": max_err,
                     "floor_flop": floor_flop, "floor_ms": floor_ms,
                     "x_floor": fused_ms / floor_ms,
                     "torch_x_floor": torch_ms / floor_ms,
                     "fused_min_ms": fused_min, "torch_min_ms": torch_min,
                     "speedup_min": torch_min / fused_min,
                     "x_floor_min": fused_min / floor_ms})
        print(f"{T:>5} {B:>5} {I:>3} {H:>4} {mode:>8} {fused_ms:>10.2f} "
              f"{torch_ms:>10.2f} {torch_ms / fused_ms:>8.2f}x "
              f"{floor_ms:>9.2f} {fused_ms / floor_ms:>7.2f} "
              f"{torch_min / fused_min:>8.2f}x {fused_min / floor_ms:>7.2f} "
              f"{max_err:>8.1e}", flush=True)
        if device.type == "cuda" and mode == "fwd+bwd":
            # Memory of one step, against the float32 [T,B,H] sequence
            # (the backward's workspace is to stay within 2x of it).
            mem = {"fused_peak_mb": peak_mb(ours, device),
                   "torch_peak_mb": peak_mb(theirs, device),
                   "seq_f32_mb": T * B * H * 4 / 2 ** 20}
            rows[-1].update(mem)
            print("      memory (MiB above the start): FusedIRNN "
                  f"{mem['fused_peak_mb']:.1f}, nn.RNN {mem['torch_peak_mb']:.1f}, "
                  f"float32 sequence {mem['seq_f32_mb']:.1f}", flush=True)
        if done is not None:
            done(rows[-1])
    return rows


VARLEN = ("fused:packed", "fused:padded", "torch:padded", "torch:packed")


def varlen_batch(T, B, I, dtype, device):
    """Input [T,B,I], lengths [B] uniform in [T/4, T] (seed 0, not sorted)
    and a gradient for every output step."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=g)
    x = torch.randn(T, B, I, generator=g, dtype=dtype).to(device)
    return x, lengths


def bench_varlen(timer, device, dtype, T, B, I, H, repeats):
    """The four variable-length contenders (VARLEN), timed round robin."""
    from torch.nn.utils.rnn import pack_padded_sequence
    torch.manual_seed(0)
    rnn = torch.nn.RNN(I, H, nonlinearity="relu", device=device, dtype=dtype)
    fused = FusedIRNN.from_rnn(rnn)
    x, lengths = varlen_batch(T, B, I, dtype, device)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    # The gradient of each valid output is a fixed random value; padded
    # outputs get 0 in the padded runs (they are not part of the data).
    w_packed = torch.randn(packed.data.shape[0], H, dtype=dtype, device=device)
    w_padded = torch.nn.utils.rnn.pad_packed_sequence(
        packed._replace(data=w_packed), total_length=T)[0]

    def make(model, use_packed):
        params = list(model.parameters())

        def step():
            for p in params:
                p.grad = None
            if use_packed:
                out, _ = model(packed)
                out.data.backward(w_packed)
                return [out.data.detach()] + [p.grad for p in params]
            out, _ = model(x)
            out.backward(w_padded)
            return [out.detach()] + [p.grad for p in params]
        return step

    steps = {"fused:packed": make(fused, True), "fused:padded": make(fused, False),
             "torch:padded": make(rnn, False), "torch:packed": make(rnn, True)}
    max_err = largest_rel_err(steps["fused:packed"](), steps["torch:packed"]())
    times = {name: [] for name in VARLEN}
    for rep in range(repeats):
        order = VARLEN[rep % 4:] + VARLEN[:rep % 4]
        for name in order:
            times[name].append(timer.time_ms(steps[name]))
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    valid = int(lengths.sum())
    rows = []
    for name in VARLEN:
        rows.append({"T": T, "B": B, "I": I, "H": H, "mode": f"varlen:{name}",
                     "ms": med[name], "min_ms": best[name],
                     "packed_speedup": med[name] / med["fused:packed"],
                     "packed_speedup_min": best[name] / best["fused:packed"],
                     "valid_steps": valid, "padded_steps": T * B,
                     "max_err": max_err})
        print(f"{T:>5} {B:>5} {I:>3} {H:>4} {name:>13} {med[name]:>10.2f} "
              f"{med[name] / med['fused:packed']:>8.2f}x "
              f"{best[name] / best['fused:packed']:>8.2f}x {max_err:>8.1e}",
              flush=True)
    return rows


def parse_shape(ap, text):
    """'TxBxIxH' -> (T, B, I, H), each a positive int."""
    try:
        shape = tuple(int(v) for v in text.strip().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        ap.error(f"--shapes: {text!r} is not TxBxIxH with positive integers, "
                 "e.g. 784x16x1x100")
    return shape


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--batches", default="1,16,128,1024",
                    help="comma-separated batch sizes for the T=784, I=1, "
                         "H=100 rows (default 1,16,128,1024)")
    ap.add_argument("--tf32", choices=("off", "on"), default="off",
                    help="CUDA: pins cudnn and matmul allow_tf32 (default off)")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated TxBxIxH sizes to run instead of the "
                         "default set (and of --batches), e.g. 784x16x1x100")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes and few repeats (CI)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repeats per row (default 7, smoke 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU: torch.set_num_threads (default: torch's)")
    ap.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"),
                    default="float32",
                    help="of inputs and weights (default float32; on the CPU "
                         "FusedIRNN computes float16 and bfloat16 in float32)")
    ap.add_argument("--varlen", action="store_true",
                    help="also run the variable-length rows")
    ap.add_argument("--varlen-only", action="store_true",
                    help="run only the variable-length rows")
    ap.add_argument("--varlen-shape", default=None,
                    help="TxBxIxH of the variable-length batch (default "
                         "784x256x1x100; smoke 20x5x1x16)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tf32 = args.tf32 == "on"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    dtype = getattr(torch, args.dtype)
    repeats = args.repeats or (2 if args.smoke else 7)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    if args.shapes:
        shapes = [parse_shape(ap, s) for s in args.shapes.split(",") if s.strip()]
    elif args.smoke:
        shapes = [(20, b, 1, 16) for b in (1, 5)] + [(6, 3, 28, 8)]
    else:
        shapes = [(784, b, 1, 100) for b in batches]
        shapes += [(28, 128, 28, 100), (28, 1024, 28, 100)]
        # On a GPU, the cluster forward's sizes (128 < H <= 512), then the
        # register-resident kernels at H = 64 and 128; on the CPU H = 256
        # at B = 16 and 128, as before.
        if device.type == "cuda":
            shapes += [(784, b, 1, h) for h in (256, 512)
                       for b in (16, 128, 1024)]
            shapes += [(784, b, 1, h) for h in (64, 128) for b in (16, 1024)]
            # A second stacked layer's input (I = H, projected by one GEMM
            # first): the cluster forward's prefetch ring.
            shapes += [(784, 16, 256, 256)]
        else:
            shapes += [(784, 16, 1, 256), (784, 128, 1, 256)]

    info = {"device": str(device), "dtype": args.dtype,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "fused_kernels": has_kernels(device.type),
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "repeats": repeats, "smoke": args.smoke,
            "machine": platform.processor() or platform.machine()}
    if device.type == "cpu":
        info["cpu_kernels"] = cpu_kernels()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
        info["cuda_gemm"] = cuda_gemm()  # the per-step path's (H > 512)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    if not info["fused_kernels"]:
        print(f"WARNING: no compiled {device.type} kernels; FusedIRNN runs the "
              "slow reference", file=sys.stderr)

    timer = Timer(device)
    rates = {}
    if args.varlen_only:
        shapes = []
    else:
        print(f"{'T':>5} {'B':>5} {'I':>3} {'H':>4} {'mode':>8} {'fused_ms':>10} "
              f"{'torch_ms':>10} {'speedup':>9} {'floor_ms':>9} {'x_floor':>7} "
              f"{'best:spd':>9} {'x_floor':>7} {'max_err':>8}")
    rows = []

    def save():
        """The results so far into --json: a run stopped by a timeout keeps
        its completed rows. Written to a temporary file and moved, so the
        file is never half written."""
        info["gemm"] = rates
        info["gemm_gflops"] = {k: v["gflops"] for k, v in rates.items()}
        if args.json:
            tmp = f"{args.json}.tmp"
            with open(tmp, "w") as f:
                json.dump({"info": info, "rows": rows}, f, indent=1)
            os.replace(tmp, args.json)

    def done(row):  # a completed row
        rows.append(row)
        save()

    for T, B, I, H in shapes:
        bench_shape(timer, device, dtype, T, B, I, H, repeats, rates,
                    2e6 if args.smoke else 2e8, done)
    if args.varlen or args.varlen_only:
        shape = args.varlen_shape or ("20x5x1x16" if args.smoke else "784x256x1x100")
        T, B, I, H = parse_shape(ap, shape)
        print("variable length, lengths uniform in [T/4, T]; packed_x: "
              "FusedIRNN packed's speedup over the row (medians; best: "
              "fastest repeats)")
        print(f"{'T':>5} {'B':>5} {'I':>3} {'H':>4} {'contender':>13} "
              f"{'ms':>10} {'packed_x':>9} {'best:x':>9} {'max_err':>8}")
        for row in bench_varlen(timer, device, dtype, T, B, I, H, repeats):
            done(row)
    save()
    if rates:
        print("GEMM rates (GFLOP/s): " + ", ".join(
            f"{k}={v:.1f}" for k, v in info["gemm_gflops"].items()))
    return rows


if __name__ == "__main__":
    main()
