"""Builds irnn_cuda._C against the installed PyTorch.

IRNN_BUILD_CUDA=auto|1|0 (default auto): auto builds the CUDA kernels when a
CUDA toolkit and a CUDA build of PyTorch are present, even with no GPU
visible; 1 makes a missing toolkit or failed CUDA build an error; 0 builds
the CPU ops only.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup


def _find_cuda_home():
    """CUDA_HOME from the environment, else from nvcc's real location.

    Must run before torch.utils.cpp_extension is imported: it reads
    CUDA_HOME once, at import. nvcc may be a wrapper script (as
    /usr/local/bin/nvcc is on some machines), so ask nvcc for its TOP.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        for root in ("/usr/local/cuda",):
            if os.path.exists(os.path.join(root, "bin", "nvcc")):
                return root
        return None
    try:
        dry = subprocess.run(
            [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60)
        match = re.search(r"^#\$ TOP=(.+)$", dry.stderr + dry.stdout, re.M)
        if match:
            # TOP is the toolkit root itself (nvcc.profile: TOP = bin/..).
            return os.path.realpath(match.group(1).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    BuildExtension, CppExtension, CUDAExtension)

HERE = os.path.dirname(os.path.abspath(__file__))
MODE = os.environ.get("IRNN_BUILD_CUDA", "auto").strip().lower()
if MODE not in ("auto", "1", "0"):
    sys.exit(f"IRNN_BUILD_CUDA must be auto, 1 or 0, got {MODE!r}")


def _want_cuda():
    if MODE == "0":
        return False
    have_toolkit = _cuda_home is not None and os.path.exists(
        os.path.join(_cuda_home, "bin", "nvcc"))
    have_torch_cuda = torch.version.cuda is not None
    if have_toolkit and have_torch_cuda:
        return True
    if MODE == "1":
        sys.exit("IRNN_BUILD_CUDA=1 but "
                 + ("no CUDA toolkit was found (set CUDA_HOME or put nvcc on "
                    "PATH)" if not have_toolkit else
                    f"torch {torch.__version__} is not a CUDA build"))
    print("irnn_cuda: building the CPU ops only (no CUDA toolkit or CPU-only "
          "torch); set IRNN_BUILD_CUDA=1 to require CUDA", file=sys.stderr)
    return False


def _find_cublaslt():
    """(include dir, library file) of cuBLASLt for the per-step path's GEMMs
    (csrc/cuda/irnn_ops_cuda.cpp), or None. The toolkit's own first, else
    the nvidia-cublas wheel that a CUDA build of torch installs (its library
    is the one torch loads, named by its major version only). Without it the
    extension builds with the tiled GEMM alone."""
    major = (torch.version.cuda or "").split(".")[0]
    roots = [(os.path.join(_cuda_home, "include"),
              [os.path.join(_cuda_home, d) for d in ("lib64", "lib")])]
    try:
        import nvidia  # the namespace package of NVIDIA's wheels
        for base in list(nvidia.__path__):
            for sub in (f"cu{major}", "cublas"):
                root = os.path.join(base, sub)
                roots.append((os.path.join(root, "include"),
                              [os.path.join(root, "lib")]))
    except ImportError:
        pass
    for inc, libdirs in roots:
        if not os.path.exists(os.path.join(inc, "cublasLt.h")):
            continue
        for libdir in libdirs:
            for name in ("libcublasLt.so", f"libcublasLt.so.{major}"):
                lib = os.path.join(libdir, name)
                if os.path.exists(lib):
                    return inc, lib
    return None


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def _openmp_flag():
    """The OpenMP flag of the C++ compiler torch's build will use: -fopenmp
    for g++ (and clang++ with libomp installed). A compiler that rejects it
    stops the build here, with what to do, not in the middle of it."""
    import sysconfig
    import tempfile
    cxx = os.environ.get("CXX") or (sysconfig.get_config_var("CXX") or "c++").split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            res = subprocess.run([cxx, "-fopenmp", src, "-o", os.path.join(tmp, "omp")],
                                 capture_output=True, text=True, timeout=120)
        except OSError as exc:
            sys.exit(f"irnn_cuda: cannot run the C++ compiler {cxx!r} ({exc}); "
                     "set CXX to a C++20 compiler (g++ 10+)")
    if res.returncode != 0:
        sys.exit(f"irnn_cuda: the C++ compiler {cxx!r} does not support OpenMP "
                 "(-fopenmp), which the CPU kernels' threads need (ATen's "
                 "parallel_for). Build with g++ (CXX=g++), or install the "
                 "OpenMP runtime for clang (libomp-dev, or `brew install "
                 "libomp`).\n" + res.stderr[-2000:])
    return "-fopenmp"


def _torch_version_flag():
    """The torch version this build is against, recorded in the library so
    that irnn_cuda/_ops.py can name it when the library will not load. It is
    passed as preprocessor tokens (csrc/ops.cpp turns them into a string),
    which survives any build tool's quoting."""
    version = torch.__version__
    if not re.fullmatch(r"[0-9A-Za-z.+]+", version):
        sys.exit(f"irnn_cuda: unexpected torch version string {version!r}")
    return f"-DIRNN_TORCH_VERSION_TOKENS={version}"


OPENMP = _openmp_flag()
# -g0 undoes the -g of Python's own compile flags: debug information for the
# kernels' template instantiations costs about a third of their compile time.
cxx_flags = ["-O3", "-g0", "-std=c++20", OPENMP, _torch_version_flag()]
sources = _rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp"))
               + glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
cuda_sources = _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cpp"))
                    + glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))

if _want_cuda() and cuda_sources:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not (
            torch.cuda.is_available() and torch.cuda.device_count() > 0):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "7.5;8.0;9.0+PTX"
    macros, cxx_cuda, link = [("IRNN_WITH_CUDA", "1")], list(cxx_flags), [OPENMP]
    lt = _find_cublaslt()
    if lt:
        # The header directory is searched after the toolkit's (-idirafter),
        # so a wheel's other headers never shadow the toolkit's; only the
        # C++ sources include cublasLt.h. Linked by its path: the wheel has
        # no unversioned libcublasLt.so; at run time torch has already
        # loaded the library of that name.
        macros.append(("IRNN_WITH_CUBLASLT", "1"))
        cxx_cuda += ["-idirafter", lt[0]]
        link += [lt[1], "-Wl,-rpath," + os.path.dirname(lt[1])]
        print(f"irnn_cuda: cuBLASLt from {lt[1]}", file=sys.stderr)
    else:
        print("irnn_cuda: cuBLASLt not found (cublasLt.h and libcublasLt); "
              "the per-step path keeps the tiled GEMM", file=sys.stderr)
    ext = CUDAExtension(
        "irnn_cuda._C", sources + cuda_sources,
        define_macros=macros,
        extra_link_args=link,
        extra_compile_args={
            "cxx": cxx_cuda,
            # -Xptxas -v prints registers and spills per kernel into the build
            # log, so they are visible without a GPU.
            "nvcc": ["-O3", "-std=c++20", "-Xptxas", "-v", "-lineinfo"],
        })
else:
    ext = CppExtension("irnn_cuda._C", sources,
                       extra_compile_args={"cxx": cxx_flags},
                       extra_link_args=[OPENMP])

setup(ext_modules=[ext],
      cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
