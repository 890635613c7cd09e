// The irnn_cuda op schemas (frozen; see docs/ops.md) and the Python module
// stub that lets `import irnn_cuda._C` load this library.
//
// One forward and one backward op per layer and direction. The CPU
// implementation is in csrc/cpu/, the CUDA one in csrc/cuda/; fake (meta)
// implementations and autograd are registered from Python (irnn_cuda/_ops.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/irnn_cpu_params.h"

extern "C" {
// `import irnn_cuda._C` only needs a module object; importing it runs the
// static registrations below. The module carries the CPU kernels' fused-input
// capacity, which irnn_cuda/functional.py checks its contract against.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr &&
      PyModule_AddIntConstant(module, "CPU_MAX_FUSED_INPUT",
                              irnn_cuda::kMaxFusedInput) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

namespace irnn_cuda {

TORCH_LIBRARY(irnn_cuda, m) {
  // input: [T,B,I] with weight_ih [H,I], or [T,B,H] (already projected) when
  // weight_ih is None. h0: [B,H]. Returns output [T,B,H] (or [0,B,H] when
  // store_sequence is false) and h_n [B,H].
  m.def(
      "irnn_forward(Tensor input, Tensor h0, Tensor? weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, str nonlinearity, "
      "bool reverse, bool store_sequence) -> (Tensor output, Tensor h_n)");
  // output: the [T,B,H] sequence saved by irnn_forward(store_sequence=True).
  // Undefined (None) incoming gradients count as zeros. grad_weight_ih is an
  // empty [0] tensor when weight_ih is None; grad_bias serves both biases.
  m.def(
      "irnn_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, "
      "Tensor h0, Tensor? weight_ih, Tensor weight_hh, Tensor output, "
      "str nonlinearity, bool reverse) -> (Tensor grad_input, Tensor grad_h0, "
      "Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias)");
}

}  // namespace irnn_cuda
