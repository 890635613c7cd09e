"""Failures that must be loud: a broken build raises instead of running the
reference, a shadowed or unbuilt source tree says so, no argument of the ops
crashes the process, and gradients come back laid out like their
parameters."""
import glob
import importlib.machinery
import os
import shutil
import site
import subprocess
import sys

import pytest
import torch

import irnn_cuda
from irnn_cuda import FusedIRNN, _ops

needs_ext = pytest.mark.skipif(
    not irnn_cuda.extension_loaded() and os.environ.get("IRNN_EXPECT_EXT") != "1",
    reason="irnn_cuda._C is not built")

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
LIBRARY_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _env(pythonpath):
    """`pythonpath`, then this interpreter's site-packages: run_python starts
    Python with -S, so no .pth file runs. An editable install of this
    checkout adds a finder that would serve irnn_cuda._C from the checkout
    to a package copied elsewhere."""
    path = [pythonpath, *site.getsitepackages()]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(path))
    env.pop("IRNN_EXPECT_EXT", None)
    return env


def copy_package(dest, library_bytes=None):
    """The package's Python files in `dest`/irnn_cuda, with a file named like
    the compiled library holding `library_bytes` when given."""
    package = os.path.join(dest, "irnn_cuda")
    os.makedirs(package)
    for path in glob.glob(os.path.join(ROOT, "irnn_cuda", "*.py")):
        shutil.copy(path, package)
    if library_bytes is not None:
        with open(os.path.join(package, "_C" + LIBRARY_SUFFIX), "wb") as f:
            f.write(library_bytes)
    return package


def run_python(code, cwd, pythonpath):
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd,
                          env=_env(pythonpath), capture_output=True,
                          text=True, timeout=120)


# Runs the reference twice without a compiled library; prints the one
# fallback warning it must give.
FALLBACK_WARNING = (
    "import warnings, torch\n"
    "import irnn_cuda\n"
    "assert not irnn_cuda.extension_loaded()\n"
    "m = irnn_cuda.FusedIRNN(1, 4)\n"
    "with warnings.catch_warnings(record=True) as w:\n"
    "    warnings.simplefilter('always')\n"
    "    m(torch.randn(3, 2, 1)); m(torch.randn(3, 2, 1))\n"
    "msgs = [str(x.message) for x in w if 'falling back' in str(x.message)]\n"
    "assert len(msgs) == 1, msgs\n"
    "print(msgs[0])\n")


# --- a built library that will not load --------------------------------------

def test_broken_build_raises_with_both_torch_versions(tmp_path):
    copy_package(tmp_path, b"\x7fELF not a library; "
                 b"irnn_cuda._C built against torch 1.2.3+cu000\x00")
    res = run_python("import irnn_cuda", cwd=tmp_path, pythonpath=str(tmp_path))
    assert res.returncode != 0, "a library that does not load was accepted"
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: irnn_cuda: the compiled extension"), last
    assert "built against torch 1.2.3+cu000" in last, last
    assert f"torch {torch.__version__} is running" in last, last
    assert "pip install --no-build-isolation" in last, last


def test_broken_build_without_a_record_still_raises(tmp_path):
    copy_package(tmp_path, b"garbage")
    res = run_python("import irnn_cuda", cwd=tmp_path, pythonpath=str(tmp_path))
    assert res.returncode != 0
    assert "records no torch version" in res.stderr, res.stderr[-2000:]


@needs_ext
def test_built_library_records_the_torch_it_was_built_against():
    from irnn_cuda import _C
    (path,) = _ops.library_files()
    assert _ops.built_against(path) == torch.__version__
    assert _C.TORCH_VERSION == torch.__version__


# --- a source tree without the library ----------------------------------------

def test_unbuilt_copy_shadowing_an_installed_one_says_so(tmp_path):
    """`pip install .` and then `python -c 'import irnn_cuda'` in the
    checkout: the current directory's unbuilt package wins."""
    checkout, site = tmp_path / "checkout", tmp_path / "site"
    shadow = copy_package(checkout)
    (checkout / "setup.py").write_text("")
    installed = copy_package(site, b"a library")
    res = run_python(FALLBACK_WARNING, cwd=checkout, pythonpath=str(site))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "circular import" not in res.stdout
    assert f"imported irnn_cuda from {shadow}" in res.stdout, res.stdout
    assert f"built copy at {installed}" in res.stdout, res.stdout
    assert "Run from another directory" in res.stdout, res.stdout
    assert "pip install --no-build-isolation -e ." in res.stdout, res.stdout


def test_unbuilt_package_warns_once_and_runs_the_reference(tmp_path):
    copy_package(tmp_path)
    res = run_python(FALLBACK_WARNING, cwd=tmp_path, pythonpath=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "reference" in res.stdout, res.stdout
    assert "pip install --no-build-isolation" in res.stdout, res.stdout
    assert "circular import" not in res.stdout


# The next two call the message directly with a chosen sys.path: in a
# subprocess, an editable install of this checkout would be on it too.
def test_unbuilt_source_checkout_says_how_to_build_in_place(tmp_path):
    package = copy_package(tmp_path)
    (tmp_path / "setup.py").write_text("")
    message = _ops.not_built_message([str(tmp_path)], package)
    assert "source checkout" in message, message
    assert "pip install --no-build-isolation -e ." in message, message


def test_unbuilt_installed_package_says_how_to_build(tmp_path):
    package = copy_package(tmp_path)
    message = _ops.not_built_message([str(tmp_path)], package)
    assert f"is not in {package}" in message, message
    assert "pip install --no-build-isolation ." in message, message


def test_installed_copies_skips_itself_and_unbuilt_ones(tmp_path):
    own = copy_package(tmp_path / "a")
    copy_package(tmp_path / "b")
    built = copy_package(tmp_path / "c", b"a library")
    entries = [str(tmp_path / d) for d in ("a", "b", "c", "c")]
    assert _ops.installed_copies(entries, own) == [built]


# --- sizes nn.RNN refuses -----------------------------------------------------

@pytest.mark.parametrize("sizes, name", [((0, 4), "input_size"),
                                         ((4, 0), "hidden_size"),
                                         ((-1, 4), "input_size")])
def test_zero_sizes_are_refused_like_nn_rnn(sizes, name):
    with pytest.raises(ValueError, match=f"{name} must be greater than zero"):
        torch.nn.RNN(*sizes)
    with pytest.raises(ValueError, match=f"{name} must be greater than zero"):
        FusedIRNN(*sizes)


# --- the ops' argument checks, fuzzed in a subprocess --------------------------

def run_fuzz(max_crashes=10):
    """Runs tests/fuzz_op_args.py, restarting it after each case that kills
    it. Returns (crashed cases, failure output or None)."""
    crashed, first = [], 0
    while True:
        proc = subprocess.run(
            [sys.executable, os.path.join(TESTS, "fuzz_op_args.py"), str(first)],
            env=_env(ROOT), capture_output=True, text=True, timeout=600)
        lines = proc.stdout.splitlines()
        if proc.returncode == 0 and lines and lines[-1] == "finished":
            return crashed, None
        started = [line for line in lines if line.startswith("start ")]
        if proc.returncode >= 0 or not started:
            # An exception escaped the worker: a wrong result, not a crash.
            return crashed, proc.stdout[-3000:] + proc.stderr[-3000:]
        last = started[-1]
        crashed.append(f"signal {-proc.returncode} in {last}")
        if len(crashed) >= max_crashes:
            return crashed, None
        first = int(last.split()[1].rstrip(":")) + 1


@needs_ext
def test_fuzzed_op_arguments_raise_or_return_valid_results():
    crashed, failure = run_fuzz()
    assert not crashed, "calls that killed the process:\n" + "\n".join(crashed)
    assert failure is None, failure


# --- gradients laid out like their parameters ---------------------------------

@needs_ext
@pytest.mark.parametrize("I, H, B", [(1, 100, 4), (1, 1, 1), (3, 5, 1),
                                     (2, 1, 3), (20, 7, 2)])
def test_gradients_have_their_parameters_strides(I, H, B):
    """DDP's bucket views compare every stride, a size-1 dimension's too."""
    torch.manual_seed(0)
    rnn = FusedIRNN(I, H, init="torch", batch_first=True)
    out, h_n = rnn(torch.randn(B, 6, I, requires_grad=True))
    (out.sum() + h_n.sum()).backward()
    for name, p in rnn.named_parameters():
        assert p.grad.stride() == p.stride(), (name, p.grad.stride(), p.stride())


DDP_RUN = """
import os, tempfile, warnings, torch, torch.distributed as dist
from irnn_cuda import FusedIRNN
store = tempfile.mktemp()
dist.init_process_group("gloo", init_method="file://" + store, rank=0,
                        world_size=1)
try:
    model = torch.nn.parallel.DistributedDataParallel(FusedIRNN(1, 100))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, h_n = model(torch.randn(8, 4, 1))
        (out.sum() + h_n.sum()).backward()
    print("WARN:", *[str(w.message) for w in caught])
finally:
    dist.destroy_process_group()
"""


@needs_ext
def test_ddp_sees_no_grad_stride_mismatch(tmp_path):
    res = run_python(DDP_RUN, cwd=tmp_path, pythonpath=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Grad strides do not match" not in res.stdout + res.stderr, (
        res.stdout + res.stderr)[-3000:]
