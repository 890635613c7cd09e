"""The MNIST splits on the training device, the epoch order and batches."""
import torch

import mnist_data

from .errors import ConfigError

STEPS = mnist_data.IMAGE_SIDE * mnist_data.IMAGE_SIDE


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
