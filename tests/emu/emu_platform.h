// A CPU emulation of the CUDA subset the irnn_cuda kernels use, so that
// csrc/cuda/irnn_kernels.cuh and irnn_launch.cuh compile with g++ and run
// here. It defines the names csrc/cuda/irnn_platform.cuh defines for nvcc.
//
// - Every thread of a block is a real OS thread; threadIdx, blockIdx,
//   blockDim and gridDim are thread_local.
// - __syncthreads() is a std::barrier across the block's threads.
// - Dynamic shared memory is private to each block and filled with 0xFF
//   bytes (NaN for floating point) before the block runs, so a read of
//   memory nobody wrote poisons the result.
// - Blocks run one after another, in index order or in a permuted order
//   (emu::g_block_order_seed); the same OS threads serve every block and a
//   barrier separates blocks.
// - The kernels use no warp shuffles, votes or atomics, so none are mapped.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#define IRNN_DEVICE inline
#define IRNN_GLOBAL
#define IRNN_LAUNCH_BOUNDS(threads)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

inline thread_local std::barrier<>* t_barrier = nullptr;
inline thread_local unsigned char* t_smem = nullptr;

// Launch limits of the emulated device (set from the property table): a
// launch may use g_smem_default bytes of dynamic shared memory, or up to
// g_smem_limit once IRNN_SET_MAX_SMEM raised its kernel's attribute.
inline int64_t g_smem_default = 48 * 1024;
inline int64_t g_smem_limit = 48 * 1024;
inline int64_t g_smem_opted_in = 0;
inline int g_max_threads = 1024;
// 0: blocks run in index order; otherwise a permutation seeded with it.
inline unsigned g_block_order_seed = 0;
inline int64_t g_launches = 0;

struct Worker {
  const std::function<void()>* body;
  std::barrier<>* barrier;
  unsigned char* smem;
  size_t smem_bytes;
  const std::vector<unsigned>* order;
  dim3 grid, block;
  unsigned tid;
};

inline void* worker_main(void* arg) {
  Worker& w = *static_cast<Worker*>(arg);
  threadIdx = dim3(w.tid);
  blockDim = w.block;
  gridDim = w.grid;
  t_barrier = w.barrier;
  for (unsigned b : *w.order) {
    blockIdx = dim3(b % w.grid.x, (b / w.grid.x) % w.grid.y,
                    b / (w.grid.x * w.grid.y));
    t_smem = w.smem + static_cast<size_t>(b) * w.smem_bytes;
    (*w.body)();
    w.barrier->arrive_and_wait();  // the block is done before the next starts
  }
  return nullptr;
}

inline void launch(dim3 grid, dim3 block, size_t smem,
                   const std::function<void()>& body) {
  if (block.y != 1 || block.z != 1) throw std::runtime_error("emu: 1-D blocks only");
  if (block.x < 1 || static_cast<int>(block.x) > g_max_threads)
    throw std::runtime_error("emu: bad block size " + std::to_string(block.x));
  const int64_t allowed = std::max(g_smem_default, g_smem_opted_in);
  g_smem_opted_in = 0;
  if (static_cast<int64_t>(smem) > allowed)
    throw std::runtime_error("emu: " + std::to_string(smem) +
                             " bytes of shared memory exceed the " +
                             std::to_string(allowed) + " allowed");
  const unsigned nblocks = grid.x * grid.y * grid.z;
  if (nblocks == 0) return;
  ++g_launches;
  std::vector<unsigned> order(nblocks);
  std::iota(order.begin(), order.end(), 0u);
  if (g_block_order_seed != 0) {
    std::mt19937 rng(g_block_order_seed + static_cast<unsigned>(g_launches));
    std::shuffle(order.begin(), order.end(), rng);
  }
  const size_t smem_bytes = (smem + 15) / 16 * 16;
  std::vector<unsigned char> mem(smem_bytes * nblocks + 16, 0xFF);
  std::barrier<> barrier(block.x);
  std::vector<Worker> workers(block.x);
  std::vector<pthread_t> threads(block.x);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 512 * 1024);
  for (unsigned t = 0; t < block.x; ++t) {
    workers[t] = Worker{&body, &barrier, mem.data(), smem_bytes, &order,
                        grid, block, t};
    if (pthread_create(&threads[t], &attr, worker_main, &workers[t]) != 0) {
      std::fprintf(stderr, "emu: pthread_create failed at thread %u\n", t);
      std::abort();
    }
  }
  for (unsigned t = 0; t < block.x; ++t) pthread_join(threads[t], nullptr);
  pthread_attr_destroy(&attr);
}

}  // namespace emu

inline void __syncthreads() { emu::t_barrier->arrive_and_wait(); }

#define IRNN_LAUNCH(kernel, blocks, threads, smem, stream, params) \
  do {                                                             \
    (void)(stream);                                                \
    const auto irnn_params_ = (params);                            \
    emu::launch(dim3(blocks), dim3(threads), (smem),               \
                [&irnn_params_] { kernel(irnn_params_); });        \
  } while (0)

// The opt-in holds for the next launch (each launcher opts in right
// before the launch that needs it).
#define IRNN_SET_MAX_SMEM(kernel, bytes)                                   \
  do {                                                                     \
    if (static_cast<int64_t>(bytes) > emu::g_smem_limit)                   \
      throw std::runtime_error("emu: shared memory opt-in above the limit"); \
    emu::g_smem_opted_in = static_cast<int64_t>(bytes);                    \
  } while (0)

namespace irnn_cuda {

// IEEE half and bfloat16 as 16-bit patterns, converted with round to
// nearest even like __float2half_rn and __float2bfloat16_rn.
struct irnn_half {
  uint16_t bits;
};
struct irnn_bf16 {
  uint16_t bits;
};

using irnn_error = int;
using irnn_stream = void*;
constexpr irnn_error kIrnnSuccess = 0;
constexpr irnn_error kIrnnInvalidConfig = 9;  // cudaErrorInvalidConfiguration

template <typename T>
inline T* irnn_dyn_smem() {
  return reinterpret_cast<T*>(emu::t_smem);
}

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(irnn_half v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, 2);
  return static_cast<float>(h);
}
inline float to_acc(irnn_bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename S>
inline S from_acc(float v);
template <>
inline float from_acc<float>(float v) { return v; }
template <>
inline irnn_half from_acc<irnn_half>(float v) {
  const _Float16 h = static_cast<_Float16>(v);
  irnn_half r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}
template <>
inline irnn_bf16 from_acc<irnn_bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  irnn_bf16 r;
  if (std::isnan(v))
    r.bits = static_cast<uint16_t>((u >> 16) | 0x40);
  else
    r.bits = static_cast<uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
  return r;
}
template <typename S>
inline S from_acc(double v);
template <>
inline double from_acc<double>(double v) { return v; }

inline float irnn_tanh(float v) { return std::tanh(v); }
inline double irnn_tanh(double v) { return std::tanh(v); }

}  // namespace irnn_cuda
