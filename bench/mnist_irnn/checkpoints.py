"""Checkpoints: what they hold, saving them atomically, loading and
checking them, and restoring a run from one."""
import io
import os
import random

import torch

from .errors import CheckpointError
from .files import atomic_write

CHECKPOINT_FORMAT = "irnn_cuda.seq_mnist/1"
# Every key save_checkpoint writes; a file with the format key but without
# one of these is refused by name.
KEYS = ("config", "model", "optimizer", "rng", "epoch", "batches_done",
        "epoch_totals", "step", "best_val_acc", "metrics")


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


def save_checkpoint(state, path):
    """Serialised in memory first, so that a full disk is an OSError from
    the write (reported with the path), not torch's zip-writer message."""
    buffer = io.BytesIO()
    torch.save(dict(state, format=CHECKPOINT_FORMAT), buffer)
    atomic_write(path, buffer.getvalue())


def load_checkpoint(path):
    """A checkpoint file (or a run directory's last.pt), checked."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean "corrupt"
        raise CheckpointError(f"{path} is corrupt or not a checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a seq_mnist checkpoint "
                              f"(expected format {CHECKPOINT_FORMAT!r})")
    missing = [key for key in KEYS if key not in ckpt]
    if missing or not isinstance(ckpt["config"], dict):
        raise CheckpointError(
            f"{path} is an incomplete seq_mnist checkpoint: "
            f"{', '.join(missing) or 'config'} "
            f"{'is' if len(missing) < 2 else 'are'} missing or malformed")
    return ckpt, path


def load_model_state(model, ckpt, path):
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} does not match the model "
                              f"(hidden {ckpt['config'].get('hidden')}): "
                              f"{exc}") from exc


def restore(ckpt, path, model, optimizer):
    """Loads the weights, optimiser and RNG states of a resumed run."""
    load_model_state(model, ckpt, path)
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: optimiser state does not match "
            f"{ckpt['config'].get('optimizer')}: {exc}") from exc
    set_rng_states(ckpt["rng"])


def completed_epochs(ckpt):
    """Epochs the checkpoint has finished (its own epoch if it was saved at
    an epoch's end, else the one before)."""
    return ckpt["epoch"] if ckpt["batches_done"] == 0 else ckpt["epoch"] - 1
