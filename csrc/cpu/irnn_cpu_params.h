// What crosses from the CPU ops (irnn_cpu.cpp) into the framework-free
// kernels (irnn_cpu_kernels.h): sizes, flags and raw pointers to contiguous
// buffers. Hp is H rounded up to the kernel's vector width; every packed
// buffer ([.., Hp]) is zero in its padding columns.
//
// Variable length: with `lengths` (non-increasing, each in 1..T) row b runs
// only its first lengths[b] steps, so the rows still running at step s of a
// slice are a prefix of it. Walking forward, row b's step s is time s;
// reversed, it is time lengths[b]-1-s. Without lengths every row runs T.
//
// Layout of the per-step buffers (x, out, g_out, da, dx): padded, row b of
// time t at row t*B + b of a [T*B, *] block; or packed (with `offsets`, as
// PackedSequence.data), at row offsets[t] + b, where offsets[t] is the
// number of valid steps before time t. The kernels touch valid steps only,
// so both layouts run the same code.
#pragma once

#include <cstdint>

namespace irnn_cuda {

// Input sizes up to this are projected inside the backward's time loop (dx
// and dW_ih); larger ones by GEMMs over all steps after it.
constexpr int64_t kMaxFusedInput = 8;

// Rows per chunk of the backward's dW_hh accumulation.
constexpr int64_t kBackwardChunk = 48;

template <typename S>
struct FwdParams {
  int64_t T, B, I, H, Hp;
  bool reverse;
  const S* x;       // [T,B,I] with wih_t, else the projected input [T,B,H]
  const S* h0;      // [B,H]
  const S* wih_t;   // [I,Hp] W_ih^T, or null (input already projected)
  const S* whh_t;   // [H,Hp] W_hh^T
  const S* bias;    // [Hp] b_ih + b_hh (zeros where absent)
  S* out;           // [T,B,H] or null (last state only)
  S* h_n;           // [B,H]
  S* scratch;       // [B,H] second state buffer when out is null
  const int64_t* lengths;  // [B] steps per row, or null (all T)
  const int64_t* offsets;  // [T] packed layout, or null (padded)
};

// A null result pointer means that gradient is not wanted (the op's output
// mask) and its work is skipped.
template <typename S>
struct BwdParams {
  int64_t T, B, I, H, Hp;
  bool reverse;
  const S* g_out;   // [T,B,H] or null (zeros)
  const S* g_hn;    // [B,H] or null (zeros)
  const S* x;       // [T,B,I] for the fused dW_ih (with dwih_part), or null
  const S* h0;      // [B,H]
  const S* wih_t;   // [I,Hp] W_ih^T for the fused dx (with dx), or null
  const S* whh;     // [H,Hp] W_hh
  const S* out;     // [T,B,H] the forward's states
  S* da;            // [T,B,H] da_t for every step, or null: then
  S* da_scratch;    // [2,B,H] holds the last two steps' da
  S* dx;            // [T,B,I] fused dx (with wih_t), or null
  S* dh0;           // [B,H], or null
  S* db_part;       // [slices,Hp] per-slice sum of da, zero-initialised, or null
  S* dwhh_part;     // [slices,H,Hp] per-slice dW_hh, zero-initialised, or null
  S* dwih_part;     // [slices,I,Hp] per-slice dW_ih^T, zero-initialised, or null
  S* gather;        // [slices,2,kBackwardChunk,H] per-slice scratch
  const int64_t* lengths;  // [B] steps per row, or null (all T)
  const int64_t* offsets;  // [T] packed layout, or null (padded)
};

// One implementation per instruction set; `relu` false means tanh.
template <typename S>
struct KernelTable {
  void (*forward)(const FwdParams<S>&, bool relu, int64_t b0, int64_t b1);
  void (*backward)(const BwdParams<S>&, bool relu, int64_t b0, int64_t b1,
                   int64_t slice);
  int64_t lanes;  // vector width: Hp is a multiple of it
};

// The float32 kernels the CPU ops use: "avx512", "avx2" or "generic" (the
// float64 ones are AVX2 where the float32 ones are AVX-512), after the
// IRNN_CPU_KERNELS cap; "invalid IRNN_CPU_KERNELS" where the cap is unknown.
const char* cpu_kernels_name();

namespace cpu_avx512 {  // float32 only
bool supported();
KernelTable<float> table_float();
}  // namespace cpu_avx512

namespace cpu_avx2 {
bool supported();
KernelTable<float> table_float();
KernelTable<double> table_double();
}  // namespace cpu_avx2

namespace cpu_generic {
KernelTable<float> table_float();
KernelTable<double> table_double();
}  // namespace cpu_generic

}  // namespace irnn_cuda
