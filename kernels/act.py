"""Triton kernels for the activation family: elementwise activations (forward,
backward, in place) and softmax / log_softmax over the last dim.

Shapes: the elementwise kernels see a flat contiguous run of n elements (the
caller makes it so: a contiguous tensor, the storage of a dense permuted one,
or a contiguous copy); the softmax kernels a contiguous (M, D) matrix, D the
reduced dim (the Python side moves `dim` last).

Algorithm (float32 math, float64 for float64 input, one rounding on store)
    act:      y = act(x), the formulas of csrc/common/act.h (the table there);
              tanh through expm1 (Kahan's trick, accurate near 0), since
              libdevice's tanh does not run under the interpreter.
    act bwd:  dx = dy * act'(s), s the input, or the output for relu,
              leaky_relu (slope >= 0), tanh, sigmoid.
    softmax:  m = max(x), s = sum(exp(x - m)); y = exp(x - m) / s,
              log_softmax y = x - m - log(s).
    bwd:      softmax dx = y * (dy - sum(dy * y)); log_softmax dx = dy - exp(y) * sum(dy).

Memory traffic
    elementwise: each input read once, the output written once (in place:
    x read and written once).
    softmax: rows that fit the register budget (D <= 8192 fp32 / 4096 fp64)
    read x once and write y once; wider rows stream x three times (max, sum,
    write), the re-reads from L2.

The trick that makes it fast
    Everything is memory-bound, so each byte of HBM is touched once: one
    program owns a whole tile of rows in registers ([BLOCK_M, BLOCK_D], many
    short rows to a program so that a narrow softmax still moves large
    blocks), and the max, the sum and the output all come from one load.
    Constants and the leaky slope reach the kernels in the compute dtype
    (tl.full / a one-element tensor), never as float32 Python scalars, so the
    float64 path is float64 throughout.

Launching: through _common.launch (wrap_triton on a GPU, the bare kernel under
TRITON_INTERPRET=1, see _common.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import store as _store_out

# The Act enum of csrc/common/act_kind.h
ACT_CODES = {"none": 0, "relu": 1, "leaky_relu": 2, "gelu": 3, "gelu_tanh": 4, "silu": 5, "tanh": 6, "sigmoid": 7}
FROM_OUTPUT_OK = ("none", "relu", "tanh", "sigmoid")  # and leaky_relu with slope >= 0

# The whole row in registers while its working copy fits this many bytes
# (8192 fp32 / 4096 fp64 elements), as kernels/norm.py.
_MAX_ROW_BYTES = 32768


def _empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, NaN-filled when the checker's poison switch is on."""
    try:
        from minitorch_ext import _poison
    except ImportError:
        return torch.empty(shape, dtype=dtype, device=device)
    return _poison.empty(shape, dtype=dtype, device=device)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def grad_from_output_ok(act: str, slope: float) -> bool:
    return act in FROM_OUTPUT_OK or (act == "leaky_relu" and slope >= 0)


# --------------------------------------------------------------------------
# the activation math, on float32 or float64 blocks
# --------------------------------------------------------------------------
@triton.jit
def _c(v, like):
    """Constant v in like's dtype (a Python float would be a float32 constant)."""
    return tl.full([], v, like.dtype)


@triton.jit
def _expm1(x):
    # Kahan: (u - 1) * x / log(u), u = exp(x): the rounding error of u cancels,
    # so expm1 stays accurate near 0 where u - 1 alone loses every digit.
    u = tl.exp(x)
    um1 = u - 1.0
    small = um1 == 0.0
    lu = tl.where(small, 1.0, tl.log(u))
    return tl.where(small, x, um1 * x / lu)


@triton.jit
def _tanh(x):
    a = tl.minimum(tl.abs(x), _c(20.0, x))  # tanh(20) rounds to 1 in float64
    em = _expm1(2.0 * a)
    t = em / (em + 2.0)
    t = tl.where(x < 0.0, -t, t)
    return tl.where(x != x, x, t)  # NaN stays NaN


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _act(x, slope, ACT: tl.constexpr):
    if ACT == 1:  # relu; NaN stays NaN, as torch.relu
        y = tl.where((x > 0.0) | (x != x), x, 0.0)
    elif ACT == 2:  # leaky_relu
        y = tl.where(x > 0.0, x, x * slope)
    elif ACT == 3:  # gelu
        y = x * 0.5 * (1.0 + tl.erf(x * _c(0.70710678118654752440, x)))
    elif ACT == 4:  # gelu_tanh
        u = _c(0.79788456080286535588, x) * (x + _c(0.044715, x) * x * x * x)
        y = 0.5 * x * (1.0 + _tanh(u))
    elif ACT == 5:  # silu
        y = x * _sigmoid(x)
    elif ACT == 6:
        y = _tanh(x)
    elif ACT == 7:
        y = _sigmoid(x)
    else:
        y = x
    return y


@triton.jit
def _act_grad(s, slope, ACT: tl.constexpr, FROM_OUTPUT: tl.constexpr):
    """d act / dx at the input s (FROM_OUTPUT: s is the output)."""
    if ACT == 1:
        d = tl.where(s > 0.0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(s > 0.0, 1.0, slope)
    elif ACT == 3:
        cdf = 0.5 * (1.0 + tl.erf(s * _c(0.70710678118654752440, s)))
        pdf = _c(0.39894228040143267794, s) * tl.exp(-0.5 * s * s)
        d = cdf + s * pdf
    elif ACT == 4:
        k = _c(0.79788456080286535588, s)
        c = _c(0.044715, s)
        s2 = s * s
        t = _tanh(k * (s + c * s2 * s))
        du = k * (1.0 + 3.0 * c * s2)
        d = 0.5 * (1.0 + t) + 0.5 * s * (1.0 - t * t) * du
    elif ACT == 5:
        sg = _sigmoid(s)
        d = sg * (1.0 + s * (1.0 - sg))
    elif ACT == 6:
        t = s if FROM_OUTPUT else _tanh(s)
        d = 1.0 - t * t
    elif ACT == 7:
        sg = s if FROM_OUTPUT else _sigmoid(s)
        d = sg * (1.0 - sg)
    else:
        d = s * 0.0 + 1.0
    return d


# --------------------------------------------------------------------------
# elementwise kernels (flat, contiguous)
# --------------------------------------------------------------------------
@triton.jit
def _act_fwd_kernel(X, Y, Slope, n, ACT: tl.constexpr, IS_INT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0)
    if IS_INT:  # integer relu (the only integer activation, as torch)
        tl.store(Y + offs, tl.where(x > 0, x, 0), mask=mask)
    else:
        x = x.to(Slope.dtype.element_ty)
        _store_out(Y + offs, _act(x, tl.load(Slope), ACT), mask)


@triton.jit
def _act_bwd_kernel(DY, S, DX, Slope, n, ACT: tl.constexpr, FROM_OUTPUT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ACC = Slope.dtype.element_ty
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
    s = tl.load(S + offs, mask=mask, other=0.0).to(ACC)
    slope = tl.load(Slope)
    if ACT == 1:  # select, not multiply (an inf dy where the slope is 0 stays 0), as torch
        dx = tl.where(s > 0.0, dy, 0.0)
    elif ACT == 2:
        dx = tl.where(s > 0.0, dy, dy * slope)
    else:
        dx = dy * _act_grad(s, slope, ACT, FROM_OUTPUT)
    _store_out(DX + offs, dx, mask)


def _block(n: int) -> int:
    # the interpreter's cost is per program instance: large blocks there
    cap = 1 << 16 if _interpreting() else 1024
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


def _slope_tensor(slope: float, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.full((1,), float(slope), dtype=_acc_dtype(dtype), device=device)


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: the elements fill one contiguous range of memory
    in some order of the dims (contiguous, transposed, permuted)."""
    expected = 1
    for st, sz in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if st != expected:
            return False
        expected *= sz
    return True


def _flat_view(t: torch.Tensor):
    """A flat view of t's elements when they fill one contiguous range, else None."""
    if t.is_contiguous():
        return t.view(-1)
    if _is_dense(t):
        return t.as_strided((t.numel(),), (1,), t.storage_offset())
    return None


def act_fwd(x: torch.Tensor, act: str, slope: float) -> torch.Tensor:
    """act(x) as a new contiguous tensor of x's shape and dtype."""
    xc = x.contiguous()
    y = _empty(x.shape, x.dtype, x.device)
    n = xc.numel()
    if n == 0:
        return y
    B = _block(n)
    _launch(_act_fwd_kernel)[(triton.cdiv(n, B),)](
        xc, y, _slope_tensor(slope, x.dtype, x.device), n, ACT=ACT_CODES[act],
        IS_INT=not x.is_floating_point(), BLOCK=B, num_warps=4)
    return y


def act_inplace(x: torch.Tensor, act: str, slope: float) -> None:
    """x = act(x), in place. A dense layout is updated through its flat storage;
    any other (a slice with gaps) through a contiguous copy, copied back."""
    n = x.numel()
    if n == 0:
        return
    flat = _flat_view(x)
    target = flat if flat is not None else x.contiguous()
    B = _block(n)
    _launch(_act_fwd_kernel)[(triton.cdiv(n, B),)](
        target, target, _slope_tensor(slope, x.dtype, x.device), n, ACT=ACT_CODES[act],
        IS_INT=not x.is_floating_point(), BLOCK=B, num_warps=4)
    if flat is None:
        x.copy_(target)


def act_bwd(dy: torch.Tensor, saved: torch.Tensor, act: str, slope: float, saved_is_output: bool) -> torch.Tensor:
    dyc, sc = dy.contiguous(), saved.contiguous()
    dx = _empty(saved.shape, saved.dtype, saved.device)
    n = sc.numel()
    if n == 0:
        return dx
    B = _block(n)
    _launch(_act_bwd_kernel)[(triton.cdiv(n, B),)](
        dyc, sc, dx, _slope_tensor(slope, saved.dtype, saved.device), n, ACT=ACT_CODES[act],
        FROM_OUTPUT=bool(saved_is_output), BLOCK=B, num_warps=4)
    return dx


# --------------------------------------------------------------------------
# softmax / log_softmax over the last dim of a contiguous (M, D) matrix
# --------------------------------------------------------------------------
@triton.jit
def _softmax_fwd_kernel(X, Y, M, D, LOG: tl.constexpr, F64: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ONE_BLOCK: tl.constexpr):
    ACC = tl.float64 if F64 else tl.float32
    if ONE_BLOCK:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        rmask = rows < M
        mask = rmask[:, None] & (cols < D)[None, :]
        offs = rows[:, None] * D + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=-float("inf")).to(ACC)
        m = tl.where(rmask, tl.max(x, axis=1), 0.0)  # rows past M: no -inf - -inf
        e = tl.exp(x - m[:, None])  # padding lanes: exp(-inf) = 0
        s = tl.where(rmask, tl.sum(e, axis=1), 1.0)  # rows past M: no log(0), no 1/0
        if LOG:  # (x - m) - log(s): x - m exact first, as torch
            y = (x - m[:, None]) - tl.log(s)[:, None]
        else:
            y = e * (1.0 / s)[:, None]
        _store_out(Y + offs, y, mask)
    else:
        # one wide row a program: max, sum, write, streaming BLOCK_D at a time
        row = tl.program_id(0).to(tl.int64)
        Xr = X + row * D
        Yr = Y + row * D
        mv = tl.full([BLOCK_D], -float("inf"), ACC)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mv = tl.maximum(mv, tl.load(Xr + cols, mask=cols < D, other=-float("inf")).to(ACC))
        m = tl.max(mv, axis=0)
        sv = tl.zeros([BLOCK_D], ACC)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            sv += tl.exp(tl.load(Xr + cols, mask=cols < D, other=-float("inf")).to(ACC) - m)
        s = tl.sum(sv, axis=0)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < D
            x = tl.load(Xr + cols, mask=mask, other=0.0).to(ACC)
            if LOG:
                y = (x - m) - tl.log(s)
            else:
                y = tl.exp(x - m) * (1.0 / s)
            _store_out(Yr + cols, y, mask)


@triton.jit
def _softmax_bwd_kernel(DY, Y, DX, M, D, LOG: tl.constexpr, F64: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ONE_BLOCK: tl.constexpr):
    ACC = tl.float64 if F64 else tl.float32
    if ONE_BLOCK:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        mask = (rows < M)[:, None] & (cols < D)[None, :]
        offs = rows[:, None] * D + cols[None, :]
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
        y = tl.load(Y + offs, mask=mask, other=0.0).to(ACC)
        if LOG:
            s = tl.sum(dy, axis=1)
            dx = dy - tl.exp(y) * s[:, None]
        else:
            s = tl.sum(dy * y, axis=1)
            dx = y * (dy - s[:, None])
        _store_out(DX + offs, dx, mask)
    else:
        row = tl.program_id(0).to(tl.int64)
        acc = tl.zeros([BLOCK_D], ACC)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < D
            dy = tl.load(DY + row * D + cols, mask=mask, other=0.0).to(ACC)
            if LOG:
                acc += dy
            else:
                acc += dy * tl.load(Y + row * D + cols, mask=mask, other=0.0).to(ACC)
        s = tl.sum(acc, axis=0)
        for start in range(0, D, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            mask = cols < D
            dy = tl.load(DY + row * D + cols, mask=mask, other=0.0).to(ACC)
            y = tl.load(Y + row * D + cols, mask=mask, other=0.0).to(ACC)
            if LOG:
                dx = dy - tl.exp(y) * s
            else:
                dx = y * (dy - s)
            _store_out(DX + row * D + cols, dx, mask)


def _softmax_blocks(M: int, D: int, dtype: torch.dtype, max_block_d: int | None):
    """(BLOCK_M, BLOCK_D, ONE_BLOCK, grid, num_warps)."""
    cap = _MAX_ROW_BYTES // _acc_dtype(dtype).itemsize
    if max_block_d is not None:
        cap = min(cap, triton.next_power_of_2(max_block_d + 1) // 2)
    block_d = min(triton.next_power_of_2(D), cap)
    if D <= block_d:
        tile = (1 << 14) if _interpreting() else 4096  # elements a program holds
        block_m = max(1, min(tile // block_d, triton.next_power_of_2(M)))
        warps = min(max(block_m * block_d // 512, 1), 16)
        return block_m, block_d, True, triton.cdiv(M, block_m), warps
    return 1, block_d, False, M, min(max(block_d // 256, 1), 16)


def softmax_fwd(x2d: torch.Tensor, log: bool, *, max_block_d: int | None = None) -> torch.Tensor:
    """softmax (log_softmax) over the last dim of a contiguous (M, D) x. `max_block_d`
    (testing) caps the block so narrow rows take the streaming path."""
    M, D = x2d.shape
    y = _empty((M, D), x2d.dtype, x2d.device)
    if M == 0 or D == 0:
        return y
    BM, BD, one, grid, warps = _softmax_blocks(M, D, x2d.dtype, max_block_d)
    _launch(_softmax_fwd_kernel)[(grid,)](
        x2d, y, M, D, LOG=bool(log), F64=x2d.dtype == torch.float64,
        BLOCK_M=BM, BLOCK_D=BD, ONE_BLOCK=one, num_warps=warps)
    return y


def softmax_bwd(dy2d: torch.Tensor, y2d: torch.Tensor, log: bool, *, max_block_d: int | None = None) -> torch.Tensor:
    M, D = y2d.shape
    dx = _empty((M, D), y2d.dtype, y2d.device)
    if M == 0 or D == 0:
        return dx
    BM, BD, one, grid, warps = _softmax_blocks(M, D, y2d.dtype, max_block_d)
    _launch(_softmax_bwd_kernel)[(grid,)](
        dy2d, y2d, dx, M, D, LOG=bool(log), F64=y2d.dtype == torch.float64,
        BLOCK_M=BM, BLOCK_D=BD, ONE_BLOCK=one, num_warps=warps)
    return dx


# --------------------------------------------------------------------------
# Interpreter canaries: the interpreter features the kernels above rely on,
# each checked against plain torch (see kernels/norm.py for the shared ones:
# masked loads, bf16 store rounding, int64 offsets, chunked loops).
# --------------------------------------------------------------------------
@triton.jit
def _canary_math_kernel(X, Erf, Tanh, Exp, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0)
    tl.store(Erf + offs, tl.erf(x), mask=mask)
    tl.store(Tanh + offs, _tanh(x), mask=mask)
    tl.store(Exp + offs, tl.exp(x), mask=mask)


@triton.jit
def _canary_const_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0)
    tl.store(Y + offs, x * _c(0.044715, x), mask=mask)


@triton.jit
def _canary_row_max_kernel(X, Out, M, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < M)[:, None] & (cols < D)[None, :]
    x = tl.load(X + rows[:, None] * D + cols[None, :], mask=mask, other=-float("inf"))
    tl.store(Out + rows, tl.max(x, axis=1), mask=rows < M)


def interpreter_canaries(device=None):
    """Run each canary; returns [(name, ok)]."""
    if device is None:
        device = "cpu" if _interpreting() else "cuda"
    g = torch.Generator().manual_seed(0)
    out = []
    for dt, tol in ((torch.float32, 2e-7), (torch.float64, 1e-15)):
        x = (torch.randn(37, generator=g, dtype=torch.float64) * 3).to(device=device, dtype=dt)
        x[:4] = torch.tensor([0.0, 1e-6, -3e-4, 30.0], dtype=dt)
        erf, tanh, ex = (torch.empty_like(x) for _ in range(3))
        _canary_math_kernel[(1,)](x, erf, tanh, ex, 37, BLOCK=64)
        xd = x.double()
        out.append((f"tl.erf {dt}", bool(((erf.double() - torch.erf(xd)).abs() <= tol * 4).all())))
        rel = ((tanh.double() - torch.tanh(xd)).abs() / torch.tanh(xd).abs().clamp_min(1e-300))
        out.append((f"tanh via expm1 {dt} (relative)", bool((rel[1:] <= tol * 8).all() and tanh[0] == 0)))
        out.append((f"tl.exp {dt}", bool(((ex.double() - torch.exp(xd)).abs() <= tol * 4 * torch.exp(xd)).all())))
    x = torch.ones(5, dtype=torch.float64, device=device)
    y = torch.empty_like(x)
    _canary_const_kernel[(1,)](x, y, 5, BLOCK=8)
    out.append(("float64 constant via tl.full", bool((y == 0.044715).all())))
    x = torch.randn(3, 5, generator=g).to(device)
    o = torch.empty(3, device=device)
    _canary_row_max_kernel[(1,)](x, o, 3, 5, BLOCK_M=4, BLOCK_D=8)
    out.append(("2-D masked row max", torch.equal(o, x.max(dim=1).values)))
    return out
