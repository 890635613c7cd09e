// The CPU kernels for any CPU: the same code as the AVX2 build, with a
// one-lane "vector" that the compiler is free to vectorise.
#include <math.h>

#include <cstdint>
#include <type_traits>

#include "irnn_cpu_params.h"

#define IRNN_CPU_ISA cpu_generic
#include "irnn_cpu_kernels.h"

namespace irnn_cuda {
namespace cpu_generic {
namespace {

template <typename S_>
struct Scalar {
  using S = S_;
  using R = S_;
  static constexpr int kL = 1;
  static constexpr int kRegs = 16;
  static R zero() { return S(0); }
  static R set1(S x) { return x; }
  static R load(const S* p) { return *p; }
  static R load_n(const S* p, int n) { return n > 0 ? *p : S(0); }
  static void store(S* p, R x) { *p = x; }
  static void store_n(S* p, R x, int n) {
    if (n > 0) *p = x;
  }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R fma(R a, R b, R c) { return a * b + c; }
  static R relu(R a) { return a < S(0) ? S(0) : a; }  // keeps NaN
  static R relu_grad(R g, R h) { return h <= S(0) ? S(0) : g; }
  static R tanh(R a) {
    if constexpr (sizeof(S) == 4) {
      return ::tanhf(a);
    } else {
      return ::tanh(a);
    }
  }
  static S hsum(R a) { return a; }
};

}  // namespace

KernelTable<float> table_float() {
  return kernel_table<Scalar<float>>();
}
KernelTable<double> table_double() {
  return kernel_table<Scalar<double>>();
}

}  // namespace cpu_generic
}  // namespace irnn_cuda
