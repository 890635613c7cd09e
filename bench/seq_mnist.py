"""Pixel-by-pixel MNIST with an IRNN (Le, Jaitly & Hinton 2015).

The setup of the Keras `mnist_irnn` example: every 28x28 image is read one
pixel per step (784 steps, input size 1, pixels scaled to [0, 1]) by one
layer of ReLU units with W_hh = I and W_ih ~ N(0, 0.001^2); the last hidden
state feeds a 10-way linear layer trained with softmax cross-entropy.

    python bench/seq_mnist.py --data-dir ../shared/data/mnist
    python bench/seq_mnist.py --preset keras-example
    torchrun --nproc_per_node=2 bench/seq_mnist.py ...

The parts live in bench/mnist_irnn/; this file reads the flags and runs
them. See docs/seq_mnist.md for every flag, the run directory and measured
results.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_data  # noqa: E402  (bench/ is not a package)
from mnist_irnn.checkpoints import load_checkpoint  # noqa: E402
from mnist_irnn.config import (EVAL_MAY_CHANGE, build_parser,  # noqa: E402
                               resolve_config)
from mnist_irnn.data import to_pixels  # noqa: E402,F401  (used by the tests)
from mnist_irnn.distributed import Dist  # noqa: E402
from mnist_irnn.errors import ConfigError  # noqa: E402
from mnist_irnn.evaluation import evaluate_checkpoint  # noqa: E402
from mnist_irnn.model import SeqMNISTModel  # noqa: E402,F401  (the tests)
from mnist_irnn.training import train  # noqa: E402


def main(argv=None):
    """Runs the program; returns (final row or eval result, run dir)."""
    explicit = vars(build_parser().parse_args(argv))
    if explicit.get("resume") and explicit.get("eval_only"):
        raise ConfigError("--resume and --eval-only exclude each other")
    ckpt = path = None
    if explicit.get("eval_only"):
        ckpt, path = load_checkpoint(explicit["eval_only"])
        # the model and its data are the checkpoint's; how to evaluate is not
        saved = {k: v for k, v in ckpt["config"].items()
                 if k not in EVAL_MAY_CHANGE}
        config = resolve_config(explicit, saved, EVAL_MAY_CHANGE)
    elif explicit.get("resume"):
        ckpt, path = load_checkpoint(explicit["resume"])
        config = resolve_config(explicit, ckpt["config"])
    else:
        config = resolve_config(explicit)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not config["eval_only"] and config["batch_size"] % world:
        raise ConfigError(f"--batch-size {config['batch_size']} does not "
                          f"divide by the {world} processes: the global "
                          "batch must split evenly across ranks (choose a "
                          f"multiple of {world})")
    d = Dist(config["device"])
    succeeded = False
    try:
        if config["eval_only"]:
            result = evaluate_checkpoint(config, ckpt, path, d), None
        else:
            result = train(config, d, ckpt, path)
            if d.main and result[0] is not None:
                print(f"final test accuracy: {result[0]['test_acc']:.4f}",
                      flush=True)
        succeeded = True
        return result
    finally:
        d.close(succeeded)


if __name__ == "__main__":
    try:
        main()
    except mnist_data.MnistError as exc:
        sys.exit(f"seq_mnist: error: {exc}")
