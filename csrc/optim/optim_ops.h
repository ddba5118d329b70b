// Typed dispatcher handles of the in-place optimizer ops, for C++ code that
// calls them (the Autograd-key kernels in optim_autograd.cpp, the eager
// Python entry points in optim_py.cpp). The signatures are those of the
// schemas in csrc/ops.cpp.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

namespace mte::optim {

using OptT = std::optional<at::Tensor>;
using SgdStepSig = void(at::TensorList, at::TensorList, at::TensorList, double, double, double, double, bool, bool,
                        bool, const OptT&, const OptT&, const OptT&, const OptT&, double);
using AdamStepSig = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                         at::TensorList, double, double, double, double, double, bool, bool, bool, const OptT&,
                         const OptT&, const OptT&, const OptT&, double);
using RmspropStepSig = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                            at::TensorList, double, double, double, double, double, bool, bool, const OptT&,
                            const OptT&, const OptT&, double);
using AdagradStepSig = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, double, double, double,
                            double, bool, const OptT&, const OptT&, const OptT&, double);
using TotalNormSig = at::Tensor(at::TensorList, double);
using ClipScaleSig = void(at::TensorList, const at::Tensor&, double);

template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Each handle is looked up once, on first use.
inline const auto& sgd_step_op() {
  static const auto op = find_op<SgdStepSig>("minitorch_ext::sgd_step_");
  return op;
}
inline const auto& adam_step_op() {
  static const auto op = find_op<AdamStepSig>("minitorch_ext::adam_step_");
  return op;
}
inline const auto& rmsprop_step_op() {
  static const auto op = find_op<RmspropStepSig>("minitorch_ext::rmsprop_step_");
  return op;
}
inline const auto& adagrad_step_op() {
  static const auto op = find_op<AdagradStepSig>("minitorch_ext::adagrad_step_");
  return op;
}
inline const auto& total_norm_op() {
  static const auto op = find_op<TotalNormSig>("minitorch_ext::total_norm");
  return op;
}
inline const auto& clip_scale_op() {
  static const auto op = find_op<ClipScaleSig>("minitorch_ext::clip_scale_");
  return op;
}

}  // namespace mte::optim
