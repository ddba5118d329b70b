"""Triton kernels for the norm family: LayerNorm and RMSNorm over the last dim.

Shapes: x is a contiguous (M, N) matrix (the caller flattens the leading dims);
each of the M rows is normalized over its N elements.

Algorithm (per row, accumulating in float32, float64 for float64 input)
    LayerNorm:  mean = sum(x) / N
                var  = sum((x - mean)^2) / N          two-pass, biased
                rstd = 1 / sqrt(var + eps)
                y    = (x - mean) * rstd * w + b
    RMSNorm:    rstd = 1 / sqrt(sum(x^2) / N + eps)
                y    = x * rstd * w
    Backward, with xhat = (x - mean) * rstd (RMSNorm: x * rstd), g = dy * w:
                LayerNorm: dx = rstd * (g - xhat * mean(g * xhat) - mean(g))
                RMSNorm:   dx = rstd * (g - xhat * mean(g * xhat))
                dw = sum over rows of dy * xhat,   db = sum over rows of dy

Memory traffic (element size s, fp32 statistics)
    forward:  read x once, write y once (+ w, b once per row, from L2): ~2*M*N*s,
              plus 4-8 bytes of mean/rstd per row.
    backward: read x and dy once, write dx once: ~3*M*N*s, plus a small
              (P, N) fp32 partial buffer for dw/db (P ~ 2 x SM count), read
              back once by the column reduction.

The trick that makes it fast
    A norm is memory-bound, so the whole game is touching each byte of HBM
    once. One program owns a whole row and keeps it in registers
    (BLOCK_N = next_power_of_2(N)): the mean, the variance (a second pass over
    the *registers*, so we get the numerically sound two-pass variance for
    free) and the output all come from a single load. Backward does the same
    for dx, and keeps dw/db as per-program register accumulators over a fixed
    contiguous range of rows: no atomics, so the result is deterministic, and
    the weight gradient costs one (P, N) write instead of an (M, N) one.
    Rows wider than the register budget (N > 8192 fp32 / 4096 fp64, e.g.
    N = 65537) take a chunked-loop path that streams the row in BLOCK_N
    pieces: forward reads x three times, backward reads x and dy three times
    (row sums, dx, then dw/db columns-outer so every partial is written once
    from registers); the re-reads mostly hit L2.

Numerics: eps reaches the kernel as a float32 scalar (Triton types Python
floats so); in the float64 path that is a relative change of ~1e-8 in eps.

Launching: on a GPU the caller registers these functions with
torch.library.triton_op, which needs every launch to go through
torch.library.wrap_triton; under TRITON_INTERPRET=1 that traced path does not
work (pytorch#152868), so `_launch` launches the kernel directly there.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import store as _store_out

# A row is kept in registers while its float32 (float64) working copy fits in
# this many bytes: 8192 fp32 / 4096 fp64 elements. Measured with ptxas for
# sm_90: at 16 warps that is <= 128 registers per thread with no spills in
# forward and backward; twice that spills. Wider rows take the chunked path.
_MAX_FUSED_ACC_BYTES = 32768


def _empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty for every buffer a kernel fills. When the checker's poison
    switch is on (minitorch_ext._poison) it comes NaN-filled, so an element
    the kernel never writes fails the tests. Plain torch.empty when the
    package is not importable (this file used on its own)."""
    try:
        from minitorch_ext import _poison
    except ImportError:
        return torch.empty(shape, dtype=dtype, device=device)
    return _poison.empty(shape, dtype=dtype, device=device)


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / statistics dtype: float64 for float64 input, else float32.
    The kernels read it back from the Mean/Rstd pointer type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_n(N: int, dtype: torch.dtype, max_block_n: int | None):
    """(BLOCK_N, ONE_BLOCK): the whole row in one block when it fits the budget."""
    cap = _MAX_FUSED_ACC_BYTES // _stats_dtype(dtype).itemsize
    if max_block_n is not None:
        cap = min(cap, triton.next_power_of_2(max_block_n + 1) // 2)  # a power of two
    block = min(triton.next_power_of_2(N), cap)
    return block, N <= block


def _num_warps(block_n: int) -> int:
    return min(max(block_n // 256, 1), 16)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_programs(M: int, device: torch.device) -> tuple[int, int]:
    """(P, rows_per_program) of a backward launch. Each program owns a
    contiguous range of rows and writes one row of the dw/db partial buffer,
    so this fixes the summation order: same device and shape -> bitwise the
    same gradients."""
    if device.type == "cuda":
        target = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        target = 4  # interpreter: a few programs, enough to exercise the split
    rows_per_program = triton.cdiv(M, min(M, target))
    return triton.cdiv(M, rows_per_program), rows_per_program


@triton.jit
def _sum_partials_kernel(Partial, Out, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program per BLOCK_N columns; it walks the P rows top to bottom, so the
    # order of the additions never changes between runs (deterministic).
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=Partial.dtype.element_ty)
    for start in range(0, P, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        ptrs = Partial + rows[:, None].to(tl.int64) * N + cols[None, :]
        mask = (rows[:, None] < P) & col_mask[None, :]
        acc += tl.load(ptrs, mask=mask, other=0.0)
    _store_out(Out + cols, tl.sum(acc, axis=0), col_mask)


def _sum_partials(partial: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    P, N = partial.shape
    out = _empty(N, dtype, partial.device)
    # 128 columns a program on a GPU; under the interpreter, whose cost is per
    # program instance, wider blocks (same order of additions per column).
    BLOCK_N = 1024 if _interpreting() else 128
    BLOCK_P = min(32, triton.next_power_of_2(P))
    _launch(_sum_partials_kernel)[(triton.cdiv(N, BLOCK_N),)](
        partial, out, P, N, BLOCK_P=BLOCK_P, BLOCK_N=BLOCK_N, num_warps=4)
    return out


# --------------------------------------------------------------------------
# LayerNorm
# --------------------------------------------------------------------------
@triton.jit
def _layer_norm_fwd_kernel(
    X, Y, W, B, Mean, Rstd,
    stride_x, stride_y, N, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride must not wrap
    X += row * stride_x
    Y += row * stride_y
    ACC = Mean.dtype.element_ty  # float32, or float64 for float64 input

    if ONE_BLOCK:
        # The whole row in registers: one read of x, one write of y.
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(ACC)
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)  # padding lanes must not count
        var = tl.sum(xc * xc, axis=0) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        y = xc * rstd
        if HAS_WEIGHT:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
        if HAS_BIAS:
            y = y + tl.load(B + cols, mask=mask, other=0.0).to(ACC)
        _store_out(Y + cols, y, mask)
    else:
        # Row wider than the register budget: three streaming passes.
        acc = tl.zeros([BLOCK_N], dtype=ACC)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            acc += tl.load(X + cols, mask=cols < N, other=0.0).to(ACC)
        mean = tl.sum(acc, axis=0) / N
        acc = tl.zeros([BLOCK_N], dtype=ACC)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            x = tl.load(X + cols, mask=mask, other=0.0).to(ACC)
            xc = tl.where(mask, x - mean, 0.0)
            acc += xc * xc
        var = tl.sum(acc, axis=0) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            x = tl.load(X + cols, mask=mask, other=0.0).to(ACC)
            y = (x - mean) * rstd
            if HAS_WEIGHT:
                y = y * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
            if HAS_BIAS:
                y = y + tl.load(B + cols, mask=mask, other=0.0).to(ACC)
            _store_out(Y + cols, y, mask)

    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _layer_norm_bwd_kernel(
    DY, X, W, Mean, Rstd, DX, DW_part, DB_part,
    stride_dy, stride_x, stride_dx, M, N, rows_per_program,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr,
):
    # Program `pid` owns rows [row_start, row_end) and row `pid` of the
    # (P, N) partial buffers: no two programs write the same place, no atomics.
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program  # int64 bounds -> int64 loop index
    row_end = tl.minimum(row_start + rows_per_program, M)
    ACC = Rstd.dtype.element_ty
    part_off = pid.to(tl.int64) * N  # this program's row of the partial buffer

    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=mask, other=0.0).to(ACC)
        dw = tl.zeros([BLOCK_N], dtype=ACC)
        db = tl.zeros([BLOCK_N], dtype=ACC)
        for r in range(row_start, row_end):
            x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(ACC)
            dy = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(ACC)
            mean = tl.load(Mean + r)
            rstd = tl.load(Rstd + r)
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
            g = dy
            if HAS_WEIGHT:
                g = dy * w
            c1 = tl.sum(xhat * g, axis=0) / N
            c2 = tl.sum(g, axis=0) / N
            dx = (g - (xhat * c1 + c2)) * rstd
            _store_out(DX + r * stride_dx + cols, dx, mask)
            if HAS_WEIGHT:
                dw += dy * xhat
            if HAS_BIAS:
                db += dy
        if HAS_WEIGHT:
            tl.store(DW_part + part_off + cols, dw, mask=mask)
        if HAS_BIAS:
            tl.store(DB_part + part_off + cols, db, mask=mask)
    else:
        # Wide rows. dx: per row, one pass for the two row sums, one for dx.
        for r in range(row_start, row_end):
            mean = tl.load(Mean + r)
            rstd = tl.load(Rstd + r)
            a1 = tl.zeros([BLOCK_N], dtype=ACC)
            a2 = tl.zeros([BLOCK_N], dtype=ACC)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(ACC)
                g = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(ACC)
                if HAS_WEIGHT:
                    g = g * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
                a1 += tl.where(mask, (x - mean) * rstd, 0.0) * g
                a2 += g
            c1 = tl.sum(a1, axis=0) / N
            c2 = tl.sum(a2, axis=0) / N
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(ACC)
                g = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(ACC)
                if HAS_WEIGHT:
                    g = g * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
                xhat = (x - mean) * rstd
                _store_out(DX + r * stride_dx + cols, (g - (xhat * c1 + c2)) * rstd, mask)
        # dw/db: columns outer, rows inner, so each partial element is written
        # exactly once from registers (no read-modify-write of global memory).
        if HAS_WEIGHT or HAS_BIAS:
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                dw = tl.zeros([BLOCK_N], dtype=ACC)
                db = tl.zeros([BLOCK_N], dtype=ACC)
                for r in range(row_start, row_end):
                    dy = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(ACC)
                    if HAS_WEIGHT:
                        x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(ACC)
                        dw += dy * (x - tl.load(Mean + r)) * tl.load(Rstd + r)
                    if HAS_BIAS:
                        db += dy
                if HAS_WEIGHT:
                    tl.store(DW_part + part_off + cols, dw, mask=mask)
                if HAS_BIAS:
                    tl.store(DB_part + part_off + cols, db, mask=mask)


def layer_norm_fwd(x2d, weight, bias, eps, *, max_block_n=None):
    """y, mean, rstd of LayerNorm over the last dim of a contiguous (M, N) x.
    `max_block_n` (testing) caps the block so narrow rows take the chunked path."""
    M, N = x2d.shape
    dev = x2d.device
    sdt = _stats_dtype(x2d.dtype)
    y = _empty((M, N), x2d.dtype, dev)
    mean = _empty((M,), sdt, dev)
    rstd = _empty((M,), sdt, dev)
    if M == 0:
        return y, mean, rstd
    if N == 0:  # nothing to normalize; torch reports rstd = nan here, we report 0
        return y, torch.zeros_like(mean), torch.zeros_like(rstd)
    BLOCK_N, ONE_BLOCK = _block_n(N, x2d.dtype, max_block_n)
    _launch(_layer_norm_fwd_kernel)[(M,)](
        x2d, y,
        weight if weight is not None else x2d,  # unused slots: any tensor, never read
        bias if bias is not None else x2d,
        mean, rstd,
        x2d.stride(0), y.stride(0), N, eps,
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        BLOCK_N=BLOCK_N, ONE_BLOCK=ONE_BLOCK, num_warps=_num_warps(BLOCK_N),
    )
    return y, mean, rstd


def layer_norm_bwd(dy2d, x2d, mean, rstd, weight, bias, *, max_block_n=None):
    """dx, dweight (None without weight), dbias (None without bias)."""
    M, N = x2d.shape
    dev = x2d.device
    dx = _empty((M, N), x2d.dtype, dev)
    has_w, has_b = weight is not None, bias is not None
    if M == 0 or N == 0:
        dw = torch.zeros((N,), dtype=weight.dtype, device=dev) if has_w else None
        db = torch.zeros((N,), dtype=bias.dtype, device=dev) if has_b else None
        return dx, dw, db
    sdt = _stats_dtype(x2d.dtype)
    P, rows_per_program = _num_programs(M, dev)
    dw_part = _empty((P, N), sdt, dev) if has_w else None
    db_part = _empty((P, N), sdt, dev) if has_b else None
    BLOCK_N, ONE_BLOCK = _block_n(N, x2d.dtype, max_block_n)
    _launch(_layer_norm_bwd_kernel)[(P,)](
        dy2d, x2d, weight if has_w else x2d, mean, rstd, dx,
        # unused pointer slots get dx (a fresh output), never an input, so that
        # triton_op's mutation analysis cannot mistake an input for written
        dw_part if has_w else dx, db_part if has_b else dx,
        dy2d.stride(0), x2d.stride(0), dx.stride(0), M, N, rows_per_program,
        HAS_WEIGHT=has_w, HAS_BIAS=has_b,
        BLOCK_N=BLOCK_N, ONE_BLOCK=ONE_BLOCK, num_warps=_num_warps(BLOCK_N),
    )
    dw = _sum_partials(dw_part, weight.dtype) if has_w else None
    db = _sum_partials(db_part, bias.dtype) if has_b else None
    return dx, dw, db


# --------------------------------------------------------------------------
# RMSNorm
# --------------------------------------------------------------------------
@triton.jit
def _rms_norm_fwd_kernel(
    X, Y, W, Rstd,
    stride_x, stride_y, N, eps,
    HAS_WEIGHT: tl.constexpr, BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x
    Y += row * stride_y
    ACC = Rstd.dtype.element_ty

    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + cols, mask=mask, other=0.0).to(ACC)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
        y = x * rstd
        if HAS_WEIGHT:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
        _store_out(Y + cols, y, mask)
    else:
        acc = tl.zeros([BLOCK_N], dtype=ACC)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            x = tl.load(X + cols, mask=cols < N, other=0.0).to(ACC)
            acc += x * x
        rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            y = tl.load(X + cols, mask=mask, other=0.0).to(ACC) * rstd
            if HAS_WEIGHT:
                y = y * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
            _store_out(Y + cols, y, mask)

    tl.store(Rstd + row, rstd)


@triton.jit
def _rms_norm_bwd_kernel(
    DY, X, W, Rstd, DX, DW_part,
    stride_dy, stride_x, stride_dx, M, N, rows_per_program,
    HAS_WEIGHT: tl.constexpr, BLOCK_N: tl.constexpr, ONE_BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program  # int64 bounds -> int64 loop index
    row_end = tl.minimum(row_start + rows_per_program, M)
    ACC = Rstd.dtype.element_ty
    part_off = pid.to(tl.int64) * N  # this program's row of the partial buffer

    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=mask, other=0.0).to(ACC)
        dw = tl.zeros([BLOCK_N], dtype=ACC)
        for r in range(row_start, row_end):
            x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(ACC)
            dy = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(ACC)
            rstd = tl.load(Rstd + r)
            xhat = x * rstd  # padding lanes are 0 already (x loaded as 0)
            g = dy
            if HAS_WEIGHT:
                g = dy * w
            c1 = tl.sum(xhat * g, axis=0) / N
            _store_out(DX + r * stride_dx + cols, (g - xhat * c1) * rstd, mask)
            if HAS_WEIGHT:
                dw += dy * xhat
        if HAS_WEIGHT:
            tl.store(DW_part + part_off + cols, dw, mask=mask)
    else:
        for r in range(row_start, row_end):
            rstd = tl.load(Rstd + r)
            a1 = tl.zeros([BLOCK_N], dtype=ACC)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(ACC)
                g = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(ACC)
                if HAS_WEIGHT:
                    g = g * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
                a1 += x * rstd * g
            c1 = tl.sum(a1, axis=0) / N
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                xhat = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(ACC) * rstd
                g = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(ACC)
                if HAS_WEIGHT:
                    g = g * tl.load(W + cols, mask=mask, other=0.0).to(ACC)
                _store_out(DX + r * stride_dx + cols, (g - xhat * c1) * rstd, mask)
        if HAS_WEIGHT:
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                dw = tl.zeros([BLOCK_N], dtype=ACC)
                for r in range(row_start, row_end):
                    x = tl.load(X + r * stride_x + cols, mask=mask, other=0.0).to(ACC)
                    dy = tl.load(DY + r * stride_dy + cols, mask=mask, other=0.0).to(ACC)
                    dw += dy * x * tl.load(Rstd + r)
                tl.store(DW_part + part_off + cols, dw, mask=mask)


def rms_norm_fwd(x2d, weight, eps, *, max_block_n=None):
    """y, rstd of RMSNorm over the last dim of a contiguous (M, N) x."""
    M, N = x2d.shape
    dev = x2d.device
    y = _empty((M, N), x2d.dtype, dev)
    rstd = _empty((M,), _stats_dtype(x2d.dtype), dev)
    if M == 0:
        return y, rstd
    if N == 0:  # torch reports rstd = nan here, we report 0
        return y, torch.zeros_like(rstd)
    BLOCK_N, ONE_BLOCK = _block_n(N, x2d.dtype, max_block_n)
    _launch(_rms_norm_fwd_kernel)[(M,)](
        x2d, y, weight if weight is not None else x2d, rstd,
        x2d.stride(0), y.stride(0), N, eps,
        HAS_WEIGHT=weight is not None,
        BLOCK_N=BLOCK_N, ONE_BLOCK=ONE_BLOCK, num_warps=_num_warps(BLOCK_N),
    )
    return y, rstd


def rms_norm_bwd(dy2d, x2d, rstd, weight, *, max_block_n=None):
    """dx, dweight (None without weight)."""
    M, N = x2d.shape
    dev = x2d.device
    dx = _empty((M, N), x2d.dtype, dev)
    has_w = weight is not None
    if M == 0 or N == 0:
        return dx, (torch.zeros((N,), dtype=weight.dtype, device=dev) if has_w else None)
    P, rows_per_program = _num_programs(M, dev)
    dw_part = _empty((P, N), _stats_dtype(x2d.dtype), dev) if has_w else None
    BLOCK_N, ONE_BLOCK = _block_n(N, x2d.dtype, max_block_n)
    _launch(_rms_norm_bwd_kernel)[(P,)](
        dy2d, x2d, weight if has_w else x2d, rstd, dx,
        dw_part if has_w else dx,  # unused slot: a fresh output, not an input
        dy2d.stride(0), x2d.stride(0), dx.stride(0), M, N, rows_per_program,
        HAS_WEIGHT=has_w,
        BLOCK_N=BLOCK_N, ONE_BLOCK=ONE_BLOCK, num_warps=_num_warps(BLOCK_N),
    )
    return dx, (_sum_partials(dw_part, weight.dtype) if has_w else None)


# --------------------------------------------------------------------------
# Interpreter canaries: one tiny kernel per interpreter feature the kernels
# above rely on, checked against plain torch. The interpreter has had bugs
# (bf16 tl.dot, triton#11584); if one of these fails, suspect the
# interpreter before the norm kernels.
# --------------------------------------------------------------------------
@triton.jit
def _canary_masked_load_kernel(X, Y, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    tl.store(Y + cols, tl.load(X + cols, mask=cols < N, other=-7.0))


@triton.jit
def _canary_masked_sum_kernel(X, Out, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + cols, mask=mask, other=0.0)
    s = tl.sum(x, axis=0)
    sq = tl.sum(tl.where(mask, (x - s / N) * (x - s / N), 0.0), axis=0)  # two-pass shape
    tl.store(Out, s)
    tl.store(Out + 1, sq)


@triton.jit
def _canary_bf16_accum_kernel(X, Out, Y, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + cols, mask=mask, other=0.0).to(Out.dtype.element_ty)
    tl.store(Out, tl.sum(x * x, axis=0))
    tl.store(Y + cols, x * 0.5, mask=mask)  # exact fp32 -> bf16 on store


@triton.jit
def _canary_bf16_store_kernel(X, Y, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    _store_out(Y + cols, tl.load(X + cols, mask=mask), mask)  # fp32 -> bf16, rounded


@triton.jit
def _canary_int64_offsets_kernel(X, Offs, Y, stride_big, stride_x, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    tl.store(Offs + row * N + cols, row * stride_big + cols, mask=mask)  # > 2**31
    tl.store(Y + row * N + cols, tl.load(X + row * stride_x + cols, mask=mask), mask=mask)


@triton.jit
def _canary_chunked_loop_kernel(X, Out, M, N, rows_per_program, BLOCK: tl.constexpr):
    # The loop index of an int64 runtime range is int64 when compiled and a
    # Python int under the interpreter (so the kernels never call .to() on it).
    row_start = tl.program_id(0).to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for r in range(row_start, row_end):
        for start in range(0, N, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            acc += tl.load(X + r * N + cols, mask=cols < N, other=0.0)
    tl.store(Out + tl.program_id(0), tl.sum(acc, axis=0))


@triton.jit
def _canary_2d_colsum_kernel(X, Out, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_P)
    mask = (rows[:, None] < P) & (cols[None, :] < N)
    x = tl.load(X + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
    tl.store(Out + cols, tl.sum(x, axis=0), mask=cols < N)


def interpreter_canaries(device=None):
    """Run each canary; returns [(name, ok)]. Default device: cpu under
    TRITON_INTERPRET=1, else cuda."""
    if device is None:
        device = "cpu" if _interpreting() else "cuda"
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s, dtype=torch.float32: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    out = []

    x = rnd(11)
    y = torch.empty(16, device=device)
    _canary_masked_load_kernel[(1,)](x, y, 11, BLOCK=16)
    ref = torch.cat([x, torch.full((5,), -7.0, device=device)])
    out.append(("masked load with other", torch.equal(y, ref)))

    x = rnd(13, dtype=torch.float64)
    o = torch.empty(2, dtype=torch.float64, device=device)
    _canary_masked_sum_kernel[(1,)](x, o, 13, BLOCK=32)
    ok = torch.allclose(o[0], x.sum()) and torch.allclose(o[1], ((x - x.mean()) ** 2).sum())
    out.append(("tl.sum over a masked block", bool(ok)))

    x = rnd(37, dtype=torch.bfloat16)
    o = torch.empty(1, dtype=torch.float32, device=device)
    y = torch.empty(37, dtype=torch.bfloat16, device=device)
    _canary_bf16_accum_kernel[(1,)](x, o, y, 37, BLOCK=64)
    ok = torch.allclose(o[0], (x.float() ** 2).sum(), rtol=1e-6) and torch.equal(y, (x.float() * 0.5).bfloat16())
    out.append(("fp32 accumulation of bf16 loads", bool(ok)))

    x = torch.cat([rnd(61), torch.tensor([0.99999, 1.00390625, 1.01171875, -1.00390625, 3.0e38,
                                          float("inf"), float("-inf"), float("nan"), 0.0, -0.0],
                                         device=device)])  # (it flushes bf16 subnormals to 0)
    y = torch.empty(x.numel(), dtype=torch.bfloat16, device=device)
    _canary_bf16_store_kernel[(1,)](x, y, x.numel(), BLOCK=128)
    out.append(("fp32 -> bf16 output rounding (nearest even)", torch.equal(y.float().nan_to_num(), x.bfloat16().float().nan_to_num())))

    M, N = 3, 5
    x = rnd(M, 8)
    offs = torch.empty(M, N, dtype=torch.int64, device=device)
    y = torch.empty(M, N, device=device)
    big = 3_000_000_007
    _canary_int64_offsets_kernel[(M,)](x, offs, y, big, 8, N, BLOCK=8)
    ref = torch.arange(M, device=device)[:, None] * big + torch.arange(N, device=device)[None, :]
    out.append(("int64 offset arithmetic", torch.equal(offs, ref) and torch.equal(y, x[:, :N])))

    M, N, rpp = 7, 45, 2
    x = rnd(M, N)
    P = triton.cdiv(M, rpp)
    o = torch.empty(P, device=device)
    _canary_chunked_loop_kernel[(P,)](x, o, M, N, rpp, BLOCK=16)
    ref = torch.stack([x[i * rpp:(i + 1) * rpp].sum() for i in range(P)])
    out.append(("chunked loop, runtime row range", torch.allclose(o, ref, rtol=1e-5, atol=1e-5)))

    x = rnd(5, 6)
    o = torch.empty(6, device=device)
    _canary_2d_colsum_kernel[(1,)](x, o, 5, 6, BLOCK_P=8, BLOCK_N=8)
    out.append(("2-D masked column sum", torch.allclose(o, x.sum(0), rtol=1e-5, atol=1e-6)))
    return out
