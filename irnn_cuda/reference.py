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
                         return_sequence=True, lengths=None):
    """One layer and direction. Same arguments as irnn_cuda::irnn_forward.

    input: [T,B,I] (or [T,B,H] already projected when weight_ih is None);
    h0: [B,H]. Returns (output [T,B,H], h_n [B,H]); output[t] is the state
    after reading input[t], in input order also when reverse is True. With
    return_sequence=False the output is None.

    lengths: None, or [B] integers in 1..T in any order: row b runs only its
    first lengths[b] steps (reversed: from step lengths[b]-1 down to 0), its
    output is zero after them and h_n[b] is its state after its last step.
    The padded steps' input is never used, not even by the gradients.
    """
    T = input.shape[0]
    steps = range(T - 1, -1, -1) if reverse else range(T)
    valid = None
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=input.device)
        # valid[t]: [B,1], true where step t of the row is not padding.
        valid = (torch.arange(T, device=input.device).unsqueeze(1)
                 < lengths.unsqueeze(0)).unsqueeze(2)
    h = h0
    outputs = [None] * T
    for t in steps:
        x = input[t] if valid is None else input[t].masked_fill(~valid[t], 0)
        a = x if weight_ih is None else x @ weight_ih.t()
        a = a + h @ weight_hh.t()
        if bias_ih is not None:
            a = a + bias_ih
        if bias_hh is not None:
            a = a + bias_hh
        h_new = _phi(a, nonlinearity)
        if valid is None:
            h = outputs[t] = h_new
        else:
            h = torch.where(valid[t], h_new, h)
            outputs[t] = torch.where(valid[t], h_new, torch.zeros_like(h_new))
    return (torch.stack(outputs) if return_sequence else None), h


def irnn_reference(input, hx, weights, nonlinearity="relu", num_layers=1,
                   bidirectional=False, batch_first=False, dropout=0.0,
                   training=False, lengths=None):
    """A whole multi-layer network with torch.nn.RNN's conventions.

    weights: the parameters in nn.RNN's `_flat_weights` order (per layer and
    direction: weight_ih, weight_hh, bias_ih, bias_hh, the biases omitted
    when bias=False). Returns (output, h_n) as nn.RNN does. lengths: as
    irnn_layer_reference's, for every layer.
    """
    return network_forward(irnn_layer_reference, input, hx, weights,
                           nonlinearity, num_layers, bidirectional,
                           batch_first, dropout, training, lengths=lengths)
