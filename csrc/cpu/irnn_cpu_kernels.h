// The fused CPU kernels, framework-free: raw pointers and sizes in, one batch
// slice walked over all T steps, no allocation and no library call inside the
// time loop. The ops in irnn_cpu.cpp pack the weights, split the batch into
// slices (one per thread) and reduce the per-slice partial gradients.
//
// This header is compiled once per instruction set: each including file
// defines IRNN_CPU_ISA (the namespace its instantiations live in, so that an
// AVX2 build of a template never replaces the portable one at link time) and
// a vector policy V (see irnn_cpu_avx2.cpp and irnn_cpu_generic.cpp):
//   V::S scalar, V::R register, V::kL lanes; zero, set1, load, load_n (the
//   first n lanes, the rest 0), store, store_n, add, sub, mul,
//   fma(a, b, c) = a*b+c, relu, relu_grad, tanh, hsum.
//
// Shapes (T steps, B batch, I input, H hidden, Hp = H rounded up to kL):
//   packed weights are row-major with rows padded to Hp by zeros, so a column
//   block of kL lanes is one unaligned vector load.
#pragma once

#include <cstdint>
#include <type_traits>

#include "irnn_cpu_params.h"

#ifndef IRNN_CPU_ISA
#error "define IRNN_CPU_ISA before including irnn_cpu_kernels.h"
#endif

namespace irnn_cuda {
namespace IRNN_CPU_ISA {

// Row tile -> widest column tile (in vectors) that keeps MR*NV accumulators,
// NV loaded weight vectors and one broadcast within 16 vector registers.
constexpr int kMaxRows = 6;
constexpr int max_vecs(int rows) {
  return rows == 1 ? 6 : rows == 2 ? 5 : rows <= 4 ? 3 : 2;
}

// C tile [MR rows x NV vectors] += A[MR x K] * B[K x NV*kL]. Row r of A is
// a[r][k * lda]; bp points at column block 0 of row 0 of B (row stride ldb).
// With kTail the last vector of B holds only `tail` valid lanes (masked
// loads, for B operands whose rows are not padded).
//
// The products are summed in blocks of kKBlock, each block from zero and
// then added to the tile: a float sum over K = 257 terms in one chain loses
// about 3x the accuracy of a blocked GEMM's, and the block additions run on
// the FP adders, beside the FMAs.
constexpr int64_t kKBlock = 32;

template <class V, int MR, int NV, bool kTail = false>
inline __attribute__((always_inline)) void gemm_tile(
    typename V::R (&acc)[MR][NV], const typename V::S* const* a, int64_t lda,
    int64_t k_len, const typename V::S* bp, int64_t ldb, int tail = V::kL) {
  using R = typename V::R;
  for (int64_t k0 = 0; k0 < k_len; k0 += kKBlock) {
    const int64_t k1 = k_len - k0 < kKBlock ? k_len : k0 + kKBlock;
    R part[MR][NV];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) part[r][v] = V::zero();
    for (int64_t k = k0; k < k1; ++k) {
      R b[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        b[v] = (kTail && v == NV - 1)
                   ? V::load_n(bp + k * ldb + v * V::kL, tail)
                   : V::load(bp + k * ldb + v * V::kL);
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        const R x = V::set1(a[r][k * lda]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) part[r][v] = V::fma(x, b[v], part[r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = V::add(acc[r][v], part[r][v]);
  }
}

// Calls f(std::integral_constant<int, nv>) for a runtime nv in [1, N].
template <int N, class F>
inline __attribute__((always_inline)) void with_vecs(int nv, F&& f) {
  if constexpr (N > 0) {
    if (nv == N) {
      f(std::integral_constant<int, N>{});
    } else {
      with_vecs<N - 1>(nv, f);
    }
  }
}

template <int N, class F>
inline __attribute__((always_inline)) void with_rows(int mr, F&& f) {
  if constexpr (N > 0) {
    if (mr == N) {
      f(std::integral_constant<int, N>{});
    } else {
      with_rows<N - 1>(mr, f);
    }
  }
}

// Runs tile(MR, NV, col) over the column blocks of one row tile.
template <class V, int MR, class Tile>
inline __attribute__((always_inline)) void over_columns(int64_t H,
                                                        Tile&& tile) {
  constexpr int kNv = max_vecs(MR);
  const int64_t nvec = (H + V::kL - 1) / V::kL;
  for (int64_t v0 = 0; v0 < nvec; v0 += kNv) {
    const int nv = static_cast<int>(nvec - v0 < kNv ? nvec - v0 : kNv);
    with_vecs<kNv>(nv, [&](auto nv_c) { tile.template operator()<decltype(nv_c)::value>(v0 * V::kL); });
  }
}

template <class V>
inline typename V::R load_cols(const typename V::S* p, int64_t col,
                               int64_t H) {
  return col + V::kL <= H ? V::load(p + col)
                          : V::load_n(p + col, static_cast<int>(H - col));
}

template <class V>
inline void store_cols(typename V::S* p, int64_t col, int64_t H,
                       typename V::R x) {
  if (col + V::kL <= H) {
    V::store(p + col, x);
  } else {
    V::store_n(p + col, x, static_cast<int>(H - col));
  }
}

// Software prefetch of `rows` rows of H values starting at row `b` of a
// [*, H] buffer (null: nothing). The streams read from memory once per step
// (gradients, states, projected inputs) are prefetched one row tile ahead:
// twelve interleaved row streams are more than the hardware prefetcher
// follows.
template <typename S>
inline void prefetch_rows(const S* base, int64_t b, int64_t rows, int64_t H,
                          bool for_write = false) {
  if (base == nullptr) return;
  constexpr int64_t kLine = 64 / sizeof(S);
  const S* p = base + b * H;
  for (int64_t i = 0; i < rows * H; i += kLine) {
    if (for_write) {
      __builtin_prefetch(p + i, 1);
    } else {
      __builtin_prefetch(p + i, 0);
    }
  }
}

// Forward of rows [b0, b1) over all steps.
template <class V, bool kRelu>
void forward_slice(const FwdParams<typename V::S>& p, int64_t b0, int64_t b1) {
  using S = typename V::S;
  using R = typename V::R;
  const int64_t T = p.T, B = p.B, H = p.H, Hp = p.Hp;
  const int64_t ix = p.wih_t ? p.I : H;  // row length of x
  const S* prev = p.h0;
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = p.reverse ? T - 1 - s : s;
    // Without a sequence the states ping-pong between scratch and h_n,
    // arranged so that the last step lands in h_n.
    S* cur = p.out ? p.out + t * B * H
                   : (((T - 1 - s) & 1) ? p.scratch : p.h_n);
    const S* xt = p.x + t * B * ix;
    for (int64_t b = b0; b < b1; b += kMaxRows) {
      const int mr = static_cast<int>(b1 - b < kMaxRows ? b1 - b : kMaxRows);
      const int64_t next = b + kMaxRows, next_rows = b1 - next < kMaxRows ? b1 - next : kMaxRows;
      if (next_rows > 0) {
        if (!p.wih_t) prefetch_rows(xt, next, next_rows, H);
        if (p.out) prefetch_rows<S>(cur, next, next_rows, H, true);
      }
      with_rows<kMaxRows>(mr, [&](auto mr_c) {
        constexpr int MR = decltype(mr_c)::value;
        const S* ah[MR];
        const S* ax[MR];
        S* dst[MR];
        for (int r = 0; r < MR; ++r) {
          ah[r] = prev + (b + r) * H;
          ax[r] = xt + (b + r) * ix;
          dst[r] = cur + (b + r) * H;
        }
        over_columns<V, MR>(H, [&]<int NV>(int64_t col) {
          R acc[MR][NV];
          for (int v = 0; v < NV; ++v) {
            const R bias = V::load(p.bias + col + v * V::kL);
            for (int r = 0; r < MR; ++r) {
              acc[r][v] = p.wih_t ? bias
                                  : V::add(bias, load_cols<V>(ax[r], col + v * V::kL, H));
            }
          }
          if (p.wih_t) gemm_tile<V, MR, NV>(acc, ax, 1, p.I, p.wih_t + col, Hp);
          gemm_tile<V, MR, NV>(acc, ah, 1, H, p.whh_t + col, Hp);
          for (int r = 0; r < MR; ++r) {
            for (int v = 0; v < NV; ++v) {
              const R h = kRelu ? V::relu(acc[r][v]) : V::tanh(acc[r][v]);
              store_cols<V>(dst[r], col + v * V::kL, H, h);
            }
          }
        });
      });
    }
    prev = cur;
  }
  if (p.out) {
    for (int64_t i = b0 * H; i < b1 * H; ++i) p.h_n[i] = prev[i];
  }
}

// Rows per chunk of the backward (irnn_cpu_params.h): a chunk's da and
// h_prev stay in L1/L2 between computing da and adding da^T h_prev to dW_hh.
constexpr int64_t kChunk = kBackwardChunk;
static_assert(kChunk % kMaxRows == 0, "chunks are whole row tiles");

// dW_part[H x Hp] += da^T h over rows [b0, b1): da and h are [*, H] row
// blocks (row stride H). The rows are taken in chunks that stay in L1 while
// every tile of dW_part passes over them.
template <class V>
void accumulate_dw(typename V::S* dw, const typename V::S* da,
                   const typename V::S* h, int64_t b0, int64_t b1, int64_t H,
                   int64_t Hp) {
  using S = typename V::S;
  using R = typename V::R;
  const int tail = static_cast<int>(H - (H - 1) / V::kL * V::kL);
  for (int64_t c0 = b0; c0 < b1; c0 += kChunk) {
    const int64_t rows = b1 - c0 < kChunk ? b1 - c0 : kChunk;
    for (int64_t j = 0; j < H; j += kMaxRows) {
      const int mr = static_cast<int>(H - j < kMaxRows ? H - j : kMaxRows);
      with_rows<kMaxRows>(mr, [&](auto mr_c) {
        constexpr int MR = decltype(mr_c)::value;
        const S* a[MR];
        for (int r = 0; r < MR; ++r) a[r] = da + c0 * H + j + r;
        over_columns<V, MR>(H, [&]<int NV>(int64_t col) {
          R acc[MR][NV];
          for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v)
              acc[r][v] = V::load(dw + (j + r) * Hp + col + v * V::kL);
          const S* bp = h + c0 * H + col;
          if (col + NV * V::kL > H) {
            gemm_tile<V, MR, NV, true>(acc, a, H, rows, bp, H, tail);
          } else {
            gemm_tile<V, MR, NV>(acc, a, H, rows, bp, H);
          }
          for (int r = 0; r < MR; ++r)
            for (int v = 0; v < NV; ++v)
              V::store(dw + (j + r) * Hp + col + v * V::kL, acc[r][v]);
        });
      });
    }
  }
}

// Backward of rows [b0, b1) over all steps, in reverse walking order.
// slice: index of this slice's partial-gradient rows.
template <class V, bool kRelu>
void backward_slice(const BwdParams<typename V::S>& p, int64_t b0, int64_t b1,
                    int64_t slice) {
  using S = typename V::S;
  using R = typename V::R;
  const int64_t T = p.T, B = p.B, H = p.H, Hp = p.Hp, I = p.I;
  const bool fuse_ih = p.wih_t != nullptr;
  S* db = p.db_part + slice * Hp;
  S* dwhh = p.dwhh_part + slice * H * Hp;
  S* dwih = fuse_ih ? p.dwih_part + slice * I * Hp : nullptr;
  // da of step s: the full sequence when the caller keeps it, else two
  // alternating [B,H] buffers.
  auto da_of = [&](int64_t s) {
    const int64_t t = p.reverse ? T - 1 - s : s;
    return p.da ? p.da + t * B * H : p.da_scratch + (s & 1) * B * H;
  };
  // Per-row, per-input partial dot products for dx (fused small I only).
  S dxacc[kMaxRows][kMaxFusedInput * V::kL];
  // A slice of fewer than kChunk rows gathers the da and h_prev rows of
  // several steps and adds them to dW_hh together, so that each pass over
  // the dW_hh partial does kChunk rank-1 updates, not a handful.
  const bool gather = b1 - b0 < kChunk;
  S* da_gather = gather ? p.gather + slice * 2 * kChunk * H : nullptr;
  S* h_gather = gather ? da_gather + kChunk * H : nullptr;
  int64_t gathered = 0;
  for (int64_t s = T - 1; s >= -1; --s) {
    // s == -1 is the extra step that carries da at the first walked step
    // back to h0: dh0 = da W_hh.
    const bool to_h0 = s < 0;
    const int64_t t = to_h0 ? -1 : (p.reverse ? T - 1 - s : s);
    const S* da_next = s == T - 1 ? nullptr : da_of(s + 1);
    const S* ht = to_h0 ? nullptr : p.out + t * B * H;
    const S* gt = (!to_h0 && p.g_out) ? p.g_out + t * B * H : nullptr;
    const S* gn = (s == T - 1) ? p.g_hn : nullptr;
    S* dst_base = to_h0 ? p.dh0 : da_of(s);
    const S* xt = (fuse_ih && !to_h0) ? p.x + t * B * I : nullptr;
    S* dxt = (fuse_ih && !to_h0) ? p.dx + t * B * I : nullptr;
    // dW_hh += da_t^T h_prev, h_prev the state before step t; per chunk of
    // rows, right after the chunk's da.
    const int64_t t_prev = p.reverse ? t + 1 : t - 1;
    const S* h_prev = to_h0 ? nullptr : (s == 0 ? p.h0 : p.out + t_prev * B * H);
    for (int64_t c0 = b0; c0 < b1; c0 += kChunk) {
      const int64_t c1 = b1 - c0 < kChunk ? b1 : c0 + kChunk;
      for (int64_t b = c0; b < c1; b += kMaxRows) {
        const int mr = static_cast<int>(c1 - b < kMaxRows ? c1 - b : kMaxRows);
        const int64_t next = b + kMaxRows, next_rows = b1 - next < kMaxRows ? b1 - next : kMaxRows;
        if (next_rows > 0) {
          prefetch_rows(gt, next, next_rows, H);
          prefetch_rows(ht, next, next_rows, H);
          prefetch_rows(h_prev, next, next_rows, H);
        }
        with_rows<kMaxRows>(mr, [&](auto mr_c) {
          constexpr int MR = decltype(mr_c)::value;
          const S* an[MR];
          S* dst[MR];
          for (int r = 0; r < MR; ++r) {
            an[r] = da_next ? da_next + (b + r) * H : nullptr;
            dst[r] = dst_base + (b + r) * H;
          }
          if (xt) {
            for (int r = 0; r < MR; ++r)
              for (int64_t i = 0; i < I * V::kL; ++i) dxacc[r][i] = S(0);
          }
          over_columns<V, MR>(H, [&]<int NV>(int64_t col) {
            R acc[MR][NV];
            for (int r = 0; r < MR; ++r) {
              const int64_t row = (b + r) * H;
              for (int v = 0; v < NV; ++v) {
                const int64_t c = col + v * V::kL;
                R g = gt ? load_cols<V>(gt + row, c, H) : V::zero();
                if (gn) g = V::add(g, load_cols<V>(gn + row, c, H));
                acc[r][v] = g;
              }
            }
            if (da_next) gemm_tile<V, MR, NV>(acc, an, 1, H, p.whh + col, Hp);
            // Per column block: da for the MR rows, then their sums into the
            // slice's db and dW_ih partials (one update per block, not per row).
            for (int v = 0; v < NV; ++v) {
              const int64_t c = col + v * V::kL;
              R d[MR];
              for (int r = 0; r < MR; ++r) {
                d[r] = acc[r][v];
                if (!to_h0) {
                  const R h = load_cols<V>(ht + (b + r) * H, c, H);
                  d[r] = kRelu ? V::relu_grad(d[r], h)
                               : V::mul(d[r], V::sub(V::set1(S(1)), V::mul(h, h)));
                }
                store_cols<V>(dst[r], c, H, d[r]);
              }
              if (to_h0) continue;
              R dsum = d[0];
              for (int r = 1; r < MR; ++r) dsum = V::add(dsum, d[r]);
              V::store(db + c, V::add(V::load(db + c), dsum));
              for (int64_t i = 0; i < (xt ? I : 0); ++i) {
                const R w = V::load(p.wih_t + i * Hp + c);
                R dw = V::load(dwih + i * Hp + c);
                for (int r = 0; r < MR; ++r) {
                  S* dxa = dxacc[r] + i * V::kL;
                  V::store(dxa, V::fma(d[r], w, V::load(dxa)));
                  dw = V::fma(d[r], V::set1(xt[(b + r) * I + i]), dw);
                }
                V::store(dwih + i * Hp + c, dw);
              }
            }
          });
          if (xt) {
            for (int r = 0; r < MR; ++r)
              for (int64_t i = 0; i < I; ++i)
                dxt[(b + r) * I + i] = V::hsum(V::load(dxacc[r] + i * V::kL));
          }
        });
      }
      if (!to_h0 && !gather) {
        accumulate_dw<V>(dwhh, dst_base, h_prev, c0, c1, H, Hp);
      }
    }
    if (!to_h0 && gather) {
      const int64_t n = (b1 - b0) * H;
      for (int64_t i = 0; i < n; ++i) {
        da_gather[gathered * H + i] = dst_base[b0 * H + i];
        h_gather[gathered * H + i] = h_prev[b0 * H + i];
      }
      gathered += b1 - b0;
      if (gathered + (b1 - b0) > kChunk || s == 0) {
        accumulate_dw<V>(dwhh, da_gather, h_gather, 0, gathered, H, Hp);
        gathered = 0;
      }
    }
  }
}

template <class V>
void forward_entry(const FwdParams<typename V::S>& p, bool relu, int64_t b0,
                   int64_t b1) {
  if (relu) {
    forward_slice<V, true>(p, b0, b1);
  } else {
    forward_slice<V, false>(p, b0, b1);
  }
}

template <class V>
void backward_entry(const BwdParams<typename V::S>& p, bool relu, int64_t b0,
                    int64_t b1, int64_t slice) {
  if (relu) {
    backward_slice<V, true>(p, b0, b1, slice);
  } else {
    backward_slice<V, false>(p, b0, b1, slice);
  }
}

template <class V>
KernelTable<typename V::S> kernel_table() {
  return {&forward_entry<V>, &backward_entry<V>, V::kL};
}

}  // namespace IRNN_CPU_ISA
}  // namespace irnn_cuda
