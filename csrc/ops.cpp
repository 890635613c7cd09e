// The irnn_cuda op schemas (frozen; see docs/ops.md) and the Python module
// stub that lets `import irnn_cuda._C` load this library, and the record of
// the torch version it was built against.
//
// One forward and one backward op per layer and direction. The CPU
// implementation is in csrc/cpu/, the CUDA one in csrc/cuda/; fake (meta)
// implementations and autograd are registered from Python (irnn_cuda/_ops.py).
#include <Python.h>
#include <torch/library.h>

#include "cpu/irnn_cpu_params.h"

// setup.py passes the version of the torch it builds against as the tokens
// IRNN_TORCH_VERSION_TOKENS (2.14.1+cu130); they are made a string here.
#ifndef IRNN_TORCH_VERSION_TOKENS
#error "IRNN_TORCH_VERSION_TOKENS is undefined: build irnn_cuda._C with setup.py"
#endif
#define IRNN_STRINGIFY_TOKENS(x) #x
#define IRNN_STRINGIFY(x) IRNN_STRINGIFY_TOKENS(x)
#define IRNN_TORCH_VERSION IRNN_STRINGIFY(IRNN_TORCH_VERSION_TOKENS)

extern "C" {
// When this library will not load (an undefined symbol after torch changed),
// irnn_cuda/_ops.py finds this record in the file and names the torch the
// library was built against; `used` keeps it in the binary.
__attribute__((used)) const char irnn_cuda_build_record[] =
    "irnn_cuda._C built against torch " IRNN_TORCH_VERSION;

// `import irnn_cuda._C` only needs a module object; importing it runs the
// static registrations below. The module carries the CPU kernels' fused-input
// capacity, which irnn_cuda/functional.py checks its contract against, the
// torch version it was built against (TORCH_VERSION) and the instruction set
// of the CPU kernels in use (CPU_KERNELS: avx512, avx2 or generic), and
// whether the CUDA ops can hand their per-step GEMMs to cuBLASLt (CUBLASLT).
#ifdef IRNN_WITH_CUBLASLT
constexpr int kCublasLt = 1;
#else
constexpr int kCublasLt = 0;
#endif
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr &&
      (PyModule_AddIntConstant(module, "CPU_MAX_FUSED_INPUT",
                               irnn_cuda::kMaxFusedInput) < 0 ||
       PyModule_AddStringConstant(module, "TORCH_VERSION",
                                  IRNN_TORCH_VERSION) < 0 ||
       PyModule_AddStringConstant(module, "CPU_KERNELS",
                                  irnn_cuda::cpu_kernels_name()) < 0 ||
       PyModule_AddIntConstant(module, "CUBLASLT", kCublasLt) < 0)) {
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
      "bool reverse, bool store_sequence, Tensor? lengths=None) -> "
      "(Tensor output, Tensor h_n)");
  // output: the [T,B,H] sequence saved by irnn_forward(store_sequence=True).
  // Undefined (None) incoming gradients count as zeros. grad_weight_ih is an
  // empty [0] tensor when weight_ih is None; grad_bias serves both biases.
  // output_mask (revision 2) names the gradients wanted; the others are
  // returned as empty [0] tensors and not computed where a backend can.
  m.def(
      "irnn_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, "
      "Tensor h0, Tensor? weight_ih, Tensor weight_hh, Tensor output, "
      "str nonlinearity, bool reverse, Tensor? lengths=None, "
      "bool[5] output_mask=[True, True, True, True, True]) -> "
      "(Tensor grad_input, Tensor grad_h0, Tensor grad_weight_ih, "
      "Tensor grad_weight_hh, Tensor grad_bias)");
}

}  // namespace irnn_cuda
