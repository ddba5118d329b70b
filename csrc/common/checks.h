// Argument checks shared by every op: TORCH_CHECK raises RuntimeError (and
// TORCH_CHECK_VALUE ValueError, TORCH_CHECK_TYPE TypeError) with a message
// that names the argument, the way torch's own ops do.
#pragma once
#include <ATen/core/Tensor.h>

namespace mte {

// prod(normalized_shape) and input.numel()/that, after checking that the
// trailing dims of `input` equal `normalized_shape` (torch's message).
inline std::pair<int64_t, int64_t> rows_cols(const at::Tensor& input, at::IntArrayRef normalized_shape) {
  const int64_t nd = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK(nd >= 1, "normalized_shape: expected at least one dimension, got ", normalized_shape);
  bool ok = input.dim() >= nd;
  for (int64_t i = 0; ok && i < nd; ++i) ok = input.size(input.dim() - nd + i) == normalized_shape[i];
  TORCH_CHECK(ok, "input: given normalized_shape=", normalized_shape, ", expected input with shape [*, ",
              normalized_shape, "], but got input of size ", input.sizes());
  int64_t N = 1;
  for (auto s : normalized_shape) N *= s;
  const int64_t M = N == 0 ? 0 : input.numel() / N;
  return {M, N};
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble ||
                  t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
              name, ": expected a floating point tensor (float32, float64, bfloat16 or float16), got ",
              t.scalar_type());
}

// An optional per-feature tensor (weight, bias): same shape as normalized_shape,
// same device as input. Its dtype is checked by check_param_dtypes.
inline void check_affine(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& input,
                         at::IntArrayRef normalized_shape) {
  if (!t.has_value() || !t->defined()) return;
  TORCH_CHECK(t->sizes() == normalized_shape, name, ": expected shape ", normalized_shape,
              " (normalized_shape), but got ", name, " of shape ", t->sizes());
  TORCH_CHECK(t->device() == input.device(), name, ": expected a tensor on ", input.device(),
              " (the device of input), got one on ", t->device());
}

inline bool is_reduced_float(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// The dtypes torch accepts for a norm's parameters (mixed precision: a
// bfloat16/float16 activation with float32 master weights, as autocast and
// mixed-precision training feed them). The output keeps the input's dtype,
// each parameter's gradient its parameter's dtype; the math is float32 (float64
// for float64 input).
//   any_float == false (layer_norm, as torch): the present parameters all have
//     the input's dtype, or all are float32 with a bfloat16/float16 input;
//   any_float == true (rms_norm, as torch): any floating dtype.
inline void check_param_dtypes(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& bias, bool any_float) {
  const auto xt = input.scalar_type();
  std::optional<at::ScalarType> first;
  for (const auto& [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!t->has_value() || !(*t)->defined()) continue;
    const auto pt = (*t)->scalar_type();
    TORCH_CHECK(pt == at::kFloat || pt == at::kDouble || is_reduced_float(pt), name,
                ": expected a floating point tensor, got ", pt);
    if (any_float) continue;
    TORCH_CHECK(pt == xt || (pt == at::kFloat && is_reduced_float(xt)), name, ": expected dtype ", xt,
                " (the dtype of input)", is_reduced_float(xt) ? " or float32" : "", ", got ", pt,
                is_reduced_float(pt) ? " (mixed dtype: a reduced-precision parameter needs an input of its dtype)" : "");
    TORCH_CHECK(!first || *first == pt, name, ": expected dtype ", *first, " (the dtype of weight), got ", pt);
    first = pt;
  }
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, ": expected a tensor on ", ref.device(), " (the device of ",
              ref_name, "), got one on ", t.device());
}

// Statistics (mean, rstd) are float32, float64 for float64 input.
inline at::ScalarType stat_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

}  // namespace mte
