"""clip_grad_norm_ on fused multi-tensor kernels (mirrors torch.nn.utils.clip_grad_norm_).

Norm types 2.0, 1.0 and inf run on our kernels: ``total_norm`` makes one pass
over all gradients (per-thread partial sums, combined in a fixed order), and
``clip_scale_`` one in-place pass that multiplies by
``min(max_norm / (total_norm + 1e-6), 1)`` -- skipped when that is exactly 1,
since it would change nothing. Any other ``norm_type`` (0, -inf, 3, ...) is
passed to ``torch.nn.utils.clip_grad_norm_`` itself: that is the one place
this function runs torch's implementation instead of ours.

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


@torch.no_grad()
def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """Clip the gradient norm of an iterable of parameters (torch.nn.utils.clip_grad_norm_'s
    signature and result). ``foreach`` is accepted and ignored: ours is always fused."""
    norm_type = float(norm_type)
    if norm_type not in _OUR_NORMS:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and len(parameters) == 0:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    grads = [p.grad for p in parameters if p.grad is not None]
    if len(grads) == 0:
        return torch.tensor(0.0)
    for g in grads:
        if g.is_sparse:
            raise RuntimeError("minitorch_ext.nn.utils.clip_grad_norm_ does not support sparse gradients")
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
    for dev, gs in by_device.items():
        _ops_optim.op("clip_scale_", dev)(gs, total.to(dev), float(max_norm))
    out_dtype = grads[0].dtype
    for g in grads[1:]:
        out_dtype = torch.promote_types(out_dtype, g.dtype)
    return total.to(out_dtype)
