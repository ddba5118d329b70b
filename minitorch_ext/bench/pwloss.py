"""Pointwise losses: minitorch_ext.nn.functional's against torch.nn.functional's.

Cases, each at (8192, 1024) in float32 and bfloat16, reduction 'mean', input and target
both leaves (only the input requires grad), fwd+bwd: y = loss(x, t); y.backward();
x.grad set to None before every call:

    mse_loss, l1_loss, smooth_l1_loss (beta 0.5), huber_loss (delta 0.7),
    binary_cross_entropy (x in (0, 1)), binary_cross_entropy_with_logits (pos_weight [1024]),
    kl_div (reduction 'batchmean', log-probability input, probability target)

Bytes that must move (for GB/s): read x and t in the forward, read them again and write dx
in the backward (5 tensors of the input's size).
"""
from __future__ import annotations

import importlib
import warnings

import torch
import torch.nn.functional as F

from .harness import Case, Context, Rotation, compare_to_reference

SHAPE = (8192, 1024)

CASES = [
    ("mse_loss", {}),
    ("l1_loss", {}),
    ("smooth_l1_loss", {"beta": 0.5}),
    ("huber_loss", {"delta": 0.7}),
    ("binary_cross_entropy", {}),
    ("binary_cross_entropy_with_logits", {"pos_weight": True}),
    ("kl_div", {"reduction": "batchmean"}),
]


class _Inputs:
    def __init__(self, x, t):
        self.x = x.requires_grad_()
        self.t = t


def _make(fn: str, dtype, dev, gen):
    x = torch.randn(SHAPE, generator=gen, device=dev)
    t = torch.rand(SHAPE, generator=gen, device=dev)
    if fn == "binary_cross_entropy":
        x = torch.sigmoid(x).clamp(0.01, 0.99)
    elif fn == "kl_div":
        x = torch.log_softmax(x, -1)
        t = torch.softmax(torch.randn(SHAPE, generator=gen, device=dev), -1)
    return x.to(dtype), t.to(dtype)


def pwloss(ctx: Context):
    """ours: minitorch_ext.nn.functional losses; native: torch.nn.functional's, same inputs."""
    mf = F if ctx.self_test else importlib.import_module("minitorch_ext.nn.functional")
    for fn, kw in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            dname = str(dtype).replace("torch.", "")
            case = f"{fn} {SHAPE[0]}x{SHAPE[1]}"
            if ctx.wants(f"{case} {dname} fwd+bwd"):
                yield _case(ctx, case, getattr(mf, fn), getattr(F, fn), fn, kw, dtype, dname)


def _case(ctx: Context, case: str, ours_fn, native_fn, fn, kw, dtype, dname):
    dev = ctx.device
    gen = torch.Generator(device=dev).manual_seed(7)
    kw = dict(kw)
    if kw.get("pos_weight"):
        kw["pos_weight"] = (torch.rand(SHAPE[-1], generator=gen, device=dev) * 2).to(dtype)
    x0, t0 = _make(fn, dtype, dev, gen)
    esize = x0.element_size()
    nbytes = 5 * x0.numel() * esize
    nsets = ctx.input_sets(2 * x0.numel() * esize)
    rot = Rotation([_Inputs(x0.clone(), t0.clone()) for _ in range(nsets)])
    del x0, t0

    def call(f, x, t):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return f(x, t, **kw)

    def before():
        rot.advance().x.grad = None

    def fwd_bwd(f):
        def step():
            s = rot.current
            call(f, s.x, s.t).backward()
        return step

    def run_once(f, x, t):
        x.grad = None
        y = call(f, x, t)
        y.backward()
        return {"y": y.detach(), "dx": x.grad}

    def check():
        s = rot.current
        xd = s.x.detach().double().requires_grad_()
        kwd = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        yd = native_fn(xd, s.t.double(), **kwd)
        yd.backward()
        ref = {"y": yd.detach().to(dtype).float(), "dx": xd.grad.float()}
        nat = run_once(native_fn, s.x, s.t)
        got = run_once(ours_fn, s.x, s.t)
        floor = 1e-5 if dtype == torch.float32 else 1e-2
        return compare_to_reference(got, nat, {k: v for k, v in ref.items()}, floor=floor)

    return Case(case=case, dtype=dname, pass_="fwd+bwd", ours=fwd_bwd(ours_fn), native={f"F.{fn}": fwd_bwd(native_fn)},
                bytes=nbytes, before=before, check=check)
