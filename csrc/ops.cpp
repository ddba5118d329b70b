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

  // ---- optim family: fused multi-tensor optimizer steps (in place) ---------
  // One call updates a whole parameter group. state_steps are float32 scalar
  // tensors (torch keeps `step` so); each step kernel first adds 1 to them.
  // grad_scale (GradScaler's scale): grads are unscaled in place before use.
  // found_inf: when it holds a non-zero value the call changes nothing at all
  // (no parameter, state or step update), as torch's fused optimizers do.
  // lr_tensor, when given, replaces lr (torch's tensor-lr overload).
  m.def("sgd_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] momentum_buffers, *, "
        "float lr, float momentum, float dampening, float weight_decay, bool nesterov, "
        "bool maximize, bool is_first_step, Tensor? lr_tensor=None, Tensor? grad_scale=None, "
        "Tensor? found_inf=None) -> ()");
  m.def("adam_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] exp_avgs, "
        "Tensor(d!)[] exp_avg_sqs, Tensor(e!)[] max_exp_avg_sqs, Tensor(f!)[] state_steps, *, "
        "float lr, float beta1, float beta2, float weight_decay, float eps, bool amsgrad, "
        "bool maximize, bool decoupled_weight_decay, Tensor? lr_tensor=None, "
        "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // Gradient clipping: the global norm of a list of tensors (float32 scalar
  // tensor; norm_type 2.0 or inf), and an in-place multiply of every tensor by
  // a scalar tensor (the clip coefficient, applied only where it is < 1).
  m.def("total_norm(Tensor[] tensors, float norm_type) -> Tensor");
  m.def("clip_scale_(Tensor(a!)[] tensors, Tensor total_norm, float max_norm) -> ()");
}
