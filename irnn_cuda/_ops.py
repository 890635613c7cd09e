"""Loads the compiled ops and registers their fake (meta) implementations and
autograd formulas. The op schemas are documented in docs/ops.md."""
import ctypes
import glob
import importlib.machinery
import os
import re
import sys
import warnings

import torch

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# csrc/ops.cpp writes this record into the library.
_BUILD_RECORD = re.compile(rb"irnn_cuda\._C built against torch ([0-9A-Za-z.+]+)")


def library_files(package_dir=PACKAGE_DIR):
    """The compiled irnn_cuda._C files in `package_dir`."""
    return sorted(path for suffix in importlib.machinery.EXTENSION_SUFFIXES
                  for path in glob.glob(os.path.join(package_dir, "_C" + suffix)))


def built_against(path):
    """The torch version the library at `path` was built against, read from
    the file itself (so it works when the library will not load), or None."""
    try:
        with open(path, "rb") as f:
            match = _BUILD_RECORD.search(f.read())
    except OSError:
        return None
    return match.group(1).decode() if match else None


def broken_build_message(path, error, running=torch.__version__):
    """Why a built irnn_cuda._C would not load, and what to do."""
    built = built_against(path)
    if built is None:
        versions = (f"It records no torch version (an older irnn_cuda built "
                    f"it); torch {running} is running")
    elif built != running:
        versions = (f"It was built against torch {built}; torch {running} "
                    "is running")
    else:
        versions = f"It was built against the running torch {running}"
    return (f"irnn_cuda: the compiled extension {path} is present but will not "
            f"load: {error}. {versions}. Rebuild it "
            "against the installed torch: `pip install --no-build-isolation .` "
            "(or `-e .` for a source checkout).")


def installed_copies(sys_path=None, package_dir=PACKAGE_DIR):
    """Other irnn_cuda packages on `sys_path` that carry a built library."""
    found = []
    for entry in sys.path if sys_path is None else sys_path:
        candidate = os.path.join(os.path.abspath(entry or os.curdir), "irnn_cuda")
        if (os.path.realpath(candidate) != os.path.realpath(package_dir)
                and library_files(candidate) and candidate not in found):
            found.append(candidate)
    return found


def not_built_message(sys_path=None, package_dir=PACKAGE_DIR):
    """Why this irnn_cuda has no irnn_cuda._C, and what to do."""
    others = installed_copies(sys_path, package_dir)
    checkout = os.path.isfile(os.path.join(os.path.dirname(package_dir),
                                           "setup.py"))
    if others:
        return (f"Python imported irnn_cuda from {package_dir}, which has no "
                f"compiled extension, instead of the built copy at "
                f"{others[0]}: the current directory (or PYTHONPATH) shadows "
                "it. Run from another directory, or install the checkout in "
                "place with `pip install --no-build-isolation -e .`")
    if checkout:
        return (f"irnn_cuda was imported from the source checkout "
                f"{package_dir}, where the extension is not built. Install it "
                "in place with `pip install --no-build-isolation -e .` (a "
                "plain install puts the build elsewhere, and this directory "
                "still shadows it), or run from another directory")
    return (f"the compiled extension irnn_cuda._C is not in {package_dir}; "
            "build it with `pip install --no-build-isolation .`")


try:
    from . import _C  # noqa: F401  (importing registers torch.ops.irnn_cuda.*)
    _NOT_BUILT = None
except ImportError as exc:
    files = library_files()
    if files:  # built, but will not load: never run the slow reference
        raise ImportError(broken_build_message(files[0], exc)) from exc
    _NOT_BUILT = not_built_message()
else:
    if getattr(_C, "TORCH_VERSION", torch.__version__) != torch.__version__:
        warnings.warn(
            f"irnn_cuda: irnn_cuda._C was built against torch "
            f"{_C.TORCH_VERSION}, but torch {torch.__version__} is running; "
            "rebuild it with `pip install --no-build-isolation .` if anything "
            "misbehaves", RuntimeWarning, stacklevel=2)

_warned = set()


def extension_loaded():
    """True when the compiled library irnn_cuda._C is loaded."""
    return _NOT_BUILT is None


def _kernel_table():
    if not extension_loaded():
        return {}
    return {device_type: torch._C._dispatch_has_kernel_for_dispatch_key(
        "irnn_cuda::irnn_forward", key)
        for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))}


# Looked up once: the registrations are fixed once _C is loaded, and a plain
# dict keeps torch.compile from tracing into the dispatcher query.
_KERNELS = _kernel_table()


def has_kernels(device_type):
    """True when the compiled ops have an implementation for `device_type`."""
    return _KERNELS.get(device_type, False)


def cpu_kernels():
    """The instruction set of the CPU kernels in use: "avx512" (float32; the
    float64 kernels are AVX2 then), "avx2" or "generic"; None without the
    extension. IRNN_CPU_KERNELS=avx2 or =generic, set before the import,
    caps the choice."""
    if not extension_loaded():
        return None
    return getattr(_C, "CPU_KERNELS", None)


def cuda_gemm():
    """The GEMM the CUDA ops hand the per-step path's steps and the large-H
    and cluster backward's gradient GEMMs to: "cublaslt" or "tiled" (our own
    kernel); None without CUDA kernels. IRNN_CUDA_GEMM=tiled or =cublaslt
    chooses (read at every call); unset, cuBLASLt where the build has it.
    An unknown value, or cublaslt in a build without it, raises ValueError
    here and RuntimeError from the ops."""
    if not has_kernels("cuda"):
        return None
    built = bool(getattr(_C, "CUBLASLT", 0))
    want = os.environ.get("IRNN_CUDA_GEMM", "")
    if want not in ("", "cublaslt", "tiled"):
        raise ValueError(f"IRNN_CUDA_GEMM={want} is not one of cublaslt, tiled")
    if want == "cublaslt" and not built:
        raise ValueError("IRNN_CUDA_GEMM=cublaslt, but irnn_cuda was built "
                         "without cuBLASLt")
    return "cublaslt" if built and want != "tiled" else "tiled"


class DeviceProps(ctypes.Structure):  # csrc/cuda/irnn_cuda_api.h
    _fields_ = [("sm_count", ctypes.c_int),
                ("max_threads_per_block", ctypes.c_int),
                ("smem_per_block", ctypes.c_int64),
                ("smem_per_block_optin", ctypes.c_int64),
                ("cluster_launch", ctypes.c_int),
                ("clusters_of_4", ctypes.c_int),
                ("clusters_of_8", ctypes.c_int),
                ("reg_rows", ctypes.c_int)]  # 0 from the query


def cuda_device_props_symbols():
    """(query, error_string): the CUDA build's irnn_cuda_device_props(int,
    DeviceProps*, const char**) and irnn_cuda_error_string(int), through
    ctypes."""
    lib = ctypes.CDLL(_C.__file__)
    query = lib._ZN9irnn_cuda22irnn_cuda_device_propsEiPNS_11DevicePropsEPPKc
    query.restype = ctypes.c_int
    query.argtypes = [ctypes.c_int, ctypes.POINTER(DeviceProps),
                      ctypes.POINTER(ctypes.c_char_p)]
    text = lib._ZN9irnn_cuda22irnn_cuda_error_stringEi
    text.restype = ctypes.c_char_p
    text.argtypes = [ctypes.c_int]
    return query, text


def cuda_device_props(device=0):
    """What the CUDA ops' launch configuration reads for `device`, as a
    dict: SMs, thread and shared memory limits, whether clusters launch,
    and the clusters of 4 and of 8 blocks that run at once (0: not known).
    For the GPU check's record; RuntimeError where a query fails."""
    if not has_kernels("cuda"):
        raise RuntimeError("irnn_cuda._C was built without CUDA kernels")
    query, text = cuda_device_props_symbols()
    props, failed = DeviceProps(), ctypes.c_char_p()
    err = query(device, ctypes.byref(props), ctypes.byref(failed))
    if err != 0:
        raise RuntimeError(f"irnn_cuda: {failed.value.decode()} failed on "
                           f"device {device}: {text(err).decode()}")
    return {name: getattr(props, name) for name, _ in DeviceProps._fields_}


def warn_fallback(device_type):
    """Warns once per device type that the reference is standing in."""
    if device_type in _warned:
        return
    _warned.add(device_type)
    if not extension_loaded():
        why = _NOT_BUILT
    else:
        why = (f"irnn_cuda._C was built without {device_type} kernels "
               "(for CUDA: rebuild with a CUDA toolkit and IRNN_BUILD_CUDA=1)")
    warnings.warn(f"irnn_cuda: {why}; falling back to the slow pure-PyTorch "
                  f"reference on {device_type}.", RuntimeWarning, stacklevel=3)


if extension_loaded():

    def _check_lengths_device(input, lengths):
        # The dispatcher sends a call whose lengths alone are on the meta
        # device here; the kernels would refuse it.
        if (lengths is not None and lengths.device != input.device
                and lengths.device.type != "cpu"):
            raise RuntimeError(f"lengths must be on the CPU or on the input's "
                               f"device ({input.device}), got {lengths.device}")

    @torch.library.register_fake("irnn_cuda::irnn_forward")
    def _irnn_forward_fake(input, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                           nonlinearity, reverse, store_sequence,
                           lengths=None):
        _check_lengths_device(input, lengths)
        B, H = h0.shape[0], weight_hh.shape[0]
        if input.dim() == 2:  # packed [N, I] with lengths: output [N, H]
            output = input.new_empty((input.shape[0] if store_sequence else 0, H))
        else:
            output = input.new_empty((input.shape[0] if store_sequence else 0, B, H))
        return output, input.new_empty((B, H))

    @torch.library.register_fake("irnn_cuda::irnn_backward")
    def _irnn_backward_fake(grad_output, grad_h_n, input, h0, weight_ih,
                            weight_hh, output, nonlinearity, reverse,
                            lengths=None, output_mask=(True,) * 5):
        _check_lengths_device(input, lengths)
        H = weight_hh.shape[0]
        shapes = (input.shape, h0.shape,
                  weight_ih.shape if weight_ih is not None else (0,),
                  weight_hh.shape, (H,))
        return tuple(input.new_empty(shape if wanted else (0,))
                     for shape, wanted in zip(shapes, output_mask))

    def _forward_setup_context(ctx, inputs, output):
        (input, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
         reverse, store_sequence, lengths) = inputs
        ctx.nonlinearity = nonlinearity
        ctx.reverse = reverse
        ctx.store_sequence = store_sequence
        ctx.has_weight_ih = weight_ih is not None
        ctx.save_for_backward(input, h0, weight_ih, weight_hh, output[0],
                              lengths)

    def _forward_backward(ctx, grad_output, grad_h_n):
        if not ctx.store_sequence:
            raise RuntimeError(
                "irnn_cuda.irnn_forward: backward needs the hidden-state "
                "sequence, but the op was called with store_sequence=False; "
                "call it with store_sequence=True when gradients are needed")
        input, h0, weight_ih, weight_hh, output, lengths = ctx.saved_tensors
        need = ctx.needs_input_grad
        # Only what autograd asks for is computed (the op's output_mask).
        mask = [need[0], need[1], need[2], need[3], need[4] or need[5]]
        (grad_input, grad_h0, grad_weight_ih, grad_weight_hh,
         grad_bias) = torch.ops.irnn_cuda.irnn_backward(
            grad_output, grad_h_n, input, h0, weight_ih, weight_hh, output,
            ctx.nonlinearity, ctx.reverse, lengths, mask)
        return (grad_input if need[0] else None,
                grad_h0 if need[1] else None,
                grad_weight_ih if need[2] else None,
                grad_weight_hh if need[3] else None,
                grad_bias if need[4] else None,
                grad_bias if need[5] else None,
                None, None, None, None)

    torch.library.register_autograd(
        "irnn_cuda::irnn_forward", _forward_backward,
        setup_context=_forward_setup_context)

    def _backward_setup_context(ctx, inputs, output):
        pass

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(
            "irnn_cuda: double backward (a gradient of a gradient) is not "
            "supported by the fused ops; use irnn_cuda.reference.irnn_reference "
            "for higher-order derivatives")

    torch.library.register_autograd(
        "irnn_cuda::irnn_backward", _no_double_backward,
        setup_context=_backward_setup_context)
