"""Differentiable functions over the fused ops.

`irnn_layer` runs one layer and direction through torch.ops.irnn_cuda
(autograd is registered in _ops.py); `rnn_forward` runs a whole network with
torch.nn.RNN's conventions through the multi-layer driver of network.py,
with the fused op where the input's device has kernels and the reference
where it has none.
"""
import torch

from . import _ops
from .network import network_forward
from .reference import irnn_layer_reference

# The contract for every backend: input sizes up to this are projected inside
# the recurrent kernels; larger inputs are projected by one GEMM over all
# steps before them (docs/ops.md). It may not exceed any backend's own
# capacity (kernel_input_capacities), which is checked at import.
FUSED_INPUT_MAX = 4


def kernel_input_capacities():
    """The largest input size each backend's kernels project inside their
    time loops, as the compiled library reports it: {"cpu":
    kMaxFusedInput of csrc/cpu/irnn_cpu_params.h}. The CUDA kernels size
    their W_ih buffer at run time and have no fixed limit, so CUDA has no
    entry. Empty when the library is not loaded."""
    if not _ops.extension_loaded():
        return {}
    from . import _C
    if not hasattr(_C, "CPU_MAX_FUSED_INPUT"):
        raise ImportError(
            "irnn_cuda._C predates this Python package (it does not report "
            "CPU_MAX_FUSED_INPUT); rebuild it with "
            "`pip install --no-build-isolation .`")
    return {"cpu": _C.CPU_MAX_FUSED_INPUT}


def check_fused_input_max(contract, capacities):
    """Raises ImportError when `contract` exceeds a backend's capacity."""
    over = {device: cap for device, cap in capacities.items() if contract > cap}
    if over:
        kernels = ", ".join(f"{device} ({cap})" for device, cap in over.items())
        raise ImportError(
            f"irnn_cuda: FUSED_INPUT_MAX = {contract} exceeds the fused-input "
            f"capacity of the {kernels} kernels; lower FUSED_INPUT_MAX in "
            "irnn_cuda/functional.py, or raise the kernels' capacity and "
            "rebuild")


check_fused_input_max(FUSED_INPUT_MAX, kernel_input_capacities())


def padding_mask(lengths, T):
    """[T,B,1] bool, true where step t of row b is padding (t >= lengths[b])."""
    steps = torch.arange(T, device=lengths.device)
    return (steps.unsqueeze(1) >= lengths.unsqueeze(0)).unsqueeze(2)


def irnn_layer(input, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
               nonlinearity="relu", reverse=False, return_sequence=True,
               lengths=None):
    """One layer and direction of h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    input: [T,B,I]; h0: [B,H]. Returns (output [T,B,H] or None, h_n [B,H]).
    With return_sequence=False no [T,B,H] output is allocated unless autograd
    needs the sequence for the backward. lengths: None, or int64 [B] on the
    input's device, sorted in decreasing order, each in 1..T (the op's
    variable-length argument, docs/ops.md); with lengths, input may also be
    packed, [N,I] in PackedSequence.data's order, and the output is then
    [N,H] packed the same way (lengths then on the CPU). Runs the compiled ops, which
    must have kernels for the input's device (`layer_function` picks the
    reference where they do not).
    """
    if weight_ih.shape[1] > FUSED_INPUT_MAX:
        if lengths is not None and input.dim() == 3:
            # Padded steps may hold anything; zeros keep them out of dW_ih.
            input = input.masked_fill(padding_mask(lengths, input.shape[0]), 0)
        input = torch.matmul(input, weight_ih.t())
        weight_ih = None
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (input, h0, weight_ih, weight_hh, bias_ih, bias_hh))
    output, h_n = torch.ops.irnn_cuda.irnn_forward(
        input, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
        reverse, return_sequence or needs_grad, lengths)
    return (output if return_sequence else None), h_n


def layer_function(device_type, variable_length=False):
    """The per-layer function for tensors on `device_type`: irnn_layer where
    the compiled ops have kernels for it (every backend's kernels take
    lengths; `variable_length` is kept for callers), else (warning once) the
    slow reference irnn_layer_reference."""
    if _ops.has_kernels(device_type):
        return irnn_layer
    _ops.warn_fallback(device_type)
    return irnn_layer_reference


def check_lengths(lengths, input, batch_first):
    """`lengths` as an int64 tensor of shape [B], with an error naming the
    argument when its type, shape or dtype is wrong. Its values (1..T) are
    checked here when they are on the CPU and `input` is not (a CPU input's
    op checks them itself). Lengths on a GPU are not read on the host, which
    would wait for the device: their values are not checked (the kernels
    clamp them to 1..T)."""
    batch_dim, time_dim = (0, 1) if batch_first else (1, 0)
    B, T = input.shape[batch_dim], input.shape[time_dim]
    if not isinstance(lengths, torch.Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype != torch.int64:
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers (int64), got dtype "
                            f"{lengths.dtype}")
        lengths = lengths.to(torch.int64)
    if lengths.dim() != 1 or lengths.shape[0] != B:
        raise ValueError(f"lengths must have shape [B] = [{B}] (one length per "
                         f"batch row), got {list(lengths.shape)}")
    if (input.device.type != "cpu" and lengths.device.type == "cpu"
            and not torch.compiler.is_compiling()):
        bad = (lengths < 1) | (lengths > T)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"lengths must be in 1..T = 1..{T} (every row "
                             f"runs at least one step, as nn.RNN requires), "
                             f"got lengths[{b}] = {int(lengths[b])}")
    return lengths


def to_input_device(lengths, input):
    """CPU lengths for a CUDA input, copied to its device once (from pinned
    memory, asynchronously), so that the layers' ops find them there."""
    if lengths.device == input.device or input.device.type == "cpu":
        return lengths
    if input.device.type == "cuda" and not torch.compiler.is_compiling():
        lengths = lengths.pin_memory()
    return lengths.to(input.device, non_blocking=True)


def rnn_forward(input, hx, weights, nonlinearity, num_layers, bidirectional,
                batch_first, dropout, training, layer_fn=None,
                return_sequence=True, lengths=None, enforce_sorted=False):
    """A validated, batched forward with torch.nn.RNN's conventions.

    input: [T,B,I] ([B,T,I] if batch_first); hx: [L*D,B,H];
    weights: nn.RNN's `_flat_weights` order. layer_fn: the per-layer
    function (network.network_forward); None picks it by the input's device
    (layer_function). Returns (output or None, h_n).

    Variable length: `lengths` ([B] integers, each in 1..T; a CPU tensor for
    CPU input; for CUDA input on the CPU, checked and copied to the device
    once, or on the input's device, unchecked and with no host sync, as CUDA
    graph capture needs) makes row b run only its first lengths[b] steps, both
    directions, every layer: output[t, b] is zero for t >= lengths[b], and
    h_n[:, b] is the state after the row's last step, as nn.RNN gives for
    the same batch packed with pack_padded_sequence. The padded steps are
    never computed, and their input is never read. Rows may come in any
    order: they are sorted by length for the kernels and put back, unless
    enforce_sorted=True, which requires lengths in decreasing order (as a
    PackedSequence's) and skips that copy.
    """
    if lengths is not None:
        lengths = check_lengths(lengths, input, batch_first)
    if layer_fn is None:
        layer_fn = layer_function(input.device.type, lengths is not None)
    if lengths is None or enforce_sorted:
        lengths = None if lengths is None else to_input_device(lengths, input)
        return network_forward(layer_fn, input, hx, weights, nonlinearity,
                               num_layers, bidirectional, batch_first,
                               dropout, training, return_sequence, lengths)
    batch_dim = 0 if batch_first else 1
    lengths, order = torch.sort(lengths, descending=True, stable=True)
    lengths = to_input_device(lengths, input)
    inverse = torch.argsort(order)
    output, h_n = network_forward(
        layer_fn, input.index_select(batch_dim, order.to(input.device)),
        hx.index_select(1, order.to(hx.device)), weights, nonlinearity,
        num_layers, bidirectional, batch_first, dropout, training,
        return_sequence, lengths)
    if output is not None:
        output = output.index_select(batch_dim, inverse.to(output.device))
    return output, h_n.index_select(1, inverse.to(h_n.device))
