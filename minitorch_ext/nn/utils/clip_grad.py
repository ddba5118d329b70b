"""clip_grad_norm_ on fused multi-tensor kernels (mirrors torch.nn.utils.clip_grad_norm_).

Norm types 2.0, 1.0 and inf run on our kernels: ``total_norm`` makes one pass
over all gradients (per-thread partial sums, combined in a fixed order), and
``clip_scale_`` one in-place pass that multiplies by
``min(max_norm / (total_norm + 1e-6), 1)`` -- skipped when that is exactly 1,
since it would change nothing. Any other ``norm_type`` (0, -inf, 3, ...) is
passed to ``torch.nn.utils.clip_grad_norm_`` itself: that is the one place
this function runs torch's implementation instead of ours.

``optimizer.clip_grad_norm_(max_norm)`` on our optimizers (minitorch_ext.optim)
goes one pass further: it computes the norm here and leaves the multiply to
the next step kernel, which scales each grad as it reads it (same result,
bitwise; see FusedStep.clip_grad_norm_).

The norm is accumulated more precisely than torch does it (float32 blocks
summed in double), so it can differ from torch's in the last bits; the clip
coefficient is then computed with torch's float32 arithmetic. For bfloat16
grads the norm and coefficient are computed in float32 (torch: in bfloat16);
the returned norm has the grads' dtype, as torch's.
"""
from __future__ import annotations

import math
import types
import warnings
from collections.abc import Iterable

import torch

from ...ops import optim as _ops_optim

_OUR_NORMS = (2.0, 1.0, math.inf)


def _combine(norms: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    if len(norms) == 1:
        return norms[0]
    stacked = torch.stack([n.to(norms[0].device, torch.float64) for n in norms])
    if norm_type == math.inf:
        return stacked.max().to(norms[0].dtype)
    if norm_type == 1.0:
        return stacked.sum().to(norms[0].dtype)
    return stacked.square().sum().sqrt().to(norms[0].dtype)


def grads_of(parameters) -> list[torch.Tensor]:
    """The non-None grads of `parameters` (a tensor or an iterable); sparse ones refused."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and len(parameters) == 0:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=4)
    grads = [p.grad for p in parameters if p.grad is not None]
    for g in grads:
        if g.is_sparse:
            raise RuntimeError("minitorch_ext.nn.utils.clip_grad_norm_ does not support sparse gradients")
    return grads


def total_norm_of(grads: list[torch.Tensor], norm_type: float, error_if_nonfinite: bool) -> torch.Tensor:
    """The global norm of `grads` (on the first grad's device; one pass per device),
    with torch's error for a non-finite norm when asked."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    first_device = grads[0].device
    norms = [_ops_optim.op("total_norm", dev)(gs, norm_type) for dev, gs in by_device.items()]
    total = _combine([n.to(first_device) for n in norms], norm_type)
    if error_if_nonfinite and torch.logical_or(total.isnan(), total.isinf()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable "
            "this error and scale the gradients by the non-finite norm anyway, "
            "set `error_if_nonfinite=False`")
    return total


def scale_by_clip_coef_(grads: list[torch.Tensor], total: torch.Tensor, max_norm: float) -> None:
    """grads *= min(max_norm / (total + 1e-6), 1), one in-place pass per device."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault(g.device, []).append(g)
    for dev, gs in by_device.items():
        _ops_optim.op("clip_scale_", dev)(gs, total.to(dev), float(max_norm))


def returned_norm(total: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """The norm as torch returns it: in the grads' promoted dtype."""
    out_dtype = grads[0].dtype
    for g in grads[1:]:
        out_dtype = torch.promote_types(out_dtype, g.dtype)
    return total.to(out_dtype)


@torch.no_grad()
def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """Clip the gradient norm of an iterable of parameters (torch.nn.utils.clip_grad_norm_'s
    signature and result). ``foreach`` is accepted and ignored: ours is always fused.

    To have the optimizer step apply the clip instead of a pass of its own, call
    ``optimizer.clip_grad_norm_(max_norm)`` on a minitorch_ext optimizer."""
    norm_type = float(norm_type)
    if norm_type not in _OUR_NORMS:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
    grads = grads_of(parameters)
    if len(grads) == 0:
        return torch.tensor(0.0)
    total = total_norm_of(grads, norm_type, error_if_nonfinite)
    scale_by_clip_coef_(grads, total, max_norm)
    return returned_norm(total, grads)
