"""Triton kernels for the bnorm family: BatchNorm (training and eval) and GroupNorm
(InstanceNorm is GroupNorm with one group per channel).

Shapes. BatchNorm sees the input as [N, C, S] through its strides (contiguous NCHW
and channels_last alike: no copy); GroupNorm sees a contiguous [N, G, (C/G)*S].

Algorithm (float32 accumulation, float64 for float64 input)
    BatchNorm statistics, one program per channel: the N*S elements are walked in
        blocks of BLOCK; each block gives its own (count, mean, M2) from registers
        (two passes over the *registers*), merged into the running state with Chan's
        formula. mean, invstd = 1/sqrt(M2/count + eps), and the running stats
        (unbiased variance, momentum) are updated by the same program.
    normalize: y = x*a[c] + b[c], a = invstd*w, b = bias - mean*a; 2-D grid over
        (blocks of N*S, channels).
    backward: one program per channel sums dy and dy*(x - mean); then
        dx = k1*dy + k2*x + k3 elementwise (k2 = k3 = 0 in eval mode).
    GroupNorm: statistics per (n, g) program over its contiguous span, the same
        Chan merge; backward as torch's: per-(n, c) sums ds = sum(dy*(x - mean)),
        db = sum(dy), combined per group inside the dx kernel, and reduced over n
        (in order) for dweight/dbias by one program per channel.

Memory traffic: training forward reads x twice and writes y once; backward reads x
and dy twice and writes dx once; every statistic is O(C) or O(N*G).

The trick: statistics are a reduction over N*S with only C outputs, so each
program owns a channel (no atomics, deterministic: every sum runs in one fixed
order) and each block's variance is computed from the registers it was loaded
into, so the accurate two-pass variance costs one read of x.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import store as _store


def _empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, NaN-filled when the checker's poison switch is on."""
    from minitorch_ext import _poison

    return _poison.empty(shape, dtype=dtype, device=device)


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """torch.empty_like (same strides as the dense x), NaN-filled under poison."""
    t = torch.empty_like(x)
    if t.is_floating_point() and t.numel() and _poisoning():
        t.fill_(float("nan"))
    return t


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block(n: int) -> int:
    return 64 if _interpreting() else 1024


# ---------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------

@triton.jit
def _bn_stats_kernel(x_ptr, mean_ptr, invstd_ptr, rm_ptr, rv_ptr, N, S, sN, sC, sS, momentum, eps,
                     HAS_RUNNING: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    total = N * S
    cnt = tl.zeros((), ACC)
    mean = tl.zeros((), ACC)
    m2 = tl.zeros((), ACC)
    for start in range(0, total, BLOCK):
        idx = start + tl.arange(0, BLOCK).to(tl.int64)
        msk = idx < total
        n = idx // S
        s = idx - n * S
        x = tl.load(x_ptr + n * sN + c * sC + s * sS, mask=msk, other=0.0).to(ACC)
        bc = tl.minimum(total - start, BLOCK).to(ACC)
        bmean = tl.sum(x, 0) / bc
        d = tl.where(msk, x - bmean, 0.0)
        bm2 = tl.sum(d * d, 0)
        tot = cnt + bc
        delta = bmean - mean
        mean = mean + delta * (bc / tot)
        m2 = m2 + bm2 + delta * delta * (cnt * bc / tot)
        cnt = tot
    invstd = 1.0 / tl.sqrt(m2 / cnt + eps)
    tl.store(mean_ptr + c, mean)
    tl.store(invstd_ptr + c, invstd)
    if HAS_RUNNING:
        rm = tl.load(rm_ptr + c).to(ACC)
        rv = tl.load(rv_ptr + c).to(ACC)
        tl.store(rm_ptr + c, ((1.0 - momentum) * rm + momentum * mean).to(rm_ptr.dtype.element_ty))
        tl.store(rv_ptr + c, ((1.0 - momentum) * rv + momentum * (m2 / (cnt - 1.0))).to(rv_ptr.dtype.element_ty))


@triton.jit
def _bn_eval_stats_kernel(rm_ptr, rv_ptr, mean_ptr, invstd_ptr, C, eps, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    msk = offs < C
    rm = tl.load(rm_ptr + offs, mask=msk, other=0.0).to(ACC)
    rv = tl.load(rv_ptr + offs, mask=msk, other=1.0).to(ACC)
    tl.store(mean_ptr + offs, rm, mask=msk)
    tl.store(invstd_ptr + offs, 1.0 / tl.sqrt(rv + eps), mask=msk)


@triton.jit
def _bn_affine_kernel(x_ptr, y_ptr, mean_ptr, invstd_ptr, w_ptr, b_ptr, N, S, sN, sC, sS,
                      HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    c = tl.program_id(1)
    idx = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    msk = idx < N * S
    n = idx // S
    s = idx - n * S
    off = n * sN + c * sC + s * sS
    a = tl.load(invstd_ptr + c).to(ACC)
    if HAS_W:
        a = a * tl.load(w_ptr + c).to(ACC)
    sh = -tl.load(mean_ptr + c).to(ACC) * a
    if HAS_B:
        sh = sh + tl.load(b_ptr + c).to(ACC)
    x = tl.load(x_ptr + off, mask=msk, other=0.0).to(ACC)
    _store(y_ptr + off, x * a + sh, msk)


@triton.jit
def _bn_grad_sums_kernel(dy_ptr, x_ptr, mean_ptr, sdy_ptr, sdyx_ptr, N, S, sN, sC, sS, ACC: tl.constexpr,
                         BLOCK: tl.constexpr):
    c = tl.program_id(0)
    total = N * S
    m = tl.load(mean_ptr + c).to(ACC)
    a1 = tl.zeros((BLOCK,), ACC)
    a2 = tl.zeros((BLOCK,), ACC)
    for start in range(0, total, BLOCK):
        idx = start + tl.arange(0, BLOCK).to(tl.int64)
        msk = idx < total
        n = idx // S
        s = idx - n * S
        off = n * sN + c * sC + s * sS
        g = tl.load(dy_ptr + off, mask=msk, other=0.0).to(ACC)
        x = tl.load(x_ptr + off, mask=msk, other=0.0).to(ACC)
        a1 += g
        a2 += tl.where(msk, g * (x - m), 0.0)
    tl.store(sdy_ptr + c, tl.sum(a1, 0))
    tl.store(sdyx_ptr + c, tl.sum(a2, 0))


@triton.jit
def _bn_dx_kernel(dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, w_ptr, sdy_ptr, sdyx_ptr, N, S, sN, sC, sS,
                  TRAINING: tl.constexpr, HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    c = tl.program_id(1)
    idx = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    total = N * S
    msk = idx < total
    n = idx // S
    s = idx - n * S
    off = n * sN + c * sC + s * sS
    istd = tl.load(invstd_ptr + c).to(ACC)
    w = tl.load(w_ptr + c).to(ACC) if HAS_W else 1.0
    k1 = istd * w
    g = tl.load(dy_ptr + off, mask=msk, other=0.0).to(ACC)
    if TRAINING:
        inv_n = 1.0 / total.to(ACC)
        k2 = -k1 * istd * istd * tl.load(sdyx_ptr + c).to(ACC) * inv_n
        k3 = -k1 * tl.load(sdy_ptr + c).to(ACC) * inv_n - tl.load(mean_ptr + c).to(ACC) * k2
        x = tl.load(x_ptr + off, mask=msk, other=0.0).to(ACC)
        _store(dx_ptr + off, g * k1 + (x * k2 + k3), msk)
    else:
        _store(dx_ptr + off, g * k1, msk)


def _nsc(x: torch.Tensor):
    """(N, S, strides over n, c, s) of x [N, C, *] whose spatial dims flatten to one stride."""
    N, C = x.shape[0], x.shape[1]
    S = 1
    for d in x.shape[2:]:
        S *= d
    # dense x: spatial stride 1 (contiguous) or C (channels_last). Not x.stride(-1): a size-1
    # dim's stride is arbitrary in a "contiguous" tensor
    cl = x.dim() in (4, 5) and torch._prims_common.suggest_memory_format(x) != torch.contiguous_format
    return N, S, x.stride(0) if N > 1 else C * S, x.stride(1) if C > 1 else (1 if cl else S), C if cl else 1


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x in a layout whose spatial dims flatten to one stride (contiguous or channels_last)."""
    if x.dim() in (4, 5):
        fmt = torch._prims_common.suggest_memory_format(x)
        return x.contiguous(memory_format=fmt)
    return x.contiguous()


def batch_norm_fwd(input, weight, bias, running_mean, running_var, training, momentum, eps):
    x = _dense(input)
    C = x.shape[1]
    N, S, sN, sC, sS = _nsc(x)
    st = _stat_dtype(x.dtype)
    acc = _acc(x.dtype)
    mean = _empty((C,), st, x.device)
    invstd = _empty((C,), st, x.device)
    y = _empty_like(x)
    has_running = running_mean is not None and running_var is not None
    if training:
        if N * S == 0:
            mean.fill_(float("nan"))
            invstd.fill_(float("nan"))
        else:
            dummy = mean
            _launch(_bn_stats_kernel)[(C,)](x, mean, invstd, running_mean if has_running else dummy,
                                            running_var if has_running else dummy, N, S, sN, sC, sS,
                                            float(momentum), float(eps), HAS_RUNNING=has_running, ACC=acc,
                                            BLOCK=_block(N * S))
    else:
        _launch(_bn_eval_stats_kernel)[(triton.cdiv(C, 128),)](running_mean, running_var, mean, invstd, C,
                                                               float(eps), ACC=acc, BLOCK=128)
    if N * S > 0:
        blk = _block(N * S)
        _launch(_bn_affine_kernel)[(triton.cdiv(N * S, blk), C)](
            x, y, mean, invstd, weight if weight is not None else mean, bias if bias is not None else mean,
            N, S, sN, sC, sS, HAS_W=weight is not None, HAS_B=bias is not None, ACC=acc, BLOCK=blk)
    return y, mean, invstd


def batch_norm_bwd(grad_output, input, weight, save_mean, save_invstd, training, output_mask):
    x = _dense(input)
    fmt = torch._prims_common.suggest_memory_format(x) if x.dim() in (4, 5) else torch.contiguous_format
    dy = grad_output.contiguous(memory_format=fmt)
    if dy.stride() != x.stride():
        dy = torch.empty_like(x).copy_(grad_output)  # grad_output in x's exact strides
    C = x.shape[1]
    N, S, sN, sC, sS = _nsc(x)
    acc = _acc(x.dtype)
    st = _stat_dtype(x.dtype)
    sdy = torch.zeros((C,), dtype=st, device=x.device)
    sdyx = torch.zeros((C,), dtype=st, device=x.device)
    blk = _block(N * S)
    if N * S > 0 and ((training and output_mask[0]) or output_mask[1] or output_mask[2]):
        _launch(_bn_grad_sums_kernel)[(C,)](dy, x, save_mean, sdy, sdyx, N, S, sN, sC, sS, ACC=acc, BLOCK=blk)
    empty = x.new_empty((0,))
    dx = empty
    if output_mask[0]:
        dx = _empty_like(x)
        if N * S > 0:
            _launch(_bn_dx_kernel)[(triton.cdiv(N * S, blk), C)](
                dy, x, dx, save_mean, save_invstd, weight if weight is not None else sdy, sdy, sdyx, N, S, sN, sC,
                sS, TRAINING=bool(training), HAS_W=weight is not None, ACC=acc, BLOCK=blk)
    pdt = weight.dtype if weight is not None else x.dtype
    dw = (sdyx * save_invstd).to(pdt) if output_mask[1] else empty
    db = sdy.to(pdt) if output_mask[2] else empty
    return dx, dw, db


def _poisoning() -> bool:
    from minitorch_ext import _poison

    return _poison.enabled()


# ---------------------------------------------------------------------------
# GroupNorm
# ---------------------------------------------------------------------------

@triton.jit
def _gn_fwd_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, G, Cg, S, eps, HAS_W: tl.constexpr,
                   HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    q = tl.program_id(0)  # (n, g)
    span = Cg * S
    base = q.to(tl.int64) * span
    cnt = tl.zeros((), ACC)
    mean = tl.zeros((), ACC)
    m2 = tl.zeros((), ACC)
    for start in range(0, span, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        msk = idx < span
        x = tl.load(x_ptr + base + idx, mask=msk, other=0.0).to(ACC)
        bc = tl.minimum(span - start, BLOCK).to(ACC)
        bmean = tl.sum(x, 0) / bc
        d = tl.where(msk, x - bmean, 0.0)
        bm2 = tl.sum(d * d, 0)
        tot = cnt + bc
        delta = bmean - mean
        mean = mean + delta * (bc / tot)
        m2 = m2 + bm2 + delta * delta * (cnt * bc / tot)
        cnt = tot
    rstd = 1.0 / tl.sqrt(m2 / cnt + eps)
    tl.store(mean_ptr + q, mean)
    tl.store(rstd_ptr + q, rstd)
    g = q % G
    for start in range(0, span, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        msk = idx < span
        c = g * Cg + idx // S
        x = tl.load(x_ptr + base + idx, mask=msk, other=0.0).to(ACC)
        y = (x - mean) * rstd
        if HAS_W:
            y = y * tl.load(w_ptr + c, mask=msk, other=1.0).to(ACC)
        if HAS_B:
            y = y + tl.load(b_ptr + c, mask=msk, other=0.0).to(ACC)
        _store(y_ptr + base + idx, y, msk)


@triton.jit
def _gn_sums_kernel(dy_ptr, x_ptr, mean_ptr, ds_ptr, db_ptr, C, G, Cg, S, ACC: tl.constexpr, BLOCK: tl.constexpr):
    p = tl.program_id(0)  # (n, c)
    n = p // C
    g = (p % C) // Cg
    m = tl.load(mean_ptr + n * G + g).to(ACC)
    base = p.to(tl.int64) * S
    a1 = tl.zeros((BLOCK,), ACC)
    a2 = tl.zeros((BLOCK,), ACC)
    for start in range(0, S, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        msk = idx < S
        gv = tl.load(dy_ptr + base + idx, mask=msk, other=0.0).to(ACC)
        x = tl.load(x_ptr + base + idx, mask=msk, other=0.0).to(ACC)
        a1 += tl.where(msk, gv * (x - m), 0.0)
        a2 += gv
    tl.store(ds_ptr + p, tl.sum(a1, 0))
    tl.store(db_ptr + p, tl.sum(a2, 0))


@triton.jit
def _gn_dx_kernel(dy_ptr, x_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, ds_ptr, db_ptr, C, G, Cg, S,
                  HAS_W: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr):
    q = tl.program_id(0)  # (n, g)
    pid = tl.program_id(1)
    n = q // G
    g = q % G
    span = Cg * S
    cc = tl.arange(0, BLOCK_C)
    cm = cc < Cg
    dsv = tl.load(ds_ptr + n * C + g * Cg + cc, mask=cm, other=0.0).to(ACC)
    dbv = tl.load(db_ptr + n * C + g * Cg + cc, mask=cm, other=0.0).to(ACC)
    if HAS_W:
        wv = tl.load(w_ptr + g * Cg + cc, mask=cm, other=0.0).to(ACC)
        dsv = dsv * wv
        dbv = dbv * wv
    s_gx = tl.sum(dsv, 0)
    s_g = tl.sum(dbv, 0)
    m = tl.load(mean_ptr + q).to(ACC)
    r = tl.load(rstd_ptr + q).to(ACC)
    inv = 1.0 / span.to(ACC)
    k2 = -r * r * r * s_gx * inv
    k3 = -r * s_g * inv - m * k2
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    msk = idx < span
    base = q.to(tl.int64) * span
    c = g * Cg + idx // S
    k1 = r * (tl.load(w_ptr + c, mask=msk, other=0.0).to(ACC) if HAS_W else 1.0)
    gv = tl.load(dy_ptr + base + idx, mask=msk, other=0.0).to(ACC)
    x = tl.load(x_ptr + base + idx, mask=msk, other=0.0).to(ACC)
    _store(dx_ptr + base + idx, gv * k1 + (x * k2 + k3), msk)


@triton.jit
def _gn_dwdb_kernel(ds_ptr, db_ptr, rstd_ptr, dw_ptr, dbias_ptr, N, C, G, Cg, ACC: tl.constexpr,
                    BLOCK: tl.constexpr):
    c = tl.program_id(0)
    g = c // Cg
    a1 = tl.zeros((BLOCK,), ACC)
    a2 = tl.zeros((BLOCK,), ACC)
    for start in range(0, N, BLOCK):
        n = start + tl.arange(0, BLOCK)
        msk = n < N
        a1 += tl.load(ds_ptr + n * C + c, mask=msk, other=0.0).to(ACC) * \
            tl.load(rstd_ptr + n * G + g, mask=msk, other=0.0).to(ACC)
        a2 += tl.load(db_ptr + n * C + c, mask=msk, other=0.0).to(ACC)
    tl.store(dw_ptr + c, tl.sum(a1, 0).to(dw_ptr.dtype.element_ty))
    tl.store(dbias_ptr + c, tl.sum(a2, 0).to(dbias_ptr.dtype.element_ty))


def _gn_shape(x: torch.Tensor, G: int):
    N, C = x.shape[0], x.shape[1]
    S = 1
    for d in x.shape[2:]:
        S *= d
    return N, C, S, C // G


def group_norm_fwd(input, weight, bias, num_groups, eps):
    fmt = torch._prims_common.suggest_memory_format(input) if input.dim() in (4, 5) else torch.contiguous_format
    x = input.contiguous()
    N, C, S, Cg = _gn_shape(x, num_groups)
    st = _stat_dtype(x.dtype)
    mean = _empty((N, num_groups), st, x.device)
    rstd = _empty((N, num_groups), st, x.device)
    y = _empty(x.shape, x.dtype, x.device)
    if N * num_groups > 0:
        _launch(_gn_fwd_kernel)[(N * num_groups,)](
            x, y, mean, rstd, weight if weight is not None else mean, bias if bias is not None else mean,
            num_groups, Cg, S, float(eps), HAS_W=weight is not None, HAS_B=bias is not None, ACC=_acc(x.dtype),
            BLOCK=_block(Cg * S))
    return y.contiguous(memory_format=fmt), mean, rstd


def group_norm_bwd(grad_output, input, weight, mean, rstd, num_groups, output_mask):
    x = input.contiguous()
    dy = grad_output.contiguous()
    N, C, S, Cg = _gn_shape(x, num_groups)
    G = num_groups
    acc = _acc(x.dtype)
    st = _stat_dtype(x.dtype)
    fmt = torch._prims_common.suggest_memory_format(input) if input.dim() in (4, 5) else torch.contiguous_format
    ds = torch.zeros((N, C), dtype=st, device=x.device)
    dbs = torch.zeros((N, C), dtype=st, device=x.device)
    blk = _block(S)
    if N * C > 0:
        _launch(_gn_sums_kernel)[(N * C,)](dy, x, mean, ds, dbs, C, G, Cg, S, ACC=acc, BLOCK=blk)
    empty = x.new_empty((0,))
    dx = empty
    if output_mask[0]:
        dx = _empty(x.shape, x.dtype, x.device)
        span = Cg * S
        if N * G > 0 and span > 0:
            blk2 = _block(span)
            _launch(_gn_dx_kernel)[(N * G, triton.cdiv(span, blk2))](
                dy, x, dx, mean, rstd, weight if weight is not None else ds, ds, dbs, C, G, Cg, S,
                HAS_W=weight is not None, ACC=acc, BLOCK=blk2, BLOCK_C=triton.next_power_of_2(max(Cg, 1)))
        dx = dx.contiguous(memory_format=fmt)
    pdt = weight.dtype if weight is not None else x.dtype
    dw, db = empty, empty
    if output_mask[1] or output_mask[2]:
        dw = torch.empty((C,), dtype=pdt, device=x.device)
        db = torch.empty((C,), dtype=pdt, device=x.device)
        if C > 0:
            _launch(_gn_dwdb_kernel)[(C,)](ds, dbs, rstd, dw, db, N, C, G, Cg, ACC=acc, BLOCK=64)
        dw = dw if output_mask[1] else empty
        db = db if output_mask[2] else empty
    return dx, dw, db
