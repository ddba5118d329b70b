// Argument checks shared by the CPU and CUDA optimizer-step kernels (torch's
// error types; every message names the argument). The two devices differ
// only in the dtypes they take (CUDA adds float16) and in CUDA requiring CUDA
// tensors: `kCuda` selects.
#pragma once
#include <ATen/ATen.h>

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

// A per-parameter tensor (grad or state) must match its parameter exactly:
// the kernels walk all of them with one flat index.
inline void check_like(const at::Tensor& t, const char* name, size_t i, const at::Tensor& p) {
  TORCH_CHECK(t.defined(), name, "[", i, "]: expected a tensor, got None");
  TORCH_CHECK(!t.is_sparse(), name, "[", i, "]: sparse tensors are not supported");
  TORCH_CHECK(t.device() == p.device(), name, "[", i, "]: expected a tensor on ", p.device(),
              " (the device of params[", i, "]), got one on ", t.device());
  TORCH_CHECK(t.scalar_type() == p.scalar_type(), name, "[", i, "]: expected dtype ", p.scalar_type(),
              " (the dtype of params[", i, "]), got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == p.sizes(), name, "[", i, "]: expected shape ", p.sizes(), " (the shape of params[", i,
              "]), got ", t.sizes());
  TORCH_CHECK(p.numel() <= 1 || t.strides() == p.strides(), name, "[", i, "]: expected the strides of params[", i,
              "] ", p.strides(), ", got ", t.strides());
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

}  // namespace mte::optim
