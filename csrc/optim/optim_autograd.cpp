// Autograd-key kernels of the in-place optimizer ops.
//
// An optimizer step is not differentiable; these kernels only do what an
// in-place ATen op does at the autograd layer: run the op below autograd and
// bump the version counter of every tensor it wrote (so a graph that saved a
// parameter before the step refuses to backward through the stale value, as
// it does after torch.optim's default path).
//
// Without them a custom op gets torch's boxed autograd fallback, which copies
// every tensor of every list into IValues and drops them with the GIL
// released; for Python-owned tensors each drop re-takes the GIL. On a
// 1,000-parameter group that cost more than the step's arithmetic.
// total_norm (not in place) keeps the fallback.
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include "optim/optim_checks.h"
#include "optim/optim_ops.h"

namespace mte {
namespace {

using optim::OptT;

void bump(at::TensorList ts) {
  for (const auto& t : ts) t.unsafeGetTensorImpl()->bump_version();
}

void sgd_step_autograd(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr,
                       double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                       bool is_first_step, const OptT& lr_tensor, const OptT& grad_scale, const OptT& found_inf,
                       const OptT& clip_total_norm, double clip_max_norm) {
  {
    at::AutoDispatchBelowADInplaceOrView below;
    optim::sgd_step_op().call(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov,
                              maximize, is_first_step, lr_tensor, grad_scale, found_inf, clip_total_norm,
                              clip_max_norm);
  }
  bump(params);
  bump(momentum_buffers);
  if (optim::present(grad_scale) || optim::present(clip_total_norm)) bump(grads);
}

void adam_step_autograd(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                        at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList state_steps,
                        double lr, double beta1, double beta2, double weight_decay, double eps, bool amsgrad,
                        bool maximize, bool decoupled_weight_decay, const OptT& lr_tensor, const OptT& grad_scale,
                        const OptT& found_inf, const OptT& clip_total_norm, double clip_max_norm) {
  {
    at::AutoDispatchBelowADInplaceOrView below;
    optim::adam_step_op().call(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
                               weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, lr_tensor, grad_scale,
                               found_inf, clip_total_norm, clip_max_norm);
  }
  bump(params);
  bump(exp_avgs);
  bump(exp_avg_sqs);
  bump(max_exp_avg_sqs);
  bump(state_steps);
  if (optim::present(grad_scale) || optim::present(clip_total_norm)) bump(grads);
}

void rmsprop_step_autograd(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                           at::TensorList grad_avgs, at::TensorList momentum_buffers, at::TensorList state_steps,
                           double lr, double alpha, double eps, double weight_decay, double momentum, bool centered,
                           bool maximize, const OptT& grad_scale, const OptT& found_inf, const OptT& clip_total_norm,
                           double clip_max_norm) {
  {
    at::AutoDispatchBelowADInplaceOrView below;
    optim::rmsprop_step_op().call(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha,
                                  eps, weight_decay, momentum, centered, maximize, grad_scale, found_inf,
                                  clip_total_norm, clip_max_norm);
  }
  bump(params);
  bump(square_avgs);
  bump(grad_avgs);
  bump(momentum_buffers);
  bump(state_steps);
  if (optim::present(grad_scale) || optim::present(clip_total_norm)) bump(grads);
}

void adagrad_step_autograd(at::TensorList params, at::TensorList grads, at::TensorList state_sums,
                           at::TensorList state_steps, double lr, double lr_decay, double weight_decay, double eps,
                           bool maximize, const OptT& grad_scale, const OptT& found_inf, const OptT& clip_total_norm,
                           double clip_max_norm) {
  {
    at::AutoDispatchBelowADInplaceOrView below;
    optim::adagrad_step_op().call(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
                                  grad_scale, found_inf, clip_total_norm, clip_max_norm);
  }
  bump(params);
  bump(state_sums);
  bump(state_steps);
  if (optim::present(grad_scale) || optim::present(clip_total_norm)) bump(grads);
}

void clip_scale_autograd(at::TensorList tensors, const at::Tensor& total_norm, double max_norm) {
  {
    at::AutoDispatchBelowADInplaceOrView below;
    optim::clip_scale_op().call(tensors, total_norm, max_norm);
  }
  bump(tensors);
}

}  // namespace

TORCH_LIBRARY_IMPL(minitorch_ext, Autograd, m) {
  m.impl("sgd_step_", &sgd_step_autograd);
  m.impl("adam_step_", &adam_step_autograd);
  m.impl("rmsprop_step_", &rmsprop_step_autograd);
  m.impl("adagrad_step_", &adagrad_step_autograd);
  m.impl("clip_scale_", &clip_scale_autograd);
}

}  // namespace mte
