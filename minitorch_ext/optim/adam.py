"""minitorch_ext.optim.Adam and .AdamW: torch.optim.Adam/AdamW on one fused multi-tensor kernel."""
from __future__ import annotations

import torch

from . import _common as C



class _FusedAdamStep(C.FusedStep):
    """The group step shared by Adam and AdamW (the group's decoupled_weight_decay flag decides)."""
    _name = "Adam"

    def _step_group(self, group, grad_scale, found_inf, clip=None):
        clip_total, clip_max = clip if clip is not None else (None, 0.0)
        amsgrad = group["amsgrad"]
        beta1, beta2 = group["betas"]
        fast = C.group_fast_path(group)
        if fast is not None and fast.adam_group_step_(
                group["params"], self.state, lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
                weight_decay=float(group["weight_decay"]), eps=float(group["eps"]), amsgrad=bool(amsgrad),
                maximize=bool(group["maximize"]),
                decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)), grad_scale=grad_scale,
                found_inf=found_inf, clip_total_norm=clip_total, clip_max_norm=clip_max):
            return
        params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps = [], [], [], [], [], []
        state = self.state
        # (bound appends: this loop is the step's Python cost for many small tensors)
        add_p, add_g, add_m, add_v, add_x, add_s = (params.append, grads.append, exp_avgs.append,
                                                    exp_avg_sqs.append, max_sqs.append, steps.append)
        for p in group["params"]:
            g = C.grad_of(p)
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"{self._name} does not support sparse gradients, please consider "
                                   "SparseAdam instead")
            st = state[p]
            if not st:
                C.check_param(f"minitorch_ext.optim.{self._name}", p)
                # `step` as torch's fused optimizers keep it: float32, beside the param.
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            add_p(p)
            add_g(g)
            add_m(st["exp_avg"])
            add_v(st["exp_avg_sq"])
            if amsgrad:
                add_x(st["max_exp_avg_sq"])
            add_s(st["step"])
        if not params:
            return
        kw = dict(beta1=float(beta1), beta2=float(beta2), weight_decay=float(group["weight_decay"]),
                  eps=float(group["eps"]), amsgrad=bool(amsgrad), maximize=bool(group["maximize"]),
                  decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)))
        for bucket in C.buckets(params):
            dev = params[bucket[0]].device
            _op = C.op("adam_step_", dev)
            lr_f, lr_t = C.lr_args(group["lr"], dev)
            if len(bucket) == len(params):
                args = (params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps)
            else:
                args = tuple([lst[i] for i in bucket] if lst else [] for lst in
                             (params, grads, exp_avgs, exp_avg_sqs, max_sqs, steps))
            _op(*args, lr=lr_f, lr_tensor=lr_t, grad_scale=C.on(grad_scale, dev), found_inf=C.on(found_inf, dev),
                clip_total_norm=C.on(clip_total, dev), clip_max_norm=clip_max, **kw)


_DOC = """Drop-in for :class:`torch.optim.{name}` (same constructor, defaults,
    param_group keys and state keys ``step``, ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``, so state_dicts load both ways). Each param group is
    updated by one call of ``torch.ops.minitorch_ext.adam_step_``, which reads
    and writes every tensor once; the arithmetic is ordered as torch's default
    CPU path computes it. Works with ``torch.amp.GradScaler`` the way torch's
    fused optimizers do (unscale and inf check inside the step).

    ``foreach``, ``fused`` and ``capturable`` are accepted for compatibility and
    ignored (the step is always fused; ``step`` lives beside the param, as with
    torch's fused=True); ``differentiable=True`` is not supported. Tensor betas
    are read as floats. Params must be float32, float64 or bfloat16 (not
    complex); sparse gradients are refused.
    """


class Adam(_FusedAdamStep, torch.optim.Adam):
    __doc__ = _DOC.format(name="Adam")
    _name = "Adam"

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False):
        if differentiable:
            raise RuntimeError("minitorch_ext.optim.Adam does not support differentiable=True")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         foreach=foreach, maximize=maximize, capturable=capturable, differentiable=differentiable,
                         fused=fused, decoupled_weight_decay=decoupled_weight_decay)


class AdamW(_FusedAdamStep, torch.optim.AdamW):
    __doc__ = _DOC.format(name="AdamW")
    _name = "AdamW"

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None):
        if differentiable:
            raise RuntimeError("minitorch_ext.optim.AdamW does not support differentiable=True")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, foreach=foreach, capturable=capturable, differentiable=differentiable,
                         fused=fused)
