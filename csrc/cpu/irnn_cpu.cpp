// CPU implementation of the irnn_cuda ops (docs/ops.md): argument checks,
// dtype handling and weight packing here; the time loops are the fused
// kernels of irnn_cpu_kernels.h (AVX2+FMA when the CPU has it, else the
// portable build), one batch slice per thread.
//
// float16/bfloat16 arguments are computed in float32 and cast back. The
// float32 kernels run with denormals flushed to zero (irnn_cpu_denormals.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/strides.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../irnn_checks.h"
#include "irnn_cpu_denormals.h"
#include "irnn_cpu_params.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace irnn_cuda {
namespace {

// The widest kernels the CPU supports: AVX-512 (float32; float64 keeps
// AVX2), AVX2, or the portable build. IRNN_CPU_KERNELS=avx2 or =generic caps
// the choice there, to test the narrower builds on a wider CPU; any other
// value is refused when the kernels are first used, so a misspelt cap never
// passes silently.
enum class Isa { kGeneric, kAvx2, kAvx512, kBadEnv };
Isa cpu_isa() {
  static const Isa isa = [] {
    Isa cap = Isa::kAvx512;
    if (const char* env = std::getenv("IRNN_CPU_KERNELS")) {
      if (std::strcmp(env, "generic") == 0) {
        cap = Isa::kGeneric;
      } else if (std::strcmp(env, "avx2") == 0) {
        cap = Isa::kAvx2;
      } else if (std::strcmp(env, "avx512") != 0 && env[0] != '\0') {
        return Isa::kBadEnv;
      }
    }
    if (cap == Isa::kAvx512 && cpu_avx512::supported()) return Isa::kAvx512;
    if (cap != Isa::kGeneric && cpu_avx2::supported()) return Isa::kAvx2;
    return Isa::kGeneric;
  }();
  return isa;
}

void check_isa() {
  TORCH_CHECK(cpu_isa() != Isa::kBadEnv, "IRNN_CPU_KERNELS=",
              std::getenv("IRNN_CPU_KERNELS"),
              " is not one of avx512, avx2, generic (unset it to use the "
              "widest kernels this CPU supports)");
}

template <typename S>
KernelTable<S> kernels();
template <>
KernelTable<float> kernels<float>() {
  check_isa();
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return cpu_avx512::table_float();
    case Isa::kAvx2:
      return cpu_avx2::table_float();
    default:
      return cpu_generic::table_float();
  }
}
template <>
KernelTable<double> kernels<double>() {
  check_isa();
  return cpu_isa() != Isa::kGeneric ? cpu_avx2::table_double()
                                    : cpu_generic::table_double();
}

// Low-precision arguments run in float32; this is the dtype the loops see.
at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

at::Tensor as_compute(const c10::optional<at::Tensor>& t, at::ScalarType ct) {
  return has(t) ? t->to(ct).contiguous() : at::Tensor();
}

// `t` in `dt` with row-major strides. A size-1 dimension's stride counts
// too: a gradient narrowed out of a padded buffer is "contiguous" with a
// stride of Hp there, which autograd keeps and DDP's bucket views reject.
at::Tensor row_major(const at::Tensor& t, at::ScalarType dt) {
  const auto want = c10::contiguous_strides(t.sizes());
  if (t.scalar_type() == dt && t.strides() == at::IntArrayRef(want)) return t;
  return at::empty(t.sizes(), t.options().dtype(dt)).copy_(t);
}

template <typename S>
S* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<S>() : nullptr;
}

// [rows, Hp] zero-padded copy of `w` ([rows, H] in any dtype and layout).
at::Tensor pack_rows(const at::Tensor& w, int64_t hp, at::ScalarType ct) {
  at::Tensor packed = at::zeros({w.size(0), hp}, w.options().dtype(ct));
  packed.narrow(1, 0, w.size(1)).copy_(w);
  return packed;
}

// Asks Linux to back a fresh, untouched buffer with transparent huge pages
// where the system allows it (THP "madvise" mode). A [T,B,H] sequence at
// T=784, B=1024, H=100 is 321 MB: faulting it in 4 KiB pages costs more than
// writing it. The hint is dropped where it does not apply.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (t.nbytes() < 4 * kHuge) return;
  const auto begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHuge - 1);
  if (last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)t;
#endif
}

// The batch is split into one contiguous slice per thread; per-slice partial
// gradients are summed in slice order, so results depend only on the thread
// count (and the lengths).
int64_t num_slices(int64_t B) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B));
}

// Slice k is rows [bounds[k], bounds[k+1]). Without lengths the rows are
// split evenly; with lengths the steps are: each slice gets about the same
// sum of lengths, so a thread whose rows end early has more of them.
std::vector<int64_t> slice_bounds(int64_t B, int64_t slices,
                                  const int64_t* lengths) {
  std::vector<int64_t> bounds(slices + 1);
  for (int64_t k = 0; k <= slices; ++k) bounds[k] = k * B / slices;
  if (lengths == nullptr) return bounds;
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) total += lengths[b];
  int64_t b = 0, done = 0;
  for (int64_t k = 1; k < slices; ++k) {
    // Move the boundary past every row whose midpoint lies before k/slices
    // of the total.
    while (b < B && 2 * (done + lengths[b]) - lengths[b] <= 2 * total * k / slices) {
      done += lengths[b];
      ++b;
    }
    bounds[k] = b;
  }
  return bounds;
}

// Each thread runs its float32 slices with denormals flushed to zero.
template <typename S, class F>
void for_each_slice(const std::vector<int64_t>& bounds, const F& f) {
  const int64_t slices = static_cast<int64_t>(bounds.size()) - 1;
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    const FlushDenormalsGuard flush(std::is_same_v<S, float>);
    for (int64_t s = begin; s < end; ++s) f(s, bounds[s], bounds[s + 1]);
  });
}

// The lengths argument of a CPU call: on the CPU, and checked by
// checked_lengths. Returns a contiguous copy, or an undefined tensor when
// absent.
at::Tensor cpu_lengths(const c10::optional<at::Tensor>& lengths,
                       const IrnnSizes& s) {
  if (!has(lengths)) return at::Tensor();
  TORCH_CHECK(lengths->device().is_cpu(),
              "lengths must be on the CPU for CPU input, got ",
              lengths->device());
  return checked_lengths(*lengths, s);
}

const int64_t* lengths_ptr(const at::Tensor& l) {
  return l.defined() ? l.data_ptr<int64_t>() : nullptr;
}

// [T,B,1] true where step t of row b is padding (t >= lengths[b]).
at::Tensor padding_mask(const at::Tensor& lengths, int64_t T) {
  return at::arange(T, lengths.options()).view({T, 1, 1}).ge(
      lengths.view({1, -1, 1}));
}

// Sum over dim 0 of a [slices, ...] tensor, in slice order.
at::Tensor sum_slices(const at::Tensor& parts) {
  at::Tensor total = parts[0].clone();
  for (int64_t s = 1; s < parts.size(0); ++s) total.add_(parts[s]);
  return total;
}

std::tuple<at::Tensor, at::Tensor> irnn_forward_cpu(
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
  const at::Tensor len = cpu_lengths(lengths, s);
  const std::vector<int64_t> offsets =
      packed ? packed_offsets(len, s, input.size(0)) : std::vector<int64_t>();
  const auto ct = compute_type(input.scalar_type());
  const auto opts = input.options().dtype(ct);
  const at::Tensor x = input.to(ct).contiguous(), h0c = h0.to(ct).contiguous();
  // Padded with lengths: the padded steps are zero, as pad_packed_sequence
  // gives. Packed: [N, H], one row per valid step.
  at::Tensor out;
  if (packed) {
    out = at::empty({store_sequence ? input.size(0) : 0, s.H}, opts);
  } else {
    // The kernels write the padded steps' zeros.
    out = at::empty({store_sequence ? s.T : 0, s.B, s.H}, opts);
  }
  advise_huge_pages(out);
  at::Tensor h_n = at::empty({s.B, s.H}, opts);
  at::Tensor scratch = store_sequence ? at::Tensor() : at::empty({s.B, s.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(ct, "irnn_forward_cpu", [&] {
    const KernelTable<scalar_t> k = kernels<scalar_t>();
    const int64_t hp = (s.H + k.lanes - 1) / k.lanes * k.lanes;
    const at::Tensor whh_t = pack_rows(weight_hh.t(), hp, ct);
    const at::Tensor wih_t =
        s.project ? pack_rows(weight_ih->t(), hp, ct) : at::Tensor();
    at::Tensor bias = at::zeros({hp}, opts);
    if (has(bias_ih)) bias.narrow(0, 0, s.H).add_(bias_ih->to(ct));
    if (has(bias_hh)) bias.narrow(0, 0, s.H).add_(bias_hh->to(ct));
    FwdParams<scalar_t> p{};
    p.T = s.T;
    p.B = s.B;
    p.I = s.I;
    p.H = s.H;
    p.Hp = hp;
    p.reverse = reverse;
    p.x = x.data_ptr<scalar_t>();
    p.h0 = h0c.data_ptr<scalar_t>();
    p.wih_t = ptr_or_null<scalar_t>(wih_t);
    p.whh_t = whh_t.data_ptr<scalar_t>();
    p.bias = bias.data_ptr<scalar_t>();
    p.out = store_sequence ? out.data_ptr<scalar_t>() : nullptr;
    p.h_n = h_n.data_ptr<scalar_t>();
    p.scratch = ptr_or_null<scalar_t>(scratch);
    p.lengths = lengths_ptr(len);
    p.offsets = packed ? offsets.data() : nullptr;
    for_each_slice<scalar_t>(
        slice_bounds(s.B, num_slices(s.B), p.lengths),
        [&](int64_t, int64_t b0, int64_t b1) { k.forward(p, s.relu, b0, b1); });
  });
  return {out.to(input.scalar_type()), h_n.to(input.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
irnn_backward_cpu(const c10::optional<at::Tensor>& grad_output,
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
  const at::Tensor len = cpu_lengths(lengths, s);
  const std::vector<int64_t> offsets =
      packed ? packed_offsets(len, s, input.size(0)) : std::vector<int64_t>();
  // The per-step buffers: [T, B, *] padded, or [N, *] packed.
  const int64_t steps = packed ? input.size(0) : s.T * s.B;
  const auto per_step = [&](int64_t f) {
    return packed ? std::vector<int64_t>{steps, f}
                  : std::vector<int64_t>{s.T, s.B, f};
  };
  const auto ct = compute_type(input.scalar_type());
  const auto opts = input.options().dtype(ct);
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H;
  const bool want_dx = output_mask[0], want_dh0 = output_mask[1],
             want_dwih = output_mask[2] && s.project,
             want_dwhh = output_mask[3], want_db = output_mask[4];
  const bool fuse_ih = s.project && I <= kMaxFusedInput;
  const at::Tensor g_out = as_compute(grad_output, ct),
                   g_hn = as_compute(grad_h_n, ct),
                   h0c = h0.to(ct).contiguous(),
                   out = output.to(ct).contiguous();
  at::Tensor x = (s.project && (want_dwih || (want_dx && !fuse_ih)))
                     ? input.to(ct).contiguous()
                     : at::Tensor();
  // Every step's da is kept only where it is an output (the gradient of a
  // projected input) or feeds the GEMMs of a large input. With lengths the
  // kernels write zeros at its padded steps (and dx's).
  const bool keep_da = s.project ? (!fuse_ih && (want_dx || want_dwih)) : want_dx;
  at::Tensor da = keep_da ? at::empty(per_step(H), opts) : at::Tensor();
  if (keep_da) advise_huge_pages(da);
  at::Tensor da_scratch = keep_da ? at::Tensor() : at::empty({2, B, H}, opts);
  at::Tensor dh0 = want_dh0 ? at::empty({B, H}, opts) : at::Tensor();
  at::Tensor dx = (fuse_ih && want_dx) ? at::empty(per_step(I), opts) : at::Tensor();
  at::Tensor db, dw_ih_t, dw_hh;
  AT_DISPATCH_FLOATING_TYPES(ct, "irnn_backward_cpu", [&] {
    const KernelTable<scalar_t> k = kernels<scalar_t>();
    const int64_t hp = (H + k.lanes - 1) / k.lanes * k.lanes;
    const auto bounds = slice_bounds(B, num_slices(B), lengths_ptr(len));
    const int64_t slices = static_cast<int64_t>(bounds.size()) - 1;
    const at::Tensor whh = pack_rows(weight_hh, hp, ct);
    const at::Tensor wih_t = (fuse_ih && want_dx)
                                 ? pack_rows(weight_ih->t(), hp, ct)
                                 : at::Tensor();
    at::Tensor db_part = want_db ? at::zeros({slices, hp}, opts) : at::Tensor();
    at::Tensor dwhh_part =
        want_dwhh ? at::zeros({slices, H, hp}, opts) : at::Tensor();
    at::Tensor gather = at::empty({slices, 2, kBackwardChunk, H}, opts);
    at::Tensor dwih_part = (fuse_ih && want_dwih)
                               ? at::zeros({slices, I, hp}, opts)
                               : at::Tensor();
    BwdParams<scalar_t> p{};
    p.T = T;
    p.B = B;
    p.I = I;
    p.H = H;
    p.Hp = hp;
    p.reverse = reverse;
    p.g_out = ptr_or_null<scalar_t>(g_out);
    p.g_hn = ptr_or_null<scalar_t>(g_hn);
    p.x = (fuse_ih && want_dwih) ? x.data_ptr<scalar_t>() : nullptr;
    p.h0 = h0c.data_ptr<scalar_t>();
    p.wih_t = ptr_or_null<scalar_t>(wih_t);
    p.whh = whh.data_ptr<scalar_t>();
    p.out = out.data_ptr<scalar_t>();
    p.da = ptr_or_null<scalar_t>(da);
    p.da_scratch = ptr_or_null<scalar_t>(da_scratch);
    p.dx = ptr_or_null<scalar_t>(dx);
    p.dh0 = ptr_or_null<scalar_t>(dh0);
    p.db_part = ptr_or_null<scalar_t>(db_part);
    p.dwhh_part = ptr_or_null<scalar_t>(dwhh_part);
    p.gather = gather.data_ptr<scalar_t>();
    p.dwih_part = ptr_or_null<scalar_t>(dwih_part);
    p.lengths = lengths_ptr(len);
    p.offsets = packed ? offsets.data() : nullptr;
    for_each_slice<scalar_t>(bounds, [&](int64_t slice, int64_t b0, int64_t b1) {
      k.backward(p, s.relu, b0, b1, slice);
    });
    if (want_db) db = sum_slices(db_part).narrow(0, 0, H);
    if (want_dwhh) dw_hh = sum_slices(dwhh_part).narrow(1, 0, H);
    if (fuse_ih && want_dwih) dw_ih_t = sum_slices(dwih_part).narrow(1, 0, H);
  });
  at::Tensor dw_ih;
  if (!s.project) {
    dx = da;
  } else if (fuse_ih) {
    if (want_dwih) dw_ih = dw_ih_t.t();
  } else {
    // A large input's gradients are GEMMs over all steps. da is zero at
    // padded steps; x there may hold anything (NaN included), so it is
    // zeroed before it meets da.
    const at::Tensor da2 = da.defined() ? da.view({steps, H}) : at::Tensor();
    if (want_dx) dx = at::mm(da2, weight_ih->to(ct)).view(per_step(I));
    if (want_dwih) {
      const at::Tensor xv = len.defined() && !packed
                                ? x.masked_fill(padding_mask(len, T), 0)
                                : x;
      dw_ih = at::mm(da2.t(), xv.view({steps, I}));
    }
  }
  const auto dt = input.scalar_type();
  // An unwanted gradient (or dW_ih without weight_ih) is an empty [0].
  const auto result = [&](const at::Tensor& t, bool wanted) {
    return wanted ? row_major(t, dt) : at::empty({0}, input.options());
  };
  return {result(dx, want_dx), result(dh0, want_dh0), result(dw_ih, want_dwih),
          result(dw_hh, want_dwhh), result(db, want_db)};
}

}  // namespace

const char* cpu_kernels_name() {
  switch (cpu_isa()) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kGeneric:
      return "generic";
    default:
      return "invalid IRNN_CPU_KERNELS";
  }
}

TORCH_LIBRARY_IMPL(irnn_cuda, CPU, m) {
  m.impl("irnn_forward", &irnn_forward_cpu);
  m.impl("irnn_backward", &irnn_backward_cpu);
}

}  // namespace irnn_cuda
