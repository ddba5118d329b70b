"""BatchNorm2d in training mode (the ResNet-18 shapes, batch 16): minitorch_ext.nn.BatchNorm2d
against torch.nn.BatchNorm2d, fwd and fwd+bwd, NCHW and channels_last, float32 and bfloat16
(bfloat16 activations, float32 parameters and running statistics, as mixed-precision
training keeps them).

* fwd:     y = bn(x) in training mode (batch statistics + the running-stat update)
* fwd+bwd: y = bn(x); y.backward(dy), dy preallocated; grads set to None before every call.

Bytes that must move (for GB/s): fwd reads x twice (statistics, then normalize) and writes
y; fwd+bwd adds reading x and dy twice and writing dx. The harness reports against the
minimum, one read of x and one write of y (fwd), plus dy read and dx written (bwd).
"""
from __future__ import annotations

import importlib

import torch

from .harness import Case, Context, Rotation, compare_to_reference

CASES = [(16, 64, 56, 56), (16, 128, 28, 28), (16, 256, 14, 14), (16, 512, 7, 7)]


class _Inputs:
    def __init__(self, x: torch.Tensor, dy: torch.Tensor):
        self.x = x.requires_grad_()
        self.dy = dy


def batchnorm(ctx: Context):
    """ours: minitorch_ext.nn.BatchNorm2d; native: torch.nn.BatchNorm2d, same inputs and parameters."""
    nn = torch.nn if ctx.self_test else importlib.import_module("minitorch_ext.nn")
    for shape in CASES:
        for fmt in ("nchw", "channels_last"):
            for dtype in (torch.float32, torch.bfloat16):
                dname = str(dtype).replace("torch.", "")
                case = f"batchnorm2d train {'x'.join(map(str, shape))} {fmt}"
                if ctx.wants(f"{case} {dname} fwd", f"{case} {dname} fwd+bwd"):
                    yield from _cases(ctx, case, nn, shape, fmt, dtype, dname)


def _cases(ctx: Context, case: str, nn, shape, fmt, dtype, dname):
    dev = ctx.device
    C = shape[1]
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    gen = torch.Generator(device=dev).manual_seed(C)
    x0 = torch.randn(shape, generator=gen, device=dev).to(dtype).contiguous(memory_format=mf)
    dy0 = torch.randn(shape, generator=gen, device=dev).to(dtype).contiguous(memory_format=mf)
    ours_m, nat_m = nn.BatchNorm2d(C).to(dev), torch.nn.BatchNorm2d(C).to(dev)
    w0, b0 = torch.rand(C, generator=gen, device=dev) + 0.5, torch.randn(C, generator=gen, device=dev)
    with torch.no_grad():
        for m in (ours_m, nat_m):
            m.weight.copy_(w0)
            m.bias.copy_(b0)
    xbytes = x0.numel() * x0.element_size()
    nsets = ctx.input_sets(xbytes)
    rot = Rotation([_Inputs(x0.clone(memory_format=torch.preserve_format), dy0.clone()) for _ in range(nsets)])
    del x0, dy0

    def before():
        rot.advance().x.grad = None
        for m in (ours_m, nat_m):
            m.weight.grad = m.bias.grad = None

    def fwd(m):
        return lambda: m(rot.current.x)

    def fwd_bwd(m):
        def step():
            s = rot.current
            m(s.x).backward(s.dy)
        return step

    def run_once(m, backward, x, dy):
        x.grad = None
        m.weight.grad = m.bias.grad = None
        y = m(x)
        out = {"y": y.detach()}
        if backward:
            y.backward(dy)
            out.update(dx=x.grad, dw=m.weight.grad, db=m.bias.grad)
        return out

    cache = []

    def check(backward: bool):
        s = rot.current
        if not cache:
            ref_m = torch.nn.BatchNorm2d(C).double().to(dev)
            with torch.no_grad():
                ref_m.weight.copy_(nat_m.weight)
                ref_m.bias.copy_(nat_m.bias)
            xd = s.x.detach().double().requires_grad_()
            ref = run_once(ref_m, True, xd, s.dy.double())
            cache.append(({k: v.to(dtype) if k in ("y", "dx") else v.float() for k, v in ref.items()},
                          run_once(nat_m, True, s.x, s.dy)))
        ref, nat = cache[0]
        got = run_once(ours_m, backward, s.x, s.dy)
        return compare_to_reference(got, nat, {k: ref[k] for k in got}, floor=1e-5 if dtype == torch.float32
                                    else 1e-2)

    label = "nn.BatchNorm2d"
    yield Case(case=case, dtype=dname, pass_="fwd", ours=fwd(ours_m), native={label: fwd(nat_m)},
               bytes=2 * xbytes, before=before, check=lambda: check(False))
    yield Case(case=case, dtype=dname, pass_="fwd+bwd", ours=fwd_bwd(ours_m), native={label: fwd_bwd(nat_m)},
               bytes=4 * xbytes, before=before, check=lambda: check(True))
