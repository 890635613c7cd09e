// The irnn_cuda kernels: persistent forward and backward (W_hh resident in
// shared memory, the batch partitioned over blocks), the partial-gradient
// reduction, and the tiled GEMM with fused epilogues of the large-H path.
//
// Written against the platform layer (irnn_platform.cuh for nvcc,
// tests/emu/emu_platform.h for the CPU emulation) with no __CUDA_ARCH__ or
// __CUDACC__ branches, so the emulation executes exactly this source.
//
// S is the stored element type (float, double, irnn_half, irnn_bf16) and A
// its accumulator (float, or double for double). h_{t-1} is carried in A
// after rounding to S, so the recurrence sees the values the sequence holds.
#pragma once

#include <cstdint>
#include <type_traits>

#include "irnn_cuda_api.h"

namespace irnn_cuda {

template <typename S>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <typename A>
IRNN_DEVICE A activate(A a, bool relu) {
  // `a < 0 ? 0 : a` keeps NaN, unlike fmax(a, 0).
  return relu ? (a < A(0) ? A(0) : a) : irnn_tanh(a);
}

// Row b's number of steps: lengths[b] clamped to 1..T (device lengths are
// not checked on the host), or T without lengths.
IRNN_DEVICE int row_length(const int64_t* lengths, int64_t b, int T) {
  if (lengths == nullptr || T < 1) return T;
  const int64_t l = lengths[b];
  return l < 1 ? 1 : l > T ? T : static_cast<int>(l);
}

// d phi / d a from the stored output h = phi(a): `h <= 0 ? 0 : g`, as
// PyTorch's threshold_backward (0 at 0; a NaN state passes g through).
template <typename A>
IRNN_DEVICE A activate_grad(A g, A h, bool relu) {
  return relu ? (h <= A(0) ? A(0) : g) : g * (A(1) - h * h);
}

// acc[i] += sum_k w[k * H + unit] * v[off[i] + k] for the thread's rows
// i < rpt: the recurrent dot products of both persistent kernels, with w
// and v in shared memory. Two accumulators per row (even and odd k) halve
// the dependent FMA chain, which bounds the step latency when rows are few.
template <typename A>
IRNN_DEVICE void row_dots(A (&acc)[kMaxRowsPerThread], const A* w, int unit,
                          const A* v, const int (&off)[kMaxRowsPerThread],
                          int H, int rpt) {
  A odd[kMaxRowsPerThread];
#pragma unroll
  for (int i = 0; i < kMaxRowsPerThread; ++i) odd[i] = A(0);
  int k = 0;
  for (; k + 1 < H; k += 2) {
    const A w0 = w[k * H + unit], w1 = w[(k + 1) * H + unit];
#pragma unroll
    for (int i = 0; i < kMaxRowsPerThread; ++i) {
      if (i < rpt) {
        acc[i] += w0 * v[off[i] + k];
        odd[i] += w1 * v[off[i] + k + 1];
      }
    }
  }
  if (k < H) {
    const A w0 = w[k * H + unit];
#pragma unroll
    for (int i = 0; i < kMaxRowsPerThread; ++i)
      if (i < rpt) acc[i] += w0 * v[off[i] + k];
  }
#pragma unroll
  for (int i = 0; i < kMaxRowsPerThread; ++i) acc[i] += odd[i];
}

template <typename S>
struct PersistentFwdParams {
  const S* x;  // [T,B,I] or [T,B,H] (!project)
  int64_t x_st, x_sb;
  const S* h0;    // [B,H]
  const S* w_ih;  // [H,I] or null (!project)
  const S* w_hh;  // [H,H]
  const S* b_ih;  // [H] or null
  const S* b_hh;  // [H] or null
  S* out;         // [T,B,H] or null
  int64_t out_st, out_sb;
  S* h_n;  // [B,H]
  const int64_t* lengths;  // [B] or null; with lengths, !reverse
  int T, B, I, H;
  bool relu, reverse;
  int rows_per_block, row_groups, rows_per_thread;
};

// One block owns rows [blockIdx.x * R, +R) of the batch for all T steps.
// With lengths, row b computes its first lengths[b] steps, the block stops
// after its longest row, and a row's outputs after its end are zeros.
// Thread (g, j) computes unit j of rows g, g + G, ... (rows_per_thread of
// them), so a W_hh^T element loaded from shared memory serves several rows.
// One barrier per step: step s reads h buffer s&1 and writes the other.
template <typename S>
IRNN_GLOBAL void IRNN_LAUNCH_BOUNDS(kPersistentMaxThreads)
irnn_fwd_persistent_kernel(PersistentFwdParams<S> p) {
  using A = typename AccOf<S>::type;
  const int H = p.H, I = p.I, R = p.rows_per_block, G = p.row_groups;
  const bool project = p.w_ih != nullptr;
  A* w_t = irnn_dyn_smem<A>();     // [H,H]: w_t[k*H + j] = W_hh[j,k]
  A* hbuf = w_t + H * H;           // [2][R,H]
  A* w_ih = hbuf + 2 * R * H;      // [H,I] when projecting
  A* bias = w_ih + (project ? H * I : 0);  // [H], b_ih + b_hh
  const int tid = threadIdx.x, nt = blockDim.x;
  const int row0 = blockIdx.x * R;
  const int rows = p.B - row0 < R ? p.B - row0 : R;

  for (int e = tid; e < H * H; e += nt)
    w_t[(e % H) * H + e / H] = to_acc(p.w_hh[e]);
  if (project)
    for (int e = tid; e < H * I; e += nt) w_ih[e] = to_acc(p.w_ih[e]);
  for (int j = tid; j < H; j += nt)
    bias[j] = (p.b_ih ? to_acc(p.b_ih[j]) : A(0)) +
              (p.b_hh ? to_acc(p.b_hh[j]) : A(0));
  // Rows past the batch end stay zero in both buffers.
  for (int e = tid; e < R * H; e += nt) {
    const int r = e / H;
    hbuf[e] = r < rows ? to_acc(p.h0[(int64_t)(row0 + r) * H + e % H]) : A(0);
    hbuf[R * H + e] = A(0);
  }
  __syncthreads();

  const int j = tid % H, g = tid / H;
  const bool active = g < G;
  int len[kMaxRowsPerThread];  // steps of this thread's rows
  int steps = 0;               // of the block's longest row
#pragma unroll
  for (int i = 0; i < kMaxRowsPerThread; ++i) {
    const int r = g + i * G;
    len[i] = active && i < p.rows_per_thread && r < rows
                 ? row_length(p.lengths, row0 + r, p.T) : 0;
  }
  for (int r = 0; r < rows; ++r) {
    const int l = row_length(p.lengths, row0 + r, p.T);
    steps = l > steps ? l : steps;
  }
  for (int s = 0; s < steps; ++s) {
    const int t = p.reverse ? p.T - 1 - s : s;
    const A* hp = hbuf + (s & 1) * R * H;
    A* hn = hbuf + ((s + 1) & 1) * R * H;
    if (active) {
      // The input term first: its global loads do not depend on h_{t-1},
      // so their latency overlaps the recurrent dot products below.
      A acc[kMaxRowsPerThread];
      int off[kMaxRowsPerThread];
#pragma unroll
      for (int i = 0; i < kMaxRowsPerThread; ++i) {
        const int r = g + i * G;
        off[i] = (r < R ? r : R - 1) * H;
        acc[i] = A(0);
        if (i < p.rows_per_thread && r < rows && s < len[i]) {
          const S* xt = p.x + t * p.x_st + (row0 + r) * p.x_sb;
          A a = bias[j];
          if (project) {
            for (int k = 0; k < I; ++k) a += w_ih[j * I + k] * to_acc(xt[k]);
          } else {
            a += to_acc(xt[j]);
          }
          acc[i] = a;
        }
      }
      row_dots(acc, w_t, j, hp, off, H, p.rows_per_thread);  // + W_hh h_{t-1}
#pragma unroll
      for (int i = 0; i < kMaxRowsPerThread; ++i) {
        const int r = g + i * G;
        if (i < p.rows_per_thread && r < rows && s < len[i]) {
          const int64_t b = row0 + r;
          const S h = from_acc<S>(activate(acc[i], p.relu));
          hn[r * H + j] = to_acc(h);
          if (p.out) p.out[t * p.out_st + b * p.out_sb + j] = h;
          if (s == len[i] - 1) p.h_n[b * H + j] = h;
        }
      }
    }
    __syncthreads();
  }
  // The outputs after each row's end (with lengths; forward direction).
  if (p.out && p.lengths) {
#pragma unroll
    for (int i = 0; i < kMaxRowsPerThread; ++i) {
      if (len[i] == 0) continue;
      const int64_t b = row0 + g + i * G;
      for (int t = len[i]; t < p.T; ++t)
        p.out[t * p.out_st + b * p.out_sb + j] = from_acc<S>(A(0));
    }
  }
}

template <typename S>
struct RegFwdParams {
  const S* x;  // [T,B,I], I <= kRegFwdMaxInput; [T,B,H] when not projected
  int64_t x_st, x_sb;
  const S* h0;    // [B,H]
  const S* w_ih;  // [H,I], or null when not projected
  const S* w_hh;  // [H,H]
  const S* b_ih;  // [H] or null
  const S* b_hh;  // [H] or null
  S* out;         // [T,B,H] or null
  int64_t out_st, out_sb;
  S* h_n;  // [B,H]
  const int64_t* lengths;  // [B] or null; with lengths, !reverse
  int T, B, I, H;
  bool reverse;  // relu or tanh: the kernel's RELU
  int chunk;  // steps of x staged at a time (reg_fwd_chunk), or T
};

// Four floats read from shared memory as one 16-byte access (LDS.128); all
// threads of a warp read the same address, a broadcast.
struct alignas(16) Float4 {
  float x, y, z, w;
};
// Four accumulator elements in shared memory, read at once: a Float4, or
// for double two 16-byte accesses (LDS.128 holds two doubles).
template <typename A>
struct Vec4Of {
  using type = Float4;
};
struct alignas(16) Double4 {
  double x, y, z, w;
};
template <>
struct Vec4Of<double> {
  using type = Double4;
};

// x of steps [s0, s0 + n) of the rows [row0, +R) in shared memory as
// xs[q][r][kRegFwdMaxInput] (step s0 + q; zero past I, past the batch and
// after each row's end), staged by the block's nt threads from thread
// `first`; the caller's barrier publishes it. The register-resident and
// the cluster forwards' x staging.
template <typename S, int R, typename A>
IRNN_DEVICE void stage_x_chunk(A* xs, const RegFwdParams<S>& p, int row0,
                               int s0, int n, int first, int nt) {
  constexpr int XI = kRegFwdMaxInput;
  for (int e = first; e < n * R * XI; e += nt) {
    const int q = e / (R * XI), r = (e / XI) % R, i = e % XI;
    const int t = p.reverse ? p.T - 1 - (s0 + q) : s0 + q;
    xs[e] = i < p.I && row0 + r < p.B &&
                    s0 + q < row_length(p.lengths, row0 + r, p.T)
                ? to_acc(p.x[t * p.x_st + (int64_t)(row0 + r) * p.x_sb + i])
                : A(0);
  }
}

// The four accumulators of each of R rows: acc[r][0] starts from the input
// term (bias + w_ih . x of the step, from its four elements of staged x),
// the others from 0.
template <int R, typename A>
IRNN_DEVICE void start_accumulators(A (&acc)[R][4], const A* xq, A bias,
                                    const A (&wi)[4]) {
  using V = typename Vec4Of<A>::type;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const V xv = *reinterpret_cast<const V*>(xq + r * 4);
    acc[r][0] = bias + wi[0] * xv.x + wi[1] * xv.y + wi[2] * xv.z +
                wi[3] * xv.w;
    acc[r][1] = acc[r][2] = acc[r][3] = A(0);
  }
}

// acc[r][c] += w[k + c] * v[r * row_stride + k + c] for k < K in steps of
// 4: one 16-byte broadcast of v (two for double) feeds four independent
// accumulators per row (the dot products of every register-resident and
// cluster kernel).
template <int K, int R, typename A>
IRNN_DEVICE void broadcast_dots(A (&acc)[R][4], const A (&w)[K], const A* v,
                                int row_stride) {
  using V = typename Vec4Of<A>::type;
#pragma unroll
  for (int k = 0; k < K; k += 4) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const V hv = *reinterpret_cast<const V*>(v + r * row_stride + k);
      acc[r][0] += w[k] * hv.x;
      acc[r][1] += w[k + 1] * hv.y;
      acc[r][2] += w[k + 2] * hv.z;
      acc[r][3] += w[k + 3] * hv.w;
    }
  }
}

// The element of type T at `bytes` past `base` (dynamic shared memory
// addressed by byte offsets, which a step moves with one add or xor; the
// emulation checks that it lies in the block's).
template <typename T>
IRNN_DEVICE T& at_bytes(unsigned char* base, int bytes) {
  irnn_check_smem(base + bytes, static_cast<int>(sizeof(T)));
  return *reinterpret_cast<T*>(base + bytes);
}

// The prefetch ring of a forward whose input is not projected (x is the
// pre-projected [T,B,H]; the biases are still to add): a thread's element
// (its unit) of its rows r0, r0 + RS, ... (RO of them), copied with
// cp.async kFwdRing - 1 steps before the step that adds it, into
// ring[step % kFwdRing][r][U] of shared memory (R rows of U floats a
// slot). Every thread reads only its own elements (a thread that copies
// none reads memory nobody writes, and adds none of it): an element is
// read after its copying thread's own wait, so no barrier publishes it,
// and no thread reads what another's copy writes. A step copies into the
// slot its thread read in
// the step before, whose barrier has ended since. A row copies only its
// own steps, so a finished row costs no memory traffic (and the step that
// reads its stale slot drops what it computes). Shared memory is
// addressed by byte offsets from the block's base, moved one slot per
// step; the source is an integer moved by one step per copy: past the last
// step it is no address, and nothing is copied from it. A 16-bit S
// (Narrow) copies the aligned 4-byte word that holds the element (the
// smallest cp.async copy; the op keeps such words inside the tensor's
// storage, whole_words) and reads the element's half, which bit 1 of its
// source address names: the read step's source is NS steps behind the
// next copy's, so no register holds the halves.
template <int R, int U, int RO, int RS, typename S = float>
struct FwdRing {
  static constexpr int NS = kFwdRing, SLOT = 4 * R * U, ROW = 4 * RS * U;
  static constexpr bool kNarrow = sizeof(S) == 2;
  // Checked where a ring copies (issue): a projected forward of any type
  // holds one it never uses.
  static constexpr bool kCopies = sizeof(S) == 4 || kNarrow;
  unsigned char* smem;  // the block's dynamic shared memory
  int begin;            // this thread's element of row r0 in slot 0
  int rd, cp;           // ... in the slot read next, and copied into next
  uint64_t src;         // the next copy's source, row r0 (bytes)
  int64_t step_bytes;   // from one step's source to the next, in run order
  int64_t row_bytes;    // from one of the thread's rows' source to the next

  // The ring at byte `ring` of the block's shared memory, this thread's
  // element `at` of a row (its unit in the block); x of unit j of rows
  // row0 + r0 + RS i, from the first step on. Slot 0 is read first; the
  // first kFwdRing - 1 groups (prologue) fill slots 0 to NS - 2.
  IRNN_DEVICE FwdRing(int ring, int at, const RegFwdParams<S>& p, int row0,
                      int r0, int j)
      : smem(irnn_dyn_smem<unsigned char>()),
        begin(ring + 4 * (r0 * U + at)),
        rd(begin),
        cp(begin),
        src(reinterpret_cast<uint64_t>(
            p.x + (int64_t)(p.reverse ? p.T - 1 : 0) * p.x_st +
            (int64_t)(row0 + r0) * p.x_sb + j)),
        step_bytes((p.reverse ? -p.x_st : p.x_st) * (int64_t)sizeof(S)),
        row_bytes(RS * p.x_sb * (int64_t)sizeof(S)) {}

  // The copies of the next step for the thread's rows i < RO with
  // copies(i), into the slot at cp, as one group; cp moves to the next
  // slot (the prologue's) or stays (each step's: advance sets it). Row
  // i's source is row i - 1's plus the row stride, taken opaque: the RO
  // sources computed once before the step loop held 2 RO registers through
  // it, and spilled at 8 rows.
  template <typename Copies>
  IRNN_DEVICE void issue(Copies copies, bool prologue = false) {
    static_assert(kCopies, "4-byte or 16-bit elements");
    const int64_t row = irnn_opaque(row_bytes);
    uint64_t from = src;
#pragma unroll
    for (int i = 0; i < RO; ++i) {
      if (copies(i))
        irnn_cp_async<4>(smem + cp + i * ROW,
                         reinterpret_cast<const void*>(
                             kNarrow ? from & ~uint64_t{3} : from));
      from += row;
    }
    irnn_cp_async_commit();
    src += step_bytes;
    if (prologue) cp += SLOT;
  }
  // The thread's row i's element of the step, once its group has landed.
  IRNN_DEVICE float read(int i) const {
    if constexpr (kNarrow) {
      const uint32_t from = static_cast<uint32_t>(src) -
                            NS * static_cast<uint32_t>(step_bytes) +
                            i * static_cast<uint32_t>(row_bytes);
      return word_to_acc<S>(at_bytes<unsigned>(smem, rd + i * ROW), from & 2);
    }
    return at_bytes<float>(smem, rd + i * ROW);
  }
  // After a step: the next copies go to the slot it read, and the next
  // step reads the slot after it.
  IRNN_DEVICE void advance() {
    cp = rd;
    rd = rd + SLOT == begin + NS * SLOT ? begin : rd + SLOT;
  }
};

// The register-resident forward for H <= HP. Thread j keeps row j of W_hh
// (zero beyond H) and of W_ih (zero beyond I) in registers and computes unit
// j of the block's R rows [blockIdx.x * R, +R); threads j >= H compute
// zeros and store nothing. h_{t-1} is read from a shared double buffer
// [2][R][HP] in 16-byte broadcasts, four independent accumulators per row
// (k mod 4); the padded columns stay zero, so the padded FMAs add exact
// zeros. x is staged in shared memory a chunk of steps at a time before the
// chunk's step loop, so no global load is on a step's critical path; the
// step stores h_t to shared memory first, then to `out`, and ends with the
// one barrier of the step (step s reads buffer s&1 and writes the other).
// The activation is a template parameter: no branch in the step. With
// lengths, row r stores only its first len[r] steps (its later steps are
// computed from zeros and dropped), the block stops after its longest row,
// and the outputs after each row's end are zeroed after the loop.
// Not PROJECT (x is the pre-projected [T,B,H]): thread j's elements of x
// come through a FwdRing (16-bit ones as their 4-byte words), and
// acc[r][0] starts from the bias plus its element of the step; one chunk
// holds all steps. A double S (projected only) accumulates in double: W_hh's
// row, the h buffers and the staged x hold doubles, and a read of four
// elements of h_{t-1} is two 16-byte broadcasts.
template <typename S, int HP, int R, bool RELU, bool PROJECT>
IRNN_GLOBAL void IRNN_LAUNCH_BOUNDS(reg_fwd_threads(HP))
irnn_fwd_reg_kernel(RegFwdParams<S> p) {
  using A = typename AccOf<S>::type;  // float; double for double
  static_assert(HP % 4 == 0, "h_{t-1} is read four elements at a time");
  static_assert(PROJECT || sizeof(A) == 4, "no ring of doubles (FwdRing)");
  constexpr int NT = (HP + 31) / 32 * 32, XI = kRegFwdMaxInput;  // reg_fwd_threads
  static_assert(XI == 4, "four elements of x per row and step");
  A* hbuf = irnn_dyn_smem<A>();  // [2][R][HP]
  A* xs = hbuf + 2 * R * HP;     // [chunk][R][XI], or the ring
  const int H = p.H, I = p.I, j = threadIdx.x;
  const int row0 = blockIdx.x * R;
  const bool unit = j < H;

  A w[HP];
#pragma unroll
  for (int k = 0; k < HP; ++k)
    w[k] = unit && k < H ? to_acc(p.w_hh[j * H + k]) : A(0);
  A wi[XI];
#pragma unroll
  for (int i = 0; i < XI; ++i)
    wi[i] = PROJECT && unit && i < I ? to_acc(p.w_ih[j * I + i]) : A(0);
  const A bias = unit ? (p.b_ih ? to_acc(p.b_ih[j]) : A(0)) +
                            (p.b_hh ? to_acc(p.b_hh[j]) : A(0))
                      : A(0);
  // Rows past the batch end and units past H stay zero in both buffers.
  for (int e = j; e < R * HP; e += NT) {
    const int r = e / HP, k = e % HP;
    hbuf[e] = row0 + r < p.B && k < H
                  ? to_acc(p.h0[(int64_t)(row0 + r) * H + k]) : A(0);
    hbuf[R * HP + e] = A(0);
  }
  int len[R];    // steps row r stores: 0 for units past H and rows past B
  int steps = 0;  // of the block's longest row
  S h_last[R];    // h of the row's last step (h0 when T = 0), for h_n
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int l = row0 + r < p.B ? row_length(p.lengths, row0 + r, p.T) : 0;
    steps = l > steps ? l : steps;
    len[r] = unit ? l : 0;
    h_last[r] = unit && row0 + r < p.B ? p.h0[(int64_t)(row0 + r) * H + j]
                                       : from_acc<S>(A(0));
  }

  // h_{t-1} and h_t buffers (swapped every step), and the offset of
  // out[t, row0, j], moved by one step's stride per step.
  A* hp = hbuf;
  A* hn = hbuf + R * HP;
  const int64_t out_step = p.reverse ? -p.out_st : p.out_st;
  int64_t out_t = (p.reverse ? p.T - 1 : 0) * p.out_st + row0 * p.out_sb + j;
  // Not projected: the ring's first kFwdRing - 1 steps (row r's own only).
  // Rows of NT units (every thread's own element; reg_fwd_smem_bytes).
  FwdRing<R, NT, R, 1, S> ring(sizeof(A) * 2 * R * HP, j, p, row0, 0,
                               j);  // at xs
  if constexpr (!PROJECT) {
#pragma unroll
    for (int m = 0; m < kFwdRing - 1; ++m)
      ring.issue([&](int r) { return m < len[r]; }, true);
  }
  for (int s0 = 0; s0 < steps; s0 += p.chunk) {
    const int n = steps - s0 < p.chunk ? steps - s0 : p.chunk;
    // The previous chunk's steps ended with a barrier: xs is free.
    if constexpr (PROJECT) stage_x_chunk<S, R>(xs, p, row0, s0, n, j, NT);
    __syncthreads();
    // Steps row r still stores from this chunk's first: to the h buffer,
    // and (0 without a sequence) to out. At one row, two compares per step
    // (the out pointer's null test would take two more); at more rows
    // out's test is the pointer's (a second array spills HP = 128 at 8).
    constexpr bool kOwnOutCount = R == 1;
    int left[R], left_out[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      left[r] = len[r] - s0;
      left_out[r] = !kOwnOutCount || p.out ? left[r] : 0;
    }
    for (int q = 0; q < n; ++q) {
      A acc[R][4];
      if constexpr (PROJECT) {
        start_accumulators(acc, xs + q * R * XI, bias, wi);
      } else {  // one chunk: step s0 + q is q
        ring.issue([&](int r) { return q + kFwdRing - 1 < left[r]; });
        irnn_cp_async_wait<kFwdRing - 1>();
#pragma unroll
        for (int r = 0; r < R; ++r) {  // stale after the row's end: dropped
          acc[r][0] = bias + ring.read(r);
          acc[r][1] = acc[r][2] = acc[r][3] = 0.f;
        }
        ring.advance();
      }
      broadcast_dots(acc, w, hp, HP);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const A a = (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]);
        const S h = from_acc<S>(activate(a, RELU));
        if (q < left[r]) {
          hn[r * HP + j] = to_acc(h);
          h_last[r] = h;
        }
      }
      if (kOwnOutCount || p.out) {
#pragma unroll
        for (int r = 0; r < R; ++r)
          if (q < left_out[r]) p.out[out_t + r * p.out_sb] = h_last[r];
      }
      out_t += out_step;
      A* const swap = hp;
      hp = hn;
      hn = swap;
      __syncthreads();
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (unit && row0 + r < p.B) p.h_n[(int64_t)(row0 + r) * H + j] = h_last[r];
  // The outputs after each row's end (with lengths; forward direction).
  if (p.out && p.lengths) {
#pragma unroll
    for (int r = 0; r < R; ++r)
      for (int t = len[r]; t < p.T && unit && row0 + r < p.B; ++t)
        p.out[t * p.out_st + (int64_t)(row0 + r) * p.out_sb + j] =
            from_acc<S>(A(0));
  }
}

// The cluster forward for 128 < H <= HP (sm_90; IRNN_CLUSTER_FWD_VARIANTS):
// the C = HP / 64 blocks of a cluster share the batch rows
// [cluster * R, +R), and block c of the cluster computes units
// [64c, 64c + 64). Thread (u, s) of a block (warp u / 8, lane s * 8 + u % 8)
// keeps columns [s * HP/4, +HP/4) of unit u's row of W_hh in registers
// (zero beyond H) and sums its slice of the dot product with four
// accumulators from 16-byte broadcasts of h_{t-1}; two shuffles (lanes 8
// and 16 apart) add the four slices, so every thread of the unit holds
// the same a_t. The unit's threads then write h_t into the h buffer of
// every block of the cluster (thread s to blocks s, s + 4), arrive at the
// cluster barrier, store out (off the critical path) and wait: one cluster
// barrier per step and no block barrier. Each block holds all HP units of
// h in a double buffer [2][R][4][HP/4 + 4] (the slices 4 floats apart, so
// a warp's four addresses fall in different banks); step s reads buffer
// s&1 and writes the other, which every block finished reading before the
// barrier of step s-1 ended. The input projection (I <= 4) is folded into
// slice 0's first accumulator (the other slices' W_ih and bias are zero),
// from x staged in shared memory a chunk of steps at a time as in the
// register-resident forward; so are lengths. Not PROJECT (x is the
// pre-projected [T,B,H]): row r's input term goes to slice r % 4's first
// accumulator, bias included, from a FwdRing of the block's 64 units that
// the same thread fills (the other slices start from 0).
template <typename S, int HP, int R, bool RELU, bool PROJECT>
IRNN_DEVICE void cluster_fwd_body(const RegFwdParams<S>& p);

template <typename S, int HP, int R, bool RELU, bool PROJECT>
IRNN_GLOBAL void IRNN_LAUNCH_BOUNDS(kClusterThreads)
irnn_fwd_cluster_kernel(RegFwdParams<S> p) {
  IRNN_CLUSTER_BODY(cluster_fwd_body<S, HP, R, RELU, PROJECT>(p));
}

template <typename S, int HP, int R, bool RELU, bool PROJECT>
IRNN_DEVICE void cluster_fwd_body(const RegFwdParams<S>& p) {
  constexpr int C = cluster_blocks(HP), KS = HP / kClusterSlices,
                SST = cluster_slice_stride(HP), XI = kRegFwdMaxInput,
                RS = kClusterSlices * SST;  // floats of one row's h
  static_assert(HP % kClusterUnits == 0 && C >= 2 && C <= kClusterMaxBlocks,
                "a cluster of 2 to 8 blocks of 64 units");
  static_assert(KS % 4 == 0 && kClusterSlices == 4 && XI == 4,
                "h_{t-1} read four floats at a time; four slices");
  float* hbuf = irnn_dyn_smem<float>();  // [2][R][4][SST]
  float* xs = hbuf + 2 * R * RS;         // [chunk][R][XI], or the ring
  const int H = p.H, I = p.I, tid = threadIdx.x, lane = tid % 32;
  const int s = lane / 8;  // the k-slice
  const int rank = static_cast<int>(irnn_cluster_rank());
  const int j = rank * kClusterUnits + (tid / 32) * 8 + lane % 8;  // unit
  const int row0 = (blockIdx.x / C) * R;
  const bool unit = j < H;
  // Where unit j's h lives in a row of the h buffer.
  const int slot = (j / KS) * SST + j % KS;

  float w[KS];
#pragma unroll
  for (int k = 0; k < KS; ++k)
    w[k] = unit && s * KS + k < H ? to_acc(p.w_hh[j * H + s * KS + k]) : 0.f;
  float wi[XI];
#pragma unroll
  for (int i = 0; i < XI; ++i)
    wi[i] = PROJECT && unit && s == 0 && i < I ? to_acc(p.w_ih[j * I + i])
                                               : 0.f;
  // Projected, slice 0 adds the bias; not projected, the row's slice.
  const float bias = unit && (s == 0 || !PROJECT)
                         ? (p.b_ih ? to_acc(p.b_ih[j]) : 0.f) +
                               (p.b_hh ? to_acc(p.b_hh[j]) : 0.f)
                         : 0.f;
  // Every block holds h0 of all units (zero past H and past the batch);
  // the second buffer starts zero too.
  for (int e = tid; e < R * HP; e += kClusterThreads) {
    const int r = e / HP, k = e % HP;
    const int at = r * RS + (k / KS) * SST + k % KS;
    hbuf[at] = row0 + r < p.B && k < H
                   ? to_acc(p.h0[(int64_t)(row0 + r) * H + k]) : 0.f;
    hbuf[R * RS + at] = 0.f;
  }
  int len[R];     // steps row r stores: 0 for units past H and rows past B
  int steps = 0;  // of the tile's longest row
  S h_last[R];    // h of the row's last step (h0 when T = 0), for h_n
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int l = row0 + r < p.B ? row_length(p.lengths, row0 + r, p.T) : 0;
    steps = l > steps ? l : steps;
    len[r] = unit ? l : 0;
    h_last[r] = unit && row0 + r < p.B ? p.h0[(int64_t)(row0 + r) * H + j]
                                       : from_acc<S>(0.f);
  }
  // The peers' second buffers are written in step 0: every block of the
  // cluster has started and initialised its buffers first.
  irnn_cluster_arrive();
  irnn_cluster_wait();

  float* hp = hbuf;
  float* hn = hbuf + R * RS;
  const int64_t out_step = p.reverse ? -p.out_st : p.out_st;
  int64_t out_t = (p.reverse ? p.T - 1 : 0) * p.out_st + row0 * p.out_sb + j;
  // Not projected: the ring's first kFwdRing - 1 steps, row r copied by
  // its own slice (s == r % 4). Thread (u, s)'s rows are s and s + 4 (RO
  // of them, those below R); a slot has at least 4 rows, so a thread
  // without rows (s >= R) reads its own place, which nobody writes
  // (cluster_fwd_smem_bytes).
  constexpr int RO = (R + kClusterSlices - 1) / kClusterSlices,
                RR = R > kClusterSlices ? R : kClusterSlices;
  const int u = j - rank * kClusterUnits;  // the unit within the block
  FwdRing<RR, kClusterUnits, RO, kClusterSlices, S> ring(4 * 2 * R * RS, u, p,
                                                      row0, s, j);  // at xs
  // Steps row s + 4i copies: 0 past R (and, as len, past B and H).
  int own_len[RO];
#pragma unroll
  for (int i = 0; i < RO; ++i) {
    own_len[i] = 0;
#pragma unroll
    for (int r = i * kClusterSlices; r < R && r < (i + 1) * kClusterSlices; ++r)
      if (s == r % kClusterSlices) own_len[i] = len[r];
  }
  if constexpr (!PROJECT) {
#pragma unroll
    for (int m = 0; m < kFwdRing - 1; ++m)
      ring.issue([&](int i) { return m < own_len[i]; }, true);
  }
  // Not projected, all steps are one chunk. At HP 512 (W_hh's slice takes
  // 128 registers) the loop says so, so that `steps` is not held through
  // the step loop: held, it spilled 12 bytes at 4 rows. (At HP 256 the
  // same spilled 8 rows inside the step loop.)
  constexpr bool kOnePass = !PROJECT && KS >= 128;
  for (int s0 = 0; s0 < steps; s0 = kOnePass ? steps : s0 + p.chunk) {
    const int n = kOnePass ? steps : steps - s0 < p.chunk ? steps - s0 : p.chunk;
    // The previous chunk's steps ended with a cluster barrier: xs is free.
    if constexpr (PROJECT)
      stage_x_chunk<S, R>(xs, p, row0, s0, n, tid, kClusterThreads);
    __syncthreads();
    // Steps row r still stores from this chunk's first: h (to every block)
    // and, by the row's own slice thread (s == r % 4), out.
    int left[R];
#pragma unroll
    for (int r = 0; r < R; ++r) left[r] = len[r] - s0;
    for (int q = 0; q < n; ++q) {
      float acc[R][4];
      if constexpr (PROJECT) {
        start_accumulators(acc, xs + q * R * XI, bias, wi);
      } else {  // one chunk: step s0 + q is q
        ring.issue([&](int i) { return q + kFwdRing - 1 < own_len[i]; });
        irnn_cp_async_wait<kFwdRing - 1>();
        float in[RO];  // stale after the row's end: dropped
#pragma unroll
        for (int i = 0; i < RO; ++i) in[i] = bias + ring.read(i);
        ring.advance();
#pragma unroll
        for (int r = 0; r < R; ++r) {
          acc[r][0] = s == r % kClusterSlices ? in[r / kClusterSlices] : 0.f;
          acc[r][1] = acc[r][2] = acc[r][3] = 0.f;
        }
      }
      broadcast_dots(acc, w, hp + s * SST, RS);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float a = (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]);
        // Slices s and s ^ 1, then pairs: the same sums in every lane.
        a += __shfl_xor_sync(0xffffffffu, a, 8);
        a += __shfl_xor_sync(0xffffffffu, a, 16);
        const S h = from_acc<S>(activate(a, RELU));
        if (q < left[r]) {
          const float hv = to_acc(h);
#pragma unroll
          for (int b = 0; b < C; b += kClusterSlices)
            if (b + s < C) *irnn_map_shared_rank(hn + r * RS + slot, b + s) = hv;
          h_last[r] = h;
        }
      }
      irnn_cluster_arrive();
      if (p.out) {
#pragma unroll
        for (int r = 0; r < R; ++r)
          if (s == r % kClusterSlices && q < left[r])
            p.out[out_t + r * p.out_sb] = h_last[r];
      }
      out_t += out_step;
      float* const swap = hp;
      hp = hn;
      hn = swap;
      irnn_cluster_wait();
    }
  }
  // The first row, opaque: computed before the loop, these stores'
  // addresses held 3 registers through it and spilled at HP 512, 4 rows.
  // Not projected, no chunk reads the first row and the unit in the loop:
  // they are computed again from the block and thread indices, not held
  // through it (held, they spilled HP 256 at 8 rows).
  const int row_e = irnn_opaque(
      PROJECT ? row0 : static_cast<int>(blockIdx.x / C) * R);
  const int j_e =
      PROJECT ? j
              : irnn_opaque(static_cast<int>(irnn_cluster_rank() *
                                                 kClusterUnits +
                                             threadIdx.x / 32 * 8 +
                                             threadIdx.x % 8));
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (unit && s == 0 && row_e + r < p.B)
      p.h_n[(int64_t)(row_e + r) * H + j_e] = h_last[r];
  // The outputs after each row's end (with lengths; forward direction).
  if (p.out && p.lengths) {
#pragma unroll
    for (int r = 0; r < R; ++r)
      for (int t = len[r]; t < p.T && s == r % kClusterSlices && unit &&
                           row_e + r < p.B; ++t)
        p.out[t * p.out_st + (int64_t)(row_e + r) * p.out_sb + j_e] =
            from_acc<S>(0.f);
  }
}

template <typename S>
struct ClusterBwdParams {
  const S* g_out;  // [T,B,H] or null
  int64_t g_st, g_sb;
  const S* g_hn;  // [B,H] or null
  const S* out;   // [T,B,H]: h_t
  int64_t o_st, o_sb;
  const S* w_hh;  // [H,H]
  float* da;      // [T,B,H], contiguous: every da_t (the large-H tail's)
  S* dx;          // [T,B,H], contiguous: dx = da when the input is not
                  // projected, else null
  const int64_t* lengths;  // [B] or null; with lengths, !reverse and no
                           // g_hn (bwd_relayout's inputs)
  int T, B, H;
  bool reverse;
};

// The cluster backward's recurrence for 128 < H <= HP (sm_90;
// IRNN_CLUSTER_BWD_VARIANTS): walk n = 0..T-1 computes step t (T-1-n, or n
// reversed)
//   da_t = phi'(h_t) * (g_t + da_{t+1} W_hh)
// and stores every da_t (float) for the large-H path's GEMMs, which then
// give dh0, dW_hh, dW_ih, db and the projected dx in a fixed order. The
// layout is the cluster forward's on W_hh^T: block c of a cluster owns units
// [64c, 64c + 64) of da; thread (u, s) holds rows [s * HP/4, +HP/4) of
// column u of W_hh in registers and sums its slice of da_{t+1} W_hh from
// 16-byte broadcasts of the block's copy of da_{t+1}; two shuffles add the
// slices, every block gets da_t through distributed shared memory, and one
// cluster barrier closes the step. g_t and h_t of the block's units come
// through a ring of cp.async copies issued kClusterBwdRing - 1 steps ahead,
// so no global load is on a step's path; grad_h_n is added to the first
// walked step's slot before the loop. With lengths the inputs are
// bwd_relayout's (zero after each row's end, grad_h_n folded in), so the
// steps after a row's end give da = 0: with at most 4 rows the cluster
// starts at its longest row's last step, n0 = T - (that length), and only
// stores da = 0 for the steps before (8 rows walk every step). A 16-bit S
// is copied as the aligned 4-byte word that holds it (the op keeps such
// words inside the tensor's storage, whole_words), and the thread that
// copied it widens it to float in place before the cluster barrier that
// publishes the slot, as the register-resident backward does.
template <typename S, int HP, int R, bool RELU>
IRNN_DEVICE void cluster_bwd_body(const ClusterBwdParams<S>& p);

template <typename S, int HP, int R, bool RELU>
IRNN_GLOBAL void IRNN_LAUNCH_BOUNDS(kClusterThreads)
irnn_bwd_cluster_kernel(ClusterBwdParams<S> p) {
  IRNN_CLUSTER_BODY(cluster_bwd_body<S, HP, R, RELU>(p));
}

template <typename S, int HP, int R, bool RELU>
IRNN_DEVICE void cluster_bwd_body(const ClusterBwdParams<S>& p) {
  constexpr bool kNarrow = sizeof(S) == 2;
  static_assert(sizeof(S) == 4 || kNarrow,
                "g_t and h_t are copied 4 bytes at a time");
  constexpr int C = cluster_blocks(HP), KS = HP / kClusterSlices,
                SST = cluster_slice_stride(HP), RS = kClusterSlices * SST,
                NS = kClusterBwdRing, U = kClusterUnits,
                SLOT = R * 2 * U,  // floats of a ring slot: [R][g, h][U]
                NT = kClusterThreads;
  static_assert(HP % U == 0 && C >= 2 && C <= kClusterMaxBlocks,
                "a cluster of 2 to 8 blocks of 64 units");
  static_assert(KS % 4 == 0 && (NS & (NS - 1)) == 0,
                "da read four floats at a time; the ring wraps with a mask");
  float* dbuf = irnn_dyn_smem<float>();  // [2][R][4][SST]
  float* ring = dbuf + 2 * R * RS;       // [NS][R][2][U]
  const int H = p.H, T = p.T, tid = threadIdx.x, lane = tid % 32;
  const int s = lane / 8;
  const int rank = static_cast<int>(irnn_cluster_rank());
  const int u = (tid / 32) * 8 + lane % 8;  // the unit within the block
  const int k = rank * U + u;               // the unit
  const int row0 = (blockIdx.x / C) * R;
  const bool unit = k < H;
  const int slot = (k / KS) * SST + k % KS;
  int steps = 0;  // of the cluster's longest row (T without lengths)
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int l = row0 + r < p.B ? row_length(p.lengths, row0 + r, T) : 0;
    steps = l > steps ? l : steps;
  }
  // The first walk step computed. At 8 rows the kernel holds 255
  // registers and a start known only at run time spills: those walk every
  // step (the zeros give da = 0 after each row's end).
  const int n0 = R <= 4 ? T - steps : 0;
  // da_t of the thread's unit in row 0 at walk step n0, and its step.
  const int64_t da_step = p.reverse ? (int64_t)p.B * H : -(int64_t)p.B * H;
  int64_t da_at = ((int64_t)(p.reverse ? 0 : T - 1) * p.B + row0) * H + k;
  // The steps after the cluster's rows have all ended: da = 0.
  for (int n = 0; n < n0; ++n, da_at += da_step) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (s == r % kClusterSlices && unit && row0 + r < p.B) {
        p.da[da_at + r * H] = 0.f;
        if (p.dx) p.dx[da_at + r * H] = from_acc<S>(0.f);
      }
    }
  }

  float w[KS];
#pragma unroll
  for (int jj = 0; jj < KS; ++jj)
    w[jj] = unit && s * KS + jj < H ? to_acc(p.w_hh[(s * KS + jj) * H + k])
                                    : 0.f;
  // da_T = 0 (the first buffer read); the other is written every step.
  for (int e = tid; e < 2 * R * RS; e += NT) dbuf[e] = 0.f;
  // The ring: element e = tid + i * NT of a slot [R][2][U] is this thread's
  // copy i, of g_t (h = 0) or h_t (h = 1) of row r = e / (2U) and unit kk.
  // h, kk and the strides are the same for all of a thread's copies; rows
  // step by NT / (2U). A copy that never holds data (past the batch, past
  // H, no g_out) zero-fills its place each time the slot is issued (the
  // same cp.async, reading nothing), so that grad_h_n, added to the first
  // step walked (below), is not read again when that slot comes round
  // (without g_out, T > NS).
  constexpr int NC = (SLOT + NT - 1) / NT, RSTEP = NT / (2 * U);
  static_assert(NT % (2 * U) == 0, "a thread's copies are whole rows apart");
  const int ch = (tid / U) & 1, ckk = rank * U + tid % U, cr0 = tid / (2 * U);
  const S* cbase = ch ? p.out : p.g_out;
  const int64_t cst = ch ? p.o_st : p.g_st, csb = ch ? p.o_sb : p.g_sb;
  unsigned copies = 0;  // bit i: copy i holds data
#pragma unroll
  for (int i = 0; i < NC; ++i)
    if (tid + i * NT < SLOT && row0 + cr0 + i * RSTEP < p.B && ckk < H && cbase)
      copies |= 1u << i;
  // The source of copy 0 at walk step n = 0, and its step from one walk
  // step to the next.
  const int64_t cstep = p.reverse ? cst : -cst;
  const S* csrc = copies ? cbase + (p.reverse ? 0 : (int64_t)(T - 1) * cst) +
                               (int64_t)(row0 + cr0) * csb + ckk
                         : nullptr;
  // Copy i's source is RSTEP rows past copy i - 1's: one add each (as a
  // product per copy, HP 512 at 8 rows spilled a register in the step).
  const int64_t crow = RSTEP * csb;
  auto issue = [&](int n, const S* src) {
    float* dst = ring + (n & (NS - 1)) * SLOT + tid;
#pragma unroll
    for (int i = 0; i < NC; ++i) {
      if (tid + i * NT < SLOT)
        irnn_cp_async_or_zero(dst + i * NT,
                              kNarrow ? reinterpret_cast<const void*>(
                                            reinterpret_cast<uintptr_t>(src) &
                                            ~uintptr_t{3})
                                      : static_cast<const void*>(src),
                              copies >> i & 1u);
      src += crow;
    }
  };
  // 16-bit S: this thread's copies of walk step n (landed: its wait)
  // widened to floats. `from` is the low 32 bits of copy 0's source
  // address at step n (an integer: without copies there is no source); its
  // bit 1 says whether the element is the high half of its word, for every
  // copy of the thread, whose sources are RSTEP = 2 rows, a multiple of 4
  // bytes, apart. Every place is widened: one that holds no data was
  // zero-filled, and a zero word widens to 0.f.
  unsigned char* const ring_bytes = reinterpret_cast<unsigned char*>(ring);
  auto address = [](const S* q) {
    return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(q));
  };
  auto widen = [&](int n, uint32_t from) {
    if constexpr (kNarrow) {
      static_assert(RSTEP * sizeof(S) % 4 == 0, "one half for all copies");
      const int at = 4 * ((n & (NS - 1)) * SLOT + tid);
#pragma unroll
      for (int i = 0; i < NC; ++i) {
        if (tid + i * NT < SLOT) {
          const unsigned word = at_bytes<unsigned>(ring_bytes, at + 4 * i * NT);
          at_bytes<float>(ring_bytes, at + 4 * i * NT) =
              word_to_acc<S>(word, from & 2);
        }
      }
    }
  };
  for (int n = n0; n < n0 + NS - 1; ++n) {
    if (n < T) issue(n, csrc + n * cstep);
    irnn_cp_async_commit();
  }
  irnn_cp_async_wait<NS - 2>();  // this thread's copies of step n0
  widen(n0, address(csrc) + n0 * static_cast<uint32_t>(cstep * sizeof(S)));
  // grad_h_n joins the g of the first step walked, added by the thread
  // that copied it (or zeroed it, without g_out).
  if (p.g_hn && T > 0 && ch == 0 && ckk < H) {
#pragma unroll
    for (int i = 0; i < NC; ++i) {
      const int r = cr0 + i * RSTEP;
      if (tid + i * NT < SLOT && row0 + r < p.B)
        ring[(n0 & (NS - 1)) * SLOT + tid + i * NT] +=
            to_acc(p.g_hn[(int64_t)(row0 + r) * H + ckk]);
    }
  }
  // Every block has started, zeroed its buffers and copied step n0.
  irnn_cluster_arrive();
  irnn_cluster_wait();

  float* hp = dbuf;  // da_{t+1}
  float* hn = dbuf + R * RS;
  // The source of step n + NS - 1.
  const S* next = copies ? csrc + (n0 + NS - 1) * cstep : nullptr;
  for (int n = n0; n < T; ++n) {
    // The slot read in step n - 1, free since its barrier.
    if (n + NS - 1 < T) issue(n + NS - 1, next);
    irnn_cp_async_commit();
    if (copies) next += cstep;
    const float* in = ring + (n & (NS - 1)) * SLOT;
    float acc[R][4];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = 0.f;
    broadcast_dots(acc, w, hp + s * SST, RS);
    float da[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float a = (acc[r][0] + acc[r][1]) + (acc[r][2] + acc[r][3]);
      a += __shfl_xor_sync(0xffffffffu, a, 8);
      a += __shfl_xor_sync(0xffffffffu, a, 16);
      const float g = in[r * 2 * U + u], h = in[r * 2 * U + U + u];
      da[r] = activate_grad(g + a, h, RELU);
#pragma unroll
      for (int b = 0; b < C; b += kClusterSlices)
        if (b + s < C) *irnn_map_shared_rank(hn + r * RS + slot, b + s) = da[r];
    }
    irnn_cp_async_wait<NS - 2>();  // this thread's copies of step n + 1
    if (n + 1 < T)
      widen(n + 1, address(next) - static_cast<uint32_t>((NS - 1) * sizeof(S)) *
                                       static_cast<uint32_t>(cstep));
    irnn_cluster_arrive();
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (s == r % kClusterSlices && unit && row0 + r < p.B) {
        p.da[da_at + r * H] = da[r];
        if (p.dx) p.dx[da_at + r * H] = from_acc<S>(da[r]);
      }
    }
    da_at += da_step;
    float* const swap = hp;
    hp = hn;
    hn = swap;
    irnn_cluster_wait();
  }
  irnn_cp_async_wait<0>();
}

template <typename S>
struct RegBwdParams {
  const S* g_out;  // [T,B,H] or null
  int64_t g_st, g_sb;
  const S* g_hn;  // [B,H] or null
  const S* x;     // [T,B,I], I <= kRegFwdMaxInput (read when projecting)
  int64_t x_st, x_sb;
  const S* h0;    // [B,H]
  const S* w_ih;  // [H,I] (projecting) or null
  const S* w_hh;  // [H,H]
  const S* out;   // [T,B,H], the forward's sequence
  int64_t o_st, o_sb;
  S* dx;          // [T,B,I] (projecting) or [T,B,H], contiguous
  S* dh0;         // [B,H]
  typename AccOf<S>::type* partials;  // [blocks][partial_elems]
  // [B] or null; with lengths, !reverse, g_hn null and g_out, out and x
  // zero after each row's end (bwd_relayout): only the block's longest row
  // matters here.
  const int64_t* lengths;
  int T, B, I, H;
  bool reverse;
};

struct alignas(8) Float2 {
  float x, y;
};
// Two accumulator elements in shared memory, read at once: a Float2 (an
// LDS.64), or for double a Double2 (an LDS.128).
template <typename A>
struct Vec2Of {
  using type = Float2;
};
struct alignas(16) Double2 {
  double x, y;
};
template <>
struct Vec2Of<double> {
  using type = Double2;
};

// The register-resident backward for H <= HP; a block owns the R batch rows
// [blockIdx.x * R, +R). Iteration n = 0..T-1 computes step s = T-1-n:
//   da_s = phi'(h_s) * (g_s + da_{s+1} W_hh),
// from da_{s+1} in shared memory, read as 16-byte broadcasts. Thread
// (k, half) (tid = 2k + half) holds W_hh[j, k] and dW_hh[j, k] for the HP/2
// rows j of its half in registers (zero beyond H); the two halves of the dot
// product are joined with one __shfl_xor_sync, so both threads of the pair
// hold da_s[k] of each row. The loads of da_{s+1} also feed the weight
// gradient of step s+1, dW[j, k] += da_{s+1}[j] h_s[k] (rows in order), off
// the chain. db and dW_ih follow da_s; the fused projection's dx of step
// s+1 is computed in iteration n+1 from da_{s+1} kept in registers:
// dx_t[i] = sum_k da_t[k] W_ih[k, i] as a shuffle reduction within each
// warp, whose 8 warp sums thread (r, i) adds one iteration later. g_t and
// h_t (and x_t) come through a ring of cp.async copies issued
// kRegBwdRing - 1 steps ahead, so no global load is on a step's path. One
// barrier per step. After step 0, dh0 = da_0 W_hh and dW += da_0 h0. Each
// gradient element is summed by one thread in step and row order, and the
// blocks' partials are summed in block order by
// irnn_reduce_partials_kernel: bitwise reproducible, no atomics. With
// lengths (and inputs that are zero after each row's end, bwd_relayout),
// the block starts at its longest row's last step: the steps after it give
// da = 0 for all of its rows. Its iterations keep their numbers, n0 = T -
// (that row's length) to T-1, so the step loop compares against p.T as
// without lengths (a register more in the loop spills the 8-row variants);
// at 4 and 8 rows n0 is 0 (below).
template <typename S, int HP, int R, bool RELU, bool PROJECT>
IRNN_GLOBAL void IRNN_LAUNCH_BOUNDS((2 * HP + 31) / 32 * 32)
irnn_bwd_reg_kernel(RegBwdParams<S> p) {
  // Shared memory holds accumulator elements (A: float, or double for
  // double; E bytes each). A float or a double is copied as itself. A
  // 16-bit S is copied as the aligned 4-byte word that holds it, the other
  // half (a neighbour in the same allocation, never used) included; the
  // thread that copied it widens it to float in place before the barrier
  // that publishes the slot (widen), so every reader sees floats, as for
  // float32.
  using A = typename AccOf<S>::type;
  using V2 = typename Vec2Of<A>::type;
  using V4 = typename Vec4Of<A>::type;
  constexpr int E = sizeof(A);
  constexpr bool kNarrow = sizeof(S) == 2;
  static_assert(sizeof(S) == E || kNarrow,
                "float, double or 16-bit elements");
  constexpr int kCopy = kNarrow ? 4 : E;  // bytes of one cp.async
  // reg_bwd_threads(HP), reg_bwd_half_stride(HP), reg_bwd_ring_slot(HP) and
  // reg_bwd_da_stride(HP):
  constexpr int NT = (2 * HP + 31) / 32 * 32, KH = HP / 2,
                SS = KH % 32 == 0 ? KH + 4 : KH, NS = kRegBwdRing,
                XI = kRegFwdMaxInput, NW = kRegBwdMaxWarps,
                RS = kPow2AtLeast<NT + XI>, DS = kPow2AtLeast<2 * SS>;
  static_assert(KH % 4 == 0, "da is read four elements at a time");
  static_assert(XI == 4 && NW == 8, "x_t is one V4, the warp sums two");
  static_assert(NT / 32 <= NW, "one dx partial sum per warp");
  static_assert((NS & (NS - 1)) == 0 && (R & (R - 1)) == 0,
                "the ring index wraps with a mask");
  static_assert(R * XI <= 32, "one warp adds the dx sums");
  // Shared memory, in bytes, of elements A: the ring [NS][R][RS] (per row:
  // g_t, h_t of each unit as [NT/2][2], then x_t [XI]), the da double
  // buffer [2][R][DS] (each row: the two halves, SS apart), the warps' dx
  // sums [2][R][XI][NW].
  constexpr int kRing = 0, kRow = E * RS, kSlot = R * kRow,
                kDa = kRing + NS * kSlot, kDaRow = E * DS,
                kDaBuf = R * kDaRow, kDxPart = kDa + 2 * kDaBuf,
                kDxRow = E * XI * NW, kDxSlot = R * kDxRow,
                kBytes = kDxPart + 2 * kDxSlot;
  static_assert(kDa % (2 * kDaBuf) == 0, "an xor flips the da buffer");
  static_assert(kDxPart % (2 * kDxSlot) == 0, "an xor flips the dx slot");
  unsigned char* smem = irnn_dyn_smem<unsigned char>();
  const int H = p.H, I = p.I, T = p.T;
  const int tid = threadIdx.x, k = tid >> 1, half = tid & 1, lane = tid & 31;
  const int row0 = blockIdx.x * R;
  int steps = 0;  // of the block's longest row (T without lengths)
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int l = row0 + r < p.B ? row_length(p.lengths, row0 + r, T) : 0;
    steps = l > steps ? l : steps;
  }
  // The first iteration. At 4 and 8 rows a start known only at run time
  // spills some variants (8 rows hold 254-255 registers; 4 rows at HP 104
  // spill on sm_80): those run every step (the zeros give da = 0 after
  // each row's end).
  const int n0 = R <= 2 ? T - steps : 0;
  const bool unit = k < H;
  bool valid[R];  // row r of the block is in the batch
#pragma unroll
  for (int r = 0; r < R; ++r) valid[r] = row0 + r < p.B;

  A w[KH], dw[KH];
#pragma unroll
  for (int jj = 0; jj < KH; ++jj) {
    const int j = half * KH + jj;
    w[jj] = unit && j < H ? to_acc(p.w_hh[j * H + k]) : A(0);
    dw[jj] = A(0);
  }
  // The fused projection: W_ih[k, i] for the two of the four (zero-padded)
  // i whose sum this lane keeps and sends (previous_step).
  A w_keep = A(0), w_send = A(0), dw_ih[XI] = {A(0), A(0), A(0), A(0)};
  if (PROJECT) {
    const int q = 2 * (lane & 1);  // the pair's halves: i in {0,1} / {2,3}
    const int keep = q + ((lane >> 1) & 1), send = q + (((lane >> 1) & 1) ^ 1);
    w_keep = unit && keep < I ? to_acc(p.w_ih[k * I + keep]) : A(0);
    w_send = unit && send < I ? to_acc(p.w_ih[k * I + send]) : A(0);
  }
  A g_last[R];
#pragma unroll
  for (int r = 0; r < R; ++r)
    g_last[r] = unit && valid[r] && p.g_hn
                    ? to_acc(p.g_hn[(int64_t)(row0 + r) * H + k]) : A(0);

  // Zero everything (units past H, rows past B, absent inputs, i >= I),
  // then start the ring: iteration m reads slot m % NS, copied by thread
  // (k, 0) (g_t) and (k, 1) (h_t) for each row and, for x_t, by thread
  // (r, i) = (tid / XI, tid % XI), i < I. Iteration m runs time step
  // t(m) = reverse ? m : T-1-m; the copies' source addresses move by one
  // step per iteration (as integers: past the last step they are not
  // addresses of anything, and never read).
  for (int e = 4 * tid; e < kBytes; e += 4 * NT) at_bytes<float>(smem, e) = 0.f;
  __syncthreads();
  const bool copies = unit && (half || p.g_out != nullptr);
  const int x_row = tid / XI, x_i = tid % XI;
  const bool copies_x = PROJECT && tid < R * XI && x_i < I && row0 + x_row < p.B;
  const int t_first = p.reverse ? 0 : T - 1 - n0;  // with lengths, !reverse
  const int64_t t_dir = p.reverse ? 1 : -1;
  uint64_t src = 0, x_src = 0;
  int64_t src_step = 0, x_step = 0, src_row = 0;
  if (copies) {
    const int64_t st = half ? p.o_st : p.g_st, sb = half ? p.o_sb : p.g_sb;
    src_step = t_dir * st * (int64_t)sizeof(S);
    src_row = sb * (int64_t)sizeof(S);
    src = reinterpret_cast<uint64_t>((half ? p.out : p.g_out) +
                                     (int64_t)row0 * sb + k + t_first * st);
  }
  if (copies_x) {
    x_step = t_dir * p.x_st * (int64_t)sizeof(S);
    x_src = reinterpret_cast<uint64_t>(
        p.x + (int64_t)(row0 + x_row) * p.x_sb + x_i + t_first * p.x_st);
  }
  // The source of a copy: the element's address, or for a 16-bit S its
  // word's.
  auto word_of = [](uint64_t address) {
    return reinterpret_cast<const void*>(kNarrow ? address & ~uint64_t{3}
                                                 : address);
  };
  // This thread's place in a slot: where it reads (g_t, h_t) of unit k and
  // where it copies to (row 0; row r is r * kRow further), where it copies
  // x_t to; the slot bits of a ring offset.
  const int ring_read = 2 * E * k, ring_copy = 2 * E * k + E * half,
            x_copy = x_row * kRow + E * (NT + x_i);
  constexpr int kSlotBits = (NS - 1) * kSlot;
  // The copies of iteration m into the slot at `slot` (+ this thread's
  // place), as one group.
  auto issue = [&](bool copy, int slot) {
    if (copy) {
      if (copies) {
#pragma unroll
        for (int r = 0; r < R; ++r)
          if (valid[r])
            irnn_cp_async<kCopy>(smem + slot + r * kRow,
                                 word_of(src + r * src_row));
      }
      if (copies_x)
        irnn_cp_async<kCopy>(smem + (slot & kSlotBits) + x_copy,
                             word_of(x_src));
    }
    irnn_cp_async_commit();
    src += src_step;
    x_src += x_step;
  };
  // 16-bit S: this thread's copies into the slot at `slot`, landed (its
  // wait), widened to floats before the barrier that publishes them. They
  // are the copies issued NS - 1 groups ago, whose sources lie NS - 1 steps
  // behind src and x_src; bit 1 of a source's address says whether the
  // element is the high half of its word (the sources themselves, as
  // integers, so no register holds the halves; their low 32 bits carry
  // bit 1).
  // Below 8 rows every thread widens its g_t / h_t places, copied or not,
  // with no branch: a place no copy ever targets (a unit past H, a row
  // past B, g_t without grad_output) holds the zeroed ring's 0, which
  // widens to 0.f and stays so. After the last copy a slot keeps a float
  // that widening turns into junk, in slots no iteration reads. The
  // branch costs one row per block 10 instructions of its step; at 8
  // rows dropping it spills (sm_75), so there it stays. x_t's places are
  // always guarded: a thread past R * XI has none.
  constexpr bool kWidenAll = R < 8;
  auto widen = [&](int slot) {
    if constexpr (kNarrow) {
      if (kWidenAll || copies) {
        const uint32_t from = static_cast<uint32_t>(src) -
                              (NS - 1) * static_cast<uint32_t>(src_step);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if (kWidenAll || valid[r]) {
            const int at = slot + ring_copy + r * kRow;
            const unsigned word = at_bytes<unsigned>(smem, at);
            at_bytes<float>(smem, at) = word_to_acc<S>(
                word, (from + r * static_cast<uint32_t>(src_row)) & 2);
          }
        }
      }
      if (copies_x) {
        const int at = slot + x_copy;
        const unsigned word = at_bytes<unsigned>(smem, at);
        at_bytes<float>(smem, at) = word_to_acc<S>(
            word, (static_cast<uint32_t>(x_src) -
                   (NS - 1) * static_cast<uint32_t>(x_step)) & 2);
      }
    }
  };
#pragma unroll
  for (int m = 0; m < NS - 1; ++m)
    issue(n0 + m < T, kRing + m * kSlot + ring_copy);
  irnn_cp_async_wait<NS - 2>();
  widen(kRing);
  __syncthreads();

  // Ring offsets of this iteration's slot (read) and of the free one
  // (copied to), each moved one slot per iteration; da offsets (row 0) of
  // the buffer read (1 at iteration 0) and written (0), flipped per
  // iteration.
  int slot_read = kRing + ring_read;
  int slot_copy = kRing + (NS - 1) * kSlot + ring_copy;
  int da_read = kDa + kDaBuf + E * half * SS;
  int da_write = kDa + E * (k < KH ? k : SS + k - KH);
  // Where dx goes: when not projecting, dx_t = da_t of iteration n's step
  // ([T,B,H], row 0; row r is r * H further); when projecting, iteration n
  // (and the two after the last) stores iteration n-2's dx ([T,B,I],
  // thread (r, i) with r < R, i < I), from t(-1) at n = 1 on. As integers
  // too; select_reg_bwd keeps a step of dx's bytes within an int.
  const int dx_row = PROJECT ? I : H;
  const int dx_step = static_cast<int>(t_dir * p.B * dx_row * sizeof(S));
  uint64_t dx_at = reinterpret_cast<uint64_t>(
                       p.dx + (PROJECT ? (int64_t)(row0 + x_row) * I + x_i
                                       : (int64_t)row0 * H + k)) +
                   (PROJECT ? t_first - t_dir : t_first) * p.B * dx_row *
                       (int64_t)sizeof(S);
  const bool stores_dx = PROJECT && tid < R * XI && x_i < I &&
                         row0 + x_row < p.B;
  // The dx sums thread (r, i) adds and, for lane L < 4, where it writes its
  // warp's sum for i = 2 (L & 1) + (L >> 1) (row 0; row r is r * kDxRow
  // further); flipped per iteration between the two slots (iteration n
  // writes slot n & 1). Every thread reads sums each step; a lane whose
  // row r = lane / XI is past R (R < 8) stores nothing and reads row 0's,
  // inside the block's shared memory (row r's would lie past its end).
  const int dx_lane = lane < R * XI ? lane : lane % XI;
  int dx_sums = kDxPart + kDxSlot + E * ((dx_lane / XI) * XI + (dx_lane % XI)) * NW;
  int dx_sum_write =
      kDxPart + E * ((2 * (lane & 1) + ((lane >> 1) & 1)) * NW + tid / 32);
  A d_prev[R];  // da of the previous iteration's step
#pragma unroll
  for (int r = 0; r < R; ++r) d_prev[r] = A(0);
  A db = A(0);

  // Iteration n-2's dx_t[i] of row r: thread (r, i) adds the warp sums
  // (dx slot (n-1) & 1) in warp order and stores them.
  auto store_dx = [&](int n) {
    const V4 lo = at_bytes<V4>(smem, dx_sums);
    const V4 hi = at_bytes<V4>(smem, dx_sums + 4 * E);
    const A dx = ((lo.x + lo.y) + (lo.z + lo.w)) +
                     ((hi.x + hi.y) + (hi.z + hi.w));
    if (n >= 2 && stores_dx) *reinterpret_cast<S*>(dx_at) = from_acc<S>(dx);
    dx_at += dx_step;
    dx_sums ^= kDxSlot;
  };
  // The previous iteration's da (step s+1) into the warp's sums of its dx
  // (dx slot n & 1), off that iteration's path: the shuffles' latency
  // overlaps this iteration's loads.
  auto previous_step = [&](int n) {
    if (PROJECT) {
      store_dx(n);
      // Sum over the warp's 16 units of d_prev * W_ih[k, i]: the pair's
      // halves hold equal values, so each keeps two of the four i; xor 2
      // exchanges one of them, xor 4, 8, 16 sum the rest. Lane L < 4 then
      // holds the sum for i = 2 (L & 1) + (L >> 1).
#pragma unroll
      for (int r = 0; r < R; ++r) {
        A sum = d_prev[r] * w_keep +
                    __shfl_xor_sync(0xffffffffu, d_prev[r] * w_send, 2);
        sum += __shfl_xor_sync(0xffffffffu, sum, 4);
        sum += __shfl_xor_sync(0xffffffffu, sum, 8);
        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
        if (lane < 4) at_bytes<A>(smem, dx_sum_write + r * kDxRow) = sum;
      }
      dx_sum_write ^= kDxSlot;
    }
  };
  // dh[r] (this half's part, in: g_t on half 0, 0 on half 1) +=
  // da_{s+1} W_hh over this thread's half, and dW[j, k] += da_{s+1}[j] *
  // h_k[r] on the same loads (rows in order); then the pair's sums (the
  // same on both: addition commutes). Two accumulators per row at R = 1,
  // one when rows interleave.
  auto recurrent_dot = [&](A (&dh)[R], const A (&h_k)[R]) {
    constexpr int NA = R == 1 ? 2 : 1;
    A acc[R][NA];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      acc[r][0] = dh[r];
      if (NA == 2) acc[r][NA - 1] = A(0);
    }
#pragma unroll
    for (int jj = 0; jj < KH; jj += 4) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const V4 v = at_bytes<V4>(smem, da_read + r * kDaRow + E * jj);
        acc[r][0] += w[jj] * v.x;
        acc[r][NA - 1] += w[jj + 1] * v.y;
        acc[r][0] += w[jj + 2] * v.z;
        acc[r][NA - 1] += w[jj + 3] * v.w;
        dw[jj] += v.x * h_k[r];
        dw[jj + 1] += v.y * h_k[r];
        dw[jj + 2] += v.z * h_k[r];
        dw[jj + 3] += v.w * h_k[r];
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const A sum = NA == 2 ? acc[r][0] + acc[r][NA - 1] : acc[r][0];
      dh[r] = sum + __shfl_xor_sync(0xffffffffu, sum, 1);
    }
  };
  // Iteration n: step s = T-1-n from the ring; the first has no step s+1
  // (and takes the gradient of h_n). The slot read last iteration is free
  // (a barrier ago): it takes the copies of iteration n + NS - 1.
  const int copy_end = T - (NS - 1);
  auto step = [&](int n, auto first) {
    A dh[R], h[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const V2 gh = at_bytes<V2>(smem, slot_read + r * kRow);
      dh[r] = gh.x;
      h[r] = gh.y;
    }
    if constexpr (decltype(first)::value) {
#pragma unroll
      for (int r = 0; r < R; ++r) dh[r] += g_last[r];
    } else {
      previous_step(n);
#pragma unroll
      for (int r = 0; r < R; ++r) dh[r] = half ? A(0) : dh[r];
      recurrent_dot(dh, h);
    }
    // da_s, then (off the path to the barrier's other side) db and dW_ih.
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const A d = activate_grad(dh[r], h[r], RELU);
      if (half == 0 && unit && valid[r]) {
        at_bytes<A>(smem, da_write + r * kDaRow) = d;
        if (!PROJECT)
          *reinterpret_cast<S*>(dx_at + r * H * sizeof(S)) = from_acc<S>(d);
      }
      d_prev[r] = d;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      db += d_prev[r];
      if (PROJECT) {
        const V4 xv = at_bytes<V4>(
            smem, (slot_read & kSlotBits) + r * kRow + E * NT);
        dw_ih[0] += d_prev[r] * xv.x;
        dw_ih[1] += d_prev[r] * xv.y;
        dw_ih[2] += d_prev[r] * xv.z;
        dw_ih[3] += d_prev[r] * xv.w;
      }
    }
    if (!PROJECT) dx_at += dx_step;
    issue(n < copy_end, slot_copy);
    slot_read = ((slot_read + kSlot) & kSlotBits) | ring_read;
    slot_copy = ((slot_copy + kSlot) & kSlotBits) | ring_copy;
    da_read ^= kDaBuf;
    da_write ^= kDaBuf;
    irnn_cp_async_wait<NS - 2>();
    widen(slot_read & kSlotBits);  // past the last step: a slot never read
    __syncthreads();
  };
  // (Iteration n0 + 1 stores dx at t(-1) unless n0 = 0: steps <= T - 1
  // then, a padding step of every row of the block, and the value is 0.)
  step(n0, std::true_type{});
  for (int n = n0 + 1; n < T; ++n) step(n, std::false_type{});

  // After step 0: its da into dx, dh0 = da_0 W_hh, and dW += da_0 h0; then
  // the last dx.
  irnn_cp_async_wait<0>();
  previous_step(T);
  A dh0[R], h_first[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    dh0[r] = A(0);
    h_first[r] = unit && valid[r] ? to_acc(p.h0[(int64_t)(row0 + r) * H + k])
                                  : A(0);
  }
  recurrent_dot(dh0, h_first);
#pragma unroll
  for (int r = 0; r < R; ++r)
    if (half == 0 && unit && valid[r])
      p.dh0[(int64_t)(row0 + r) * H + k] = from_acc<S>(dh0[r]);
  if (PROJECT) {
    __syncthreads();
    store_dx(T + 1);
  }

  const int PI = PROJECT ? H * I : 0;
  A* part = p.partials + (int64_t)blockIdx.x * (H * H + PI + H);
  if (unit) {
#pragma unroll
    for (int jj = 0; jj < KH; ++jj) {
      const int j = half * KH + jj;
      if (j < H) part[j * H + k] = dw[jj];
    }
    if (half == 0) {
      if (PROJECT) {
#pragma unroll
        for (int i = 0; i < XI; ++i)
          if (i < I) part[H * H + k * I + i] = dw_ih[i];
      }
      part[H * H + PI + k] = db;
    }
  }
}

template <typename S>
struct PersistentBwdParams {
  const S* g_out;  // [T,B,H] or null
  int64_t g_st, g_sb;
  const S* g_hn;  // [B,H] or null
  const S* x;     // [T,B,I] (read when projecting)
  int64_t x_st, x_sb;
  const S* h0;    // [B,H]
  const S* w_ih;  // [H,I] or null
  const S* w_hh;  // [H,H]
  const S* out;   // [T,B,H]
  int64_t o_st, o_sb;
  S* dx;  // [T,B,I] or [T,B,H], contiguous
  S* dh0; // [B,H]
  typename AccOf<S>::type* partials;  // [blocks][partial_elems]
  const int64_t* lengths;  // [B] or null, as RegBwdParams::lengths
  int T, B, I, H;
  bool relu, reverse;
  int rows_per_block, row_groups, rows_per_thread;
};

// The mirror image in reverse time. Iteration n (n = 0..T, step s = T-1-n)
// computes da_s = phi'(h_t) * (g_t + da_{s+1} W_hh) for the block's rows and
// stages h_prev of step s, while the same threads accumulate step s+1's
// da^T h_prev, da and da^T x into this block's dW_hh, db, dW_ih in shared
// memory (each element always by the same thread, rows in order). The block
// writes its partial gradients to the workspace; irnn_reduce_partials_kernel
// sums the blocks in index order, so results do not depend on block timing.
// With lengths (bwd_relayout), the block starts at its longest row's last
// step, as irnn_bwd_reg_kernel.
template <typename S>
IRNN_GLOBAL void IRNN_LAUNCH_BOUNDS(kPersistentMaxThreads)
irnn_bwd_persistent_kernel(PersistentBwdParams<S> p) {
  using A = typename AccOf<S>::type;
  const int H = p.H, I = p.I, R = p.rows_per_block, G = p.row_groups;
  const bool project = p.w_ih != nullptr;
  const int PI = project ? H * I : 0;
  A* w = irnn_dyn_smem<A>();  // [H,H] as stored: w[j*H + k] = W_hh[j,k]
  A* dw = w + H * H;          // [H,H]
  A* da = dw + H * H;         // [2][R,H]
  A* hp = da + 2 * R * H;     // [2][R,H]
  A* w_ih = hp + 2 * R * H;   // [H,I]
  A* dw_ih = w_ih + PI;       // [H,I]
  A* db = dw_ih + PI;         // [H]
  const int tid = threadIdx.x, nt = blockDim.x;
  const int row0 = blockIdx.x * R;
  const int rows = p.B - row0 < R ? p.B - row0 : R;

  for (int e = tid; e < H * H; e += nt) {
    w[e] = to_acc(p.w_hh[e]);
    dw[e] = A(0);
  }
  for (int e = tid; e < PI; e += nt) {
    w_ih[e] = to_acc(p.w_ih[e]);
    dw_ih[e] = A(0);
  }
  for (int e = tid; e < H; e += nt) db[e] = A(0);
  for (int e = tid; e < 4 * R * H; e += nt) da[e] = A(0);  // da and hp
  __syncthreads();

  const int k = tid % H, g = tid / H;
  const bool active = g < G;
  const int nt_div_h = nt / H, nt_mod_h = nt % H;
  A h_carry[kMaxRowsPerThread];  // h_prev of the last step: h_t of this one
#pragma unroll
  for (int i = 0; i < kMaxRowsPerThread; ++i) h_carry[i] = A(0);
  int steps = 0;  // of the block's longest row (p.T without lengths)
  for (int r = 0; r < rows; ++r) {
    const int l = row_length(p.lengths, row0 + r, p.T);
    steps = l > steps ? l : steps;
  }
  for (int n = 0; n <= steps; ++n) {
    const int s = steps - 1 - n;  // step computed now; s + 1 is accumulated
    A* da_new = da + (n & 1) * R * H;
    A* hp_new = hp + (n & 1) * R * H;
    const A* da_old = da + ((n + 1) & 1) * R * H;
    const A* hp_old = hp + ((n + 1) & 1) * R * H;
    if (active) {
      const int t = p.reverse ? p.T - 1 - s : s;  // unused when s < 0
      const int tp = p.reverse ? t + 1 : t - 1;
      // Global loads first (incoming gradient, h_prev; h_t is the previous
      // iteration's h_prev): they do not depend on da_{s+1}, so their
      // latency overlaps the dot products.
      A acc[kMaxRowsPerThread], h[kMaxRowsPerThread], hprev[kMaxRowsPerThread];
      int off[kMaxRowsPerThread];
#pragma unroll
      for (int i = 0; i < kMaxRowsPerThread; ++i) {
        const int r = g + i * G;
        off[i] = (r < R ? r : R - 1) * H;
        acc[i] = h[i] = hprev[i] = A(0);
        if (i < p.rows_per_thread && r < rows && s >= 0) {
          const int64_t b = row0 + r;
          if (p.g_out) acc[i] = to_acc(p.g_out[t * p.g_st + b * p.g_sb + k]);
          if (p.g_hn && n == 0) acc[i] += to_acc(p.g_hn[b * H + k]);
          h[i] = n == 0 ? to_acc(p.out[t * p.o_st + b * p.o_sb + k])
                        : h_carry[i];
          hprev[i] = s == 0 ? to_acc(p.h0[b * H + k])
                            : to_acc(p.out[tp * p.o_st + b * p.o_sb + k]);
          h_carry[i] = hprev[i];
        }
      }
      // + da_{s+1} W_hh: column k of W_hh against the rows of da_old.
      if (n > 0) row_dots(acc, w, k, da_old, off, H, p.rows_per_thread);
#pragma unroll
      for (int i = 0; i < kMaxRowsPerThread; ++i) {
        const int r = g + i * G;
        if (i < p.rows_per_thread && r < rows) {
          const int64_t b = row0 + r;
          if (s < 0) {  // after step 0: the gradient of h0
            p.dh0[b * H + k] = from_acc<S>(acc[i]);
            continue;
          }
          const A d = activate_grad(acc[i], h[i], p.relu);
          da_new[r * H + k] = d;
          hp_new[r * H + k] = hprev[i];
          if (!project) p.dx[((int64_t)t * p.B + b) * H + k] = from_acc<S>(d);
        }
      }
    }
    if (n > 0) {  // accumulate step s + 1 from the old buffers
      const int t1 = p.reverse ? p.T - 2 - s : s + 1;
      // Element e = j*H + kk; (j, kk) advance with e, with no division.
      for (int e = tid, j = tid / H, kk = tid % H; e < H * H;
           e += nt, j += nt_div_h, kk += nt_mod_h) {
        if (kk >= H) {
          kk -= H;
          ++j;
        }
        A sum = dw[e];
        for (int r = 0; r < rows; ++r)
          sum += da_old[r * H + j] * hp_old[r * H + kk];
        dw[e] = sum;
      }
      for (int j = tid; j < H; j += nt) {
        A sum = db[j];
        for (int r = 0; r < rows; ++r) sum += da_old[r * H + j];
        db[j] = sum;
      }
      if (project) {
        for (int e = tid; e < H * I; e += nt) {
          const int j = e / I, i = e % I;
          A sum = dw_ih[e];
          for (int r = 0; r < rows; ++r)
            sum += da_old[r * H + j] *
                   to_acc(p.x[t1 * p.x_st + (int64_t)(row0 + r) * p.x_sb + i]);
          dw_ih[e] = sum;
        }
        for (int e = tid; e < rows * I; e += nt) {
          const int r = e / I, i = e % I;
          A sum = A(0);
          for (int j = 0; j < H; ++j) sum += da_old[r * H + j] * w_ih[j * I + i];
          p.dx[((int64_t)t1 * p.B + row0 + r) * I + i] = from_acc<S>(sum);
        }
      }
    }
    __syncthreads();
  }

  A* part = p.partials + (int64_t)blockIdx.x * (H * H + PI + H);
  for (int e = tid; e < H * H; e += nt) part[e] = dw[e];
  for (int e = tid; e < PI; e += nt) part[H * H + e] = dw_ih[e];
  for (int e = tid; e < H; e += nt) part[H * H + PI + e] = db[e];
}

template <typename S>
struct ReduceParams {
  const typename AccOf<S>::type* partials;  // [blocks][H*H + PI + H]
  int blocks, H, PI;
  S* dw_hh;  // [H,H]
  S* dw_ih;  // [H,I] or null
  S* db;     // [H]
};

// Sums the per-block partial gradients in block order (no atomics).
template <typename S>
IRNN_GLOBAL void irnn_reduce_partials_kernel(ReduceParams<S> p) {
  using A = typename AccOf<S>::type;
  const int64_t P = (int64_t)p.H * p.H + p.PI + p.H;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < P;
       e += (int64_t)gridDim.x * blockDim.x) {
    A sum = A(0);
    for (int b = 0; b < p.blocks; ++b) sum += p.partials[b * P + e];
    const int64_t hh = (int64_t)p.H * p.H;
    if (e < hh)
      p.dw_hh[e] = from_acc<S>(sum);
    else if (e < hh + p.PI)
      p.dw_ih[e - hh] = from_acc<S>(sum);
    else
      p.db[e - hh - p.PI] = from_acc<S>(sum);
  }
}

// An operand of the GEMM: element (i, k) of a matrix whose reduction index
// k may be a flattened (t, b) pair, k = t * kdiv + b, at
//   ptr[i * s_i + t * s_k1 + b * s_k2].
// An unsplit operand has kdiv = kNoSplit (t is always 0).
template <typename T>
struct GemmOperand {
  const T* ptr;
  int64_t s_i, s_k1, s_k2;
  int64_t kdiv;
};

enum class Epilogue : int {
  kStore = 0,    // dst(m,n) = acc (+ addend(m,n))
  kStoreAcc,     // dst_acc(m,n) = acc
  kFwdStep,      // h = phi(acc + bias + input), stored
  kBwdStep,      // da = phi'(h) * (acc + g), stored to da (A) and dx
  kProject,      // dst(m,n) = acc + b_ih(n) + b_hh(n) (+ x(m,n)), stored
};

template <typename S>
struct GemmParams {
  using A = typename AccOf<S>::type;
  int64_t M, N, K;
  // C(m,n) = sum_k a(m,k) * b(k,n); a holds S in the forward step and A
  // (da) everywhere else, so one of a_s / a_acc is set.
  GemmOperand<S> a_s;
  GemmOperand<A> a_acc;
  GemmOperand<S> b;  // b(k,n): i is n
  Epilogue epilogue;
  bool relu;
  int t, I;  // time index of the step (kFwdStep, kBwdStep)
  // kFwdStep, kBwdStep with lengths ([B], forward direction): row m runs
  // its first row_length(lengths, m, steps) steps; a tile whose rows have
  // all ended skips its products (the backward's inputs are then zero,
  // bwd_relayout, so its da is zero either way).
  const int64_t* lengths;
  int steps;
  // kStore / kFwdStep: dst(m,n) at dst[m * d_sm + n * d_sn]
  S* dst;
  int64_t d_sm, d_sn;
  const A* addend;  // kStore: [M,N] contiguous, or null
  A* dst_acc;       // kStoreAcc, kBwdStep (da of this step): [M,N]
  // kProject: biases, and x(m, n) at x[m * x_sb + n] when x is set.
  // kFwdStep: x (m = b, n = j), w_ih, biases, h_n (last step only; with
  // lengths every step, stored for the rows whose last step this is; the
  // outputs after a row's end are zeros)
  const S* x;
  int64_t x_st, x_sb;
  const S* w_ih;
  const S* b_ih;
  const S* b_hh;
  S* h_n;
  // kBwdStep: g_out, g_hn (first walked step only), the stored h_t, dx
  const S* g_out;
  int64_t g_st, g_sb;
  const S* g_hn;
  const S* out;
  int64_t o_st, o_sb;
  S* dx;  // [T,B,H] (!project) or null
};

// Walks the reduction index of one operand through the k tiles of a GEMM
// without dividing: thread kk of a block holds k = k0 + kk as (t, b) with
// k = t * kdiv + b, advances it by kGemmTileK per tile, and publishes the
// element offset t * s_k1 + b * s_k2 for the tile's loaders.
struct GemmKWalker {
  int64_t kdiv, s_k1, s_k2;
  int64_t t, b;
  template <typename T>
  IRNN_DEVICE static GemmKWalker of(const GemmOperand<T>& o) {
    return GemmKWalker{o.kdiv, o.s_k1, o.s_k2, 0, 0};
  }
  IRNN_DEVICE int64_t advance(int64_t by) {
    b += by;
    while (b >= kdiv) {  // kdiv is B (at least 1) or kNoSplit
      b -= kdiv;
      ++t;
    }
    return t * s_k1 + b * s_k2;
  }
};

// C = a b with TM x TN output tiles computed by (TM/RM) x (TN/RN) threads
// of RM x RN outputs each, and a fused epilogue per output element. Every
// output is summed over k in order by one thread, so results are
// deterministic and do not depend on the tile shape. Element offsets along
// k come from GemmKWalker: no 64-bit division per element. Dynamic shared
// memory: gemm_smem_bytes(sizeof(A), TM, TN).
template <typename S, int TM, int TN, int RM, int RN>
IRNN_GLOBAL void IRNN_LAUNCH_BOUNDS((TM / RM) * (TN / RN))
irnn_gemm_kernel(GemmParams<S> p) {
  using A = typename AccOf<S>::type;
  constexpr int TY = TM / RM, TX = TN / RN, NT = TY * TX;
  static_assert(NT >= kGemmTileK, "one thread per k of a tile walks k");
  A* as = irnn_dyn_smem<A>();    // [kGemmTileK][TM]
  A* bs = as + kGemmTileK * TM;  // [kGemmTileK][TN]
  int64_t* koff_a = reinterpret_cast<int64_t*>(bs + kGemmTileK * TN);
  int64_t* koff_b = koff_a + kGemmTileK;  // [kGemmTileK] each
  const int tid = threadIdx.x;
  const int tx = tid % TX, ty = tid / TX;
  // M (up to T*B rows) tiles on grid.x, whose limit is 2^31-1; N <= H.
  const int64_t m0 = (int64_t)blockIdx.x * TM;
  const int64_t n0 = (int64_t)blockIdx.y * TN;
  const bool a_is_s = p.a_s.ptr != nullptr;
  // With K = 0 there is nothing to walk (and kdiv may be B = 0).
  const bool walks = tid < kGemmTileK && p.K > 0;
  GemmKWalker walk_a = a_is_s ? GemmKWalker::of(p.a_s) : GemmKWalker::of(p.a_acc);
  GemmKWalker walk_b = GemmKWalker::of(p.b);
  if (walks) {
    koff_a[tid] = walk_a.advance(tid);
    koff_b[tid] = walk_b.advance(tid);
  }
  __syncthreads();
  A acc[RM][RN];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int jj = 0; jj < RN; ++jj) acc[i][jj] = A(0);
  // A step's tile whose rows have all ended: no products (the same for
  // every thread of the block).
  int64_t K = p.K;
  if (p.lengths != nullptr) {
    bool live = false;
    for (int64_t m = m0; m < m0 + TM && m < p.M; ++m)
      live = live || p.t < row_length(p.lengths, m, p.steps);
    if (!live) K = 0;
  }

  for (int64_t k0 = 0; k0 < K; k0 += kGemmTileK) {
    for (int e = tid; e < kGemmTileK * TM; e += NT) {
      const int kk = e / TM, mm = e % TM;
      const int64_t m = m0 + mm;
      A v = A(0);
      if (m < p.M && k0 + kk < p.K)
        v = a_is_s ? to_acc(p.a_s.ptr[m * p.a_s.s_i + koff_a[kk]])
                   : p.a_acc.ptr[m * p.a_acc.s_i + koff_a[kk]];
      as[e] = v;
    }
    for (int e = tid; e < kGemmTileK * TN; e += NT) {
      const int kk = e / TN, nn = e % TN;
      const int64_t n = n0 + nn;
      bs[e] = (n < p.N && k0 + kk < p.K)
                  ? to_acc(p.b.ptr[n * p.b.s_i + koff_b[kk]])
                  : A(0);
    }
    __syncthreads();
    // The loads of this tile are done: the walkers publish the next tile's
    // offsets, read after the barrier that ends this tile.
    if (walks) {
      koff_a[tid] = walk_a.advance(kGemmTileK);
      koff_b[tid] = walk_b.advance(kGemmTileK);
    }
    for (int kk = 0; kk < kGemmTileK; ++kk) {
      A av[RM], bv[RN];
#pragma unroll
      for (int i = 0; i < RM; ++i) av[i] = as[kk * TM + ty + TY * i];
#pragma unroll
      for (int jj = 0; jj < RN; ++jj) bv[jj] = bs[kk * TN + tx + TX * jj];
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int jj = 0; jj < RN; ++jj) acc[i][jj] += av[i] * bv[jj];
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < RM; ++i) {
#pragma unroll
    for (int jj = 0; jj < RN; ++jj) {
      const int64_t m = m0 + ty + TY * i, n = n0 + tx + TX * jj;
      if (m >= p.M || n >= p.N) continue;
      A v = acc[i][jj];
      if (p.epilogue == Epilogue::kStore) {
        if (p.addend) v += p.addend[m * p.N + n];
        p.dst[m * p.d_sm + n * p.d_sn] = from_acc<S>(v);
      } else if (p.epilogue == Epilogue::kStoreAcc) {
        p.dst_acc[m * p.N + n] = v;
      } else if (p.epilogue == Epilogue::kFwdStep) {  // m = b, n = j
        // The row's steps; without lengths, past every step.
        const int len = p.lengths ? row_length(p.lengths, m, p.steps)
                                  : p.t + 2;
        if (p.t >= len) {  // after the row's end
          p.dst[m * p.d_sm + n * p.d_sn] = from_acc<S>(A(0));
          continue;
        }
        if (p.b_ih) v += to_acc(p.b_ih[n]);
        if (p.b_hh) v += to_acc(p.b_hh[n]);
        const S* xt = p.x + p.t * p.x_st + m * p.x_sb;
        if (p.w_ih) {
          for (int k = 0; k < p.I; ++k)
            v += to_acc(p.w_ih[n * p.I + k]) * to_acc(xt[k]);
        } else {
          v += to_acc(xt[n]);
        }
        const S h = from_acc<S>(activate(v, p.relu));
        p.dst[m * p.d_sm + n * p.d_sn] = h;
        if (p.h_n && (p.lengths == nullptr || p.t == len - 1))
          p.h_n[m * p.N + n] = h;
      } else if (p.epilogue == Epilogue::kProject) {
        if (p.b_ih) v += to_acc(p.b_ih[n]);
        if (p.b_hh) v += to_acc(p.b_hh[n]);
        if (p.x) v += to_acc(p.x[m * p.x_sb + n]);
        p.dst[m * p.d_sm + n * p.d_sn] = from_acc<S>(v);
      } else {  // kBwdStep: m = b, n = k
        if (p.g_out) v += to_acc(p.g_out[p.t * p.g_st + m * p.g_sb + n]);
        if (p.g_hn) v += to_acc(p.g_hn[m * p.N + n]);
        const A h = to_acc(p.out[p.t * p.o_st + m * p.o_sb + n]);
        const A d = activate_grad(v, h, p.relu);
        p.dst_acc[m * p.N + n] = d;
        if (p.dx) p.dx[(p.t * p.M + m) * p.N + n] = from_acc<S>(d);
      }
    }
  }
}

template <typename S>
struct RelayoutParams {
  // The caller's tensor: padded [T,B,C], element (t, b, c) at
  // user[t * u_st + b * u_sb + c], or packed (offsets [T] given) at
  // user[(offsets[t] + b) * u_sb + c]. The kernels' copy: padded, forward
  // ordered and contiguous [T,B,C]; row b's step s < lengths[b] is its time
  // step t = reverse ? lengths[b]-1-s : s.
  const S* user_in;  // gather: the source, or null (zeros)
  S* user_out;       // scatter: the destination
  int64_t u_st, u_sb;
  S* copy;  // gather: the destination; scatter: the source
  const S* add_last;  // gather: [B,C] added at each row's last step, or null
  const int64_t* lengths;
  const int64_t* offsets;
  int64_t T, B, C;
  bool reverse, gather;
};

// Gathers a caller's tensor into the kernels' copy (zero after each row's
// end), or scatters the copy back (zeros into a padded tensor's padding).
template <typename S>
IRNN_GLOBAL void irnn_relayout_kernel(RelayoutParams<S> p) {
  using A = typename AccOf<S>::type;
  const int64_t total = p.T * p.B * p.C;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t c = e % p.C, sb = e / p.C, b = sb % p.B, s = sb / p.B;
    const int64_t len = row_length(p.lengths, b, static_cast<int>(p.T));
    const int64_t t = p.reverse ? len - 1 - s : s;
    // The caller's element (t, b, c); only formed for a step in the row.
    auto at = [&] {
      return p.offsets ? (p.offsets[t] + b) * p.u_sb + c
                       : t * p.u_st + b * p.u_sb + c;
    };
    if (p.gather) {
      A v = A(0);
      if (s < len) {
        if (p.user_in) v = to_acc(p.user_in[at()]);
        if (p.add_last && s == len - 1) v += to_acc(p.add_last[b * p.C + c]);
      }
      p.copy[e] = from_acc<S>(v);
    } else if (s < len) {
      p.user_out[at()] = p.copy[e];
    } else if (!p.offsets) {  // padding: time step s of the padded tensor
      p.user_out[s * p.u_st + b * p.u_sb + c] = from_acc<S>(A(0));
    }
  }
}

template <typename S>
struct ColumnSumParams {
  const typename AccOf<S>::type* src;  // [rows, cols]
  int64_t rows, cols;
  typename AccOf<S>::type* parts;  // [gridDim.y, cols]
};

constexpr int kColumnSumWarps = 8;  // irnn_column_sum_kernel's block: 8 x 32

// The column sums of src in gridDim.y parts (db of the large-H path and
// the cluster backward; db_parts): block (x, y) sums columns [32x, 32x+32)
// over rows [y rows / parts, (y+1) rows / parts), warp w the rows w, w + 8,
// ... of its part in order, and the 8 warps' sums are added in warp order
// into parts[y, c]. irnn_sum_parts_kernel adds the parts in order.
template <typename S>
IRNN_GLOBAL void IRNN_LAUNCH_BOUNDS(32 * kColumnSumWarps)
irnn_column_sum_kernel(ColumnSumParams<S> p) {
  using A = typename AccOf<S>::type;
  A* warp_sums = irnn_dyn_smem<A>();  // [kColumnSumWarps][32]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c = blockIdx.x * (int64_t)32 + lane;
  const int64_t r0 = blockIdx.y * p.rows / gridDim.y;
  const int64_t r1 = (blockIdx.y + 1) * p.rows / gridDim.y;
  A sum = A(0);
  if (c < p.cols)
    for (int64_t r = r0 + warp; r < r1; r += kColumnSumWarps)
      sum += p.src[r * p.cols + c];
  warp_sums[warp * 32 + lane] = sum;
  __syncthreads();
  if (warp == 0 && c < p.cols) {
    A total = warp_sums[lane];
    for (int w = 1; w < kColumnSumWarps; ++w) total += warp_sums[w * 32 + lane];
    p.parts[blockIdx.y * p.cols + c] = total;
  }
}

template <typename S>
struct SumPartsParams {
  const typename AccOf<S>::type* parts;  // [count, n]
  int64_t n;
  int count;
  S* dst;  // [n]
};

// dst[e] = parts[0, e] + parts[1, e] + ... in that order (the backward's
// sums in parts, grad_sums_elems).
template <typename S>
IRNN_GLOBAL void irnn_sum_parts_kernel(SumPartsParams<S> p) {
  using A = typename AccOf<S>::type;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < p.n;
       e += (int64_t)gridDim.x * blockDim.x) {
    A sum = p.parts[e];
    for (int q = 1; q < p.count; ++q) sum += p.parts[q * p.n + e];
    p.dst[e] = from_acc<S>(sum);
  }
}

// d = activate(d) in place over a [rows, cols] view with row stride ld:
// the per-step path's step t after a library GEMM. The kernels' own relu
// and tanh (activate), so NaN propagates (docs/ops.md), which a library's
// relu epilogue does not do. With lengths (forward direction, padded, as
// kFwdStep): zeros after row r's end, and h_n[r] stored at its last step.
template <typename S>
struct ActivateRowsParams {
  S* d;
  int64_t rows, cols, ld;
  bool relu;
  const int64_t* lengths;  // [rows] or null
  int t, steps;
  S* h_n;  // [rows, cols], with lengths only
};

template <typename S>
IRNN_GLOBAL void irnn_activate_rows_kernel(ActivateRowsParams<S> p) {
  const int64_t n = p.rows * p.cols;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / p.cols, c = i - r * p.cols;
    S& v = p.d[r * p.ld + c];
    if (p.lengths == nullptr) {
      v = activate(v, p.relu);
      continue;
    }
    const int len = row_length(p.lengths, r, p.steps);
    if (p.t >= len) {
      v = S(0);
      continue;
    }
    v = activate(v, p.relu);
    if (p.t == len - 1) p.h_n[i] = v;
  }
}

// The per-step backward's pointwise part after a library GEMM (as the
// kBwdStep epilogue, same grouping): for row b and unit k of step t,
//   v = (has_acc ? da[b,k] : 0) + g_out_t[b,k] + g_hn[b,k]
//   da[b,k] = phi'(v, h_t[b,k]); dx_t[b,k] = da[b,k] (unprojected)
// with da [B,H] contiguous (da_{t+1} W_hh from the hook on entry).
template <typename S>
struct BwdPointParams {
  typename AccOf<S>::type* da;
  bool has_acc;
  const S* g;     // grad_output at step t, row stride g_sb, or null
  int64_t g_sb;
  const S* g_hn;  // [B,H] or null
  const S* h;     // the stored h_t, row stride h_sb
  int64_t h_sb;
  S* dx;          // [B,H] at step t, or null
  int64_t B, H;
  bool relu;
};

template <typename S>
IRNN_GLOBAL void irnn_bwd_point_kernel(BwdPointParams<S> p) {
  using A = typename AccOf<S>::type;
  const int64_t n = p.B * p.H;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / p.H, k = i - b * p.H;
    A v = p.has_acc ? p.da[i] : A(0);
    if (p.g) v += to_acc(p.g[b * p.g_sb + k]);
    if (p.g_hn) v += to_acc(p.g_hn[i]);
    const A d = activate_grad(v, to_acc(p.h[b * p.h_sb + k]), p.relu);
    p.da[i] = d;
    if (p.dx) p.dx[i] = from_acc<S>(d);
  }
}

}  // namespace irnn_cuda
