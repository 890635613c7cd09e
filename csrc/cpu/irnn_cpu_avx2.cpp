// The CPU kernels compiled for AVX2 + FMA (8 float or 4 double lanes),
// chosen at run time when the CPU has them. Only this file is built with
// that target, so the package still loads on CPUs without AVX2.
#include <immintrin.h>
#include <math.h>

#include <cstdint>
#include <type_traits>

#include "irnn_cpu_params.h"

#if defined(__x86_64__) && defined(__GNUC__)

#pragma GCC push_options
#pragma GCC target("avx2,fma")

#define IRNN_CPU_ISA cpu_avx2
#include "irnn_cpu_kernels.h"
#include "irnn_cpu_cephes.h"

namespace irnn_cuda {
namespace cpu_avx2 {
namespace {

struct VecF {
  using S = float;
  using R = __m256;
  static constexpr int kL = 8;
  static constexpr int kRegs = 16;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(S x) { return _mm256_set1_ps(x); }
  static R load(const S* p) { return _mm256_loadu_ps(p); }
  static __m256i mask(int n) {
    alignas(32) static const int32_t kMask[16] = {-1, -1, -1, -1, -1, -1,
                                                 -1, -1, 0,  0,  0,  0,
                                                 0,  0,  0,  0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 8 - n));
  }
  static R load_n(const S* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(S* p, R x) { _mm256_storeu_ps(p, x); }
  static void store_n(S* p, R x, int n) { _mm256_maskstore_ps(p, mask(n), x); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  // a < 0 ? 0 : a, lane-wise: NaN compares false and is kept.
  static R relu(R a) {
    return _mm256_andnot_ps(_mm256_cmp_ps(a, zero(), _CMP_LT_OQ), a);
  }
  // h <= 0 ? 0 : g, PyTorch's threshold_backward (a NaN state passes g).
  static R relu_grad(R g, R h) {
    return _mm256_andnot_ps(_mm256_cmp_ps(h, zero(), _CMP_LE_OQ), g);
  }
  // exp(x) for 0 <= x <= 88 (Cephes expf: 2^n e^r, |r| <= ln2 / 2).
  static R exp_nonneg(R x) {
    const R n = _mm256_round_ps(_mm256_mul_ps(x, set1(cephes::kLog2e)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    R r = _mm256_fnmadd_ps(n, set1(cephes::kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, set1(cephes::kLn2Lo), r);
    const R p = cephes::exp_reduced<VecF>(r);
    const __m256i scale = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return mul(p, _mm256_castsi256_ps(scale));
  }
  // Cephes tanhf, vectorised: x + x^3 P(x^2) for |x| < 0.625, else
  // sign(x) (1 - 2 / (e^{2|x|} + 1)); NaN in, NaN out.
  static R tanh(R x) {
    const R sign_bit = set1(-0.0f);
    const R ax = _mm256_andnot_ps(sign_bit, x);
    const R e = exp_nonneg(_mm256_min_ps(add(ax, ax), set1(88.0f)));
    const R big = _mm256_or_ps(
        sub(set1(1.0f), _mm256_div_ps(set1(2.0f), add(e, set1(1.0f)))),
        _mm256_and_ps(x, sign_bit));
    const R small = cephes::tanh_small<VecF>(x);
    const R y = _mm256_blendv_ps(big, small,
                                 _mm256_cmp_ps(ax, set1(cephes::kTanhSmall), _CMP_LT_OQ));
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
  static S hsum(R a) {
    alignas(32) S v[kL];
    _mm256_store_ps(v, a);
    S s = 0;
    for (int i = 0; i < kL; ++i) s += v[i];
    return s;
  }
};

struct VecD {
  using S = double;
  using R = __m256d;
  static constexpr int kL = 4;
  static constexpr int kRegs = 16;
  static R zero() { return _mm256_setzero_pd(); }
  static R set1(S x) { return _mm256_set1_pd(x); }
  static R load(const S* p) { return _mm256_loadu_pd(p); }
  static __m256i mask(int n) {
    alignas(32) static const int64_t kMask[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMask + 4 - n));
  }
  static R load_n(const S* p, int n) { return _mm256_maskload_pd(p, mask(n)); }
  static void store(S* p, R x) { _mm256_storeu_pd(p, x); }
  static void store_n(S* p, R x, int n) { _mm256_maskstore_pd(p, mask(n), x); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R relu(R a) {
    return _mm256_andnot_pd(_mm256_cmp_pd(a, zero(), _CMP_LT_OQ), a);
  }
  static R relu_grad(R g, R h) {
    return _mm256_andnot_pd(_mm256_cmp_pd(h, zero(), _CMP_LE_OQ), g);
  }
  static R tanh(R a) {
    alignas(32) S v[kL];
    _mm256_store_pd(v, a);
    for (int i = 0; i < kL; ++i) v[i] = ::tanh(v[i]);
    return _mm256_load_pd(v);
  }
  static S hsum(R a) {
    alignas(32) S v[kL];
    _mm256_store_pd(v, a);
    S s = 0;
    for (int i = 0; i < kL; ++i) s += v[i];
    return s;
  }
};

}  // namespace

KernelTable<float> table_float() {
  return kernel_table<VecF>();
}
KernelTable<double> table_double() {
  return kernel_table<VecD>();
}

}  // namespace cpu_avx2
}  // namespace irnn_cuda

#pragma GCC pop_options

namespace irnn_cuda {
namespace cpu_avx2 {
bool supported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
}  // namespace cpu_avx2
}  // namespace irnn_cuda

#else  // not x86-64 with GCC/Clang: the portable kernels only

namespace irnn_cuda {
namespace cpu_avx2 {
bool supported() { return false; }
KernelTable<float> table_float() { return {}; }
KernelTable<double> table_double() { return {}; }
}  // namespace cpu_avx2
}  // namespace irnn_cuda

#endif
