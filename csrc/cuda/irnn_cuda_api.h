// The plain C++ interface between the torch binding (irnn_ops_cuda.cpp), the
// CUDA launchers (irnn_cuda.cu) and the CPU emulation harness (tests/emu/):
// raw argument structs, device properties, and the pure host function that
// turns device properties into a launch configuration. No torch and no CUDA
// headers, so all three can include it.
//
// Shapes (one layer, one direction): T steps, B batch, I input, H hidden.
// Tensors of shape [T,B,*] are addressed with a time stride and a batch
// stride and a unit inner stride; everything else is contiguous.
#pragma once

#include <cstddef>
#include <cstdint>

namespace irnn_cuda {

enum class DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };

// Bytes of one stored element, and of the accumulator the kernels use for it
// (float for float/half/bfloat16, double for double).
inline int storage_bytes(DType d) {
  return d == DType::kDouble ? 8 : d == DType::kFloat ? 4 : 2;
}
inline int acc_bytes(DType d) { return d == DType::kDouble ? 8 : 4; }

// What the launch configuration depends on; filled from
// cudaDeviceGetAttribute on a GPU and from property tables in the emulation.
struct DeviceProps {
  int sm_count;                 // cudaDevAttrMultiProcessorCount
  int max_threads_per_block;    // cudaDevAttrMaxThreadsPerBlock
  int64_t smem_per_block;       // cudaDevAttrMaxSharedMemoryPerBlock (48 KB)
  int64_t smem_per_block_optin; // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int cluster_launch;           // cudaDevAttrClusterLaunch: 1 where thread-
                                // block clusters launch (sm_90 and later)
  // Clusters of 4 and of 8 blocks of the cluster kernels that run at once
  // (cudaOccupancyMaxActiveClusters; one block per SM). A cluster's blocks
  // share one GPC, and a GPC's SMs need not be a multiple of the cluster
  // size, so this can be less than sm_count / blocks. 0 where not known
  // (not queried, or the query failed): sm_count / blocks is taken. -1
  // where the query found that no such cluster fits (a MIG slice smaller
  // than a cluster): the cluster kernels of that size are not selected.
  int clusters_of_4;
  int clusters_of_8;
  // Which register-resident variants make_launch_config may pick: 0, the
  // table's choice (pick_reg_variant); 1, 2, 4 or 8, only those of that
  // many rows per block, in one wave or several; -1, none (today's kernels
  // run those calls). Not a device property: the CUDA op sets it from
  // IRNN_CUDA_ROWS, so the GPU check can time the variants the table
  // passes over (docs/cuda.md, "Launch configuration").
  int reg_rows = 0;
};

// Clusters of `blocks` blocks of the cluster kernels that run at once on
// the device (one wave); 0 where none can.
inline int clusters_per_wave(const DeviceProps& p, int blocks) {
  const int known = blocks == 4 ? p.clusters_of_4
                    : blocks == 8 ? p.clusters_of_8 : 0;
  if (known < 0) return 0;
  return known > 0 ? known : (blocks > 0 ? p.sm_count / blocks : 0);
}

// Rows one thread of a persistent kernel computes per step, at most (their
// accumulators live in registers).
constexpr int kMaxRowsPerThread = 4;
// Threads of a persistent block, at most (its __launch_bounds__): keeps the
// register budget at 128 per thread, which the kernels fit without spills.
// A thread takes more rows only when the block would exceed it.
constexpr int kPersistentMaxThreads = 512;
// Tiles of the GEMM kernels of the large-H path. Large: 64 x 64 outputs,
// 256 threads of 4 x 4. Small, when large tiles would leave SMs idle (a
// step's GEMM at small B is B x H: at B = 16, H = 256, 4 large tiles for
// 132 SMs): 4 x 8 outputs, one warp of one output per thread (128 blocks).
constexpr int kGemmTileK = 32;
constexpr int kGemmLargeM = 64, kGemmLargeN = 64, kGemmLargePerThread = 4;
constexpr int kGemmSmallM = 4, kGemmSmallN = 8;
// Threads of a block with large tiles.
constexpr int kGemmThreads = (kGemmLargeM / kGemmLargePerThread) *
                             (kGemmLargeN / kGemmLargePerThread);

// Dynamic shared memory of irnn_gemm_kernel with TM x TN tiles: the a tile
// [kGemmTileK][TM], the b tile [kGemmTileK][TN] (accumulator elements of
// acc_size bytes), and the two operands' k offsets [kGemmTileK] (int64).
inline int64_t gemm_smem_bytes(int64_t acc_size, int tm, int tn) {
  return acc_size * kGemmTileK * (tm + tn) +
         2 * kGemmTileK * static_cast<int64_t>(sizeof(int64_t));
}

// The kernels index steps and batch rows with int (loop bounds, grid
// sizes): T and B must each stay below 2^31.
constexpr int64_t kMaxStepsOrBatch = (int64_t(1) << 31) - 1;
inline bool steps_and_batch_fit(int64_t T, int64_t B) {
  return T <= kMaxStepsOrBatch && B <= kMaxStepsOrBatch;
}

enum class Path : int {
  kPersistent = 0,
  kLargeH = 1,
  kRegisterFwd = 2,
  kRegisterBwd = 3,
  kClusterFwd = 4,
  kClusterBwd = 5
};

// The register-resident forward (irnn_fwd_reg_kernel): thread j of a block
// keeps row j of W_hh in registers, padded with zeros to HP columns (HP a
// compile-time size), and computes unit j of the block's R batch rows.
// Every instantiation, as X(dtype enumerator, stored type, HP, R); one .cu
// per (type, HP) in csrc/cuda/ instantiates it (irnn_fwd_reg_<type>_hp<HP>.cu).
// The 16-bit types accumulate in float, as everywhere; double in double,
// at HP 64 only (W_hh's row takes 2 HP registers), with 1 and 2 rows per
// block (4 and 8 spill) and the input projected only (no ring of doubles:
// fwd_ring_covers).
// make_launch_config selects from this table only (pick_reg_variant); every
// other size runs today's kernels. Every (type, HP) but double's has 1, 2,
// 4 and 8 rows per block, so a batch between one and eight waves of single
// rows runs at the fewest rows that fill one wave.
// HP starts at 64: at HP = 32 the fixed cost of a step (activation, stores,
// barrier) leaves FMAs under 60% of the step (the SASS guard's floor), and
// H <= 32 runs exactly at HP = 64 (zero padding).
#define IRNN_REG_FWD_VARIANTS(X) \
  X(kFloat, float, 64, 1)         \
  X(kFloat, float, 64, 2)         \
  X(kFloat, float, 64, 4)         \
  X(kFloat, float, 64, 8)         \
  X(kFloat, float, 104, 1)        \
  X(kFloat, float, 104, 2)        \
  X(kFloat, float, 104, 4)        \
  X(kFloat, float, 104, 8)        \
  X(kFloat, float, 128, 1)        \
  X(kFloat, float, 128, 2)        \
  X(kFloat, float, 128, 4)        \
  X(kFloat, float, 128, 8)        \
  X(kHalf, irnn_half, 64, 1)      \
  X(kHalf, irnn_half, 64, 2)      \
  X(kHalf, irnn_half, 64, 4)      \
  X(kHalf, irnn_half, 64, 8)      \
  X(kHalf, irnn_half, 104, 1)     \
  X(kHalf, irnn_half, 104, 2)     \
  X(kHalf, irnn_half, 104, 4)     \
  X(kHalf, irnn_half, 104, 8)     \
  X(kHalf, irnn_half, 128, 1)     \
  X(kHalf, irnn_half, 128, 2)     \
  X(kHalf, irnn_half, 128, 4)     \
  X(kHalf, irnn_half, 128, 8)     \
  X(kBFloat16, irnn_bf16, 64, 1)  \
  X(kBFloat16, irnn_bf16, 64, 2)  \
  X(kBFloat16, irnn_bf16, 64, 4)  \
  X(kBFloat16, irnn_bf16, 64, 8)  \
  X(kBFloat16, irnn_bf16, 104, 1) \
  X(kBFloat16, irnn_bf16, 104, 2) \
  X(kBFloat16, irnn_bf16, 104, 4) \
  X(kBFloat16, irnn_bf16, 104, 8) \
  X(kBFloat16, irnn_bf16, 128, 1) \
  X(kBFloat16, irnn_bf16, 128, 2) \
  X(kBFloat16, irnn_bf16, 128, 4) \
  X(kBFloat16, irnn_bf16, 128, 8) \
  X(kDouble, double, 64, 1)       \
  X(kDouble, double, 64, 2)
// The widest input the register-resident and cluster forwards project
// themselves (x staged in shared memory, W_ih rows in registers); a wider
// input is projected before the recurrence and, float32, comes through the
// forwards' prefetch ring (kFwdRing) as an input not projected.
constexpr int kRegFwdMaxInput = 4;
// Shared memory for the staged x of one chunk of steps, at most.
constexpr int64_t kRegFwdStageBytes = 32 * 1024;
// Threads of a register-resident block: HP rounded up to whole warps.
constexpr int reg_fwd_threads(int hp) { return (hp + 31) / 32 * 32; }
// Steps of x one chunk stages: [chunk][R][kRegFwdMaxInput] accumulator
// elements (`acc` bytes each: 4, or 8 for double). An input that is not
// projected is not staged: one chunk of all T steps.
inline int64_t reg_fwd_chunk(int64_t T, int rows, bool project = true,
                             int acc = 4) {
  const int64_t most =
      project ? kRegFwdStageBytes / (rows * kRegFwdMaxInput * acc) : T;
  return T < most ? (T > 0 ? T : 1) : (most > 0 ? most : 1);
}
// Steps of a pre-projected input (not projected: x is [T,B,H]) that the
// forwards' prefetch ring holds: each thread copies its units' elements
// with cp.async kFwdRing - 1 steps before the step that adds them.
constexpr int kFwdRing = 8;
// Whether the register-resident and cluster forwards take an input that is
// not projected (their prefetch ring, FwdRing): every dtype of their
// tables (float32, and the 16-bit types as the 4-byte words that hold
// their elements), not float64.
inline bool fwd_ring_covers(DType dtype) { return dtype != DType::kDouble; }
// Dynamic shared memory of a register-resident block, in accumulator
// elements of `acc` bytes: the h double buffer [2][R][HP], then one chunk
// of x, or (not projected; 4-byte places) the ring [kFwdRing][R][threads]
// (a place for every thread's element).
inline int64_t reg_fwd_smem_bytes(int64_t T, int hp, int rows,
                                  bool project = true, int acc = 4) {
  return acc * (2 * rows * hp +
                (project ? reg_fwd_chunk(T, rows, true, acc) * rows *
                               kRegFwdMaxInput
                         : int64_t{kFwdRing} * rows * reg_fwd_threads(hp)));
}

// Whether blocks of `rows` batch rows cover B in one wave (one block per
// SM; the register-resident kernels hold up to 255 registers per thread).
inline bool reg_one_wave(int64_t B, int rows, int sm_count) {
  return B >= 1 && sm_count >= 1 && (B + rows - 1) / rows <= sm_count;
}

// A table's visitor `f` restricted to the variants of `rows` rows per block
// (every variant when rows is 0; DeviceProps::reg_rows). With one R left,
// pick_reg_variant takes it, in several waves where one does not cover B.
template <typename F>
inline auto rows_only(int rows, F& f) {
  return [rows, &f](DType dt, int hp, int r) {
    if (rows == 0 || r == rows) f(dt, hp, r);
  };
}

// The variant a register-resident launch runs, from its table: among the
// listed (HP, R) of the dtype with HP >= H, R rows per block covering B in
// one wave and `fits(HP, R)` (threads and shared memory within the
// device's limits), the one with the least work per thread and step,
// R * HP (ties: fewer rows). So one row per block while B <= SMs, else the
// fewest rows that still fill one wave (2, 4 or 8 where listed), at the
// smallest HP >= H listed with them. Where no listed R covers B in one
// wave, the most rows listed that fit (8 where listed), at the smallest
// HP >= H listed with them, in several waves: the blocks are independent,
// and a wave of register-resident blocks takes a fraction of the time
// today's kernel takes for the same rows (docs/cuda.md). threads and
// shared memory grow with HP, so at the chosen R the chosen HP is the
// smallest listed >= H: the launchers (irnn_launch.cuh) find it from
// (dtype, H, R) alone.
template <typename Table, typename Fits>
inline bool pick_reg_variant(Table table, Fits fits, DType dtype, int64_t B,
                             int64_t H, int sm_count, int* hp_out,
                             int* rows_out) {
  int best_hp = 0, best_rows = 0;
  table([&](DType dt, int hp, int r) {
    if (dt != dtype || hp < H || !reg_one_wave(B, r, sm_count) || !fits(hp, r))
      return;
    const int64_t cost = int64_t(r) * hp, best = int64_t(best_rows) * best_hp;
    if (best_hp == 0 || cost < best || (cost == best && r < best_rows)) {
      best_hp = hp;
      best_rows = r;
    }
  });
  if (best_hp == 0 && B >= 1 && sm_count >= 1) {
    table([&](DType dt, int hp, int r) {
      if (dt != dtype || hp < H || !fits(hp, r)) return;
      if (best_hp == 0 || r > best_rows || (r == best_rows && hp < best_hp)) {
        best_hp = hp;
        best_rows = r;
      }
    });
  }
  if (best_hp == 0) return false;
  *hp_out = best_hp;
  *rows_out = best_rows;
  return true;
}

// Every (dtype, HP, R) of the forward's table, to f.
template <typename F>
inline void reg_fwd_table(F&& f) {
#define IRNN_REG_FWD_ENTRY(dt, type, hp, r) f(DType::dt, hp, r);
  IRNN_REG_FWD_VARIANTS(IRNN_REG_FWD_ENTRY)
#undef IRNN_REG_FWD_ENTRY
}

// The smallest HP >= H a table lists for (dtype, R), or 0.
template <typename Table>
inline int reg_table_hp(Table table, DType dtype, int64_t H, int rows) {
  int best = 0;
  table([&](DType dt, int hp, int r) {
    if (dt == dtype && r == rows && hp >= H && (best == 0 || hp < best))
      best = hp;
  });
  return best;
}

// The register-resident variant for a forward call, or false: the input
// projected and at most kRegFwdMaxInput wide, or not projected
// (fwd_ring_covers), then pick_reg_variant.
inline bool select_reg_fwd(int sm_count, int max_threads, int64_t smem_max,
                           DType dtype, int64_t T, int64_t B, int64_t I,
                           int64_t H, bool project, int reg_rows, int* hp_out,
                           int* rows_out) {
  if ((project ? I > kRegFwdMaxInput : !fwd_ring_covers(dtype)) || H < 1 ||
      reg_rows < 0)
    return false;
  return pick_reg_variant(
      [&](auto&& f) { reg_fwd_table(rows_only(reg_rows, f)); },
      [&](int hp, int r) {
        return reg_fwd_threads(hp) <= max_threads &&
               reg_fwd_smem_bytes(T, hp, r, project, acc_bytes(dtype)) <=
                   smem_max;
      },
      dtype, B, H, sm_count, hp_out, rows_out);
}

// The register-resident backward (irnn_bwd_reg_kernel): thread pair
// (k, 0), (k, 1) of a block holds column k of W_hh in registers, split in
// two halves of HP/2 rows (zero beyond H), and the same slice of dW_hh;
// the pair computes unit k of da for the block's R batch rows. Every
// instantiation, as X(dtype enumerator, stored type, HP, R); one .cu per
// (type, HP) in csrc/cuda/ instantiates it (irnn_bwd_reg_<type>_hp<HP>.cu).
// make_launch_config selects from this table only (pick_reg_variant);
// every other backward runs today's kernels. Rows per block:
// - 8 only at HP = 104: at HP = 64 and 128 the 8 rows' accumulators and
//   loads exceed 255 registers (ptxas spills);
// - 2 and 4 at HP = 64 and 104: at HP = 128 ptxas spills them on sm_75 and
//   sm_80, so H = 105..128 above one wave of single rows runs today's
//   kernel;
// - the 16-bit types not at HP = 128, where the widening of their ring
//   slots (irnn_kernels.cuh) takes the step loop over its instruction
//   budget; and without the projection at 1, 2 and 4 rows per block only
//   (reg_bwd_unprojected_rows): at 8 rows they spill (docs/cuda.md);
// - double at HP = 64 only (W_hh's and dW_hh's halves take 2 HP
//   registers) and one row per block (in several waves above one wave;
//   at 2 rows the tanh variant with the projection spills on sm_75, sm_80
//   and sm_90), the input projected or not, accumulating in double.
#define IRNN_REG_BWD_VARIANTS(X) \
  X(kFloat, float, 64, 1)         \
  X(kFloat, float, 64, 2)         \
  X(kFloat, float, 64, 4)         \
  X(kFloat, float, 104, 1)        \
  X(kFloat, float, 104, 2)        \
  X(kFloat, float, 104, 4)        \
  X(kFloat, float, 104, 8)        \
  X(kFloat, float, 128, 1)        \
  X(kHalf, irnn_half, 64, 1)      \
  X(kHalf, irnn_half, 64, 2)      \
  X(kHalf, irnn_half, 64, 4)      \
  X(kHalf, irnn_half, 104, 1)     \
  X(kHalf, irnn_half, 104, 2)     \
  X(kHalf, irnn_half, 104, 4)     \
  X(kHalf, irnn_half, 104, 8)     \
  X(kBFloat16, irnn_bf16, 64, 1)  \
  X(kBFloat16, irnn_bf16, 64, 2)  \
  X(kBFloat16, irnn_bf16, 64, 4)  \
  X(kBFloat16, irnn_bf16, 104, 1) \
  X(kBFloat16, irnn_bf16, 104, 2) \
  X(kBFloat16, irnn_bf16, 104, 4) \
  X(kBFloat16, irnn_bf16, 104, 8) \
  X(kDouble, double, 64, 1)
// Whether the register-resident backward of R rows per block is built for
// an input that is not projected: float32 at every R of the table, the
// 16-bit types at 1, 2 and 4 rows (B > 4 * SMs runs 4 in several waves).
constexpr bool reg_bwd_unprojected_rows(bool narrow, int rows) {
  return !narrow || rows != 8;
}
// Steps of g_t and h_t the backward's prefetch ring holds: the copies for a
// step are issued kRegBwdRing - 1 steps before it runs.
constexpr int kRegBwdRing = 8;
// Threads of a register-resident backward block: two per unit, rounded up
// to whole warps (at most 8 warps for HP <= 128).
constexpr int reg_bwd_threads(int hp) { return (2 * hp + 31) / 32 * 32; }
constexpr int kRegBwdMaxWarps = 8;
// Where the second half of a da row starts in shared memory: HP/2 floats
// after the first, or 4 more when HP/2 is a multiple of 32 floats, so the
// two broadcast addresses a warp reads fall in different banks.
constexpr int reg_bwd_half_stride(int hp) {
  return (hp / 2) % 32 == 0 ? hp / 2 + 4 : hp / 2;
}
// The smallest power of 2 >= N, as a constant device code can use too.
template <int N>
constexpr int kPow2AtLeast = 2 * kPow2AtLeast<(N + 1) / 2>;
template <>
constexpr int kPow2AtLeast<1> = 1;
inline int pow2_at_least(int n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}
// Floats of one slot of the backward's prefetch ring: g_t and h_t of every
// thread pair's unit (padding units included) and x_t, rounded up to a
// power of 2 so that a slot's offset wraps with a mask.
inline int reg_bwd_ring_slot(int hp) {
  return pow2_at_least(reg_bwd_threads(hp) + kRegFwdMaxInput);
}
// Floats of one of the backward's two da buffers (both halves of a row),
// rounded up to a power of 2 so that an xor flips between the buffers.
inline int reg_bwd_da_stride(int hp) {
  return pow2_at_least(2 * reg_bwd_half_stride(hp));
}
// Dynamic shared memory of a register-resident backward block: the
// prefetch ring [ring][R][reg_bwd_ring_slot], the da double buffer
// [2][R][reg_bwd_da_stride] and the warps' partial sums of the fused
// projection's dx [2][R][4][8], all accumulator elements of `acc` bytes
// (4, or 8 for double).
inline int64_t reg_bwd_smem_bytes(int hp, int rows, int acc = 4) {
  return int64_t{acc} * rows *
         (kRegBwdRing * reg_bwd_ring_slot(hp) + 2 * reg_bwd_da_stride(hp) +
          2 * kRegFwdMaxInput * kRegBwdMaxWarps);
}

// Every (dtype, HP, R) of the backward's table, to f.
template <typename F>
inline void reg_bwd_table(F&& f) {
#define IRNN_REG_BWD_ENTRY(dt, type, hp, r) f(DType::dt, hp, r);
  IRNN_REG_BWD_VARIANTS(IRNN_REG_BWD_ENTRY)
#undef IRNN_REG_BWD_ENTRY
}

// The register-resident variant for a backward call, or false: the input
// projected and at most kRegFwdMaxInput wide, or not projected (16-bit:
// not at 8 rows, reg_bwd_unprojected_rows), T >= 1, one step of dx
// within an int's bytes (the kernel steps its dx address by an int), then
// pick_reg_variant.
inline bool select_reg_bwd(int sm_count, int max_threads, int64_t smem_max,
                           DType dtype, int64_t T, int64_t B, int64_t I,
                           int64_t H, bool project, int reg_rows, int* hp_out,
                           int* rows_out) {
  if ((project && I > kRegFwdMaxInput) || T < 1 || H < 1 || reg_rows < 0)
    return false;
  if (B * (project ? I : H) * acc_bytes(dtype) > kMaxStepsOrBatch)
    return false;
  const bool narrow = dtype == DType::kHalf || dtype == DType::kBFloat16;
  return pick_reg_variant(
      [&](auto&& f) { reg_bwd_table(rows_only(reg_rows, f)); },
      [&](int hp, int r) {
        return (project || reg_bwd_unprojected_rows(narrow, r)) &&
               reg_bwd_threads(hp) <= max_threads &&
               reg_bwd_smem_bytes(hp, r, acc_bytes(dtype)) <= smem_max;
      },
      dtype, B, H, sm_count, hp_out, rows_out);
}

// The cluster forward (irnn_fwd_cluster_kernel, thread-block clusters of
// sm_90): for HP / kClusterUnits blocks of a cluster share one tile of R
// batch rows; block c owns units [64c, 64c + 64) and keeps their rows of
// W_hh in registers, each split over kClusterSlices threads of HP / 4
// columns (zero beyond H), and writes its part of h_t into every peer's
// shared memory each step. Every instantiation, as X(dtype enumerator,
// stored type, HP, R); one .cu per (type, HP) in csrc/cuda/ instantiates it
// (irnn_fwd_cluster_<type>_hp<HP>.cu). make_launch_config selects from
// this table only, where the device launches clusters.
#define IRNN_CLUSTER_FWD_VARIANTS(X) \
  X(kFloat, float, 256, 1)        \
  X(kFloat, float, 256, 2)        \
  X(kFloat, float, 256, 4)        \
  X(kFloat, float, 256, 8)        \
  X(kFloat, float, 512, 1)        \
  X(kFloat, float, 512, 2)        \
  X(kFloat, float, 512, 4)        \
  X(kFloat, float, 512, 8)        \
  X(kHalf, irnn_half, 256, 1)     \
  X(kHalf, irnn_half, 256, 2)     \
  X(kHalf, irnn_half, 256, 4)     \
  X(kHalf, irnn_half, 256, 8)     \
  X(kHalf, irnn_half, 512, 1)     \
  X(kHalf, irnn_half, 512, 2)     \
  X(kHalf, irnn_half, 512, 4)     \
  X(kHalf, irnn_half, 512, 8)     \
  X(kBFloat16, irnn_bf16, 256, 1) \
  X(kBFloat16, irnn_bf16, 256, 2) \
  X(kBFloat16, irnn_bf16, 256, 4) \
  X(kBFloat16, irnn_bf16, 256, 8) \
  X(kBFloat16, irnn_bf16, 512, 1) \
  X(kBFloat16, irnn_bf16, 512, 2) \
  X(kBFloat16, irnn_bf16, 512, 4) \
  X(kBFloat16, irnn_bf16, 512, 8)
constexpr int kClusterUnits = 64;   // units a block of a cluster owns
constexpr int kClusterSlices = 4;   // threads that share a unit's row
constexpr int kClusterThreads = kClusterUnits * kClusterSlices;
// The portable limit of blocks per cluster (8): HP = 512 at most.
constexpr int kClusterMaxBlocks = 8;
// Blocks of one cluster for HP.
constexpr int cluster_blocks(int hp) { return hp / kClusterUnits; }
// Floats from one k-slice of an h row to the next in shared memory: HP / 4
// and 4 more, so the four slices a warp reads fall in different banks.
constexpr int cluster_slice_stride(int hp) { return hp / kClusterSlices + 4; }
// Dynamic shared memory of a cluster block: the h double buffer
// [2][R][kClusterSlices][cluster_slice_stride] (every unit of the cluster),
// then one chunk of x, as in the register-resident forward, or (not
// projected) the ring [kFwdRing][max(R, 4)][kClusterUnits] of the block's
// units (a place for every thread's element: slice s copies row s).
inline int64_t cluster_fwd_smem_bytes(int64_t T, int hp, int rows,
                                      bool project = true) {
  return 4 * (2 * rows * kClusterSlices * cluster_slice_stride(hp) +
              (project ? reg_fwd_chunk(T, rows) * rows * kRegFwdMaxInput
                       : int64_t{kFwdRing} *
                             (rows > kClusterSlices ? rows : kClusterSlices) *
                             kClusterUnits));
}
// Rows per cluster for B, from the rows a table lists for one HP (bit r of
// `listed` set for r rows): one row while every row gets its own cluster
// in one wave (B <= per_wave, the clusters that run at once), else the
// fewest listed rows whose clusters still fit one wave, else the most
// listed (several waves); 0 without any.
inline int cluster_rows_for(unsigned listed, int64_t B, int per_wave) {
  if (B < 1 || per_wave < 1) return 0;
  int most = 0;
  for (int r = 1; r <= 8; r *= 2) {
    if (!(listed >> r & 1u)) continue;
    if ((B + r - 1) / r <= per_wave) return r;
    most = r;
  }
  return most;
}

// The cluster variant from a table (`table` calls its argument with every
// listed (dtype, HP, R)): the smallest listed HP >= H whose cluster the
// device allows, with rows from cluster_rows_for over the rows listed for
// it whose shared memory fits (`fits(HP, R)`).
template <typename Table, typename Fits>
inline bool pick_cluster_variant(Table table, Fits fits, DType dtype,
                                 int64_t B, int64_t H, const DeviceProps& p,
                                 int* hp_out, int* rows_out) {
  int hp = 0;
  table([&](DType dt, int h, int) {
    if (dt == dtype && h >= H && cluster_blocks(h) <= kClusterMaxBlocks &&
        (hp == 0 || h < hp))
      hp = h;
  });
  if (hp == 0) return false;
  unsigned listed = 0;
  table([&](DType dt, int h, int r) {
    if (dt == dtype && h == hp && fits(h, r)) listed |= 1u << r;
  });
  const int rows =
      cluster_rows_for(listed, B, clusters_per_wave(p, cluster_blocks(hp)));
  if (rows == 0) return false;
  *hp_out = hp;
  *rows_out = rows;
  return true;
}

// The cluster variant for a forward call, or false: a device that launches
// clusters, dtype and 128 < H <= HP from the table (H <= 128 runs the
// register-resident forward), the input projected and at most
// kRegFwdMaxInput wide or not projected (fwd_ring_covers), threads and
// shared memory within the device's limits. HP is the smallest listed
// size >= H.
inline bool select_cluster_fwd(const DeviceProps& p, int max_threads,
                               int64_t smem_max, DType dtype, int64_t T,
                               int64_t B, int64_t I, int64_t H, bool project,
                               int* hp_out, int* rows_out) {
  if (!p.cluster_launch ||
      (project ? I > kRegFwdMaxInput : !fwd_ring_covers(dtype)) || H <= 128 ||
      kClusterThreads > max_threads)
    return false;
  return pick_cluster_variant(
      [](auto&& f) {
#define IRNN_CLUSTER_FWD_ENTRY(dt, type, hp, r) f(DType::dt, hp, r);
        IRNN_CLUSTER_FWD_VARIANTS(IRNN_CLUSTER_FWD_ENTRY)
#undef IRNN_CLUSTER_FWD_ENTRY
      },
      [&](int hp, int r) {
        return cluster_fwd_smem_bytes(T, hp, r, project) <= smem_max;
      },
      dtype, B, H, p, hp_out, rows_out);
}

// The cluster backward (irnn_bwd_cluster_kernel): the recurrence of the
// backward on the cluster forward's layout (W_hh^T), storing every da_t;
// the large-H path's GEMMs then give the gradients. Every instantiation, as
// X(dtype enumerator, stored type, HP, R); one .cu per (type, HP)
// (irnn_bwd_cluster_<type>_hp<HP>.cu).
#define IRNN_CLUSTER_BWD_VARIANTS(X) \
  X(kFloat, float, 256, 1)        \
  X(kFloat, float, 256, 2)        \
  X(kFloat, float, 256, 4)        \
  X(kFloat, float, 256, 8)        \
  X(kFloat, float, 512, 1)        \
  X(kFloat, float, 512, 2)        \
  X(kFloat, float, 512, 4)        \
  X(kFloat, float, 512, 8)        \
  X(kHalf, irnn_half, 256, 1)     \
  X(kHalf, irnn_half, 256, 2)     \
  X(kHalf, irnn_half, 256, 4)     \
  X(kHalf, irnn_half, 512, 1)     \
  X(kHalf, irnn_half, 512, 2)     \
  X(kHalf, irnn_half, 512, 4)     \
  X(kBFloat16, irnn_bf16, 256, 1) \
  X(kBFloat16, irnn_bf16, 256, 2) \
  X(kBFloat16, irnn_bf16, 256, 4) \
  X(kBFloat16, irnn_bf16, 512, 1) \
  X(kBFloat16, irnn_bf16, 512, 2) \
  X(kBFloat16, irnn_bf16, 512, 4)
// Steps of g_t and h_t the cluster backward's prefetch ring holds: the
// copies for a step are issued kClusterBwdRing - 1 steps before it runs.
constexpr int kClusterBwdRing = 8;
// Dynamic shared memory of a cluster backward block: the da double buffer
// [2][R][kClusterSlices][cluster_slice_stride] and the ring
// [kClusterBwdRing][R][2][kClusterUnits], floats.
inline int64_t cluster_bwd_smem_bytes(int hp, int rows) {
  return 4 * (2 * rows * kClusterSlices * cluster_slice_stride(hp) +
              kClusterBwdRing * rows * 2 * kClusterUnits);
}

// The cluster variant for a backward call, or false: a device that
// launches clusters, dtype and 128 < H <= HP from the table, T >= 1,
// threads and shared memory within the device's limits (any input: the
// GEMMs after the recurrence handle the projection). HP is the smallest
// listed size >= H.
inline bool select_cluster_bwd(const DeviceProps& p, int max_threads,
                               int64_t smem_max, DType dtype, int64_t T,
                               int64_t B, int64_t H, int* hp_out,
                               int* rows_out) {
  if (!p.cluster_launch || H <= 128 || T < 1 || kClusterThreads > max_threads)
    return false;
  return pick_cluster_variant(
      [](auto&& f) {
#define IRNN_CLUSTER_BWD_ENTRY(dt, type, hp, r) f(DType::dt, hp, r);
        IRNN_CLUSTER_BWD_VARIANTS(IRNN_CLUSTER_BWD_ENTRY)
#undef IRNN_CLUSTER_BWD_ENTRY
      },
      [&](int hp, int r) { return cluster_bwd_smem_bytes(hp, r) <= smem_max; },
      dtype, B, H, p, hp_out, rows_out);
}

struct LaunchConfig {
  Path path;
  int rows_per_block;   // batch rows a persistent block owns
  int row_groups;       // thread groups of H threads, each owning rows
  int rows_per_thread;  // rows one thread computes per step (<= kMaxRows...)
  int threads;          // threads per block
  int blocks;           // persistent blocks (ceil(B / rows_per_block)); on
                        // the large-H path and the cluster backward the SM
                        // count, the fewest blocks a GEMM launches before
                        // it takes smaller tiles (the cluster backward's
                        // grid is ceil(B / rows_per_block) * cluster)
  int64_t smem;         // dynamic shared memory bytes of the persistent kernel
  int64_t workspace;    // bytes of global workspace the launcher needs
  bool smem_optin;      // smem exceeds the default per-block limit
  int cluster;          // blocks per cluster (kClusterFwd), else 1
};

// Shared memory of a persistent block owning `rows` batch rows, in units of
// accumulator elements. Forward: W_hh^T, h double buffer, W_ih, bias.
// Backward: W_hh, its gradient, da and h_prev double buffers, W_ih and its
// gradient, bias gradient.
inline int64_t persistent_smem_elems(bool backward, int64_t rows, int64_t H,
                                     int64_t I, bool project) {
  const int64_t pi = project ? H * I : 0;
  return backward ? 2 * H * H + 4 * rows * H + 2 * pi + H
                  : H * H + 2 * rows * H + pi + H;
}

// Elements of one block's partial gradients in the backward workspace:
// dW_hh [H,H], dW_ih [H,I] (when projecting), db [H].
inline int64_t partial_elems(int64_t H, int64_t I, bool project) {
  return H * H + (project ? H * I : 0) + H;
}

// The backward's sums over the K = T B rows (t, b) of the large-H path and
// the cluster backward (run_backward_kernels, irnn_launch.cuh): db, and
// dW_hh and dW_ih where the library GEMM computes them, are summed in
// parts of K / parts consecutive rows (the rest, fewer than `parts` rows,
// one more part), each part's sum into the workspace, then the parts in
// order (irnn_sum_parts_kernel). The order depends on the shape only, so
// results are bitwise the same every run; and the parts are independent
// products, where the outputs alone would keep a few SMs busy for the
// whole of K (dW_hh at H = 256 is a few output tiles; dW_ih at I = 1 and
// db one column each). `pieces`: the output's independent pieces (a GEMM
// output's 128 x 128 tiles; db's 32-column blocks); `cap`: at most this
// many parts.
constexpr int64_t kSplitTarget = 264;    // pieces x parts: 2 x 132 SMs
constexpr int64_t kSplitMinRows = 1024;  // rows of a part, at least
constexpr int64_t kSplitMaxParts = 64;
inline int64_t split_parts(int64_t rows, int64_t pieces, int64_t cap) {
  int64_t s = (kSplitTarget + pieces - 1) / pieces;
  if (s > rows / kSplitMinRows) s = rows / kSplitMinRows;
  if (s > kSplitMaxParts) s = kSplitMaxParts;
  if (s > cap) s = cap;
  return s < 1 ? 1 : s;
}
inline int64_t gemm_tiles(int64_t M, int64_t N) {
  return ((M + 127) / 128) * ((N + 127) / 128);
}
// The partial sums of dW_hh [H,H] by the library: the parts of the
// (T - 1) B rows with a stored h_prev (the rest one more), and the h0 step.
// Their area stays within the sequence's T B H elements where that holds
// 3 H^2 (the parts at most T B / H - 2).
inline int64_t dw_hh_parts(int64_t T, int64_t B, int64_t H) {
  return split_parts((T - 1) * B, gemm_tiles(H, H), T * B / H - 2);
}
inline int64_t dw_hh_sums(int64_t T, int64_t B, int64_t H) {
  const int64_t K = (T - 1) * B, p = dw_hh_parts(T, B, H);
  return K > 0 ? p + (K % p != 0) + 1 : 1;
}
// dW_ih [H,I] by the library: the parts of the T B rows (the rest one
// more), their area within the sequence's.
inline int64_t dw_ih_parts(int64_t T, int64_t B, int64_t I, int64_t H) {
  return split_parts(T * B, gemm_tiles(H, I), T * B / I - 1);
}
inline int64_t dw_ih_sums(int64_t T, int64_t B, int64_t I, int64_t H) {
  const int64_t K = T * B, p = dw_ih_parts(T, B, I, H);
  return p + (K % p != 0);
}
// db [H]: the parts of the T B rows, 32 columns per block
// (irnn_column_sum_kernel).
inline int64_t db_parts(int64_t T, int64_t B, int64_t H) {
  return split_parts(T * B, (H + 31) / 32, kSplitMaxParts);
}
// Elements (of the accumulator type) of the backward's sums, after every
// da_t in the workspace: used in turn by dW_hh, dW_ih and db (one stream),
// or by the tiled path's first part of dW_hh ([H,H]) and db. The library
// serves float32 only.
inline int64_t grad_sums_elems(DType dtype, int64_t T, int64_t B, int64_t I,
                               int64_t H, bool project) {
  int64_t e = H * H;
  const auto at_least = [&e](int64_t v) { e = v > e ? v : e; };
  at_least(db_parts(T, B, H) * H);
  if (dtype == DType::kFloat) {
    at_least(dw_hh_sums(T, B, H) * H * H);
    if (project) at_least(dw_ih_sums(T, B, I, H) * H * I);
  }
  return e;
}

// The launch configuration for one forward or backward call. Pure: the
// same properties and sizes always give the same configuration.
//
// A persistent block owns rows_per_block batch rows for all T steps, so
// rows are spread over the SMs first (one block per SM) and a block takes
// more rows only as B grows; shared memory and the thread limit cap the rows
// per block, and when even one row's W_hh does not fit on chip the large-H
// path (a GEMM per step) is chosen.
inline LaunchConfig make_launch_config(const DeviceProps& p, bool backward,
                                       DType dtype, int64_t T, int64_t B,
                                       int64_t I, int64_t H, bool project,
                                       bool store_sequence) {
  LaunchConfig c{};
  c.cluster = 1;
  const int64_t acc = acc_bytes(dtype);
  const int64_t smem_max = p.smem_per_block_optin > p.smem_per_block
                               ? p.smem_per_block_optin
                               : p.smem_per_block;
  const int64_t max_threads = p.max_threads_per_block < kPersistentMaxThreads
                                  ? p.max_threads_per_block
                                  : kPersistentMaxThreads;
  // The cluster forward for 128 < H <= 512 where the device has clusters:
  // by the latency model (docs/cuda.md) faster than the single-block
  // kernel and the large-H path at every such H and B.
  int cl_hp = 0, cl_rows = 0;
  if (!backward &&
      select_cluster_fwd(p, static_cast<int>(max_threads), smem_max, dtype, T,
                         B, I, H, project, &cl_hp, &cl_rows)) {
    c.path = Path::kClusterFwd;
    c.cluster = cluster_blocks(cl_hp);
    c.rows_per_block = cl_rows;
    c.row_groups = 1;
    c.rows_per_thread = cl_rows;
    c.threads = kClusterThreads;
    c.blocks = static_cast<int>((B + cl_rows - 1) / cl_rows) * c.cluster;
    c.smem = cluster_fwd_smem_bytes(T, cl_hp, cl_rows, project);
    c.smem_optin = c.smem > p.smem_per_block;
    c.workspace = 0;
    return c;
  }
  // The cluster backward for 128 < H <= 512, then the large-H path's GEMMs.
  if (backward &&
      select_cluster_bwd(p, static_cast<int>(max_threads), smem_max, dtype, T,
                         B, H, &cl_hp, &cl_rows)) {
    c.path = Path::kClusterBwd;
    c.cluster = cluster_blocks(cl_hp);
    c.rows_per_block = cl_rows;
    c.row_groups = 1;
    c.rows_per_thread = cl_rows;
    c.threads = kClusterThreads;
    c.blocks = p.sm_count > 0 ? p.sm_count : 1;
    c.smem = cluster_bwd_smem_bytes(cl_hp, cl_rows);
    c.smem_optin = c.smem > p.smem_per_block;
    c.workspace =  // the large-H path's
        (T * B * H + grad_sums_elems(dtype, T, B, I, H, project)) * acc;
    return c;
  }
  int64_t rows_smem = 0;  // the most rows that fit in shared memory
  if (H <= max_threads) {
    const int64_t fixed = persistent_smem_elems(backward, 0, H, I, project);
    const int64_t per_row = backward ? 4 * H : 2 * H;
    const int64_t avail = smem_max / acc - fixed;
    rows_smem = avail > 0 ? avail / per_row : 0;
  }
  if (rows_smem < 1) {
    c.path = Path::kLargeH;
    c.threads = kGemmThreads;
    c.blocks = p.sm_count > 0 ? p.sm_count : 1;
    if (backward)  // da for every step, then the sums (grad_sums_elems)
      c.workspace =
          (T * B * H + grad_sums_elems(dtype, T, B, I, H, project)) * acc;
    else  // a ping-pong h when the sequence is not stored
      c.workspace = store_sequence ? 0 : 2 * B * H * storage_bytes(dtype);
    return c;
  }
  // A register-resident kernel: every thread computes its unit(s) of all
  // reg_rows rows of its block.
  int reg_hp = 0, reg_rows = 0;
  const bool reg =
      backward
          ? select_reg_bwd(p.sm_count, static_cast<int>(max_threads), smem_max,
                           dtype, T, B, I, H, project, p.reg_rows, &reg_hp,
                           &reg_rows)
          : select_reg_fwd(p.sm_count, static_cast<int>(max_threads), smem_max,
                           dtype, T, B, I, H, project, p.reg_rows, &reg_hp,
                           &reg_rows);
  if (reg) {
    c.path = backward ? Path::kRegisterBwd : Path::kRegisterFwd;
    c.rows_per_block = reg_rows;
    c.row_groups = 1;
    c.rows_per_thread = reg_rows;
    c.threads = backward ? reg_bwd_threads(reg_hp) : reg_fwd_threads(reg_hp);
    c.blocks = static_cast<int>((B + reg_rows - 1) / reg_rows);
    c.smem = backward ? reg_bwd_smem_bytes(reg_hp, reg_rows, acc_bytes(dtype))
                      : reg_fwd_smem_bytes(T, reg_hp, reg_rows, project,
                                           acc_bytes(dtype));
    c.smem_optin = c.smem > p.smem_per_block;
    // The backward's blocks' partial gradients (float, or double).
    c.workspace = backward ? static_cast<int64_t>(c.blocks) *
                                 partial_elems(H, I, project) *
                                 acc_bytes(dtype)
                           : 0;
    return c;
  }
  c.path = Path::kPersistent;
  const int64_t sms = p.sm_count > 0 ? p.sm_count : 1;
  const int64_t rows_threads = kMaxRowsPerThread * (max_threads / H);
  int64_t rows = B > 0 ? (B + sms - 1) / sms : 1;
  if (rows > rows_smem) rows = rows_smem;
  if (rows > rows_threads) rows = rows_threads;
  int64_t rpt = 1;
  while (rpt < kMaxRowsPerThread && ((rows + rpt - 1) / rpt) * H > max_threads)
    ++rpt;
  const int64_t groups = (rows + rpt - 1) / rpt;
  int64_t threads = (groups * H + 31) / 32 * 32;
  if (threads > max_threads) threads = max_threads;
  c.rows_per_block = static_cast<int>(rows);
  c.row_groups = static_cast<int>(groups);
  c.rows_per_thread = static_cast<int>(rpt);
  c.threads = static_cast<int>(threads);
  c.blocks = static_cast<int>((B + rows - 1) / rows);
  c.smem = persistent_smem_elems(backward, rows, H, I, project) * acc;
  c.smem_optin = c.smem > p.smem_per_block;
  c.workspace =
      backward ? static_cast<int64_t>(c.blocks) * partial_elems(H, I, project) * acc
               : 0;
  return c;
}

// A float32 GEMM handed to a library instead of the tiled kernel (cuBLASLt,
// from irnn_ops_cuda.cpp; the emulation's tests hand it to a plain loop):
// the per-step path's recurrent GEMM in the forward, and the weight and
// input gradients' GEMMs in the backward. For m < M, n < N:
//   d[m*ldd + n] = sum_k A(m, k) * W(n, k) + c[m*ldc + n]
//   A(m, k) = a_t ? a[k*lda + m] : a[m*lda + k]
//   W(n, k) = w_t ? w[k*ldw + n] : w[n*ldw + k]
// c is null (nothing added) or d itself (ldc == ldd); K >= 1. No activation:
// the launcher applies it (irnn_activate_rows_kernel), since a library's
// relu epilogue maps NaN to 0 where the op's relu propagates it.
// A strided batch (batch > 1, c null): `batch` such products, product q on
// a + q * a_bs, w + q * w_bs and d + q * d_bs (elements); batch 0 or 1 is
// one product.
struct HookGemm {
  int64_t M, N, K;
  const float* a;
  int64_t lda;
  bool a_t;
  const float* w;
  int64_t ldw;
  bool w_t;
  const float* c;
  int64_t ldc;
  float* d;
  int64_t ldd;
  int64_t batch, a_bs, w_bs, d_bs;
};
inline int64_t hook_batch(const HookGemm& g) {
  return g.batch > 1 ? g.batch : 1;
}
// `run` enqueues the GEMM on `stream` and returns 0, or a nonzero code the
// launch then returns; the hook's owner keeps any detail in `ctx`
// (irnn_ops_cuda.cpp names the failed cuBLAS call and status).
struct GemmHook {
  int (*run)(const HookGemm& g, void* ctx, void* stream);
  void* ctx;
};

// Raw arguments of irnn_forward; pointers to elements of the call's dtype.
struct FwdArgs {
  DType dtype;
  int64_t T, B, I, H;
  bool project, relu, reverse;
  const void* x;            // [T,B,I] (or [T,B,H] when !project)
  int64_t x_st, x_sb;
  const void* h0;           // [B,H]
  const void* w_ih;         // [H,I] or null
  const void* w_hh;         // [H,H]
  const void* b_ih;         // [H] or null
  const void* b_hh;         // [H] or null
  void* out;                // [T,B,H] or null (last state only)
  int64_t out_st, out_sb;
  void* h_n;                // [B,H]
  // Variable lengths (docs/ops.md, revision 2), both on the device: row b
  // runs its first lengths[b] steps (clamped to 1..T), or null. offsets
  // [T], with lengths only: the packed layout, x [N,I] and out [N,H] with
  // row b of step t at offsets[t] + b (a PackedSequence's order).
  const int64_t* lengths;
  const int64_t* offsets;
  // The per-step path's recurrent GEMM by a library, or null (the tiled
  // kernel); used where step_gemm_suits (irnn_launch.cuh) says.
  const GemmHook* step_gemm;
};

// Raw arguments of irnn_backward.
struct BwdArgs {
  DType dtype;
  int64_t T, B, I, H;
  bool project, relu, reverse;
  const void* g_out;        // [T,B,H] or null
  int64_t g_st, g_sb;
  const void* g_hn;         // [B,H] or null
  const void* x;            // [T,B,I] (or [T,B,H] when !project)
  int64_t x_st, x_sb;
  const void* h0;           // [B,H]
  const void* w_ih;         // [H,I] or null
  const void* w_hh;         // [H,H]
  const void* out;          // [T,B,H], the forward's sequence
  int64_t o_st, o_sb;
  void* dx;                 // [T,B,I] (or [T,B,H]), contiguous
  void* dh0;                // [B,H]
  void* dw_ih;              // [H,I] or null
  void* dw_hh;              // [H,H]
  void* db;                 // [H]
  // As FwdArgs: lengths [B] or null; offsets [T] for the packed layout
  // (g_out, out [N,H], x and dx [N,I]).
  const int64_t* lengths;
  const int64_t* offsets;
  // The weight and input gradients' GEMMs of the per-step and cluster
  // backward by a library, or null (the tiled kernel); used where
  // bwd_gemm_suits (irnn_launch.cuh) says.
  const GemmHook* bwd_gemm;
};

// Variable lengths on the kernels (irnn_launch.cuh): the kernels themselves
// walk row b for its first lengths[b] steps in the forward direction on the
// padded layout [T,B,*]. A reversed or packed forward, and every backward
// with lengths, first gathers its inputs into a padded, forward-ordered copy
// in the workspace (row b's step s is its time step lengths[b]-1-s when
// reversed; padding zero-filled, and in the backward grad_h_n folded into
// the gradient of each row's last step) and scatters the results back.
inline bool fwd_relayout(const FwdArgs& a) {
  return a.lengths != nullptr && (a.reverse || a.offsets != nullptr);
}
inline bool bwd_relayout(const BwdArgs& a) { return a.lengths != nullptr; }
constexpr int64_t kRelayoutAlign = 256;
inline int64_t relayout_round(int64_t bytes) {
  return (bytes + kRelayoutAlign - 1) / kRelayoutAlign * kRelayoutAlign;
}
// Bytes of the relayout copies, placed after the kernels' own workspace
// (LaunchConfig::workspace rounded up to kRelayoutAlign): forward x [T,B,I]
// and out [T,B,H]; backward g and out [T,B,H], x (projecting) and dx
// [T,B,I].
inline int64_t relayout_bytes(bool backward, DType dtype, int64_t T,
                              int64_t B, int64_t I, int64_t H, bool project) {
  const int64_t e = storage_bytes(dtype);
  if (!backward) return relayout_round(T * B * I * e) + relayout_round(T * B * H * e);
  return 2 * relayout_round(T * B * H * e) +
         (project ? relayout_round(T * B * I * e) : 0) +
         relayout_round(T * B * I * e);
}
// The whole workspace of a call: the kernels' and, when it relayouts, the
// copies'.
inline int64_t fwd_workspace_bytes(const FwdArgs& a, const LaunchConfig& c) {
  return fwd_relayout(a)
             ? relayout_round(c.workspace) +
                   relayout_bytes(false, a.dtype, a.T, a.B, a.I, a.H, a.project)
             : c.workspace;
}
inline int64_t bwd_workspace_bytes(const BwdArgs& a, const LaunchConfig& c) {
  return bwd_relayout(a)
             ? relayout_round(c.workspace) +
                   relayout_bytes(true, a.dtype, a.T, a.B, a.I, a.H, a.project)
             : c.workspace;
}

// Launchers (irnn_cuda.cu). `stream` is a cudaStream_t; the return value a
// cudaError_t (0 on success), its text from irnn_cuda_error_string.
int irnn_forward_cuda_launch(const FwdArgs& a, const LaunchConfig& c,
                             void* workspace, void* stream);
int irnn_backward_cuda_launch(const BwdArgs& a, const LaunchConfig& c,
                              void* workspace, void* stream);
// Fills *props for a device (cached per device once a query succeeds);
// returns the cudaError_t of the first cudaDeviceGetAttribute that failed
// (*props is then untouched), and stores that attribute's name in
// *failed_attribute.
int irnn_cuda_device_props(int device, DeviceProps* props,
                           const char** failed_attribute);
const char* irnn_cuda_error_string(int error);

}  // namespace irnn_cuda
