// Host-side checks of the launch orchestration (csrc/cuda/irnn_launch.cuh)
// that need no kernel to run: the launchers are compiled with g++ against
// the emulation's platform header, with IRNN_LAUNCH replaced by a recorder
// of every kernel's grid and parameters. tests/test_cuda_host.py builds and
// runs this file; it prints one line per failed check and exits non-zero
// when any failed.
#include <cstdio>
#include <vector>

#include "../emu/emu_platform.h"

#undef IRNN_LAUNCH
#undef IRNN_SET_MAX_SMEM
#define IRNN_LAUNCH(kernel, blocks, threads, smem, stream, params)    \
  record_launch(dim3(blocks), static_cast<int>(threads),             \
                static_cast<int64_t>(smem), (params))
#define IRNN_SET_MAX_SMEM(kernel, bytes) \
  do {                                   \
  } while (0)

namespace irnn_cuda {
template <typename S>
struct GemmParams;
}

struct GemmLaunch {
  dim3 grid;
  int threads;
  int64_t smem;
  const void* a;  // operand a's pointer (a_s or a_acc), null when unset
  const void* b;
  int64_t M, N, K;
};
std::vector<GemmLaunch> g_gemms;

template <typename S>
void record_launch(dim3 grid, int threads, int64_t smem,
                   const irnn_cuda::GemmParams<S>& p) {
  g_gemms.push_back(GemmLaunch{
      grid, threads, smem, p.a_s.ptr ? static_cast<const void*>(p.a_s.ptr)
                      : static_cast<const void*>(p.a_acc.ptr),
      p.b.ptr, p.M, p.N, p.K});
}
template <typename P>
void record_launch(dim3, int, int64_t, const P&) {}

#include "../../csrc/cuda/irnn_launch.cuh"

using irnn_cuda::BwdArgs;
using irnn_cuda::DeviceProps;
using irnn_cuda::DType;
using irnn_cuda::FwdArgs;
using irnn_cuda::LaunchConfig;

int g_failed = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++g_failed;
  }
}

// A 132-SM device with 48 KB of shared memory and no opt-in, so H = 256
// in float32 takes the large-H path.
const DeviceProps kDevice{132, 1024, 48 * 1024, 0};

// Every operand pointer of every GEMM of a large-H backward lies inside
// the buffer it addresses (the workspace or a tensor), in both directions.
void backward_operands_in_range(bool reverse) {
  const int64_t T = 3, B = 2, I = 1, H = 256;
  const LaunchConfig c = irnn_cuda::make_launch_config(
      kDevice, true, DType::kFloat, T, B, I, H, true, true);
  check(c.path == irnn_cuda::Path::kLargeH, "H = 256 takes the large-H path");
  std::vector<unsigned char> ws(static_cast<size_t>(c.workspace));
  std::vector<float> g_out(T * B * H), g_hn(B * H), x(T * B * I), h0(B * H),
      w_ih(H * I), w_hh(H * H), out(T * B * H), dx(T * B * I), dh0(B * H),
      dw_ih(H * I), dw_hh(H * H), db(H);
  BwdArgs a{};
  a.dtype = DType::kFloat;
  a.T = T; a.B = B; a.I = I; a.H = H;
  a.project = true; a.relu = true; a.reverse = reverse;
  a.g_out = g_out.data(); a.g_st = B * H; a.g_sb = H; a.g_hn = g_hn.data();
  a.x = x.data(); a.x_st = B * I; a.x_sb = I;
  a.h0 = h0.data(); a.w_ih = w_ih.data(); a.w_hh = w_hh.data();
  a.out = out.data(); a.o_st = B * H; a.o_sb = H;
  a.dx = dx.data(); a.dh0 = dh0.data(); a.dw_ih = dw_ih.data();
  a.dw_hh = dw_hh.data(); a.db = db.data();
  g_gemms.clear();
  irnn_cuda::run_backward<float>(a, c, ws.data(), nullptr);
  check(g_gemms.size() == static_cast<size_t>(T) + 5,
        "a large-H backward launches T step GEMMs and 5 more");
  const auto inside = [](const void* p, const void* base, size_t bytes) {
    const auto* c = static_cast<const unsigned char*>(p);
    const auto* b = static_cast<const unsigned char*>(base);
    return c >= b && c <= b + bytes;  // one past the end is a valid pointer
  };
  for (const GemmLaunch& g : g_gemms) {
    const bool a_ok = g.a == nullptr || inside(g.a, ws.data(), ws.size()) ||
                      inside(g.a, out.data(), out.size() * sizeof(float));
    check(a_ok, reverse ? "reverse: operand a inside its buffer"
                        : "forward: operand a inside its buffer");
    check(g.K == 0 || g.a != nullptr, "a GEMM with K > 0 has operand a");
  }
}

// The per-step GEMMs of a large-H forward at B = 16, H = 256 spread over
// the SMs: one output per thread of one warp, 4 x 8 outputs per block.
void small_batch_grid_covers_sms() {
  const int64_t T = 2, B = 16, I = 1, H = 256;
  const LaunchConfig c = irnn_cuda::make_launch_config(
      kDevice, false, DType::kFloat, T, B, I, H, true, true);
  std::vector<float> x(T * B * I), h0(B * H), w_ih(H * I), w_hh(H * H),
      out(T * B * H), h_n(B * H);
  FwdArgs a{};
  a.dtype = DType::kFloat;
  a.T = T; a.B = B; a.I = I; a.H = H;
  a.project = true; a.relu = true;
  a.x = x.data(); a.x_st = B * I; a.x_sb = I;
  a.h0 = h0.data(); a.w_ih = w_ih.data(); a.w_hh = w_hh.data();
  a.out = out.data(); a.out_st = B * H; a.out_sb = H; a.h_n = h_n.data();
  g_gemms.clear();
  irnn_cuda::run_forward<float>(a, c, nullptr, nullptr);
  check(g_gemms.size() == static_cast<size_t>(T), "one GEMM per step");
  for (const GemmLaunch& g : g_gemms) {
    const int64_t blocks = int64_t(g.grid.x) * g.grid.y * g.grid.z;
    std::printf("B=16 H=256 step GEMM: grid %u x %u = %lld blocks\n",
                g.grid.x, g.grid.y, static_cast<long long>(blocks));
    check(blocks == (B * H) / (irnn_cuda::kGemmSmallM * irnn_cuda::kGemmSmallN),
          "B = 16, H = 256: one block per 32 outputs (128 blocks)");
    check(g.threads == 32, "small tiles: one warp");
    check(g.smem == irnn_cuda::gemm_smem_bytes(sizeof(float), 4, 8),
          "small tiles: their shared memory");
  }
  // At B = 4096 the large tiles give 64 x 4 = 256 blocks, more than the
  // SMs: they are kept.
  const LaunchConfig big = irnn_cuda::make_launch_config(
      kDevice, false, DType::kFloat, 1, 4096, I, H, true, false);
  std::vector<float> xb(4096 * I), h0b(4096 * H), hnb(4096 * H);
  FwdArgs b = a;
  b.T = 1; b.B = 4096; b.x = xb.data(); b.x_st = 4096 * I; b.h0 = h0b.data();
  b.out = nullptr; b.h_n = hnb.data();
  std::vector<unsigned char> ws(static_cast<size_t>(big.workspace));
  g_gemms.clear();
  irnn_cuda::run_forward<float>(b, big, ws.data(), nullptr);
  check(g_gemms.size() == 1 && g_gemms[0].grid.x == 64 && g_gemms[0].grid.y == 4,
        "B = 4096, H = 256: 64 x 64 tiles (64 x 4 blocks)");
  check(g_gemms.size() == 1 && g_gemms[0].threads == irnn_cuda::kGemmThreads,
        "large tiles: 256 threads");
}

void steps_and_batch_limit() {
  const int64_t limit = int64_t(1) << 31;
  check(irnn_cuda::steps_and_batch_fit(limit - 1, limit - 1),
        "T = B = 2^31 - 1 fit an int");
  check(!irnn_cuda::steps_and_batch_fit(limit, 1), "T = 2^31 is refused");
  check(!irnn_cuda::steps_and_batch_fit(1, limit), "B = 2^31 is refused");
}

int main() {
  backward_operands_in_range(false);
  backward_operands_in_range(true);
  small_batch_grid_covers_sms();
  steps_and_batch_limit();
  std::printf("%d failed\n", g_failed);
  return g_failed == 0 ? 0 : 1;
}
