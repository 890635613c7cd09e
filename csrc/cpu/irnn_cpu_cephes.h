// The Cephes expf and tanhf polynomials over a vector policy V (set1, add,
// mul, fma; see irnn_cpu_kernels.h), shared by the AVX2 and AVX-512 builds
// so that both evaluate them operation for operation. Include it inside a
// file's `#pragma GCC target` region, as irnn_cpu_kernels.h.
#pragma once

namespace irnn_cuda {
namespace cephes {

// exp(x) = 2^n e^r with n = round(x log2(e)), r = x - n ln2 in two parts.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;

// e^r for |r| <= ln2 / 2.
template <class V>
inline typename V::R exp_reduced(typename V::R r) {
  using S = typename V::S;
  typename V::R p = V::set1(S(1.9875691500e-4f));
  p = V::fma(p, r, V::set1(S(1.3981999507e-3f)));
  p = V::fma(p, r, V::set1(S(8.3334519073e-3f)));
  p = V::fma(p, r, V::set1(S(4.1665795894e-2f)));
  p = V::fma(p, r, V::set1(S(1.6666665459e-1f)));
  p = V::fma(p, r, V::set1(S(5.0000001201e-1f)));
  return V::fma(p, V::mul(r, r), V::add(r, V::set1(S(1))));
}

// tanh(x) = x + x^3 P(x^2), for |x| < kTanhSmall.
constexpr float kTanhSmall = 0.625f;
template <class V>
inline typename V::R tanh_small(typename V::R x) {
  using S = typename V::S;
  const typename V::R z = V::mul(x, x);
  typename V::R q = V::set1(S(-5.70498872745e-3f));
  q = V::fma(q, z, V::set1(S(2.06390887954e-2f)));
  q = V::fma(q, z, V::set1(S(-5.37397155531e-2f)));
  q = V::fma(q, z, V::set1(S(1.33314422036e-1f)));
  q = V::fma(q, z, V::set1(S(-3.33332819422e-1f)));
  return V::fma(V::mul(q, z), x, x);
}

}  // namespace cephes
}  // namespace irnn_cuda
