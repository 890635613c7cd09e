"""The oracle: the Elman recurrence as a plain PyTorch loop over time.

    a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,   h_t = phi(a_t)

Autograd differentiates it, so it serves every test as the source of truth
for outputs and gradients. It has the same per-layer signature as the fused
op (`irnn_layer_reference`), and a whole-network form
(`irnn_reference`) with torch.nn.RNN's conventions.
"""
import torch

from .network import network_forward


def _phi(a, nonlinearity):
    if nonlinearity == "relu":
        # torch.relu keeps NaN (a max(a, 0) idiom would not).
        return torch.relu(a)
    if nonlinearity == "tanh":
        return torch.tanh(a)
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. "
                     "Select from 'tanh' or 'relu'.")


def irnn_layer_reference(input, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                         nonlinearity="relu", reverse=False,
                         return_sequence=True):
    """One layer and direction. Same arguments as irnn_cuda::irnn_forward.

    input: [T,B,I] (or [T,B,H] already projected when weight_ih is None);
    h0: [B,H]. Returns (output [T,B,H], h_n [B,H]); output[t] is the state
    after reading input[t], in input order also when reverse is True. With
    return_sequence=False the output is None.
    """
    steps = range(input.shape[0] - 1, -1, -1) if reverse else range(input.shape[0])
    h = h0
    outputs = [None] * input.shape[0]
    for t in steps:
        a = input[t] if weight_ih is None else input[t] @ weight_ih.t()
        a = a + h @ weight_hh.t()
        if bias_ih is not None:
            a = a + bias_ih
        if bias_hh is not None:
            a = a + bias_hh
        h = _phi(a, nonlinearity)
        outputs[t] = h
    return (torch.stack(outputs) if return_sequence else None), h


def irnn_reference(input, hx, weights, nonlinearity="relu", num_layers=1,
                   bidirectional=False, batch_first=False, dropout=0.0,
                   training=False):
    """A whole multi-layer network with torch.nn.RNN's conventions.

    weights: the parameters in nn.RNN's `_flat_weights` order (per layer and
    direction: weight_ih, weight_hh, bias_ih, bias_hh, the biases omitted
    when bias=False). Returns (output, h_n) as nn.RNN does.
    """
    return network_forward(irnn_layer_reference, input, hx, weights,
                           nonlinearity, num_layers, bidirectional,
                           batch_first, dropout, training)
