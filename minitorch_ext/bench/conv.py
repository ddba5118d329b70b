"""Convolution: torch.ops.minitorch_ext.conv_fwd / conv_bwd against F.conv2d (oneDNN on CPU).

ResNet-18's layers (issue 10, section 4) at a modest batch (BATCH, default 4 so
that a run stays within ~2 minutes on the 2-core machine; the issue's figure is
batch 16: MINITORCH_EXT_CONV_BATCH=16), plus a 3x3 depthwise layer. Each in
float32, NCHW and channels_last, and bfloat16 channels_last (the issue's bf16 bar
is against oneDNN's channels_last), fwd and fwd+bwd (all three gradients):
    ours:   conv_fwd (+ conv_bwd with every gradient)
    native: F.conv2d under autograd with x, w, b requiring grad
flops = 2 * N*Ho*Wo * O * (C/groups)*kh*kw forward, 3x that for fwd+bwd.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .harness import Case, Context, compare_to_reference

BATCH = int(os.environ.get("MINITORCH_EXT_CONV_BATCH", "4"))
# (label, C, O, H, k, stride, pad, groups)
LAYERS = [
    ("conv1 7x7/2 3->64 @224", 3, 64, 224, 7, 2, 3, 1),
    ("layer1 3x3 64 @56", 64, 64, 56, 3, 1, 1, 1),
    ("layer2 3x3/2 64->128 @56", 64, 128, 56, 3, 2, 1, 1),
    ("layer2 1x1/2 64->128 @56", 64, 128, 56, 1, 2, 0, 1),
    ("layer2 3x3 128 @28", 128, 128, 28, 3, 1, 1, 1),
    ("layer3 3x3 256 @14", 256, 256, 14, 3, 1, 1, 1),
    ("layer4 3x3 512 @7", 512, 512, 7, 3, 1, 1, 1),
    ("dw 3x3 32 @112", 32, 32, 112, 3, 1, 1, 32),
]


def conv(ctx: Context):
    """ResNet-18 layers (+ a depthwise one), float32 NCHW and channels_last, bfloat16
    channels_last, fwd and fwd+bwd."""
    dev = ctx.device
    layers = LAYERS[:3] if ctx.quick else LAYERS
    for label, C, O, H, k, s, p, g in layers:
        for fmt_name, fmt, dt in (("nchw", torch.contiguous_format, torch.float32),
                                  ("cl", torch.channels_last, torch.float32),
                                  ("cl", torch.channels_last, torch.bfloat16)):
            key = f"{label} b{BATCH} {fmt_name}"
            dname = str(dt).replace("torch.", "")
            if not ctx.wants(f"{key} {dname} fwd", f"{key} {dname} fwd+bwd"):
                continue
            yield from _cases(ctx, dev, key, C, O, H, k, s, p, g, fmt, dt)


def _cases(ctx, dev, key, C, O, H, k, s, p, g, fmt, dt=torch.float32):
    gen = torch.Generator(device=dev).manual_seed(C * 31 + O + H)
    x = torch.randn(BATCH, C, H, H, generator=gen, device=dev).to(dt).contiguous(memory_format=fmt).requires_grad_()
    w = (torch.randn(O, C // g, k, k, generator=gen, device=dev) / (C // g * k * k) ** 0.5).to(dt).requires_grad_()
    b = (0.1 * torch.randn(O, generator=gen, device=dev)).to(dt).requires_grad_()
    Ho = (H + 2 * p - k) // s + 1
    dy = torch.randn(BATCH, O, Ho, Ho, generator=gen, device=dev).to(dt).contiguous(memory_format=fmt)
    dname = str(dt).replace("torch.", "")
    conf = ([s, s], [p, p], [1, 1], g, "zeros")

    def native_fwd():
        return F.conv2d(x, w, b, s, p, 1, g)

    def native_step():
        F.conv2d(x, w, b, s, p, 1, g).backward(dy)

    def before():
        x.grad = w.grad = b.grad = None

    if ctx.self_test:
        ours_fwd, ours_step = native_fwd, native_step
    else:
        import minitorch_ext  # noqa: F401

        ops = torch.ops.minitorch_ext
        xd, wd, bd = x.detach(), w.detach(), b.detach()

        def ours_fwd():
            return ops.conv_fwd(xd, wd, bd, *conf, "none")

        def ours_step():
            ops.conv_fwd(xd, wd, bd, *conf, "none")
            return ops.conv_bwd(dy, xd, wd, *conf, [True, True, True])

    def check(backward):
        if ctx.self_test:
            return None
        before()
        yn = native_fwd()
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
        y64 = F.conv2d(x64, w64, b64, s, p, 1, g)
        nat, ref, got = {"y": yn.detach()}, {"y": y64.detach()}, {"y": ours_fwd()}
        if backward:
            yn.backward(dy)
            nat.update(dx=x.grad, dw=w.grad, db=b.grad)
            ref.update(zip(("dx", "dw", "db"), torch.autograd.grad(y64, (x64, w64, b64), dy.double())))
            got.update(zip(("dx", "dw", "db"), ours_step()))
        before()
        return compare_to_reference({kk: v.float() for kk, v in got.items()},
                                    {kk: v.float() for kk, v in nat.items()},
                                    {kk: ref[kk].float() for kk in got}, floor=1e-5 if dt == torch.float32 else 1e-2)

    flops = 2 * BATCH * Ho * Ho * O * (C // g) * k * k
    yield Case(case=key, dtype=dname, pass_="fwd", ours=ours_fwd, native={"F.conv2d": native_fwd},
               flops=flops, before=before, check=lambda: check(False))
    yield Case(case=key, dtype=dname, pass_="fwd+bwd", ours=ours_step,
               native={"F.conv2d autograd": native_step}, flops=3 * flops, before=before,
               check=lambda: check(True))
