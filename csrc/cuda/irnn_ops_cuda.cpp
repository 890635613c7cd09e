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
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "../irnn_checks.h"
#include "irnn_cuda_api.h"

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

// The device's properties for make_launch_config; a failed query raises.
DeviceProps device_props(const at::Tensor& t, const char* op) {
  DeviceProps props{};
  const char* attribute = "";
  const int err = irnn_cuda_device_props(t.get_device(), &props, &attribute);
  TORCH_CHECK(err == 0, "irnn_cuda::", op, " (CUDA): cudaDeviceGetAttribute(",
              attribute, ") failed on device ", t.get_device(), ": ",
              irnn_cuda_error_string(err));
  return props;
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
  const LaunchConfig cfg = make_launch_config(
      device_props(input, "irnn_forward"), false, dt, s.T, s.B, s.I,
      s.H, s.project, store_sequence);
  FwdArgs a{};
  a.dtype = dt;
  a.T = s.T; a.B = s.B; a.I = s.I; a.H = s.H;
  a.project = s.project; a.relu = s.relu; a.reverse = reverse;
  a.x = ptr(x);
  std::tie(a.x_st, a.x_sb) = strides(x);
  a.h0 = ptr(h0c); a.w_ih = ptr(w_ih); a.w_hh = ptr(w_hh);
  a.b_ih = ptr(b_ih); a.b_hh = ptr(b_hh);
  a.out = store_sequence ? out.data_ptr() : nullptr;
  a.out_st = packed ? 0 : s.B * s.H; a.out_sb = s.H;
  a.h_n = h_n.data_ptr();
  a.lengths = lengths_ptr(len.lengths);
  a.offsets = lengths_ptr(len.offsets);
  at::Tensor ws = workspace(fwd_workspace_bytes(a, cfg), input);
  check_launch(irnn_forward_cuda_launch(
                   a, cfg, ws.data_ptr(),
                   c10::cuda::getCurrentCUDAStream(input.get_device()).stream()),
               "irnn_forward");
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
  const LaunchConfig cfg = make_launch_config(
      device_props(input, "irnn_backward"), true, dt, s.T, s.B, s.I,
      s.H, s.project, true);
  BwdArgs a{};
  a.dtype = dt;
  a.T = s.T; a.B = s.B; a.I = s.I; a.H = s.H;
  a.project = s.project; a.relu = s.relu; a.reverse = reverse;
  a.g_out = ptr(g_out);
  if (g_out.defined()) std::tie(a.g_st, a.g_sb) = strides(g_out);
  a.g_hn = ptr(g_hn);
  a.x = ptr(x);
  std::tie(a.x_st, a.x_sb) = strides(x);
  a.h0 = ptr(h0c); a.w_ih = ptr(w_ih); a.w_hh = ptr(w_hh);
  a.out = ptr(out);
  std::tie(a.o_st, a.o_sb) = strides(out);
  a.dx = dx.data_ptr(); a.dh0 = dh0.data_ptr();
  a.dw_ih = s.project ? dw_ih.data_ptr() : nullptr;
  a.dw_hh = dw_hh.data_ptr(); a.db = db.data_ptr();
  a.lengths = lengths_ptr(len.lengths);
  a.offsets = lengths_ptr(len.offsets);
  at::Tensor ws = workspace(bwd_workspace_bytes(a, cfg), input);
  check_launch(irnn_backward_cuda_launch(
                   a, cfg, ws.data_ptr(),
                   c10::cuda::getCurrentCUDAStream(input.get_device()).stream()),
               "irnn_backward");
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
