// Self-tests of the emulation's warp collectives and asynchronous copies
// (built and run by tests/test_emu_selftest.py, also under ThreadSanitizer).
//
//   emu_selftest shuffles       warp reductions, scans and broadcasts with
//                               every shuffle, widths 32 and 16, float, int
//                               and double, a partial last warp, __syncwarp
//   emu_selftest async          a two-stage cp.async pipeline read after its
//                               waits
//   emu_selftest shallow_wait   reads a group that irnn_cp_async_wait<1>
//                               left pending
//   emu_selftest missing_wait   reads copies with no wait at all
//   emu_selftest mask_mismatch  lane 3 shuffles with a mask without lane 31
//   emu_selftest source_outside a source lane outside the mask
//   emu_selftest lane_missing   lane 5 returns before a shuffle
//   emu_selftest smem_in_bounds every block reads its whole shared memory
//   emu_selftest smem_past_end  each block reads a float just past the end
//                               of its shared memory
//   emu_selftest smem_before_start  ... just before its start
//
// Each prints what the kernel produced ("value ...") or the launch's error
// ("error: ..."); the exit status is 0 when the launch succeeded. The two
// out-of-bounds reads end the process on a guard page, as a GPU faults.
#include "emu_platform.h"

#include <chrono>
#include <cstring>

namespace {

constexpr unsigned kFull = 0xffffffffu;

// Block of 80 threads: warps 0 and 1 full, warp 2 has lanes 0..15.
constexpr unsigned kThreads = 80;

unsigned warp_mask() {
  const unsigned live = std::min(32u, blockDim.x - threadIdx.x / 32 * 32);
  return live == 32 ? kFull : (1u << live) - 1;
}

struct ShuffleOut {
  float xor_sum[kThreads], down_sum[kThreads], bcast[kThreads];
  int scan[kThreads], half_sum[kThreads];
  double dsum[kThreads], after_syncwarp[kThreads];
};

IRNN_GLOBAL void shuffle_kernel(ShuffleOut* o) {
  const unsigned t = threadIdx.x, lane = t % 32, mask = warp_mask();
  const int span = mask == kFull ? 32 : 16;  // the partial warp's 16 lanes
  const float v = static_cast<float>(t + 1);
  float s = v;
  for (int d = span / 2; d > 0; d /= 2) s += __shfl_xor_sync(mask, s, d, span);
  o->xor_sum[t] = s;
  float r = v;  // down reduction: lane 0 ends with the sum of the live lanes
  for (int d = span / 2; d > 0; d /= 2) {
    const float other = __shfl_down_sync(mask, r, d, span);
    if (static_cast<int>(lane) + d < span) r += other;
  }
  o->down_sum[t] = r;
  o->bcast[t] = __shfl_sync(mask, v, 5);
  int x = static_cast<int>(t);  // inclusive scan
  for (int d = 1; d < 32; d *= 2) {
    const int y = __shfl_up_sync(mask, x, d);
    if (static_cast<int>(lane) >= d) x += y;
  }
  o->scan[t] = x;
  int h = static_cast<int>(t);  // sums over 16-lane segments
  for (int d = 8; d > 0; d /= 2) h += __shfl_xor_sync(mask, h, d, 16);
  o->half_sum[t] = h;
  double ds = 0.5 * t;
  for (int d = 1; d < span; d *= 2) ds += __shfl_xor_sync(mask, ds, d, span);
  o->dsum[t] = ds;
  double* smem = irnn_cuda::irnn_dyn_smem<double>();
  smem[t] = 2.0 * t;
  __syncwarp(mask);
  o->after_syncwarp[t] = smem[t / 32 * 32 + (lane + 1) % (mask == kFull ? 32 : 16)];
}

int run_shuffles() {
  static ShuffleOut o;
  ShuffleOut* p = &o;
  IRNN_LAUNCH(shuffle_kernel, 2, kThreads, kThreads * sizeof(double), nullptr, p);
  int bad = 0;
  auto expect = [&](const char* what, unsigned t, double got, double want) {
    if (got != want && bad++ < 10)
      std::printf("mismatch %s[%u]: %g, expected %g\n", what, t, got, want);
  };
  for (unsigned t = 0; t < kThreads; ++t) {
    const unsigned w = t / 32 * 32, lane = t % 32;
    const unsigned n = std::min(32u, kThreads - w);  // live lanes of the warp
    const double warp_sum = n * (w + 1) + n * (n - 1) / 2.0;  // sum of t + 1
    expect("xor_sum", t, o.xor_sum[t], warp_sum);
    if (lane == 0) expect("down_sum", t, o.down_sum[t], warp_sum);
    expect("bcast", t, o.bcast[t], w + 5 + 1);
    expect("scan", t, o.scan[t], (lane + 1) * w + lane * (lane + 1) / 2.0);
    const unsigned seg = t / 16 * 16;
    expect("half_sum", t, o.half_sum[t], 16 * seg + 120);
    expect("dsum", t, o.dsum[t], 0.5 * (n * w + n * (n - 1) / 2.0));
    expect("after_syncwarp", t, o.after_syncwarp[t],
           2.0 * (w + (lane + 1) % (n == 32 ? 32 : 16)));
  }
  std::printf("value shuffles %s (%d mismatches)\n", bad ? "wrong" : "right", bad);
  return bad ? 1 : 0;
}

// Each thread copies 4 floats per stage into its shared slot; stage 1 waits
// as the kernel says, then every thread reads its neighbour's slots.
enum class Wait { kCorrect, kShallow, kMissing };

struct AsyncParams {
  const float* src;  // [2][64 * 4]
  float* out;        // [64]
  Wait wait;
};

IRNN_GLOBAL void async_kernel(AsyncParams p) {
  const unsigned t = threadIdx.x, n = blockDim.x;
  float* smem = irnn_cuda::irnn_dyn_smem<float>();
  for (int stage = 0; stage < 2; ++stage) {
    irnn_cuda::irnn_cp_async<16>(smem + (stage * n + t) * 4,
                                 p.src + (stage * n + t) * 4);
    irnn_cuda::irnn_cp_async_commit();
  }
  if (p.wait == Wait::kCorrect) irnn_cuda::irnn_cp_async_wait<0>();
  if (p.wait == Wait::kShallow) irnn_cuda::irnn_cp_async_wait<1>();
  __syncthreads();
  const unsigned u = (t + 1) % n;
  float s = 0;
  for (int i = 0; i < 8; ++i) s += smem[(i / 4 * n + u) * 4 + i % 4];
  p.out[t] = s;
  if (p.wait == Wait::kShallow) {
    __syncthreads();  // every read is done before the late copies land
    irnn_cuda::irnn_cp_async_wait<0>();
  }
}

int run_async(Wait wait) {
  constexpr unsigned n = 64;
  std::vector<float> src(2 * n * 4), out(n);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i % 7);
  const AsyncParams p{src.data(), out.data(), wait};
  try {
    IRNN_LAUNCH(async_kernel, 1, n, 2 * n * 4 * sizeof(float), nullptr, p);
  } catch (const std::exception& e) {
    std::printf("value out[0] %g\n", out[0]);
    throw;
  }
  int bad = 0;
  for (unsigned t = 0; t < n; ++t) {
    float want = 0;
    for (int i = 0; i < 8; ++i) want += src[(i / 4 * n + (t + 1) % n) * 4 + i % 4];
    bad += !(out[t] == want);
  }
  std::printf("value out[0] %g; %d of %u wrong\n", out[0], bad, n);
  return bad ? 1 : 0;
}

IRNN_GLOBAL void mask_mismatch_kernel(float* out) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned mask = lane == 3 ? 0x7fffffffu : kFull;
  out[threadIdx.x] = __shfl_xor_sync(mask, 1.0f, 1);
}

IRNN_GLOBAL void source_outside_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.0f, 20);
}

IRNN_GLOBAL void lane_missing_kernel(float* out) {
  if (threadIdx.x % 32 == 5) return;
  out[threadIdx.x] = __shfl_down_sync(kFull, 1.0f, 1);
}

template <void (*Kernel)(float*)>
int run_planted() {
  std::vector<float> out(64);
  float* p = out.data();
  IRNN_LAUNCH(Kernel, 2, 64, 0, nullptr, p);
  std::printf("value no error\n");
  return 0;
}

// Two blocks of 32 threads with 256 bytes of shared memory each: thread t
// reads float `t + offset`, a raw pointer access as the kernels make.
struct SmemReadParams {
  float* out;
  int offset;
};

IRNN_GLOBAL void smem_read_kernel(SmemReadParams p) {
  const float* smem = irnn_cuda::irnn_dyn_smem<float>();
  p.out[blockIdx.x * blockDim.x + threadIdx.x] =
      smem[static_cast<int>(threadIdx.x) * 2 + p.offset];
}

int run_smem_read(int offset) {
  std::vector<float> out(64);
  const SmemReadParams p{out.data(), offset};
  // Two launches, so that each block's memory is against the guard page on
  // each side once.
  for (int launch = 0; launch < 2; ++launch)
    IRNN_LAUNCH(smem_read_kernel, 2, 32, 64 * sizeof(float), nullptr, p);
  int nan = 0;
  for (float v : out) nan += std::isnan(v);
  std::printf("value %d of 64 NaN\n", nan);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s TEST [warp_timeout_ms]\n", argv[0]);
    return 2;
  }
  if (argc > 2) emu::g_warp_timeout_ms = std::atoi(argv[2]);
  const std::string what = argv[1];
  const auto start = std::chrono::steady_clock::now();
  int rc = 2;
  try {
    if (what == "shuffles") rc = run_shuffles();
    else if (what == "async") rc = run_async(Wait::kCorrect);
    else if (what == "shallow_wait") rc = run_async(Wait::kShallow);
    else if (what == "missing_wait") rc = run_async(Wait::kMissing);
    else if (what == "mask_mismatch") rc = run_planted<mask_mismatch_kernel>();
    else if (what == "source_outside") rc = run_planted<source_outside_kernel>();
    else if (what == "lane_missing") rc = run_planted<lane_missing_kernel>();
    else if (what == "smem_in_bounds") rc = run_smem_read(0);
    else if (what == "smem_past_end") rc = run_smem_read(2);
    else if (what == "smem_before_start") rc = run_smem_read(-1);
    else std::fprintf(stderr, "unknown test %s\n", what.c_str());
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    rc = 1;
  }
  std::printf("seconds %.3f\n", std::chrono::duration<double>(
                                    std::chrono::steady_clock::now() - start).count());
  return rc;
}
