"""Triton kernels for the pwloss family: one generic forward and one generic backward kernel
for mse, l1, smooth_l1, huber, bce, bce_logits and kl_div, the loss picked by a constexpr KIND
(so each launch compiles only its own math).

Operands (input, target, weight, pos_weight, grad_output) reach the kernels in one of three
read modes, a constexpr per operand (as the C++ kernel, csrc/loss/pwloss_cpu.cpp): 1 flat
contiguous, 2 a last-dim row vector (index % C: pos_weight [C] or a per-class weight expanded
over the batch), 3 a scalar (every stride 0); 0 absent. Any other layout is made contiguous
first by the Python wrapper here.

Algorithm (float32 math for float32/bfloat16, float64 for float64, one rounding on store)
    forward 'none':  each program computes BLOCK losses and stores them.
    forward reduced: each program sums its BLOCK losses (tl.sum, masked) into partial[pid];
                     one more program adds the partials in index order (a loop of BLOCK-wide
                     vector adds, then one tl.sum) and scales once (1/numel, 1/size(0), 1):
                     no atomics, the same bits on every run.
    backward:        grad_input and/or grad_target from one read of input and target,
                     times grad_output (a scalar times the reduction scale, or elementwise).
    bce also counts inputs outside [0, 1] (or NaN) per program; the wrapper raises torch's
    RuntimeError when any were seen (outside torch.compile: that check needs the count).

Memory traffic: forward reads input and target once (+ weights) and writes the loss ('none')
or one float per program; backward reads them once more (+ grad_output for 'none') and writes
each asked-for gradient once.

The trick: the whole loss, its reduction and both gradients are one pass each, with the
math in registers; log1p through Kahan's trick (libdevice's does not run under the
interpreter), log-sigmoid in its stable form min(x, 0) - log1p(exp(-|x|)).

Launching: through _common.launch (wrap_triton on a GPU, the bare kernel under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import store as _store_out

KIND_CODES = {"mse": 0, "l1": 1, "smooth_l1": 2, "huber": 3, "bce": 4, "bce_logits": 5, "kl_div": 6}


def _empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, NaN-filled when the checker's poison switch is on."""
    try:
        from minitorch_ext import _poison
    except ImportError:
        return torch.empty(shape, dtype=dtype, device=device)
    return _poison.empty(shape, dtype=dtype, device=device)


@triton.jit
def _ld(P, offs, mask, C, MODE: tl.constexpr, like):
    if MODE == 1:
        v = tl.load(P + offs, mask=mask, other=0.5).to(like.dtype)
    elif MODE == 2:
        v = tl.load(P + offs % C, mask=mask, other=0.5).to(like.dtype)
    elif MODE == 3:
        v = tl.load(P + offs * 0, mask=mask, other=0.5).to(like.dtype)
    else:
        v = like * 0.0 + 1.0
    return v


@triton.jit
def _log1p(x):
    u = 1.0 + x
    d = u - 1.0
    return tl.where(d == 0.0, x, tl.log(u) * (x / tl.where(d == 0.0, 1.0, d)))


@triton.jit
def _log_sigmoid(x):
    return tl.minimum(x, 0.0) - _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _sign(d):
    return tl.where(d > 0.0, 1.0, 0.0) - tl.where(d < 0.0, 1.0, 0.0)


@triton.jit
def _loss(x, t, w, pw, p, KIND: tl.constexpr, HAS_W: tl.constexpr, HAS_PW: tl.constexpr, LOG_T: tl.constexpr):
    if KIND == 0:
        d = x - t
        l = d * d
    elif KIND == 1:
        l = tl.abs(x - t)
    elif KIND == 2:
        z = tl.abs(x - t)
        l = tl.where(z < p, 0.5 * z * z / p, z - 0.5 * p)
    elif KIND == 3:
        z = tl.abs(x - t)
        l = tl.where(z < p, 0.5 * z * z, p * (z - 0.5 * p))
    elif KIND == 4:
        lx = tl.maximum(tl.log(x), -100.0)
        l1x = tl.maximum(_log1p(-x), -100.0)
        l = (t - 1.0) * l1x - t * lx
    elif KIND == 5:
        ls = _log_sigmoid(x)
        if HAS_PW:
            ls = ls * ((pw - 1.0) * t + 1.0)
        l = (1.0 - t) * x - ls
    else:
        if LOG_T:
            l = tl.exp(t) * (t - x)
        else:
            l = tl.where(t == 0.0, 0.0, t * tl.log(t)) - t * x
    if HAS_W:
        l = l * w
    return l


@triton.jit
def _grads(x, t, w, pw, p, KIND: tl.constexpr, HAS_W: tl.constexpr, HAS_PW: tl.constexpr, LOG_T: tl.constexpr):
    if KIND == 0:
        gx = 2.0 * (x - t)
        gt = -gx
    elif KIND == 1:
        gx = _sign(x - t)
        gt = -gx
    elif KIND == 2:
        d = x - t
        gx = tl.where(d <= -p, -1.0, tl.where(d >= p, 1.0, d / p))
        gt = -gx
    elif KIND == 3:
        d = x - t
        gx = tl.where(d <= -p, -p, tl.where(d >= p, p, d))
        gt = -gx
    elif KIND == 4:
        gx = (x - t) / tl.maximum((1.0 - x) * x, 1e-12)
        gt = _log1p(-x) - tl.log(x)
    elif KIND == 5:
        sig = 1.0 / (1.0 + tl.exp(-x))
        if HAS_PW:
            pt = pw * t
            gx = (pt + 1.0 - t) * sig - pt
            gt = _log_sigmoid(-x) - _log_sigmoid(x) * pw
        else:
            gx = sig - t
            gt = -x
    else:
        if LOG_T:
            e = tl.exp(t)
            gx = -e
            gt = e * (t - x + 1.0)
        else:
            gx = -t
            gt = tl.where(t == 0.0, 0.0, tl.log(t)) + t / t - x
    if HAS_W:
        gx = gx * w
        gt = gt * w
    return gx, gt


@triton.jit
def _fwd_kernel(X, T, Wt, PW, Prm, Out, Part, Bad, n, C, KIND: tl.constexpr, XM: tl.constexpr, TM: tl.constexpr,
                WM: tl.constexpr, PM: tl.constexpr, LOG_T: tl.constexpr, REDUCE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(Prm)
    like = tl.zeros([BLOCK], dtype=Prm.dtype.element_ty)
    x = _ld(X, offs, mask, C, XM, like)
    t = _ld(T, offs, mask, C, TM, like)
    w = _ld(Wt, offs, mask, C, WM, like)
    pw = _ld(PW, offs, mask, C, PM, like)
    l = _loss(x, t, w, pw, p, KIND, WM != 0, PM != 0, LOG_T)
    if REDUCE:
        tl.store(Part + pid, tl.sum(tl.where(mask, l, 0.0), axis=0))
    else:
        _store_out(Out + offs, l, mask)
    if KIND == 4:
        bad = mask & ~((x >= 0.0) & (x <= 1.0))
        tl.store(Bad + pid, tl.sum(tl.where(bad, 1, 0), axis=0))


@triton.jit
def _sum_kernel(Part, Prm, Out, m, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=Part.dtype.element_ty)
    for s in range(0, m, BLOCK):
        offs = s + tl.arange(0, BLOCK)
        acc += tl.load(Part + offs, mask=offs < m, other=0.0)
    total = tl.sum(acc, axis=0) * tl.load(Prm + 1)
    _store_out(Out + tl.arange(0, 1), tl.zeros([1], dtype=acc.dtype) + total, tl.arange(0, 1) < 1)


@triton.jit
def _bwd_kernel(GO, X, T, Wt, PW, Prm, GX, GT, n, C, KIND: tl.constexpr, GM: tl.constexpr, XM: tl.constexpr,
                TM: tl.constexpr, WM: tl.constexpr, PM: tl.constexpr, LOG_T: tl.constexpr, NEED_X: tl.constexpr,
                NEED_T: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(Prm)
    like = tl.zeros([BLOCK], dtype=Prm.dtype.element_ty)
    x = _ld(X, offs, mask, C, XM, like)
    t = _ld(T, offs, mask, C, TM, like)
    w = _ld(Wt, offs, mask, C, WM, like)
    pw = _ld(PW, offs, mask, C, PM, like)
    g = _ld(GO, offs, mask, C, GM, like) * tl.load(Prm + 1)
    gx, gt = _grads(x, t, w, pw, p, KIND, WM != 0, PM != 0, LOG_T)
    if NEED_X:
        _store_out(GX + offs, gx * g, mask)
    if NEED_T:
        _store_out(GT + offs, gt * g, mask)


# --------------------------------------------------------------------------
# Python entry points (the schemas of csrc/ops.cpp)
# --------------------------------------------------------------------------

def _mode(t, state):
    """(tensor to pass, read mode) for one operand; state['C'] collects the row length."""
    if t is None:
        return None, 0
    if t.is_contiguous():
        return t, 1
    nd = t.dim()
    if all(s == 1 or st == 0 for s, st in zip(t.shape, t.stride())):
        return t, 3
    if nd >= 1 and (t.stride(-1) == 1 or t.shape[-1] == 1) and \
            all(s == 1 or st == 0 for s, st in zip(t.shape[:-1], t.stride()[:-1])):
        state["C"] = t.shape[-1]
        return t, 2
    return t.contiguous(), 1


def _block(n: int) -> int:
    cap = 1 << 14 if _interpreting() else 1024
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


def _scale(input, reduction: int) -> float:
    if reduction == 1:
        return 1.0 / input.numel() if input.numel() else float("inf")
    if reduction == 3 and input.dim() > 0:
        return 1.0 / input.shape[0] if input.shape[0] else float("inf")
    return 1.0


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(input, target, weight, pos_weight, kind):
    if input.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise NotImplementedError(f"pwloss_fwd_triton: input: not implemented for '{input.dtype}'")
    if kind not in KIND_CODES:
        raise ValueError(f"pwloss: kind must be one of {', '.join(KIND_CODES)}; got '{kind}'")
    for name, t in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        if t is None:
            continue
        if t.shape != input.shape:
            raise RuntimeError(f"pwloss: {name}: expected shape {list(input.shape)} (the shape of input), "
                               f"got {list(t.shape)}")
        if t.dtype != input.dtype:
            raise RuntimeError(f"pwloss: {name}: expected dtype {input.dtype} (the dtype of input), got {t.dtype}")


def pwloss_fwd(input, target, weight, pos_weight, kind: str, param: float, reduction: int, log_target: bool):
    _check(input, target, weight, pos_weight, kind)
    n = input.numel()
    st = {"C": 1}
    (x, xm), (t, tm), (w, wm), (pw, pm) = (_mode(v, st) for v in (input, target, weight, pos_weight))
    acc = _acc(input.dtype)
    prm = torch.tensor([param, _scale(input, reduction)], dtype=acc, device=input.device)
    BLOCK = _block(n)
    grid = max(1, triton.cdiv(n, BLOCK))
    reduce = reduction != 0
    out = _empty(() if reduce else input.shape, input.dtype, input.device)
    part = torch.zeros(grid, dtype=acc, device=input.device)
    bad = torch.zeros(grid, dtype=torch.int32, device=input.device)
    code = KIND_CODES[kind]
    _launch(_fwd_kernel)[(grid,)](x, t, w if w is not None else x, pw if pw is not None else x, prm, out, part, bad,
                                  n, st["C"], KIND=code, XM=xm, TM=tm, WM=wm, PM=pm, LOG_T=bool(log_target),
                                  REDUCE=reduce, BLOCK=BLOCK)
    if reduce:
        _launch(_sum_kernel)[(1,)](part, prm, out, grid, BLOCK=1024)
    if code == 4 and not torch.compiler.is_compiling() and bool(bad.any()):
        raise RuntimeError("all elements of input should be between 0 and 1")
    return out


def pwloss_bwd(grad_output, input, target, weight, pos_weight, kind: str, param: float, reduction: int,
               log_target: bool, need_input: bool, need_target: bool):
    _check(input, target, weight, pos_weight, kind)
    n = input.numel()
    st = {"C": 1}
    (x, xm), (t, tm), (w, wm), (pw, pm) = (_mode(v, st) for v in (input, target, weight, pos_weight))
    if reduction == 0:
        if grad_output.shape != input.shape:
            raise RuntimeError(f"pwloss_bwd: grad_output: expected shape {list(input.shape)} (reduction 'none'), "
                               f"got {list(grad_output.shape)}")
        g, gm = _mode(grad_output, st)
    else:
        if grad_output.numel() != 1:
            raise RuntimeError(f"pwloss_bwd: grad_output: expected one element (a reduced loss), got shape "
                               f"{list(grad_output.shape)}")
        g, gm = grad_output.reshape(1), 3
    acc = _acc(input.dtype)
    prm = torch.tensor([param, _scale(input, reduction)], dtype=acc, device=input.device)
    gx = _empty(input.shape if need_input else (0,), input.dtype, input.device)
    gt = _empty(input.shape if need_target else (0,), input.dtype, input.device)
    BLOCK = _block(n)
    if n and (need_input or need_target):
        _launch(_bwd_kernel)[(triton.cdiv(n, BLOCK),)](
            g, x, t, w if w is not None else x, pw if pw is not None else x, prm, gx if need_input else x,
            gt if need_target else x, n, st["C"], KIND=KIND_CODES[kind], GM=gm, XM=xm, TM=tm, WM=wm, PM=pm,
            LOG_T=bool(log_target), NEED_X=bool(need_input), NEED_T=bool(need_target), BLOCK=BLOCK)
    return gx, gt
