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
def _sgd_step_fake(params, grads, momentum_buffers, *, lr, momentum, dampening, weight_decay, nesterov,
                   maximize, is_first_step, lr_tensor=None, grad_scale=None, found_inf=None):
    _check_lists(params, ("grads", grads), ("momentum_buffers", momentum_buffers))
    return None


@torch.library.register_fake(f"{_lib}::adam_step_")
def _adam_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1, beta2,
                    weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, lr_tensor=None,
                    grad_scale=None, found_inf=None):
    _check_lists(params, ("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
                 ("max_exp_avg_sqs", max_exp_avg_sqs), ("state_steps", state_steps))
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


def backend_for(device) -> str:
    """Which implementation runs the optimizer ops for tensors on `device`.

    Only the compiled ("cpp": C++ on CPU, CUDA on GPU) kernels exist for this
    family so far; a Triton choice is a clear error, never a silent fall-back.
    """
    name = _backend.resolve(device)
    if name != "cpp":
        raise RuntimeError(
            f"minitorch_ext optimizer steps have no {name!r} kernels yet; use_backend('cpp') for them")
    return name
