"""Optimizer-step family: fake (meta) kernels for the registered ops.

The ops (schemas in csrc/ops.cpp) mutate their arguments in place and return
nothing, except ``total_norm``, which returns a 0-dim tensor: float64 when any
input is float64, else float32. Their fake kernels therefore only check what
they can and allocate that one result, so ``torch.library.opcheck`` and
``torch.compile`` can trace through them.

Backends: these ops run the C++ kernel for CPU tensors (csrc/optim/optim_cpu.cpp)
and the CUDA kernel for CUDA tensors where one is built; ``resolve`` says which.
"""
from __future__ import annotations

import torch

from .. import _backend

_lib = "minitorch_ext"


def _check_lists(params, *others):
    for name, lst in others:
        if len(lst) not in (0, len(params)):
            raise ValueError(f"{name}: expected {len(params)} tensors (one per parameter), got {len(lst)}")


@torch.library.register_fake(f"{_lib}::sgd_step_")
def _sgd_step_fake(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov,
                   maximize, is_first_step, lr_tensor=None, grad_scale=None, found_inf=None, clip_total_norm=None,
                   clip_max_norm=0.0):
    _check_lists(params, ("grads", grads), ("momentum_buffers", momentum_buffers))
    return None


@torch.library.register_fake(f"{_lib}::adam_step_")
def _adam_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2,
                    weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, lr_tensor=None,
                    grad_scale=None, found_inf=None, clip_total_norm=None, clip_max_norm=0.0):
    _check_lists(params, ("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
                 ("max_exp_avg_sqs", max_exp_avg_sqs), ("state_steps", state_steps))
    return None


@torch.library.register_fake(f"{_lib}::rmsprop_step_")
def _rmsprop_step_fake(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr, alpha, eps,
                       weight_decay, momentum, centered, maximize, grad_scale=None, found_inf=None,
                       clip_total_norm=None, clip_max_norm=0.0):
    _check_lists(params, ("grads", grads), ("square_avgs", square_avgs), ("grad_avgs", grad_avgs),
                 ("momentum_buffers", momentum_buffers), ("state_steps", state_steps))
    return None


@torch.library.register_fake(f"{_lib}::adagrad_step_")
def _adagrad_step_fake(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
                       grad_scale=None, found_inf=None, clip_total_norm=None, clip_max_norm=0.0):
    _check_lists(params, ("grads", grads), ("state_sums", state_sums), ("state_steps", state_steps))
    return None


def _norm_dtype(tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@torch.library.register_fake(f"{_lib}::total_norm")
def _total_norm_fake(tensors, norm_type):
    device = tensors[0].device if len(tensors) else torch.device("cpu")
    return torch.empty((), dtype=_norm_dtype(tensors), device=device)


@torch.library.register_fake(f"{_lib}::clip_scale_")
def _clip_scale_fake(tensors, total_norm, max_norm):
    return None


# ---------------------------------------------------------------------------
# Triton ops: the kernels of minitorch_ext.kernels.optim behind the same schemas.
# Registered as opaque custom ops on every device: the kernels write through a
# table of data pointers, which neither fake tensors nor triton_op's mutation
# analysis can see, so torch.compile must treat them as black boxes. (custom_op
# allows no keyword-only tensors, so these schemas take every argument by
# position or keyword; callers pass the same keywords as to the C++ ops.)
# ---------------------------------------------------------------------------
from typing import List, Optional  # noqa: E402

from torch import Tensor  # noqa: E402


@torch.library.custom_op(f"{_lib}::sgd_step_triton_", mutates_args=("params", "grads", "momentum_buffers"))
def _sgd_step_triton(params: List[Tensor], grads: List[Tensor], momentum_buffers: List[Tensor], lr: float,
                     momentum: float, dampening: float, weight_decay: float, nesterov: bool, maximize: bool,
                     is_first_step: bool, lr_tensor: Optional[Tensor] = None, grad_scale: Optional[Tensor] = None,
                     found_inf: Optional[Tensor] = None, clip_total_norm: Optional[Tensor] = None,
                     clip_max_norm: float = 0.0) -> None:
    from minitorch_ext.kernels import optim as K

    K.sgd_step_(params, grads, momentum_buffers, lr=lr, momentum=momentum, dampening=dampening,
                weight_decay=weight_decay, nesterov=nesterov, maximize=maximize, is_first_step=is_first_step,
                lr_tensor=lr_tensor, grad_scale=grad_scale, found_inf=found_inf, clip_total_norm=clip_total_norm,
                clip_max_norm=clip_max_norm)


@torch.library.custom_op(f"{_lib}::adam_step_triton_",
                         mutates_args=("params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs",
                                       "state_steps"))
def _adam_step_triton(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                      exp_avg_sqs: List[Tensor], max_exp_avg_sqs: List[Tensor], state_steps: List[Tensor],
                      lr: float, beta1: float, beta2: float, weight_decay: float, eps: float, amsgrad: bool,
                      maximize: bool, decoupled_weight_decay: bool, lr_tensor: Optional[Tensor] = None,
                      grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
                      clip_total_norm: Optional[Tensor] = None, clip_max_norm: float = 0.0) -> None:
    from minitorch_ext.kernels import optim as K

    K.adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr=lr, beta1=beta1,
                 beta2=beta2, weight_decay=weight_decay, eps=eps, amsgrad=amsgrad, maximize=maximize,
                 decoupled_weight_decay=decoupled_weight_decay, lr_tensor=lr_tensor, grad_scale=grad_scale,
                 found_inf=found_inf, clip_total_norm=clip_total_norm, clip_max_norm=clip_max_norm)


@torch.library.custom_op(f"{_lib}::rmsprop_step_triton_",
                         mutates_args=("params", "grads", "square_avgs", "grad_avgs", "momentum_buffers",
                                       "state_steps"))
def _rmsprop_step_triton(params: List[Tensor], grads: List[Tensor], square_avgs: List[Tensor],
                         grad_avgs: List[Tensor], momentum_buffers: List[Tensor], state_steps: List[Tensor],
                         lr: float, alpha: float, eps: float, weight_decay: float, momentum: float, centered: bool,
                         maximize: bool, grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
                         clip_total_norm: Optional[Tensor] = None, clip_max_norm: float = 0.0) -> None:
    from minitorch_ext.kernels import optim as K

    K.rmsprop_step_(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, lr=lr, alpha=alpha,
                    eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered, maximize=maximize,
                    grad_scale=grad_scale, found_inf=found_inf, clip_total_norm=clip_total_norm,
                    clip_max_norm=clip_max_norm)


@torch.library.custom_op(f"{_lib}::adagrad_step_triton_",
                         mutates_args=("params", "grads", "state_sums", "state_steps"))
def _adagrad_step_triton(params: List[Tensor], grads: List[Tensor], state_sums: List[Tensor],
                         state_steps: List[Tensor], lr: float, lr_decay: float, weight_decay: float, eps: float,
                         maximize: bool, grad_scale: Optional[Tensor] = None, found_inf: Optional[Tensor] = None,
                         clip_total_norm: Optional[Tensor] = None, clip_max_norm: float = 0.0) -> None:
    from minitorch_ext.kernels import optim as K

    K.adagrad_step_(params, grads, state_sums, state_steps, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                    eps=eps, maximize=maximize, grad_scale=grad_scale, found_inf=found_inf,
                    clip_total_norm=clip_total_norm, clip_max_norm=clip_max_norm)


@torch.library.custom_op(f"{_lib}::total_norm_triton", mutates_args=())
def _total_norm_triton(tensors: List[Tensor], norm_type: float) -> Tensor:
    from minitorch_ext.kernels import optim as K

    return K.total_norm(tensors, norm_type)


@torch.library.custom_op(f"{_lib}::clip_scale_triton_", mutates_args=("tensors",))
def _clip_scale_triton(tensors: List[Tensor], total_norm: Tensor, max_norm: float) -> None:
    from minitorch_ext.kernels import optim as K

    K.clip_scale_(tensors, total_norm, max_norm)


_sgd_step_triton.register_fake(_sgd_step_fake)
_adam_step_triton.register_fake(_adam_step_fake)
_rmsprop_step_triton.register_fake(_rmsprop_step_fake)
_adagrad_step_triton.register_fake(_adagrad_step_fake)
_total_norm_triton.register_fake(_total_norm_fake)
_clip_scale_triton.register_fake(_clip_scale_fake)

_TRITON_NAME = {"sgd_step_": "sgd_step_triton_", "adam_step_": "adam_step_triton_",
                "rmsprop_step_": "rmsprop_step_triton_", "adagrad_step_": "adagrad_step_triton_",
                "total_norm": "total_norm_triton", "clip_scale_": "clip_scale_triton_"}


def op(name: str, device):
    """The registered op that runs `name` ("sgd_step_", "adam_step_", "rmsprop_step_", "adagrad_step_", "total_norm",
    "clip_scale_") for tensors on `device` under the current backend: the C++ (CPU)
    or CUDA kernel for "cpp", the Triton kernel for "triton". An unavailable
    backend raises (see minitorch_ext._backend), never falls back to torch."""
    if _backend.resolve(device) == "triton":
        return getattr(torch.ops.minitorch_ext, _TRITON_NAME[name])
    if not torch.compiler.is_compiling():
        # Eager: the same registered op, entered through a binding that keeps the
        # GIL while it parses the tensor lists (csrc/optim/optim_py.cpp says why).
        return getattr(_eager(), name)
    return getattr(torch.ops.minitorch_ext, name)


def _eager():
    from .. import _C

    return _C.optim_eager


def eager():
    """The eager entry points (minitorch_ext._C.optim_eager)."""
    return _eager()


def backend_for(device) -> str:
    """The backend ("cpp" or "triton") the ops run with for tensors on `device`."""
    return _backend.resolve(device)
