// ThreadSanitizer and AddressSanitizer driver for the emulation (built by
// tests/test_emulation.py with -fsanitize=thread and -fsanitize=address; a
// sanitized shared library cannot be loaded into an uninstrumented Python,
// so this is a standalone executable).
//
//   emu_sanitizer race     runs a kernel with a planted race (a shared
//                     memory write and a read by another thread with no
//                     barrier between them); TSan must report it.
//   emu_sanitizer cluster_race  runs a cluster kernel with a planted race:
//                     each block writes into its peer's shared memory and
//                     reads its own with the cluster barrier left out; TSan
//                     must report it.
//   emu_sanitizer global_read  runs a kernel whose last thread reads one
//                     float past the end of its input; ASan must report it.
//   emu_sanitizer cluster  runs the cluster forward and backward (4 blocks
//                     of 256 threads) against the large-H path; the
//                     sanitizer must stay silent.
//   emu_sanitizer kernels  runs the forward and backward kernels (register-
//                     resident, persistent and large-H paths, <= 256
//                     threads per block; two cases with lengths) on a few
//                     cases and checks that they agree with the large-H
//                     path; the sanitizer must stay silent.
//
// Every array is allocated at its exact size, as the op allocates its
// tensors and workspaces, except the 16-bit inputs the register-resident
// kernels copy as 4-byte words (the backward's x, grad_output and stored
// sequence, the forward's x when not projected): those get the spare
// element the op guarantees them (see kWordSpare).
#include "emu_harness.cpp"

#include <cstring>

namespace {

IRNN_GLOBAL void planted_race_kernel(float* out) {
  float* s = irnn_cuda::irnn_dyn_smem<float>();
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  // A __syncthreads() belongs here.
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

// Thread t of 64 reads in[t + 1] of a 64-float array.
IRNN_GLOBAL void global_read_kernel(const float* in) {
  volatile float v = in[threadIdx.x + 1];
  (void)v;
}

int run_global_read() {
  std::vector<float> in(64, 1.f);
  const float* p = in.data();
  IRNN_LAUNCH(global_read_kernel, 1, 64, 0, nullptr, p);
  return 0;
}

int run_race() {
  std::vector<float> out(64);
  float* p = out.data();
  IRNN_LAUNCH(planted_race_kernel, 1, 64, 64 * sizeof(float), nullptr, p);
  return 0;
}

// Each block of a cluster of 2 writes its thread's value into its peer's
// shared memory and then reads its own; with `barrier`, a cluster barrier
// separates the two.
template <bool Barrier>
IRNN_GLOBAL void cluster_exchange_kernel(float* out) {
  float* s = irnn_cuda::irnn_dyn_smem<float>();
  const unsigned rank = irnn_cuda::irnn_cluster_rank();
  *irnn_cuda::irnn_map_shared_rank(s + threadIdx.x, rank ^ 1u) =
      static_cast<float>(rank * 1000 + threadIdx.x);
  if (Barrier) {  // An irnn_cluster_arrive/irnn_cluster_wait pair belongs here.
    irnn_cuda::irnn_cluster_arrive();
    irnn_cuda::irnn_cluster_wait();
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

template <bool Barrier>
int run_cluster_exchange() {
  std::vector<float> out(2 * 64, -1.f);
  float* p = out.data();
  const auto body = [&]() -> irnn_cuda::irnn_error {
    IRNN_LAUNCH_CLUSTER(cluster_exchange_kernel<Barrier>, 2, 2, 64,
                        64 * sizeof(float), nullptr, p);
    return irnn_cuda::kIrnnSuccess;
  };
  body();
  if (!Barrier) return 0;
  for (unsigned b = 0; b < 2; ++b)
    for (unsigned t = 0; t < 64; ++t)
      if (out[b * 64 + t] != static_cast<float>((b ^ 1u) * 1000 + t)) {
        std::printf("cluster exchange: block %u thread %u read %g\n", b, t,
                    out[b * 64 + t]);
        return 1;
      }
  std::printf("cluster exchange: ok\n");
  return 0;
}

struct Case {
  DType dtype;
  int64_t T, B, I, H;
  bool project, relu, reverse;
  irnn_cuda::Path backward;  // the backward's path on the first table
  bool varlen = false;  // lengths T down to 1 over the batch (sorted)
};

// A value as the stored type T (16-bit types rounded to nearest even).
template <typename T>
T stored(double v) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>)
    return static_cast<T>(v);
  else
    return irnn_cuda::from_acc<T>(static_cast<float>(v));
}

// The register-resident backward reads a 16-bit x, grad_output and stored
// sequence, and the forward a 16-bit x that is not projected, as the
// aligned 4-byte words that hold their elements, so the
// last element's word may reach 2 bytes past it; the op gives such a
// tensor a spare element whenever its storage would end there
// (irnn_ops_cuda.cpp, whole_words). These arrays get it too.
template <typename T>
constexpr size_t kWordSpare = sizeof(T) == 2 ? 1 : 0;

// n values, and `spare` more (a word's spare).
template <typename T>
std::vector<T> random_vec(size_t n, double scale, std::mt19937& rng,
                          size_t spare = 0) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<T> v(n + spare);
  for (auto& e : v) e = stored<T>(nd(rng));
  return v;
}

// Forward and backward of one case on one device table; returns every
// output and gradient concatenated, and the two launch configurations in
// *fwd_cfg and *bwd_cfg when given.
template <typename T>
std::vector<T> run_case(const Case& c, const DeviceProps& props,
                        LaunchConfig* fwd_cfg = nullptr,
                        LaunchConfig* bwd_cfg = nullptr) {
  std::mt19937 rng(7);
  const int64_t T_ = c.T, B = c.B, H = c.H, I = c.project ? c.I : c.H;
  auto x = random_vec<T>(T_ * B * I, 1.0, rng, kWordSpare<T>);
  auto h0 = random_vec<T>(B * H, 0.5, rng);
  auto w_ih = random_vec<T>(H * I, 0.5, rng);
  auto w_hh = random_vec<T>(H * H, 0.9 / std::sqrt(double(H)), rng);
  auto b_ih = random_vec<T>(H, 0.1, rng), b_hh = random_vec<T>(H, 0.1, rng);
  auto g_out = random_vec<T>(T_ * B * H, 1.0, rng, kWordSpare<T>);
  auto g_hn = random_vec<T>(B * H, 1.0, rng);
  std::vector<T> out(T_ * B * H + kWordSpare<T>), h_n(B * H), dx(T_ * B * I), dh0(B * H),
      dw_ih(H * I), dw_hh(H * H), db(H);
  FwdArgs f{c.dtype, T_, B, I, H, c.project, c.relu, c.reverse,
            x.data(), B * I, I, h0.data(), c.project ? w_ih.data() : nullptr,
            w_hh.data(), b_ih.data(), b_hh.data(), out.data(), B * H, H,
            h_n.data()};
  std::vector<int64_t> lengths(B);
  for (int64_t r = 0; r < B; ++r)
    lengths[r] = std::max<int64_t>(1, T_ - r * T_ / B);
  if (c.varlen) f.lengths = lengths.data();
  LaunchConfig cfg{};
  if (emu_forward(&props, &f, 0, &cfg) != 0) throw std::runtime_error(g_error);
  if (fwd_cfg) *fwd_cfg = cfg;
  BwdArgs b{c.dtype, T_, B, I, H, c.project, c.relu, c.reverse,
            g_out.data(), B * H, H, g_hn.data(), x.data(), B * I, I,
            h0.data(), c.project ? w_ih.data() : nullptr, w_hh.data(),
            out.data(), B * H, H, dx.data(), dh0.data(),
            c.project ? dw_ih.data() : nullptr, dw_hh.data(), db.data()};
  if (c.varlen) b.lengths = lengths.data();
  if (emu_backward(&props, &b, 3, &cfg) != 0) throw std::runtime_error(g_error);
  if (bwd_cfg) *bwd_cfg = cfg;
  std::vector<T> all;
  out.resize(T_ * B * H);  // without the spare
  for (const auto* v : {&out, &h_n, &dx, &dh0, &dw_ih, &dw_hh, &db})
    all.insert(all.end(), v->begin(), v->end());
  return all;
}

int run_kernels() {
  // Few SMs so a small batch still spreads over several blocks with a
  // ragged tail; 256 threads per block at most.
  // The second table has no shared memory opt-in, so W_hh of these sizes
  // does not fit and the large-H path runs.
  const DeviceProps persistent{4, 256, 48 * 1024, 200 * 1024, 0};
  const DeviceProps large_h{4, 256, 48 * 1024, 48 * 1024, 0};
  // B <= 4 (the SM count) runs the register-resident backward with one row
  // per block (HP 128, 256 threads): projected, and not (tanh, reversed, T
  // beyond the prefetch ring; the forward's ring too); HP 104 projected
  // (the MNIST case at B <= the SM count); B = 20 with 8 rows per block
  // (HP 104, 224 threads, a partial last block), B = 13 with 4 (HP 104, not
  // projected: both rings); bfloat16 at one row per block (HP 104, T
  // beyond the ring) and float16 at 8 (HP 104, odd strides); bfloat16 not
  // projected at 4 (both rings of words, odd strides). Several waves: B =
  // 11 at HP 128 (one row per block, the only rows listed there) and B = 37
  // with 8 rows per block. H = 130 runs today's kernel (no clusters here).
  // Every input not projected (but float64's) runs the register-resident
  // forward; so does float64 projected at H <= 64 (H = 60, B = 9: 2 rows
  // per block in several waves, tanh, reversed), and its backward (one row
  // per block in several waves); float64 not projected at H = 60 (T = 9,
  // beyond the backward's ring) runs today's forward and the
  // register-resident backward.
  using irnn_cuda::Path;
  const Case cases[] = {
      {DType::kFloat, 3, 11, 1, 120, true, true, false, Path::kRegisterBwd},
      {DType::kFloat, 2, 10, 2, 130, true, false, true, Path::kPersistent},
      {DType::kFloat, 3, 37, 2, 100, true, true, false, Path::kRegisterBwd},
      {DType::kFloat, 3, 4, 1, 110, true, true, false, Path::kRegisterBwd},
      {DType::kFloat, 4, 3, 1, 100, true, true, false, Path::kRegisterBwd},
      {DType::kFloat, 10, 3, 1, 112, false, false, true, Path::kRegisterBwd},
      {DType::kFloat, 3, 20, 2, 100, true, true, false, Path::kRegisterBwd},
      {DType::kFloat, 9, 13, 1, 100, false, true, false, Path::kRegisterBwd},
      {DType::kBFloat16, 9, 3, 1, 100, true, true, false, Path::kRegisterBwd},
      {DType::kHalf, 3, 29, 3, 101, true, true, true, Path::kRegisterBwd},
      {DType::kBFloat16, 10, 13, 1, 101, false, true, true, Path::kRegisterBwd},
      {DType::kDouble, 2, 9, 1, 80, false, true, false, Path::kPersistent},
      {DType::kDouble, 5, 9, 2, 60, true, false, true, Path::kRegisterBwd},
      {DType::kDouble, 9, 6, 1, 60, false, true, false, Path::kRegisterBwd},
      // With lengths: the register-resident kernels (8 rows per block,
      // reversed: the relayout copies; 2 rows per block, whose blocks start
      // at their longest row) and today's persistent ones.
      {DType::kFloat, 6, 20, 2, 100, true, true, true, Path::kRegisterBwd,
       true},
      {DType::kFloat, 9, 7, 1, 100, true, true, false, Path::kRegisterBwd,
       true},
      {DType::kFloat, 5, 11, 1, 130, true, false, false, Path::kPersistent,
       true},
  };
  int failures = 0;
  for (const Case& c : cases) {
    // The largest difference between the two paths, relative to the
    // largest value for the 16-bit types (whose paths round differently).
    double max_diff = 0, max_abs = 0;
    auto compare = [&](auto a, auto b) {
      for (size_t i = 0; i < a.size(); ++i) {
        const double u = irnn_cuda::to_acc(a[i]), v = irnn_cuda::to_acc(b[i]);
        max_diff = std::max(max_diff, std::isnan(u - v) ? INFINITY : std::fabs(u - v));
        max_abs = std::max(max_abs, std::fabs(u));
      }
    };
    double tol = 1e-3;
    if (c.dtype == DType::kFloat) {
      compare(run_case<float>(c, persistent), run_case<float>(c, large_h));
    } else if (c.dtype == DType::kDouble) {
      compare(run_case<double>(c, persistent), run_case<double>(c, large_h));
      tol = 1e-9;
    } else if (c.dtype == DType::kHalf) {
      compare(run_case<irnn_cuda::irnn_half>(c, persistent),
              run_case<irnn_cuda::irnn_half>(c, large_h));
      tol = 2e-2 * max_abs;
    } else {
      compare(run_case<irnn_cuda::irnn_bf16>(c, persistent),
              run_case<irnn_cuda::irnn_bf16>(c, large_h));
      tol = 8e-2 * max_abs;
    }
    const bool ok = max_diff < tol;
    const LaunchConfig pc = irnn_cuda::make_launch_config(
        persistent, true, c.dtype, c.T, c.B, c.I, c.H, c.project, true);
    const LaunchConfig lc = irnn_cuda::make_launch_config(
        large_h, true, c.dtype, c.T, c.B, c.I, c.H, c.project, true);
    const LaunchConfig fc = irnn_cuda::make_launch_config(
        persistent, false, c.dtype, c.T, c.B, c.I, c.H, c.project, true);
    // Where the forward must be the register-resident one: an input not
    // projected (but float64's), float64 projected at H <= 64.
    const bool reg_fwd = c.dtype == DType::kDouble ? c.project && c.H <= 64
                                                   : !c.project;
    const bool paths = pc.path == c.backward && pc.blocks >= 3 &&
                       lc.path == irnn_cuda::Path::kLargeH &&
                       (!reg_fwd || fc.path == irnn_cuda::Path::kRegisterFwd);
    std::printf("case H=%lld B=%lld (backward path %d, %d blocks of %d "
                "threads) vs large-H max |diff| %.3g (max |value| %.3g) %s\n",
                (long long)c.H, (long long)c.B, static_cast<int>(pc.path),
                pc.blocks, pc.threads, max_diff, max_abs,
                ok && paths ? "ok" : "FAIL");
    failures += !paths;
    failures += !ok;
  }
  if (failures == 0) std::printf("kernels: all cases agree\n");
  return failures == 0 ? 0 : 1;
}

// The cluster forward and backward (H = 136: 4 blocks of 256 threads, 8
// rows per cluster on 8 SMs, a ragged last cluster; relu and reversed, and
// tanh with lengths; T = 9, beyond the backward's prefetch ring; and not
// projected with lengths, T = 10, beyond the forward's ring) against
// today's persistent kernels (a table without clusters); float16 not
// projected (both rings of 4-byte words, tanh), whose backward runs 4 rows
// per cluster in two waves (no 8-row 16-bit cluster backward).
int run_cluster() {
  const DeviceProps cluster{8, 1024, 48 * 1024, 200 * 1024, 1};
  const DeviceProps persistent{8, 1024, 48 * 1024, 200 * 1024, 0};
  using irnn_cuda::Path;
  const Case cases[] = {
      {DType::kFloat, 9, 9, 2, 136, true, true, true, Path::kClusterBwd},
      {DType::kFloat, 9, 9, 2, 136, true, false, false, Path::kClusterBwd,
       true},
      {DType::kFloat, 10, 9, 2, 136, false, true, false, Path::kClusterBwd,
       true},
      {DType::kHalf, 10, 9, 2, 136, false, false, false, Path::kClusterBwd},
  };
  int failures = 0, variant = 0;
  for (const Case& c : cases) {
    LaunchConfig cfgs[2], bcfgs[2];
    // The largest difference, relative to the largest value for the 16-bit
    // types (whose paths round differently), as run_kernels does.
    double max_diff = 0, max_abs = 0, tol = 1e-3;
    auto compare = [&](auto u, auto v) {
      for (size_t i = 0; i < u.size(); ++i) {
        const double a = irnn_cuda::to_acc(u[i]), b = irnn_cuda::to_acc(v[i]);
        max_diff = std::max(max_diff,
                            std::isnan(a - b) ? INFINITY : std::fabs(a - b));
        max_abs = std::max(max_abs, std::fabs(a));
      }
    };
    if (c.dtype == DType::kFloat) {
      compare(run_case<float>(c, cluster, &cfgs[0], &bcfgs[0]),
              run_case<float>(c, persistent, &cfgs[1], &bcfgs[1]));
    } else if (c.dtype == DType::kHalf) {
      compare(run_case<irnn_cuda::irnn_half>(c, cluster, &cfgs[0], &bcfgs[0]),
              run_case<irnn_cuda::irnn_half>(c, persistent, &cfgs[1], &bcfgs[1]));
      tol = 2e-2 * max_abs;
    } else {
      compare(run_case<irnn_cuda::irnn_bf16>(c, cluster, &cfgs[0], &bcfgs[0]),
              run_case<irnn_cuda::irnn_bf16>(c, persistent, &cfgs[1], &bcfgs[1]));
      tol = 8e-2 * max_abs;
    }
    const int bwd_rows = c.dtype == DType::kFloat ? 8 : 4;
    const bool paths = cfgs[0].path == Path::kClusterFwd &&
                       cfgs[0].cluster == 4 && cfgs[0].rows_per_block == 8 &&
                       cfgs[1].path == Path::kPersistent &&
                       bcfgs[0].path == c.backward &&
                       bcfgs[0].cluster == 4 &&
                       bcfgs[0].rows_per_block == bwd_rows &&
                       bcfgs[1].path == Path::kPersistent;
    const bool ok = max_diff < tol;  // NaN fails too
    std::printf("cluster case %d (%d blocks, clusters of %d) vs persistent max "
                "|diff| %.3g %s\n", variant++, cfgs[0].blocks, cfgs[0].cluster,
                max_diff, ok && paths ? "ok" : "FAIL");
    failures += !(ok && paths);
  }
  if (failures == 0) std::printf("cluster: all cases agree\n");
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "race") == 0) return run_race();
  if (argc == 2 && std::strcmp(argv[1], "global_read") == 0)
    return run_global_read();
  if (argc == 2 && std::strcmp(argv[1], "kernels") == 0) {
    try {
      return run_kernels();
    } catch (const std::exception& e) {
      std::printf("kernels: error: %s\n", e.what());
      return 1;
    }
  }
  if (argc == 2 && std::strcmp(argv[1], "cluster_race") == 0)
    return run_cluster_exchange<false>();
  if (argc == 2 && std::strcmp(argv[1], "cluster") == 0) {
    try {
      return run_cluster_exchange<true>() | run_cluster();
    } catch (const std::exception& e) {
      std::printf("cluster: error: %s\n", e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "usage: %s race|global_read|kernels|cluster_race|cluster\n", argv[0]);
  return 2;
}
