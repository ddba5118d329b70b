"""Dropout and embedding: minitorch_ext.nn.functional's against torch.nn.functional's.

Families:

* ``dropout``: F.dropout(x, p=0.1) on 8192x1024 (the issue's shape; float32 and bfloat16),
  and dropout2d on [64, 256, 16, 32] (whole channels), the input requiring grad.
* ``embedding``: F.embedding on a 50000x256 table with a 64x100 batch of tokens
  (float32 and bfloat16), the weight requiring grad.

* fwd:     y = f(x)
* fwd+bwd: y = f(x); y.backward(dy), dy preallocated; .grad set to None before every call.

Bytes that must move (for GB/s): dropout fwd reads x, writes y; fwd+bwd adds reading dy and
writing dx (ours: no mask; torch also writes and reads a mask of x's size, not counted).
Embedding fwd reads and writes the gathered rows; fwd+bwd adds reading dy and writing the
whole [50000, 256] gradient (torch's and ours: dense). One table; the token batches (and dy)
rotate among >= 6 sets, so each call gathers rows the previous calls did not leave in the
cache, as successive training batches do.

The masks differ by design (Philox vs torch's bernoulli stream), so the dropout check is
the mask's own rule: every element is 0 or x/(1-p), and the keep rate is within 6 sigma.
"""
from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F

from .harness import Case, Context, Rotation, compare_to_reference

_DT = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class _Inputs:
    def __init__(self, x: torch.Tensor, dy: torch.Tensor):
        self.x = x.requires_grad_()
        self.dy = dy


def _mf(ctx: Context):
    return F if ctx.self_test else importlib.import_module("minitorch_ext.nn.functional")


def dropout(ctx: Context):
    mf = _mf(ctx)
    p = 0.1
    for fn, shape in (("dropout", (8192, 1024)), ("dropout2d", (64, 256, 16, 32))):
        for dname, dtype in _DT.items():
            case = f"{fn} p={p} {'x'.join(map(str, shape))}"
            if not ctx.wants(f"{case} {dname} fwd", f"{case} {dname} fwd+bwd"):
                continue
            yield from _dropout_cases(ctx, case, dname, dtype, shape, p, getattr(mf, fn), getattr(F, fn))


def _dropout_cases(ctx, case, dname, dtype, shape, p, ours_fn, native_fn):
    dev = ctx.device
    gen = torch.Generator(device=dev).manual_seed(1)
    x0 = torch.randn(shape, generator=gen, device=dev).to(dtype)
    x0[x0 == 0] = 1.0
    dy0 = torch.randn(shape, generator=gen, device=dev).to(dtype)
    xbytes = x0.numel() * x0.element_size()
    rot = Rotation([_Inputs(x0.clone(), dy0.clone()) for _ in range(ctx.input_sets(xbytes))])
    del x0, dy0

    def before():
        rot.advance().x.grad = None

    def fwd(f):
        return lambda: f(rot.current.x, p)

    def fwd_bwd(f):
        def step():
            s = rot.current
            f(s.x, p).backward(s.dy)
        return step

    def check(backward: bool):
        s = rot.current
        s.x.grad = None
        y = ours_fn(s.x, p)
        if y.dtype != s.x.dtype or y.shape != s.x.shape:
            return f"y: {y.dtype} {tuple(y.shape)}"
        keep = y != 0
        scale = torch.tensor(1 / (1 - p), dtype=torch.float64)
        want = s.x.detach().double() * scale
        rtol = 8e-3 if dtype == torch.bfloat16 else 1e-6
        if not torch.allclose(y.detach()[keep].double(), want[keep], rtol=rtol, atol=0):
            return "a kept element is not x / (1 - p)"
        n = keep.numel() if fn_is_elementwise(shape, y) else keep.flatten(2).any(-1).numel()
        k = keep.sum().item() if fn_is_elementwise(shape, y) else keep.flatten(2).any(-1).sum().item()
        if abs(k - n * (1 - p)) > 6 * math.sqrt(n * p * (1 - p)):
            return f"keep rate {k / n:.4f}, expected {1 - p}"
        if backward:
            y.backward(s.dy)
            if not torch.equal(s.x.grad != 0, keep & (s.dy != 0)):
                return "backward's mask is not the forward's"
        return None

    label = "F." + ("dropout" if len(shape) == 2 else "dropout2d")
    yield Case(case=case, dtype=dname, pass_="fwd", ours=fwd(ours_fn), native={label: fwd(native_fn)},
               bytes=2 * xbytes, before=before, check=lambda: check(False))
    yield Case(case=case, dtype=dname, pass_="fwd+bwd", ours=fwd_bwd(ours_fn), native={label: fwd_bwd(native_fn)},
               bytes=4 * xbytes, before=before, check=lambda: check(True))


def fn_is_elementwise(shape, y) -> bool:
    return len(shape) == 2


def embedding(ctx: Context):
    mf = _mf(ctx)
    V, D, B, L = 50000, 256, 64, 100
    for dname, dtype in _DT.items():
        case = f"table {V}x{D} tokens {B}x{L}"
        if not ctx.wants(f"{case} {dname} fwd", f"{case} {dname} fwd+bwd"):
            continue
        yield from _embedding_cases(ctx, case, dname, dtype, V, D, B, L, mf.embedding)


def _embedding_cases(ctx, case, dname, dtype, V, D, B, L, ours_fn):
    dev = ctx.device
    gen = torch.Generator(device=dev).manual_seed(2)
    w0 = torch.randn(V, D, generator=gen, device=dev).to(dtype)
    idx0 = torch.randint(0, V, (B, L), generator=gen, device=dev)
    dy0 = torch.randn(B, L, D, generator=gen, device=dev).to(dtype)
    esize = w0.element_size()
    rows = B * L * D * esize
    # one table; the token batches (and dy) rotate, so that every call gathers rows that the
    # previous calls did not leave in the cache (as successive training batches do)
    wl = _Inputs(w0, dy0)
    rot = Rotation([(wl, idx0, dy0)] + [
        (wl, torch.randint(0, V, (B, L), generator=gen, device=dev),
         torch.randn(B, L, D, generator=gen, device=dev).to(dtype))
        for _ in range(max(ctx.input_sets(2 * rows), 6) - 1)])

    def before():
        rot.advance()[0].x.grad = None

    def fwd(f):
        return lambda: f(rot.current[1], rot.current[0].x)

    def fwd_bwd(f):
        def step():
            s, idx, dy = rot.current
            f(idx, s.x).backward(dy)
        return step

    def run_once(f, backward, w, idx, dy):
        w.grad = None
        y = f(idx, w)
        out = {"y": y.detach()}
        if backward:
            y.backward(dy)
            out["dw"] = w.grad
        return out

    def check(backward: bool):
        s, idx, dy = rot.current
        wd = s.x.detach().double().requires_grad_()
        ref = run_once(F.embedding, True, wd, idx, dy.double())
        nat = run_once(F.embedding, True, s.x, idx, dy)
        got = run_once(ours_fn, backward, s.x, idx, dy)
        return compare_to_reference(got, nat, {k: ref[k] for k in got}, floor=1e-6)

    yield Case(case=case, dtype=dname, pass_="fwd", ours=fwd(ours_fn), native={"F.embedding": fwd(F.embedding)},
               bytes=2 * rows + B * L * 8, before=before, check=lambda: check(False))
    yield Case(case=case, dtype=dname, pass_="fwd+bwd", ours=fwd_bwd(ours_fn),
               native={"F.embedding": fwd_bwd(F.embedding)}, bytes=3 * rows + V * D * esize + B * L * 8,
               before=before, check=lambda: check(True))
