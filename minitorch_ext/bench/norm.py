"""LayerNorm and RMSNorm: minitorch_ext.nn.functional against torch.nn.functional.

Cases (issue 2): rows x features (8192,1024), (4096,4096), (32768,768), (16384,512)
in float32, and (8192,1024), (4096,4096) in bfloat16; normalized_shape=(N,);
weight (and bias, LayerNorm) of the input's dtype requiring grad, as a real
nn.LayerNorm / nn.RMSNorm has them; x.requires_grad=True.

* fwd:     y = f(x, (N,), weight[, bias])           (grad mode on: a training forward)
* fwd+bwd: y = f(...); y.backward(dy), dy preallocated; x.grad and the weight
           grads are set to None before every call, so both sides allocate them.

Bytes that must move (for GB/s): fwd reads x and the weights and writes y;
fwd+bwd adds reading dy, x and the weight and writing dx and the weight grads.
The per-row statistics saved for backward (8 bytes a row) are not counted.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from .harness import Case, Context, Rotation, rel_error

# (rows, features, dtype), in table order
SHAPES = [
    (8192, 1024, "float32"),
    (4096, 4096, "float32"),
    (32768, 768, "float32"),
    (16384, 512, "float32"),
    (8192, 1024, "bfloat16"),
    (4096, 4096, "bfloat16"),
]

# coarse agreement for Case.check (relative L2 error against native): catches a
# kernel that is fast because it is wrong, not a precision study (tests do that)
_TOL = {"float32": 1e-4, "bfloat16": 2e-2}


class _Inputs:
    def __init__(self, x: torch.Tensor, dy: torch.Tensor):
        self.x = x.requires_grad_()
        self.dy = dy


def layernorm(ctx: Context):
    yield from _norm_cases(ctx, "layer_norm", has_bias=True)


def rmsnorm(ctx: Context):
    yield from _norm_cases(ctx, "rms_norm", has_bias=False)


def _norm_cases(ctx: Context, name: str, has_bias: bool):
    native = getattr(F, name)
    ours = native if ctx.self_test else getattr(importlib.import_module("minitorch_ext.nn.functional"), name)
    label = f"F.{name}"
    dev = ctx.device
    for rows, feats, dt in SHAPES:
        dtype = getattr(torch, dt)
        gen = torch.Generator(device=dev).manual_seed(rows * 31 + feats)
        weight = (1 + 0.1 * torch.randn(feats, generator=gen, device=dev)).to(dtype).requires_grad_()
        bias = (0.1 * torch.randn(feats, generator=gen, device=dev)).to(dtype).requires_grad_() if has_bias else None
        params = [weight] + ([bias] if has_bias else [])
        extra = (weight, bias, 1e-5) if has_bias else (weight,)
        shape = (feats,)

        x0 = torch.randn(rows, feats, generator=gen, device=dev, dtype=dtype)
        dy0 = torch.randn(rows, feats, generator=gen, device=dev, dtype=dtype)
        xbytes = x0.numel() * x0.element_size()
        nsets = ctx.input_sets(xbytes)  # the forward reads x alone: the smallest working set
        # clones made before requires_grad_, so every set's x is a leaf
        rot = Rotation([_Inputs(x0.clone(), dy0.clone()) for _ in range(nsets - 1)] + [_Inputs(x0, dy0)])
        del x0, dy0

        def before(rot=rot, params=params):
            s = rot.advance()
            s.x.grad = None
            for p in params:
                p.grad = None

        def fwd(f, rot=rot, shape=shape, extra=extra):
            return lambda: f(rot.current.x, shape, *extra)

        def fwd_bwd(f, rot=rot, shape=shape, extra=extra):
            def step():
                s = rot.current
                f(s.x, shape, *extra).backward(s.dy)
            return step

        def run_once(f, backward, rot=rot, params=params, shape=shape, extra=extra):
            s = rot.current
            s.x.grad = None
            for p in params:
                p.grad = None
            y = f(s.x, shape, *extra)
            if not backward:
                return {"y": y.detach()}
            y.backward(s.dy)
            out = {"y": y.detach(), "dx": s.x.grad}
            for k, p in zip(("dweight", "dbias"), params):
                out[k] = p.grad
            return out

        def check(backward, dt=dt, run_once=run_once):
            a, r = run_once(ours, backward), run_once(native, backward)
            bad = []
            for k in r:
                if a[k] is None or a[k].shape != r[k].shape or a[k].dtype != r[k].dtype:
                    bad.append(f"{k}: got {None if a[k] is None else (tuple(a[k].shape), a[k].dtype)}, "
                               f"native {(tuple(r[k].shape), r[k].dtype)}")
                    continue
                err = rel_error(a[k], r[k])
                if not err <= _TOL[dt]:  # also catches NaN
                    bad.append(f"{k}: relative error {err:.2e} against native > {_TOL[dt]:g}")
            return "; ".join(bad) or None

        wbytes = feats * weight.element_size()
        fwd_bytes = 2 * xbytes + len(params) * wbytes              # read x, w(, b); write y
        bwd_bytes = 3 * xbytes + wbytes + len(params) * wbytes     # read dy, x, w; write dx, dw(, db)
        case = f"{rows}x{feats}"

        yield Case(case=case, dtype=dt, pass_="fwd", ours=fwd(ours), native={label: fwd(native)},
                   bytes=fwd_bytes, before=before, check=lambda c=check: c(False))
        yield Case(case=case, dtype=dt, pass_="fwd+bwd", ours=fwd_bwd(ours), native={label: fwd_bwd(native)},
                   bytes=fwd_bytes + bwd_bytes, before=before, check=lambda c=check: c(True))
