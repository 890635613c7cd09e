// The CUDA implementation of the irnn_cuda ops: argument checks (shared
// with the CPU backend), device guard, current stream, workspace from the
// caching allocator, and the launch through the torch-free launchers of
// irnn_cuda.cu. Nothing here synchronises with the host, so a training step
// can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#ifdef IRNN_WITH_CUBLASLT
#include <cublasLt.h>
#endif

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "../irnn_checks.h"
#include "irnn_cuda_api.h"
#include "irnn_lt_map.h"

namespace irnn_cuda {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default:
      TORCH_CHECK(false, "irnn_cuda: dtype ", t.scalar_type(),
                  " is not supported on CUDA (float32, float64, float16, "
                  "bfloat16 are)");
  }
}

// The kernels address [T,B,*] tensors through time and batch strides and
// need a unit inner stride (a batch_first view qualifies as is); a packed
// [N,*] tensor through its row stride.
at::Tensor unit_inner_stride(const at::Tensor& t) {
  const int64_t d = t.dim() - 1;
  return (t.size(d) == 1 || t.stride(d) == 1) ? t : t.contiguous();
}

// (time stride, batch stride) of a [T,B,*] tensor; for a packed [N,*] one
// (0, row stride), as FwdArgs and BwdArgs take them.
std::pair<int64_t, int64_t> strides(const at::Tensor& t) {
  return t.dim() == 2 ? std::make_pair(int64_t(0), t.stride(0))
                      : std::make_pair(t.stride(0), t.stride(1));
}

at::Tensor contig(const c10::optional<at::Tensor>& t) {
  return has(t) ? t->contiguous() : at::Tensor();
}

const void* ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

at::Tensor workspace(int64_t bytes, const at::Tensor& like) {
  return at::empty({bytes > 0 ? bytes : 1}, like.options().dtype(at::kByte));
}

// IRNN_CUDA_ROWS, for timing the register-resident variants the table
// passes over (DeviceProps::reg_rows): 1, 2, 4 or 8 rows per block, or
// none (today's kernels); unset or empty, the table's choice. Any other
// value is refused.
int rows_override() {
  const char* v = std::getenv("IRNN_CUDA_ROWS");
  const std::string want = v ? v : "";
  if (want.empty()) return 0;
  if (want == "none") return -1;
  TORCH_CHECK(want == "1" || want == "2" || want == "4" || want == "8",
              "IRNN_CUDA_ROWS=", want, " is not one of 1, 2, 4, 8, none");
  return std::stoi(want);
}

// The device's properties for make_launch_config, with IRNN_CUDA_ROWS; a
// failed query raises.
DeviceProps device_props(const at::Tensor& t, const char* op) {
  DeviceProps props{};
  const char* attribute = "";
  const int err = irnn_cuda_device_props(t.get_device(), &props, &attribute);
  TORCH_CHECK(err == 0, "irnn_cuda::", op, " (CUDA): cudaDeviceGetAttribute(",
              attribute, ") failed on device ", t.get_device(), ": ",
              irnn_cuda_error_string(err));
  props.reg_rows = rows_override();
  return props;
}

// A call that IRNN_CUDA_ROWS=R asks to run R rows per block, but that no
// register-resident variant of R rows covers, is refused, not run another
// way: a timing taken under it must be of what it names.
void check_rows_override(const DeviceProps& props, const LaunchConfig& c,
                         const IrnnSizes& s, const char* op) {
  const bool reg = c.path == Path::kRegisterFwd || c.path == Path::kRegisterBwd;
  TORCH_CHECK(props.reg_rows <= 0 || (reg && c.rows_per_block == props.reg_rows),
              "irnn_cuda::", op, " (CUDA): IRNN_CUDA_ROWS=", props.reg_rows,
              ", but no register-resident variant of ", props.reg_rows,
              " rows per block covers this call (H = ", s.H, ", I = ", s.I,
              s.project ? ", projected" : ", not projected",
              "; docs/cuda.md lists the variants); unset IRNN_CUDA_ROWS, "
              "which only serves to time the variants");
}

// The kernels index steps and batch rows with int.
void check_steps_and_batch(const IrnnSizes& s, const char* op) {
  TORCH_CHECK(steps_and_batch_fit(s.T, s.B), "irnn_cuda::", op,
              " (CUDA): the sequence length T = ", s.T, " and the batch B = ",
              s.B, " must each be below 2^31 = ", kMaxStepsOrBatch + 1,
              " on CUDA; split the sequence or the batch into several calls");
}

void check_launch(int err, const char* op) {
  TORCH_CHECK(err == 0, "irnn_cuda::", op, " (CUDA): kernel launch failed: ",
              irnn_cuda_error_string(err));
}

// n int64 values copied to `device` asynchronously, from a pinned buffer
// (the caching host allocator keeps it until the copy has run).
at::Tensor to_device_async(const int64_t* values, int64_t n,
                           const at::Device& device) {
  at::Tensor pinned = at::empty(
      {n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  std::memcpy(pinned.data_ptr<int64_t>(), values, n * sizeof(int64_t));
  return pinned.to(at::TensorOptions().device(device), /*non_blocking=*/true);
}

// The lengths of a call, on the input's device, and for the packed layout
// the offset of each step's rows. Lengths on the device are used in place
// and not read on the host (that would wait for the device): their values
// are not checked, and the kernels clamp them to 1..T. Lengths on the CPU
// are checked as on the CPU backend and copied once, asynchronously; that
// copy cannot be captured in a CUDA graph, which is refused. A packed input
// needs its lengths on the CPU (its T is their maximum).
struct DeviceLengths {
  at::Tensor lengths, offsets;
};
DeviceLengths device_lengths(const c10::optional<at::Tensor>& lengths,
                             const IrnnSizes& s, const at::Tensor& input,
                             bool packed, const char* op) {
  DeviceLengths d;
  if (!has(lengths)) return d;
  if (!lengths->device().is_cpu()) {
    TORCH_CHECK(lengths->device() == input.device(),
                "lengths must be on the CPU or on input's device ",
                input.device(), ", got ", lengths->device());
    d.lengths = lengths->contiguous();
    return d;
  }
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() ==
                  c10::cuda::CaptureStatus::None,
              "irnn_cuda.", op, ": lengths on the CPU cannot be captured in a "
              "CUDA graph (their copy to the device would be replayed from "
              "host memory); pass lengths on ", input.device(),
              " with the padded layout [T, B, I]");
  const at::Tensor l = checked_lengths(*lengths, s);
  d.lengths = to_device_async(l.data_ptr<int64_t>(), s.B, input.device());
  if (packed) {
    const std::vector<int64_t> off = packed_offsets(l, s, input.size(0));
    d.offsets = to_device_async(off.data(), s.T, input.device());
  }
  return d;
}

const int64_t* lengths_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<int64_t>() : nullptr;
}

// Which GEMM serves the per-step path's steps and the large-H and cluster
// backward's gradient GEMMs (GemmHook, irnn_cuda_api.h): IRNN_CUDA_GEMM=
// cublaslt or tiled; unset, cuBLASLt where the build has it. Any other
// value, or cublaslt in a build without it, is refused.
bool use_cublaslt() {
  const char* v = std::getenv("IRNN_CUDA_GEMM");
  const std::string want = v ? v : "";
#ifdef IRNN_WITH_CUBLASLT
  constexpr bool built = true;
#else
  constexpr bool built = false;
#endif
  TORCH_CHECK(want.empty() || want == "cublaslt" || want == "tiled",
              "IRNN_CUDA_GEMM=", want, " is not one of cublaslt, tiled");
  TORCH_CHECK(want != "cublaslt" || built,
              "IRNN_CUDA_GEMM=cublaslt, but irnn_cuda was built without "
              "cuBLASLt (cublasLt.h and libcublasLt were not found at build "
              "time); unset it, or rebuild with the CUDA toolkit's cuBLAS");
  return built && want != "tiled";
}

#ifdef IRNN_WITH_CUBLASLT
// The GemmHook by cuBLASLt, posed as lt_problem (irnn_lt_map.h) says:
// D^T = W A^T, its A our w and its B our a, which the emulation checks
// through a column-major model of the same call. Float32
// compute (CUBLAS_COMPUTE_32F: never TF32, as the kernels), no workspace
// (nothing to allocate, so a stream under capture takes it as it is), the
// default epilogue (the launcher applies the activation). A plan (descriptors and
// the heuristic's algorithm) is cached per shape, leading dimensions and
// pointer alignments; the heuristic is host-side only.
struct LtKey {
  int device;
  int64_t M, N, K, lda, ldw, ldd;  // C is D itself or absent (has_c)
  bool a_t, w_t, has_c;
  int align_a, align_w, align_d;
  int64_t batch, a_bs, w_bs, d_bs;
  auto tie() const {
    return std::tie(device, M, N, K, lda, ldw, ldd, a_t, w_t, has_c, align_a,
                    align_w, align_d, batch, a_bs, w_bs, d_bs);
  }
  bool operator<(const LtKey& o) const { return tie() < o.tie(); }
};

struct LtPlan {
  cublasLtHandle_t handle = nullptr;  // the device's, never destroyed
  cublasLtMatmulDesc_t op = nullptr;
  // C is D itself or absent (beta = 0): one layout serves both, as an
  // in-place call needs.
  cublasLtMatrixLayout_t w = nullptr, a = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~LtPlan() {
    if (op) cublasLtMatmulDescDestroy(op);
    for (auto l : {w, a, d})
      if (l) cublasLtMatrixLayoutDestroy(l);
  }
};

// The first failure of a call's hook, named for the error message.
struct LtCtx {
  const char* what = nullptr;
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
};

// The hook's code for a failed call: nonzero, and within the range of
// cudaError_t's values (0..16383), as the launcher returns it as one.
constexpr int kLtFailed = 15000;

// The alignment (a power of two, at most 256 bytes) of every float at p +
// q * stride elements: of a strided batch's matrices (stride 0: of p).
int pointer_align(const void* p, int64_t stride = 0) {
  const auto v = reinterpret_cast<uintptr_t>(p) |
                 static_cast<uintptr_t>(stride * int64_t(sizeof(float)));
  int align = 256;
  while (align > 1 && v % align != 0) align /= 2;
  return align;
}

class LtPlans {
 public:
  // The plan for g on the current device, or null with ctx set.
  std::shared_ptr<LtPlan> get(const HookGemm& g, int device, LtCtx& ctx) {
    const int64_t batch = hook_batch(g);
    const auto bs = [batch](int64_t stride) { return batch > 1 ? stride : 0; };
    LtKey k{device, g.M, g.N, g.K, g.lda, g.ldw, g.ldd, g.a_t, g.w_t,
            g.c != nullptr, pointer_align(g.a, bs(g.a_bs)),
            pointer_align(g.w, bs(g.w_bs)), pointer_align(g.d, bs(g.d_bs)),
            batch, bs(g.a_bs), bs(g.w_bs), bs(g.d_bs)};
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(k);
    if (it != plans_.end()) return it->second;
    cublasLtHandle_t h = handle(device, ctx);
    if (!h) return nullptr;
    auto plan = make(h, g, k, ctx);
    if (!plan) return nullptr;
    plan->handle = h;
    if (plans_.size() >= 512) plans_.clear();  // plans in use live on
    plans_.emplace(k, plan);
    return plan;
  }

 private:
  cublasLtHandle_t handle(int device, LtCtx& ctx) {
    auto it = handles_.find(device);
    if (it != handles_.end()) return it->second;
    cublasLtHandle_t h = nullptr;
    const cublasStatus_t st = cublasLtCreate(&h);
    if (st != CUBLAS_STATUS_SUCCESS) {
      ctx.what = "cublasLtCreate";
      ctx.status = st;
      return nullptr;
    }
    handles_.emplace(device, h);  // kept for the process's lifetime
    return h;
  }

  static std::shared_ptr<LtPlan> make(cublasLtHandle_t h, const HookGemm& g,
                                      const LtKey& k, LtCtx& ctx) {
    auto plan = std::make_shared<LtPlan>();
    const auto ok = [&](cublasStatus_t st, const char* what) {
      if (st == CUBLAS_STATUS_SUCCESS) return true;
      ctx.what = what;
      ctx.status = st;
      return false;
    };
    const LtProblem lp = lt_problem(g);  // D^T = W A^T, column-major
    const cublasOperation_t op_a = lp.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = lp.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    // A layout, and with a batch its count and stride.
    const auto layout = [&](cublasLtMatrixLayout_t* l, const LtMatrix& m,
                            int64_t stride, const char* what) {
      if (!ok(cublasLtMatrixLayoutCreate(l, CUDA_R_32F, m.rows, m.cols, m.ld),
              what))
        return false;
      if (lp.batch <= 1) return true;
      return ok(cublasLtMatrixLayoutSetAttribute(
                    *l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &lp.batch,
                    sizeof(lp.batch)),
                "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)") &&
             ok(cublasLtMatrixLayoutSetAttribute(
                    *l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                    sizeof(stride)),
                "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)");
    };
    if (!ok(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F),
            "cublasLtMatmulDescCreate") ||
        !ok(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA,
                                           &op_a, sizeof(op_a)),
            "cublasLtMatmulDescSetAttribute(TRANSA)") ||
        !ok(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB,
                                           &op_b, sizeof(op_b)),
            "cublasLtMatmulDescSetAttribute(TRANSB)") ||
        !ok(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                           &epi, sizeof(epi)),
            "cublasLtMatmulDescSetAttribute(EPILOGUE)") ||
        !layout(&plan->w, lp.a, lp.a_bs, "cublasLtMatrixLayoutCreate(W)") ||
        !layout(&plan->a, lp.b, lp.b_bs, "cublasLtMatrixLayoutCreate(A)") ||
        !layout(&plan->d, lp.d, lp.d_bs, "cublasLtMatrixLayoutCreate(D)"))
      return nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    if (!ok(cublasLtMatmulPreferenceCreate(&pref),
            "cublasLtMatmulPreferenceCreate"))
      return nullptr;
    const uint64_t no_workspace = 0;
    const uint32_t aligns[4] = {
        static_cast<uint32_t>(k.align_w), static_cast<uint32_t>(k.align_a),
        static_cast<uint32_t>(k.align_d), static_cast<uint32_t>(k.align_d)};
    const cublasLtMatmulPreferenceAttributes_t which[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    bool good = ok(cublasLtMatmulPreferenceSetAttribute(
                       pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                       &no_workspace, sizeof(no_workspace)),
                   "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE)");
    for (int i = 0; i < 4 && good; ++i)
      good = ok(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &aligns[i],
                                                     sizeof(aligns[i])),
                "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)");
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (good)
      good = ok(cublasLtMatmulAlgoGetHeuristic(h, plan->op, plan->w, plan->a,
                                               plan->d, plan->d, pref, 1,
                                               &result, &found),
                "cublasLtMatmulAlgoGetHeuristic");
    cublasLtMatmulPreferenceDestroy(pref);
    if (!good) return nullptr;
    if (found == 0 || result.state != CUBLAS_STATUS_SUCCESS) {
      ctx.what = "cublasLtMatmulAlgoGetHeuristic (no algorithm)";
      ctx.status = found == 0 ? CUBLAS_STATUS_NOT_SUPPORTED : result.state;
      return nullptr;
    }
    plan->algo = result.algo;
    return plan;
  }

  std::mutex mu_;
  std::map<LtKey, std::shared_ptr<LtPlan>> plans_;
  std::map<int, cublasLtHandle_t> handles_;
};

LtPlans& lt_plans() {
  static LtPlans* plans = new LtPlans();  // never destroyed: used at exit
  return *plans;
}

struct LtHook {
  int device;
  LtCtx ctx;
};

int lt_run(const HookGemm& g, void* ctx_ptr, void* stream) {
  auto* hook = static_cast<LtHook*>(ctx_ptr);
  LtCtx& ctx = hook->ctx;
  if (ctx.what) return kLtFailed;
  if (g.c != nullptr &&
      (g.c != g.d || g.ldc != g.ldd || hook_batch(g) > 1)) {  // the contract
    ctx.what = "the GEMM hook (C must be D itself, and absent in a batch)";
    ctx.status = CUBLAS_STATUS_INVALID_VALUE;
    return kLtFailed;
  }
  const std::shared_ptr<LtPlan> plan = lt_plans().get(g, hook->device, ctx);
  if (!plan) return kLtFailed;
  const float alpha = 1.0f, beta = g.c ? 1.0f : 0.0f;
  const cublasStatus_t st = cublasLtMatmul(
      plan->handle, plan->op, &alpha, g.w, plan->w, g.a, plan->a, &beta,
      g.d, plan->d, g.d, plan->d, &plan->algo, nullptr, 0,
      static_cast<cudaStream_t>(stream));
  if (st != CUBLAS_STATUS_SUCCESS) {
    ctx.what = "cublasLtMatmul";
    ctx.status = st;
    return kLtFailed;
  }
  return 0;
}
#endif

// The GemmHook of a call (null: the tiled GEMM), and after the launch the
// error of a failed library call.
// Not const and not copied: the hook points at this object's own context,
// which a failing call writes.
class CallGemm {
 public:
  CallGemm(const CallGemm&) = delete;
  CallGemm& operator=(const CallGemm&) = delete;
  explicit CallGemm(int device) {
#ifdef IRNN_WITH_CUBLASLT
    if (use_cublaslt()) {
      lt_.device = device;
      hook_.run = &lt_run;
      hook_.ctx = &lt_;
      use_ = true;
    }
#else
    (void)device;
    use_cublaslt();  // refuses IRNN_CUDA_GEMM=cublaslt
#endif
  }
  const GemmHook* hook() const { return use_ ? &hook_ : nullptr; }
  void check(const char* op) const {
#ifdef IRNN_WITH_CUBLASLT
    TORCH_CHECK(lt_.ctx.what == nullptr, "irnn_cuda::", op, " (CUDA): ",
                lt_.ctx.what, " failed: ", cublasLtGetStatusString(lt_.ctx.status),
                "; IRNN_CUDA_GEMM=tiled runs the tiled GEMM instead");
#else
    (void)op;
#endif
  }

 private:
  GemmHook hook_{};
  bool use_ = false;
#ifdef IRNN_WITH_CUBLASLT
  LtHook lt_{};
#endif
};

// After a launch: a failed one's CUDA error is read off (cudaGetLastError),
// so that no later, unrelated launch check reports it; then the library
// GEMM's failure, or the launch's, is raised.
void finish_launch(int err, const CallGemm& gemm, const char* op) {
  if (err != 0) (void)cudaGetLastError();
  gemm.check(op);
  check_launch(err, op);
}

// IRNN_CUDA_GRAPHS=1 (default 0: unmeasured so far): the large-H path's
// launches (a GEMM, or a library GEMM and a pointwise kernel, per step) are
// captured on a private stream into a CUDA graph and launched on the
// caller's stream as one graph. The executable graph is cached per device
// and call signature (sizes, flags, strides, launch configuration, GEMM
// choice, pointer alignments): a later call with the same pointers replays
// it as it is; other pointers update it in place (cudaGraphExecUpdate),
// or, if that is refused, re-instantiate it. A caller's stream that is
// capturing already (a user capturing a training step) gets the launches
// directly, into the caller's own graph. Any other value is refused.
bool use_graphs() {
  const char* v = std::getenv("IRNN_CUDA_GRAPHS");
  const std::string want = v ? v : "";
  TORCH_CHECK(want.empty() || want == "0" || want == "1",
              "IRNN_CUDA_GRAPHS=", want, " is not one of 0, 1");
  return want == "1";
}

// A call's signature for the graph cache: `shape` must match for an update
// to apply (what the launches are), `pointers` for a replay as it is.
struct GraphKey {
  std::vector<int64_t> shape, pointers;
  void value(int64_t v) { shape.push_back(v); }
  void pointer(const void* p) {
    const auto v = static_cast<int64_t>(reinterpret_cast<uintptr_t>(p));
    shape.push_back(p == nullptr ? -1 : v % 256);
    pointers.push_back(v);
  }
};

class GraphCache {
 public:
  // Launches `launch` as one graph on `user` (use_graphs, not capturing);
  // returns its error, or a CUDA error of the capture or the graph.
  template <typename F>
  int run(const GraphKey& key, int device, cudaStream_t user, F&& launch) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<int64_t> shape = key.shape;
    shape.push_back(device);
    auto it = entries_.find(shape);
    if (it == entries_.end()) {
      // Bounded: a new signature past 32 drops the others (a running graph
      // finishes first). Signatures seen once (a T that changes every
      // batch) count too, so they cannot pile up.
      if (entries_.size() >= 32) entries_.clear();
      it = entries_.emplace(std::move(shape), Entry{}).first;
    }
    Entry& e = it->second;
    if (e.exec != nullptr && e.pointers == key.pointers)
      return cudaGraphLaunch(e.exec, user);
    // A signature's first call launches directly: what it sets up once (the
    // cuBLASLt handle and plans, lazily loaded kernels) is not done inside
    // the capture, where it may not allocate. The next call captures.
    if (!e.seen) {
      e.seen = true;
      return launch(user);
    }
    cudaStream_t cap = nullptr;
    cudaError_t err = capture_stream(device, &cap);
    if (err != cudaSuccess) return err;
    if ((err = cudaStreamBeginCapture(cap, cudaStreamCaptureModeThreadLocal)) !=
        cudaSuccess)
      return err;
    const int rc = launch(cap);
    cudaGraph_t graph = nullptr;
    err = cudaStreamEndCapture(cap, &graph);
    if (rc != 0 || err != cudaSuccess) {
      if (graph) cudaGraphDestroy(graph);
      (void)cudaGetLastError();  // the capture's error, reported by rc
      e.drop();
      return rc != 0 ? rc : err;
    }
    if (e.exec != nullptr) {
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(e.exec, graph, &info) != cudaSuccess) {
        (void)cudaGetLastError();  // refused: instantiate anew
        e.drop();
      }
    }
    if (e.exec == nullptr)
      err = cudaGraphInstantiate(&e.exec, graph, 0);
    cudaGraphDestroy(graph);
    if (err != cudaSuccess) {
      e.exec = nullptr;
      return err;
    }
    e.pointers = key.pointers;
    return cudaGraphLaunch(e.exec, user);
  }

 private:
  struct Entry {
    cudaGraphExec_t exec = nullptr;
    std::vector<int64_t> pointers;
    bool seen = false;  // launched directly once
    Entry() = default;
    Entry(Entry&& o) noexcept
        : exec(o.exec), pointers(std::move(o.pointers)), seen(o.seen) {
      o.exec = nullptr;
    }
    Entry& operator=(Entry&& o) noexcept {
      if (this != &o) {
        drop();
        exec = o.exec;
        pointers = std::move(o.pointers);
        seen = o.seen;
        o.exec = nullptr;
      }
      return *this;
    }
    ~Entry() { drop(); }
    void drop() {
      if (exec) cudaGraphExecDestroy(exec);
      exec = nullptr;
    }
  };

  cudaError_t capture_stream(int device, cudaStream_t* out) {
    auto it = streams_.find(device);
    if (it != streams_.end()) {
      *out = it->second;
      return cudaSuccess;
    }
    const cudaError_t err =
        cudaStreamCreateWithFlags(out, cudaStreamNonBlocking);
    if (err == cudaSuccess) streams_.emplace(device, *out);  // never destroyed
    return err;
  }

  std::mutex mu_;
  std::map<std::vector<int64_t>, Entry> entries_;
  std::map<int, cudaStream_t> streams_;
};

GraphCache& graph_cache() {
  static GraphCache* cache = new GraphCache();  // never destroyed: used at exit
  return *cache;
}

// Runs `launch` on the op's stream: through the graph cache where
// use_graphs() and the path launches per step, else directly.
template <typename F>
int launch_on(const LaunchConfig& cfg, const GraphKey& key, int device,
              cudaStream_t stream, F&& launch) {
  if (!use_graphs() || cfg.path != Path::kLargeH) return launch(stream);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(stream, &status);
  if (err != cudaSuccess) return err;
  if (status != cudaStreamCaptureStatusNone) return launch(stream);
  return graph_cache().run(key, device, stream, launch);
}

void key_config(GraphKey& k, const LaunchConfig& c, const void* ws,
                bool library) {
  for (int64_t v : {int64_t(c.path), int64_t(c.rows_per_block),
                    int64_t(c.row_groups), int64_t(c.rows_per_thread),
                    int64_t(c.threads), int64_t(c.blocks), c.smem, c.workspace,
                    int64_t(c.smem_optin), int64_t(c.cluster),
                    int64_t(library)})
    k.value(v);
  k.pointer(ws);
}

GraphKey fwd_key(const FwdArgs& a, const LaunchConfig& c, const void* ws) {
  GraphKey k;
  for (int64_t v : {int64_t(0), int64_t(a.dtype), a.T, a.B, a.I, a.H,
                    int64_t(a.project), int64_t(a.relu), int64_t(a.reverse),
                    a.x_st, a.x_sb, a.out_st, a.out_sb})
    k.value(v);
  for (const void* p : {a.x, a.h0, a.w_ih, a.w_hh, a.b_ih, a.b_hh,
                        static_cast<const void*>(a.out),
                        static_cast<const void*>(a.h_n),
                        static_cast<const void*>(a.lengths),
                        static_cast<const void*>(a.offsets)})
    k.pointer(p);
  key_config(k, c, ws, a.step_gemm != nullptr);
  return k;
}

GraphKey bwd_key(const BwdArgs& a, const LaunchConfig& c, const void* ws) {
  GraphKey k;
  for (int64_t v : {int64_t(1), int64_t(a.dtype), a.T, a.B, a.I, a.H,
                    int64_t(a.project), int64_t(a.relu), int64_t(a.reverse),
                    a.g_st, a.g_sb, a.x_st, a.x_sb, a.o_st, a.o_sb})
    k.value(v);
  for (const void* p :
       {a.g_out, a.g_hn, a.x, a.h0, a.w_ih, a.w_hh, a.out,
        static_cast<const void*>(a.dx), static_cast<const void*>(a.dh0),
        static_cast<const void*>(a.dw_ih), static_cast<const void*>(a.dw_hh),
        static_cast<const void*>(a.db), static_cast<const void*>(a.lengths),
        static_cast<const void*>(a.offsets)})
    k.pointer(p);
  key_config(k, c, ws, a.bwd_gemm != nullptr);
  return k;
}

// The library GEMMs walk x as [T*B, *] rows (step_gemm_suits, and dW_ih in
// run_backward_grad_lib); a padded x that is not (a batch_first view) is
// copied when they will run on it (not on a relayout's copy), T*B*I
// elements against the T*B*H of the sequence they produce or read.
at::Tensor rows_for_library(const at::Tensor& x, const GemmHook* hook,
                            const LaunchConfig& cfg, DType dt, bool relayout) {
  const bool library = hook != nullptr && dt == DType::kFloat && !relayout &&
                       (cfg.path == Path::kLargeH ||
                        cfg.path == Path::kClusterBwd);
  if (!library || x.dim() != 3 || x.stride(0) == x.size(1) * x.stride(1))
    return x;
  return x.contiguous();
}

// The register-resident backward copies a 16-bit x, grad_output and stored
// sequence, the cluster backward grad_output and the stored sequence, and
// the register-resident and cluster forwards a 16-bit x that is not
// projected, into shared memory as the aligned 4-byte words that hold their
// elements (cp.async moves 4 bytes at least), so the word of the first
// element may start 2 bytes before it and the word of the last may end 2
// bytes after it. Inside the tensor's storage those bytes are read and
// dropped; a tensor whose words would reach outside its storage (an odd
// element count at its end, say) is copied, contiguous, into one with a
// spare element, so the kernel never reads outside an allocation (which a
// GPU tolerates within the page, but compute-sanitizer would report).
at::Tensor whole_words(const at::Tensor& t, const LaunchConfig& cfg) {
  if (!t.defined() || t.numel() == 0 || t.element_size() != 2 ||
      (cfg.path != Path::kRegisterBwd && cfg.path != Path::kRegisterFwd &&
       cfg.path != Path::kClusterBwd && cfg.path != Path::kClusterFwd))
    return t;
  int64_t last = 0;  // the last element's offset from the first
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const auto first = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const auto lo = reinterpret_cast<uintptr_t>(t.storage().data());
  const uintptr_t hi = lo + t.storage().nbytes();
  if ((first & ~uintptr_t{3}) >= lo && ((first + 2 * last) & ~uintptr_t{3}) + 4 <= hi)
    return t;
  at::Tensor padded = at::empty({t.numel() + 1}, t.options())
                          .narrow(0, 0, t.numel())
                          .view(t.sizes());
  padded.copy_(t);
  return padded;
}

std::tuple<at::Tensor, at::Tensor> irnn_forward_cuda(
    const at::Tensor& input, const at::Tensor& h0,
    const c10::optional<at::Tensor>& weight_ih, const at::Tensor& weight_hh,
    const c10::optional<at::Tensor>& bias_ih,
    const c10::optional<at::Tensor>& bias_hh, c10::string_view nonlinearity,
    bool reverse, bool store_sequence,
    const c10::optional<at::Tensor>& lengths) {
  const auto packed = packed_shape(input, lengths);
  const IrnnSizes s =
      check_forward_args(input, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                         std::string(nonlinearity), packed ? &*packed : nullptr);
  check_lengths_arg(lengths, s);
  check_steps_and_batch(s, "irnn_forward");
  const c10::cuda::CUDAGuard guard(input.device());
  const DType dt = dtype_of(input);
  const DeviceLengths len =
      device_lengths(lengths, s, input, packed.has_value(), "irnn_forward");
  const at::Tensor x = unit_inner_stride(input), h0c = h0.contiguous(),
                   w_ih = contig(weight_ih), w_hh = weight_hh.contiguous(),
                   b_ih = contig(bias_ih), b_hh = contig(bias_hh);
  const auto opts = input.options();
  // Padded: [T,B,H], zeros after each row's end. Packed: [N,H].
  at::Tensor out =
      packed ? at::empty({store_sequence ? input.size(0) : 0, s.H}, opts)
             : at::empty({store_sequence ? s.T : 0, s.B, s.H}, opts);
  at::Tensor h_n = at::empty({s.B, s.H}, opts);
  if (s.B == 0) return {out, h_n};
  const DeviceProps props = device_props(input, "irnn_forward");
  const LaunchConfig cfg = make_launch_config(
      props, false, dt, s.T, s.B, s.I, s.H, s.project, store_sequence);
  check_rows_override(props, cfg, s, "irnn_forward");
  CallGemm gemm(input.get_device());
  const at::Tensor xl = rows_for_library(
      x, gemm.hook(), cfg, dt, has(lengths) && (reverse || packed));
  // Not projected, the register-resident forward reads x's words.
  const at::Tensor xr = s.project ? xl : whole_words(xl, cfg);
  FwdArgs a{};
  a.step_gemm = gemm.hook();
  a.dtype = dt;
  a.T = s.T; a.B = s.B; a.I = s.I; a.H = s.H;
  a.project = s.project; a.relu = s.relu; a.reverse = reverse;
  a.x = ptr(xr);
  std::tie(a.x_st, a.x_sb) = strides(xr);
  a.h0 = ptr(h0c); a.w_ih = ptr(w_ih); a.w_hh = ptr(w_hh);
  a.b_ih = ptr(b_ih); a.b_hh = ptr(b_hh);
  a.out = store_sequence ? out.data_ptr() : nullptr;
  a.out_st = packed ? 0 : s.B * s.H; a.out_sb = s.H;
  a.h_n = h_n.data_ptr();
  a.lengths = lengths_ptr(len.lengths);
  a.offsets = lengths_ptr(len.offsets);
  at::Tensor ws = workspace(fwd_workspace_bytes(a, cfg), input);
  const int err = launch_on(
      cfg, fwd_key(a, cfg, ws.data_ptr()), input.get_device(),
      c10::cuda::getCurrentCUDAStream(input.get_device()).stream(),
      [&](cudaStream_t stream) {
        return irnn_forward_cuda_launch(a, cfg, ws.data_ptr(), stream);
      });
  finish_launch(err, gemm, "irnn_forward");
  return {out, h_n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
irnn_backward_cuda(const c10::optional<at::Tensor>& grad_output,
                   const c10::optional<at::Tensor>& grad_h_n,
                   const at::Tensor& input, const at::Tensor& h0,
                   const c10::optional<at::Tensor>& weight_ih,
                   const at::Tensor& weight_hh, const at::Tensor& output,
                   c10::string_view nonlinearity, bool reverse,
                   const c10::optional<at::Tensor>& lengths,
                   OutputMask output_mask) {
  const auto packed = packed_shape(input, lengths);
  const IrnnSizes s =
      check_backward_args(grad_output, grad_h_n, input, h0, weight_ih,
                          weight_hh, output, std::string(nonlinearity),
                          packed ? &*packed : nullptr);
  check_lengths_arg(lengths, s);
  check_steps_and_batch(s, "irnn_backward");
  const c10::cuda::CUDAGuard guard(input.device());
  const DType dt = dtype_of(input);
  const DeviceLengths len =
      device_lengths(lengths, s, input, packed.has_value(), "irnn_backward");
  const at::Tensor g_out = has(grad_output) ? unit_inner_stride(*grad_output)
                                            : at::Tensor(),
                   g_hn = contig(grad_h_n), x = unit_inner_stride(input),
                   h0c = h0.contiguous(), w_ih = contig(weight_ih),
                   w_hh = weight_hh.contiguous(),
                   out = unit_inner_stride(output);
  const auto opts = input.options();
  at::Tensor dx = packed ? at::empty({input.size(0), s.I}, opts)
                         : at::empty({s.T, s.B, s.I}, opts);
  at::Tensor dh0 = at::empty({s.B, s.H}, opts);
  at::Tensor dw_ih = at::empty(s.project ? at::IntArrayRef{s.H, s.I}
                                         : at::IntArrayRef{0}, opts);
  at::Tensor dw_hh = at::empty({s.H, s.H}, opts);
  at::Tensor db = at::empty({s.H}, opts);
  const DeviceProps props = device_props(input, "irnn_backward");
  const LaunchConfig cfg = make_launch_config(
      props, true, dt, s.T, s.B, s.I, s.H, s.project, true);
  check_rows_override(props, cfg, s, "irnn_backward");
  CallGemm gemm(input.get_device());
  const at::Tensor xr = whole_words(
      rows_for_library(x, gemm.hook(), cfg, dt, has(lengths)), cfg);  // relayout
  const at::Tensor g_outw = whole_words(g_out, cfg), outw = whole_words(out, cfg);
  BwdArgs a{};
  a.bwd_gemm = gemm.hook();
  a.dtype = dt;
  a.T = s.T; a.B = s.B; a.I = s.I; a.H = s.H;
  a.project = s.project; a.relu = s.relu; a.reverse = reverse;
  a.g_out = ptr(g_outw);
  if (g_outw.defined()) std::tie(a.g_st, a.g_sb) = strides(g_outw);
  a.g_hn = ptr(g_hn);
  a.x = ptr(xr);
  std::tie(a.x_st, a.x_sb) = strides(xr);
  a.h0 = ptr(h0c); a.w_ih = ptr(w_ih); a.w_hh = ptr(w_hh);
  a.out = ptr(outw);
  std::tie(a.o_st, a.o_sb) = strides(outw);
  a.dx = dx.data_ptr(); a.dh0 = dh0.data_ptr();
  a.dw_ih = s.project ? dw_ih.data_ptr() : nullptr;
  a.dw_hh = dw_hh.data_ptr(); a.db = db.data_ptr();
  a.lengths = lengths_ptr(len.lengths);
  a.offsets = lengths_ptr(len.offsets);
  at::Tensor ws = workspace(bwd_workspace_bytes(a, cfg), input);
  const int err = launch_on(
      cfg, bwd_key(a, cfg, ws.data_ptr()), input.get_device(),
      c10::cuda::getCurrentCUDAStream(input.get_device()).stream(),
      [&](cudaStream_t stream) {
        return irnn_backward_cuda_launch(a, cfg, ws.data_ptr(), stream);
      });
  finish_launch(err, gemm, "irnn_backward");
  // The kernels compute every gradient; an unwanted one is returned as the
  // empty [0] the schema promises.
  const auto result = [&](const at::Tensor& t, bool wanted) {
    return wanted ? t : at::empty({0}, input.options());
  };
  return {result(dx, output_mask[0]), result(dh0, output_mask[1]),
          result(dw_ih, output_mask[2] && s.project),
          result(dw_hh, output_mask[3]), result(db, output_mask[4])};
}

}  // namespace

TORCH_LIBRARY_IMPL(irnn_cuda, CUDA, m) {
  m.impl("irnn_forward", &irnn_forward_cuda);
  m.impl("irnn_backward", &irnn_backward_cuda);
}

}  // namespace irnn_cuda
