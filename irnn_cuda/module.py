"""FusedIRNN: a drop-in torch.nn.RNN whose recurrence runs in the fused ops.

Same constructor arguments, attributes, parameter names and shapes, and
state_dict as torch.nn.RNN; only the initialisation (init='irnn' by
default) and the forward differ. It is an nn.Module rather than an nn.RNN
subclass because torch.compile refuses to trace nn.RNNBase instances.
"""
import math
import numbers
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence,
                                pad_packed_sequence)

from .functional import irnn_layer, layer_function, rnn_forward
from .network import network_forward

_INITS = ("irnn", "torch")


class FusedIRNN(nn.Module):
    """Elman RNN, h_t = phi(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), fused.

    Same arguments as torch.nn.RNN plus:
      init: 'irnn' (default) sets every W_hh to identity_scale * I,
        W_ih ~ N(0, 0.001^2) and the biases to 0 (Le, Jaitly & Hinton 2015,
        as in the Keras mnist_irnn example); 'torch' uses nn.RNN's
        uniform(-1/sqrt(H), 1/sqrt(H)) initialisation.
      identity_scale: the diagonal of W_hh under init='irnn' (default 1.0).

    forward(input, hx=None, return_sequence=True) -> (output, h_n) as
    nn.RNN; with return_sequence=False output is None and no [T,B,H]
    sequence is written unless autograd needs it for the backward.
    A PackedSequence goes in and comes out as with nn.RNN (hx and h_n in the
    caller's batch order); its padding is never computed. For a padded
    tensor plus lengths, see irnn_cuda.rnn_forward.
    """

    def __init__(self, input_size, hidden_size, num_layers=1,
                 nonlinearity="relu", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None,
                 init="irnn", identity_scale=1.0):
        super().__init__()
        if nonlinearity not in ("relu", "tanh"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select "
                             "from 'tanh' or 'relu'.")
        if init not in _INITS:
            raise ValueError(f"Unknown init '{init}'. Select from 'irnn' or "
                             "'torch'.")
        if (not isinstance(dropout, numbers.Number) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError("dropout should be a number in range [0, 1] "
                             "representing the probability of an element "
                             f"being zeroed, got {dropout!r}")
        for name, value in (("input_size", input_size),
                            ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} should be of type int, got: "
                                f"{type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be greater than zero, got "
                                 f"{value}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last "
                          "recurrent layer, so non-zero dropout expects "
                          f"num_layers greater than 1, but got dropout={dropout}"
                          f" and num_layers={num_layers}")
        self.mode = "RNN_RELU" if nonlinearity == "relu" else "RNN_TANH"
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.nonlinearity = nonlinearity
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = 0
        self.init = init
        self.identity_scale = float(identity_scale)
        factory = {"device": device, "dtype": dtype}
        num_dirs = 2 if bidirectional else 1
        # Registered in nn.RNN's order, so state_dicts and seeded
        # initialisations line up with it.
        self._flat_weights_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * num_dirs
            for suffix in ("", "_reverse")[:num_dirs]:
                shapes = {f"weight_ih_l{layer}{suffix}": (hidden_size, layer_input),
                          f"weight_hh_l{layer}{suffix}": (hidden_size, hidden_size)}
                if bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (hidden_size,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (hidden_size,)
                for name, shape in shapes.items():
                    self.register_parameter(
                        name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    @property
    def _flat_weights(self):
        """The parameters in nn.RNN's order (per layer and direction:
        weight_ih, weight_hh[, bias_ih, bias_hh])."""
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self):
        per_cell = 4 if self.bias else 2
        w = self._flat_weights
        return [w[i:i + per_cell] for i in range(0, len(w), per_cell)]

    def reset_parameters(self):
        with torch.no_grad():
            if self.init == "torch":
                bound = 1.0 / math.sqrt(self.hidden_size)
                for param in self.parameters():
                    nn.init.uniform_(param, -bound, bound)
                return
            for name, param in self.named_parameters():
                if name.startswith("weight_hh"):
                    param.copy_(torch.eye(self.hidden_size, dtype=param.dtype,
                                          device=param.device)
                                * self.identity_scale)
                elif name.startswith("weight_ih"):
                    param.normal_(0.0, 0.001)
                else:
                    param.zero_()

    def flatten_parameters(self):
        """No-op: the fused ops read the parameters where they are."""

    @classmethod
    def from_rnn(cls, rnn):
        """A FusedIRNN with the configuration and weights of an nn.RNN."""
        if not isinstance(rnn, nn.RNN):
            raise TypeError(f"from_rnn expects a torch.nn.RNN, got "
                            f"{type(rnn).__name__}")
        w = rnn.weight_hh_l0
        module = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers,
                     rnn.nonlinearity, rnn.bias, rnn.batch_first,
                     float(rnn.dropout), rnn.bidirectional, device=w.device,
                     dtype=w.dtype, init="torch")
        module.load_state_dict(rnn.state_dict())
        return module.train(rnn.training)

    def to_rnn(self):
        """A torch.nn.RNN with this module's configuration and weights."""
        w = self.weight_hh_l0
        rnn = nn.RNN(self.input_size, self.hidden_size, self.num_layers,
                     nonlinearity=self.nonlinearity, bias=self.bias,
                     batch_first=self.batch_first, dropout=float(self.dropout),
                     bidirectional=self.bidirectional, device=w.device,
                     dtype=w.dtype)
        rnn.load_state_dict(self.state_dict())
        return rnn.train(self.training)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        for name, default in (("bias", True), ("batch_first", False),
                              ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        return s + f", init={self.init!r}"

    def forward(self, input, hx=None, return_sequence=True):
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, return_sequence)
        input, hx, weights = self._autocast(input, hx,
                                            list(self._flat_weights))
        unbatched = self._check_input_and_hx(input, hx, weights[0])
        batch_dim = 0 if self.batch_first else 1
        if unbatched:
            input = input.unsqueeze(batch_dim)
            hx = hx.unsqueeze(1) if hx is not None else None
        if hx is None:
            num_dirs = 2 if self.bidirectional else 1
            hx = input.new_zeros(self.num_layers * num_dirs,
                                 input.shape[batch_dim], self.hidden_size)
        output, h_n = rnn_forward(input, hx, weights, self.nonlinearity,
                                  self.num_layers, self.bidirectional,
                                  self.batch_first, self.dropout,
                                  self.training,
                                  return_sequence=return_sequence)
        if unbatched:
            output = output.squeeze(batch_dim) if output is not None else None
            h_n = h_n.squeeze(1)
        return output, h_n

    def _autocast(self, input, hx, weights):
        """As nn.RNN under autocast: compute in the autocast dtype."""
        if not torch.is_autocast_enabled(input.device.type):
            return input, hx, weights
        dtype = torch.get_autocast_dtype(input.device.type)
        input = input.to(dtype) if input.is_floating_point() else input
        hx = hx.to(dtype) if hx is not None and hx.is_floating_point() else hx
        return input, hx, [w.to(dtype) for w in weights]

    def _forward_packed(self, packed, hx, return_sequence):
        """nn.RNN's forward on a PackedSequence. Where the compiled ops have
        kernels (CPU, CUDA) the packed rows go to them as they are, with the
        lengths on the CPU as the packed layout needs; elsewhere they are
        padded, run by the reference with their lengths and packed again.
        Either way the output has the input's batch_sizes and
        permutation."""
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        data, hx, weights = self._autocast(data, hx, list(self._flat_weights))
        if data.dim() != 2:
            raise ValueError(f"FusedIRNN: Expected the PackedSequence's data to "
                             f"be 2D [sum(lengths), input_size], got "
                             f"{data.dim()}D tensor instead")
        self._check_input_and_hx(data, None, weights[0])
        batch = int(batch_sizes[0])
        # lengths[b]: the steps whose batch size exceeds b (sorted order).
        lengths = (batch_sizes.unsqueeze(1) > torch.arange(batch)).sum(0)
        num_dirs = 2 if self.bidirectional else 1
        if hx is None:
            hx = data.new_zeros(self.num_layers * num_dirs, batch,
                                self.hidden_size)
        else:
            self._check_hx(hx, data, False, batch)
            if sorted_indices is not None:
                # nn.RNN's permute_hidden: hx is in the caller's order.
                hx = hx.index_select(1, sorted_indices)
        layer_fn = layer_function(data.device.type, variable_length=True)
        if layer_fn is irnn_layer:
            output, h_n = network_forward(
                irnn_layer, data, hx, weights, self.nonlinearity,
                self.num_layers, self.bidirectional, False, self.dropout,
                self.training, return_sequence, lengths)
        else:
            padded, _ = pad_packed_sequence(PackedSequence(data, batch_sizes))
            output, h_n = rnn_forward(padded, hx, weights, self.nonlinearity,
                                      self.num_layers, self.bidirectional,
                                      False, self.dropout, self.training,
                                      layer_fn=layer_fn,
                                      return_sequence=return_sequence,
                                      lengths=lengths, enforce_sorted=True)
            if output is not None:
                output = pack_padded_sequence(output, lengths).data
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
        if output is None:
            return None, h_n
        return PackedSequence(output, batch_sizes, sorted_indices,
                              unsorted_indices), h_n

    def _check_input_and_hx(self, input, hx, weight):
        """Raises what nn.RNN raises for bad input, before any launch.

        Returns True for unbatched (2-D) input.
        """
        if input.dim() not in (2, 3):
            raise ValueError(f"FusedIRNN: Expected input to be 2D or 3D, got "
                             f"{input.dim()}D tensor instead")
        if not input.is_floating_point() or input.dtype != weight.dtype:
            raise ValueError(
                f"FusedIRNN input dtype ({input.dtype}) does not match weight "
                f"dtype ({weight.dtype}). Convert input: "
                f"input.to({weight.dtype}), or convert model: "
                f"model.to({input.dtype})")
        if input.device != weight.device:
            raise RuntimeError(
                f"Input and parameter tensors are not at the same device, "
                f"found input tensor at {input.device} and parameter tensors "
                f"at {weight.device}")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected "
                f"{self.input_size}, got {input.shape[-1]}")
        unbatched = input.dim() == 2
        time_dim = 0 if unbatched or not self.batch_first else 1
        if input.shape[time_dim] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 "
                               "in RNN (input has 0 time steps)")
        if hx is None:
            return unbatched
        batch = 1 if unbatched else input.shape[0 if self.batch_first else 1]
        self._check_hx(hx, input, unbatched, batch)
        return unbatched

    def _check_hx(self, hx, input, unbatched, batch):
        """Raises what nn.RNN raises for a bad hx."""
        if unbatched and hx.dim() != 2:
            raise RuntimeError(f"For unbatched 2-D input, hx should also be "
                               f"2-D but got {hx.dim()}-D tensor")
        if not unbatched and hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D "
                               f"but got {hx.dim()}-D tensor")
        if hx.device != input.device:
            raise RuntimeError(
                f"Input and hidden tensors are not at the same device, found "
                f"input tensor at {input.device} and hidden tensor at "
                f"{hx.device}")
        if hx.dtype != input.dtype:
            raise RuntimeError(f"hx dtype ({hx.dtype}) does not match input "
                               f"dtype ({input.dtype}); convert hx: "
                               f"hx.to({input.dtype})")
        num_dirs = 2 if self.bidirectional else 1
        expected = (self.num_layers * num_dirs, batch, self.hidden_size)
        if unbatched:
            expected = (expected[0], expected[2])
        if tuple(hx.shape) != expected:
            raise RuntimeError(f"Expected hidden size {expected}, got "
                               f"{list(hx.shape)} (argument hx)")
