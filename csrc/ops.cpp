// The one place where every op's schema lives.
//
// Each op family registers its device kernels elsewhere with
// TORCH_LIBRARY_IMPL(minitorch_ext, CPU|CUDA, m); Python adds fake (meta)
// kernels and autograd (minitorch_ext/ops/*.py). Conventions:
//   * forward ops return the output plus the small statistics backward needs;
//   * backward ops are functional (they allocate their results);
//   * a gradient that does not apply (no weight, no bias) comes back as an
//     empty tensor of shape [0], which Python turns into None.
#include <torch/library.h>

TORCH_LIBRARY(minitorch_ext, m) {
  // ---- norm family: LayerNorm and RMSNorm over the trailing dims ----------
  // mean / rstd have shape [M] where M = input.numel() / prod(normalized_shape),
  // dtype float32 (float64 for float64 input).
  m.def("layer_norm_fwd(Tensor input, int[] normalized_shape, Tensor? weight, "
        "Tensor? bias, float eps) -> (Tensor output, Tensor mean, Tensor rstd)");
  m.def("layer_norm_bwd(Tensor grad_output, Tensor input, int[] normalized_shape, "
        "Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  m.def("rms_norm_fwd(Tensor input, int[] normalized_shape, Tensor? weight, "
        "float eps) -> (Tensor output, Tensor rstd)");
  m.def("rms_norm_bwd(Tensor grad_output, Tensor input, int[] normalized_shape, "
        "Tensor rstd, Tensor? weight) -> (Tensor grad_input, Tensor grad_weight)");
}
