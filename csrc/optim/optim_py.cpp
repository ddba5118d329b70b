// Eager-mode Python entry points for the multi-tensor optimizer ops.
//
// Why they exist. `torch.ops.minitorch_ext.sgd_step_(params, grads, bufs, ...)`
// takes the boxed path: every tensor of every list is copied into an IValue,
// the kernel runs with the GIL released, and those extra references are
// dropped while the GIL is still released. Dropping the last C++ reference to
// a tensor that Python owns must touch its PyObject, so each drop re-takes the
// GIL: an AdamW step over 1,000 parameters pays ~5,000 GIL round trips, which
// measured 0.1-0.5 ms a step on the 2-core build machine (more than the
// kernel's whole arithmetic for small tensors, and the reason this path lost
// to torch's fused SGD on the 1,000 x 4,096 case).
//
// What they do instead is what torch's own generated bindings do for
// torch._fused_sgd_: parse each list once with the GIL held, release the GIL
// only around the call, and drop the references after taking it back. The
// call still goes through the dispatcher (the typed handle of the registered
// op), so every dispatch key applies as before: the CPU or CUDA kernel,
// Python dispatch modes, fake tensors. Errors keep torch's Python types
// (ValueError, TypeError, ...) through HANDLE_TH_ERRORS.
//
// The optimizers use these in eager mode only; under torch.compile they call
// torch.ops.minitorch_ext.* (see minitorch_ext/ops/optim.py: `op`).
//
// sgd_group_step_ / adam_group_step_ go one step further for the common case
// of a step after the first: they gather the group themselves (each param's
// grad read from C++, so no Python object is made for it; each state tensor
// looked up in the optimizer's state dict) and then make the same call. For
// 1,000 small parameters the Python loop that builds those lists cost about
// 1 ms a step with cold caches (the lists walk ~10 dependent pointers per
// param), a quarter of an SGD step. They return False, having changed
// nothing, whenever the general Python path is needed: a param with a grad
// but no state yet (the first step), a sparse grad, params on several devices,
// GradScaler tensors on another device, or state that is not what the
// optimizer wrote.
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <vector>

#include "optim/optim_checks.h"
#include "optim/optim_ops.h"

namespace py = pybind11;

namespace mte {
namespace {

using TL = std::vector<at::Tensor>;
using optim::OptT;

void sgd_step(const TL& params, const TL& grads, const TL& momentum_buffers, double lr, double momentum,
              double dampening, double weight_decay, bool nesterov, bool maximize, bool is_first_step,
              const OptT& lr_tensor, const OptT& grad_scale, const OptT& found_inf, const OptT& clip_total_norm,
              double clip_max_norm) {
  HANDLE_TH_ERRORS
  py::gil_scoped_release no_gil;  // the lists (and their references) outlive this scope
  optim::sgd_step_op().call(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov,
                            maximize, is_first_step, lr_tensor, grad_scale, found_inf, clip_total_norm,
                            clip_max_norm);
  END_HANDLE_TH_ERRORS_PYBIND
}

void adam_step(const TL& params, const TL& grads, const TL& exp_avgs, const TL& exp_avg_sqs,
               const TL& max_exp_avg_sqs, const TL& state_steps, double lr, double beta1, double beta2,
               double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay,
               const OptT& lr_tensor, const OptT& grad_scale, const OptT& found_inf, const OptT& clip_total_norm,
               double clip_max_norm) {
  HANDLE_TH_ERRORS
  py::gil_scoped_release no_gil;
  optim::adam_step_op().call(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
                             weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, lr_tensor, grad_scale,
                             found_inf, clip_total_norm, clip_max_norm);
  END_HANDLE_TH_ERRORS_PYBIND
}

void rmsprop_step(const TL& params, const TL& grads, const TL& square_avgs, const TL& grad_avgs,
                  const TL& momentum_buffers, const TL& state_steps, double lr, double alpha, double eps,
                  double weight_decay, double momentum, bool centered, bool maximize, const OptT& grad_scale,
                  const OptT& found_inf, const OptT& clip_total_norm, double clip_max_norm) {
  HANDLE_TH_ERRORS
  py::gil_scoped_release no_gil;
  optim::rmsprop_step_op().call(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha, eps,
                                weight_decay, momentum, centered, maximize, grad_scale, found_inf, clip_total_norm,
                                clip_max_norm);
  END_HANDLE_TH_ERRORS_PYBIND
}

void adagrad_step(const TL& params, const TL& grads, const TL& state_sums, const TL& state_steps, double lr,
                  double lr_decay, double weight_decay, double eps, bool maximize, const OptT& grad_scale,
                  const OptT& found_inf, const OptT& clip_total_norm, double clip_max_norm) {
  HANDLE_TH_ERRORS
  py::gil_scoped_release no_gil;
  optim::adagrad_step_op().call(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
                                grad_scale, found_inf, clip_total_norm, clip_max_norm);
  END_HANDLE_TH_ERRORS_PYBIND
}

at::Tensor total_norm(const TL& tensors, double norm_type) {
  HANDLE_TH_ERRORS
  py::gil_scoped_release no_gil;
  return optim::total_norm_op().call(tensors, norm_type);
  END_HANDLE_TH_ERRORS_PYBIND
}

void clip_scale(const TL& tensors, const at::Tensor& total_norm, double max_norm) {
  HANDLE_TH_ERRORS
  py::gil_scoped_release no_gil;
  optim::clip_scale_op().call(tensors, total_norm, max_norm);
  END_HANDLE_TH_ERRORS_PYBIND
}

// --- group gather ---------------------------------------------------------
// A tensor out of a Python object, or nullptr when it is not one.
const at::Tensor* as_tensor(PyObject* o) {
  return (o != nullptr && THPVariable_Check(o)) ? &THPVariable_Unpack(o) : nullptr;
}

// state[param][key] as a tensor, or nullptr (missing, not a dict, not a tensor).
const at::Tensor* state_tensor(PyObject* param_state, const char* key) {
  if (param_state == nullptr || !PyDict_Check(param_state)) return nullptr;
  return as_tensor(PyDict_GetItemString(param_state, key));  // borrowed
}

bool same_device(const OptT& t, const at::Device& d) { return !t.has_value() || !t->defined() || t->device() == d; }

// The params of `group_params` that have a grad, with their grads and the
// state tensors named by `keys`; false when the fast path does not apply.
bool gather(const py::list& group_params, const py::dict& state, const std::vector<const char*>& keys,
            TL& params, TL& grads, std::vector<TL>& per_key) {
  const size_t n = group_params.size();
  params.reserve(n);
  grads.reserve(n);
  per_key.assign(keys.size(), TL{});
  for (auto& l : per_key) l.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    PyObject* obj = PyList_GET_ITEM(group_params.ptr(), i);
    const at::Tensor* p = as_tensor(obj);
    if (p == nullptr) return false;
    const at::Tensor& g = p->grad();
    if (!g.defined()) continue;  // torch skips params without a grad
    if (g.is_sparse()) return false;
    if (!mte::optim::same_layout(g, *p)) return false;  // the Python path lays the grad out as its param
    if (!params.empty() && p->device() != params[0].device()) return false;
    PyObject* st = nullptr;
    if (!keys.empty()) {
      st = PyDict_GetItemWithError(state.ptr(), obj);  // borrowed; hashes the param as the dict does
      if (st == nullptr) {
        if (PyErr_Occurred()) throw py::error_already_set();
        return false;  // no state yet: the first step
      }
    }
    for (size_t k = 0; k < keys.size(); ++k) {
      const at::Tensor* t = state_tensor(st, keys[k]);
      if (t == nullptr) return false;
      per_key[k].push_back(*t);
    }
    params.push_back(*p);
    grads.push_back(g);
  }
  return true;
}

bool sgd_group_step(const py::list& group_params, const py::dict& state, double lr, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool maximize, const OptT& grad_scale,
                    const OptT& found_inf, const OptT& clip_total_norm, double clip_max_norm) {
  HANDLE_TH_ERRORS
  TL params, grads;
  std::vector<TL> st;
  const bool has_momentum = momentum != 0.0;
  std::vector<const char*> keys;
  if (has_momentum) keys.push_back("momentum_buffer");
  if (!gather(group_params, state, keys, params, grads, st)) return false;
  if (params.empty()) return true;
  const auto dev = params[0].device();
  if (!same_device(grad_scale, dev) || !same_device(found_inf, dev) || !same_device(clip_total_norm, dev)) {
    return false;
  }
  sgd_step(params, grads, has_momentum ? st[0] : TL{}, lr, momentum, dampening, weight_decay, nesterov, maximize,
           /*is_first_step=*/false, std::nullopt, grad_scale, found_inf, clip_total_norm, clip_max_norm);
  return true;
  END_HANDLE_TH_ERRORS_PYBIND
}

bool adam_group_step(const py::list& group_params, const py::dict& state, double lr, double beta1, double beta2,
                     double weight_decay, double eps, bool amsgrad, bool maximize, bool decoupled_weight_decay,
                     const OptT& grad_scale, const OptT& found_inf, const OptT& clip_total_norm,
                     double clip_max_norm) {
  HANDLE_TH_ERRORS
  TL params, grads;
  std::vector<TL> st;
  std::vector<const char*> keys = {"exp_avg", "exp_avg_sq", "step"};
  if (amsgrad) keys.push_back("max_exp_avg_sq");
  if (!gather(group_params, state, keys, params, grads, st)) return false;
  if (params.empty()) return true;
  const auto dev = params[0].device();
  if (!same_device(grad_scale, dev) || !same_device(found_inf, dev) || !same_device(clip_total_norm, dev)) {
    return false;
  }
  adam_step(params, grads, st[0], st[1], amsgrad ? st[3] : TL{}, st[2], lr, beta1, beta2, weight_decay, eps,
            amsgrad, maximize, decoupled_weight_decay, std::nullopt, grad_scale, found_inf, clip_total_norm,
            clip_max_norm);
  return true;
  END_HANDLE_TH_ERRORS_PYBIND
}

}  // namespace

void register_optim_eager(py::module& m) {
  auto e = m.def_submodule("optim_eager", "Eager entry points of the optimizer ops (see csrc/optim/optim_py.cpp)");
  e.def("sgd_step_", &sgd_step, py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::kw_only(),
        py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"),
        py::arg("maximize"), py::arg("is_first_step"), py::arg("lr_tensor") = py::none(),
        py::arg("grad_scale") = py::none(), py::arg("found_inf") = py::none(),
        py::arg("clip_total_norm") = py::none(), py::arg("clip_max_norm") = 0.0);
  e.def("adam_step_", &adam_step, py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
        py::arg("max_exp_avg_sqs"), py::arg("state_steps"), py::kw_only(), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("amsgrad"), py::arg("maximize"),
        py::arg("decoupled_weight_decay"), py::arg("lr_tensor") = py::none(), py::arg("grad_scale") = py::none(),
        py::arg("found_inf") = py::none(), py::arg("clip_total_norm") = py::none(), py::arg("clip_max_norm") = 0.0);
  e.def("rmsprop_step_", &rmsprop_step, py::arg("params"), py::arg("grads"), py::arg("square_avgs"),
        py::arg("grad_avgs"), py::arg("momentum_buffers"), py::arg("state_steps"), py::kw_only(), py::arg("lr"),
        py::arg("alpha"), py::arg("eps"), py::arg("weight_decay"), py::arg("momentum"), py::arg("centered"),
        py::arg("maximize"), py::arg("grad_scale") = py::none(), py::arg("found_inf") = py::none(),
        py::arg("clip_total_norm") = py::none(), py::arg("clip_max_norm") = 0.0);
  e.def("adagrad_step_", &adagrad_step, py::arg("params"), py::arg("grads"), py::arg("state_sums"),
        py::arg("state_steps"), py::kw_only(), py::arg("lr"), py::arg("lr_decay"), py::arg("weight_decay"),
        py::arg("eps"), py::arg("maximize"), py::arg("grad_scale") = py::none(), py::arg("found_inf") = py::none(),
        py::arg("clip_total_norm") = py::none(), py::arg("clip_max_norm") = 0.0);
  e.def("sgd_group_step_", &sgd_group_step, py::arg("params"), py::arg("state"), py::kw_only(), py::arg("lr"),
        py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"), py::arg("nesterov"),
        py::arg("maximize"), py::arg("grad_scale") = py::none(), py::arg("found_inf") = py::none(),
        py::arg("clip_total_norm") = py::none(), py::arg("clip_max_norm") = 0.0);
  e.def("adam_group_step_", &adam_group_step, py::arg("params"), py::arg("state"), py::kw_only(), py::arg("lr"),
        py::arg("beta1"), py::arg("beta2"), py::arg("weight_decay"), py::arg("eps"), py::arg("amsgrad"),
        py::arg("maximize"), py::arg("decoupled_weight_decay"), py::arg("grad_scale") = py::none(),
        py::arg("found_inf") = py::none(), py::arg("clip_total_norm") = py::none(), py::arg("clip_max_norm") = 0.0);
  e.def("total_norm", &total_norm, py::arg("tensors"), py::arg("norm_type"));
  e.def("clip_scale_", &clip_scale, py::arg("tensors"), py::arg("total_norm"), py::arg("max_norm"));
}

}  // namespace mte
