// CPU implementation of the irnn_cuda ops: a straightforward loop over time,
// batch and hidden units on contiguous copies of the arguments.
// float16/bfloat16 arguments are computed in float32 and cast back.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "../irnn_checks.h"

namespace irnn_cuda {
namespace {

template <typename T>
inline T activate(T a, bool relu) {
  // `a < 0 ? 0 : a` keeps NaN, unlike max(a, 0).
  return relu ? (a < T(0) ? T(0) : a) : std::tanh(a);
}

// d phi / d a from the stored output h = phi(a); relu' is 0 at 0 as in
// PyTorch.
template <typename T>
inline T activate_grad(T g, T h, bool relu) {
  return relu ? (h > T(0) ? g : T(0)) : g * (T(1) - h * h);
}

inline at::Tensor contig(const c10::optional<at::Tensor>& t) {
  return has(t) ? t->contiguous() : at::Tensor();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
void forward_loop(const IrnnSizes& s, const T* x, const T* h0, const T* w_ih,
                  const T* w_hh, const T* b_ih, const T* b_hh, bool reverse,
                  T* out, T* h_n) {
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H;
  std::vector<T> ping(B * H), pong(B * H);
  const T* prev = h0;
  for (int64_t step = 0; step < T_; ++step) {
    const int64_t t = reverse ? T_ - 1 - step : step;
    T* cur = out ? out + t * B * H : (step % 2 ? pong.data() : ping.data());
    const T* xt = x + t * B * I;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        T acc = (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));
        if (w_ih) {
          for (int64_t k = 0; k < I; ++k) acc += w_ih[j * I + k] * xt[b * I + k];
        } else {
          acc += xt[b * H + j];
        }
        for (int64_t k = 0; k < H; ++k) acc += w_hh[j * H + k] * prev[b * H + k];
        cur[b * H + j] = activate(acc, s.relu);
      }
    }
    prev = cur;
  }
  std::copy(prev, prev + B * H, h_n);
}

template <typename T>
void backward_loop(const IrnnSizes& s, const T* g_out, const T* g_hn,
                   const T* x, const T* h0, const T* w_ih, const T* w_hh,
                   const T* out, bool reverse, T* dx, T* dh0, T* dw_ih,
                   T* dw_hh, T* db) {
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H;
  std::vector<T> da(B * H), dh_next(B * H, T(0));
  for (int64_t step = T_ - 1; step >= 0; --step) {
    const int64_t t = reverse ? T_ - 1 - step : step;
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    const T* h_prev = step == 0 ? h0 : out + t_prev * B * H;
    const T* ht = out + t * B * H;
    for (int64_t i = 0; i < B * H; ++i) {
      T g = dh_next[i];
      if (g_out) g += g_out[t * B * H + i];
      if (g_hn && step == T_ - 1) g += g_hn[i];
      da[i] = activate_grad(g, ht[i], s.relu);
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        const T d = da[b * H + j];
        db[j] += d;
        for (int64_t k = 0; k < H; ++k) dw_hh[j * H + k] += d * h_prev[b * H + k];
        if (w_ih) {
          for (int64_t k = 0; k < I; ++k)
            dw_ih[j * I + k] += d * x[t * B * I + b * I + k];
        }
      }
      for (int64_t k = 0; k < H; ++k) {
        T acc = T(0);
        for (int64_t j = 0; j < H; ++j) acc += da[b * H + j] * w_hh[j * H + k];
        dh_next[b * H + k] = acc;
      }
      if (w_ih) {
        for (int64_t k = 0; k < I; ++k) {
          T acc = T(0);
          for (int64_t j = 0; j < H; ++j) acc += da[b * H + j] * w_ih[j * I + k];
          dx[t * B * I + b * I + k] = acc;
        }
      } else {
        std::copy(&da[b * H], &da[b * H] + H, dx + t * B * H + b * H);
      }
    }
  }
  std::copy(dh_next.begin(), dh_next.end(), dh0);
}

// Low-precision arguments run in float32; this is the dtype the loops see.
at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

at::Tensor as_compute(const at::Tensor& t, at::ScalarType ct) {
  return t.defined() ? t.to(ct).contiguous() : t;
}

std::tuple<at::Tensor, at::Tensor> irnn_forward_cpu(
    const at::Tensor& input, const at::Tensor& h0,
    const c10::optional<at::Tensor>& weight_ih, const at::Tensor& weight_hh,
    const c10::optional<at::Tensor>& bias_ih,
    const c10::optional<at::Tensor>& bias_hh, c10::string_view nonlinearity,
    bool reverse, bool store_sequence) {
  const IrnnSizes s =
      check_forward_args(input, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                         std::string(nonlinearity));
  const auto ct = compute_type(input.scalar_type());
  const at::Tensor x = as_compute(input, ct), h0c = as_compute(h0, ct),
                   w_ih = as_compute(contig(weight_ih), ct),
                   w_hh = as_compute(weight_hh, ct),
                   b_ih = as_compute(contig(bias_ih), ct),
                   b_hh = as_compute(contig(bias_hh), ct);
  const auto opts = x.options();
  at::Tensor out = at::empty({store_sequence ? s.T : 0, s.B, s.H}, opts);
  at::Tensor h_n = at::empty({s.B, s.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(ct, "irnn_forward_cpu", [&] {
    forward_loop<scalar_t>(
        s, x.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(w_ih), w_hh.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(b_ih), ptr_or_null<scalar_t>(b_hh), reverse,
        store_sequence ? out.data_ptr<scalar_t>() : nullptr,
        h_n.data_ptr<scalar_t>());
  });
  return {out.to(input.scalar_type()), h_n.to(input.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
irnn_backward_cpu(const c10::optional<at::Tensor>& grad_output,
                  const c10::optional<at::Tensor>& grad_h_n,
                  const at::Tensor& input, const at::Tensor& h0,
                  const c10::optional<at::Tensor>& weight_ih,
                  const at::Tensor& weight_hh, const at::Tensor& output,
                  c10::string_view nonlinearity, bool reverse) {
  const IrnnSizes s =
      check_backward_args(grad_output, grad_h_n, input, h0, weight_ih,
                          weight_hh, output, std::string(nonlinearity));
  const auto ct = compute_type(input.scalar_type());
  const at::Tensor g_out = as_compute(contig(grad_output), ct),
                   g_hn = as_compute(contig(grad_h_n), ct),
                   x = as_compute(input, ct), h0c = as_compute(h0, ct),
                   w_ih = as_compute(contig(weight_ih), ct),
                   w_hh = as_compute(weight_hh, ct),
                   out = as_compute(output, ct);
  const auto opts = x.options();
  at::Tensor dx = at::empty({s.T, s.B, s.I}, opts);
  at::Tensor dh0 = at::empty({s.B, s.H}, opts);
  at::Tensor dw_ih = s.project ? at::zeros({s.H, s.I}, opts)
                               : at::empty({0}, opts);
  at::Tensor dw_hh = at::zeros({s.H, s.H}, opts);
  at::Tensor db = at::zeros({s.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(ct, "irnn_backward_cpu", [&] {
    backward_loop<scalar_t>(
        s, ptr_or_null<scalar_t>(g_out), ptr_or_null<scalar_t>(g_hn),
        x.data_ptr<scalar_t>(), h0c.data_ptr<scalar_t>(),
        ptr_or_null<scalar_t>(w_ih), w_hh.data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>(), reverse, dx.data_ptr<scalar_t>(),
        dh0.data_ptr<scalar_t>(),
        s.project ? dw_ih.data_ptr<scalar_t>() : nullptr,
        dw_hh.data_ptr<scalar_t>(), db.data_ptr<scalar_t>());
  });
  const auto dt = input.scalar_type();
  return {dx.to(dt), dh0.to(dt), dw_ih.to(dt), dw_hh.to(dt), db.to(dt)};
}

}  // namespace

TORCH_LIBRARY_IMPL(irnn_cuda, CPU, m) {
  m.impl("irnn_forward", &irnn_forward_cpu);
  m.impl("irnn_backward", &irnn_backward_cpu);
}

}  // namespace irnn_cuda
