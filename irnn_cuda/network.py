"""The multi-layer, bidirectional driver with torch.nn.RNN's conventions.

`network_forward` runs a whole network one layer and direction at a time
through a per-layer function: the fused op (`functional.irnn_layer`) or the
oracle (`reference.irnn_layer_reference`). Both modules import this one, so
neither imports the other for it.
"""
import torch
import torch.nn.functional as F


def network_forward(layer_fn, input, hx, weights, nonlinearity, num_layers,
                    bidirectional, batch_first, dropout, training,
                    return_sequence=True, lengths=None):
    """A batched forward with torch.nn.RNN's conventions.

    layer_fn(input [T,B,I], h0 [B,H], weight_ih, weight_hh, bias_ih, bias_hh,
    nonlinearity, reverse, return_sequence) -> (output [T,B,H] or None,
    h_n [B,H]) runs one layer and direction.
    input: [T,B,I] ([B,T,I] if batch_first); hx: [L*D,B,H];
    weights: nn.RNN's `_flat_weights` order. Returns (output or None, h_n).
    lengths: None, or [B] steps per row, passed to every layer_fn call as
    `lengths=` (the output is zero at padded steps, so the next layer's
    padding stays clean).
    """
    extra = {} if lengths is None else {"lengths": lengths}
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
                              return_sequence or not last, **extra)
            outputs.append(out)
            h_n.append(h)
        if last and not return_sequence:
            return None, torch.stack(h_n)
        layer_input = outputs[0] if num_dirs == 1 else torch.cat(outputs, -1)
        if dropout > 0 and training and not last:
            layer_input = F.dropout(layer_input, dropout, training=True)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    return output, torch.stack(h_n)
