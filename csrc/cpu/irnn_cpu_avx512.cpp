// The float32 CPU kernels compiled for AVX-512 (16 float lanes, 32 vector
// registers), chosen at run time when the CPU has AVX-512F; float64 keeps the
// AVX2 build (irnn_cpu_avx2.cpp). Only this file is built with that target,
// so the package still loads on CPUs without AVX-512.
//
// Each output element is summed in the same order as in the AVX2 build (k in
// order, in blocks of kKBlock), so the two agree bitwise except for the fused
// dx, whose partial sums are split over the lanes.
#include <immintrin.h>
#include <math.h>

#include <cstdint>
#include <type_traits>

#include "irnn_cpu_params.h"

#if defined(__x86_64__) && defined(__GNUC__)

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")

#define IRNN_CPU_ISA cpu_avx512
#include "irnn_cpu_kernels.h"
#include "irnn_cpu_cephes.h"

namespace irnn_cuda {
namespace cpu_avx512 {
namespace {

struct VecF {
  using S = float;
  using R = __m512;
  static constexpr int kL = 16;
  static constexpr int kRegs = 32;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(S x) { return _mm512_set1_ps(x); }
  static R load(const S* p) { return _mm512_loadu_ps(p); }
  static __mmask16 mask(int n) {
    return static_cast<__mmask16>((1u << n) - 1u);
  }
  static R load_n(const S* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(S* p, R x) { _mm512_storeu_ps(p, x); }
  static void store_n(S* p, R x, int n) { _mm512_mask_storeu_ps(p, mask(n), x); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  // a < 0 ? 0 : a, lane-wise: NaN compares false and is kept.
  static R relu(R a) {
    return _mm512_maskz_mov_ps(
        static_cast<__mmask16>(~_mm512_cmp_ps_mask(a, zero(), _CMP_LT_OQ)), a);
  }
  // h <= 0 ? 0 : g, PyTorch's threshold_backward (a NaN state passes g).
  static R relu_grad(R g, R h) {
    return _mm512_maskz_mov_ps(
        static_cast<__mmask16>(~_mm512_cmp_ps_mask(h, zero(), _CMP_LE_OQ)), g);
  }
  // exp(x) for 0 <= x <= 88: the AVX2 build's Cephes expf, operation for
  // operation.
  static R exp_nonneg(R x) {
    const R n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(cephes::kLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    R r = _mm512_fnmadd_ps(n, set1(cephes::kLn2Hi), x);
    r = _mm512_fnmadd_ps(n, set1(cephes::kLn2Lo), r);
    const R p = cephes::exp_reduced<VecF>(r);
    const __m512i scale = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return mul(p, _mm512_castsi512_ps(scale));
  }
  // Cephes tanhf, as in the AVX2 build: x + x^3 P(x^2) for |x| < 0.625, else
  // sign(x) (1 - 2 / (e^{2|x|} + 1)); NaN in, NaN out.
  static R tanh(R x) {
    const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
    const __m512i xi = _mm512_castps_si512(x);
    const R ax = _mm512_castsi512_ps(_mm512_andnot_si512(sign_bit, xi));
    const R e = exp_nonneg(_mm512_min_ps(add(ax, ax), set1(88.0f)));
    const R mag = sub(set1(1.0f), _mm512_div_ps(set1(2.0f), add(e, set1(1.0f))));
    const R big = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(mag), _mm512_and_si512(xi, sign_bit)));
    const R small = cephes::tanh_small<VecF>(x);
    const R y = _mm512_mask_blend_ps(
        _mm512_cmp_ps_mask(ax, set1(cephes::kTanhSmall), _CMP_LT_OQ), big, small);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), y, x);
  }
  // Lanes summed in order, as the AVX2 build's hsum.
  static S hsum(R a) {
    alignas(64) S v[kL];
    _mm512_store_ps(v, a);
    S s = 0;
    for (int i = 0; i < kL; ++i) s += v[i];
    return s;
  }
};

}  // namespace

KernelTable<float> table_float() {
  return kernel_table<VecF>();
}

}  // namespace cpu_avx512
}  // namespace irnn_cuda

#pragma GCC pop_options

namespace irnn_cuda {
namespace cpu_avx512 {
bool supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma");
}
}  // namespace cpu_avx512
}  // namespace irnn_cuda

#else  // not x86-64 with GCC/Clang: the portable kernels only

namespace irnn_cuda {
namespace cpu_avx512 {
bool supported() { return false; }
KernelTable<float> table_float() { return {}; }
}  // namespace cpu_avx512
}  // namespace irnn_cuda

#endif
