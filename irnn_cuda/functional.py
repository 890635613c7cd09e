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


def irnn_layer(input, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
               nonlinearity="relu", reverse=False, return_sequence=True):
    """One layer and direction of h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    input: [T,B,I]; h0: [B,H]. Returns (output [T,B,H] or None, h_n [B,H]).
    With return_sequence=False no [T,B,H] output is allocated unless autograd
    needs the sequence for the backward. Runs the compiled ops, which must
    have kernels for the input's device (`layer_function` picks the
    reference where they do not).
    """
    if weight_ih.shape[1] > FUSED_INPUT_MAX:
        input = torch.matmul(input, weight_ih.t())
        weight_ih = None
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (input, h0, weight_ih, weight_hh, bias_ih, bias_hh))
    output, h_n = torch.ops.irnn_cuda.irnn_forward(
        input, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
        reverse, return_sequence or needs_grad)
    return (output if return_sequence else None), h_n


def layer_function(device_type):
    """The per-layer function for tensors on `device_type`: irnn_layer where
    the compiled ops have kernels for it, else (warning once) the slow
    reference irnn_layer_reference."""
    if _ops.has_kernels(device_type):
        return irnn_layer
    _ops.warn_fallback(device_type)
    return irnn_layer_reference


def rnn_forward(input, hx, weights, nonlinearity, num_layers, bidirectional,
                batch_first, dropout, training, layer_fn=None,
                return_sequence=True):
    """A validated, batched forward with torch.nn.RNN's conventions.

    input: [T,B,I] ([B,T,I] if batch_first); hx: [L*D,B,H];
    weights: nn.RNN's `_flat_weights` order. layer_fn: the per-layer
    function (network.network_forward); None picks it by the input's device
    (layer_function). Returns (output or None, h_n).
    """
    if layer_fn is None:
        layer_fn = layer_function(input.device.type)
    return network_forward(layer_fn, input, hx, weights, nonlinearity,
                           num_layers, bidirectional, batch_first, dropout,
                           training, return_sequence)
