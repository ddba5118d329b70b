"""Pooling: minitorch_ext.nn.functional's pools against torch.nn.functional's.

Cases (float32, NCHW and channels_last; the input requires grad, a training forward):

* resnet18 maxpool   3x3/2 pad 1 on 64x112x112, batch 8
* vgg maxpool        2x2/2 on 64x224x224 (VGG16's first pool), batch 2
* resnet18 avgpool   adaptive to 1x1 on 512x7x7, batch 64
* lenet pools        2x2/2 max on 6x28x28 and avg on 16x10x10, batch 256
* text maxpool1d     3/2 pad 1 over 512 steps of 256 channels, batch 16 (NCL; channels_last:
                     a transposed [N, L, C] activation)

* fwd:     y = f(x)
* fwd+bwd: y = f(x); y.backward(dy), dy preallocated; x.grad set to None before every call.

Bytes that must move (for GB/s): fwd reads x and writes y (max: and the int64 indices);
fwd+bwd adds reading dy (max: and the indices) and writing dx.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from .harness import Case, Context, Rotation, compare_to_reference

# name, input shape, functional name, kwargs
CASES = [
    ("resnet18 maxpool 3x3/2", (8, 64, 112, 112), "max_pool2d", dict(kernel_size=3, stride=2, padding=1)),
    ("vgg maxpool 2x2/2", (2, 64, 224, 224), "max_pool2d", dict(kernel_size=2, stride=2)),
    ("resnet18 adaptive avg 7x7->1", (64, 512, 7, 7), "adaptive_avg_pool2d", dict(output_size=1)),
    ("lenet maxpool 2x2/2", (256, 6, 28, 28), "max_pool2d", dict(kernel_size=2, stride=2)),
    ("lenet avgpool 2x2/2", (256, 16, 10, 10), "avg_pool2d", dict(kernel_size=2, stride=2)),
    ("text maxpool1d 3/2", (16, 256, 512), "max_pool1d", dict(kernel_size=3, stride=2, padding=1)),
]


class _Inputs:
    def __init__(self, x: torch.Tensor, dy: torch.Tensor):
        self.x = x.requires_grad_()
        self.dy = dy


def _layout(x: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "nchw":
        return x.contiguous()
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x.transpose(1, 2).contiguous().transpose(1, 2)  # 1-D: [N, L, C] in memory


def pool(ctx: Context):
    """ours: minitorch_ext.nn.functional pools; native: torch.nn.functional's, same inputs."""
    mf = F if ctx.self_test else importlib.import_module("minitorch_ext.nn.functional")
    for name, shape, fn, kw in CASES:
        for fmt in ("nchw", "channels_last"):
            case = f"{name} {'x'.join(map(str, shape))} {fmt}"
            if ctx.wants(f"{case} float32 fwd", f"{case} float32 fwd+bwd"):
                yield from _cases(ctx, case, getattr(mf, fn), getattr(F, fn), shape, kw, fmt, fn)


def _cases(ctx: Context, case: str, ours_fn, native_fn, shape, kw, fmt, fn):
    dev, dtype = ctx.device, torch.float32
    gen = torch.Generator(device=dev).manual_seed(sum(shape))
    x0 = _layout(torch.randn(shape, generator=gen, device=dev, dtype=dtype), fmt)
    with torch.no_grad():
        y0 = native_fn(x0, **kw)
    dy0 = torch.randn(y0.shape, generator=gen, device=dev, dtype=dtype).contiguous(
        memory_format=torch.channels_last if (fmt != "nchw" and y0.dim() == 4) else torch.contiguous_format)
    xbytes, ybytes = x0.numel() * 4, y0.numel() * 4
    ibytes = y0.numel() * 8 if fn.startswith("max") else 0
    nsets = ctx.input_sets(xbytes)
    rot = Rotation([_Inputs(x0.clone(memory_format=torch.preserve_format) if x0.dim() == 4
                            else _layout(x0.detach().clone(), fmt), dy0.clone()) for _ in range(nsets)])
    del x0, dy0

    def ours(x):
        return ours_fn(x, **kw)

    def native(x):
        return native_fn(x, **kw)

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
            xd = s.x.detach().double().requires_grad_()
            ref = run_once(native, True, xd, s.dy.double())
            cache.append(({k: v.float() for k, v in ref.items()}, run_once(native, True, s.x, s.dy)))
        ref, nat = cache[0]
        got = run_once(ours, backward, s.x, s.dy)
        return compare_to_reference(got, nat, {k: ref[k] for k in got}, floor=1e-5)

    label = f"F.{fn}"
    yield Case(case=case, dtype="float32", pass_="fwd", ours=fwd(ours), native={label: fwd(native)},
               bytes=xbytes + ybytes + ibytes, before=before, check=lambda: check(False))
    yield Case(case=case, dtype="float32", pass_="fwd+bwd", ours=fwd_bwd(ours), native={label: fwd_bwd(native)},
               bytes=2 * xbytes + 2 * ybytes + 2 * ibytes, before=before, check=lambda: check(True))
