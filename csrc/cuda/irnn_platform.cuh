// The CUDA side of the small platform layer the kernels are written
// against. tests/emu/emu_platform.h defines the same names for the CPU
// emulation, so irnn_kernels.cuh and irnn_launch.cuh compile unchanged with
// nvcc and with g++. Nothing here is a kernel body.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <mutex>

#define IRNN_DEVICE __device__ __forceinline__
#define IRNN_GLOBAL __global__
#define IRNN_LAUNCH_BOUNDS(threads) __launch_bounds__(threads, 1)

namespace irnn_cuda {

using irnn_half = __half;
using irnn_bf16 = __nv_bfloat16;
using irnn_error = cudaError_t;
using irnn_stream = cudaStream_t;
constexpr irnn_error kIrnnSuccess = cudaSuccess;
// A launch configuration no kernel of the build implements.
constexpr irnn_error kIrnnInvalidConfig = cudaErrorInvalidConfiguration;

// The block's dynamic shared memory, as T elements.
template <typename T>
IRNN_DEVICE T* irnn_dyn_smem() {
  extern __shared__ __align__(16) unsigned char irnn_smem_bytes[];
  return reinterpret_cast<T*>(irnn_smem_bytes);
}

// Bytes [p, p + n) lie in the block's dynamic shared memory: checked by the
// emulation (tests/emu/emu_platform.h), nothing on a GPU.
IRNN_DEVICE void irnn_check_smem(const void*, int) {}

// v, as a value the compiler cannot trace to its source. Code after a step
// loop that computes with it (addresses of the last stores) stays after the
// loop, instead of being computed before it and held in registers through
// every step.
IRNN_DEVICE int irnn_opaque(int v) {
  asm volatile("" : "+r"(v));
  return v;
}
// The same for a 64-bit value: inside a step loop, what is computed from
// it is computed again every step, not once before the loop and held in
// registers through every step.
IRNN_DEVICE int64_t irnn_opaque(int64_t v) {
  asm volatile("" : "+l"(v));
  return v;
}

IRNN_DEVICE float to_acc(float v) { return v; }
IRNN_DEVICE double to_acc(double v) { return v; }
IRNN_DEVICE float to_acc(__half v) { return __half2float(v); }
IRNN_DEVICE float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename S>
IRNN_DEVICE S from_acc(float v);
template <>
IRNN_DEVICE float from_acc<float>(float v) { return v; }
template <>
IRNN_DEVICE __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
IRNN_DEVICE __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename S>
IRNN_DEVICE S from_acc(double v);
template <>
IRNN_DEVICE double from_acc<double>(double v) { return v; }

// The value of the 16-bit element S in the low (high = false) or the high
// half of a 4-byte word, as float.
template <typename S>
IRNN_DEVICE float word_to_acc(unsigned word, bool high);
template <>
IRNN_DEVICE float word_to_acc<__half>(unsigned word, bool high) {
  return __half2float(
      __ushort_as_half(static_cast<unsigned short>(high ? word >> 16 : word)));
}
template <>
IRNN_DEVICE float word_to_acc<__nv_bfloat16>(unsigned word, bool high) {
  return __uint_as_float(high ? word & 0xffff0000u : word << 16);
}

// A 4-byte asynchronous copy that, where `copy` is false, reads nothing and
// writes 0 (cp.async's src-size of 0): one instruction for a place that is
// copied into or zeroed. Grouped and waited for as irnn_cp_async.
IRNN_DEVICE void irnn_cp_async_or_zero(void* smem_dst, const void* global_src,
                                       bool copy) {
#if __CUDA_ARCH__ >= 800
  const unsigned dst =
      static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst),
               "l"(global_src), "r"(copy ? 4 : 0)
               : "memory");
#else
  *static_cast<unsigned*>(smem_dst) =
      copy ? *static_cast<const unsigned*>(global_src) : 0u;
#endif
}

// Asynchronous copies (cp.async, sm_80 and later): Bytes (4, 8 or 16) from
// global to shared memory, grouped by irnn_cp_async_commit; after
// irnn_cp_async_wait<N> at most N of this thread's groups are pending (other
// threads see the bytes after a barrier). Before sm_80 the copy is a plain
// load and store, complete when it returns.
template <int Bytes>
IRNN_DEVICE void irnn_cp_async(void* smem_dst, const void* global_src) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16,
                "cp.async copies 4, 8 or 16 bytes");
#if __CUDA_ARCH__ >= 800
  const unsigned dst =
      static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst),
               "l"(global_src), "n"(Bytes)
               : "memory");
#else
  if constexpr (Bytes == 4)
    *static_cast<unsigned*>(smem_dst) = *static_cast<const unsigned*>(global_src);
  else if constexpr (Bytes == 8)
    *static_cast<uint2*>(smem_dst) = *static_cast<const uint2*>(global_src);
  else
    *static_cast<uint4*>(smem_dst) = *static_cast<const uint4*>(global_src);
#endif
}

IRNN_DEVICE void irnn_cp_async_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
IRNN_DEVICE void irnn_cp_async_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// The body of a kernel that runs only as a thread-block cluster: compiled
// where the architecture has clusters (and in host passes); elsewhere the
// kernel traps, and its body is not compiled at all (build time).
// make_launch_config never selects such a kernel there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
#define IRNN_CLUSTER_BODY(...) __VA_ARGS__
#else
#define IRNN_CLUSTER_BODY(...) __trap()
#endif

// Thread-block clusters (sm_90 and later). The blocks of a cluster run
// together; each reads and writes its peers' shared memory through
// irnn_map_shared_rank, and irnn_cluster_arrive / irnn_cluster_wait are the
// two halves of the cluster barrier (every thread of every block arrives;
// the arrive releases this thread's earlier writes, shared memory of peers
// included, and the wait acquires the others'). Where the architecture has
// no clusters they trap: make_launch_config selects no cluster kernel
// there (DeviceProps::cluster_launch).
IRNN_DEVICE unsigned irnn_cluster_rank() {
#if __CUDA_ARCH__ >= 900
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
#else
  __trap();
  return 0;
#endif
}

// The address of the same shared memory location in the block of rank
// `rank` of this cluster, as a generic pointer.
template <typename T>
IRNN_DEVICE T* irnn_map_shared_rank(T* ptr, unsigned rank) {
#if __CUDA_ARCH__ >= 900
  unsigned long long out;
  asm volatile("mapa.u64 %0, %1, %2;\n"
               : "=l"(out)
               : "l"(reinterpret_cast<unsigned long long>(ptr)), "r"(rank));
  return reinterpret_cast<T*>(out);
#else
  __trap();
  return ptr;
#endif
}

IRNN_DEVICE void irnn_cluster_arrive() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

IRNN_DEVICE void irnn_cluster_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#else
  __trap();
#endif
}

IRNN_DEVICE float irnn_tanh(float v) { return tanhf(v); }
IRNN_DEVICE double irnn_tanh(double v) { return tanh(v); }

}  // namespace irnn_cuda

// Launch a kernel on a stream; return the launch error from the enclosing
// launcher.
#define IRNN_LAUNCH(kernel, blocks, threads, smem, stream, params)      \
  do {                                                                  \
    kernel<<<(blocks), (threads), (smem), (stream)>>>(params);          \
    const cudaError_t irnn_err_ = cudaGetLastError();                   \
    if (irnn_err_ != cudaSuccess) return irnn_err_;                     \
  } while (0)

namespace irnn_cuda {

// Raises `kernel`'s limit of dynamic shared memory on the current device to
// `bytes`, never lowers it. The limit is the kernel's, not a launch's: set
// to each call's size, a call that needs less (another layer's H, say)
// would lower it under a larger launch of the same kernel from another
// host thread. The lock makes reading and raising one step.
inline cudaError_t irnn_raise_max_smem(const void* kernel, int bytes) {
  static std::mutex lock;
  const std::lock_guard<std::mutex> hold(lock);
  cudaFuncAttributes attr{};
  const cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
  if (err != cudaSuccess || attr.maxDynamicSharedSizeBytes >= bytes) return err;
  return cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

}  // namespace irnn_cuda

// Opt in to more than the default 48 KB of dynamic shared memory.
#define IRNN_SET_MAX_SMEM(kernel, bytes)                                   \
  do {                                                                     \
    const cudaError_t irnn_err_ = irnn_cuda::irnn_raise_max_smem(          \
        reinterpret_cast<const void*>(kernel), static_cast<int>(bytes));   \
    if (irnn_err_ != cudaSuccess) return irnn_err_;                        \
  } while (0)

namespace irnn_cuda {

// The launch configuration of `blocks` blocks (a multiple of `cluster`) in
// clusters of `cluster` consecutive blocks. cfg.attrs points into the
// object, so it is not copied.
struct IrnnClusterConfig {
  cudaLaunchConfig_t cfg;
  cudaLaunchAttribute attr[1];
  IrnnClusterConfig(unsigned blocks, unsigned cluster, unsigned threads,
                    size_t smem, cudaStream_t stream)
      : cfg{}, attr{} {
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(threads);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  IrnnClusterConfig(const IrnnClusterConfig&) = delete;
  IrnnClusterConfig& operator=(const IrnnClusterConfig&) = delete;
};

}  // namespace irnn_cuda

// Launch a kernel as clusters of `cluster` consecutive blocks (blocks a
// multiple of it) on a stream; return the launch error from the enclosing
// launcher.
#define IRNN_LAUNCH_CLUSTER(kernel, blocks, cluster, threads, smem, stream,   \
                            params)                                           \
  do {                                                                        \
    const irnn_cuda::IrnnClusterConfig irnn_c_((blocks), (cluster),           \
                                               (threads), (smem), (stream));  \
    cudaError_t irnn_err_ = cudaLaunchKernelEx(&irnn_c_.cfg, kernel, params); \
    if (irnn_err_ == cudaSuccess) irnn_err_ = cudaGetLastError();             \
    if (irnn_err_ != cudaSuccess) return irnn_err_;                           \
  } while (0)

// Into *version: the virtual architecture `kernel` was compiled for, as
// 10 * major + minor (cudaFuncAttributes::ptxVersion; 90 for sm_90 code,
// 80 for sm_80 PTX that the driver compiled for a newer GPU); return its
// error from the enclosing function.
#define IRNN_KERNEL_PTX_VERSION(kernel, version)                           \
  do {                                                                     \
    cudaFuncAttributes irnn_attr_{};                                       \
    const cudaError_t irnn_err_ = cudaFuncGetAttributes(&irnn_attr_, kernel); \
    if (irnn_err_ != cudaSuccess) return irnn_err_;                        \
    *(version) = irnn_attr_.ptxVersion;                                    \
  } while (0)

// Into *clusters: how many clusters of `cluster` blocks of `kernel` the
// current device runs at once with `threads` and `smem` bytes per block
// (cudaOccupancyMaxActiveClusters); return its error from the enclosing
// function.
#define IRNN_MAX_ACTIVE_CLUSTERS(kernel, cluster, threads, smem, clusters)  \
  do {                                                                      \
    const irnn_cuda::IrnnClusterConfig irnn_c_((cluster), (cluster),        \
                                               (threads), (smem), nullptr); \
    const cudaError_t irnn_err_ =                                           \
        cudaOccupancyMaxActiveClusters(clusters, kernel, &irnn_c_.cfg);     \
    if (irnn_err_ != cudaSuccess) return irnn_err_;                         \
  } while (0)
