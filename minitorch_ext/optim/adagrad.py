"""minitorch_ext.optim.Adagrad: torch.optim.Adagrad on one fused multi-tensor kernel."""
from __future__ import annotations

import torch

from . import _common as C


class Adagrad(C.FusedStep, torch.optim.Adagrad):
    """Drop-in for :class:`torch.optim.Adagrad` (same constructor, defaults,
    param_group keys and state keys ``step`` and ``sum``, created at
    construction as torch creates them, so state_dicts load both ways). Each
    param group is updated by one call of ``torch.ops.minitorch_ext.adagrad_step_``,
    which reads and writes every tensor once; the arithmetic is ordered as
    torch's default CPU path computes it. Works with ``torch.amp.GradScaler``
    the way torch's fused optimizers do, and with ``clip_grad_norm_`` folded
    into the step (see ``FusedStep.clip_grad_norm_``).

    ``foreach`` and ``fused`` are accepted for compatibility (and checked as
    torch checks them) but ignored; ``step`` lives beside the param, as with
    torch's fused=True. ``differentiable=True``
    is not supported. A tensor lr is read as a float. Params must be float32,
    float64 or bfloat16; sparse gradients are refused (torch's Adagrad takes
    them; its sparse path is not fused).
    """

    def __init__(self, params, lr: float | torch.Tensor = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None):
        if differentiable:
            raise RuntimeError("minitorch_ext.optim.Adagrad does not support differentiable=True")
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps, foreach=foreach,
                         maximize=maximize, differentiable=differentiable, fused=fused)
        for group in self.param_groups:  # torch's constructor made the state; check what it made it for
            for p in group["params"]:
                C.check_param("minitorch_ext.optim.Adagrad", p)
        C.steps_to_param_device(self)

    def _init_state(self, group, p):
        """State for a param torch's constructor did not see (one of a group added later)."""
        C.check_param("minitorch_ext.optim.Adagrad", p)
        st = self.state[p]
        st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        st["sum"] = torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format)
        return st

    def _step_group(self, group, grad_scale, found_inf, clip=None):
        clip_total, clip_max = clip if clip is not None else (None, 0.0)
        params, grads, sums, steps = [], [], [], []
        state = self.state
        for p in group["params"]:
            g = C.grad_of(p)
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError("minitorch_ext.optim.Adagrad does not support sparse gradients "
                                   "(torch.optim.Adagrad does, unfused)")
            st = state[p]
            if "sum" not in st:
                st = self._init_state(group, p)
            params.append(p)
            grads.append(g)
            sums.append(st["sum"])
            steps.append(st["step"])
        if not params:
            return
        kw = dict(lr=float(group["lr"]), lr_decay=float(group["lr_decay"]),
                  weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                  maximize=bool(group["maximize"]))
        for bucket in C.buckets(params):
            dev = params[bucket[0]].device
            lists = (params, grads, sums, steps)
            if len(bucket) != len(params):
                lists = tuple([lst[i] for i in bucket] for lst in lists)
            C.op("adagrad_step_", dev)(*lists, grad_scale=C.on(grad_scale, dev), found_inf=C.on(found_inf, dev),
                                       clip_total_norm=C.on(clip_total, dev), clip_max_norm=clip_max, **kw)
