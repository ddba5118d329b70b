"""Triton kernels for the optimizer-step family: fused multi-tensor SGD,
Adam/AdamW, RMSprop and Adagrad steps, the global norm of a list of tensors,
and the clip scale.

Entry points take exactly the arguments of the registered ops (csrc/ops.cpp)
and mutate in place like them: ``sgd_step_``, ``adam_step_``,
``rmsprop_step_``, ``adagrad_step_``, ``total_norm`` (returns a 0-dim float32
tensor, float64 when any input is float64) and ``clip_scale_``.

Algorithm (the per-element arithmetic of csrc/optim/optim_cpu.cpp, which
orders it as torch.optim's single-tensor path does; math in float32 for
float32/float16/bfloat16 params, float64 for float64; state in the params'
dtype):
    SGD:   g = grad/scale (written back) [*clip (rounded to the grad's dtype,
           written back)] (-g if maximize) (+wd*p);
           buf = first ? g : m*buf + (1-d)*g;  g = nesterov ? g + m*buf : buf;
           p += -lr*g
    Adam:  g as above (coupled wd for Adam; p *= 1-lr*wd for AdamW);
           m = lerp(m, g, 1-b1); v = b2*v + (1-b2)*g*g; [vmax = max(vmax, v)];
           p += (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
    RMSprop: g as above (coupled wd); sq = a*sq + (1-a)*g*g;
           [centered: ga = lerp(ga, g, 1-a); avg = sqrt(sq - ga*ga)] else
           avg = sqrt(sq); avg += eps;
           momentum: buf = m*buf + g/avg, p += -lr*buf; else p += -lr*g/avg
    Adagrad: g as above (coupled wd); sum += g*g;
           p += -clr*g / (sqrt(sum) + eps), clr = lr / (1 + (step-1)*lr_decay)
           (per tensor, in float64, after the step's increment)
    norm:  per-program partial sums of x^2 (|x|, max |x|) over fixed chunks,
           then one program adds the partials in a fixed order (deterministic).
    clip:  x *= min(1, max_norm / (total_norm + 1e-6)), computed on the device.
    Folded clip (clip_total_norm= of the steps): the same coefficient, computed
           by every program of the step launch; when it is not exactly 1 the
           grad (after the unscale) is multiplied by it in the opmath type,
           rounded to the grad's dtype and written back, exactly as a
           clip_scale_ pass before the step leaves it, and the step goes on
           with that rounded value. A coefficient of 1 skips it (no write).

Multi-tensor launch: the tensors of one dtype are described by one int64
"table" tensor: the base address of every tensor of every list (param, grad,
state...), row by row, each tensor's numel, and a program map (for program i:
which tensor, which CHUNK-element chunk of it). A kernel loads its tensor's
addresses from the table and casts them with ``.to(tl.pointer_type(...))``,
so ONE launch covers the whole group however many tensors it has (a
thousand 4096-element tensors: one launch of 1000 programs, not 1000
launches). Adam, RMSprop and Adagrad add one small prologue launch that
increments every step (also of zero-size tensors, whose main launch is
skipped) and computes the per-tensor scalars in float64 (Adam: step size,
sqrt(bc2), 1-lr*wd into a (3, T) buffer; Adagrad: -clr into a (T,) one;
RMSprop: none), so nothing is read back to the host. found_inf,
grad_scale, lr_tensor and clip_total_norm are read inside the kernels. The
table is cached (keyed by its contents: addresses, sizes) so a training loop
uploads it once; the float64 hyperparameters travel in a second tiny tensor,
cached by value.

Memory traffic per element (4-byte params): SGD+momentum reads p, g, buf and
writes p, buf (20 B); Adam reads p, g, m, v and writes p, m, v (28 B, +8 B
with amsgrad, +4 B when the unscaled grad is written back); RMSprop reads
p, g, sq [, ga] [, buf] and writes them but g (20 B plain, +8 B centered, +8 B
with momentum); Adagrad reads p, g, sum and writes p, sum (20 B); for both,
+4 B when the unscaled grad is written back, as for Adam; the folded clip
adds one write of the grad (+4 B) when its coefficient is not 1 (none more
with grad_scale: the unscaled, clipped grad is written once) and saves the
separate clip_scale_ pass (8 B); total_norm reads each element once (+8 B per
program); clip_scale_ reads and writes it (8 B).

The trick: one pass over memory per step instead of torch's 5-8 (foreach=False),
and one launch per dtype group instead of one per tensor, via the pointer
table; full blocks take an unmasked path so loads and stores vectorize.

Numerics: every float32 division and square root is IEEE (tl.math.div_rn,
tl.sqrt_rn; Triton's `/` and tl.sqrt are approximate for float32), and
multiply-adds are explicit tl.fma exactly where ATen fuses them (add with
alpha, lerp, addcmul), nowhere else: a product that torch rounds before an
add (p*(1-lr*wd) then p + step, lr*wd then 1 - it) goes through `_mul_rn`,
an inline-asm mul.rn that Triton's default FMA contraction cannot fuse
(checked in the sm_90 PTX: 2 fma per Adam element, as in the CPU kernel).
Under the interpreter, tl.fma is numpy's x*y+z (two roundings), so `_fma`
emulates a one-rounding FMA there: float32 through the exact float64 product,
float64 with Dekker's exact product, each added with TwoSum and rounded to
odd before the final rounding (exact for every float32 input, and for float64
away from underflow/overflow, so interpreted float64 results equal the
compiled and C++ ones too); `_mul_rn` is a plain multiply there.
Bias corrections: beta**step by square-and-multiply in float64 (a few ulp of
double, against Python's correctly rounded pow: invisible after rounding to
float32); steps are integers, as torch keeps them.

Launching: on a GPU the caller registers these functions with
torch.library.triton_op, which needs every launch to go through
torch.library.wrap_triton; under TRITON_INTERPRET=1 that traced path does not
work (pytorch#152868), so `_launch` launches the kernel directly there.
CAVEAT for torch.compile: the pointer table is built from data_ptr(), which a
traced (fake) tensor does not have, and a kernel that writes through pointers
loaded from a table hides its mutations from triton_op's analysis. These
ops are therefore safe eagerly (and through an opaque torch.library.custom_op),
not traced inside torch.compile.
"""
from __future__ import annotations

import collections
import math

import torch
import triton
import triton.language as tl

from . import _common
from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import rtne_bf16 as _rtne_bf16
from ._common import store as _store

_BLOCK = 1024   # elements per inner iteration of a program
_CHUNK = 4096   # elements per program (a multiple of _BLOCK)
_NUM_WARPS = 4
_SUPPORTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# bf16 stores are rounded to nearest even under the interpreter (see _common).
_INTERPRETER = _common.INTERPRETER


@triton.jit
def _fma(x, y, z):
    """x*y + z with one rounding: tl.fma, compiled. The interpreter's tl.fma
    is numpy's x*y + z (two roundings), so there it is emulated exactly:
    float32 through the exact float64 product, float64 with Dekker's exact
    product; both end in a round-to-odd sum (see _round_odd)."""
    if _INTERPRETER:
        if z.dtype == tl.float32:
            s, e = _two_sum(x.to(tl.float64) * y.to(tl.float64), z.to(tl.float64))  # product exact
            return _round_odd(s, e).to(tl.float32)
        elif z.dtype == tl.float64:
            return _fma_f64_emulated(x, y, z)
        else:
            return tl.fma(x, y, z)
    else:
        return tl.fma(x, y, z)


@triton.jit
def _two_sum(a, b):
    """(s, e): s = a + b rounded, e its exact error (Knuth's TwoSum, float64;
    interpreter only)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@triton.jit
def _round_odd(s, e):
    """The exact value s + e (s = RN(s + e), as _two_sum returns) rounded to
    odd in float64: s when exact or already odd, else its neighbour toward e.
    Rounding that once more to float32, or adding it to a float64 (see
    _fma_f64_emulated), rounds the exact value only once (Boldo & Melquiond,
    IEEE TC 2008). Interpreter only."""
    bits = s.to(tl.int64, bitcast=True)
    inexact = (e != 0.0) & ((s - s) == 0.0) & ((bits & 1) == 0)  # finite s only
    bits = tl.where(inexact, tl.where((e > 0.0) == (s > 0.0), bits + 1, bits - 1), bits)
    return bits.to(tl.float64, bitcast=True)


@triton.jit
def _fma_f64_emulated(x, y, z):
    """float64 x*y + z with one rounding, from float64 operations (the
    interpreter has no fused multiply-add): Dekker's exact product p + pl,
    two TwoSums and a round-to-odd add (Boldo & Melquiond's emulated FMA).
    Exact unless x*y underflows (|x*y| < ~2**-969, where pl loses bits) or
    a split overflows (|x| or |y| > ~2**996): values an optimizer never
    holds; there (and for inf/nan, and an exact zero, whose sign the plain
    sum gets right) the result is the plain x*y + z."""
    p = x * y
    t = x * 134217729.0  # 2**27 + 1: Veltkamp's split into 26 + 27 bits
    xh = t - (t - x)
    xl = x - xh
    t = y * 134217729.0
    yh = t - (t - y)
    yl = y - yh
    pl = ((xh * yh - p) + xh * yl + xl * yh) + xl * yl  # x*y == p + pl exactly
    th, tl_ = _two_sum(z, pl)
    vh, vl = _two_sum(p, th)
    s, e = _two_sum(tl_, vl)
    r = vh + _round_odd(s, e)
    naive = p + z
    return tl.where((r == 0.0) | ((r - r) != 0.0) | ((naive - naive) != 0.0), naive, r)


@triton.jit
def _mul_rn(x, y):
    """x * y rounded on its own: never contracted into an FMA with a later
    add (Triton's compiler fuses a multiply feeding an add by default)."""
    if _INTERPRETER:
        return x * y
    else:
        if x.dtype == tl.float64:
            return tl.inline_asm_elementwise("mul.rn.f64 $0, $1, $2;", "=l,l,l", [x, y], dtype=tl.float64,
                                             is_pure=True, pack=1)
        else:
            return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [x, y], dtype=tl.float32,
                                             is_pure=True, pack=1)


@triton.jit
def _div(x, y):
    """IEEE x / y (Triton's float32 `/` is approximate)."""
    if x.dtype == tl.float64:
        return x / y
    else:
        return tl.math.div_rn(x, y)


@triton.jit
def _sqrt(x):
    """IEEE sqrt (tl.sqrt is approximate in float32)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _to_acc(x, Acc):
    """x in the opmath dtype: the element type of the pointer Acc."""
    return x.to(Acc.dtype.element_ty)


@triton.jit
def _ptr(Table, row, T, t, Ref, ALIGNED: tl.constexpr):
    """Base address of tensor t of list `row`, as a pointer to Ref's dtype.
    ALIGNED: the host checked every address is a multiple of 16 bytes; telling
    the compiler lets full blocks use 16-byte vector loads and stores."""
    p = tl.load(Table + row * T + t).to(tl.pointer_type(Ref.dtype.element_ty))
    if ALIGNED:
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def _pow_int(base, n):
    """base ** n for float64 base and integer n >= 0 (int64): square-and-
    multiply, exact to a few ulp of double; as many rounds as n has bits."""
    result = tl.full(base.shape, 1.0, tl.float64)
    b = base
    while tl.max(n, axis=0) > 0:
        result = tl.where((n & 1) == 1, result * b, result)
        b = b * b
        n = n >> 1
    return result


@triton.jit
def _inc_steps(Table, row, T, ts, live):
    """state_steps[ts] += 1, each in its own dtype (table row `row`: the step
    addresses, row + 1: their is-float64 flags); returns the new values as
    float64 (what Python reads with .item()). Lanes outside `live`: 0."""
    addr = tl.load(Table + row * T + ts, mask=live, other=0)
    is64 = tl.load(Table + (row + 1) * T + ts, mask=live, other=0) != 0
    p32 = addr.to(tl.pointer_type(tl.float32))
    p64 = addr.to(tl.pointer_type(tl.float64))
    s32 = tl.load(p32, mask=live & (~is64), other=0.0)
    s64 = tl.load(p64, mask=live & is64, other=0.0)
    s32 = s32 + 1.0  # step += 1, in the step's own dtype
    s64 = s64 + 1.0
    tl.store(p32, s32, mask=live & (~is64))
    tl.store(p64, s64, mask=live & is64)
    return tl.where(is64, s64, s32.to(tl.float64))


@triton.jit
def _round_to(x, ptrs):
    """x rounded to the element type of `ptrs` and back to x's dtype: the
    value a store to `ptrs` followed by a load gives (bf16 rounded to nearest
    even under the interpreter too, as `_store` does)."""
    if _INTERPRETER:
        if ptrs.dtype.element_ty == tl.bfloat16:
            x = _rtne_bf16(x.to(tl.float32))  # then the truncating conversion below is exact
    return x.to(ptrs.dtype.element_ty).to(x.dtype)


@triton.jit
def _clip_coef(TotalNorm, max_norm, eps):
    """torch.nn.utils.clip_grad_norm_'s coefficient, clamped to 1 (NaN stays
    NaN), in the total norm's dtype: max_norm / (total_norm + eps) as torch
    computes a Python float over a tensor, reciprocal(t) * max_norm (the CPU
    kernel's formula). max_norm, eps: float64 scalars. Shared by
    _clip_scale_kernel and the steps' folded clip."""
    tn = tl.load(TotalNorm)
    if TotalNorm.dtype.element_ty == tl.float64:
        r = 1.0 / (tn + eps)
        c = r * max_norm
    else:
        r = tl.math.div_rn(tl.full(tn.shape, 1.0, tl.float32), tn + eps.to(tl.float32))
        c = r * max_norm.to(tl.float32)
    return tl.where(c > 1.0, 1.0, c)


@triton.jit
def _grad_scalars(GradScale, ClipNorm, Hyp, Ref, HAS_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr):
    """(scale, coef, clip_on) for _unscale_clip, in Ref's element type (the
    opmath type): GradScaler's scale (Hyp[0] = 1.0 when there is none), and the
    folded clip_grad_norm_'s coefficient from clip_total_norm with
    max_norm = Hyp[1], eps = Hyp[2]; clip_on is False without a clip or when
    the coefficient is exactly 1 (then the clip is skipped)."""
    if HAS_SCALE:
        scale = _to_acc(tl.load(GradScale).to(tl.float32), Ref)
    else:
        scale = _to_acc(tl.load(Hyp), Ref)  # 1.0, unused
    if HAS_CLIP:
        c = _clip_coef(ClipNorm, tl.load(Hyp + 1), tl.load(Hyp + 2))
        clip_on = c != 1.0
        coef = _to_acc(c, Ref)
    else:
        clip_on = False
        coef = scale  # unused
    return scale, coef, clip_on


@triton.jit
def _unscale_clip(g_ptr, g, mask, scale, coef, clip_on, HAS_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr):
    """The grad a step goes on with, written back as torch would leave it:
    GradScaler's unscale_ (g / scale), then the folded clip_grad_norm_ scale
    (grad.mul_(coef): in the opmath type, rounded to the grad's dtype). The
    grad is written back once, after both. clip_on (c != 1) is uniform over
    the launch; coef is c in the opmath type."""
    if HAS_SCALE:
        g = _div(g, scale)
    if HAS_CLIP:
        if clip_on:
            g = _round_to(_mul_rn(g, coef), g_ptr)  # never contracted with what follows
            _store(g_ptr, g, mask)
        else:
            if HAS_SCALE:
                _store(g_ptr, g, mask)
    else:
        if HAS_SCALE:
            _store(g_ptr, g, mask)
    return g


# --------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------
@triton.jit
def _sgd_body(p_ptr, g_ptr, b_ptr, mask, scale, coef, clip_on, wd, mom, omd, neg_lr,
              HAS_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr,
              HAS_MOM: tl.constexpr, FIRST: tl.constexpr, NESTEROV: tl.constexpr):
    p = tl.load(p_ptr, mask=mask).to(scale.dtype)
    g = tl.load(g_ptr, mask=mask).to(scale.dtype)
    g = _unscale_clip(g_ptr, g, mask, scale, coef, clip_on, HAS_SCALE, HAS_CLIP)  # written back
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = _fma(p, wd, g)  # grad.add(param, alpha=wd)
    if HAS_MOM:
        if FIRST:
            b = g  # buf = grad.clone()
        else:
            b = _fma(g, omd, _mul_rn(tl.load(b_ptr, mask=mask).to(scale.dtype), mom))  # buf.mul_(m).add_(g, alpha=1-d)
        if NESTEROV:
            g = _fma(b, mom, g)  # g.add(buf, alpha=m)
        else:
            g = b
        _store(b_ptr, b, mask)
    p = _fma(g, neg_lr, p)  # param.add_(g, alpha=-lr)
    _store(p_ptr, p, mask)


@triton.jit
def _sgd_kernel(Table, Hyp, Acc, Ref, LrT, GradScale, FoundInf, ClipNorm, T, P,
                HAS_LR_T: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, HAS_CLIP: tl.constexpr,
                MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_MOM: tl.constexpr,
                FIRST: tl.constexpr, NESTEROV: tl.constexpr, ALIGNED: tl.constexpr,
                BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    # Table rows: 0 params, 1 grads, 2 momentum buffers, 3 numel; program map at 4T.
    pid = tl.program_id(0)
    ok = True
    if HAS_INF:
        ok = tl.load(FoundInf).to(tl.float64) == 0.0
    if ok:
        t = tl.load(Table + 4 * T + pid)
        start = tl.load(Table + 4 * T + P + pid) * CHUNK
        n = tl.load(Table + 3 * T + t)
        p_base = _ptr(Table, 0, T, t, Ref, ALIGNED)
        g_base = _ptr(Table, 1, T, t, Ref, ALIGNED)
        b_base = _ptr(Table, 2, T, t, Ref, ALIGNED)
        # Hyp (float64): wd, momentum, 1-dampening, -lr, 1.0, clip max_norm, 1e-6;
        # rounded to the opmath type.
        wd = _to_acc(tl.load(Hyp + 0), Acc)
        mom = _to_acc(tl.load(Hyp + 1), Acc)
        omd = _to_acc(tl.load(Hyp + 2), Acc)
        if HAS_LR_T:
            neg_lr = _to_acc(-tl.load(LrT).to(tl.float64), Acc)
        else:
            neg_lr = _to_acc(tl.load(Hyp + 3), Acc)
        scale, coef, clip_on = _grad_scalars(GradScale, ClipNorm, Hyp + 4, Acc, HAS_SCALE, HAS_CLIP)
        for s in range(0, CHUNK, BLOCK):
            offs = start + s + tl.arange(0, BLOCK)
            if start + s + BLOCK <= n:  # full block: unmasked, vectorizes
                _sgd_body(p_base + offs, g_base + offs, b_base + offs, None, scale, coef, clip_on, wd, mom, omd,
                          neg_lr, HAS_SCALE, HAS_CLIP, MAXIMIZE, HAS_WD, HAS_MOM, FIRST, NESTEROV)
            else:
                _sgd_body(p_base + offs, g_base + offs, b_base + offs, offs < n, scale, coef, clip_on, wd, mom,
                          omd, neg_lr, HAS_SCALE, HAS_CLIP, MAXIMIZE, HAS_WD, HAS_MOM, FIRST, NESTEROV)


# --------------------------------------------------------------------------
# Adam / AdamW
# --------------------------------------------------------------------------
@triton.jit
def _adam_prologue_kernel(Table, Hyp, Scal, LrT, FoundInf, T,
                          HAS_INF: tl.constexpr, LR_MODE: tl.constexpr, BLOCK_T: tl.constexpr):
    # Table rows: 5 step addresses, 6 step-is-float64 flags. LR_MODE: 0 float
    # lr (Hyp), 1 float32 tensor, 2 float64 tensor. Writes Scal (3, T), opmath
    # dtype: -lr/bc1, sqrt(bc2), 1 - lr*wd; as the CPU kernel computes them.
    ok = True
    if HAS_INF:
        ok = tl.load(FoundInf).to(tl.float64) == 0.0
    if ok:
        beta1 = tl.load(Hyp + 0)
        beta2 = tl.load(Hyp + 1)
        lr = tl.load(Hyp + 2)
        wd = tl.load(Hyp + 3)
        decay_host = tl.load(Hyp + 5)
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            live = ts < T
            step = _inc_steps(Table, 5, T, ts, live)
            n = step.to(tl.int64)
            zeros = tl.zeros([BLOCK_T], dtype=tl.float64)
            bc1 = 1.0 - _pow_int(zeros + beta1, n)
            bc2 = 1.0 - _pow_int(zeros + beta2, n)
            if LR_MODE == 1:
                # float32 tensor lr: torch's tensor arithmetic is float32.
                lr_f = tl.zeros([BLOCK_T], dtype=tl.float32) + tl.load(LrT)
                neg_step = (-tl.math.div_rn(lr_f, bc1.to(tl.float32))).to(tl.float64)
                decay = (1.0 - _mul_rn(lr_f, zeros.to(tl.float32) + wd.to(tl.float32))).to(tl.float64)
            elif LR_MODE == 2:
                lr_d = zeros + tl.load(LrT)
                neg_step = -(lr_d / bc1)
                decay = 1.0 - _mul_rn(lr_d, zeros + wd)
            else:
                neg_step = -(lr / bc1)
                decay = zeros + decay_host
            tl.store(Scal + ts, neg_step.to(Scal.dtype.element_ty), mask=live)
            tl.store(Scal + T + ts, tl.sqrt(bc2).to(Scal.dtype.element_ty), mask=live)
            tl.store(Scal + 2 * T + ts, decay.to(Scal.dtype.element_ty), mask=live)


@triton.jit
def _adam_body(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, mask, scale, coef, clip_on, wd, lw, lw_m1, beta2, omb2, eps,
               neg_step, bc2_sqrt, decay,
               HAS_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, MAXIMIZE: tl.constexpr, COUPLED_WD: tl.constexpr,
               DECOUPLED_WD: tl.constexpr, AMSGRAD: tl.constexpr, LERP_SMALL: tl.constexpr):
    A = scale.dtype
    p = tl.load(p_ptr, mask=mask).to(A)
    g = tl.load(g_ptr, mask=mask).to(A)
    m = tl.load(m_ptr, mask=mask).to(A)
    v = tl.load(v_ptr, mask=mask).to(A)
    g = _unscale_clip(g_ptr, g, mask, scale, coef, clip_on, HAS_SCALE, HAS_CLIP)  # written back
    if MAXIMIZE:
        g = -g
    if COUPLED_WD:
        g = _fma(p, wd, g)  # grad.add(param, alpha=wd)
    if DECOUPLED_WD:
        p = _mul_rn(p, decay)  # param.mul_(1 - lr*wd)
    # exp_avg.lerp_(grad, 1-beta1), as ATen's lerp computes it
    diff = g - m
    if LERP_SMALL:
        m = _fma(lw, diff, m)
    else:
        m = _fma(lw_m1, diff, g)
    # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2)
    v = _fma(_mul_rn(omb2, g), g, _mul_rn(v, beta2))
    if AMSGRAD:
        x = tl.maximum(tl.load(x_ptr, mask=mask).to(A), v, propagate_nan=tl.PropagateNan.ALL)
        _store(x_ptr, x, mask)
        den_src = x
    else:
        den_src = v
    # denom = (sqrt(.) / bc2_sqrt).add_(eps); param.addcdiv_(m, denom, value=-step_size)
    denom = _div(_sqrt(den_src), bc2_sqrt) + eps
    p = p + _div(_mul_rn(neg_step, m), denom)
    _store(p_ptr, p, mask)
    _store(m_ptr, m, mask)
    _store(v_ptr, v, mask)


@triton.jit
def _adam_kernel(Table, Hyp, Scal, Ref, GradScale, FoundInf, ClipNorm, T, P,
                 HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, HAS_CLIP: tl.constexpr, MAXIMIZE: tl.constexpr,
                 COUPLED_WD: tl.constexpr, DECOUPLED_WD: tl.constexpr, AMSGRAD: tl.constexpr,
                 LERP_SMALL: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    # Table rows: 0 params, 1 grads, 2 exp_avgs, 3 exp_avg_sqs, 4 max_exp_avg_sqs,
    # 5 steps, 6 step flags, 7 numel; program map at 8T.
    pid = tl.program_id(0)
    ok = True
    if HAS_INF:
        ok = tl.load(FoundInf).to(tl.float64) == 0.0
    if ok:
        t = tl.load(Table + 8 * T + pid)
        start = tl.load(Table + 8 * T + P + pid) * CHUNK
        n = tl.load(Table + 7 * T + t)
        p_base = _ptr(Table, 0, T, t, Ref, ALIGNED)
        g_base = _ptr(Table, 1, T, t, Ref, ALIGNED)
        m_base = _ptr(Table, 2, T, t, Ref, ALIGNED)
        v_base = _ptr(Table, 3, T, t, Ref, ALIGNED)
        x_base = _ptr(Table, 4, T, t, Ref, ALIGNED)
        neg_step = tl.load(Scal + t)
        bc2_sqrt = tl.load(Scal + T + t)
        decay = tl.load(Scal + 2 * T + t)
        # Hyp (float64): beta1, beta2, lr, wd, eps, decay, 1-beta1, 1-beta2, 1.0,
        # clip max_norm, 1e-6
        wd = _to_acc(tl.load(Hyp + 3), Scal)
        eps = _to_acc(tl.load(Hyp + 4), Scal)
        lw = _to_acc(tl.load(Hyp + 6), Scal)
        lw_m1 = lw - 1.0
        beta2 = _to_acc(tl.load(Hyp + 1), Scal)
        omb2 = _to_acc(tl.load(Hyp + 7), Scal)
        scale, coef, clip_on = _grad_scalars(GradScale, ClipNorm, Hyp + 8, Scal, HAS_SCALE, HAS_CLIP)
        for s in range(0, CHUNK, BLOCK):
            offs = start + s + tl.arange(0, BLOCK)
            if start + s + BLOCK <= n:  # full block: unmasked, vectorizes
                _adam_body(p_base + offs, g_base + offs, m_base + offs, v_base + offs, x_base + offs, None,
                           scale, coef, clip_on, wd, lw, lw_m1, beta2, omb2, eps, neg_step, bc2_sqrt, decay,
                           HAS_SCALE, HAS_CLIP, MAXIMIZE, COUPLED_WD, DECOUPLED_WD, AMSGRAD, LERP_SMALL)
            else:
                _adam_body(p_base + offs, g_base + offs, m_base + offs, v_base + offs, x_base + offs, offs < n,
                           scale, coef, clip_on, wd, lw, lw_m1, beta2, omb2, eps, neg_step, bc2_sqrt, decay,
                           HAS_SCALE, HAS_CLIP, MAXIMIZE, COUPLED_WD, DECOUPLED_WD, AMSGRAD, LERP_SMALL)


# --------------------------------------------------------------------------
# RMSprop
# --------------------------------------------------------------------------
@triton.jit
def _rmsprop_prologue_kernel(Table, FoundInf, T, HAS_INF: tl.constexpr, BLOCK_T: tl.constexpr):
    # Table rows: 5 step addresses, 6 step-is-float64 flags. RMSprop counts
    # its steps but has no per-tensor scalar: the increment is all there is.
    ok = True
    if HAS_INF:
        ok = tl.load(FoundInf).to(tl.float64) == 0.0
    if ok:
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            _inc_steps(Table, 5, T, ts, ts < T)


@triton.jit
def _rmsprop_body(p_ptr, g_ptr, s_ptr, a_ptr, b_ptr, mask, scale, coef, clip_on, wd, alpha, w, w_m1, eps, mom,
                  neg_lr, HAS_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, MAXIMIZE: tl.constexpr,
                  HAS_WD: tl.constexpr, CENTERED: tl.constexpr, HAS_MOM: tl.constexpr, LERP_SMALL: tl.constexpr):
    A = scale.dtype
    p = tl.load(p_ptr, mask=mask).to(A)
    g = tl.load(g_ptr, mask=mask).to(A)
    sq = tl.load(s_ptr, mask=mask).to(A)
    g = _unscale_clip(g_ptr, g, mask, scale, coef, clip_on, HAS_SCALE, HAS_CLIP)  # written back
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = _fma(p, wd, g)  # grad.add(param, alpha=wd)
    # square_avg.mul_(alpha).addcmul_(grad, grad, value=1-alpha)
    sq = _fma(_mul_rn(w, g), g, _mul_rn(sq, alpha))
    if CENTERED:
        # grad_avg.lerp_(grad, 1-alpha), as ATen's lerp computes it
        ga = tl.load(a_ptr, mask=mask).to(A)
        diff = g - ga
        if LERP_SMALL:
            ga = _fma(w, diff, ga)
        else:
            ga = _fma(w_m1, diff, g)
        _store(a_ptr, ga, mask)
        avg = _sqrt(_fma(-ga, ga, sq))  # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = _sqrt(sq)  # square_avg.sqrt()
    avg = avg + eps  # .add_(eps)
    if HAS_MOM:
        # buf.mul_(momentum).addcdiv_(grad, avg): product and quotient rounded, then the add
        b = _mul_rn(tl.load(b_ptr, mask=mask).to(A), mom) + _div(g, avg)
        _store(b_ptr, b, mask)
        p = _fma(b, neg_lr, p)  # param.add_(buf, alpha=-lr)
    else:
        p = p + _div(_mul_rn(neg_lr, g), avg)  # param.addcdiv_(grad, avg, value=-lr)
    _store(p_ptr, p, mask)
    _store(s_ptr, sq, mask)


@triton.jit
def _rmsprop_kernel(Table, Hyp, Acc, Ref, GradScale, FoundInf, ClipNorm, T, P,
                    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, HAS_CLIP: tl.constexpr, MAXIMIZE: tl.constexpr,
                    HAS_WD: tl.constexpr, CENTERED: tl.constexpr, HAS_MOM: tl.constexpr, LERP_SMALL: tl.constexpr,
                    ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    # Table rows: 0 params, 1 grads, 2 square_avgs, 3 grad_avgs, 4 momentum buffers,
    # 5 steps, 6 step flags, 7 numel; program map at 8T.
    pid = tl.program_id(0)
    ok = True
    if HAS_INF:
        ok = tl.load(FoundInf).to(tl.float64) == 0.0
    if ok:
        t = tl.load(Table + 8 * T + pid)
        start = tl.load(Table + 8 * T + P + pid) * CHUNK
        n = tl.load(Table + 7 * T + t)
        p_base = _ptr(Table, 0, T, t, Ref, ALIGNED)
        g_base = _ptr(Table, 1, T, t, Ref, ALIGNED)
        s_base = _ptr(Table, 2, T, t, Ref, ALIGNED)
        a_base = _ptr(Table, 3, T, t, Ref, ALIGNED)
        b_base = _ptr(Table, 4, T, t, Ref, ALIGNED)
        # Hyp (float64): alpha, 1-alpha, eps, wd, momentum, -lr, 1.0, clip max_norm,
        # 1e-6; rounded to the opmath type.
        alpha = _to_acc(tl.load(Hyp + 0), Acc)
        w = _to_acc(tl.load(Hyp + 1), Acc)
        w_m1 = w - 1.0
        eps = _to_acc(tl.load(Hyp + 2), Acc)
        wd = _to_acc(tl.load(Hyp + 3), Acc)
        mom = _to_acc(tl.load(Hyp + 4), Acc)
        neg_lr = _to_acc(tl.load(Hyp + 5), Acc)
        scale, coef, clip_on = _grad_scalars(GradScale, ClipNorm, Hyp + 6, Acc, HAS_SCALE, HAS_CLIP)
        for s in range(0, CHUNK, BLOCK):
            offs = start + s + tl.arange(0, BLOCK)
            if start + s + BLOCK <= n:  # full block: unmasked, vectorizes
                _rmsprop_body(p_base + offs, g_base + offs, s_base + offs, a_base + offs, b_base + offs, None,
                              scale, coef, clip_on, wd, alpha, w, w_m1, eps, mom, neg_lr,
                              HAS_SCALE, HAS_CLIP, MAXIMIZE, HAS_WD, CENTERED, HAS_MOM, LERP_SMALL)
            else:
                _rmsprop_body(p_base + offs, g_base + offs, s_base + offs, a_base + offs, b_base + offs, offs < n,
                              scale, coef, clip_on, wd, alpha, w, w_m1, eps, mom, neg_lr,
                              HAS_SCALE, HAS_CLIP, MAXIMIZE, HAS_WD, CENTERED, HAS_MOM, LERP_SMALL)


# --------------------------------------------------------------------------
# Adagrad
# --------------------------------------------------------------------------
@triton.jit
def _adagrad_prologue_kernel(Table, Hyp, Scal, FoundInf, T, HAS_INF: tl.constexpr, BLOCK_T: tl.constexpr):
    # Table rows: 3 step addresses, 4 step-is-float64 flags. Writes Scal (T),
    # opmath dtype: -clr = -(lr / (1 + (step - 1) * lr_decay)), in float64 as
    # Python computes it (the product rounded on its own).
    ok = True
    if HAS_INF:
        ok = tl.load(FoundInf).to(tl.float64) == 0.0
    if ok:
        lr = tl.load(Hyp + 0)
        lr_decay = tl.load(Hyp + 1)
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            live = ts < T
            step = _inc_steps(Table, 3, T, ts, live)
            zeros = tl.zeros([BLOCK_T], dtype=tl.float64)
            neg_clr = -(lr / (1.0 + _mul_rn(step - 1.0, zeros + lr_decay)))
            tl.store(Scal + ts, neg_clr.to(Scal.dtype.element_ty), mask=live)


@triton.jit
def _adagrad_body(p_ptr, g_ptr, s_ptr, mask, scale, coef, clip_on, wd, eps, neg_clr,
                  HAS_SCALE: tl.constexpr, HAS_CLIP: tl.constexpr, MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr):
    A = scale.dtype
    p = tl.load(p_ptr, mask=mask).to(A)
    g = tl.load(g_ptr, mask=mask).to(A)
    sm = tl.load(s_ptr, mask=mask).to(A)
    g = _unscale_clip(g_ptr, g, mask, scale, coef, clip_on, HAS_SCALE, HAS_CLIP)  # written back
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        g = _fma(p, wd, g)  # grad.add(param, alpha=wd)
    sm = _fma(g, g, sm)  # state_sum.addcmul_(grad, grad, value=1)
    std = _sqrt(sm) + eps  # state_sum.sqrt().add_(eps)
    p = p + _div(_mul_rn(neg_clr, g), std)  # param.addcdiv_(grad, std, value=-clr)
    _store(p_ptr, p, mask)
    _store(s_ptr, sm, mask)


@triton.jit
def _adagrad_kernel(Table, Hyp, Scal, Ref, GradScale, FoundInf, ClipNorm, T, P,
                    HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, HAS_CLIP: tl.constexpr, MAXIMIZE: tl.constexpr,
                    HAS_WD: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    # Table rows: 0 params, 1 grads, 2 state_sums, 3 steps, 4 step flags, 5 numel;
    # program map at 6T.
    pid = tl.program_id(0)
    ok = True
    if HAS_INF:
        ok = tl.load(FoundInf).to(tl.float64) == 0.0
    if ok:
        t = tl.load(Table + 6 * T + pid)
        start = tl.load(Table + 6 * T + P + pid) * CHUNK
        n = tl.load(Table + 5 * T + t)
        p_base = _ptr(Table, 0, T, t, Ref, ALIGNED)
        g_base = _ptr(Table, 1, T, t, Ref, ALIGNED)
        s_base = _ptr(Table, 2, T, t, Ref, ALIGNED)
        neg_clr = tl.load(Scal + t)
        # Hyp (float64): lr, lr_decay, wd, eps, 1.0, clip max_norm, 1e-6
        wd = _to_acc(tl.load(Hyp + 2), Scal)
        eps = _to_acc(tl.load(Hyp + 3), Scal)
        scale, coef, clip_on = _grad_scalars(GradScale, ClipNorm, Hyp + 4, Scal, HAS_SCALE, HAS_CLIP)
        for s in range(0, CHUNK, BLOCK):
            offs = start + s + tl.arange(0, BLOCK)
            if start + s + BLOCK <= n:  # full block: unmasked, vectorizes
                _adagrad_body(p_base + offs, g_base + offs, s_base + offs, None, scale, coef, clip_on, wd, eps,
                              neg_clr, HAS_SCALE, HAS_CLIP, MAXIMIZE, HAS_WD)
            else:
                _adagrad_body(p_base + offs, g_base + offs, s_base + offs, offs < n, scale, coef, clip_on, wd, eps,
                              neg_clr, HAS_SCALE, HAS_CLIP, MAXIMIZE, HAS_WD)


# --------------------------------------------------------------------------
# Gradient clipping: global norm (two stages), in-place scale
# --------------------------------------------------------------------------
@triton.jit
def _norm_partial_kernel(Table, Ref, Acc, Partial, part_offset, T, P,
                         KIND: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    # Table rows: 0 tensors, 1 numel; program map at 2T. KIND: 0 norm 2, 1 norm 1, 2 inf.
    pid = tl.program_id(0)
    t = tl.load(Table + 2 * T + pid)
    start = tl.load(Table + 2 * T + P + pid) * CHUNK
    n = tl.load(Table + T + t)
    base = _ptr(Table, 0, T, t, Ref, ALIGNED)
    acc = tl.zeros([BLOCK], dtype=Acc.dtype.element_ty)
    nan = tl.zeros([BLOCK], dtype=tl.int32)
    for s in range(0, CHUNK, BLOCK):
        offs = start + s + tl.arange(0, BLOCK)
        if start + s + BLOCK <= n:  # full block: unmasked, vectorizes
            x = tl.load(base + offs).to(Acc.dtype.element_ty)
        else:
            x = tl.load(base + offs, mask=offs < n, other=0.0).to(Acc.dtype.element_ty)
        if KIND == 0:
            acc = _fma(x, x, acc)
        elif KIND == 1:
            acc = acc + tl.abs(x)
        else:
            acc = tl.maximum(acc, tl.abs(x))
            nan = nan | (x != x).to(tl.int32)
    if KIND == 2:
        r = tl.max(acc, axis=0).to(tl.float64)
        r = tl.where(tl.max(nan, axis=0) != 0, float("nan"), r)
    else:
        r = tl.sum(acc, axis=0).to(tl.float64)
    tl.store(Partial + part_offset + pid, r)


@triton.jit
def _norm_final_kernel(Partial, Out, NP, KIND: tl.constexpr, BLOCK: tl.constexpr):
    # One program: the partials in a fixed order (lane j: j, j+BLOCK, ...; then tl.sum).
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    nan = tl.zeros([BLOCK], dtype=tl.int32)
    for s in range(0, NP, BLOCK):
        offs = s + tl.arange(0, BLOCK)
        x = tl.load(Partial + offs, mask=offs < NP, other=0.0)
        if KIND == 2:
            acc = tl.maximum(acc, x)
            nan = nan | (x != x).to(tl.int32)
        else:
            acc = acc + x
    if KIND == 2:
        r = tl.max(acc, axis=0)
        r = tl.where(tl.max(nan, axis=0) != 0, float("nan"), r)
    else:
        r = tl.sum(acc, axis=0)
        if KIND == 0:
            r = tl.sqrt(r)  # float64: IEEE
    tl.store(Out, r.to(Out.dtype.element_ty))


@triton.jit
def _clip_scale_kernel(Table, Hyp, Ref, Acc, TotalNorm, T, P, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
                       CHUNK: tl.constexpr):
    # torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1; x.mul_(coef);
    # the CPU kernel's formula, in the total norm's dtype. Hyp (float64): max_norm, 1e-6.
    pid = tl.program_id(0)
    c = _clip_coef(TotalNorm, tl.load(Hyp + 0), tl.load(Hyp + 1))
    if c != 1.0:  # multiplying by exactly 1 changes nothing
        coef = c.to(Acc.dtype.element_ty)
        t = tl.load(Table + 2 * T + pid)
        start = tl.load(Table + 2 * T + P + pid) * CHUNK
        n = tl.load(Table + T + t)
        base = _ptr(Table, 0, T, t, Ref, ALIGNED)
        for s in range(0, CHUNK, BLOCK):
            offs = start + s + tl.arange(0, BLOCK)
            if start + s + BLOCK <= n:  # full block: unmasked, vectorizes
                _store(base + offs, tl.load(base + offs).to(Acc.dtype.element_ty) * coef, None)
            else:
                mask = offs < n
                _store(base + offs, tl.load(base + offs, mask=mask).to(Acc.dtype.element_ty) * coef, mask)


# --------------------------------------------------------------------------
# Host side: checks (the CPU kernel's, as Python exceptions), tables, launches
# --------------------------------------------------------------------------
def _check_list_len(lst, name, n):
    if len(lst) != n:
        raise ValueError(f"{name}: expected {n} tensors (one per parameter), got {len(lst)}")


def _check_param(p, i, p0):
    if p.dtype not in _SUPPORTED:
        raise RuntimeError(f"params[{i}]: expected a float32, float64, float16 or bfloat16 tensor, got {p.dtype}")
    if p.device != p0.device:
        raise RuntimeError(f"params[{i}]: expected all tensors to be on the same device ({p0.device}, the device "
                           f"of params[0]), got one on {p.device}")
    if not _dense(p):
        raise RuntimeError(f"params[{i}]: expected a dense, non-overlapping tensor (for example a contiguous one)")


def _dense(t) -> bool:
    """Dense and non-overlapping (any memory format, at::Tensor's
    is_non_overlapping_and_dense): the kernels walk numel() elements from
    data_ptr()."""
    if t.is_contiguous():
        return True
    expected = 1
    dims = sorted(((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1))
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _check_like(t, name, i, p):
    if t is None:
        raise RuntimeError(f"{name}[{i}]: expected a tensor, got None")
    if t.is_sparse:
        raise RuntimeError(f"{name}[{i}]: sparse tensors are not supported")
    if t.device != p.device:
        raise RuntimeError(f"{name}[{i}]: expected a tensor on {p.device} (the device of params[{i}]), "
                           f"got one on {t.device}")
    if t.dtype != p.dtype:
        raise RuntimeError(f"{name}[{i}]: expected dtype {p.dtype} (the dtype of params[{i}]), got {t.dtype}")
    if t.shape != p.shape:
        raise RuntimeError(f"{name}[{i}]: expected shape {list(p.shape)} (the shape of params[{i}]), "
                           f"got {list(t.shape)}")
    if any(n > 1 and ts != ps for n, ts, ps in zip(p.shape, t.stride(), p.stride())):
        # strides of size-1 dimensions address nothing: only the others must agree
        raise RuntimeError(f"{name}[{i}]: expected the memory layout of params[{i}] (strides "
                           f"{list(p.stride())} in its dimensions of size > 1), got strides {list(t.stride())}")


def _check_step(s, i, p):
    """state_steps[i]: a float32/float64 scalar beside params[i]."""
    if s.numel() != 1 or s.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"state_steps[{i}]: expected a float32 or float64 tensor with one element, "
                           f"got {s.dtype} of shape {list(s.shape)}")
    if s.device != p.device:
        raise RuntimeError(f"state_steps[{i}]: expected a tensor on {p.device} (the device of "
                           f"params[{i}]), got one on {s.device}")


def _check_scalar(t, name, p0):
    if t is None:
        return
    if t.numel() != 1:
        raise RuntimeError(f"{name}: expected a tensor with one element, got {t.numel()}")
    if t.device != p0.device:
        raise RuntimeError(f"{name}: expected a tensor on {p0.device} (the device of params), got one on {t.device}")
    if t.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{name}: expected a float32 or float64 tensor, got {t.dtype}")


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _groups(tensors):
    """Indices of `tensors` by dtype, in order of first appearance."""
    out: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        out.setdefault(t.dtype, []).append(i)
    return list(out.items())


_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 64


def _cached(key, make):
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    value = make()
    _CACHE[key] = value
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def _upload(values, dtype, device):
    """A host list as a tensor on `device`: pinned + non_blocking on a GPU,
    so no host synchronisation."""
    t = torch.tensor(values, dtype=dtype)
    if device.type != "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    return t


def _to_device(values, dtype, device):
    """Small host constants (hyperparameters) on `device`, cached by value."""
    return _cached(("v", dtype, device, tuple(values)), lambda: _upload(values, dtype, device))


def _table(rows: list[list[int]], numels: list[int], device):
    """int64 table: the given rows (T entries each), numel, then the program
    map (tensor index per program, then chunk index per program). Returns
    (table, T, P). Chunk c of a tensor starts at element c*_CHUNK, so with
    16-byte aligned base addresses every full block is 16-byte aligned.
    Cached by (addresses, sizes): a training loop builds and uploads it once."""
    T = len(numels)
    key = ("t", device, _CHUNK, tuple(tuple(r) for r in rows), tuple(numels))

    def make():
        prog_t, prog_c = [], []
        for t, n in enumerate(numels):
            k = -(-n // _CHUNK)
            prog_t.extend([t] * k)
            prog_c.extend(range(k))
        flat = [v for row in rows for v in row] + list(numels) + prog_t + prog_c
        return _upload(flat, torch.int64, device), len(prog_t)

    table, P = _cached(key, make)
    return table, T, P


def _aligned(rows) -> bool:
    """Every (non-null) address of the pointer rows a multiple of 16 bytes."""
    return all(a % 16 == 0 for row in rows for a in row)


def _addr(t):
    return t.data_ptr() if t is not None else 0


def sgd_step_(params, grads, momentum_buffers, *, lr, momentum, dampening, weight_decay, nesterov, maximize,
              is_first_step, lr_tensor=None, grad_scale=None, found_inf=None, clip_total_norm=None,
              clip_max_norm=0.0):
    n = len(params)
    _check_list_len(grads, "grads", n)
    has_mom = momentum != 0.0
    if has_mom:
        _check_list_len(momentum_buffers, "momentum_buffers", n)
    if n == 0:
        return
    p0 = params[0]
    for i in range(n):
        _check_param(params[i], i, p0)
        _check_like(grads[i], "grads", i, params[i])
        if has_mom:
            _check_like(momentum_buffers[i], "momentum_buffers", i, params[i])
    _check_scalar(lr_tensor, "lr_tensor", p0)
    _check_scalar(grad_scale, "grad_scale", p0)
    _check_scalar(found_inf, "found_inf", p0)
    _check_scalar(clip_total_norm, "clip_total_norm", p0)
    dev = p0.device
    hyp = _to_device([float(weight_decay), float(momentum), 1.0 - float(dampening), -float(lr), 1.0,
                      float(clip_max_norm), 1e-6], torch.float64, dev)
    for dtype, idx in _groups(params):
        rows = [[_addr(params[i]) for i in idx], [_addr(grads[i]) for i in idx],
                [_addr(momentum_buffers[i]) if has_mom else 0 for i in idx]]
        table, T, P = _table(rows, [params[i].numel() for i in idx], dev)
        if P == 0:
            continue
        acc = torch.empty(1, dtype=_acc_dtype(dtype), device=dev)  # only carries the opmath dtype
        _launch(_sgd_kernel)[(P,)](
            table, hyp, acc, params[idx[0]],
            lr_tensor if lr_tensor is not None else hyp,  # unused slots: any tensor, never read
            grad_scale if grad_scale is not None else hyp,
            found_inf if found_inf is not None else hyp,
            clip_total_norm if clip_total_norm is not None else hyp,
            T, P,
            HAS_LR_T=lr_tensor is not None, HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None,
            HAS_CLIP=clip_total_norm is not None,
            MAXIMIZE=bool(maximize), HAS_WD=weight_decay != 0.0, HAS_MOM=has_mom,
            FIRST=bool(is_first_step), NESTEROV=bool(nesterov), ALIGNED=_aligned(rows),
            BLOCK=_BLOCK, CHUNK=_CHUNK, num_warps=_NUM_WARPS,
        )


def adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1, beta2,
               weight_decay, eps, amsgrad, maximize, decoupled_weight_decay, lr_tensor=None, grad_scale=None,
               found_inf=None, clip_total_norm=None, clip_max_norm=0.0):
    n = len(params)
    _check_list_len(grads, "grads", n)
    _check_list_len(exp_avgs, "exp_avgs", n)
    _check_list_len(exp_avg_sqs, "exp_avg_sqs", n)
    if amsgrad:
        _check_list_len(max_exp_avg_sqs, "max_exp_avg_sqs", n)
    _check_list_len(state_steps, "state_steps", n)
    if n == 0:
        return
    p0 = params[0]
    for i in range(n):
        _check_param(params[i], i, p0)
        _check_like(grads[i], "grads", i, params[i])
        _check_like(exp_avgs[i], "exp_avgs", i, params[i])
        _check_like(exp_avg_sqs[i], "exp_avg_sqs", i, params[i])
        if amsgrad:
            _check_like(max_exp_avg_sqs[i], "max_exp_avg_sqs", i, params[i])
        _check_step(state_steps[i], i, params[i])
    _check_scalar(lr_tensor, "lr_tensor", p0)
    _check_scalar(grad_scale, "grad_scale", p0)
    _check_scalar(found_inf, "found_inf", p0)
    _check_scalar(clip_total_norm, "clip_total_norm", p0)
    dev = p0.device
    lr, beta1, beta2, wd, eps = float(lr), float(beta1), float(beta2), float(weight_decay), float(eps)
    hyp = _to_device([beta1, beta2, lr, wd, eps, 1.0 - lr * wd, 1.0 - beta1, 1.0 - beta2, 1.0,
                      float(clip_max_norm), 1e-6], torch.float64, dev)
    lr_mode = 0 if lr_tensor is None else (1 if lr_tensor.dtype == torch.float32 else 2)
    for dtype, idx in _groups(params):
        acc_dt = _acc_dtype(dtype)
        lw = float(torch.tensor(1.0 - beta1, dtype=acc_dt))  # the lerp weight in the opmath type
        rows = [[_addr(params[i]) for i in idx], [_addr(grads[i]) for i in idx],
                [_addr(exp_avgs[i]) for i in idx], [_addr(exp_avg_sqs[i]) for i in idx],
                [_addr(max_exp_avg_sqs[i]) if amsgrad else 0 for i in idx]]
        table, T, P = _table(rows + [[_addr(state_steps[i]) for i in idx],
                                     [int(state_steps[i].dtype == torch.float64) for i in idx]],
                             [params[i].numel() for i in idx], dev)
        scal = torch.empty(3 * T, dtype=acc_dt, device=dev)
        _launch(_adam_prologue_kernel)[(1,)](
            table, hyp, scal, lr_tensor if lr_tensor is not None else hyp,
            found_inf if found_inf is not None else hyp, T,
            HAS_INF=found_inf is not None, LR_MODE=lr_mode, BLOCK_T=128, num_warps=4,
        )
        if P == 0:
            continue
        _launch(_adam_kernel)[(P,)](
            table, hyp, scal, params[idx[0]],
            grad_scale if grad_scale is not None else hyp,
            found_inf if found_inf is not None else hyp,
            clip_total_norm if clip_total_norm is not None else hyp,
            T, P,
            HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None, HAS_CLIP=clip_total_norm is not None,
            MAXIMIZE=bool(maximize),
            COUPLED_WD=wd != 0.0 and not decoupled_weight_decay, DECOUPLED_WD=wd != 0.0 and bool(decoupled_weight_decay),
            AMSGRAD=bool(amsgrad), LERP_SMALL=abs(lw) < 0.5, ALIGNED=_aligned(rows),
            BLOCK=_BLOCK, CHUNK=_CHUNK, num_warps=_NUM_WARPS,
        )


def rmsprop_step_(params, grads, square_avgs, grad_avgs, momentum_buffers, state_steps, *, lr, alpha, eps,
                  weight_decay, momentum, centered, maximize, grad_scale=None, found_inf=None, clip_total_norm=None,
                  clip_max_norm=0.0):
    n = len(params)
    has_mom = momentum != 0.0
    _check_list_len(grads, "grads", n)
    _check_list_len(square_avgs, "square_avgs", n)
    if centered:
        _check_list_len(grad_avgs, "grad_avgs", n)
    if has_mom:
        _check_list_len(momentum_buffers, "momentum_buffers", n)
    _check_list_len(state_steps, "state_steps", n)
    if n == 0:
        return
    p0 = params[0]
    for i in range(n):
        _check_param(params[i], i, p0)
        _check_like(grads[i], "grads", i, params[i])
        _check_like(square_avgs[i], "square_avgs", i, params[i])
        if centered:
            _check_like(grad_avgs[i], "grad_avgs", i, params[i])
        if has_mom:
            _check_like(momentum_buffers[i], "momentum_buffers", i, params[i])
        _check_step(state_steps[i], i, params[i])
    _check_scalar(grad_scale, "grad_scale", p0)
    _check_scalar(found_inf, "found_inf", p0)
    _check_scalar(clip_total_norm, "clip_total_norm", p0)
    dev = p0.device
    alpha, wd = float(alpha), float(weight_decay)
    hyp = _to_device([alpha, 1.0 - alpha, float(eps), wd, float(momentum), -float(lr), 1.0, float(clip_max_norm),
                      1e-6], torch.float64, dev)
    for dtype, idx in _groups(params):
        acc_dt = _acc_dtype(dtype)
        w = float(torch.tensor(1.0 - alpha, dtype=acc_dt))  # the lerp weight in the opmath type
        rows = [[_addr(params[i]) for i in idx], [_addr(grads[i]) for i in idx],
                [_addr(square_avgs[i]) for i in idx],
                [_addr(grad_avgs[i]) if centered else 0 for i in idx],
                [_addr(momentum_buffers[i]) if has_mom else 0 for i in idx]]
        table, T, P = _table(rows + [[_addr(state_steps[i]) for i in idx],
                                     [int(state_steps[i].dtype == torch.float64) for i in idx]],
                             [params[i].numel() for i in idx], dev)
        _launch(_rmsprop_prologue_kernel)[(1,)](
            table, found_inf if found_inf is not None else hyp, T,
            HAS_INF=found_inf is not None, BLOCK_T=128, num_warps=4,
        )
        if P == 0:
            continue
        acc = torch.empty(1, dtype=acc_dt, device=dev)  # only carries the opmath dtype
        _launch(_rmsprop_kernel)[(P,)](
            table, hyp, acc, params[idx[0]],
            grad_scale if grad_scale is not None else hyp,  # unused slots: any tensor, never read
            found_inf if found_inf is not None else hyp,
            clip_total_norm if clip_total_norm is not None else hyp,
            T, P,
            HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None, HAS_CLIP=clip_total_norm is not None,
            MAXIMIZE=bool(maximize), HAS_WD=wd != 0.0, CENTERED=bool(centered), HAS_MOM=has_mom,
            LERP_SMALL=abs(w) < 0.5, ALIGNED=_aligned(rows),
            BLOCK=_BLOCK, CHUNK=_CHUNK, num_warps=_NUM_WARPS,
        )


def adagrad_step_(params, grads, state_sums, state_steps, *, lr, lr_decay, weight_decay, eps, maximize,
                  grad_scale=None, found_inf=None, clip_total_norm=None, clip_max_norm=0.0):
    n = len(params)
    _check_list_len(grads, "grads", n)
    _check_list_len(state_sums, "state_sums", n)
    _check_list_len(state_steps, "state_steps", n)
    if n == 0:
        return
    p0 = params[0]
    for i in range(n):
        _check_param(params[i], i, p0)
        _check_like(grads[i], "grads", i, params[i])
        _check_like(state_sums[i], "state_sums", i, params[i])
        _check_step(state_steps[i], i, params[i])
    _check_scalar(grad_scale, "grad_scale", p0)
    _check_scalar(found_inf, "found_inf", p0)
    _check_scalar(clip_total_norm, "clip_total_norm", p0)
    dev = p0.device
    wd = float(weight_decay)
    hyp = _to_device([float(lr), float(lr_decay), wd, float(eps), 1.0, float(clip_max_norm), 1e-6],
                     torch.float64, dev)
    for dtype, idx in _groups(params):
        rows = [[_addr(params[i]) for i in idx], [_addr(grads[i]) for i in idx],
                [_addr(state_sums[i]) for i in idx]]
        table, T, P = _table(rows + [[_addr(state_steps[i]) for i in idx],
                                     [int(state_steps[i].dtype == torch.float64) for i in idx]],
                             [params[i].numel() for i in idx], dev)
        scal = torch.empty(T, dtype=_acc_dtype(dtype), device=dev)
        _launch(_adagrad_prologue_kernel)[(1,)](
            table, hyp, scal, found_inf if found_inf is not None else hyp, T,
            HAS_INF=found_inf is not None, BLOCK_T=128, num_warps=4,
        )
        if P == 0:
            continue
        _launch(_adagrad_kernel)[(P,)](
            table, hyp, scal, params[idx[0]],
            grad_scale if grad_scale is not None else hyp,
            found_inf if found_inf is not None else hyp,
            clip_total_norm if clip_total_norm is not None else hyp,
            T, P,
            HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None, HAS_CLIP=clip_total_norm is not None,
            MAXIMIZE=bool(maximize), HAS_WD=wd != 0.0, ALIGNED=_aligned(rows),
            BLOCK=_BLOCK, CHUNK=_CHUNK, num_warps=_NUM_WARPS,
        )


def _norm_kind(norm_type) -> int:
    norm_type = float(norm_type)
    if norm_type == 2.0:
        return 0
    if norm_type == 1.0:
        return 1
    if math.isinf(norm_type) and norm_type > 0:
        return 2
    raise ValueError(f"norm_type: expected 2.0, 1.0 or inf, got {norm_type}")


def _check_norm_tensors(tensors):
    for i, t in enumerate(tensors):
        if t.dtype not in _SUPPORTED:
            raise RuntimeError(f"tensors[{i}]: expected a float32, float64, float16 or bfloat16 tensor, got {t.dtype}")
        if t.device != tensors[0].device:
            raise RuntimeError(f"tensors[{i}]: expected a tensor on {tensors[0].device} (the device of tensors[0]), "
                               f"got one on {t.device}")
        if t.is_sparse:
            raise RuntimeError(f"tensors[{i}]: sparse tensors are not supported")


def total_norm(tensors, norm_type):
    kind = _norm_kind(norm_type)
    tensors = list(tensors)
    _check_norm_tensors(tensors)
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    dev = tensors[0].device
    out_dt = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    out = torch.empty((), dtype=out_dt, device=dev)
    dense = [t if _dense(t) else t.contiguous() for t in tensors]
    plans, nparts = [], 0
    for dtype, idx in _groups(dense):
        rows = [[_addr(dense[i]) for i in idx]]
        table, T, P = _table(rows, [dense[i].numel() for i in idx], dev)
        plans.append((dtype, idx, table, T, P, nparts, _aligned(rows)))
        nparts += P
    partial = torch.empty(max(nparts, 1), dtype=torch.float64, device=dev)
    for dtype, idx, table, T, P, off, aligned in plans:
        if P == 0:
            continue
        acc = torch.empty(1, dtype=_acc_dtype(dtype), device=dev)
        _launch(_norm_partial_kernel)[(P,)](
            table, dense[idx[0]], acc, partial, off, T, P,
            KIND=kind, ALIGNED=aligned, BLOCK=_BLOCK, CHUNK=_CHUNK, num_warps=_NUM_WARPS,
        )
    _launch(_norm_final_kernel)[(1,)](partial, out, nparts, KIND=kind, BLOCK=256, num_warps=4)
    return out


def clip_scale_(tensors, total_norm, max_norm):
    tn = total_norm
    if tn.numel() != 1:
        raise RuntimeError(f"total_norm: expected a tensor with one element, got {tn.numel()}")
    if tn.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"total_norm: expected a float32 or float64 tensor, got {tn.dtype}")
    tensors = list(tensors)
    _check_norm_tensors(tensors)
    for i, t in enumerate(tensors):
        if not _dense(t):
            raise RuntimeError(f"tensors[{i}]: expected a dense, non-overlapping tensor (for example a contiguous one)")
    if not tensors:
        return
    dev = tensors[0].device
    if tn.device != dev:
        raise RuntimeError(f"total_norm: expected a tensor on {dev} (the device of tensors), got one on {tn.device}")
    hyp = _to_device([float(max_norm), 1e-6], torch.float64, dev)
    for dtype, idx in _groups(tensors):
        rows = [[_addr(tensors[i]) for i in idx]]
        table, T, P = _table(rows, [tensors[i].numel() for i in idx], dev)
        if P == 0:
            continue
        acc = torch.empty(1, dtype=_acc_dtype(dtype), device=dev)
        _launch(_clip_scale_kernel)[(P,)](table, hyp, tensors[idx[0]], acc, tn.reshape(()), T, P,
                                          ALIGNED=_aligned(rows), BLOCK=_BLOCK, CHUNK=_CHUNK, num_warps=_NUM_WARPS)


# --------------------------------------------------------------------------
# Interpreter canaries: one tiny kernel per interpreter feature the kernels
# above rely on, checked against plain torch. If one of these fails, suspect
# the interpreter (or the Triton version) before the optimizer kernels.
# --------------------------------------------------------------------------
@triton.jit
def _canary_pointer_table_kernel(Table, Ref, N0, N1, BLOCK: tl.constexpr):
    # program t: tensor t's address from an int64 table, cast to a pointer
    t = tl.program_id(0)
    n = tl.where(t == 0, N0, N1)
    base = tl.load(Table + t).to(tl.pointer_type(Ref.dtype.element_ty))
    offs = tl.arange(0, BLOCK)
    x = tl.load(base + offs, mask=offs < n)
    tl.store(base + offs, x * 2.0 + 1.0, mask=offs < n)


@triton.jit
def _canary_fma_kernel(X, Y, Z, Out, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + offs, mask=mask)
    y = tl.load(Y + offs, mask=mask)
    z = tl.load(Z + offs, mask=mask)
    tl.store(Out + offs, _fma(x, y, z), mask=mask)


@triton.jit
def _canary_ieee_kernel(X, Y, Q, R, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + offs, mask=mask, other=1.0)
    y = tl.load(Y + offs, mask=mask, other=1.0)
    tl.store(Q + offs, _div(x, y), mask=mask)
    tl.store(R + offs, _sqrt(tl.abs(x)), mask=mask)


@triton.jit
def _canary_bf16_store_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    _store(Y + offs, tl.load(X + offs, mask=mask), mask)


@triton.jit
def _canary_scalar_branch_kernel(Flag, X, N, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    # data-dependent scalar `if` (found_inf) around a runtime-range loop with
    # an unmasked full-block / masked tail split
    ok = tl.load(Flag).to(tl.float64) == 0.0
    if ok:
        for s in range(0, CHUNK, BLOCK):
            offs = s + tl.arange(0, BLOCK)
            if s + BLOCK <= N:
                tl.store(X + offs, tl.load(X + offs) + 1.0)
            else:
                tl.store(X + offs, tl.load(X + offs, mask=offs < N) + 1.0, mask=offs < N)


@triton.jit
def _canary_nan_max_pow_kernel(A, B, Out, Base, Exps, Pow, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    a = tl.load(A + offs, mask=mask)
    b = tl.load(B + offs, mask=mask)
    tl.store(Out + offs, tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL), mask=mask)
    e = tl.load(Exps + offs, mask=mask, other=0)
    base = tl.zeros([BLOCK], dtype=tl.float64) + tl.load(Base)
    tl.store(Pow + offs, _pow_int(base, e), mask=mask)


def _exact_fma(x, y, z):
    """x*y + z of finite float32/float64 tensors, rounded once to their dtype
    (exact rationals; float32: the nearer of the two float32 neighbours, ties
    to even, not float64 then float32)."""
    from fractions import Fraction
    out = []
    for a, b, c in zip(x.tolist(), y.tolist(), z.tolist()):
        v = Fraction(a) * Fraction(b) + Fraction(c)
        r = float(v)  # correctly rounded to float64
        if x.dtype == torch.float32:
            f = torch.tensor(r, dtype=torch.float32)
            cands = [f, torch.nextafter(f, torch.tensor(float("inf"))), torch.nextafter(f, torch.tensor(float("-inf")))]
            dist = [abs(Fraction(float(t)) - v) for t in cands]
            best = min(dist)
            near = [t for t, d in zip(cands, dist) if d == best]
            r = float(near[0] if len(near) == 1 else
                      next(t for t in near if t.view(torch.int32).item() % 2 == 0))
        out.append(r)
    return torch.tensor(out, dtype=torch.float64, device=x.device).to(x.dtype)


def interpreter_canaries(device=None):
    """Run each canary; returns [(name, ok)]. Default device: cpu under
    TRITON_INTERPRET=1, else cuda."""
    if device is None:
        device = "cpu" if _interpreting() else "cuda"
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    out = []

    a, b = rnd(5), rnd(13)
    ra, rb = a * 2 + 1, b * 2 + 1
    table = torch.tensor([a.data_ptr(), b.data_ptr()], dtype=torch.int64, device=device)
    _canary_pointer_table_kernel[(2,)](table, a, 5, 13, BLOCK=16)
    out.append(("int64 address table -> tl.pointer_type load/store", torch.equal(a, ra) and torch.equal(b, rb)))

    # x*y + z correctly rounded (exact rationals); the last float32 case is an
    # exact product on a rounding midpoint plus a tiny z, which rounding the
    # sum to float64 first gets wrong.
    e = 2.0 ** -12
    x = torch.tensor([1 + e, 3.0, 0.1, 1 + e, 1 + e], device=device)
    y = torch.tensor([1 + e, 5.0, 10.0, 1 + e, 1 + e], device=device)
    z = torch.tensor([-(1 + 2 * e), 1.0, -1.0, 2.0 ** -60, -(2.0 ** -60)], device=device)
    o = torch.empty(5, device=device)
    _canary_fma_kernel[(1,)](x, y, z, o, 5, BLOCK=8)
    out.append(("float32 fma with one rounding", torch.equal(o, _exact_fma(x, y, z))
                and o[0].item() == 2.0 ** -24 and o[3].item() == 1 + 2 * e + 2.0 ** -23))
    e = 2.0 ** -30
    x = torch.cat([torch.tensor([1 + e, 1 + e, 0.1, 1e300], dtype=torch.float64, device=device),
                   torch.randn(60, generator=g, dtype=torch.float64).to(device)])  # 53-bit mantissas
    y = torch.cat([torch.tensor([1 + e, 1 + 2 ** -27, 10.0, 1e-300], dtype=torch.float64, device=device),
                   torch.randn(60, generator=g, dtype=torch.float64).to(device)])
    z = torch.cat([torch.tensor([-(1 + 2 * e), 2.0 ** -110, -1.0, -1.0], dtype=torch.float64, device=device),
                   -(x[4:] * y[4:]) * (1 + 2.0 ** -50)])
    o = torch.empty_like(x)
    _canary_fma_kernel[(1,)](x, y, z, o, x.numel(), BLOCK=64)
    out.append(("float64 fma with one rounding", torch.equal(o, _exact_fma(x, y, z)) and o[0].item() == 2.0 ** -60))

    x, y = rnd(300), rnd(300)
    q, r = torch.empty_like(x), torch.empty_like(x)
    _canary_ieee_kernel[(1,)](x, y, q, r, 300, BLOCK=512)
    # correctly rounded references: float64 results rounded once more to
    # float32 are exact for / and sqrt (53 >= 2*24 + 2 bits). (torch's own
    # float32 CPU sqrt is not always correctly rounded.)
    q_ref = (x.double() / y.double()).float()
    r_ref = x.double().abs().sqrt().float()
    out.append(("IEEE float32 div_rn / sqrt_rn (correctly rounded)", torch.equal(q, q_ref) and torch.equal(r, r_ref)))

    x = torch.cat([rnd(61), torch.tensor([0.99999, 1.00390625, 1.01171875, -1.00390625, 3.0e38,
                                          float("inf"), float("-inf"), float("nan"), 0.0, -0.0], device=device)])
    y = torch.empty(x.numel(), dtype=torch.bfloat16, device=device)
    _canary_bf16_store_kernel[(1,)](x, y, x.numel(), BLOCK=128)
    out.append(("fp32 -> bf16 store rounding (nearest even)",
                torch.equal(y.float().nan_to_num(), x.bfloat16().float().nan_to_num())))

    ok = True
    for flag in (0.0, 1.0):
        x = rnd(45)
        ref = x + 1 if flag == 0.0 else x.clone()
        _canary_scalar_branch_kernel[(1,)](torch.tensor(flag, device=device), x, 45, BLOCK=16, CHUNK=64)
        ok = ok and torch.equal(x, ref)
    out.append(("scalar data-dependent if, runtime loop, full/tail split", ok))

    a = torch.tensor([1.0, float("nan"), 2.0, 0.0], device=device)
    b = torch.tensor([float("nan"), 1.0, 3.0, 1e-40], device=device)
    o = torch.empty(4, device=device)
    exps = torch.tensor([0, 1, 2, 1000], dtype=torch.int64, device=device)
    pw = torch.empty(4, dtype=torch.float64, device=device)
    _canary_nan_max_pow_kernel[(1,)](a, b, o, torch.tensor(0.999, dtype=torch.float64, device=device), exps, pw, 4,
                                     BLOCK=4)
    ok = o[0].isnan().item() and o[1].isnan().item() and o[2].item() == 3.0 and o[3].item() == b[3].item()
    ok = ok and all(abs(p - 0.999 ** k) <= 1e-14 * 0.999 ** k for p, k in zip(pw.tolist(), exps.tolist()))
    out.append(("NaN-propagating maximum (keeps subnormals); float64 integer pow", bool(ok)))
    return out
