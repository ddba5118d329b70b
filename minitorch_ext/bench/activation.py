"""Activations and softmax: minitorch_ext.nn.functional against torch.nn.functional.

Cases: gelu, silu, softmax (last dim) on 8192x1024 (32 MB float32, the size of
the last-level cache, inputs rotated among several sets), float32 and bfloat16;
x.requires_grad=True (a training forward).

* fwd:     y = f(x)
* fwd+bwd: y = f(x); y.backward(dy), dy preallocated; x.grad set to None
           before every call, so both sides allocate it.

Bytes that must move (for GB/s): fwd reads x and writes y; fwd+bwd adds
reading dy and the saved tensor (x, or y for softmax) and writing dx.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from .harness import Case, Context, Rotation, compare_to_reference

SHAPES = [(8192, 1024, "float32"), (8192, 1024, "bfloat16")]
OPS = {
    "gelu": (lambda m: m.gelu),
    "gelu_tanh": (lambda m: (lambda x: m.gelu(x, approximate="tanh"))),
    "silu": (lambda m: m.silu),
    "softmax": (lambda m: (lambda x: m.softmax(x, -1))),
    "log_softmax": (lambda m: (lambda x: m.log_softmax(x, -1))),
}
_FLOOR = {"float32": 1e-5, "bfloat16": 1e-2}


class _Inputs:
    def __init__(self, x: torch.Tensor, dy: torch.Tensor):
        self.x = x.requires_grad_()
        self.dy = dy


def activation(ctx: Context):
    """ours: minitorch_ext.nn.functional.{gelu, silu, softmax, log_softmax}; native: torch.nn.functional's.
    GB/s counts fwd: x read + y written; fwd+bwd adds dy and the saved tensor read + dx written."""
    mf = F if ctx.self_test else importlib.import_module("minitorch_ext.nn.functional")
    for rows, feats, dt in SHAPES:
        for name, pick in OPS.items():
            if ctx.wants(f"{name} {rows}x{feats} {dt} fwd", f"{name} {rows}x{feats} {dt} fwd+bwd"):
                yield from _cases(ctx, name, pick(mf), pick(F), rows, feats, getattr(torch, dt))


def _cases(ctx: Context, name: str, ours, native, rows: int, feats: int, dtype: torch.dtype):
    dev, dt = ctx.device, str(dtype).replace("torch.", "")
    gen = torch.Generator(device=dev).manual_seed(rows * 7 + feats)
    x0 = (3 * torch.randn(rows, feats, generator=gen, device=dev)).to(dtype)
    dy0 = torch.randn(rows, feats, generator=gen, device=dev, dtype=dtype)
    xbytes = x0.numel() * x0.element_size()
    nsets = ctx.input_sets(xbytes)
    rot = Rotation([_Inputs(x0.clone(), dy0.clone()) for _ in range(nsets - 1)] + [_Inputs(x0, dy0)])
    del x0, dy0

    def before():
        rot.advance().x.grad = None

    def fwd(f):
        return lambda: f(rot.current.x)

    def fwd_bwd(f):
        def step():
            s = rot.current
            f(s.x).backward(s.dy)
        return step

    def run_once(f, backward, x, dy):
        x.grad = None
        y = f(x)
        out = {"y": y.detach()}
        if backward:
            y.backward(dy)
            out["dx"] = x.grad
        return out

    cache = []

    def check(backward: bool):
        s = rot.current
        if not cache:
            ref = run_once(native, True, s.x.detach().double().requires_grad_(), s.dy.double())
            cache.append(({k: v.float() for k, v in ref.items()}, run_once(native, True, s.x, s.dy)))
        ref, nat = cache[0]
        got = run_once(ours, backward, s.x, s.dy)
        return compare_to_reference(got, nat, {k: ref[k] for k in got}, floor=_FLOOR[dt])

    case, label = f"{name} {rows}x{feats}", f"F.{name}"
    yield Case(case=case, dtype=dt, pass_="fwd", ours=fwd(ours), native={label: fwd(native)},
               bytes=2 * xbytes, before=before, check=lambda: check(False))
    yield Case(case=case, dtype=dt, pass_="fwd+bwd", ours=fwd_bwd(ours), native={label: fwd_bwd(native)},
               bytes=5 * xbytes, before=before, check=lambda: check(True))
