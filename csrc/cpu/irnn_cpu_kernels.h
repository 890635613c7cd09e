// The fused CPU kernels, framework-free: raw pointers and sizes in, one batch
// slice walked over all T steps, no allocation and no library call inside the
// time loop. The ops in irnn_cpu.cpp pack the weights, split the batch into
// slices (one per thread) and reduce the per-slice partial gradients.
//
// This header is compiled once per instruction set: each including file
// defines IRNN_CPU_ISA (the namespace its instantiations live in, so that an
// AVX2 build of a template never replaces the portable one at link time) and
// a vector policy V (see irnn_cpu_avx512.cpp, irnn_cpu_avx2.cpp and
// irnn_cpu_generic.cpp):
//   V::S scalar, V::R register, V::kL lanes, V::kRegs vector registers;
//   zero, set1, load, load_n (the first n lanes, the rest 0), store,
//   store_n, add, sub, mul, fma(a, b, c) = a*b+c, relu, relu_grad, tanh,
//   hsum.
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
// NV loaded weight vectors and one broadcast within the V::kRegs vector
// registers (16 for AVX2, 32 for AVX-512).
constexpr int kMaxRows = 6;
template <class V>
constexpr int max_vecs(int rows) {
  if constexpr (V::kRegs >= 32) {
    return rows <= 2 ? 8 : rows <= 4 ? 5 : 4;
  } else {
    return rows == 1 ? 6 : rows == 2 ? 5 : rows <= 4 ? 3 : 2;
  }
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
  constexpr int kNv = max_vecs<V>(MR);
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

// Prefetches one row of H values (null: nothing); see prefetch_rows.
template <typename S>
inline void prefetch_row(const S* row, int64_t H, bool for_write = false) {
  prefetch_rows(row, 0, 1, H, for_write);
}

// Steps row b runs, and the time index of its step s (irnn_cpu_params.h).
template <class P>
inline int64_t row_length(const P& p, int64_t b) {
  return p.lengths ? p.lengths[b] : p.T;
}
template <class P>
inline int64_t row_time(const P& p, int64_t b, int64_t s) {
  return p.reverse ? row_length(p, b) - 1 - s : s;
}
// The row of time t, batch row b in the per-step buffers (padded or packed).
template <class P>
inline int64_t pos(const P& p, int64_t t, int64_t b) {
  return p.offsets ? p.offsets[t] + b : t * p.B + b;
}

// Padded layout with lengths: writes zeros to the rows [b0, b1) of `buf`
// (a [T, B, width] block) at every time after the row's end, as
// pad_packed_sequence gives; by the thread that owns the rows, once.
template <class P, typename S>
void zero_padding(const P& p, S* buf, int64_t width, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t t = row_length(p, b); t < p.T; ++t) {
      S* row = buf + pos(p, t, b) * width;
      for (int64_t i = 0; i < width; ++i) row[i] = S(0);
    }
  }
}

// Forward of rows [b0, b1) over all steps. With lengths, only the rows still
// running are computed: at step s, the first n of the slice.
template <class V, bool kRelu>
void forward_slice(const FwdParams<typename V::S>& p, int64_t b0, int64_t b1) {
  using S = typename V::S;
  using R = typename V::R;
  const int64_t T = p.T, H = p.H, Hp = p.Hp;
  const int64_t ix = p.wih_t ? p.I : H;  // row length of x
  // The state row b writes at step s. Without a sequence the states
  // ping-pong between scratch and h_n, arranged so that the row's last step
  // lands in h_n.
  auto state = [&](int64_t b, int64_t s) -> S* {
    if (p.out) return p.out + pos(p, row_time(p, b, s), b) * H;
    return (((row_length(p, b) - 1 - s) & 1) ? p.scratch : p.h_n) + b * H;
  };
  auto x_row = [&](int64_t b, int64_t s) {
    return p.x + pos(p, row_time(p, b, s), b) * ix;
  };
  int64_t n = b1 - b0;  // rows [b0, b0 + n) are still running
  for (int64_t s = 0; s < T; ++s) {
    while (n > 0 && row_length(p, b0 + n - 1) <= s) --n;
    if (n == 0) break;
    const int64_t e = b0 + n;
    for (int64_t b = b0; b < e; b += kMaxRows) {
      const int mr = static_cast<int>(e - b < kMaxRows ? e - b : kMaxRows);
      const int64_t next = b + kMaxRows, next_rows = e - next < kMaxRows ? e - next : kMaxRows;
      for (int64_t r = 0; r < next_rows; ++r) {
        if (!p.wih_t) prefetch_row(x_row(next + r, s), H);
        if (p.out) prefetch_row<S>(state(next + r, s), H, true);
      }
      with_rows<kMaxRows>(mr, [&](auto mr_c) {
        constexpr int MR = decltype(mr_c)::value;
        const S* ah[MR];
        const S* ax[MR];
        S* dst[MR];
        for (int r = 0; r < MR; ++r) {
          ah[r] = s == 0 ? p.h0 + (b + r) * H : state(b + r, s - 1);
          ax[r] = x_row(b + r, s);
          dst[r] = state(b + r, s);
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
  }
  if (p.out) {
    for (int64_t b = b0; b < b1; ++b) {
      const S* last = state(b, row_length(p, b) - 1);
      for (int64_t i = 0; i < H; ++i) p.h_n[b * H + i] = last[i];
    }
  }
  if (p.out && p.lengths && !p.offsets) zero_padding(p, p.out, H, b0, b1);
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
// slice: index of this slice's partial-gradient rows. With lengths, step s
// computes only the rows that reach it: the first n of the slice, of which
// the first n_next continue from step s+1 and the rest start there (s is
// their last step, where the gradient of h_n arrives).
template <class V, bool kRelu>
void backward_slice(const BwdParams<typename V::S>& p, int64_t b0, int64_t b1,
                    int64_t slice) {
  using S = typename V::S;
  using R = typename V::R;
  const int64_t T = p.T, B = p.B, H = p.H, Hp = p.Hp, I = p.I;
  if (b1 <= b0) return;
  S* db = p.db_part ? p.db_part + slice * Hp : nullptr;
  S* dwhh = p.dwhh_part ? p.dwhh_part + slice * H * Hp : nullptr;
  // The fused projection: dx through W_ih, dW_ih from x (each when wanted).
  const bool want_dx = p.dx != nullptr;
  S* dwih = p.dwih_part ? p.dwih_part + slice * I * Hp : nullptr;
  const int64_t fused_i = (want_dx || dwih) ? I : 0;
  // Row b's da at step s: the full sequence when the caller keeps it, else
  // two alternating [B,H] buffers.
  auto da_row = [&](int64_t b, int64_t s) -> S* {
    return p.da ? p.da + pos(p, row_time(p, b, s), b) * H
                : p.da_scratch + ((s & 1) * B + b) * H;
  };
  // Row b's state before step s.
  auto h_prev_row = [&](int64_t b, int64_t s) -> const S* {
    return s == 0 ? p.h0 + b * H : p.out + pos(p, row_time(p, b, s - 1), b) * H;
  };
  // Per-row, per-input partial dot products for dx (fused small I only).
  S dxacc[kMaxRows][kMaxFusedInput * V::kL];
  // The rows of one step share their da and h_prev buffers' layout (one
  // time index) unless lengths are walked in reverse; then a chunk's rows
  // are copied together before their dW_hh update.
  const bool same_time = p.lengths == nullptr || !p.reverse;
  // A slice of fewer than kChunk rows gathers the da and h_prev rows of
  // several steps and adds them to dW_hh together, so that each pass over
  // the dW_hh partial does kChunk rank-1 updates, not a handful.
  const bool gather = b1 - b0 < kChunk;
  S* da_gather = p.gather + slice * 2 * kChunk * H;
  S* h_gather = da_gather + kChunk * H;
  int64_t gathered = 0;
  auto stage = [&](int64_t c0, int64_t c1, int64_t s) {
    for (int64_t b = c0; b < c1; ++b, ++gathered) {
      const S* d = da_row(b, s);
      const S* h = h_prev_row(b, s);
      for (int64_t i = 0; i < H; ++i) {
        da_gather[gathered * H + i] = d[i];
        h_gather[gathered * H + i] = h[i];
      }
    }
  };
  int64_t n = 0;  // rows [b0, b0 + n) reach step s
  for (int64_t s = T - 1; s >= -1; --s) {
    // s == -1 is the extra step that carries da at the first walked step
    // back to h0: dh0 = da W_hh.
    const bool to_h0 = s < 0;
    if (to_h0 && p.dh0 == nullptr) break;
    const int64_t n_next = n;
    while (!to_h0 && b0 + n < b1 && row_length(p, b0 + n) > s) ++n;
    if (n == 0) continue;
    const int64_t split = b0 + n_next, e = b0 + n;
    for (int64_t c0 = b0; c0 < e; c0 += kChunk) {
      const int64_t c1 = e - c0 < kChunk ? e : c0 + kChunk;
      for (int64_t b = c0; b < c1; ) {
        // A tile never mixes continuing and starting rows.
        const int64_t tile_end = b < split && split < c1 ? split : c1;
        const int mr = static_cast<int>(tile_end - b < kMaxRows ? tile_end - b : kMaxRows);
        const bool continues = b < split;
        const int64_t next = b + mr, next_rows = e - next < kMaxRows ? e - next : kMaxRows;
        for (int64_t r = 0; r < next_rows && !to_h0; ++r) {
          const int64_t t = row_time(p, next + r, s);
          if (p.g_out) prefetch_row(p.g_out + pos(p, t, next + r) * H, H);
          prefetch_row(p.out + pos(p, t, next + r) * H, H);
          if (dwhh) prefetch_row(h_prev_row(next + r, s), H);
        }
        with_rows<kMaxRows>(mr, [&](auto mr_c) {
          constexpr int MR = decltype(mr_c)::value;
          const S* an[MR];
          const S* gt[MR];
          const S* gn[MR];
          const S* ht[MR];
          const S* xr[MR];
          S* dxr[MR];
          S* dst[MR];
          for (int r = 0; r < MR; ++r) {
            const int64_t row = b + r;
            const int64_t t = to_h0 ? 0 : row_time(p, row, s);
            an[r] = continues ? da_row(row, s + 1) : nullptr;
            gn[r] = (!continues && p.g_hn) ? p.g_hn + row * H : nullptr;
            const int64_t at = to_h0 ? 0 : pos(p, t, row);
            gt[r] = (!to_h0 && p.g_out) ? p.g_out + at * H : nullptr;
            ht[r] = to_h0 ? nullptr : p.out + at * H;
            xr[r] = (!to_h0 && dwih) ? p.x + at * I : nullptr;
            dxr[r] = (!to_h0 && want_dx) ? p.dx + at * I : nullptr;
            dst[r] = to_h0 ? p.dh0 + row * H : da_row(row, s);
          }
          const int64_t ni = to_h0 ? 0 : fused_i;
          if (want_dx && !to_h0) {
            for (int r = 0; r < MR; ++r)
              for (int64_t i = 0; i < I * V::kL; ++i) dxacc[r][i] = S(0);
          }
          over_columns<V, MR>(H, [&]<int NV>(int64_t col) {
            R acc[MR][NV];
            for (int r = 0; r < MR; ++r) {
              for (int v = 0; v < NV; ++v) {
                const int64_t c = col + v * V::kL;
                R g = gt[r] ? load_cols<V>(gt[r], c, H) : V::zero();
                if (gn[r]) g = V::add(g, load_cols<V>(gn[r], c, H));
                acc[r][v] = g;
              }
            }
            if (continues) gemm_tile<V, MR, NV>(acc, an, 1, H, p.whh + col, Hp);
            // Per column block: da for the MR rows, then their sums into the
            // slice's db and dW_ih partials (one update per block, not per row).
            for (int v = 0; v < NV; ++v) {
              const int64_t c = col + v * V::kL;
              R d[MR];
              for (int r = 0; r < MR; ++r) {
                d[r] = acc[r][v];
                if (!to_h0) {
                  const R h = load_cols<V>(ht[r], c, H);
                  d[r] = kRelu ? V::relu_grad(d[r], h)
                               : V::mul(d[r], V::sub(V::set1(S(1)), V::mul(h, h)));
                }
                store_cols<V>(dst[r], c, H, d[r]);
              }
              if (to_h0) continue;
              if (db) {
                R dsum = d[0];
                for (int r = 1; r < MR; ++r) dsum = V::add(dsum, d[r]);
                V::store(db + c, V::add(V::load(db + c), dsum));
              }
              for (int64_t i = 0; i < ni; ++i) {
                if (want_dx) {
                  const R w = V::load(p.wih_t + i * Hp + c);
                  for (int r = 0; r < MR; ++r) {
                    S* dxa = dxacc[r] + i * V::kL;
                    V::store(dxa, V::fma(d[r], w, V::load(dxa)));
                  }
                }
                if (dwih) {
                  R dw = V::load(dwih + i * Hp + c);
                  for (int r = 0; r < MR; ++r) dw = V::fma(d[r], V::set1(xr[r][i]), dw);
                  V::store(dwih + i * Hp + c, dw);
                }
              }
            }
          });
          if (want_dx && !to_h0) {
            for (int r = 0; r < MR; ++r)
              for (int64_t i = 0; i < I; ++i)
                dxr[r][i] = V::hsum(V::load(dxacc[r] + i * V::kL));
          }
        });
        b += mr;
      }
      // dW_hh += da_t^T h_prev, h_prev the state before step t; per chunk
      // of rows, right after the chunk's da.
      if (!to_h0 && dwhh && !gather) {
        if (same_time) {
          // Rows c0..c1 of one [B,H] block: offsets from row c0 back to 0.
          accumulate_dw<V>(dwhh, da_row(c0, s) - c0 * H,
                           h_prev_row(c0, s) - c0 * H, c0, c1, H, Hp);
        } else {
          gathered = 0;
          stage(c0, c1, s);
          accumulate_dw<V>(dwhh, da_gather, h_gather, 0, gathered, H, Hp);
          gathered = 0;
        }
      }
    }
    if (!to_h0 && dwhh && gather) {
      stage(b0, e, s);
      if (gathered + (b1 - b0) > kChunk || s == 0) {
        accumulate_dw<V>(dwhh, da_gather, h_gather, 0, gathered, H, Hp);
        gathered = 0;
      }
    }
  }
  if (p.lengths && !p.offsets) {
    if (p.da) zero_padding(p, p.da, H, b0, b1);
    if (want_dx) zero_padding(p, p.dx, I, b0, b1);
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
