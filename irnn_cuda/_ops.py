"""Loads the compiled ops and registers their fake (meta) implementations and
autograd formulas. The op schemas are documented in docs/ops.md."""
import warnings

import torch

try:
    from . import _C  # noqa: F401  (importing registers torch.ops.irnn_cuda.*)
    _IMPORT_ERROR = None
except ImportError as exc:  # the package was used without being built
    _IMPORT_ERROR = exc

_warned = set()


def extension_loaded():
    """True when the compiled library irnn_cuda._C is loaded."""
    return _IMPORT_ERROR is None


def _kernel_table():
    if not extension_loaded():
        return {}
    return {device_type: torch._C._dispatch_has_kernel_for_dispatch_key(
        "irnn_cuda::irnn_forward", key)
        for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA"))}


# Looked up once: the registrations are fixed once _C is loaded, and a plain
# dict keeps torch.compile from tracing into the dispatcher query.
_KERNELS = _kernel_table()


def has_kernels(device_type):
    """True when the compiled ops have an implementation for `device_type`."""
    return _KERNELS.get(device_type, False)


def warn_fallback(device_type):
    """Warns once per device type that the reference is standing in."""
    if device_type in _warned:
        return
    _warned.add(device_type)
    if not extension_loaded():
        why = (f"the compiled extension irnn_cuda._C did not load "
               f"({_IMPORT_ERROR}); build it with "
               "`pip install --no-build-isolation .`")
    else:
        why = (f"irnn_cuda._C was built without {device_type} kernels "
               "(for CUDA: rebuild with a CUDA toolkit and IRNN_BUILD_CUDA=1)")
    warnings.warn(f"irnn_cuda: {why}; falling back to the slow pure-PyTorch "
                  f"reference on {device_type}.", RuntimeWarning, stacklevel=3)


if extension_loaded():

    @torch.library.register_fake("irnn_cuda::irnn_forward")
    def _irnn_forward_fake(input, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                           nonlinearity, reverse, store_sequence):
        T, B = input.shape[0], input.shape[1]
        H = weight_hh.shape[0]
        output = input.new_empty((T if store_sequence else 0, B, H))
        return output, input.new_empty((B, H))

    @torch.library.register_fake("irnn_cuda::irnn_backward")
    def _irnn_backward_fake(grad_output, grad_h_n, input, h0, weight_ih,
                            weight_hh, output, nonlinearity, reverse):
        H = weight_hh.shape[0]
        grad_weight_ih = (weight_ih.new_empty(weight_ih.shape) if weight_ih is not None
                          else input.new_empty((0,)))
        return (input.new_empty(input.shape), h0.new_empty(h0.shape), grad_weight_ih,
                weight_hh.new_empty(weight_hh.shape), input.new_empty((H,)))

    def _forward_setup_context(ctx, inputs, output):
        (input, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity,
         reverse, store_sequence) = inputs
        ctx.nonlinearity = nonlinearity
        ctx.reverse = reverse
        ctx.store_sequence = store_sequence
        ctx.has_weight_ih = weight_ih is not None
        ctx.save_for_backward(input, h0, weight_ih, weight_hh, output[0])

    def _forward_backward(ctx, grad_output, grad_h_n):
        if not ctx.store_sequence:
            raise RuntimeError(
                "irnn_cuda.irnn_forward: backward needs the hidden-state "
                "sequence, but the op was called with store_sequence=False; "
                "call it with store_sequence=True when gradients are needed")
        input, h0, weight_ih, weight_hh, output = ctx.saved_tensors
        (grad_input, grad_h0, grad_weight_ih, grad_weight_hh,
         grad_bias) = torch.ops.irnn_cuda.irnn_backward(
            grad_output, grad_h_n, input, h0, weight_ih, weight_hh, output,
            ctx.nonlinearity, ctx.reverse)
        need = ctx.needs_input_grad
        return (grad_input if need[0] else None,
                grad_h0 if need[1] else None,
                grad_weight_ih if need[2] else None,
                grad_weight_hh if need[3] else None,
                grad_bias if need[4] else None,
                grad_bias if need[5] else None,
                None, None, None)

    torch.library.register_autograd(
        "irnn_cuda::irnn_forward", _forward_backward,
        setup_context=_forward_setup_context)

    def _backward_setup_context(ctx, inputs, output):
        pass

    def _no_double_backward(ctx, *grads):
        raise RuntimeError(
            "irnn_cuda: double backward (a gradient of a gradient) is not "
            "supported by the fused ops; use irnn_cuda.reference.irnn_reference "
            "for higher-order derivatives")

    torch.library.register_autograd(
        "irnn_cuda::irnn_backward", _no_double_backward,
        setup_context=_backward_setup_context)
