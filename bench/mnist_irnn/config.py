"""Settings: the flags, their defaults, the presets, and which settings a
resumed run or an evaluation may change. Layering: defaults < preset <
the checkpoint's settings < explicit flags; every value is checked here,
before anything is loaded or written."""
import argparse
import math
import os

from .errors import ConfigError

DESCRIPTION = "Pixel-by-pixel MNIST with an IRNN (Le, Jaitly & Hinton 2015)."

# Learning rates when --lr is not given: the Keras example's for RMSprop;
# for Adam the default recipe's (docs/seq_mnist.md, "Recipes").
DEFAULT_LR = {"rmsprop": 1e-6, "sgd": 1e-2, "adam": 5e-5}

# Every setting, with the default recipe: the best measured one that fits
# 10 epochs (Adam at lr 5e-5 with 1000 steps of warm-up and a cosine decay,
# gradient-norm clipping 1, batch 32; docs/seq_mnist.md).
DEFAULTS = {
    "impl": "fused", "init": "irnn", "hidden": 100, "optimizer": "adam",
    "lr": None, "clip_norm": 1.0, "batch_size": 32, "epochs": 10,
    "lr_schedule": "cosine", "warmup_steps": 1000,
    "seed": 0, "permute": False, "limit_train": None, "limit_test": None,
    "val_split": 0, "max_steps": None, "eval_batch_size": 1024,
    "device": "auto", "data_dir": None, "out": None, "resume": None,
    "eval_only": None, "on_nonfinite": "stop", "max_rollbacks": 3,
    "preset": None, "progress": True, "variable_length": False,
    "input_norm": "unit",
}
# Settings a checkpoint written before they existed was trained with.
LEGACY = {"lr_schedule": "constant", "warmup_steps": 0, "max_rollbacks": 3,
          "variable_length": False, "input_norm": "unit"}
# Each preset's source is in docs/seq_mnist.md ("Recipes").
PRESETS = {
    # The Keras notebook's setup with the IRNN initialisation restored:
    # RMSprop lr 1e-6 (rho 0.9, eps 1e-7), batch 1024, 10 epochs.
    "notebook": {"optimizer": "rmsprop", "lr": None, "clip_norm": None,
                 "batch_size": 1024, "epochs": 10, "lr_schedule": "constant",
                 "warmup_steps": 0},
    # Exactly the example's code: RMSprop lr 1e-6, batch 32, 200 epochs; its
    # clip_norm = 1.0 is never passed to the optimiser, so no clipping.
    "keras-example": {"optimizer": "rmsprop", "lr": None, "clip_norm": None,
                      "batch_size": 32, "epochs": 200,
                      "lr_schedule": "constant", "warmup_steps": 0},
    # The default recipe over 40 epochs on standardized pixels: Adam lr
    # 5e-5, 1000 warm-up steps, cosine decay over the 40 epochs, clipping 1,
    # batch 32, --input-norm standard.
    "fast": {"optimizer": "adam", "lr": 5e-5, "clip_norm": 1.0,
             "batch_size": 32, "epochs": 40, "lr_schedule": "cosine",
             "warmup_steps": 1000, "input_norm": "standard"},
    # Le et al. 2015: plain SGD, lr 1e-8 and gradient-norm clipping 1 on
    # pixel MNIST (1e-6 and 10 with --permute, see PAPER_PERMUTED), about
    # 1 M iterations; the batch size (16 here) could not be confirmed.
    "paper": {"optimizer": "sgd", "lr": 1e-8, "clip_norm": 1.0,
              "batch_size": 16, "epochs": 267, "lr_schedule": "constant",
              "warmup_steps": 0},
}
PAPER_PERMUTED = {"lr": 1e-6, "clip_norm": 10.0}
# On --resume the checkpoint's settings apply. These may be changed there by
# an explicit flag; the others are fixed by the checkpoint.
MAY_CHANGE = {"epochs", "eval_batch_size", "device", "data_dir",
              "on_nonfinite", "max_rollbacks", "progress"}
# What --eval-only may choose for itself; the model and the data
# (--hidden, --permute, --seed, ...) are the checkpoint's.
EVAL_MAY_CHANGE = {"impl", "limit_test", "eval_batch_size", "device",
                   "data_dir", "progress"}
# These belong to one invocation and are not saved.
PER_RUN = {"max_steps", "out", "resume", "eval_only"}
# The per-epoch shuffle seeds a generator with seed * 1_000_003 + epoch,
# which must stay inside the generator's 64 bits.
MAX_SEED = 2**32 - 1


def flag(key):
    return "--" + key.replace("_", "-")


def build_parser():
    p = argparse.ArgumentParser(
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
        epilog="Defaults: Adam lr 5e-5 (1000 steps of warm-up, then a cosine "
               "decay), gradient-norm clipping 1, batch 32, 10 epochs, hidden 100, IRNN initialisation; the notebook's "
               "setup is --preset notebook. Data: --data-dir, else $IRNN_MNIST_DIR, else a "
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
                       help="adam (default), rmsprop (Keras rho 0.9, eps "
                            "1e-7) or sgd")
    model.add_argument("--lr", type=float,
                       help="learning rate (adam 5e-5, rmsprop 1e-6, sgd "
                            "1e-2)")
    model.add_argument("--clip-norm", type=float,
                       help="clip the global gradient norm (1; 0 turns "
                            "clipping off)")
    model.add_argument("--batch-size", type=int,
                       help="global batch size, over all ranks (32)")
    model.add_argument("--epochs", type=int, help="epochs in all (10)")
    model.add_argument("--seed", type=int,
                       help="seeds the weights, shuffling and --permute (0; "
                            f"0 to {MAX_SEED})")
    model.add_argument("--permute", action="store_true",
                       help="permuted pixel MNIST, one fixed permutation "
                            "drawn from the seed")
    model.add_argument("--variable-length", action="store_true",
                       help="each image ends after its last row holding a "
                            "non-zero pixel (a variable-length batch, run "
                            "as a PackedSequence); pixel order only")
    model.add_argument("--input-norm", choices=["unit", "standard"],
                       help="unit (default): pixels in [0, 1]; standard: "
                            "(pixel - 0.1307) / 0.3081, the MNIST training "
                            "pixels' mean and standard deviation")
    model.add_argument("--lr-schedule", choices=["constant", "cosine"],
                       help="cosine (default): decay to zero at the run's "
                            "last step, after the warm-up; or constant")
    model.add_argument("--warmup-steps", type=int,
                       help="steps of linear warm-up to --lr (1000)")
    model.add_argument("--preset", choices=sorted(PRESETS),
                       help="notebook: RMSprop lr 1e-6, batch 1024, 10 "
                            "epochs; keras-example: the same at batch 32, "
                            "200 epochs; fast: the default over 40 "
                            "epochs on standardized pixels; paper: Le et "
                            "al.'s SGD (lr 1e-8, clip 1; permuted 1e-6, "
                            "clip 10). Explicit flags still win")
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
    run.add_argument("--out", help="run directory, new or empty (default "
                                   "runs/<timestamp>; with --resume, the "
                                   "resumed directory)")
    run.add_argument("--resume", metavar="DIR",
                     help="continue the run in DIR from its last.pt")
    run.add_argument("--eval-only", metavar="CHECKPOINT",
                     help="only evaluate a checkpoint (a .pt file or a run "
                          "directory) on the test set")
    run.add_argument("--on-nonfinite", choices=["stop", "skip", "rollback"],
                     help="non-finite loss: stop (default; last.pt keeps "
                          "the state it last saved), skip the step, or "
                          "rollback: restore the last good state kept in "
                          "memory and halve the lr")
    run.add_argument("--max-rollbacks", type=int,
                     help="with --on-nonfinite rollback: stop after this "
                          "many rollbacks (3)")
    run.add_argument("--eval-batch-size", type=int,
                     help="batch size for evaluation (1024)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar")
    return p


def resolve_config(explicit, saved=None, may_change=MAY_CHANGE):
    """Defaults < preset < saved checkpoint config < explicit flags.

    With `saved`, an explicit flag outside `may_change` must agree with it.
    """
    config = dict(DEFAULTS)
    preset = explicit.get("preset", (saved or {}).get("preset"))
    if preset:
        config.update(PRESETS[preset])
        if preset == "paper" and explicit.get(
                "permute", (saved or {}).get("permute")):
            config.update(PAPER_PERMUTED)
    if saved:
        saved = dict(LEGACY, **saved)
        for key, value in saved.items():
            if key in DEFAULTS and key not in PER_RUN:
                config[key] = value
        for key, value in explicit.items():
            if (key not in PER_RUN | may_change
                    and value != saved.get(key, value)):
                raise ConfigError(
                    f"{flag(key)} {value} conflicts with the checkpoint, "
                    f"which was trained with {key} = {saved.get(key)}; drop "
                    f"the flag")
    config.update(explicit)
    if config["clip_norm"] == 0:
        config["clip_norm"] = None
    if config["lr"] is None:
        config["lr"] = DEFAULT_LR[config["optimizer"]]
    if explicit.get("data_dir") is not None:
        # saved in the checkpoint: a resume may start in another directory
        config["data_dir"] = os.path.abspath(explicit["data_dir"])
    elif config["data_dir"] and not os.path.isdir(config["data_dir"]):
        raise ConfigError(
            f"the checkpoint's data folder {config['data_dir']} is not "
            f"found from {os.getcwd()} (a relative path is relative to "
            f"where that run started); pass --data-dir")
    check(config)
    return config


def check(config):
    for key in ("hidden", "batch_size", "epochs", "eval_batch_size"):
        if config[key] < 1:
            raise ConfigError(f"{flag(key)} must be at least 1")
    for key in ("warmup_steps", "max_rollbacks"):
        if config[key] < 0:
            raise ConfigError(f"{flag(key)} must not be negative")
    for key in ("limit_train", "limit_test", "max_steps"):
        if config[key] is not None and config[key] < 1:
            raise ConfigError(f"{flag(key)} must be at least 1")
    if config["val_split"] < 0:
        raise ConfigError("--val-split must not be negative")
    if not (math.isfinite(config["lr"]) and config["lr"] > 0):
        raise ConfigError(f"--lr must be a positive finite number, got "
                          f"{config['lr']}")
    if config["clip_norm"] is not None and not (
            math.isfinite(config["clip_norm"]) and config["clip_norm"] > 0):
        raise ConfigError(f"--clip-norm must be a positive finite number, "
                          f"got {config['clip_norm']}")
    if config["variable_length"] and config["permute"]:
        raise ConfigError("--variable-length crops each image after its last "
                          "non-zero pixel row, which only has a meaning in "
                          "pixel order; drop --permute or --variable-length")
    if not 0 <= config["seed"] <= MAX_SEED:
        raise ConfigError(f"--seed must be between 0 and {MAX_SEED}, got "
                          f"{config['seed']}")
