// Argument checks shared by every backend of the irnn_cuda ops, so that the
// CPU and CUDA implementations reject the same calls with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <array>
#include <string>
#include <vector>

namespace irnn_cuda {

// Sizes of one layer-direction call: input [T,B,I], hidden H.
struct IrnnSizes {
  int64_t T, B, I, H;
  bool project;  // true when weight_ih is given (input is [T,B,I])
  bool relu;     // false: tanh
};

inline void check_same(const at::Tensor& ref, const at::Tensor& t,
                       const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(),
              " like input, got ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have dtype ",
              ref.scalar_type(), " like input, got ", t.scalar_type());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected,
                        const char* name) {
  TORCH_CHECK(t.sizes() == expected, name, " must have shape ", expected,
              ", got ", t.sizes());
}

inline bool parse_nonlinearity(const std::string& nonlinearity) {
  TORCH_CHECK(nonlinearity == "relu" || nonlinearity == "tanh",
              "nonlinearity must be 'relu' or 'tanh', got '", nonlinearity,
              "'");
  return nonlinearity == "relu";
}

// A packed input ([N, I] rows in PackedSequence order, with lengths): its T
// (the longest length) and B (the number of lengths), read by the backend.
struct PackedShape {
  int64_t T, B;
};

// `packed`: null for the padded layout [T, B, *].
inline IrnnSizes check_forward_args(const at::Tensor& input,
                                    const at::Tensor& h0,
                                    const c10::optional<at::Tensor>& weight_ih,
                                    const at::Tensor& weight_hh,
                                    const c10::optional<at::Tensor>& bias_ih,
                                    const c10::optional<at::Tensor>& bias_hh,
                                    const std::string& nonlinearity,
                                    const PackedShape* packed = nullptr) {
  IrnnSizes s{};
  s.relu = parse_nonlinearity(nonlinearity);
  TORCH_CHECK(input.dim() == (packed ? 2 : 3),
              packed ? "a packed input must be [N, I] (PackedSequence.data), got "
                     : "input must be [T, B, I] (or [N, I] packed, with "
                       "lengths), got ",
              input.dim(), "-D tensor of shape ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "input must be a floating point tensor, got ",
              input.scalar_type());
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == weight_hh.size(1),
              "weight_hh must be [H, H], got ", weight_hh.sizes());
  s.T = packed ? packed->T : input.size(0);
  s.B = packed ? packed->B : input.size(1);
  const int64_t features = input.size(-1);
  s.H = weight_hh.size(0);
  TORCH_CHECK(s.T >= 1, "input must have at least one time step, got T = ",
              s.T);
  TORCH_CHECK(s.H >= 1, "weight_hh must be [H, H] with H >= 1, got ",
              weight_hh.sizes());
  check_same(input, weight_hh, "weight_hh");
  check_same(input, h0, "h0");
  check_shape(h0, {s.B, s.H}, "h0");
  s.project = weight_ih.has_value() && weight_ih->defined();
  if (s.project) {
    s.I = features;
    // nn.RNN refuses input_size 0 as well; the kernels index x_t[0].
    TORCH_CHECK(s.I >= 1,
                "input must have at least one feature when weight_ih is "
                "given ([T, B, I] with I >= 1), got ", input.sizes());
    check_same(input, *weight_ih, "weight_ih");
    check_shape(*weight_ih, {s.H, s.I}, "weight_ih");
  } else {
    s.I = s.H;
    TORCH_CHECK(features == s.H,
                "input must be the projected input [T, B, H] = [", s.T, ", ",
                s.B, ", ", s.H, "] (or [N, H] packed) when weight_ih is None, "
                "got ", input.sizes());
  }
  if (bias_ih.has_value() && bias_ih->defined()) {
    check_same(input, *bias_ih, "bias_ih");
    check_shape(*bias_ih, {s.H}, "bias_ih");
  }
  if (bias_hh.has_value() && bias_hh->defined()) {
    check_same(input, *bias_hh, "bias_hh");
    check_shape(*bias_hh, {s.H}, "bias_hh");
  }
  return s;
}

inline IrnnSizes check_backward_args(
    const c10::optional<at::Tensor>& grad_output,
    const c10::optional<at::Tensor>& grad_h_n, const at::Tensor& input,
    const at::Tensor& h0, const c10::optional<at::Tensor>& weight_ih,
    const at::Tensor& weight_hh, const at::Tensor& output,
    const std::string& nonlinearity, const PackedShape* packed = nullptr) {
  IrnnSizes s = check_forward_args(input, h0, weight_ih, weight_hh,
                                   c10::nullopt, c10::nullopt, nonlinearity,
                                   packed);
  check_same(input, output, "output");
  if (packed) {
    // Packed: every step's rows are [N, H], like the input's [N, *].
    const int64_t n = input.size(0);
    check_shape(output, {n, s.H}, "output");
    if (grad_output.has_value() && grad_output->defined()) {
      check_same(input, *grad_output, "grad_output");
      check_shape(*grad_output, {n, s.H}, "grad_output");
    }
    if (grad_h_n.has_value() && grad_h_n->defined()) {
      check_same(input, *grad_h_n, "grad_h_n");
      check_shape(*grad_h_n, {s.B, s.H}, "grad_h_n");
    }
    return s;
  }
  TORCH_CHECK(output.dim() == 3 && output.size(0) == s.T,
              "output must be the [T, B, H] = [", s.T, ", ", s.B, ", ", s.H,
              "] sequence saved by irnn_forward(store_sequence=True), got ",
              output.sizes());
  check_shape(output, {s.T, s.B, s.H}, "output");
  if (grad_output.has_value() && grad_output->defined()) {
    check_same(input, *grad_output, "grad_output");
    check_shape(*grad_output, {s.T, s.B, s.H}, "grad_output");
  }
  if (grad_h_n.has_value() && grad_h_n->defined()) {
    check_same(input, *grad_h_n, "grad_h_n");
    check_shape(*grad_h_n, {s.B, s.H}, "grad_h_n");
  }
  return s;
}

inline bool has(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

// The dtype and shape of the optional `lengths` (int64 [B]). Its values are
// checked where they are read (1..T, non-increasing).
inline void check_lengths_arg(const c10::optional<at::Tensor>& lengths,
                              const IrnnSizes& s) {
  if (!has(lengths)) return;
  TORCH_CHECK(lengths->scalar_type() == at::kLong,
              "lengths must be an int64 tensor of shape [B] (the number of "
              "steps of each batch row), got dtype ", lengths->scalar_type());
  TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == s.B,
              "lengths must have shape [B] = [", s.B,
              "] (one length per batch row), got ", lengths->sizes());
}

// Lengths on the CPU (int64 [B], checked by check_lengths_arg): each in
// 1..T and non-increasing. Returns a contiguous copy.
inline at::Tensor checked_lengths(const at::Tensor& lengths,
                                  const IrnnSizes& s) {
  at::Tensor l = lengths.contiguous();
  const int64_t* v = l.data_ptr<int64_t>();
  for (int64_t b = 0; b < s.B; ++b) {
    TORCH_CHECK(v[b] >= 1 && v[b] <= s.T, "lengths must be in 1..T = 1..",
                s.T, " (every row runs at least one step, as nn.RNN "
                "requires), got lengths[", b, "] = ", v[b]);
    TORCH_CHECK(b == 0 || v[b] <= v[b - 1],
                "lengths must be sorted in decreasing order, as a "
                "PackedSequence's are, got lengths[", b - 1, "] = ", v[b - 1],
                " < lengths[", b, "] = ", v[b],
                "; sort the batch by length first (irnn_cuda.rnn_forward "
                "does, and pack_padded_sequence(enforce_sorted=False) gives "
                "the order)");
  }
  return l;
}

// A packed input ([N, *] with lengths): T is the longest length, B the
// number of lengths, read from lengths on the CPU (on either backend: the
// sizes must be known on the host without a device sync). The lengths'
// other checks follow in checked_lengths.
inline c10::optional<PackedShape> packed_shape(
    const at::Tensor& input, const c10::optional<at::Tensor>& lengths) {
  if (input.dim() != 2 || !has(lengths)) return c10::nullopt;
  TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 &&
                  lengths->numel() >= 1 && lengths->device().is_cpu(),
              "lengths of a packed input must be a non-empty int64 CPU tensor "
              "of shape [B] (as PackedSequence.batch_sizes are on the CPU: "
              "the longest length sizes the call), got ",
              lengths->scalar_type(), " ", lengths->sizes(), " on ",
              lengths->device());
  return PackedShape{lengths->max().item<int64_t>(), lengths->size(0)};
}

// offsets[t]: the packed row where time t starts (the valid steps before
// t), for lengths checked by checked_lengths; their sum must be the N rows.
inline std::vector<int64_t> packed_offsets(const at::Tensor& len,
                                           const IrnnSizes& s, int64_t rows) {
  const int64_t* v = len.data_ptr<int64_t>();
  // Checked first: with every length at least 1, T <= N bounds the table.
  int64_t total = 0;
  for (int64_t b = 0; b < s.B; ++b) total += v[b];
  TORCH_CHECK(total == rows, "a packed input must have sum(lengths) = ", total,
              " rows, got ", rows);
  std::vector<int64_t> offsets(s.T);
  int64_t running = s.B, start = 0;  // rows with length > t
  for (int64_t t = 0; t < s.T; ++t) {
    while (running > 0 && v[running - 1] <= t) --running;
    offsets[t] = start;
    start += running;
  }
  return offsets;
}

// Which of irnn_backward's five gradients are wanted (grad_input, grad_h0,
// grad_weight_ih, grad_weight_hh, grad_bias); an unwanted one is returned
// as an empty [0] tensor.
using OutputMask = std::array<bool, 5>;

}  // namespace irnn_cuda
