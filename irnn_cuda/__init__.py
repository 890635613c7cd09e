"""irnn_cuda: persistent fused ReLU/tanh Elman RNN kernels for PyTorch.

    from irnn_cuda import FusedIRNN   # a drop-in torch.nn.RNN
"""
from ._ops import cpu_kernels, cuda_gemm, extension_loaded, has_kernels
from .functional import irnn_layer, rnn_forward
from .module import FusedIRNN
from .reference import irnn_layer_reference, irnn_reference

__all__ = ["FusedIRNN", "irnn_layer", "rnn_forward", "irnn_reference",
           "irnn_layer_reference", "extension_loaded", "has_kernels",
           "cpu_kernels", "cuda_gemm"]
__version__ = "0.1.0"
