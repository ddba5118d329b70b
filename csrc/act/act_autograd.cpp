// Autograd-key kernel of the in-place activation op act_ (every device).
//
// act_ itself is not differentiable here: minitorch_ext.nn.functional's
// in-place forms (relu(x, inplace=True), ...) wrap it in an autograd.Function
// that marks x dirty and saves what the backward needs. This kernel does what
// an in-place ATen op does at the autograd layer: run the op below autograd and
// bump self's version counter, so a graph that saved self before the update
// refuses to backward through the stale value (torch's boxed fallback for
// custom ops does not bump it). Called directly on a tensor that requires grad
// with grad mode on, it refuses rather than drop the history silently.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

namespace mte {
namespace {

void act_inplace_autograd(const at::Tensor& self, c10::string_view act, double slope) {
  TORCH_CHECK(!(c10::GradMode::is_enabled() && self.requires_grad()),
              "act_: self requires grad; call minitorch_ext.nn.functional.<activation>(x, inplace=True), "
              "which records the in-place update for autograd");
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("minitorch_ext::act_", "")
                       .typed<void(const at::Tensor&, c10::string_view, double)>();
  {
    at::AutoDispatchBelowADInplaceOrView below;
    op.call(self, act, slope);
  }
  self.unsafeGetTensorImpl()->bump_version();
}

}  // namespace
}  // namespace mte

TORCH_LIBRARY_IMPL(minitorch_ext, Autograd, m) { m.impl("act_", &mte::act_inplace_autograd); }
