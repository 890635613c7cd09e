"""MNIST for bench/seq_mnist.py: IDX files from a folder, else torchvision.

The four files may be gzipped or not. They are validated by their IDX magic
numbers and dimensions (not by MNIST checksums), so any IDX data set of
28x28 uint8 images with labels 0-9 works. Images come back as uint8
[N, 28, 28] and labels as int64 [N], on the CPU.
"""
import gzip
import os
import zlib

import torch

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = [name for split in FILES.values() for name in split]
ENV_VAR = "IRNN_MNIST_DIR"
IMAGE_SIDE = 28
NUM_CLASSES = 10

_UBYTE = 0x08  # IDX type code for unsigned bytes, the only one MNIST uses


class MnistError(RuntimeError):
    """A data file is missing, truncated or not the IDX file it should be."""


def how_to_provide():
    """The message that names the four files and both ways to provide them."""
    names = "\n".join(f"  {name}[.gz]" for name in ALL_FILES)
    return (f"MNIST needs these four IDX files (gzipped or not):\n{names}\n"
            f"Provide them either way:\n"
            f"  1. put them in a folder and pass --data-dir DIR (or set "
            f"{ENV_VAR}=DIR);\n"
            f"  2. with internet access and no local copy, let "
            f"torchvision.datasets.MNIST download them (pip install "
            f"torchvision).")


def _find(data_dir, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path, ndim, item_shape=()):
    """Reads one uint8 IDX file as a tensor, checking magic and size.

    ndim: the number of dimensions the file must declare; item_shape: the
    sizes required after the first (for images (28, 28)).
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise MnistError(f"{path}: cannot read it ({exc}); the file is "
                         "truncated or not gzip data. Replace it with an "
                         "intact copy.") from exc
    if len(data) < 4:
        raise MnistError(f"{path}: truncated: {len(data)} bytes, fewer than "
                         "the 4-byte IDX magic number")
    magic = int.from_bytes(data[:4], "big")
    expected_magic = (_UBYTE << 8) | ndim
    if magic != expected_magic:
        raise MnistError(
            f"{path}: wrong IDX magic number 0x{magic:08x}, expected "
            f"0x{expected_magic:08x} (unsigned bytes, {ndim} dimension"
            f"{'s' if ndim > 1 else ''}); this is not the file it is named "
            "after")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistError(f"{path}: truncated inside the IDX header "
                         f"({len(data)} of {header} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                 for i in range(ndim))
    if item_shape and dims[1:] != tuple(item_shape):
        raise MnistError(f"{path}: items are {'x'.join(map(str, dims[1:]))}, "
                         f"expected {'x'.join(map(str, item_shape))}")
    size = 1
    for d in dims:
        size *= d
    if len(data) != header + size:
        what = "truncated" if len(data) < header + size else "too long"
        raise MnistError(f"{path}: {what}: the header declares "
                         f"{'x'.join(map(str, dims))} = {size} bytes of data, "
                         f"the file holds {len(data) - header}")
    array = torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header)
    return array.reshape(dims)


def _read_split(data_dir, split):
    image_name, label_name = FILES[split]
    image_path = _find(data_dir, image_name)
    label_path = _find(data_dir, label_name)
    images = read_idx(image_path, 3, (IMAGE_SIDE, IMAGE_SIDE))
    labels = read_idx(label_path, 1)
    if labels.shape[0] != images.shape[0]:
        raise MnistError(f"{label_path} holds {labels.shape[0]} labels but "
                         f"{image_path} holds {images.shape[0]} images")
    if labels.numel() and int(labels.max()) >= NUM_CLASSES:
        raise MnistError(f"{label_path}: label {int(labels.max())} is outside "
                         f"0-{NUM_CLASSES - 1}")
    return images, labels.long()


def load_dir(data_dir):
    """(train_images, train_labels, test_images, test_labels) from a folder."""
    missing = [name for name in ALL_FILES if _find(data_dir, name) is None]
    if missing:
        raise MnistError(f"{data_dir}: missing {', '.join(missing)} (with or "
                         f"without .gz).\n" + how_to_provide())
    return _read_split(data_dir, "train") + _read_split(data_dir, "test")


def _download(root):
    try:
        import torchvision
    except ImportError as exc:
        raise MnistError(f"no local MNIST and torchvision is not installed "
                         f"({exc}).\n" + how_to_provide()) from exc
    try:
        train = torchvision.datasets.MNIST(root, train=True, download=True)
        test = torchvision.datasets.MNIST(root, train=False, download=True)
    except Exception as exc:  # torchvision raises bare RuntimeError/URLError
        raise MnistError(f"no local MNIST, and downloading through "
                         f"torchvision into {root} failed ({exc}).\n"
                         + how_to_provide()) from exc
    return (train.data.clone(), train.targets.long(), test.data.clone(),
            test.targets.long())


def load_mnist(data_dir=None, download_root="data"):
    """Loads MNIST: data_dir, else $IRNN_MNIST_DIR, else torchvision.

    Returns (train_images, train_labels, test_images, test_labels) and a
    string saying where they came from.
    """
    data_dir = data_dir or os.environ.get(ENV_VAR) or None
    if data_dir:
        return load_dir(data_dir), os.path.abspath(data_dir)
    return _download(download_root), (f"torchvision download into "
                                      f"{os.path.abspath(download_root)}")
