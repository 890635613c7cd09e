"""Where one training step of bench/seq_mnist.py spends its time on the CPU.

Runs the program's own parts (model, optimiser, batching) for --steps steps
at --batch-size and times each phase of a step separately:

    index     the batch gathered from the training set and scaled (to_pixels)
    layer     the recurrent layer's forward (FusedIRNN, last state only)
    head      the Linear head and the loss
    backward  loss.backward(): the head's and the layer's backward
    clip      clip_grad_norm_
    optim     optimizer.step() and zero_grad()
    sync      the per-step statistics brought to the host (.tolist())

    python bench/train_step_split.py --data-dir ../shared/data/mnist --threads 1

Phases are timed one after another in one process (the CPU runs them
synchronously); the table gives the mean per step and the share of the
step. No GPU timing: on a GPU the phases overlap and need a profiler.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist_irnn import config as settings  # noqa: E402
from mnist_irnn.data import Data, epoch_order, to_pixels  # noqa: E402
from mnist_irnn.model import SeqMNISTModel, make_optimizer  # noqa: E402

PHASES = ("index", "layer", "head", "backward", "clip", "optim", "sync")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = settings.resolve_config({"data_dir": args.data_dir,
                                      "batch_size": args.batch_size,
                                      "device": "cpu"})
    torch.manual_seed(0)
    model = SeqMNISTModel(config["hidden"], "fused", config["init"])
    optimizer = make_optimizer(config, model.parameters())
    images, labels = Data(config, torch.device("cpu")).train
    order = epoch_order(len(images), 0, 1)
    totals = dict.fromkeys(PHASES, 0.0)
    B = args.batch_size
    for step in range(args.warmup + args.steps):
        stamps = [time.perf_counter()]
        idx = order[(step * B) % (len(order) - B):][:B]
        x, y = to_pixels(images[idx]), labels[idx]
        stamps.append(time.perf_counter())
        seq = x.t().unsqueeze(-1).contiguous()
        _, h_n = model.rnn(seq, return_sequence=False)
        stamps.append(time.perf_counter())
        logits = model.fc(h_n[-1])
        losses = F.cross_entropy(logits, y, reduction="none")
        stamps.append(time.perf_counter())
        losses.mean().backward()
        stamps.append(time.perf_counter())
        nn.utils.clip_grad_norm_(model.parameters(), config["clip_norm"])
        stamps.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
        torch.stack([losses.detach().double().sum(),
                     (logits.argmax(1) == y).sum().double()]).tolist()
        stamps.append(time.perf_counter())
        if step >= args.warmup:
            for phase, t0, t1 in zip(PHASES, stamps, stamps[1:]):
                totals[phase] += t1 - t0
    whole = sum(totals.values())
    print(f"batch {B}, {args.steps} steps, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}: {whole / args.steps * 1e3:.2f} ms/step")
    print(f"{'phase':>9} {'ms/step':>8} {'share':>6}")
    for phase in PHASES:
        print(f"{phase:>9} {totals[phase] / args.steps * 1e3:>8.3f} "
              f"{totals[phase] / whole:>6.1%}")


if __name__ == "__main__":
    main()
