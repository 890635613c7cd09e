"""Builds and drives the CPU emulation of the CUDA kernels (tests/emu/).

`build()` compiles emu_harness.cpp (the kernel headers of csrc/cuda/ with
the CUDA built-ins mapped by emu_platform.h) into a shared library with g++
and loads it with ctypes; `Emu.forward` / `Emu.backward` run one op call on
CPU torch tensors with the launch configuration the kernels' own
make_launch_config picks for a given device property table.
"""
import ctypes
import hashlib
import os
import subprocess

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SOURCES = [os.path.join(HERE, f) for f in ("emu_harness.cpp", "emu_platform.h")] + [
    os.path.join(ROOT, "csrc", "cuda", f)
    for f in ("irnn_cuda_api.h", "irnn_kernels.cuh", "irnn_launch.cuh",
              "irnn_lt_map.h")]
CXXFLAGS = ["-std=c++20", "-pthread", "-Wall", "-Wno-unknown-pragmas"]

# Device property tables (cudaDeviceGetAttribute values).
A100 = dict(sm_count=108, max_threads_per_block=1024, smem_per_block=48 * 1024,
            smem_per_block_optin=166912, cluster_launch=0)
H100 = dict(sm_count=132, max_threads_per_block=1024, smem_per_block=48 * 1024,
            smem_per_block_optin=232448, cluster_launch=1)

DTYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2,
          torch.bfloat16: 3}


class DeviceProps(ctypes.Structure):
    # clusters_of_4 and clusters_of_8 (clusters per wave) are 0 (unknown:
    # sm_count / blocks) unless a table gives them; so is reg_rows (the
    # table's choice of register-resident variant; IRNN_CUDA_ROWS).
    _fields_ = [("sm_count", ctypes.c_int), ("max_threads_per_block", ctypes.c_int),
                ("smem_per_block", ctypes.c_int64),
                ("smem_per_block_optin", ctypes.c_int64),
                ("cluster_launch", ctypes.c_int),
                ("clusters_of_4", ctypes.c_int), ("clusters_of_8", ctypes.c_int),
                ("reg_rows", ctypes.c_int)]


class LaunchConfig(ctypes.Structure):
    _fields_ = [("path", ctypes.c_int), ("rows_per_block", ctypes.c_int),
                ("row_groups", ctypes.c_int), ("rows_per_thread", ctypes.c_int),
                ("threads", ctypes.c_int), ("blocks", ctypes.c_int),
                ("smem", ctypes.c_int64), ("workspace", ctypes.c_int64),
                ("smem_optin", ctypes.c_bool), ("cluster", ctypes.c_int)]

    def as_dict(self):
        return {name: getattr(self, name) for name, _ in self._fields_}


_P, _I64, _B = ctypes.c_void_p, ctypes.c_int64, ctypes.c_bool
_HEAD = [("dtype", ctypes.c_int), ("T", _I64), ("B", _I64), ("I", _I64),
         ("H", _I64), ("project", _B), ("relu", _B), ("reverse", _B)]


class FwdArgs(ctypes.Structure):
    _fields_ = _HEAD + [
        ("x", _P), ("x_st", _I64), ("x_sb", _I64), ("h0", _P), ("w_ih", _P),
        ("w_hh", _P), ("b_ih", _P), ("b_hh", _P), ("out", _P),
        ("out_st", _I64), ("out_sb", _I64), ("h_n", _P), ("lengths", _P),
        ("offsets", _P), ("step_gemm", _P)]


class BwdArgs(ctypes.Structure):
    _fields_ = _HEAD + [
        ("g_out", _P), ("g_st", _I64), ("g_sb", _I64), ("g_hn", _P),
        ("x", _P), ("x_st", _I64), ("x_sb", _I64), ("h0", _P), ("w_ih", _P),
        ("w_hh", _P), ("out", _P), ("o_st", _I64), ("o_sb", _I64),
        ("dx", _P), ("dh0", _P), ("dw_ih", _P), ("dw_hh", _P), ("db", _P),
        ("lengths", _P), ("offsets", _P), ("bwd_gemm", _P)]


def build_dir(tmp_path_factory):
    """Where the emulation's builds go: IRNN_EMU_BUILD_DIR, else one folder
    for the whole pytest session, so the test modules that share a build
    (named by the digest of its sources and flags) compile it once."""
    out = os.environ.get("IRNN_EMU_BUILD_DIR") or str(
        tmp_path_factory.getbasetemp() / "emu-builds")
    os.makedirs(out, exist_ok=True)
    return out


def build(out_dir, extra_flags=("-O2",), output="emu_harness.so", main=None):
    """Compiles the harness (a .so, or an executable when `main` names a
    source with main()) into out_dir; returns its path. Reuses an existing
    build of the same sources and flags."""
    flags = CXXFLAGS + list(extra_flags)
    digest = hashlib.sha1(" ".join(flags + [str(main)]).encode())
    for path in SOURCES + ([main] if main else []):
        with open(path, "rb") as f:
            digest.update(f.read())
    target = os.path.join(out_dir, digest.hexdigest()[:12] + "-" + output)
    if not os.path.exists(target):
        src = main or os.path.join(HERE, "emu_harness.cpp")
        shared = [] if main else ["-shared", "-fPIC"]
        subprocess.run(["g++", *flags, *shared, src, "-o", target + ".tmp"],
                       check=True, capture_output=True, text=True)
        os.replace(target + ".tmp", target)
    return target


def _ptr(t):
    return None if t is None else t.data_ptr()


def _props(table):
    return DeviceProps(**table)


def packed_offsets(lengths):
    """[T] int64: where step t's rows start in a packed [N, *] tensor
    (lengths sorted in decreasing order, as a PackedSequence's)."""
    T = int(lengths.max())
    batch_sizes = (lengths.view(1, -1) > torch.arange(T).view(-1, 1)).sum(1)
    return (batch_sizes.cumsum(0) - batch_sizes).to(torch.int64).contiguous()


def _lengths_args(lengths, packed):
    """(lengths, offsets) for a call: lengths int64 [B]
    or None; packed: the input is [N, *] in PackedSequence order."""
    if lengths is None:
        return None, None
    lengths = lengths.to(torch.int64).contiguous()
    return lengths, packed_offsets(lengths) if packed else None


class Emu:
    def __init__(self, path):
        lib = ctypes.CDLL(path)
        lib.emu_last_error.restype = ctypes.c_char_p
        lib.emu_sizeof.restype = ctypes.c_int64
        for name in ("emu_forward", "emu_backward", "emu_forward_step_gemm",
                     "emu_backward_gemm"):
            getattr(lib, name).restype = ctypes.c_int
        self.lib = lib
        for i, cls in enumerate((DeviceProps, LaunchConfig, FwdArgs, BwdArgs)):
            assert lib.emu_sizeof(i) == ctypes.sizeof(cls), cls.__name__

    def config(self, table, backward, dtype, T, B, I, H, project=True,
               store_sequence=True):
        cfg = LaunchConfig()
        self.lib.emu_config(ctypes.byref(_props(table)), int(backward),
                            DTYPES[dtype], _I64(T), _I64(B), _I64(I), _I64(H),
                            int(project), int(store_sequence), ctypes.byref(cfg))
        return cfg.as_dict()

    def _check(self, rc):
        if rc != 0:
            raise RuntimeError(f"emulation failed ({rc}): "
                               f"{self.lib.emu_last_error().decode()}")

    def _launch(self, plain, hooked, table, args, block_order_seed, hook):
        """Runs lib.<plain>, or with a hook dict lib.<hooked> (its "fail_at"
        and "model" passed; its "calls", "products" (a strided batch's count
        each), "max_batch" and "rc" set; rc 77, the planted failure, is
        returned, not raised). Returns the config as a dict."""
        cfg = LaunchConfig()
        head = (ctypes.byref(_props(table)), ctypes.byref(args),
                ctypes.c_uint(block_order_seed), ctypes.byref(cfg))
        if hook is None:
            rc = getattr(self.lib, plain)(*head)
        else:
            calls = (ctypes.c_int64 * 3)()
            rc = getattr(self.lib, hooked)(
                *head, _I64(hook.get("fail_at", -1)),
                ctypes.c_int(hook.get("model") == "cublaslt"), calls)
            hook["calls"], hook["products"], hook["max_batch"] = calls
            hook["rc"] = rc
        if not (hook is not None and rc == 77):
            self._check(rc)
        return cfg.as_dict()

    def forward(self, table, x, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse,
                store_sequence, block_order_seed=0, lengths=None,
                packed=False, step_gemm=None):
        """irnn_forward on CPU tensors; x may have any [T,B,*] strides with a
        unit inner stride, or with `packed` be [N, I] in PackedSequence
        order with `lengths`. Returns (output or None, h_n, config).
        step_gemm: a dict given the per-step path's library GEMM as a plain
        loop (emu_forward_step_gemm), or with "model": "cublaslt" as the
        cuBLASLt call irnn_ops_cuda.cpp makes, evaluated column-major; its
        "fail_at" (default -1) names the call that fails, and "calls" is set
        to the number of calls made."""
        lengths, offsets = _lengths_args(lengths, packed)
        H = w_hh.shape[0]
        if packed:
            T, B, I = len(offsets), len(lengths), x.shape[1]
            assert x.stride(1) == 1
            out = x.new_empty((x.shape[0], H)) if store_sequence else None
            x_st, x_sb, out_st = 0, x.stride(0), 0
        else:
            T, B, I = x.shape
            assert x.stride(2) == 1
            out = x.new_empty((T, B, H)) if store_sequence else None
            x_st, x_sb, out_st = x.stride(0), x.stride(1), B * H
        h_n = x.new_empty((B, H))
        args = FwdArgs(
            dtype=DTYPES[x.dtype], T=T, B=B, I=I, H=H,
            project=w_ih is not None, relu=relu, reverse=reverse,
            x=_ptr(x), x_st=x_st, x_sb=x_sb, h0=_ptr(h0),
            w_ih=_ptr(w_ih), w_hh=_ptr(w_hh), b_ih=_ptr(b_ih), b_hh=_ptr(b_hh),
            out=_ptr(out), out_st=out_st, out_sb=H, h_n=_ptr(h_n),
            lengths=_ptr(lengths), offsets=_ptr(offsets))
        cfg = self._launch("emu_forward", "emu_forward_step_gemm", table,
                           args, block_order_seed, step_gemm)
        return out, h_n, cfg

    def backward(self, table, g_out, g_hn, x, h0, w_ih, w_hh, out, relu,
                 reverse, block_order_seed=0, lengths=None, packed=False,
                 bwd_gemm=None):
        """irnn_backward (with `packed`, g_out, x and out are [N, *] in
        PackedSequence order); returns (dx, dh0, dw_ih or None, dw_hh, db,
        config). bwd_gemm: a dict, as forward's step_gemm, given the
        gradient GEMMs as a plain loop (emu_backward_gemm)."""
        lengths, offsets = _lengths_args(lengths, packed)
        H = w_hh.shape[0]
        if packed:
            T, B, I = len(offsets), len(lengths), x.shape[1]
            dx = x.new_empty((x.shape[0], I))
            strides = lambda t: (0, t.stride(0))  # noqa: E731
        else:
            T, B, I = x.shape
            dx = x.new_empty((T, B, I))
            strides = lambda t: (t.stride(0), t.stride(1))  # noqa: E731
        dh0 = x.new_empty((B, H))
        dw_ih = x.new_empty((H, I)) if w_ih is not None else None
        dw_hh = x.new_empty((H, H))
        db = x.new_empty((H,))
        gs = strides(g_out) if g_out is not None else (0, 0)
        (x_st, x_sb), (o_st, o_sb) = strides(x), strides(out)
        args = BwdArgs(
            dtype=DTYPES[x.dtype], T=T, B=B, I=I, H=H,
            project=w_ih is not None, relu=relu, reverse=reverse,
            g_out=_ptr(g_out), g_st=gs[0], g_sb=gs[1], g_hn=_ptr(g_hn),
            x=_ptr(x), x_st=x_st, x_sb=x_sb, h0=_ptr(h0),
            w_ih=_ptr(w_ih), w_hh=_ptr(w_hh), out=_ptr(out),
            o_st=o_st, o_sb=o_sb, dx=_ptr(dx), dh0=_ptr(dh0),
            dw_ih=_ptr(dw_ih), dw_hh=_ptr(dw_hh), db=_ptr(db),
            lengths=_ptr(lengths), offsets=_ptr(offsets))
        cfg = self._launch("emu_backward", "emu_backward_gemm", table, args,
                           block_order_seed, bwd_gemm)
        return dx, dh0, dw_ih, dw_hh, db, cfg
