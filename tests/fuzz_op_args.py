"""Calls torch.ops.irnn_cuda.* with degenerate and malformed arguments.

Run as a program by test_loud_failures.py, so that a crash (a signal) ends
this process rather than pytest:

    python tests/fuzz_op_args.py FIRST

runs cases FIRST, FIRST+1, ... in a fixed order, printing `start N: case`
before each and `done N: outcome` after it. A malformed case must end in a Python
exception or in a result of the right shapes; a well-formed call must
return, and its result match the reference.
"""
import itertools
import sys

import torch

import irnn_cuda  # noqa: F401  (loads the ops)
from irnn_cuda import irnn_layer_reference

ops = torch.ops.irnn_cuda
SIZES = (0, 1, 2, 5)
WRONG_DTYPES = (torch.int64, torch.bool, torch.float16, torch.bfloat16,
                torch.float64, torch.complex64)
FORWARD_ARGS = ("input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
BACKWARD_ARGS = ("grad_output", "grad_h_n", "input", "h0", "weight_ih",
                 "weight_hh", "output")
OPTIONAL_ARGS = ("bias_ih", "bias_hh", "grad_output", "grad_h_n")
DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


def forward_args(T, B, I, H, project=True, bias=True):
    """Well-formed float32 forward arguments for these sizes."""
    return dict(
        input=torch.randn(T, B, I if project else H),
        h0=torch.randn(B, H),
        weight_ih=torch.randn(H, I) if project else None,
        weight_hh=torch.randn(H, H) * 0.5,
        bias_ih=torch.randn(H) if bias else None,
        bias_hh=torch.randn(H) if bias else None)


def backward_args(T, B, I, H, project=True, grad_output=True, grad_h_n=True):
    """Well-formed float32 backward arguments for these sizes."""
    f = forward_args(T, B, I, H, project, bias=False)
    return dict(grad_output=torch.randn(T, B, H) if grad_output else None,
                grad_h_n=torch.randn(B, H) if grad_h_n else None,
                input=f["input"], h0=f["h0"], weight_ih=f["weight_ih"],
                weight_hh=f["weight_hh"], output=torch.randn(T, B, H).relu())


def reshaped(t, rank):
    """`t`'s values (or a few) as a tensor of another rank."""
    if rank == 0:
        return torch.randn((), dtype=t.dtype)
    return torch.randn(*([2] * rank), dtype=t.dtype)


def cases():
    """(description, op name, kwargs, well_formed) in a fixed order."""
    flags = (False, True)
    for T, B, I, H in itertools.product(SIZES, repeat=4):
        for project, bias, store in itertools.product(flags, flags, flags):
            if not project and I != SIZES[0]:
                continue  # I is unused without weight_ih
            well_formed = T >= 1 and H >= 1 and (I >= 1 or not project)
            kw = forward_args(T, B, I, H, project, bias)
            yield (f"forward T={T} B={B} I={I} H={H} project={project} "
                   f"bias={bias} store={store}", "forward",
                   dict(kw, nonlinearity="relu", reverse=store,
                        store_sequence=store), well_formed)
        for project, g_out, g_hn in itertools.product(flags, flags, flags):
            if not project and I != SIZES[0]:
                continue
            well_formed = T >= 1 and H >= 1 and (I >= 1 or not project)
            kw = backward_args(T, B, I, H, project, g_out, g_hn)
            yield (f"backward T={T} B={B} I={I} H={H} project={project} "
                   f"grad_output={g_out} grad_h_n={g_hn}", "backward",
                   dict(kw, nonlinearity="tanh", reverse=g_out), well_formed)
    # One argument at a time made wrong: rank, dtype, device, emptiness,
    # a stride of 0, a wrong size.
    for op, names, make in (("forward", FORWARD_ARGS, forward_args),
                            ("backward", BACKWARD_ARGS, backward_args)):
        for name in names:
            for variant in ("rank0", "rank1", "rank3", "rank4", "empty",
                            "expanded", "transposed", "bigger", "none",
                            *WRONG_DTYPES, *DEVICES):
                kw = make(3, 2, 2, 3)
                t = kw[name]
                if variant.__class__ is str and variant.startswith("rank"):
                    kw[name] = reshaped(t, int(variant[4:]))
                elif variant == "empty":
                    kw[name] = t.new_empty((0,) * t.dim())
                elif variant == "expanded":
                    kw[name] = t.flatten()[:1].expand(t.shape)
                elif variant == "transposed":
                    kw[name] = t.transpose(0, -1)
                elif variant == "bigger":
                    kw[name] = torch.randn([s + 1 for s in t.shape])
                elif variant == "none":
                    kw[name] = None
                elif isinstance(variant, torch.dtype):
                    kw[name] = t.to(variant)
                else:
                    kw[name] = t.to(variant)
                # Any layout is valid; of the optional arguments, only the
                # biases and the incoming gradients may be left out here
                # (without weight_ih the input would have to be [T, B, H]).
                well_formed = variant == "expanded" or (
                    variant == "none" and name in OPTIONAL_ARGS)
                extra = (dict(nonlinearity="relu", reverse=False,
                              store_sequence=True) if op == "forward"
                         else dict(nonlinearity="relu", reverse=False))
                yield (f"{op} {name}={variant}", op, dict(kw, **extra),
                       well_formed)
        for device in DEVICES:
            kw = {k: (v.to(device) if v is not None else None)
                  for k, v in make(3, 2, 2, 3).items()}
            extra = (dict(nonlinearity="relu", reverse=False,
                          store_sequence=True) if op == "forward"
                     else dict(nonlinearity="relu", reverse=False))
            yield f"{op} all on {device}", op, dict(kw, **extra), False
        for nonlinearity in ("", "sigmoid", "RELU"):
            kw = make(3, 2, 2, 3)
            extra = (dict(reverse=False, store_sequence=True)
                     if op == "forward" else dict(reverse=False))
            yield (f"{op} nonlinearity={nonlinearity!r}", op,
                   dict(kw, nonlinearity=nonlinearity, **extra), False)
    yield from lengths_cases()


LENGTHS_VARIANTS = {
    # (lengths for B = 2 rows of T = 3 steps, well formed)
    "valid": (torch.tensor([3, 1]), True),
    "int32": (torch.tensor([3, 1], dtype=torch.int32), False),
    "float": (torch.tensor([3.0, 1.0]), False),
    "bool": (torch.tensor([True, True]), False),
    "rank0": (torch.tensor(3), False),
    "rank2": (torch.tensor([[3, 1]]), False),
    "short": (torch.tensor([3]), False),
    "long": (torch.tensor([3, 2, 1]), False),
    "empty": (torch.tensor([], dtype=torch.int64), False),
    "negative": (torch.tensor([3, -1]), False),
    "zero": (torch.tensor([3, 0]), False),
    "over_T": (torch.tensor([4, 1]), False),
    "huge": (torch.tensor([2**62, 1]), False),
    "min_int": (torch.tensor([3, -2**63]), False),
    "unsorted": (torch.tensor([1, 3]), False),
    "expanded": (torch.tensor([3]).expand(2), True),
    "strided": (torch.tensor([3, 0, 1, 0])[::2], True),
    **{f"on {device}": (torch.tensor([3, 1], device=device), False)
       for device in DEVICES},
}


def lengths_cases():
    """`lengths` made wrong one way at a time, on padded [3, 2, *] input
    and on packed [N, *] input (PackedSequence.data's layout), for both
    ops; and packed inputs whose row count disagrees with the lengths."""
    for layout in ("padded", "packed"):
        for name, (lengths, well_formed) in LENGTHS_VARIANTS.items():
            for op, make in (("forward", forward_args), ("backward", backward_args)):
                kw = make(3, 2, 2, 3)
                if layout == "packed":
                    # [T, B, *] -> the rows of lengths [3, 1]: t0 b0, t0 b1, t1 b0, t2 b0
                    rows = [(0, 0), (0, 1), (1, 0), (2, 0)]
                    for key in ("input", "output", "grad_output"):
                        if key in kw:
                            kw[key] = torch.stack([kw[key][t, b] for t, b in rows])
                extra = (dict(nonlinearity="relu", reverse=False,
                              store_sequence=True) if op == "forward"
                         else dict(nonlinearity="relu", reverse=True))
                # Packed rows are laid out for lengths [3, 1] only.
                valid = well_formed and (layout == "padded"
                                         or lengths.tolist() == [3, 1])
                yield (f"{op} {layout} lengths={name}", op,
                       dict(kw, lengths=lengths, **extra), valid)
    for rows in (0, 3, 5, 2**20):
        kw = forward_args(3, 2, 2, 3)
        yield (f"forward packed with {rows} rows for lengths [3, 1]", "forward",
               dict(kw, input=torch.randn(rows, 2), lengths=torch.tensor([3, 1]),
                    nonlinearity="relu", reverse=False, store_sequence=True),
               False)


def expected_forward(kw):
    """The reference's (output, h_n) for a well-formed forward call."""
    x, w_ih = kw["input"], kw["weight_ih"]
    if w_ih is None:
        H = kw["weight_hh"].shape[0]
        x, w_ih = x, torch.eye(H)
    return irnn_layer_reference(x.double(), kw["h0"].double(), w_ih.double(),
                                kw["weight_hh"].double(),
                                _double(kw["bias_ih"]), _double(kw["bias_hh"]),
                                kw["nonlinearity"], kw["reverse"], True,
                                kw.get("lengths"))


def _double(t):
    return t.double() if t is not None else None


def check_result(kind, kw, result, well_formed):
    """Raises AssertionError unless `result` is a valid result of the call."""
    lengths = kw.get("lengths")
    if lengths is not None and kw["input"].dim() == 2:
        # Packed rows: results in the packed layout, valid steps only.
        B, H = lengths.numel(), kw["weight_hh"].shape[0]
        if kind == "forward":
            output, h_n = result
            rows = kw["input"].shape[0] if kw["store_sequence"] else 0
            assert output.shape == (rows, H) and h_n.shape == (B, H)
        else:
            assert result[0].shape == kw["input"].shape
            assert result[1].shape == (B, H)
        for r in result:
            assert torch.isfinite(r.double()).all(), "non-finite result"
        return
    if kind == "forward":
        output, h_n = result
        T, B = kw["input"].shape[:2]
        H = kw["weight_hh"].shape[0]
        assert output.shape == (T if kw["store_sequence"] else 0, B, H), output.shape
        assert h_n.shape == (B, H), h_n.shape
        if well_formed:
            ref_out, ref_hn = expected_forward(kw)
            torch.testing.assert_close(h_n.double(), ref_hn, rtol=1e-4, atol=1e-4)
            if kw["store_sequence"]:
                torch.testing.assert_close(output.double(), ref_out,
                                           rtol=1e-4, atol=1e-4)
        return
    grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias = result
    assert grad_input.shape == kw["input"].shape, grad_input.shape
    assert grad_h0.shape == kw["h0"].shape, grad_h0.shape
    if kw["weight_ih"] is not None:
        assert grad_w_ih.shape == kw["weight_ih"].shape, grad_w_ih.shape
    assert grad_w_hh.shape == kw["weight_hh"].shape, grad_w_hh.shape
    assert grad_bias.shape == kw["weight_hh"].shape[:1], grad_bias.shape
    if well_formed:
        for g in result:
            assert torch.isfinite(g.double()).all(), "non-finite gradient"


def main(first):
    for number, (description, kind, kw, well_formed) in enumerate(cases()):
        if number < first:
            continue
        print(f"start {number}: {description}", flush=True)
        op = ops.irnn_forward if kind == "forward" else ops.irnn_backward
        try:
            result = op(**kw)
        except Exception as exc:
            if well_formed:
                raise AssertionError(f"case {number}, {description}: a valid "
                                     "call raised") from exc
            print(f"done {number}: {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''}", flush=True)
            continue
        check_result(kind, kw, result, well_formed)
        print(f"done {number}: ok", flush=True)
    print("finished", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
