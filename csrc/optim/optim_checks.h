// Argument checks shared by the CPU and CUDA optimizer-step kernels (torch's
// error types; every message names the argument). The two devices differ
// only in the dtypes they take (CUDA adds float16) and in CUDA requiring CUDA
// tensors: `kCuda` selects.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace mte::optim {

inline void check_list_len(at::TensorList l, const char* name, size_t n) {
  TORCH_CHECK_VALUE(l.size() == n, name, ": expected ", n, " tensors (one per parameter), got ", l.size());
}

template <bool kCuda>
inline bool supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || (kCuda && t == at::kHalf);
}

template <bool kCuda>
inline void check_param(const at::Tensor& p, size_t i, const at::Tensor& p0) {
  TORCH_CHECK(p.is_floating_point() && supported_dtype<kCuda>(p.scalar_type()), "params[", i,
              kCuda ? "]: expected a float32, float64, float16 or bfloat16 tensor, got "
                    : "]: expected a float32, float64 or bfloat16 tensor, got ",
              p.scalar_type());
  if (kCuda) TORCH_CHECK(p.is_cuda(), "params[", i, "]: expected a CUDA tensor, got one on ", p.device());
  TORCH_CHECK(p.device() == p0.device(), "params[", i, "]: expected all tensors to be on the same device (",
              p0.device(), ", the device of params[0]), got one on ", p.device());
  TORCH_CHECK(p.is_non_overlapping_and_dense(), "params[", i,
              "]: expected a dense, non-overlapping tensor (for example a contiguous one)");
}

// Same memory layout as the (dense) parameter: equal strides in every dimension
// of size > 1. A size-1 dimension's stride is never used to address memory, and
// autograd may leave any value there (a grad of shape [1, 100, 1] with strides
// [100, 1, 1] lies in memory exactly as a param with strides [100, 100, 1]).
inline bool same_layout(const at::Tensor& t, const at::Tensor& p) {
  for (int64_t d = 0; d < p.dim(); ++d)
    if (p.size(d) > 1 && t.stride(d) != p.stride(d)) return false;
  return true;
}

// A per-parameter tensor (grad or state) must match its parameter's shape and
// memory layout: the kernels walk all of them with one flat index.
inline void check_like(const at::Tensor& t, const char* name, size_t i, const at::Tensor& p) {
  TORCH_CHECK(t.defined(), name, "[", i, "]: expected a tensor, got None");
  TORCH_CHECK(!t.is_sparse(), name, "[", i, "]: sparse tensors are not supported");
  TORCH_CHECK(t.device() == p.device(), name, "[", i, "]: expected a tensor on ", p.device(),
              " (the device of params[", i, "]), got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == p.scalar_type(), name, "[", i, "]: expected dtype ", p.scalar_type(),
              " (the dtype of params[", i, "]), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == p.sizes(), name, "[", i, "]: expected shape ", p.sizes(), " (the shape of params[", i,
              "]), got ", t.sizes());
  TORCH_CHECK(same_layout(t, p), name, "[", i, "]: expected the memory layout of params[", i, "] (strides ",
              p.strides(), " in its dimensions of size > 1), got strides ", t.strides());
}

inline bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline void check_scalar_tensor(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& p0) {
  if (!present(t)) return;
  TORCH_CHECK(t->numel() == 1, name, ": expected a tensor with one element, got ", t->numel());
  TORCH_CHECK(t->device() == p0.device(), name, ": expected a tensor on ", p0.device(),
              " (the device of params), got one on ", t->device());
  TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, name,
              ": expected a float32 or float64 tensor, got ", t->scalar_type());
}

// The scalar tensors every step op takes: GradScaler's grad_scale and
// found_inf, and the folded clip's total norm.
inline void check_step_scalars(const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                               const std::optional<at::Tensor>& clip_total_norm, const at::Tensor& p0) {
  check_scalar_tensor(grad_scale, "grad_scale", p0);
  check_scalar_tensor(found_inf, "found_inf", p0);
  check_scalar_tensor(clip_total_norm, "clip_total_norm", p0);
}

// Every argument of sgd_step_ (momentum buffers only when momentum != 0).
template <bool kCuda>
inline void check_sgd_args(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                           bool has_momentum, const std::optional<at::Tensor>& lr_tensor,
                           const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                           const std::optional<at::Tensor>& clip_total_norm) {
  const size_t n = params.size();
  check_list_len(grads, "grads", n);
  if (has_momentum) check_list_len(momentum_buffers, "momentum_buffers", n);
  if (n == 0) return;
  const at::Tensor& p0 = params[0];
  for (size_t i = 0; i < n; ++i) {
    check_param<kCuda>(params[i], i, p0);
    check_like(grads[i], "grads", i, params[i]);
    if (has_momentum) check_like(momentum_buffers[i], "momentum_buffers", i, params[i]);
  }
  check_scalar_tensor(lr_tensor, "lr_tensor", p0);
  check_step_scalars(grad_scale, found_inf, clip_total_norm, p0);
}

// state_steps[i]: a float32/float64 scalar, on the CPU for the CPU kernels and
// beside params[i] (where torch's fused optimizers keep `step`) for CUDA.
template <bool kCuda>
inline void check_step(const at::Tensor& s, size_t i, const at::Tensor& p) {
  TORCH_CHECK(s.numel() == 1 && (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble), "state_steps[",
              i, "]: expected a float32 or float64 tensor with one element, got ", s.scalar_type(), " of shape ",
              s.sizes());
  if (kCuda) {
    TORCH_CHECK(s.device() == p.device(), "state_steps[", i, "]: expected a tensor on ", p.device(),
                " (the device of params[", i, "], where torch's fused optimizers keep `step`), got one on ",
                s.device());
  } else {
    TORCH_CHECK(s.device().is_cpu(), "state_steps[", i, "]: expected a CPU tensor, got one on ", s.device());
  }
}

// Every argument of rmsprop_step_ (grad_avgs only when centered, momentum
// buffers only when momentum != 0).
template <bool kCuda>
inline void check_rmsprop_args(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                               at::TensorList grad_avgs, at::TensorList momentum_buffers,
                               at::TensorList state_steps, bool centered, bool has_momentum,
                               const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                               const std::optional<at::Tensor>& clip_total_norm) {
  const size_t n = params.size();
  check_list_len(grads, "grads", n);
  check_list_len(square_avgs, "square_avgs", n);
  if (centered) check_list_len(grad_avgs, "grad_avgs", n);
  if (has_momentum) check_list_len(momentum_buffers, "momentum_buffers", n);
  check_list_len(state_steps, "state_steps", n);
  if (n == 0) return;
  const at::Tensor& p0 = params[0];
  for (size_t i = 0; i < n; ++i) {
    check_param<kCuda>(params[i], i, p0);
    check_like(grads[i], "grads", i, params[i]);
    check_like(square_avgs[i], "square_avgs", i, params[i]);
    if (centered) check_like(grad_avgs[i], "grad_avgs", i, params[i]);
    if (has_momentum) check_like(momentum_buffers[i], "momentum_buffers", i, params[i]);
    check_step<kCuda>(state_steps[i], i, params[i]);
  }
  check_step_scalars(grad_scale, found_inf, clip_total_norm, p0);
}

// Every argument of adagrad_step_.
template <bool kCuda>
inline void check_adagrad_args(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                               at::TensorList state_steps, const std::optional<at::Tensor>& grad_scale,
                               const std::optional<at::Tensor>& found_inf,
                               const std::optional<at::Tensor>& clip_total_norm) {
  const size_t n = params.size();
  check_list_len(grads, "grads", n);
  check_list_len(state_sums, "state_sums", n);
  check_list_len(state_steps, "state_steps", n);
  if (n == 0) return;
  const at::Tensor& p0 = params[0];
  for (size_t i = 0; i < n; ++i) {
    check_param<kCuda>(params[i], i, p0);
    check_like(grads[i], "grads", i, params[i]);
    check_like(state_sums[i], "state_sums", i, params[i]);
    check_step<kCuda>(state_steps[i], i, params[i]);
  }
  check_step_scalars(grad_scale, found_inf, clip_total_norm, p0);
}

// Every argument of adam_step_ (lists, per-parameter tensors, steps, scalar
// tensors). Steps live on the CPU for the CPU kernel and beside each param
// (as torch's fused optimizers keep them) for the CUDA kernel.
template <bool kCuda>
inline void check_adam_args(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                            at::TensorList state_steps, bool amsgrad, const std::optional<at::Tensor>& lr_tensor,
                            const std::optional<at::Tensor>& grad_scale,
                            const std::optional<at::Tensor>& found_inf,
                            const std::optional<at::Tensor>& clip_total_norm) {
  const size_t n = params.size();
  check_list_len(grads, "grads", n);
  check_list_len(exp_avgs, "exp_avgs", n);
  check_list_len(exp_avg_sqs, "exp_avg_sqs", n);
  if (amsgrad) check_list_len(max_exp_avg_sqs, "max_exp_avg_sqs", n);
  check_list_len(state_steps, "state_steps", n);
  if (n == 0) return;
  const at::Tensor& p0 = params[0];
  for (size_t i = 0; i < n; ++i) {
    check_param<kCuda>(params[i], i, p0);
    check_like(grads[i], "grads", i, params[i]);
    check_like(exp_avgs[i], "exp_avgs", i, params[i]);
    check_like(exp_avg_sqs[i], "exp_avg_sqs", i, params[i]);
    if (amsgrad) check_like(max_exp_avg_sqs[i], "max_exp_avg_sqs", i, params[i]);
    check_step<kCuda>(state_steps[i], i, params[i]);
  }
  check_scalar_tensor(lr_tensor, "lr_tensor", p0);
  check_step_scalars(grad_scale, found_inf, clip_total_norm, p0);
}

}  // namespace mte::optim
