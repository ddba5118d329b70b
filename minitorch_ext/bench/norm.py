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

from .harness import Case, Context, Rotation, compare_to_reference

# (rows, features, dtype), in table order
SHAPES = [
    (8192, 1024, "float32"),
    (4096, 4096, "float32"),
    (32768, 768, "float32"),
    (16384, 512, "float32"),
    (8192, 1024, "bfloat16"),
    (4096, 4096, "bfloat16"),
]

# Case.check: ours' relative L2 error against a float64 reference may be up to twice
# native's, or this floor (a few units of rounding). It catches a kernel that is fast
# because it is wrong; the tests (minitorch_ext.testing) judge precision.
_FLOOR = {"float32": 1e-5, "bfloat16": 1e-2}


class _Inputs:
    def __init__(self, x: torch.Tensor, dy: torch.Tensor):
        self.x = x.requires_grad_()
        self.dy = dy


def layernorm(ctx: Context):
    """ours: minitorch_ext.nn.functional.layer_norm; native: F.layer_norm; weight and bias require grad.
    GB/s counts fwd: x, weight, bias read + y written; fwd+bwd adds dy, x, weight read + dx, dweight,
    dbias written."""
    yield from _norm_cases(ctx, "layer_norm", has_bias=True)


def rmsnorm(ctx: Context):
    """ours: minitorch_ext.nn.functional.rms_norm; native: F.rms_norm; weight requires grad.
    GB/s counts fwd: x, weight read + y written; fwd+bwd adds dy, x, weight read + dx, dweight written."""
    yield from _norm_cases(ctx, "rms_norm", has_bias=False)


def _norm_cases(ctx: Context, name: str, has_bias: bool):
    native = getattr(F, name)
    ours = native if ctx.self_test else getattr(importlib.import_module("minitorch_ext.nn.functional"), name)
    for rows, feats, dt in SHAPES:
        if ctx.wants(f"{rows}x{feats} {dt} fwd", f"{rows}x{feats} {dt} fwd+bwd"):
            yield from _shape_cases(ctx, name, ours, native, rows, feats, getattr(torch, dt), has_bias)


def _shape_cases(ctx: Context, name: str, ours, native, rows: int, feats: int, dtype: torch.dtype, has_bias: bool):
    dev, dt, shape = ctx.device, str(dtype).replace("torch.", ""), (feats,)
    gen = torch.Generator(device=dev).manual_seed(rows * 31 + feats)
    weight = (1 + 0.1 * torch.randn(feats, generator=gen, device=dev)).to(dtype).requires_grad_()
    bias = (0.1 * torch.randn(feats, generator=gen, device=dev)).to(dtype).requires_grad_() if has_bias else None
    params = [weight] + ([bias] if has_bias else [])

    def args(params, eps=None):
        """The arguments after (input, normalized_shape), positional as both functions take them:
        layer_norm(x, shape, weight, bias, eps=1e-5); rms_norm(x, shape, weight[, eps])."""
        if has_bias:
            return (params[0], params[1], 1e-5)
        return (params[0],) if eps is None else (params[0], eps)

    timed_args = args(params)

    x0 = torch.randn(rows, feats, generator=gen, device=dev, dtype=dtype)
    dy0 = torch.randn(rows, feats, generator=gen, device=dev, dtype=dtype)
    xbytes = x0.numel() * x0.element_size()
    nsets = ctx.input_sets(xbytes)  # the forward reads x alone: the smallest working set
    # clones made before requires_grad_, so every set's x is a leaf
    rot = Rotation([_Inputs(x0.clone(), dy0.clone()) for _ in range(nsets - 1)] + [_Inputs(x0, dy0)])
    del x0, dy0

    def before():
        s = rot.advance()
        s.x.grad = None
        for p in params:
            p.grad = None

    def fwd(f):
        return lambda: f(rot.current.x, shape, *timed_args)

    def fwd_bwd(f):
        def step():
            s = rot.current
            f(s.x, shape, *timed_args).backward(s.dy)
        return step

    def run_once(f, backward, x, dy, params, eps=None):
        x.grad = None
        for p in params:
            p.grad = None
        y = f(x, shape, *args(params, eps))
        out = {"y": y.detach()}
        if backward:
            y.backward(dy)
            out["dx"] = x.grad
            out.update(zip(("dweight", "dbias"), (p.grad for p in params)))
        return out

    cache = []  # [(reference, native)]: computed once per shape, with backward, for both passes

    def check(backward: bool):
        """ours against a float64 reference, judged by native's own error against it."""
        s = rot.current
        if not cache:
            p64 = [p.detach().double().requires_grad_() for p in params]
            # rms_norm's eps=None means finfo(input.dtype).eps: give the reference the same eps
            eps = torch.finfo(dtype).eps if name == "rms_norm" else None
            ref = run_once(native, True, s.x.detach().double().requires_grad_(), s.dy.double(), p64, eps)
            cache.append(({k: v.float() for k, v in ref.items()}, run_once(native, True, s.x, s.dy, params)))
            del ref, p64
        ref, nat = cache[0]
        got = run_once(ours, backward, s.x, s.dy, params)
        return compare_to_reference(got, nat, {k: ref[k] for k in got}, floor=_FLOOR[dt])

    wbytes = feats * weight.element_size()
    fwd_bytes = 2 * xbytes + len(params) * wbytes              # read x, w(, b); write y
    bwd_bytes = 3 * xbytes + wbytes + len(params) * wbytes     # read dy, x, w; write dx, dw(, db)
    case, label = f"{rows}x{feats}", f"F.{name}"
    yield Case(case=case, dtype=dt, pass_="fwd", ours=fwd(ours), native={label: fwd(native)},
               bytes=fwd_bytes, before=before, check=lambda: check(False))
    yield Case(case=case, dtype=dt, pass_="fwd+bwd", ours=fwd_bwd(ours), native={label: fwd_bwd(native)},
               bytes=fwd_bytes + bwd_bytes, before=before, check=lambda: check(True))
