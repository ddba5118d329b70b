"""minitorch_ext.optim.RMSprop: torch.optim.RMSprop on one fused multi-tensor kernel."""
from __future__ import annotations

import torch

from . import _common as C


class RMSprop(C.FusedStep, torch.optim.RMSprop):
    """Drop-in for :class:`torch.optim.RMSprop` (same constructor, defaults,
    param_group keys and state keys ``step``, ``square_avg``,
    ``momentum_buffer``, ``grad_avg``, so state_dicts load both ways). Each
    param group is updated by one call of ``torch.ops.minitorch_ext.rmsprop_step_``,
    which reads and writes every tensor once; the arithmetic is ordered as
    torch's default CPU path computes it. Works with ``torch.amp.GradScaler``
    the way torch's fused optimizers do, and with ``clip_grad_norm_`` folded
    into the step (see ``FusedStep.clip_grad_norm_``).

    ``foreach`` and ``capturable`` are accepted for compatibility and ignored;
    ``step`` lives beside the param. ``differentiable=True`` is not supported.
    A tensor lr is read as a float. Params must be float32, float64 or
    bfloat16; sparse gradients are refused.
    """

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False):
        if differentiable:
            raise RuntimeError("minitorch_ext.optim.RMSprop does not support differentiable=True")
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                         centered=centered, capturable=capturable, foreach=foreach, maximize=maximize,
                         differentiable=differentiable)

    def _step_group(self, group, grad_scale, found_inf, clip=None):
        clip_total, clip_max = clip if clip is not None else (None, 0.0)
        momentum, centered = group["momentum"], group["centered"]
        params, grads, sqs, gas, bufs, steps = [], [], [], [], [], []
        state = self.state
        for p in group["params"]:
            g = C.grad_of(p)
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError("RMSprop does not support sparse gradients")
            st = state[p]
            if not st:
                C.check_param("minitorch_ext.optim.RMSprop", p)
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if momentum > 0:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if centered:
                    st["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(g)
            sqs.append(st["square_avg"])
            if centered:
                gas.append(st["grad_avg"])
            if momentum > 0:
                bufs.append(st["momentum_buffer"])
            steps.append(st["step"])
        if not params:
            return
        kw = dict(lr=float(group["lr"]), alpha=float(group["alpha"]), eps=float(group["eps"]),
                  weight_decay=float(group["weight_decay"]), momentum=float(momentum), centered=bool(centered),
                  maximize=bool(group["maximize"]))
        for bucket in C.buckets(params):
            dev = params[bucket[0]].device
            lists = (params, grads, sqs, gas, bufs, steps)
            if len(bucket) != len(params):
                lists = tuple([lst[i] for i in bucket] if lst else [] for lst in lists)
            C.op("rmsprop_step_", dev)(*lists, grad_scale=C.on(grad_scale, dev), found_inf=C.on(found_inf, dev),
                                       clip_total_norm=C.on(clip_total, dev), clip_max_norm=clip_max, **kw)
