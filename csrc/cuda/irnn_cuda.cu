// CUDA launchers of the irnn_cuda kernels: dtype dispatch onto the shared
// orchestration in irnn_launch.cuh, and the device property query the
// launch configuration is computed from. No torch headers (fast builds);
// the torch binding is irnn_ops_cuda.cpp.
#include <mutex>

#include "irnn_platform.cuh"

#include "irnn_launch.cuh"

namespace irnn_cuda {

// The register-resident forwards are compiled in their own translation
// units (irnn_fwd_reg_<type>_hp<HP>.cu).
#define IRNN_REG_FWD_EXTERN(dt, type, HP, R)                         \
  extern template irnn_error launch_fwd_reg<type, HP, R>(            \
      const RegFwdParams<type>&, bool, const LaunchConfig&, irnn_stream);
IRNN_REG_FWD_VARIANTS(IRNN_REG_FWD_EXTERN)
#undef IRNN_REG_FWD_EXTERN
// So are the register-resident backwards (irnn_bwd_reg_<type>_hp<HP>.cu).
#define IRNN_REG_BWD_EXTERN(dt, type, HP, R)                         \
  extern template irnn_error launch_bwd_reg<type, HP, R>(            \
      const RegBwdParams<type>&, bool, bool, const LaunchConfig&,    \
      irnn_stream);
IRNN_REG_BWD_VARIANTS(IRNN_REG_BWD_EXTERN)
#undef IRNN_REG_BWD_EXTERN

// So are the cluster forwards (irnn_fwd_cluster_<type>_hp<HP>.cu).
#define IRNN_CLUSTER_FWD_EXTERN(dt, type, HP, R)                     \
  extern template irnn_error launch_fwd_cluster<type, HP, R>(        \
      const RegFwdParams<type>&, bool, const LaunchConfig&, irnn_stream);
IRNN_CLUSTER_FWD_VARIANTS(IRNN_CLUSTER_FWD_EXTERN)
#undef IRNN_CLUSTER_FWD_EXTERN
extern template irnn_error fwd_cluster_occupancy<float, 256>(int*);
extern template irnn_error fwd_cluster_occupancy<float, 512>(int*);
// And the cluster backwards (irnn_bwd_cluster_<type>_hp<HP>.cu).
#define IRNN_CLUSTER_BWD_EXTERN(dt, type, HP, R)                     \
  extern template irnn_error launch_bwd_cluster<type, HP, R>(        \
      const ClusterBwdParams<type>&, bool, const LaunchConfig&, irnn_stream);
IRNN_CLUSTER_BWD_VARIANTS(IRNN_CLUSTER_BWD_EXTERN)
#undef IRNN_CLUSTER_BWD_EXTERN

int irnn_forward_cuda_launch(const FwdArgs& a, const LaunchConfig& c,
                             void* workspace, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::kFloat: return run_forward<float>(a, c, workspace, s);
    case DType::kDouble: return run_forward<double>(a, c, workspace, s);
    case DType::kHalf: return run_forward<__half>(a, c, workspace, s);
    case DType::kBFloat16: return run_forward<__nv_bfloat16>(a, c, workspace, s);
  }
  return cudaErrorInvalidValue;
}

int irnn_backward_cuda_launch(const BwdArgs& a, const LaunchConfig& c,
                              void* workspace, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (a.dtype) {
    case DType::kFloat: return run_backward<float>(a, c, workspace, s);
    case DType::kDouble: return run_backward<double>(a, c, workspace, s);
    case DType::kHalf: return run_backward<__half>(a, c, workspace, s);
    case DType::kBFloat16: return run_backward<__nv_bfloat16>(a, c, workspace, s);
  }
  return cudaErrorInvalidValue;
}

int irnn_cuda_device_props(int device, DeviceProps* props,
                           const char** failed_attribute) {
  // Queried once per device: attributes do not change, and the query is not
  // a stream operation (safe during CUDA graph capture). A failed query is
  // reported, not cached: zeros would silently pick the large-H path.
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static DeviceProps cache[kMaxDevices];
  static bool known[kMaxDevices];
  const std::lock_guard<std::mutex> lock(mutex);
  if (device >= 0 && device < kMaxDevices && known[device]) {
    *props = cache[device];
    return cudaSuccess;
  }
  struct Query {
    cudaDeviceAttr attr;
    const char* name;
    int value;
  } queries[] = {
      {cudaDevAttrMultiProcessorCount, "cudaDevAttrMultiProcessorCount", 0},
      {cudaDevAttrMaxThreadsPerBlock, "cudaDevAttrMaxThreadsPerBlock", 0},
      {cudaDevAttrMaxSharedMemoryPerBlock, "cudaDevAttrMaxSharedMemoryPerBlock", 0},
      {cudaDevAttrMaxSharedMemoryPerBlockOptin,
       "cudaDevAttrMaxSharedMemoryPerBlockOptin", 0},
      {cudaDevAttrClusterLaunch, "cudaDevAttrClusterLaunch", 0},
  };
  for (Query& q : queries) {
    const cudaError_t err = cudaDeviceGetAttribute(&q.value, q.attr, device);
    if (err != cudaSuccess) {
      *failed_attribute = q.name;
      return err;
    }
  }
  DeviceProps p{};
  p.sm_count = queries[0].value;
  p.max_threads_per_block = queries[1].value;
  p.smem_per_block = queries[2].value;
  p.smem_per_block_optin = queries[3].value;
  p.cluster_launch = queries[4].value;
  if (p.cluster_launch) {
    // Clusters per wave, on the device asked about (the ops call this
    // with it current). A failed query leaves 0, so the routing takes
    // sm_count / blocks (a matter of speed only), and its error is cleared
    // so that no later launch check reports it.
    int current = -1;
    bool failed = cudaGetDevice(&current) != cudaSuccess ||
                  (current != device && cudaSetDevice(device) != cudaSuccess);
    if (!failed) {
      // A query that succeeds with 0 clusters: none fits (-1).
      int n = 0;
      if (fwd_cluster_occupancy<float, 256>(&n) == cudaSuccess)
        p.clusters_of_4 = n > 0 ? n : -1;
      else
        failed = true;
      n = 0;
      if (fwd_cluster_occupancy<float, 512>(&n) == cudaSuccess)
        p.clusters_of_8 = n > 0 ? n : -1;
      else
        failed = true;
      if (current != device && cudaSetDevice(current) != cudaSuccess)
        failed = true;
    }
    if (failed) (void)cudaGetLastError();
  }
  if (device >= 0 && device < kMaxDevices) {
    cache[device] = p;
    known[device] = true;
  }
  *props = p;
  return cudaSuccess;
}

const char* irnn_cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

}  // namespace irnn_cuda
