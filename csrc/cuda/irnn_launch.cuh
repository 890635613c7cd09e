// Host orchestration of the kernels for one forward or backward call: which
// kernels run in which order with which parameters, given the launch
// configuration (make_launch_config) and a workspace the caller allocated.
// Shared by the CUDA launchers (irnn_cuda.cu) and the CPU emulation, which
// define IRNN_LAUNCH and IRNN_SET_MAX_SMEM; nothing here synchronises.
#pragma once

#include <cstdint>
#include <type_traits>

#include "irnn_kernels.cuh"

namespace irnn_cuda {

// A reduction index that is never split (k / kdiv == 0, k % kdiv == k).
constexpr int64_t kNoSplit = int64_t(1) << 62;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of 256 threads for a grid-stride loop over n elements.
inline unsigned elementwise_blocks(int64_t n) {
  const int64_t blocks = ceil_div(n, 256);
  return static_cast<unsigned>(blocks < 4096 ? blocks : 4096);
}

// One GEMM with TM x TN tiles of RM x RN outputs per thread.
template <typename S, int TM, int TN, int RM, int RN>
irnn_error launch_gemm(const GemmParams<S>& p, irnn_stream stream) {
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, TM)),
                  static_cast<unsigned>(ceil_div(p.N, TN)));
  const int64_t smem = gemm_smem_bytes(sizeof(typename AccOf<S>::type), TM, TN);
  IRNN_LAUNCH((irnn_gemm_kernel<S, TM, TN, RM, RN>), grid, (TM / RM) * (TN / RN),
              static_cast<size_t>(smem), stream, p);
  return kIrnnSuccess;
}

// One GEMM with large tiles, or with small ones when large tiles would give
// fewer blocks than `sms` (the device's SM count): the per-step GEMMs of
// small batches are latency-bound, so spreading them over the SMs matters
// more than the large tiles' reuse. No result depends on the tile shape
// (each output is summed in k order by one thread either way).
template <typename S>
irnn_error run_gemm(const GemmParams<S>& p, int64_t sms, irnn_stream stream) {
  if (p.M == 0 || p.N == 0) return kIrnnSuccess;
  if (ceil_div(p.M, kGemmLargeM) * ceil_div(p.N, kGemmLargeN) >= sms)
    return launch_gemm<S, kGemmLargeM, kGemmLargeN, kGemmLargePerThread,
                       kGemmLargePerThread>(p, stream);
  return launch_gemm<S, kGemmSmallM, kGemmSmallN, 1, 1>(p, stream);
}

template <typename S>
GemmOperand<S> operand(const S* ptr, int64_t s_i, int64_t s_k) {
  return GemmOperand<S>{ptr, s_i, 0, s_k, kNoSplit};
}

// One register-resident forward. Instantiated for the variants of
// IRNN_REG_FWD_VARIANTS only, each in its own translation unit on CUDA
// (irnn_fwd_reg_<type>_hp<HP>.cu; irnn_cuda.cu declares them extern): relu
// and tanh, the input projected (w_ih given) or not (fwd_ring_covers).
template <typename S, int HP, int R, bool RELU, bool PROJECT>
irnn_error launch_fwd_reg_kernel(const RegFwdParams<S>& p,
                                 const LaunchConfig& c, irnn_stream stream) {
  if (c.smem_optin)
    IRNN_SET_MAX_SMEM((irnn_fwd_reg_kernel<S, HP, R, RELU, PROJECT>), c.smem);
  IRNN_LAUNCH((irnn_fwd_reg_kernel<S, HP, R, RELU, PROJECT>), c.blocks,
              c.threads, static_cast<size_t>(c.smem), stream, p);
  return kIrnnSuccess;
}

template <typename S, int HP, int R>
irnn_error launch_fwd_reg(const RegFwdParams<S>& p, bool relu,
                          const LaunchConfig& c, irnn_stream stream) {
  if (p.w_ih)
    return relu ? launch_fwd_reg_kernel<S, HP, R, true, true>(p, c, stream)
                : launch_fwd_reg_kernel<S, HP, R, false, true>(p, c, stream);
  if constexpr (std::is_same_v<S, double>) {
    return kIrnnInvalidConfig;  // no ring of doubles (fwd_ring_covers)
  } else {
    return relu ? launch_fwd_reg_kernel<S, HP, R, true, false>(p, c, stream)
                : launch_fwd_reg_kernel<S, HP, R, false, false>(p, c, stream);
  }
}

// The variant of the table that make_launch_config selected (HP the
// smallest listed size >= H, R the rows per block).
template <typename S>
RegFwdParams<S> reg_fwd_params(const FwdArgs& a, const LaunchConfig& c) {
  RegFwdParams<S> p{};
  p.x = static_cast<const S*>(a.x); p.x_st = a.x_st; p.x_sb = a.x_sb;
  p.h0 = static_cast<const S*>(a.h0);
  // Null when not projected: the launchers pick the kernel by it.
  p.w_ih = a.project ? static_cast<const S*>(a.w_ih) : nullptr;
  p.w_hh = static_cast<const S*>(a.w_hh);
  p.b_ih = static_cast<const S*>(a.b_ih);
  p.b_hh = static_cast<const S*>(a.b_hh);
  p.out = static_cast<S*>(a.out); p.out_st = a.out_st; p.out_sb = a.out_sb;
  p.h_n = static_cast<S*>(a.h_n);
  p.lengths = a.lengths;
  p.T = static_cast<int>(a.T); p.B = static_cast<int>(a.B);
  p.I = static_cast<int>(a.I); p.H = static_cast<int>(a.H);
  p.reverse = a.reverse;
  p.chunk = static_cast<int>(reg_fwd_chunk(a.T, c.rows_per_block, a.project,
                                           acc_bytes(a.dtype)));
  return p;
}

template <typename S>
irnn_error run_forward_reg(const FwdArgs& a, const LaunchConfig& c,
                           irnn_stream stream) {
  const RegFwdParams<S> p = reg_fwd_params<S>(a, c);
  // The HP pick_reg_variant chose for these rows (select_reg_fwd).
  const int hp = reg_table_hp([](auto&& f) { reg_fwd_table(f); }, a.dtype,
                              a.H, c.rows_per_block);
#define IRNN_REG_FWD_RUN(dt, type, HP, R)                                   \
  if constexpr (std::is_same_v<S, type>) {                                  \
    if (hp == HP && c.rows_per_block == R)                                  \
      return launch_fwd_reg<type, HP, R>(p, a.relu, c, stream);                     \
  }
  IRNN_REG_FWD_VARIANTS(IRNN_REG_FWD_RUN)
#undef IRNN_REG_FWD_RUN
  return kIrnnInvalidConfig;
}

// One cluster forward. Instantiated for the variants of
// IRNN_CLUSTER_FWD_VARIANTS only, each (type, HP) in its own translation
// unit on CUDA (irnn_fwd_cluster_<type>_hp<HP>.cu; irnn_cuda.cu declares
// them extern): relu and tanh, the input projected or not.
template <typename S, int HP, int R, bool RELU, bool PROJECT>
irnn_error launch_fwd_cluster_kernel(const RegFwdParams<S>& p,
                                     const LaunchConfig& c,
                                     irnn_stream stream) {
  if (c.smem_optin)
    IRNN_SET_MAX_SMEM((irnn_fwd_cluster_kernel<S, HP, R, RELU, PROJECT>),
                      c.smem);
  IRNN_LAUNCH_CLUSTER((irnn_fwd_cluster_kernel<S, HP, R, RELU, PROJECT>),
                      c.blocks, c.cluster, c.threads,
                      static_cast<size_t>(c.smem), stream, p);
  return kIrnnSuccess;
}

template <typename S, int HP, int R>
irnn_error launch_fwd_cluster(const RegFwdParams<S>& p, bool relu,
                              const LaunchConfig& c, irnn_stream stream) {
  if (c.cluster != cluster_blocks(HP) || c.blocks % c.cluster != 0)
    return kIrnnInvalidConfig;
  if (p.w_ih)
    return relu
               ? launch_fwd_cluster_kernel<S, HP, R, true, true>(p, c, stream)
               : launch_fwd_cluster_kernel<S, HP, R, false, true>(p, c, stream);
  return relu
             ? launch_fwd_cluster_kernel<S, HP, R, true, false>(p, c, stream)
             : launch_fwd_cluster_kernel<S, HP, R, false, false>(p, c, stream);
}

// Into *clusters: the clusters of HP's cluster forward (one row, relu, the
// shared memory of T = 784) that the current device runs at once. Every
// cluster kernel of HP, of any type, has the same blocks per cluster and
// threads, and holds an SM alone (256 threads of more than 128 registers:
// 134-255 in the sm_90 build), so this counts their wave
// (DeviceProps::clusters_of_4, _8). 0 where the build has no sm_90 code for
// the kernel (a build for older architectures running on a newer GPU, whose
// driver compiled their PTX: the platform layer's cluster operations trap
// there), so that the routing never selects it. Instantiated for float
// only (irnn_fwd_cluster_float_hp<HP>.cu): its count serves every type.
template <typename S, int HP>
irnn_error fwd_cluster_occupancy(int* clusters) {
  int version = 0;
  IRNN_KERNEL_PTX_VERSION((irnn_fwd_cluster_kernel<S, HP, 1, true, true>), &version);
  if (version < 90) {
    *clusters = 0;
    return kIrnnSuccess;
  }
  const int64_t smem = cluster_fwd_smem_bytes(784, HP, 1);
  if (smem > 48 * 1024)
    IRNN_SET_MAX_SMEM((irnn_fwd_cluster_kernel<S, HP, 1, true, true>), smem);
  IRNN_MAX_ACTIVE_CLUSTERS((irnn_fwd_cluster_kernel<S, HP, 1, true, true>),
                           cluster_blocks(HP), kClusterThreads,
                           static_cast<size_t>(smem), clusters);
  return kIrnnSuccess;
}

// The variant of the cluster table that make_launch_config selected (HP
// from the blocks per cluster, R the rows per cluster).
template <typename S>
irnn_error run_forward_cluster(const FwdArgs& a, const LaunchConfig& c,
                               irnn_stream stream) {
  const RegFwdParams<S> p = reg_fwd_params<S>(a, c);
#define IRNN_CLUSTER_FWD_RUN(dt, type, HP, R)                                \
  if constexpr (std::is_same_v<S, type>) {                                   \
    if (c.cluster == cluster_blocks(HP) && c.rows_per_block == R)            \
      return launch_fwd_cluster<type, HP, R>(p, a.relu, c, stream);          \
  }
  IRNN_CLUSTER_FWD_VARIANTS(IRNN_CLUSTER_FWD_RUN)
#undef IRNN_CLUSTER_FWD_RUN
  return kIrnnInvalidConfig;
}

// One cluster backward (the recurrence; the GEMMs follow). Instantiated
// for the variants of IRNN_CLUSTER_BWD_VARIANTS only, each (type, HP) in its
// own translation unit on CUDA (irnn_bwd_cluster_<type>_hp<HP>.cu).
template <typename S, int HP, int R>
irnn_error launch_bwd_cluster(const ClusterBwdParams<S>& p, bool relu,
                              const LaunchConfig& c, irnn_stream stream) {
  if (c.cluster != cluster_blocks(HP) || c.rows_per_block != R)
    return kIrnnInvalidConfig;
  const int blocks = (p.B + R - 1) / R * c.cluster;
  if (relu) {
    if (c.smem_optin)
      IRNN_SET_MAX_SMEM((irnn_bwd_cluster_kernel<S, HP, R, true>), c.smem);
    IRNN_LAUNCH_CLUSTER((irnn_bwd_cluster_kernel<S, HP, R, true>), blocks,
                        c.cluster, c.threads, static_cast<size_t>(c.smem),
                        stream, p);
  } else {
    if (c.smem_optin)
      IRNN_SET_MAX_SMEM((irnn_bwd_cluster_kernel<S, HP, R, false>), c.smem);
    IRNN_LAUNCH_CLUSTER((irnn_bwd_cluster_kernel<S, HP, R, false>), blocks,
                        c.cluster, c.threads, static_cast<size_t>(c.smem),
                        stream, p);
  }
  return kIrnnSuccess;
}

// The variant of the cluster backward's table make_launch_config selected.
template <typename S>
irnn_error run_backward_cluster(const BwdArgs& a, const LaunchConfig& c,
                                float* da, irnn_stream stream) {
  ClusterBwdParams<S> p{};
  p.g_out = static_cast<const S*>(a.g_out); p.g_st = a.g_st; p.g_sb = a.g_sb;
  p.g_hn = static_cast<const S*>(a.g_hn);
  p.out = static_cast<const S*>(a.out); p.o_st = a.o_st; p.o_sb = a.o_sb;
  p.w_hh = static_cast<const S*>(a.w_hh);
  p.da = da;
  p.dx = a.project ? nullptr : static_cast<S*>(a.dx);
  p.lengths = a.lengths;
  p.T = static_cast<int>(a.T); p.B = static_cast<int>(a.B);
  p.H = static_cast<int>(a.H);
  p.reverse = a.reverse;
#define IRNN_CLUSTER_BWD_RUN(dt, type, HP, R)                                \
  if constexpr (std::is_same_v<S, type>) {                                   \
    if (c.cluster == cluster_blocks(HP) && c.rows_per_block == R)            \
      return launch_bwd_cluster<type, HP, R>(p, a.relu, c, stream);          \
  }
  IRNN_CLUSTER_BWD_VARIANTS(IRNN_CLUSTER_BWD_RUN)
#undef IRNN_CLUSTER_BWD_RUN
  return kIrnnInvalidConfig;
}

// One register-resident backward. Instantiated for the variants of
// IRNN_REG_BWD_VARIANTS only, each in its own translation unit on CUDA
// (irnn_bwd_reg_<type>_hp<HP>.cu; irnn_cuda.cu declares them extern).
template <typename S, int HP, int R>
irnn_error launch_bwd_reg(const RegBwdParams<S>& p, bool relu, bool project,
                          const LaunchConfig& c, irnn_stream stream) {
#define IRNN_BWD_REG_LAUNCH(RELU, PROJECT)                                    \
  do {                                                                        \
    if (c.smem_optin)                                                         \
      IRNN_SET_MAX_SMEM((irnn_bwd_reg_kernel<S, HP, R, RELU, PROJECT>),       \
                        c.smem);                                              \
    IRNN_LAUNCH((irnn_bwd_reg_kernel<S, HP, R, RELU, PROJECT>), c.blocks,     \
                c.threads, static_cast<size_t>(c.smem), stream, p);           \
  } while (0)
  if constexpr (!reg_bwd_unprojected_rows(sizeof(S) == 2, R)) {
    // Built (and selected, select_reg_bwd) with the input projected only.
    if (!project) return kIrnnInvalidConfig;
    if (relu)
      IRNN_BWD_REG_LAUNCH(true, true);
    else
      IRNN_BWD_REG_LAUNCH(false, true);
  } else {
    if (relu && project)
      IRNN_BWD_REG_LAUNCH(true, true);
    else if (relu)
      IRNN_BWD_REG_LAUNCH(true, false);
    else if (project)
      IRNN_BWD_REG_LAUNCH(false, true);
    else
      IRNN_BWD_REG_LAUNCH(false, false);
  }
#undef IRNN_BWD_REG_LAUNCH
  return kIrnnSuccess;
}

// The backward variant of the table that make_launch_config selected (R
// the rows per block, HP the smallest size listed with R that is >= H).
template <typename S>
irnn_error run_backward_reg(const BwdArgs& a, const LaunchConfig& c,
                            void* ws, irnn_stream stream) {
  RegBwdParams<S> p{};
  p.g_out = static_cast<const S*>(a.g_out); p.g_st = a.g_st; p.g_sb = a.g_sb;
  p.g_hn = static_cast<const S*>(a.g_hn);
  p.x = static_cast<const S*>(a.x); p.x_st = a.x_st; p.x_sb = a.x_sb;
  p.h0 = static_cast<const S*>(a.h0);
  p.w_ih = a.project ? static_cast<const S*>(a.w_ih) : nullptr;
  p.w_hh = static_cast<const S*>(a.w_hh);
  p.out = static_cast<const S*>(a.out); p.o_st = a.o_st; p.o_sb = a.o_sb;
  p.dx = static_cast<S*>(a.dx);
  p.dh0 = static_cast<S*>(a.dh0);
  p.partials = static_cast<typename AccOf<S>::type*>(ws);
  p.lengths = a.lengths;
  p.T = static_cast<int>(a.T); p.B = static_cast<int>(a.B);
  p.I = static_cast<int>(a.I); p.H = static_cast<int>(a.H);
  p.reverse = a.reverse;
  // The HP pick_reg_variant chose for these rows (select_reg_bwd).
  const int hp = reg_table_hp([](auto&& f) { reg_bwd_table(f); }, a.dtype,
                              a.H, c.rows_per_block);
#define IRNN_REG_BWD_RUN(dt, type, HP, R)                                   \
  if constexpr (std::is_same_v<S, type>) {                                  \
    if (hp == HP && c.rows_per_block == R)                                  \
      return launch_bwd_reg<type, HP, R>(p, a.relu, a.project, c, stream);  \
  }
  IRNN_REG_BWD_VARIANTS(IRNN_REG_BWD_RUN)
#undef IRNN_REG_BWD_RUN
  return kIrnnInvalidConfig;
}

// Where the per-step path hands its recurrent GEMM to a.step_gemm: float32,
// the sequence stored, and x and out walked as [T*B, *] row blocks
// (t-stride = B rows; a batch_first x is not). With lengths, the forward
// direction on the padded layout only (run_forward relayouts the others).
inline bool step_gemm_suits(const FwdArgs& a, const LaunchConfig& c) {
  return a.step_gemm != nullptr && a.step_gemm->run != nullptr &&
         c.path == Path::kLargeH && a.dtype == DType::kFloat &&
         (a.lengths == nullptr || (!a.reverse && a.offsets == nullptr)) &&
         a.out != nullptr && a.B > 0 &&
         a.x_st == a.B * a.x_sb && a.out_st == a.B * a.out_sb;
}

// The per-step path with a library GEMM per step (step_gemm_suits): every
// step's input part x W_ih^T + b_ih + b_hh (or x + biases, unprojected) is
// written into out by one tiled GEMM over all T*B rows; then each step is
// out_t = h_{t-1} W_hh^T + out_t by the hook, in place, and out_t =
// phi(out_t) by irnn_activate_rows_kernel; h_n is a copy of the last step's
// state. With lengths, that kernel zeroes each row after its end (so the
// next step's GEMM reads zeros there) and stores h_n at the row's last
// step. A template (S = float only), so that only the translation unit
// that runs the forward instantiates the GEMM kernels.
template <typename S>
irnn_error run_forward_step_gemm(const FwdArgs& a, const LaunchConfig& c,
                                 irnn_stream stream) {
  static_assert(std::is_same_v<S, float>, "HookGemm is float32");
  const int64_t T = a.T, B = a.B, H = a.H;
  const float* x = static_cast<const float*>(a.x);
  float* out = static_cast<float*>(a.out);
  GemmParams<float> p{};
  p.M = T * B; p.N = H; p.K = a.project ? a.I : 0;
  p.a_s = operand(x, a.x_sb, int64_t(1));                 // x(m, k)
  p.b = operand(static_cast<const float*>(a.w_ih), a.I,   // W_ih^T(k, n)
                int64_t(1));
  p.epilogue = Epilogue::kProject;
  p.dst = out; p.d_sm = a.out_sb; p.d_sn = 1;
  p.x = a.project ? nullptr : x; p.x_sb = a.x_sb;
  p.b_ih = static_cast<const float*>(a.b_ih);
  p.b_hh = static_cast<const float*>(a.b_hh);
  irnn_error err = run_gemm(p, c.blocks, stream);
  if (err != kIrnnSuccess) return err;
  const float* prev = static_cast<const float*>(a.h0);
  int64_t prev_ld = H;
  const unsigned act_blocks = elementwise_blocks(B * H);
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = a.reverse ? T - 1 - s : s;
    float* dst = out + t * a.out_st;
    HookGemm g{};
    g.M = B; g.N = H; g.K = H;
    g.a = prev; g.lda = prev_ld;
    g.w = static_cast<const float*>(a.w_hh); g.ldw = H;  // W_hh(n, k)
    g.c = dst; g.ldc = a.out_sb;
    g.d = dst; g.ldd = a.out_sb;
    const int rc = a.step_gemm->run(g, a.step_gemm->ctx, stream);
    if (rc != 0) return static_cast<irnn_error>(rc);
    ActivateRowsParams<float> r{};
    r.d = dst; r.rows = B; r.cols = H; r.ld = a.out_sb; r.relu = a.relu;
    r.lengths = a.lengths;
    r.t = static_cast<int>(t); r.steps = static_cast<int>(T);
    r.h_n = static_cast<float*>(a.h_n);
    IRNN_LAUNCH(irnn_activate_rows_kernel<float>, act_blocks, 256, 0, stream,
                r);
    prev = dst;
    prev_ld = a.out_sb;
  }
  if (a.lengths) return kIrnnSuccess;  // h_n stored at each row's last step
  GemmParams<float> last{};  // h_n = the last step's state (K = 0)
  last.M = B; last.N = H; last.K = 0;
  last.epilogue = Epilogue::kProject;
  last.x = prev; last.x_sb = prev_ld;
  last.dst = static_cast<float*>(a.h_n); last.d_sm = H; last.d_sn = 1;
  return run_gemm(last, c.blocks, stream);
}

// The forward kernels on the padded layout; with lengths, forward direction
// only (run_forward relayouts the others).
template <typename S>
irnn_error run_forward_kernels(const FwdArgs& a, const LaunchConfig& c,
                               void* ws, irnn_stream stream) {
  const int64_t T = a.T, B = a.B, H = a.H;
  if (B == 0) return kIrnnSuccess;
  const S* x = static_cast<const S*>(a.x);
  const S* h0 = static_cast<const S*>(a.h0);
  const S* w_ih = static_cast<const S*>(a.w_ih);
  const S* w_hh = static_cast<const S*>(a.w_hh);
  S* out = static_cast<S*>(a.out);
  S* h_n = static_cast<S*>(a.h_n);
  if (c.path == Path::kRegisterFwd) return run_forward_reg<S>(a, c, stream);
  if (c.path == Path::kClusterFwd)
    return run_forward_cluster<S>(a, c, stream);
  if (c.path == Path::kPersistent) {
    PersistentFwdParams<S> p{};
    p.x = x; p.x_st = a.x_st; p.x_sb = a.x_sb;
    p.h0 = h0; p.w_ih = a.project ? w_ih : nullptr; p.w_hh = w_hh;
    p.b_ih = static_cast<const S*>(a.b_ih);
    p.b_hh = static_cast<const S*>(a.b_hh);
    p.out = out; p.out_st = a.out_st; p.out_sb = a.out_sb;
    p.h_n = h_n;
    p.lengths = a.lengths;
    p.T = static_cast<int>(T); p.B = static_cast<int>(B);
    p.I = static_cast<int>(a.I); p.H = static_cast<int>(H);
    p.relu = a.relu; p.reverse = a.reverse;
    p.rows_per_block = c.rows_per_block; p.row_groups = c.row_groups;
    p.rows_per_thread = c.rows_per_thread;
    if (c.smem_optin) IRNN_SET_MAX_SMEM(irnn_fwd_persistent_kernel<S>, c.smem);
    IRNN_LAUNCH(irnn_fwd_persistent_kernel<S>, c.blocks, c.threads,
                static_cast<size_t>(c.smem), stream, p);
    return kIrnnSuccess;
  }
  // Large H: one GEMM per step with the pointwise part fused as epilogue.
  // h_prev is h0, then the stored sequence or a ping-pong workspace.
  if constexpr (std::is_same_v<S, float>) {
    if (step_gemm_suits(a, c)) return run_forward_step_gemm<S>(a, c, stream);
  }
  S* ping = static_cast<S*>(ws);
  const S* prev = h0;
  int64_t prev_sb = H;
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = a.reverse ? T - 1 - s : s;
    GemmParams<S> p{};
    p.M = B; p.N = H; p.K = H;
    p.a_s = operand(prev, prev_sb, int64_t(1));  // h_prev(b, k)
    p.b = operand(w_hh, H, int64_t(1));          // W_hh^T(k, j) = W_hh[j,k]
    p.epilogue = Epilogue::kFwdStep;
    p.relu = a.relu;
    p.t = static_cast<int>(t);
    p.I = static_cast<int>(a.I);
    if (out) {
      p.dst = out + t * a.out_st; p.d_sm = a.out_sb;
    } else {
      p.dst = ping + (s & 1) * B * H; p.d_sm = H;
    }
    p.d_sn = 1;
    p.x = x; p.x_st = a.x_st; p.x_sb = a.x_sb;
    p.w_ih = a.project ? w_ih : nullptr;
    p.b_ih = static_cast<const S*>(a.b_ih);
    p.b_hh = static_cast<const S*>(a.b_hh);
    // With lengths, each row's h_n is stored at its own last step.
    p.h_n = s == T - 1 || a.lengths ? h_n : nullptr;
    p.lengths = a.lengths;
    p.steps = static_cast<int>(T);
    const irnn_error err = run_gemm(p, c.blocks, stream);
    if (err != kIrnnSuccess) return err;
    prev = p.dst;
    prev_sb = p.d_sm;
  }
  return kIrnnSuccess;
}

// Where the large-H and cluster backward hand their gradient GEMMs to
// a.bwd_gemm: float32, and the stored sequence walked as [T*B, H] rows
// (t-stride = B rows; always so for the forward's own output, and after
// bwd_relayout) at least a row apart (a library's leading dimension; a
// sequence broadcast over time and batch has rows 0 apart).
inline bool bwd_gemm_suits(const BwdArgs& a, const LaunchConfig& c) {
  return a.bwd_gemm != nullptr && a.bwd_gemm->run != nullptr &&
         (c.path == Path::kLargeH || c.path == Path::kClusterBwd) &&
         a.dtype == DType::kFloat && a.B > 0 && a.o_st == a.B * a.o_sb &&
         a.o_sb >= a.H;
}

// The large-H backward's recurrence with a library GEMM per step
// (bwd_gemm_suits): walking the steps backwards, da_t = da_{s+1} W_hh by
// the hook (none for the first walked step), then irnn_bwd_point_kernel
// adds grad_output (and grad_h_n at the first walked step) and applies
// phi' from the stored h_t, as the kBwdStep epilogue does; every da_t stays
// in da_all. A template (S = float only), as run_forward_step_gemm.
template <typename S>
irnn_error run_backward_steps_lib(const BwdArgs& a, float* da_all,
                                  irnn_stream stream) {
  static_assert(std::is_same_v<S, float>, "HookGemm is float32");
  const int64_t T = a.T, B = a.B, H = a.H;
  const GemmHook& hook = *a.bwd_gemm;
  const unsigned blocks = elementwise_blocks(B * H);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = a.reverse ? T - 1 - s : s;
    const int64_t t_next = a.reverse ? t - 1 : t + 1;  // step s + 1
    float* da = da_all + t * B * H;
    if (s < T - 1) {
      HookGemm g{};  // da(b, k) = sum_j da_next(b, j) W_hh(j, k)
      g.M = B; g.N = H; g.K = H;
      g.a = da_all + t_next * B * H; g.lda = H;
      g.w = static_cast<const float*>(a.w_hh); g.ldw = H; g.w_t = true;
      g.d = da; g.ldd = H;
      const int rc = hook.run(g, hook.ctx, stream);
      if (rc != 0) return static_cast<irnn_error>(rc);
    }
    BwdPointParams<float> p{};
    p.da = da;
    p.has_acc = s < T - 1;
    p.g = a.g_out ? static_cast<const float*>(a.g_out) + t * a.g_st : nullptr;
    p.g_sb = a.g_sb;
    p.g_hn = s == T - 1 ? static_cast<const float*>(a.g_hn) : nullptr;
    p.h = static_cast<const float*>(a.out) + t * a.o_st;
    p.h_sb = a.o_sb;
    p.dx = a.project ? nullptr : static_cast<float*>(a.dx) + t * B * H;
    p.B = B; p.H = H;
    p.relu = a.relu;
    IRNN_LAUNCH(irnn_bwd_point_kernel<float>, blocks, 256, 0, stream, p);
  }
  return kIrnnSuccess;
}

// The parts of a backward sum (grad_sums_elems) added in order into dst.
template <typename S>
irnn_error sum_parts(const typename AccOf<S>::type* parts, int64_t n,
                     int64_t count, S* dst, irnn_stream stream) {
  if (n == 0) return kIrnnSuccess;
  const SumPartsParams<S> p{parts, n, static_cast<int>(count), dst};
  IRNN_LAUNCH(irnn_sum_parts_kernel<S>, elementwise_blocks(n), 256, 0, stream,
              p);
  return kIrnnSuccess;
}

// One sum over K rows by the library in `parts` parts (split_parts): g with
// its K rows is called as a strided batch of `parts` products of K / parts
// rows each, into sums, sums + n, ...; the rest of the rows, if any, into
// the next. `a_row` and `w_row`: the elements from one row of a and of w to
// the next. Returns the sums written (parts, or parts + 1) in *count.
inline irnn_error hook_parts(const GemmHook& hook, HookGemm g, int64_t parts,
                             int64_t a_row, int64_t w_row, float* sums,
                             int64_t* count, irnn_stream stream) {
  const int64_t K = g.K, rows = K / parts, rest = K - parts * rows;
  const int64_t n = g.M * g.N;
  g.K = rows;
  g.c = nullptr;
  g.d = sums;
  g.ldd = g.N;
  g.batch = parts;
  g.a_bs = rows * a_row;
  g.w_bs = rows * w_row;
  g.d_bs = n;
  irnn_error err = static_cast<irnn_error>(hook.run(g, hook.ctx, stream));
  *count = parts;
  if (err != kIrnnSuccess || rest == 0) return err;
  g.a += parts * rows * a_row;
  g.w += parts * rows * w_row;
  g.d = sums + parts * n;
  g.K = rest;
  g.batch = 1;
  g.a_bs = g.w_bs = g.d_bs = 0;
  *count = parts + 1;
  return static_cast<irnn_error>(hook.run(g, hook.ctx, stream));
}

// The large-H backward's gradient GEMMs (run_backward_kernels, after the
// recurrence) by a.bwd_gemm (bwd_gemm_suits). dW_hh and dW_ih are sums over
// T B rows (t, b), summed in parts (dw_hh_parts, dw_ih_parts: a strided
// batch, and the rest) into `sums` and the parts added in order: dW_hh's
// parts over the steps with a stored h_prev, then the h0 step. dW_ih keeps
// the tiled GEMM where x is not [T*B, I] rows (a batch_first input). A
// template (S = float only), as run_forward_step_gemm.
template <typename S>
irnn_error run_backward_grad_lib(const BwdArgs& a, const LaunchConfig& c,
                                  float* da_all, float* sums, int64_t t_first,
                                  irnn_stream stream) {
  static_assert(std::is_same_v<S, float>, "HookGemm is float32");
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H;
  const GemmHook& hook = *a.bwd_gemm;
  const auto run = [&](const HookGemm& g) {
    return static_cast<irnn_error>(hook.run(g, hook.ctx, stream));
  };
  const float* da_first = da_all + t_first * B * H;
  irnn_error err = kIrnnSuccess;
  {  // dh0(b, k) = sum_j da_first(b, j) W_hh(j, k)
    HookGemm g{};
    g.M = B; g.N = H; g.K = H;
    g.a = da_first; g.lda = H;
    g.w = static_cast<const float*>(a.w_hh); g.ldw = H; g.w_t = true;
    g.d = static_cast<float*>(a.dh0); g.ldd = H;
    if ((err = run(g)) != kIrnnSuccess) return err;
  }
  int64_t count = 0;  // dW_hh's parts in sums
  if (T > 1) {  // dW_hh(j, k) = sum over (t, b) with a stored h_prev
    const int64_t da0 = a.reverse ? 0 : 1;  // first t whose h_prev is stored
    const int64_t hp0 = a.reverse ? 1 : 0;  // its h_prev = out[hp0]
    HookGemm g{};
    g.M = H; g.N = H; g.K = (T - 1) * B;
    g.a = da_all + da0 * B * H; g.lda = H; g.a_t = true;
    g.w = static_cast<const float*>(a.out) + hp0 * a.o_st; g.ldw = a.o_sb;
    g.w_t = true;
    if ((err = hook_parts(hook, g, dw_hh_parts(T, B, H), H, a.o_sb, sums,
                          &count, stream)) != kIrnnSuccess)
      return err;
  }
  {  // the h0 step, one part more
    HookGemm g{};
    g.M = H; g.N = H; g.K = B;
    g.a = da_first; g.lda = H; g.a_t = true;
    g.w = static_cast<const float*>(a.h0); g.ldw = H; g.w_t = true;
    g.d = sums + count++ * H * H; g.ldd = H;
    if ((err = run(g)) != kIrnnSuccess) return err;
  }
  if ((err = sum_parts<S>(sums, H * H, count, static_cast<float*>(a.dw_hh),
                          stream)) != kIrnnSuccess)
    return err;
  if (!a.project) return kIrnnSuccess;
  // x as [T*B, I] rows at least a row apart, as bwd_gemm_suits asks of
  // the sequence, or tiled.
  if (a.x_st != B * a.x_sb || a.x_sb < I) {  // dW_ih = sum_{t,b} da^T x, tiled
    GemmParams<float> p{};
    p.M = H; p.N = I; p.K = T * B;
    p.a_acc = GemmOperand<float>{da_all, 1, B * H, H, B};
    p.b = GemmOperand<float>{static_cast<const float*>(a.x), 1, a.x_st,
                             a.x_sb, B};
    p.epilogue = Epilogue::kStore;
    p.dst = static_cast<float*>(a.dw_ih); p.d_sm = I; p.d_sn = 1;
    if ((err = run_gemm(p, c.blocks, stream)) != kIrnnSuccess) return err;
  } else {  // dW_ih(j, i) = sum_{t,b} da(t, b, j) x(t, b, i)
    HookGemm g{};
    g.M = H; g.N = I; g.K = T * B;
    g.a = da_all; g.lda = H; g.a_t = true;
    g.w = static_cast<const float*>(a.x); g.ldw = a.x_sb; g.w_t = true;
    if ((err = hook_parts(hook, g, dw_ih_parts(T, B, I, H), H, a.x_sb, sums,
                          &count, stream)) != kIrnnSuccess ||
        (err = sum_parts<S>(sums, H * I, count, static_cast<float*>(a.dw_ih),
                            stream)) != kIrnnSuccess)
      return err;
  }
  HookGemm g{};  // dx(t, b, i) = sum_j da(t, b, j) W_ih(j, i)
  g.M = T * B; g.N = I; g.K = H;
  g.a = da_all; g.lda = H;
  g.w = static_cast<const float*>(a.w_ih); g.ldw = I; g.w_t = true;
  g.d = static_cast<float*>(a.dx); g.ldd = I;
  return run(g);
}

// The backward kernels on the padded layout; with lengths, forward
// direction with bwd_relayout's inputs only (run_backward prepares them).
template <typename S>
irnn_error run_backward_kernels(const BwdArgs& a, const LaunchConfig& c,
                                void* ws, irnn_stream stream) {
  using A = typename AccOf<S>::type;
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H;
  const S* g_out = static_cast<const S*>(a.g_out);
  const S* g_hn = static_cast<const S*>(a.g_hn);
  const S* x = static_cast<const S*>(a.x);
  const S* h0 = static_cast<const S*>(a.h0);
  const S* w_ih = a.project ? static_cast<const S*>(a.w_ih) : nullptr;
  const S* w_hh = static_cast<const S*>(a.w_hh);
  const S* out = static_cast<const S*>(a.out);
  S* dx = static_cast<S*>(a.dx);
  S* dh0 = static_cast<S*>(a.dh0);
  S* dw_ih = a.project ? static_cast<S*>(a.dw_ih) : nullptr;
  S* dw_hh = static_cast<S*>(a.dw_hh);
  S* db = static_cast<S*>(a.db);
  A* work = static_cast<A*>(ws);

  if (c.path == Path::kPersistent || c.path == Path::kRegisterBwd) {
    if (c.path == Path::kRegisterBwd) {
      const irnn_error err = run_backward_reg<S>(a, c, ws, stream);
      if (err != kIrnnSuccess) return err;
    } else if (B > 0) {
      PersistentBwdParams<S> p{};
      p.g_out = g_out; p.g_st = a.g_st; p.g_sb = a.g_sb; p.g_hn = g_hn;
      p.x = x; p.x_st = a.x_st; p.x_sb = a.x_sb;
      p.h0 = h0; p.w_ih = w_ih; p.w_hh = w_hh;
      p.out = out; p.o_st = a.o_st; p.o_sb = a.o_sb;
      p.dx = dx; p.dh0 = dh0; p.partials = work;
      p.lengths = a.lengths;
      p.T = static_cast<int>(T); p.B = static_cast<int>(B);
      p.I = static_cast<int>(I); p.H = static_cast<int>(H);
      p.relu = a.relu; p.reverse = a.reverse;
      p.rows_per_block = c.rows_per_block; p.row_groups = c.row_groups;
      p.rows_per_thread = c.rows_per_thread;
      if (c.smem_optin) IRNN_SET_MAX_SMEM(irnn_bwd_persistent_kernel<S>, c.smem);
      IRNN_LAUNCH(irnn_bwd_persistent_kernel<S>, c.blocks, c.threads,
                  static_cast<size_t>(c.smem), stream, p);
    }
    ReduceParams<S> r{};
    r.partials = work;
    r.blocks = B > 0 ? c.blocks : 0;
    r.H = static_cast<int>(H);
    r.PI = a.project ? static_cast<int>(H * I) : 0;
    r.dw_hh = dw_hh; r.dw_ih = dw_ih; r.db = db;
    const int64_t P = partial_elems(H, I, a.project);
    IRNN_LAUNCH(irnn_reduce_partials_kernel<S>,
                static_cast<unsigned>(ceil_div(P, 256) < 1024 ? ceil_div(P, 256) : 1024),
                256, 0, stream, r);
    return kIrnnSuccess;
  }

  // Large H. Walk the steps backwards with one GEMM each (da_{s+1} W_hh with
  // the pointwise part as epilogue; with a.bwd_gemm, the library's GEMM and
  // irnn_bwd_point_kernel), keeping every da_t in the workspace; then the
  // weight gradients are GEMMs over all (t, b) and db a column sum.
  // The cluster backward computes the same da_t (and dx = da_t without the
  // projection) in one launch instead of the step GEMMs.
  A* da_all = work;            // [T,B,H]
  A* sums = work + T * B * H;  // grad_sums_elems
  irnn_error err = kIrnnSuccess;
  if (c.path == Path::kClusterBwd && B > 0) {
    if constexpr (std::is_same_v<A, float>) {
      if ((err = run_backward_cluster<S>(a, c, da_all, stream)) != kIrnnSuccess)
        return err;
    } else {
      return kIrnnInvalidConfig;
    }
  }
  bool lib = false;  // the backward's GEMMs by a.bwd_gemm
  if constexpr (std::is_same_v<S, float> && std::is_same_v<A, float>) {
    lib = bwd_gemm_suits(a, c);
    if (lib && c.path == Path::kLargeH &&
        (err = run_backward_steps_lib<S>(a, da_all, stream)) != kIrnnSuccess)
      return err;
  }
  for (int64_t s = T - 1;
       s >= 0 && B > 0 && c.path != Path::kClusterBwd && !lib; --s) {
    const int64_t t = a.reverse ? T - 1 - s : s;
    const int64_t t_next = a.reverse ? t - 1 : t + 1;  // step s + 1
    GemmParams<S> p{};
    p.M = B; p.N = H; p.K = s == T - 1 ? 0 : H;
    // The last step walked has no step s + 1 (t_next is -1 or T): no
    // operand, and no pointer formed outside da_all.
    p.a_acc = GemmOperand<A>{p.K > 0 ? da_all + t_next * B * H : nullptr, H, 0,
                             1, kNoSplit};
    p.b = operand(w_hh, int64_t(1), H);  // W_hh(j, k): i = k, reduction j
    p.epilogue = Epilogue::kBwdStep;
    p.relu = a.relu;
    p.t = static_cast<int>(t);
    p.dst_acc = da_all + t * B * H;
    p.g_out = g_out; p.g_st = a.g_st; p.g_sb = a.g_sb;
    p.g_hn = s == T - 1 ? g_hn : nullptr;
    p.out = out; p.o_st = a.o_st; p.o_sb = a.o_sb;
    p.dx = a.project ? nullptr : dx;
    p.lengths = a.lengths;
    p.steps = static_cast<int>(T);
    if ((err = run_gemm(p, c.blocks, stream)) != kIrnnSuccess) return err;
  }
  const int64_t t_first = a.reverse ? T - 1 : 0;  // the step walked first
  // dh0 = da_{t_first} W_hh, dW_hh = sum_t da_t^T h_{t-1}, and with the
  // projection dW_ih = sum_t da_t^T x_t and dx = da W_ih: by the library
  // (run_backward_grad_lib), or by the tiled GEMM.
  if constexpr (std::is_same_v<S, float> && std::is_same_v<A, float>) {
    if (lib &&
        (err = run_backward_grad_lib<S>(a, c, da_all, sums, t_first,
                                        stream)) !=
            kIrnnSuccess)
      return err;
  }
  if (!lib) {
    {  // dh0 = da_{t_first} W_hh
      GemmParams<S> p{};
      p.M = B; p.N = H; p.K = H;
      p.a_acc = GemmOperand<A>{da_all + t_first * B * H, H, 0, 1, kNoSplit};
      p.b = operand(w_hh, int64_t(1), H);
      p.epilogue = Epilogue::kStore;
      p.dst = dh0; p.d_sm = H; p.d_sn = 1;
      if ((err = run_gemm(p, c.blocks, stream)) != kIrnnSuccess) return err;
    }
    {  // dW_hh = sum over steps with a stored h_prev, then the h0 step
      const int64_t da0 = a.reverse ? 0 : 1;  // first t whose h_prev is stored
      const int64_t hp0 = a.reverse ? 1 : 0;  // its h_prev = out[hp0]
      GemmParams<S> p{};
      p.M = H; p.N = H; p.K = (T - 1) * B;
      p.a_acc = GemmOperand<A>{da_all + da0 * B * H, 1, B * H, H, B};
      p.b = GemmOperand<S>{out + hp0 * a.o_st, 1, a.o_st, a.o_sb, B};
      p.epilogue = Epilogue::kStoreAcc;
      p.dst_acc = sums;  // the first part of dW_hh
      if ((err = run_gemm(p, c.blocks, stream)) != kIrnnSuccess) return err;
      GemmParams<S> q{};
      q.M = H; q.N = H; q.K = B;
      q.a_acc = GemmOperand<A>{da_all + t_first * B * H, 1, 0, H, kNoSplit};
      q.b = operand(h0, int64_t(1), H);
      q.epilogue = Epilogue::kStore;
      q.addend = sums;
      q.dst = dw_hh; q.d_sm = H; q.d_sn = 1;
      if ((err = run_gemm(q, c.blocks, stream)) != kIrnnSuccess) return err;
    }
    if (a.project) {
      GemmParams<S> p{};  // dW_ih = sum_{t,b} da^T x
      p.M = H; p.N = I; p.K = T * B;
      p.a_acc = GemmOperand<A>{da_all, 1, B * H, H, B};
      p.b = GemmOperand<S>{x, 1, a.x_st, a.x_sb, B};
      p.epilogue = Epilogue::kStore;
      p.dst = dw_ih; p.d_sm = I; p.d_sn = 1;
      if ((err = run_gemm(p, c.blocks, stream)) != kIrnnSuccess) return err;
      GemmParams<S> q{};  // dx = da W_ih
      q.M = T * B; q.N = I; q.K = H;
      q.a_acc = GemmOperand<A>{da_all, H, 0, 1, kNoSplit};
      q.b = operand(w_ih, int64_t(1), I);
      q.epilogue = Epilogue::kStore;
      q.dst = dx; q.d_sm = I; q.d_sn = 1;
      if ((err = run_gemm(q, c.blocks, stream)) != kIrnnSuccess) return err;
    }
  }
  // db = sum over (t, b) of da, in parts (db_parts) added in order.
  const int64_t parts = db_parts(T, B, H);
  const ColumnSumParams<S> cs{da_all, T * B, H, sums};
  IRNN_LAUNCH(irnn_column_sum_kernel<S>,
              dim3(static_cast<unsigned>(ceil_div(H, 32)),
                   static_cast<unsigned>(parts)),
              32 * kColumnSumWarps, 32 * kColumnSumWarps * sizeof(A), stream,
              cs);
  return sum_parts<S>(sums, H, parts, db, stream);
}

// One relayout (irnn_relayout_kernel) of a [T,B,C] tensor.
template <typename S>
irnn_error relayout(const RelayoutParams<S>& p, irnn_stream stream) {
  const int64_t total = p.T * p.B * p.C;
  if (total == 0) return kIrnnSuccess;
  IRNN_LAUNCH(irnn_relayout_kernel<S>, elementwise_blocks(total), 256, 0,
              stream, p);
  return kIrnnSuccess;
}

// The relayout copies in the workspace, after the kernels' own.
inline unsigned char* relayout_base(void* ws, const LaunchConfig& c) {
  return static_cast<unsigned char*>(ws) + relayout_round(c.workspace);
}

// irnn_forward: the kernels straight on the caller's tensors, or (a
// reversed or packed call with lengths, fwd_relayout) on a padded, forward
// ordered copy of x whose outputs are scattered back.
template <typename S>
irnn_error run_forward(const FwdArgs& a, const LaunchConfig& c, void* ws,
                       irnn_stream stream) {
  if (!fwd_relayout(a)) return run_forward_kernels<S>(a, c, ws, stream);
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, e = sizeof(S);
  unsigned char* base = relayout_base(ws, c);
  S* xr = reinterpret_cast<S*>(base);
  S* outr = reinterpret_cast<S*>(base + relayout_round(T * B * I * e));
  RelayoutParams<S> g{};
  g.lengths = a.lengths; g.offsets = a.offsets;
  g.T = T; g.B = B; g.reverse = a.reverse;
  RelayoutParams<S> gx = g;
  gx.user_in = static_cast<const S*>(a.x);
  gx.u_st = a.x_st; gx.u_sb = a.x_sb;
  gx.copy = xr; gx.C = I; gx.gather = true;
  irnn_error err = relayout(gx, stream);
  if (err != kIrnnSuccess) return err;
  FwdArgs k = a;
  k.x = xr; k.x_st = B * I; k.x_sb = I;
  k.out = a.out ? outr : nullptr; k.out_st = B * H; k.out_sb = H;
  k.reverse = false; k.offsets = nullptr;
  if ((err = run_forward_kernels<S>(k, c, ws, stream)) != kIrnnSuccess)
    return err;
  if (!a.out) return kIrnnSuccess;
  RelayoutParams<S> so = g;
  so.user_out = static_cast<S*>(a.out);
  so.u_st = a.out_st; so.u_sb = a.out_sb;
  so.copy = outr; so.C = H; so.gather = false;
  return relayout(so, stream);
}

// irnn_backward: the kernels straight on the caller's tensors, or with
// lengths (bwd_relayout) on padded, forward-ordered copies of grad_output
// (grad_h_n folded into each row's last step), output and x, zero after
// each row's end, whose dx is scattered back.
template <typename S>
irnn_error run_backward(const BwdArgs& a, const LaunchConfig& c, void* ws,
                        irnn_stream stream) {
  if (!bwd_relayout(a)) return run_backward_kernels<S>(a, c, ws, stream);
  const int64_t T = a.T, B = a.B, I = a.I, H = a.H, e = sizeof(S);
  unsigned char* at = relayout_base(ws, c);
  auto take = [&](int64_t bytes) {
    S* p = reinterpret_cast<S*>(at);
    at += relayout_round(bytes);
    return p;
  };
  S* gr = take(T * B * H * e);
  S* outr = take(T * B * H * e);
  S* xr = a.project ? take(T * B * I * e) : nullptr;
  S* dxr = take(T * B * I * e);
  RelayoutParams<S> g{};
  g.lengths = a.lengths; g.offsets = a.offsets;
  g.T = T; g.B = B; g.reverse = a.reverse; g.gather = true;
  RelayoutParams<S> gg = g;
  gg.user_in = static_cast<const S*>(a.g_out);
  gg.u_st = a.g_st; gg.u_sb = a.g_sb;
  gg.add_last = static_cast<const S*>(a.g_hn);
  gg.copy = gr; gg.C = H;
  irnn_error err = relayout(gg, stream);
  if (err != kIrnnSuccess) return err;
  RelayoutParams<S> go = g;
  go.user_in = static_cast<const S*>(a.out);
  go.u_st = a.o_st; go.u_sb = a.o_sb;
  go.copy = outr; go.C = H;
  if ((err = relayout(go, stream)) != kIrnnSuccess) return err;
  if (a.project) {
    RelayoutParams<S> gx = g;
    gx.user_in = static_cast<const S*>(a.x);
    gx.u_st = a.x_st; gx.u_sb = a.x_sb;
    gx.copy = xr; gx.C = I;
    if ((err = relayout(gx, stream)) != kIrnnSuccess) return err;
  }
  BwdArgs k = a;
  k.g_out = gr; k.g_st = B * H; k.g_sb = H; k.g_hn = nullptr;
  k.out = outr; k.o_st = B * H; k.o_sb = H;
  if (a.project) {
    k.x = xr; k.x_st = B * I; k.x_sb = I;
  }
  k.dx = dxr;
  k.reverse = false; k.offsets = nullptr;
  if ((err = run_backward_kernels<S>(k, c, ws, stream)) != kIrnnSuccess)
    return err;
  RelayoutParams<S> sd = g;
  sd.gather = false;
  sd.user_out = static_cast<S*>(a.dx);
  sd.u_st = a.offsets ? 0 : B * I; sd.u_sb = I;
  sd.copy = dxr; sd.C = I;
  return relayout(sd, stream);
}

}  // namespace irnn_cuda
