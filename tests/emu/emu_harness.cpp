// The emulation harness: csrc/cuda/irnn_launch.cuh (and through it the
// kernels) compiled with g++ against emu_platform.h, behind a plain C ABI
// that tests/test_emulation.py loads with ctypes. The same file is the body
// of the ThreadSanitizer and AddressSanitizer executables
// (emu_sanitizer_main.cpp includes it).
#include "emu_platform.h"

#include "../../csrc/cuda/irnn_launch.cuh"
#include "../../csrc/cuda/irnn_lt_map.h"

using irnn_cuda::BwdArgs;
using irnn_cuda::DeviceProps;
using irnn_cuda::DType;
using irnn_cuda::FwdArgs;
using irnn_cuda::LaunchConfig;

namespace {

char g_error[512];

void set_device(const DeviceProps& p) {
  emu::g_smem_default = p.smem_per_block;
  emu::g_smem_limit = std::max(p.smem_per_block, p.smem_per_block_optin);
  emu::g_max_threads = p.max_threads_per_block;
}

// A workspace's bytes, as the op allocates them (irnn_ops_cuda.cpp's
// workspace(): exactly, at least 1), so that AddressSanitizer sees the
// kernels' reads and writes against its true end.
size_t workspace_size(int64_t bytes) {
  return static_cast<size_t>(std::max<int64_t>(bytes, 1));
}

template <typename F>
int guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    std::snprintf(g_error, sizeof(g_error), "%s", e.what());
    return -1;
  }
}

}  // namespace

extern "C" {

const char* emu_last_error() { return g_error; }

// Sizes of the structs, so the ctypes mirrors can be checked.
int64_t emu_sizeof(int which) {
  switch (which) {
    case 0: return sizeof(DeviceProps);
    case 1: return sizeof(LaunchConfig);
    case 2: return sizeof(FwdArgs);
    default: return sizeof(BwdArgs);
  }
}

void emu_config(const DeviceProps* p, int backward, int dtype, int64_t T,
                int64_t B, int64_t I, int64_t H, int project,
                int store_sequence, LaunchConfig* out) {
  *out = irnn_cuda::make_launch_config(*p, backward != 0,
                                       static_cast<DType>(dtype), T, B, I, H,
                                       project != 0, store_sequence != 0);
}

// Runs irnn_forward with the configuration make_launch_config returns for
// the device; block_order_seed 0 runs blocks in index order.
int emu_forward(const DeviceProps* p, const FwdArgs* a,
                unsigned block_order_seed, LaunchConfig* cfg_out) {
  return guarded([&] {
    set_device(*p);
    emu::g_block_order_seed = block_order_seed;
    const LaunchConfig c = irnn_cuda::make_launch_config(
        *p, false, a->dtype, a->T, a->B, a->I, a->H, a->project,
        a->out != nullptr);
    *cfg_out = c;
    // With lengths, relayout copies follow the kernels' workspace; NaN too.
    std::vector<unsigned char> ws(
        workspace_size(irnn_cuda::fwd_workspace_bytes(*a, c)), 0xFF);
    switch (a->dtype) {
      case DType::kFloat: return irnn_cuda::run_forward<float>(*a, c, ws.data(), nullptr);
      case DType::kDouble: return irnn_cuda::run_forward<double>(*a, c, ws.data(), nullptr);
      case DType::kHalf: return irnn_cuda::run_forward<irnn_cuda::irnn_half>(*a, c, ws.data(), nullptr);
      case DType::kBFloat16: return irnn_cuda::run_forward<irnn_cuda::irnn_bf16>(*a, c, ws.data(), nullptr);
    }
    return -2;
  });
}

// A GemmHook for the emulation, one of two models: the contract of
// irnn_cuda_api.h as a plain row-major loop, or (lt_model) the call that
// irnn_ops_cuda.cpp makes, posed by lt_problem (irnn_lt_map.h) and
// evaluated as cublasLtMatmul's column-major D = op(A) op(B) + C, with the
// layout checks cuBLASLt makes (operand sizes agree, ld >= rows; a call
// that fails them returns 78). Both sum k in order in float. It counts its
// calls, and the call numbered fail_at (0-based; -1: none) returns 77
// without computing, which the launch must return.
struct PlainGemm {
  int64_t fail_at = -1, calls = 0;
  int64_t products = 0, max_batch = 0;  // over the calls, a batch's count
  bool lt_model = false;
  // The batch's products one by one (C only without a batch).
  static int plain(const irnn_cuda::HookGemm& g) {
    const int64_t batch = irnn_cuda::hook_batch(g);
    if (batch > 1 && g.c != nullptr) return 78;
    for (int64_t q = 0; q < batch; ++q) {
      const float* a = g.a + q * (batch > 1 ? g.a_bs : 0);
      const float* w = g.w + q * (batch > 1 ? g.w_bs : 0);
      float* d = g.d + q * (batch > 1 ? g.d_bs : 0);
      for (int64_t m = 0; m < g.M; ++m) {
        for (int64_t n = 0; n < g.N; ++n) {
          float acc = 0.0f;
          for (int64_t k = 0; k < g.K; ++k)
            acc += (g.a_t ? a[k * g.lda + m] : a[m * g.lda + k]) *
                   (g.w_t ? w[k * g.ldw + n] : w[n * g.ldw + k]);
          d[m * g.ldd + n] = acc + (g.c ? g.c[m * g.ldc + n] : 0.0f);
        }
      }
    }
    return 0;
  }
  static int lt(const irnn_cuda::HookGemm& g) {
    using irnn_cuda::LtMatrix;
    const irnn_cuda::LtProblem p = irnn_cuda::lt_problem(g);
    const auto op_rows = [](const LtMatrix& x, bool t) { return t ? x.cols : x.rows; };
    const auto op_cols = [](const LtMatrix& x, bool t) { return t ? x.rows : x.cols; };
    const auto stored = [](const LtMatrix& x) {
      return x.ld >= 1 && static_cast<uint64_t>(x.ld) >= x.rows;
    };
    if (op_rows(p.a, p.trans_a) != p.m || op_cols(p.a, p.trans_a) != p.k ||
        op_rows(p.b, p.trans_b) != p.k || op_cols(p.b, p.trans_b) != p.n ||
        p.d.rows != p.m || p.d.cols != p.n || !stored(p.a) || !stored(p.b) ||
        !stored(p.d) || p.batch < 1 ||
        (g.c != nullptr && (g.c != g.d || g.ldc != g.ldd || p.batch > 1)))
      return 78;  // irnn_ops_cuda.cpp's call: C is D itself, one layout
    // A strided batch: problem q's matrices q strides further (each
    // layout's STRIDED_BATCH_OFFSET; 0 without a batch).
    for (int32_t q = 0; q < p.batch; ++q) {
      const float* A = g.w + q * p.a_bs;  // cuBLASLt's A and B (lt_problem)
      const float* B = g.a + q * p.b_bs;
      float* D = g.d + q * p.d_bs;
      for (uint64_t j = 0; j < p.n; ++j) {
        for (uint64_t i = 0; i < p.m; ++i) {
          float acc = 0.0f;
          for (uint64_t l = 0; l < p.k; ++l)
            acc += (p.trans_a ? A[l + i * p.a.ld] : A[i + l * p.a.ld]) *
                   (p.trans_b ? B[j + l * p.b.ld] : B[l + j * p.b.ld]);
          const float c = g.c ? g.c[i + j * p.d.ld] : 0.0f;  // beta 1 or 0
          D[i + j * p.d.ld] = acc + c;
        }
      }
    }
    return 0;
  }
  irnn_cuda::GemmHook hook() {
    irnn_cuda::GemmHook h{};
    h.ctx = this;
    h.run = [](const irnn_cuda::HookGemm& g, void* c, void*) -> int {
      auto* st = static_cast<PlainGemm*>(c);
      if (st->calls++ == st->fail_at) return 77;
      const int64_t batch = irnn_cuda::hook_batch(g);
      st->products += batch;
      st->max_batch = batch > st->max_batch ? batch : st->max_batch;
      return st->lt_model ? lt(g) : plain(g);
    };
    return h;
  }
};

extern "C++" {  // a template, inside the C block
// run(args with `member` set to a PlainGemm's hook); calls[0] counts its
// calls, calls[1] their products (a batch's count each), calls[2] the
// largest batch.
template <typename Args, typename Run>
int with_hook(const Args* a, const irnn_cuda::GemmHook* Args::*member,
              int64_t fail_at, int lt_model, int64_t* calls, Run run) {
  PlainGemm plain;
  plain.fail_at = fail_at;
  plain.lt_model = lt_model != 0;
  const irnn_cuda::GemmHook hook = plain.hook();
  Args b = *a;
  b.*member = &hook;
  const int rc = run(&b);
  calls[0] = plain.calls;
  calls[1] = plain.products;
  calls[2] = plain.max_batch;
  return rc;
}
}  // extern "C++"

// emu_forward with a.step_gemm a PlainGemm.
int emu_forward_step_gemm(const DeviceProps* p, const FwdArgs* a,
                          unsigned block_order_seed, LaunchConfig* cfg_out,
                          int64_t fail_at, int lt_model, int64_t* calls) {
  return with_hook(a, &FwdArgs::step_gemm, fail_at, lt_model, calls,
                   [&](const FwdArgs* b) {
                     return emu_forward(p, b, block_order_seed, cfg_out);
                   });
}

int emu_backward(const DeviceProps* p, const BwdArgs* a,
                 unsigned block_order_seed, LaunchConfig* cfg_out) {
  return guarded([&] {
    set_device(*p);
    emu::g_block_order_seed = block_order_seed;
    const LaunchConfig c = irnn_cuda::make_launch_config(
        *p, true, a->dtype, a->T, a->B, a->I, a->H, a->project, true);
    *cfg_out = c;
    // Workspace starts as NaN: kernels must write before they read it.
    std::vector<unsigned char> ws(
        workspace_size(irnn_cuda::bwd_workspace_bytes(*a, c)), 0xFF);
    switch (a->dtype) {
      case DType::kFloat: return irnn_cuda::run_backward<float>(*a, c, ws.data(), nullptr);
      case DType::kDouble: return irnn_cuda::run_backward<double>(*a, c, ws.data(), nullptr);
      case DType::kHalf: return irnn_cuda::run_backward<irnn_cuda::irnn_half>(*a, c, ws.data(), nullptr);
      case DType::kBFloat16: return irnn_cuda::run_backward<irnn_cuda::irnn_bf16>(*a, c, ws.data(), nullptr);
    }
    return -2;
  });
}

// emu_backward with a.bwd_gemm a PlainGemm.
int emu_backward_gemm(const DeviceProps* p, const BwdArgs* a,
                      unsigned block_order_seed, LaunchConfig* cfg_out,
                      int64_t fail_at, int lt_model, int64_t* calls) {
  return with_hook(a, &BwdArgs::bwd_gemm, fail_at, lt_model, calls,
                   [&](const BwdArgs* b) {
                     return emu_backward(p, b, block_order_seed, cfg_out);
                   });
}

}  // extern "C"
