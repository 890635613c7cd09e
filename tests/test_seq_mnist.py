"""bench/seq_mnist.py end to end, on the CPU.

Every test but one runs on tiny valid IDX files written here (a few hundred
28x28 images whose last rows carry the label), so the program's behaviour is
tested on any machine. test_load_real_mnist checks the real files when
$IRNN_MNIST_DIR names them (CI sets it to ../shared/data/mnist). Runs are kept
small (a few hundred images, small hidden sizes where the test allows).
"""
import atexit
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

import irnn_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import mnist_data  # noqa: E402
import seq_mnist  # noqa: E402

SCRIPT = os.path.join(ROOT, "bench", "seq_mnist.py")
SYNTHETIC_SIZES = {"train": 512, "test": 128}


def idx_bytes(array):
    """One IDX file of unsigned bytes: magic, sizes, data."""
    header = bytes([0, 0, 0x08, array.dim()])
    for size in array.shape:
        header += int(size).to_bytes(4, "big")
    return header + array.contiguous().numpy().tobytes()


def synthetic_labels(split):
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    return torch.randint(0, 10, (SYNTHETIC_SIZES[split],), generator=g)


def write_synthetic_mnist(folder):
    """The four gzipped IDX files: noise, with row 18 + label bright."""
    for split, (images_name, labels_name) in mnist_data.FILES.items():
        labels = synthetic_labels(split)
        g = torch.Generator().manual_seed(2 if split == "train" else 3)
        images = torch.randint(0, 64, (len(labels), 28, 28), generator=g)
        images[torch.arange(len(labels)), 18 + labels, :] = 255
        for name, array in ((images_name, images), (labels_name, labels)):
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(idx_bytes(array.to(torch.uint8)))
    return folder


DATA_DIR = write_synthetic_mnist(tempfile.mkdtemp(prefix="irnn-mnist-"))
atexit.register(shutil.rmtree, DATA_DIR, True)
REAL_DIR = os.environ.get(mnist_data.ENV_VAR)
needs_real_data = pytest.mark.skipif(
    not (REAL_DIR and os.path.isdir(REAL_DIR)),
    reason=f"set {mnist_data.ENV_VAR} to a folder with the four real MNIST "
    "IDX files")


@pytest.fixture(autouse=True)
def one_thread():
    """Small runs on a shared machine: one thread is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(tmp_path, name, *args):
    """seq_mnist.main in this process; returns (final row, run dir). The lr
    is constant (no warm-up, no decay) unless args say otherwise: these runs
    are a few steps long, and their checks need the lr they pass."""
    out = str(tmp_path / name)
    argv = ["--data-dir", DATA_DIR, "--device", "cpu", "--no-progress",
            "--out", out, *map(str, args)]
    if "--resume" not in args and "--eval-only" not in args:
        argv[:0] = ["--lr-schedule", "constant", "--warmup-steps", "0"]
    return seq_mnist.main(argv)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        rows = json.load(f)
    timing = ("seconds", "samples_per_s")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows]


# --------------------------------------------------------------------- data

@needs_real_data
def test_load_real_mnist():
    (train_x, train_y, test_x, test_y), source = mnist_data.load_mnist(REAL_DIR)
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == torch.uint8
    assert train_y.shape == (60000,) and train_y.dtype == torch.int64
    assert test_y.shape == (10000,) and test_y.dtype == torch.int64
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert int(train_x.min()) == 0 and int(train_x.max()) == 255
    assert 0 <= int(test_y.min()) and int(test_y.max()) == 9
    pixels = seq_mnist.to_pixels(train_x[:1000])
    assert pixels.dtype == torch.float32
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) == 1.0
    assert source == os.path.abspath(REAL_DIR)


def test_env_var_and_uncompressed_files(tmp_path, monkeypatch):
    for name in mnist_data.ALL_FILES:
        with gzip.open(os.path.join(DATA_DIR, name + ".gz"), "rb") as src:
            (tmp_path / name).write_bytes(src.read())
    monkeypatch.setenv(mnist_data.ENV_VAR, str(tmp_path))
    (_, train_y, test_x, _), source = mnist_data.load_mnist()
    assert source == str(tmp_path)
    assert train_y.tolist() == synthetic_labels("train").tolist()
    assert test_x.shape == (SYNTHETIC_SIZES["test"], 28, 28)


def _copy_data(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(DATA_DIR, folder)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def test_truncated_gzip_file_is_rejected(tmp_path):
    folder = _copy_data(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(mnist_data.MnistError, match="truncated"):
        mnist_data.load_dir(str(folder))


def test_truncated_idx_data_is_rejected(tmp_path):
    folder = _copy_data(tmp_path)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as f:
        data = f.read()
    path.unlink()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(data[:-10])
    with pytest.raises(mnist_data.MnistError,
                       match=r"t10k-labels-idx1-ubyte: truncated.*128"):
        mnist_data.load_dir(str(folder))


def test_wrong_magic_number_is_rejected(tmp_path):
    folder = _copy_data(tmp_path)
    # a label file (magic 0x00000801) where the images (0x00000803) belong
    shutil.copy(folder / "t10k-labels-idx1-ubyte.gz",
                folder / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(mnist_data.MnistError,
                       match=r"t10k-images-idx3-ubyte.gz: wrong IDX magic "
                             r"number 0x00000801, expected 0x00000803"):
        mnist_data.load_dir(str(folder))


def test_missing_data_names_the_files_and_both_ways(tmp_path, monkeypatch):
    with pytest.raises(mnist_data.MnistError) as missing:
        mnist_data.load_dir(str(tmp_path))
    monkeypatch.delenv(mnist_data.ENV_VAR, raising=False)
    torchvision = pytest.importorskip("torchvision")

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(mnist_data.MnistError) as no_download:
        mnist_data.load_mnist(None, download_root=str(tmp_path))
    for message in (str(missing.value), str(no_download.value)):
        for name in mnist_data.ALL_FILES:
            assert name in message
        assert "--data-dir" in message and mnist_data.ENV_VAR in message
        assert "torchvision" in message


# ----------------------------------------------------------------- learning

def test_learns_and_writes_the_run_directory(tmp_path):
    # Adam at lr 1e-3 (a common default) blows the identity recurrence
    # up over 784 steps (train loss 11.5 in the first epoch); 3e-5 learns
    # steadily. Measured at seed 0: train loss 2.315 -> 2.268 in 3 epochs.
    final, out = run(tmp_path, "learn", "--limit-train", 256,
                     "--limit-test", 32, "--val-split", 64,
                     "--optimizer", "adam", "--lr", 3e-5,
                     "--batch-size", 32, "--epochs", 3)
    for name in ("metrics.csv", "metrics.json", "config.json", "curves.png",
                 "last.pt", "best.pt"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    rows = metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.02
    for column in ("epoch", "train_loss", "train_acc", "test_loss",
                   "test_acc", "seconds", "samples_per_s", "val_acc"):
        assert column in open(os.path.join(out, "metrics.csv")).readline()
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    assert config["settings"]["optimizer"] == "adam"
    assert config["settings"]["hidden"] == 100
    assert config["environment"]["torch"] == torch.__version__
    assert config["environment"]["irnn_cuda_cpu_kernels"] == (
        irnn_cuda.cpu_kernels() if config["environment"]["device"] == "cpu"
        else None)
    assert config["train_images"] == 256 and config["val_images"] == 64
    best = load(os.path.join(out, "best.pt"))
    best_epoch = max(rows, key=lambda r: r["val_acc"])["epoch"]
    assert best["epoch"] == best_epoch  # chosen by validation accuracy
    evaluated, _ = seq_mnist.main(["--eval-only", out, "--data-dir", DATA_DIR,
                                   "--device", "cpu", "--limit-test", "32"])
    assert evaluated["test_acc"] == final["test_acc"]


# ------------------------------------------------------------------- resume

RESUME_ARGS = ("--limit-train", 96, "--limit-test", 16, "--hidden", 16,
               "--optimizer", "adam", "--lr", 1e-4, "--batch-size", 32)


def _assert_same_run(a, b):
    assert metrics(a) == metrics(b)
    last_a, last_b = load(os.path.join(a, "last.pt")), load(os.path.join(b, "last.pt"))
    for name, value in last_a["model"].items():
        assert torch.equal(value, last_b["model"][name]), name
    for key, state in last_a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, last_b["optimizer"]["state"][key][name])


def test_resume_equals_an_uninterrupted_run(tmp_path):
    _, whole = run(tmp_path, "whole", *RESUME_ARGS, "--epochs", 2)
    # stopped at an epoch boundary
    _, cut = run(tmp_path, "cut", *RESUME_ARGS, "--epochs", 1)
    seq_mnist.main(["--resume", cut, "--epochs", "2", "--data-dir", DATA_DIR,
                    "--device", "cpu", "--no-progress"])
    _assert_same_run(whole, cut)
    # stopped inside an epoch (3 batches an epoch, so step 4 is in epoch 2)
    _, mid = run(tmp_path, "mid", *RESUME_ARGS, "--epochs", 2,
                 "--max-steps", 4)
    assert load(os.path.join(mid, "last.pt"))["batches_done"] == 1
    seq_mnist.main(["--resume", mid, "--data-dir", DATA_DIR,
                    "--device", "cpu", "--no-progress"])
    _assert_same_run(whole, mid)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    _, out = run(tmp_path, "ckpt", *RESUME_ARGS, "--epochs", 1)
    with pytest.raises(SystemExit, match="conflicts with the checkpoint"):
        seq_mnist.main(["--resume", out, "--hidden", "8"])
    state = load(os.path.join(out, "last.pt"))
    state["config"]["hidden"] = 8
    torch.save(state, tmp_path / "mismatched.pt")
    with pytest.raises(SystemExit, match="does not match the model"):
        seq_mnist.main(["--eval-only", str(tmp_path / "mismatched.pt"),
                        "--data-dir", DATA_DIR, "--device", "cpu"])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(open(os.path.join(out, "last.pt"), "rb").read()[:500])
    with pytest.raises(SystemExit, match="corrupt or not a checkpoint"):
        seq_mnist.main(["--eval-only", str(corrupt)])
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not a seq_mnist checkpoint"):
        seq_mnist.main(["--eval-only", str(tmp_path / "other.pt")])


def test_nonfinite_loss_stops_or_skips(tmp_path):
    # One unclipped SGD step at lr 0.1 makes W_hh = I + 0.1 dW_hh grow the
    # state without bound over 784 steps: the next loss is not finite.
    args = ("--limit-train", 96, "--limit-test", 16, "--hidden", 32,
            "--optimizer", "sgd", "--lr", 0.1, "--clip-norm", 0,
            "--batch-size", 32, "--seed", 3)
    with pytest.raises(SystemExit, match="non-finite loss at epoch 1, step 2"):
        run(tmp_path, "stop", *args, "--epochs", 1)
    assert not os.path.exists(tmp_path / "stop" / "last.pt")
    # Skipping keeps the run going, but its test loss is not finite: the
    # run is reported as diverged, with its files written.
    with pytest.raises(SystemExit, match="diverged: the test loss is not "
                                         "finite after epoch 1"):
        run(tmp_path, "skip", *args, "--epochs", 1, "--on-nonfinite", "skip")
    assert metrics(str(tmp_path / "skip"))[0]["skipped_steps"] == 2


# ----------------------------------------------------------------- backends

def test_backends_agree_after_three_sgd_steps(tmp_path):
    # Unclipped, the first step at lr 0.1 already makes the loss non-finite
    # (see above): the gradient norm is clipped to 0.01 so that all three
    # updates stay finite and every backend takes them.
    args = ("--limit-train", 96, "--limit-test", 16, "--hidden", 32,
            "--optimizer", "sgd", "--lr", 0.1, "--clip-norm", 0.01,
            "--batch-size", 32, "--max-steps", 3, "--seed", 3)
    states = {}
    for impl in ("fused", "torch", "reference"):
        _, out = run(tmp_path, impl, "--impl", impl, *args)
        states[impl] = load(os.path.join(out, "last.pt"))["model"]
    torch.manual_seed(3)
    init = seq_mnist.SeqMNISTModel(32, "fused", "irnn").state_dict()
    eps = torch.finfo(torch.float32).eps
    for name, value in states["reference"].items():
        update = value - init[name]
        size = update.abs().max().item()
        assert size > 0, f"{name} did not move"
        # 0.1% of the update, plus a few float32 ulps of the parameter
        atol = 1e-3 * size + 4 * eps * value.abs().max().item()
        for impl in ("fused", "torch"):
            torch.testing.assert_close(states[impl][name] - init[name],
                                       update, rtol=0, atol=atol,
                                       msg=f"{impl} {name}")
    assert (states["reference"]["rnn.weight_hh_l0"]
            - init["rnn.weight_hh_l0"]).abs().max() > 1e-5


# -------------------------------------------------------------- distributed

def test_batch_must_divide_by_the_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="does not divide by the 2 processes"):
        seq_mnist.main(["--batch-size", "33"])


# Runs bench/seq_mnist.py as its own __main__, then names the threads the
# process still has (Linux: /proc/self/task/*/comm).
THREADS_LEFT = '''
import glob, os, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
names = sorted(open(t).read().strip()
               for t in glob.glob("/proc/self/task/*/comm"))
# One write of the whole line (a pipe keeps a write of under 4 KB whole),
# so the two ranks' lines do not interleave.
sys.stdout.flush()
os.write(1, f"threads left on rank {os.environ['RANK']}: {names}\\n".encode())
'''


def test_two_process_gloo_matches_one_process(tmp_path):
    """Two gloo ranks end where one process ends, and each rank has joined
    gloo's threads when the program is done (left running into the
    interpreter's exit, they now and then aborted a finished run)."""
    args = ["--data-dir", DATA_DIR, "--device", "cpu", "--no-progress",
            "--limit-train", 128, "--limit-test", 16, "--hidden", 16,
            "--optimizer", "sgd", "--lr", 0.1, "--clip-norm", 0.01,
            "--batch-size", 32, "--max-steps", 2, "--lr-schedule",
            "constant", "--warmup-steps", 0]
    args = list(map(str, args))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(
                   [ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    wrapper = tmp_path / "threads_left.py"
    wrapper.write_text(THREADS_LEFT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(wrapper), SCRIPT, *args, "--out",
           str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "over 2 ranks" in done.stdout
    if sys.platform.startswith("linux"):
        # Each rank's list, wherever its line landed in the shared stdout.
        left = dict(re.findall(r"threads left on rank (\d+): (\[[^\]]*\])",
                               done.stdout))
        assert sorted(left) == ["0", "1"], done.stdout
        for rank, names in left.items():
            assert "gloo" not in names, (rank, names)
    _, single = run(tmp_path, "single", *args[5:])
    ddp, one = (load(os.path.join(d, "last.pt")) for d in
                (str(tmp_path / "ddp"), single))
    assert ddp["step"] == one["step"] == 2
    for name, value in one["model"].items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-4,
                                   atol=1e-6, msg=name)
    rows_ddp, rows_one = metrics(str(tmp_path / "ddp")), metrics(single)
    assert rows_ddp[0]["train_loss"] == pytest.approx(rows_one[0]["train_loss"])
    assert rows_ddp[0]["test_acc"] == rows_one[0]["test_acc"]
