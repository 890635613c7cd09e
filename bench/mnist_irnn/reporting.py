"""What a run reports: config.json, metrics.csv/.json, curves.png and the
console lines. Files go through files.atomic_write."""
import csv
import datetime
import io
import json
import os
import platform
import sys

import torch

import irnn_cuda

from .files import atomic_write
from .model import mean_length


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
        # The CPU kernels' build (avx512, avx2, generic); None on a GPU.
        "irnn_cuda_cpu_kernels": (irnn_cuda.cpu_kernels() if dev.type == "cpu"
                                  else None),
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


def warn_once(message):
    if message not in _warned:
        _warned.add(message)
        print(f"seq_mnist: warning: {message}", file=sys.stderr)


def _write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=1))


def write_config(out, settings, data, d):
    """config.json of a new run: the settings, data and environment."""
    _write_json(os.path.join(out, "config.json"), {
        "settings": settings, "data": data.source,
        "train_images": len(data.train[0]), "val_images": len(data.val[0]),
        "test_images": len(data.test[0]),
        **({"mean_train_length": mean_length(data.train[0])}
           if settings.get("variable_length") else {}),
        "environment": environment(d),
        "resumes": []})


def record_resume(out, original, resume):
    """Appends `resume` to config.json's "resumes", keeping the rest.

    `original` is the checkpoint's settings, used only when config.json is
    missing or unreadable (a resume into another --out, or a lost file).
    """
    path = os.path.join(out, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
        if not isinstance(config, dict) or "settings" not in config:
            raise ValueError("no settings")
    except (OSError, ValueError):
        config = {"settings": original, "resumes": []}
    config.setdefault("resumes", []).append(dict(
        resume, time=datetime.datetime.now().isoformat(timespec="seconds"),
        command=sys.argv))
    _write_json(path, config)


def write_metrics(out, rows):
    _write_json(os.path.join(out, "metrics.json"), rows)
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(out, "metrics.csv"), text.getvalue())
    if rows:
        plot_curves(out, rows)


def plot_curves(out, rows):
    try:
        import matplotlib
    except ImportError:
        warn_once("matplotlib is not installed: no curves.png "
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
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    atomic_write(os.path.join(out, "curves.png"), image.getvalue())


def epoch_line(row, steps):
    """The console line of an epoch; `steps`: the optimiser steps it took,
    of which row["skipped_steps"] were skipped."""
    parts = [f"epoch {row['epoch']}" + (" (partial)" if row["partial"] else ""),
             f"train_loss {row['train_loss']:.4f}",
             f"train_acc {row['train_acc']:.4f}",
             f"skipped {row['skipped_steps']}/{steps} steps"]
    if "rollbacks" in row:
        parts.append(f"rollbacks {row['rollbacks']} (lr x{row['lr_scale']:g})")
    if "val_loss" in row:
        parts += [f"val_loss {row['val_loss']:.4f}",
                  f"val_acc {row['val_acc']:.4f}"]
    parts += [f"test_loss {row['test_loss']:.4f}",
              f"test_acc {row['test_acc']:.4f}",
              f"{row['seconds']:.1f}s", f"{row['samples_per_s']:.0f} samples/s"]
    return "  ".join(parts)
