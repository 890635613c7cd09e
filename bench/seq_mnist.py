"""Pixel-by-pixel MNIST with an IRNN (Le, Jaitly & Hinton 2015).

The setup of the Keras `mnist_irnn` example: every 28x28 image is read one
pixel per step (784 steps, input size 1, pixels scaled to [0, 1]) by one
layer of ReLU units with W_hh = I and W_ih ~ N(0, 0.001^2); the last hidden
state feeds a 10-way linear layer trained with softmax cross-entropy.

    python bench/seq_mnist.py --data-dir ../shared/data/mnist
    python bench/seq_mnist.py --preset keras-example
    torchrun --nproc_per_node=2 bench/seq_mnist.py ...

See docs/seq_mnist.md for every flag, the run directory and measured results.
"""
import argparse
import csv
import datetime
import json
import math
import os
import platform
import random
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import irnn_cuda

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_data  # noqa: E402  (bench/ is not a package)

CHECKPOINT_FORMAT = "irnn_cuda.seq_mnist/1"
STEPS = mnist_data.IMAGE_SIDE * mnist_data.IMAGE_SIDE

# Learning rates when --lr is not given: the Keras example's for RMSprop,
# the usual ones for the others.
DEFAULT_LR = {"rmsprop": 1e-6, "sgd": 1e-2, "adam": 1e-3}

# Every setting, with the notebook's defaults (IRNN initialisation restored).
DEFAULTS = {
    "impl": "fused", "init": "irnn", "hidden": 100, "optimizer": "rmsprop",
    "lr": None, "clip_norm": None, "batch_size": 1024, "epochs": 10,
    "seed": 0, "permute": False, "limit_train": None, "limit_test": None,
    "val_split": 0, "max_steps": None, "eval_batch_size": 1024,
    "device": "auto", "data_dir": None, "out": None, "resume": None,
    "eval_only": None, "on_nonfinite": "stop", "preset": None,
    "progress": True,
}
PRESETS = {
    # Exactly the example's code: batch 32, 200 epochs; its clip_norm = 1.0
    # is never passed to the optimiser, so no clipping.
    "keras-example": {"batch_size": 32, "epochs": 200, "clip_norm": None},
}
# On --resume the checkpoint's settings apply. These may be changed there by
# an explicit flag; the others are fixed by the checkpoint.
MAY_CHANGE = {"epochs", "eval_batch_size", "device", "data_dir",
              "on_nonfinite", "progress"}
# These belong to one invocation and are not saved.
PER_RUN = {"max_steps", "out", "resume", "eval_only"}


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        epilog="Defaults: the notebook's setup with the IRNN initialisation "
               "restored (RMSprop lr 1e-6, batch 1024, 10 epochs, hidden "
               "100). Data: --data-dir, else $IRNN_MNIST_DIR, else a "
               "torchvision download into ./data.")
    model = p.add_argument_group("model and training")
    model.add_argument("--impl", choices=["fused", "torch", "reference"],
                       help="recurrent layer: irnn_cuda.FusedIRNN (default), "
                            "torch.nn.RNN, or the pure-PyTorch reference; "
                            "all start from the same weights for a seed")
    model.add_argument("--init", choices=["irnn", "keras-default"],
                       help="irnn (default): W_hh = I, W_ih ~ N(0, 0.001^2); "
                            "keras-default: glorot-uniform W_ih, orthogonal "
                            "W_hh (the notebook that stayed at 11%%)")
    model.add_argument("--hidden", type=int, help="hidden units (100)")
    model.add_argument("--optimizer", choices=["rmsprop", "sgd", "adam"],
                       help="rmsprop (default; Keras rho 0.9, eps 1e-7), "
                            "sgd or adam")
    model.add_argument("--lr", type=float,
                       help="learning rate (rmsprop 1e-6, sgd 1e-2, adam "
                            "1e-3)")
    model.add_argument("--clip-norm", type=float,
                       help="clip the global gradient norm (off by default)")
    model.add_argument("--batch-size", type=int,
                       help="global batch size, over all ranks (1024)")
    model.add_argument("--epochs", type=int, help="epochs in all (10)")
    model.add_argument("--seed", type=int,
                       help="seeds the weights, shuffling and --permute (0)")
    model.add_argument("--permute", action="store_true",
                       help="permuted pixel MNIST, one fixed permutation "
                            "drawn from the seed")
    model.add_argument("--preset", choices=sorted(PRESETS),
                       help="keras-example: batch 32, 200 epochs, no "
                            "clipping; explicit flags still win")
    data = p.add_argument_group("data")
    data.add_argument("--data-dir",
                      help="folder with the four MNIST IDX files (gzipped or "
                           "not); default $IRNN_MNIST_DIR, else download")
    data.add_argument("--limit-train", type=int,
                      help="train on the first N training images")
    data.add_argument("--limit-test", type=int,
                      help="test on the first N test images")
    data.add_argument("--val-split", type=int,
                      help="hold the last N training images out for "
                           "validation (selects best.pt)")
    data.add_argument("--max-steps", type=int,
                      help="stop once this many optimiser steps (counted "
                           "from the start of training) are done")
    run = p.add_argument_group("run")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"],
                     help="auto (default): cuda when available")
    run.add_argument("--out", help="run directory (runs/<timestamp>; with "
                                   "--resume, the resumed directory)")
    run.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its last.pt")
    run.add_argument("--eval-only", metavar="CHECKPOINT",
                     help="only evaluate a checkpoint (a .pt file or a run "
                          "directory) on the test set")
    run.add_argument("--on-nonfinite", choices=["stop", "skip"],
                     help="non-finite loss: stop (default; last.pt keeps "
                          "the last good state) or skip the step")
    run.add_argument("--eval-batch-size", type=int,
                     help="batch size for evaluation (1024)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar")
    return p


class ConfigError(SystemExit):
    """A bad setting, file or checkpoint: exits with its message."""

    def __init__(self, message):
        super().__init__(f"seq_mnist: error: {message}")


# ----------------------------------------------------------------- settings

def resolve_config(explicit, saved=None):
    """Defaults < preset < saved checkpoint config < explicit flags."""
    config = dict(DEFAULTS)
    preset = explicit.get("preset", (saved or {}).get("preset"))
    if preset:
        config.update(PRESETS[preset])
    if saved:
        for key, value in saved.items():
            if key in DEFAULTS and key not in PER_RUN:
                config[key] = value
        for key, value in explicit.items():
            if (key not in PER_RUN | MAY_CHANGE
                    and value != saved.get(key, value)):
                raise ConfigError(
                    f"--{key.replace('_', '-')} {value} conflicts with the "
                    f"checkpoint, which was trained with "
                    f"{key} = {saved.get(key)}; drop the flag to resume")
    config.update(explicit)
    if config["lr"] is None:
        config["lr"] = DEFAULT_LR[config["optimizer"]]
    for key in ("hidden", "batch_size", "epochs", "eval_batch_size"):
        if config[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1")
    for key in ("limit_train", "limit_test", "max_steps"):
        if config[key] is not None and config[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least 1")
    if config["val_split"] < 0:
        raise ConfigError("--val-split must not be negative")
    if config["clip_norm"] is not None and config["clip_norm"] <= 0:
        raise ConfigError("--clip-norm must be positive")
    return config


# ------------------------------------------------------------- distributed

class Dist:
    """The process group when launched by torchrun, else one process."""

    def __init__(self, device_choice):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_choice == "auto":
            device_choice = "cuda" if torch.cuda.is_available() else "cpu"
        if device_choice == "cuda":
            if not torch.cuda.is_available():
                raise ConfigError("--device cuda but no CUDA GPU is visible")
            self.device = torch.device("cuda", self.local_rank
                                       % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world > 1
        if self.enabled:
            dist.init_process_group(
                "nccl" if self.device.type == "cuda" else "gloo",
                device_id=self.device if self.device.type == "cuda" else None)

    @property
    def main(self):
        return self.rank == 0

    def all_sum(self, tensor):
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def close(self):
        if self.enabled:
            dist.destroy_process_group()


# -------------------------------------------------------------------- model

class SeqMNISTModel(nn.Module):
    """Recurrent layer -> last hidden state -> Linear(hidden, 10).

    The recurrent layer is always an nn.RNN (FusedIRNN subclasses it), so
    the parameter names and the state_dict are the same for every --impl
    and checkpoints move freely between them.
    """

    def __init__(self, hidden, impl, init):
        super().__init__()
        self.impl = impl
        rnn = irnn_cuda.FusedIRNN(1, hidden, nonlinearity="relu",
                                  init="irnn" if init == "irnn" else "torch")
        if init == "keras-default":
            with torch.no_grad():
                nn.init.xavier_uniform_(rnn.weight_ih_l0)
                nn.init.orthogonal_(rnn.weight_hh_l0)
                rnn.bias_ih_l0.zero_()
                rnn.bias_hh_l0.zero_()
        # Keras' Dense defaults, as in the example: glorot-uniform, zero bias.
        self.fc = nn.Linear(hidden, mnist_data.NUM_CLASSES)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.fc.weight)
            self.fc.bias.zero_()
        # Converted last: nn.RNN's constructor draws from the global RNG.
        self.rnn = rnn if impl == "fused" else rnn.to_rnn()

    def forward(self, pixels):
        """pixels: [B, 784] in [0, 1] -> logits [B, 10]."""
        x = pixels.t().unsqueeze(-1).contiguous()  # [T=784, B, I=1]
        if self.impl == "fused":
            _, h_n = self.rnn(x, return_sequence=False)
        elif self.impl == "torch":
            _, h_n = self.rnn(x)
        else:
            r = self.rnn
            h0 = x.new_zeros(1, x.shape[1], r.hidden_size)
            _, h_n = irnn_cuda.irnn_reference(
                x, h0, [r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0,
                        r.bias_hh_l0], "relu", 1, False, False, 0.0,
                self.training)
        return self.fc(h_n[-1])


def make_optimizer(config, params):
    name, lr = config["optimizer"], config["lr"]
    if name == "rmsprop":  # Keras semantics: rho 0.9, epsilon 1e-7
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


# --------------------------------------------------------------------- data

class Data:
    """The splits as flat uint8 pixels [N, 784] on the training device."""

    def __init__(self, config, device):
        (train_x, train_y, test_x, test_y), self.source = \
            mnist_data.load_mnist(config["data_dir"])
        train_x = train_x.reshape(len(train_x), -1)
        test_x = test_x.reshape(len(test_x), -1)
        if config["permute"]:
            g = torch.Generator().manual_seed(config["seed"])
            perm = torch.randperm(STEPS, generator=g)
            train_x, test_x = train_x[:, perm], test_x[:, perm]
        val = config["val_split"]
        if val >= len(train_x):
            raise ConfigError(f"--val-split {val} leaves no training images "
                              f"(the training set has {len(train_x)})")
        self.val = (train_x[len(train_x) - val:], train_y[len(train_y) - val:])
        train_x, train_y = train_x[:len(train_x) - val], train_y[:len(train_y) - val]
        n = config["limit_train"] or len(train_x)
        self.train = (train_x[:n], train_y[:n])
        n = config["limit_test"] or len(test_x)
        self.test = (test_x[:n], test_y[:n])
        to = lambda split: tuple(t.to(device) for t in split)  # noqa: E731
        self.train, self.val, self.test = map(to, (self.train, self.val,
                                                   self.test))


def epoch_order(n, seed, epoch):
    """The training order of one epoch: a function of (seed, epoch) only,
    so every rank and every resumed run draws the same one."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def epoch_batches(n, batch, world):
    """(start, stop) of each global batch. With several ranks the last,
    partial batch is cut to a multiple of the world size (at most world-1
    images are dropped) so that every rank gets the same share."""
    bounds = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        stop -= (stop - start) % world
        if stop > start:
            bounds.append((start, stop))
    return bounds


def to_pixels(images):
    return images.float().div_(255.0)


@torch.no_grad()
def evaluate(model, split, batch_size, d):
    """(mean loss, accuracy) over a split, sharded across ranks."""
    images, labels = split
    totals = torch.zeros(3, dtype=torch.float64, device=images.device)
    was_training = model.training
    model.eval()
    for start in range(d.rank * batch_size, len(images), batch_size * d.world):
        x = to_pixels(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        logits = model(x)
        totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += len(y)
    model.train(was_training)
    loss, correct, count = d.all_sum(totals).tolist()
    return (loss / count, correct / count) if count else (math.nan, math.nan)


# -------------------------------------------------------------- checkpoints

def rng_states():
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def atomic_save(obj, path):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path):
    """A checkpoint file (or a run directory's last.pt), checked."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise ConfigError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean "corrupt"
        raise ConfigError(f"{path} is corrupt or not a checkpoint "
                          f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a seq_mnist checkpoint (expected "
                          f"format {CHECKPOINT_FORMAT!r})")
    return ckpt, path


def load_model_state(model, ckpt, path):
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"{path} does not match the model "
                          f"(hidden {ckpt['config'].get('hidden')}): "
                          f"{exc}") from exc


# ------------------------------------------------------------------ outputs

def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(d):
    try:
        import torchvision
        tv = torchvision.__version__
    except ImportError:
        tv = None
    dev = d.device
    return {
        "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": tv, "irnn_cuda": irnn_cuda.__version__,
        "irnn_cuda_kernels": irnn_cuda.has_kernels(dev.type),
        "cuda": torch.version.cuda, "platform": platform.platform(),
        "device": str(dev),
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else _cpu_name()),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cpu_threads": torch.get_num_threads(), "world_size": d.world,
        "command": sys.argv,
    }


_warned = set()


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        print(f"seq_mnist: warning: {message}", file=sys.stderr)


def write_metrics(out, rows):
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(rows, f, indent=1)
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plot_curves(out, rows)


def plot_curves(out, rows):
    try:
        import matplotlib
    except ImportError:
        _warn_once("matplotlib is not installed: no curves.png "
                   "(pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val", "test"):
        if f"{split}_loss" not in rows[-1]:
            continue
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], "o-",
                     label=split)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in rows], "o-",
                    label=split)
    for ax, name in ((ax_loss, "cross-entropy"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("IRNN, pixel-by-pixel MNIST")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)


def _fmt(row):
    parts = [f"epoch {row['epoch']}" + (" (partial)" if row["partial"] else ""),
             f"train_loss {row['train_loss']:.4f}",
             f"train_acc {row['train_acc']:.4f}"]
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}",
                  f"val_acc {row['val_acc']:.4f}"]
    parts += [f"test_loss {row['test_loss']:.4f}",
              f"test_acc {row['test_acc']:.4f}",
              f"{row['seconds']:.1f}s", f"{row['samples_per_s']:.0f} samples/s"]
    return "  ".join(parts)


# ----------------------------------------------------------------- training

class NonFiniteLoss(Exception):
    pass


def train(config, d):
    saved = None
    if config["resume"]:
        saved, ckpt_path = load_checkpoint(config["resume"])
    out = config["out"] or config["resume"] or os.path.join(
        "runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    config["out"] = out

    torch.manual_seed(config["seed"])
    random.seed(config["seed"])
    model = SeqMNISTModel(config["hidden"], config["impl"], config["init"])
    model.to(d.device)
    optimizer = make_optimizer(config, model.parameters())
    rows, start_epoch, start_batch, step, best_val = [], 1, 0, 0, -1.0
    partial = None
    if saved:
        load_model_state(model, saved, ckpt_path)
        try:
            optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{ckpt_path}: optimiser state does not match "
                              f"{config['optimizer']}: {exc}") from exc
        set_rng_states(saved["rng"])
        rows = saved["metrics"]
        step, best_val = saved["step"], saved["best_val_acc"]
        start_epoch, start_batch = saved["epoch"], saved["batches_done"]
        partial = saved["epoch_totals"]
        if start_batch == 0:  # the saved epoch was complete
            start_epoch += 1
    data = Data(config, d.device)
    ddp = model
    if d.enabled:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device] if d.device.type == "cuda" else None)

    if d.main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"settings": config, "data": data.source,
                       "train_images": len(data.train[0]),
                       "val_images": len(data.val[0]),
                       "test_images": len(data.test[0]),
                       "environment": environment(d),
                       "resumed_from_step": step if saved else None},
                      f, indent=1)
        print(f"seq_mnist: impl {config['impl']}, init {config['init']}, "
              f"hidden {config['hidden']}, {config['optimizer']} lr "
              f"{config['lr']:g}, batch {config['batch_size']}"
              f"{f' over {d.world} ranks' if d.enabled else ''}, "
              f"{len(data.train[0])} train / {len(data.test[0])} test images"
              f", device {d.device}, run dir {out}", flush=True)

    def save_state(names, epoch, batches_done, totals):
        if not d.main:
            return
        state = {"format": CHECKPOINT_FORMAT,
                 "config": {k: v for k, v in config.items()
                            if k not in PER_RUN},
                 "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "rng": rng_states(),
                 "epoch": epoch, "batches_done": batches_done,
                 "epoch_totals": totals, "step": step,
                 "best_val_acc": best_val, "metrics": rows}
        for name in names:
            atomic_save(state, os.path.join(out, name))

    n_train = len(data.train[0])
    batches = epoch_batches(n_train, config["batch_size"], d.world)
    status, final = "done", (rows[-1] if rows else None)
    for epoch in range(start_epoch, config["epochs"] + 1):
        if config["max_steps"] is not None and step >= config["max_steps"]:
            break
        order = epoch_order(n_train, config["seed"], epoch).to(d.device)
        first = start_batch if epoch == start_epoch else 0
        # loss_sum, correct, count, skipped, seconds (carried over a resume)
        totals = list(partial) if (partial and first) else [0.0, 0, 0, 0, 0.0]
        t0 = time.perf_counter() - totals[4]
        bar = None
        if d.main and config["progress"] and tqdm is not None:
            bar = tqdm(total=len(batches), initial=first,
                       desc=f"epoch {epoch}/{config['epochs']}",
                       unit="batch", leave=False, dynamic_ncols=True)
        done = first
        try:
            for start, stop in batches[first:]:
                if config["max_steps"] is not None and step >= config["max_steps"]:
                    status = "max_steps"
                    break
                share = (stop - start) // d.world
                lo = start + d.rank * share
                idx = order[lo:lo + share]
                x, y = to_pixels(data.train[0][idx]), data.train[1][idx]
                logits = ddp(x)
                losses = F.cross_entropy(logits, y, reduction="none")
                stats = torch.stack([
                    losses.detach().double().sum(),
                    (logits.argmax(1) == y).sum().double(),
                    torch.tensor(float(len(y)), dtype=torch.float64,
                                 device=x.device),
                    (~torch.isfinite(losses.detach())).any().double()])
                loss_sum, correct, count, bad = d.all_sum(stats).tolist()
                step += 1
                done += 1
                if bad:
                    if config["on_nonfinite"] == "stop":
                        raise NonFiniteLoss(
                            f"non-finite loss at epoch {epoch}, step {step} "
                            f"(batch {done} of {len(batches)})")
                    totals[3] += 1
                    if bar:
                        bar.update(1)
                    continue
                # mean over the global batch: DDP averages over the ranks
                (losses.sum() * (d.world / (stop - start))).backward()
                if config["clip_norm"] is not None:
                    nn.utils.clip_grad_norm_(model.parameters(),
                                             config["clip_norm"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                totals[0] += loss_sum
                totals[1] += int(correct)
                totals[2] += int(count)
                if bar:
                    seen = totals[2] + totals[3]
                    bar.set_postfix(
                        loss=f"{totals[0] / max(totals[2], 1):.4f}",
                        acc=f"{totals[1] / max(totals[2], 1):.4f}",
                        samples_s=f"{seen / (time.perf_counter() - t0):.0f}",
                        refresh=False)
                    bar.update(1)
        except NonFiniteLoss as exc:
            if bar:
                bar.close()
            kept = os.path.join(out, "last.pt")
            raise ConfigError(
                f"{exc}; stopping. {kept if os.path.exists(kept) else 'No checkpoint'}"
                f" keeps the last good state (written at the end of the "
                f"previous epoch). Lower --lr, set --clip-norm, or pass "
                f"--on-nonfinite skip to skip such steps.") from None
        if bar:
            bar.close()
        seconds = time.perf_counter() - t0
        totals[4] = seconds
        complete = done == len(batches)
        row = {"epoch": epoch, "partial": not complete, "steps": step,
               "train_loss": totals[0] / totals[2] if totals[2] else math.nan,
               "train_acc": totals[1] / totals[2] if totals[2] else math.nan,
               "skipped_steps": totals[3]}
        if len(data.val[0]):
            row["val_loss"], row["val_acc"] = evaluate(
                model, data.val, config["eval_batch_size"], d)
        row["test_loss"], row["test_acc"] = evaluate(
            model, data.test, config["eval_batch_size"], d)
        row["seconds"] = seconds
        row["samples_per_s"] = (totals[2] + totals[3]) / seconds if seconds else 0.0
        names = ["last.pt"]
        if complete:
            rows.append(row)
            if len(data.val[0]) and row["val_acc"] > best_val:
                best_val = row["val_acc"]
                names.append("best.pt")
        save_state(names, epoch, 0 if complete else done,
                   None if complete else totals)
        if d.main:
            write_metrics(out, rows if complete else rows + [row])
            print(_fmt(row), flush=True)
        final = row
        if status == "max_steps":
            break
    return final, out


def eval_only(config, d):
    ckpt, path = load_checkpoint(config["eval_only"])
    saved = ckpt["config"]
    model = SeqMNISTModel(saved["hidden"], config["impl"], saved["init"])
    load_model_state(model, ckpt, path)
    model.to(d.device)
    data_config = dict(saved, data_dir=config["data_dir"],
                       limit_test=config["limit_test"])
    data = Data(data_config, d.device)
    loss, acc = evaluate(model, data.test, config["eval_batch_size"], d)
    if d.main:
        print(f"{path}: epoch {ckpt['epoch']}, step {ckpt['step']}: "
              f"test_loss {loss:.4f}  test_acc {acc:.4f} on "
              f"{len(data.test[0])} test images")
        print(f"final test accuracy: {acc:.4f}")
    return {"test_loss": loss, "test_acc": acc}


def main(argv=None):
    explicit = vars(build_parser().parse_args(argv))
    saved = None
    if explicit.get("resume") and explicit.get("eval_only"):
        raise ConfigError("--resume and --eval-only exclude each other")
    if explicit.get("resume"):
        saved = load_checkpoint(explicit["resume"])[0]["config"]
    config = resolve_config(explicit, saved)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not config["eval_only"] and config["batch_size"] % world:
        raise ConfigError(f"--batch-size {config['batch_size']} does not "
                          f"divide by the {world} processes: the global "
                          "batch must split evenly across ranks (choose a "
                          f"multiple of {world})")
    d = Dist(config["device"])
    try:
        if config["eval_only"]:
            return eval_only(config, d), None
        final, out = train(config, d)
        if d.main and final is not None:
            print(f"final test accuracy: {final['test_acc']:.4f}", flush=True)
        return final, out
    finally:
        d.close()


if __name__ == "__main__":
    try:
        main()
    except mnist_data.MnistError as exc:
        sys.exit(f"seq_mnist: error: {exc}")
