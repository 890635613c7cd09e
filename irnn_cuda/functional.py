"""Differentiable functions over the fused ops.

`irnn_layer` runs one layer and direction through torch.ops.irnn_cuda
(autograd is registered in _ops.py); `rnn_forward` is the multi-layer,
bidirectional driver with torch.nn.RNN's conventions, shared by FusedIRNN
and the reference.
"""
import torch
import torch.nn.functional as F

from . import _ops
from .reference import irnn_layer_reference

# Input sizes up to this are projected inside the recurrent kernel; larger
# inputs are projected by one GEMM over all steps before it (docs/ops.md).
FUSED_INPUT_MAX = 4


def irnn_layer(input, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None,
               nonlinearity="relu", reverse=False, return_sequence=True):
    """One layer and direction of h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh).

    input: [T,B,I]; h0: [B,H]. Returns (output [T,B,H] or None, h_n [B,H]).
    With return_sequence=False no [T,B,H] output is allocated unless autograd
    needs the sequence for the backward.
    """
    device_type = input.device.type
    if not _ops.has_kernels(device_type):
        _ops.warn_fallback(device_type)
        return irnn_layer_reference(input, h0, weight_ih, weight_hh, bias_ih,
                                    bias_hh, nonlinearity, reverse,
                                    return_sequence)
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


def rnn_forward(input, hx, weights, nonlinearity, num_layers, bidirectional,
                batch_first, dropout, training, layer_fn=irnn_layer,
                return_sequence=True):
    """A validated, batched forward with torch.nn.RNN's conventions.

    input: [T,B,I] ([B,T,I] if batch_first); hx: [L*D,B,H];
    weights: nn.RNN's `_flat_weights` order. Returns (output or None, h_n).
    """
    if batch_first:
        input = input.transpose(0, 1)
    num_dirs = 2 if bidirectional else 1
    per_cell = len(weights) // (num_layers * num_dirs)
    h_n = []
    layer_input = input
    for layer in range(num_layers):
        last = layer == num_layers - 1
        outputs = []
        for direction in range(num_dirs):
            k = layer * num_dirs + direction
            w = weights[k * per_cell:(k + 1) * per_cell]
            b_ih, b_hh = (w[2], w[3]) if per_cell == 4 else (None, None)
            out, h = layer_fn(layer_input, hx[k], w[0], w[1], b_ih, b_hh,
                              nonlinearity, direction == 1,
                              return_sequence or not last)
            outputs.append(out)
            h_n.append(h)
        if last and not return_sequence:
            return None, torch.stack(h_n)
        layer_input = outputs[0] if num_dirs == 1 else torch.cat(outputs, 2)
        if dropout > 0 and training and not last:
            layer_input = F.dropout(layer_input, dropout, training=True)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    return output, torch.stack(h_n)
