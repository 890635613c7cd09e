"""Evaluation: loss and accuracy over a split, and --eval-only."""
import math

import torch
import torch.nn.functional as F

from .checkpoints import load_model_state
from .data import Data, to_pixels
from .errors import DivergedError
from .model import SeqMNISTModel


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


def evaluate_checkpoint(config, ckpt, path, d):
    """--eval-only: the checkpoint's model on the test set. `config` is
    the checkpoint's settings with the flags --eval-only may change."""
    model = SeqMNISTModel(config["hidden"], config["impl"], config["init"],
                          config["variable_length"],
                          config["input_norm"])
    load_model_state(model, ckpt, path)
    model.to(d.device)
    data = Data(config, d.device)
    loss, acc = evaluate(model, data.test, config["eval_batch_size"], d)
    if d.main:
        print(f"{path}: epoch {ckpt['epoch']}, step {ckpt['step']}: "
              f"test_loss {loss:.4f}  test_acc {acc:.4f} on "
              f"{len(data.test[0])} test images")
    if not math.isfinite(loss):
        raise DivergedError(f"{path}: the test loss is not finite; the "
                            f"checkpoint holds a diverged model")
    if d.main:
        print(f"final test accuracy: {acc:.4f}")
    return {"test_loss": loss, "test_acc": acc}
