"""minitorch_ext.optim.SGD: torch.optim.SGD on one fused multi-tensor kernel."""
from __future__ import annotations

import torch

from . import _common as C



class SGD(C.FusedStep, torch.optim.SGD):
    """Drop-in for :class:`torch.optim.SGD` (same constructor, defaults,
    param_group keys and ``momentum_buffer`` state, so state_dicts load both
    ways). Each param group is updated by one call of the fused kernel
    ``torch.ops.minitorch_ext.sgd_step_``, which reads and writes every tensor
    once. Works with ``torch.amp.GradScaler`` the way torch's fused optimizers
    do (unscale and inf check inside the step).

    ``foreach`` and ``fused`` are accepted for compatibility and ignored (the
    step is always fused); ``differentiable=True`` is not supported. Params
    must be float32, float64 or bfloat16; sparse gradients are refused.
    """

    def __init__(self, params, lr: float | torch.Tensor = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float | torch.Tensor = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None):
        if differentiable:
            raise RuntimeError("minitorch_ext.optim.SGD does not support differentiable=True")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize, foreach=foreach, differentiable=differentiable,
                         fused=fused)

    def _step_group(self, group, grad_scale, found_inf, clip=None):
        clip_total, clip_max = clip if clip is not None else (None, 0.0)
        fast = C.group_fast_path(group)
        if fast is not None and fast.sgd_group_step_(
                group["params"], self.state, lr=float(group["lr"]), momentum=float(group["momentum"]),
                dampening=float(group["dampening"]), weight_decay=float(group["weight_decay"]),
                nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]), grad_scale=grad_scale,
                found_inf=found_inf, clip_total_norm=clip_total, clip_max_norm=clip_max):
            return
        momentum = group["momentum"]
        has_momentum = momentum != 0
        params, grads, bufs, first = [], [], [], []
        state = self.state
        for p in group["params"]:
            g = C.grad_of(p)
            if g is None:
                continue
            if g.is_sparse:
                C.no_sparse("minitorch_ext.optim.SGD", g, " (torch.optim.SGD with foreach=False does)")
            params.append(p)
            grads.append(g)
            if has_momentum:
                st = state[p]
                buf = st.get("momentum_buffer")
                if buf is None:
                    C.check_param("minitorch_ext.optim.SGD", p)
                    buf = torch.empty_like(p, memory_format=torch.preserve_format)
                    first.append(len(bufs))
                bufs.append(buf)
        if not params:
            return
        lr, wd = group["lr"], group["weight_decay"]
        wd = float(wd)
        kw = dict(momentum=float(momentum), dampening=float(group["dampening"]), weight_decay=wd,
                  nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]))
        # Parameters whose buffer is new take torch's first-step rule (buf = grad);
        # the rest the running update. Usually one of the two sets is empty.
        buckets = C.buckets(params)
        if has_momentum and first and len(first) < len(params):
            first_set = set(first)
            split = []
            for b in buckets:
                split.append(([i for i in b if i not in first_set], False))
                split.append(([i for i in b if i in first_set], True))
        else:
            split = [(b, bool(first)) for b in buckets]
        whole = len(buckets) == 1 and len(split) == 1
        for idx, is_first in split:
            if not idx:
                continue
            dev = params[idx[0]].device
            _op = C.op("sgd_step_", dev)
            lr_f, lr_t = C.lr_args(lr, dev)
            if whole:
                ps, gs, bs = params, grads, bufs
            else:
                ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
                bs = [bufs[i] for i in idx] if has_momentum else []
            _op(ps, gs, bs, lr=lr_f, is_first_step=is_first, lr_tensor=lr_t, grad_scale=C.on(grad_scale, dev),
                found_inf=C.on(found_inf, dev), clip_total_norm=C.on(clip_total, dev), clip_max_norm=clip_max, **kw)
        if first and not (found_inf is not None and bool(found_inf.item() != 0)):
            # A skipped step (inf found) leaves no buffer behind: the next real step is still the first.
            for j in first:
                state[params[j]]["momentum_buffer"] = bufs[j]
