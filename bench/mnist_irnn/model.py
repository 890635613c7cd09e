"""The classifier and its optimiser."""
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import irnn_cuda
import mnist_data


# --input-norm: "unit" feeds the pixels in [0, 1], as the Keras example;
# "standard" subtracts the MNIST training pixels' mean and divides by their
# standard deviation (over all 60,000 training images, the values
# torchvision's MNIST examples use).
INPUT_NORMS = {"unit", "standard"}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class SeqMNISTModel(nn.Module):
    """Recurrent layer -> last hidden state -> Linear(hidden, 10).

    The weights are always drawn as an irnn_cuda.FusedIRNN, which has
    nn.RNN's parameter names; --impl torch and reference convert it to an
    nn.RNN. So every --impl starts from the same weights for a seed, the
    state_dict is the same for all, and checkpoints move freely between
    them.
    """

    def __init__(self, hidden, impl, init, variable_length=False,
                 input_norm="unit"):
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {sorted(INPUT_NORMS)},"
                             f" got {input_norm!r}")
        self.impl = impl
        self.variable_length = variable_length
        self.input_norm = input_norm
        rnn = irnn_cuda.FusedIRNN(1, hidden, nonlinearity="relu",
                                  init="irnn" if init == "irnn" else "torch")
        if init == "keras-default":
            with torch.no_grad():
                nn.init.xavier_uniform_(rnn.weight_ih_l0)
                nn.init.orthogonal_(rnn.weight_hh_l0)
                rnn.bias_ih_l0.zero_()
                rnn.bias_hh_l0.zero_()
        # Keras' Dense defaults, as in the example: glorot-uniform, zero bias.
        self.fc = nn.Linear(hidden, mnist_data.NUM_CLASSES)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.fc.weight)
            self.fc.bias.zero_()
        # Converted last: nn.RNN's constructor draws from the global RNG.
        self.rnn = rnn if impl == "fused" else rnn.to_rnn()

    def forward(self, pixels):
        """pixels: [B, 784] in [0, 1] -> logits [B, 10]. With
        variable_length, each image ends after its last non-zero row; with
        input_norm "standard" the layer sees (pixel - mean) / std."""
        x = pixels.t().unsqueeze(-1).contiguous()  # [T=784, B, I=1]
        if self.input_norm == "standard":
            x = (x - MNIST_MEAN) / MNIST_STD
        if self.variable_length:
            return self.fc(self._last_state_cropped(x, crop_lengths(pixels)))
        if self.impl == "fused":
            _, h_n = self.rnn(x, return_sequence=False)
        elif self.impl == "torch":
            _, h_n = self.rnn(x)
        else:
            r = self.rnn
            h0 = x.new_zeros(1, x.shape[1], r.hidden_size)
            _, h_n = irnn_cuda.irnn_reference(
                x, h0, [r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0,
                        r.bias_hh_l0], "relu", 1, False, False, 0.0,
                self.training)
        return self.fc(h_n[-1])


    def _last_state_cropped(self, x, lengths):
        """The state after each row's last step: a PackedSequence through
        FusedIRNN or nn.RNN, the reference with its lengths."""
        if self.impl == "reference":
            r = self.rnn
            h0 = x.new_zeros(1, x.shape[1], r.hidden_size)
            _, h_n = irnn_cuda.irnn_reference(
                x, h0, [r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0,
                        r.bias_hh_l0], "relu", 1, False, False, 0.0,
                self.training, lengths=lengths)
            return h_n[-1]
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        if self.impl == "fused":
            _, h_n = self.rnn(packed, return_sequence=False)
        else:
            _, h_n = self.rnn(packed)
        return h_n[-1]


def crop_lengths(pixels):
    """[B] steps of each image [B, 784] when it ends after its last row
    holding a non-zero pixel (at least one row)."""
    side = mnist_data.IMAGE_SIDE
    rows = pixels.reshape(len(pixels), side, side).ne(0).any(2)  # [B, 28]
    last = (rows * torch.arange(1, side + 1, device=pixels.device)).amax(1)
    return last.clamp(min=1) * side


def mean_length(images):
    """The mean of crop_lengths over images [N, 784] (any dtype)."""
    return crop_lengths(images).double().mean().item() if len(images) else 0.0


def make_optimizer(config, params):
    name, lr = config["optimizer"], config["lr"]
    if name == "rmsprop":  # Keras semantics: rho 0.9, epsilon 1e-7
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)
