"""Batch and group normalization, Python side: fake kernels, autograd, torch's semantics.

Registered ops (schemas in csrc/ops.cpp, C++ kernels in csrc/bnorm/bnorm_cpu.cpp):

    torch.ops.minitorch_ext.batch_norm_fwd / batch_norm_bwd     C++ (CPU)
    torch.ops.minitorch_ext.group_norm_fwd / group_norm_bwd
    torch.ops.minitorch_ext.<each of the above>_triton          Triton (kernels/bnorm.py), same schemas

batch_norm_fwd updates running_mean/running_var in place (declared mutable in its
schema), and torch.library.register_autograd refuses mutable ops; so autograd is an
autograd.Function over the two ops (torch.compile traces through it). InstanceNorm is
group norm with one group per channel, its running statistics the per-sample ones
averaged over the batch, as torch's instance_norm does.

Public functionals with torch.nn.functional's signatures: batch_norm, group_norm,
instance_norm (re-exported by minitorch_ext.nn.functional).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backend
from ._registry import scalar_type_name, triton_custom_op

_OPS = torch.ops.minitorch_ext


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fmt(x: Tensor):
    if x.dim() in (4, 5):
        return torch._prims_common.suggest_memory_format(x)
    return torch.contiguous_format


# ---------------------------------------------------------------------------
# fake (meta) kernels
# ---------------------------------------------------------------------------

def _fake_bn_fwd(input, weight, bias, running_mean, running_var, training, momentum, eps):
    C = input.shape[1]
    y = torch.empty_like(input, memory_format=_fmt(input))
    return (y, input.new_empty((C,), dtype=_stat_dtype(input)), input.new_empty((C,), dtype=_stat_dtype(input)))


def _fake_bn_bwd(grad_output, input, weight, save_mean, save_invstd, training, output_mask):
    C = input.shape[1]
    p = weight if weight is not None else input
    return (torch.empty_like(input, memory_format=_fmt(input)) if output_mask[0] else input.new_empty((0,)),
            p.new_empty((C,)) if output_mask[1] else input.new_empty((0,)),
            p.new_empty((C,)) if output_mask[2] else input.new_empty((0,)))


def _fake_gn_fwd(input, weight, bias, num_groups, eps):
    N = input.shape[0]
    return (torch.empty_like(input, memory_format=_fmt(input)),
            input.new_empty((N, num_groups), dtype=_stat_dtype(input)),
            input.new_empty((N, num_groups), dtype=_stat_dtype(input)))


def _fake_gn_bwd(grad_output, input, weight, mean, rstd, num_groups, output_mask):
    return _fake_bn_bwd(grad_output, input, weight, None, None, True, output_mask)


torch.library.register_fake("minitorch_ext::batch_norm_fwd")(_fake_bn_fwd)
torch.library.register_fake("minitorch_ext::batch_norm_bwd")(_fake_bn_bwd)
torch.library.register_fake("minitorch_ext::group_norm_fwd")(_fake_gn_fwd)
torch.library.register_fake("minitorch_ext::group_norm_bwd")(_fake_gn_bwd)


# ---------------------------------------------------------------------------
# Triton ops: minitorch_ext.kernels.bnorm behind the same schemas
# ---------------------------------------------------------------------------

@triton_custom_op("minitorch_ext::batch_norm_fwd_triton", mutates_args=("running_mean", "running_var"),
                  fake=_fake_bn_fwd)
def _bn_fwd_triton(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],
                   running_var: Optional[Tensor], training: bool, momentum: float,
                   eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import bnorm as K

    return K.batch_norm_fwd(input, weight, bias, running_mean, running_var, training, momentum, eps)


@triton_custom_op("minitorch_ext::batch_norm_bwd_triton", mutates_args=(), fake=_fake_bn_bwd)
def _bn_bwd_triton(grad_output: Tensor, input: Tensor, weight: Optional[Tensor], save_mean: Tensor,
                   save_invstd: Tensor, training: bool, output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import bnorm as K

    return K.batch_norm_bwd(grad_output, input, weight, save_mean, save_invstd, training, output_mask)


@triton_custom_op("minitorch_ext::group_norm_fwd_triton", mutates_args=(), fake=_fake_gn_fwd)
def _gn_fwd_triton(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], num_groups: int,
                   eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import bnorm as K

    return K.group_norm_fwd(input, weight, bias, num_groups, eps)


@triton_custom_op("minitorch_ext::group_norm_bwd_triton", mutates_args=(), fake=_fake_gn_bwd)
def _gn_bwd_triton(grad_output: Tensor, input: Tensor, weight: Optional[Tensor], mean: Tensor, rstd: Tensor,
                   num_groups: int, output_mask: List[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    from minitorch_ext.kernels import bnorm as K

    return K.group_norm_bwd(grad_output, input, weight, mean, rstd, num_groups, output_mask)


def _op(name: str, backend: str):
    return getattr(_OPS, name + "_triton" if backend == "triton" else name)


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------

def _opt(g: Tensor, ref: Optional[Tensor], need: bool) -> Optional[Tensor]:
    return g if (need and ref is not None) else None


class _BatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps, backend):
        fwd = _op("batch_norm_fwd", backend)
        y, mean, invstd = fwd(input, weight, bias, running_mean, running_var, training, momentum, eps)
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.training, ctx.backend = training, backend
        return y

    @staticmethod
    def backward(ctx, gy):
        input, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[0], need[1] and weight is not None, need[2]]
        if not any(mask):
            return (None,) * 9
        gx, gw, gb = _op("batch_norm_bwd", ctx.backend)(gy, input, weight,
                                                        mean, invstd, ctx.training, mask)
        return (gx if need[0] else None, _opt(gw, weight, need[1]), gb if need[2] else None,
                None, None, None, None, None, None)


class _GroupNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, num_groups, eps, backend):
        y, mean, rstd = _op("group_norm_fwd", backend)(input, weight, bias, num_groups, eps)
        ctx.save_for_backward(input, weight, mean, rstd)
        ctx.num_groups, ctx.backend = num_groups, backend
        ctx.mark_non_differentiable(mean, rstd)
        return y, mean, rstd

    @staticmethod
    def backward(ctx, gy, _gm, _gr):
        input, weight, mean, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        mask = [need[0], need[1] and weight is not None, need[2]]
        if not any(mask):
            return (None,) * 6
        gx, gw, gb = _op("group_norm_bwd", ctx.backend)(gy, input, weight, mean, rstd, ctx.num_groups, mask)
        return (gx if need[0] else None, _opt(gw, weight, need[1]), gb if need[2] else None, None, None, None)


# ---------------------------------------------------------------------------
# public entry points (torch.nn.functional signatures)
# ---------------------------------------------------------------------------

def _check_tensor(t, name: str, fn: str) -> None:
    if t is not None and not isinstance(t, Tensor):
        raise TypeError(f"{fn}(): argument '{name}' must be Tensor, not {type(t).__name__}")


def _check_float(x: Tensor, fn: str) -> None:
    if not x.is_floating_point():
        raise NotImplementedError(f'"{fn}" not implemented for \'{scalar_type_name(x.dtype)}\'')


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Same as torch.nn.functional.batch_norm, on our kernels (running stats updated in place)."""
    for t, name in ((input, "input"), (running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        _check_tensor(t, name, "batch_norm")
    if input.dim() < 2:
        raise ValueError(f"batch_norm: input: expected at least 2-D input [N, C, *], got {input.dim()}-D input "
                         f"of size {tuple(input.shape)}")
    _check_float(input, "batch_norm")
    if training:
        F._verify_batch_size(input.size())  # torch's own check and message
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    return _BatchNormFn.apply(input, weight, bias, running_mean, running_var, bool(training), float(momentum),
                              float(eps), _backend.resolve(input.device))


def group_norm(input: Tensor, num_groups: int, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None,
               eps: float = 1e-5) -> Tensor:
    """Same as torch.nn.functional.group_norm, on our kernels."""
    for t, name in ((input, "input"), (weight, "weight"), (bias, "bias")):
        _check_tensor(t, name, "group_norm")
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    _check_float(input, "group_norm")
    if input.shape[1] % num_groups != 0 if num_groups > 0 else True:
        raise RuntimeError(f"Expected number of channels in input to be divisible by num_groups, but got input "
                           f"of shape {list(input.shape)} and num_groups={num_groups}")
    return _GroupNormFn.apply(input, weight, bias, int(num_groups), float(eps), _backend.resolve(input.device))[0]


def instance_norm(input: Tensor, running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None,
                  weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Same as torch.nn.functional.instance_norm, on our kernels: group norm with one
    group per channel; the running stats (when given and use_input_stats) move towards
    the per-sample statistics averaged over the batch (unbiased variance), as torch's."""
    for t, name in ((input, "input"), (running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        _check_tensor(t, name, "instance_norm")
    if input.dim() < 2:
        raise ValueError(f"instance_norm: input: expected at least 2-D input [N, C, *], got {input.dim()}-D")
    _check_float(input, "instance_norm")
    if use_input_stats:
        F._verify_spatial_size(input.size())  # torch's own check and message
    backend = _backend.resolve(input.device)
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: running_mean and running_var must be given when use_input_stats "
                             "is False")
        return _BatchNormFn.apply(input, weight, bias, running_mean, running_var, False, 0.0, float(eps), backend)
    C = input.shape[1]
    y, mean, rstd = _GroupNormFn.apply(input, weight, bias, C, float(eps), backend)
    if running_mean is not None or running_var is not None:
        S = input[0, 0].numel()
        with torch.no_grad():
            # per-(n, c) biased var from rstd, made unbiased; averaged over n
            var = (rstd.double().reciprocal().square() - eps) * (S / max(S - 1, 1))
            m = float(momentum)
            if running_mean is not None:
                running_mean.mul_(1 - m).add_(mean.double().mean(0).to(running_mean.dtype), alpha=m)
            if running_var is not None:
                running_var.mul_(1 - m).add_(var.mean(0).to(running_var.dtype), alpha=m)
    return y
