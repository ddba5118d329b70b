"""Triton GEMM with a fused epilogue: the dense core of Linear (and, later, of
the conv, attention and RNN families on a GPU).

    out[M, N] = act(alpha * a[M, K] @ b[K, N] + beta * c[M, N] + bias)

a, b and c may have any strides: a transposed operand is a strided view, and
its strides go to the kernel as they are (no .contiguous() copy). bias is [N]
(per column, bias_dim=1) or [M] (per row, bias_dim=0). float32, bfloat16 and
float16 accumulate in float32, float64 in float64; the output (and the saved
pre-activation) is rounded once, on store.

Algorithm
    One program computes one BLOCK_M x BLOCK_N tile of the output. It walks K
    in BLOCK_K steps: loads an A tile [BLOCK_M, BLOCK_K] and a B tile
    [BLOCK_K, BLOCK_N] (masked on the K tail, zero-filled) and accumulates
    tl.dot(a, b) into a register accumulator (tensor cores for bf16/fp16,
    TF32 or exact-FMA for float32 following torch.get_float32_matmul_precision,
    DMMA or FMA for float64). The epilogue then runs on the accumulator while
    it is still in registers: * alpha, + beta * c, + bias, a copy stored as the
    pre-activation when backward needs it, the activation, one rounded store.
    Rows/columns past M/N are loaded wrapped (index % M), so only the K tail
    needs a load mask; the store is masked on M and N.

    Backward of linear (linear_bwd): g = grad_out * act'(preact) is computed by
    one elementwise pass (_act_bwd_kernel) that also writes per-program column
    partial sums of g; then dx = g @ W and dW = g^T @ x are two plain GEMMs on
    strided views (g.t() is a view), and db = the partials summed down in a
    fixed order (no atomics: bitwise reproducible on a given device).
    Why a separate g pass instead of fusing act' into the GEMMs' A-tile loads:
    a fused prologue would re-evaluate act' (erf/exp/tanh on CUDA cores) once
    per output tile that reads the element, i.e. ceil(K/BLOCK_N) times in dx
    and ceil(K/BLOCK_N) times in dW, and load two tensors (grad_out, preact)
    instead of one. On an H200 the tensor cores do ~15x more bf16 FLOP/s than
    the CUDA cores do fp32, so ~20 flops of act' per A element per 128-wide
    tile would cost as much as the MMA itself. The separate pass costs one
    extra M*N write + two reads of g (small next to 2*M*N*K flops once K is in
    the hundreds), evaluates act' exactly once per element, gives db for free
    in the same pass, and is the act_backward kernel the elementwise ops reuse.

Memory traffic (element size s)
    Each A tile is read once per output column block and each B tile once per
    output row block: ~ s * (M*K*ceil(N/BN) + K*N*ceil(M/BM)) from L2, of which
    HBM sees close to the ideal s * (M*K + K*N) when the tiles being read at
    one time fit in L2 (the swizzle below). The output is written once (twice
    with the pre-activation), c and bias read once.

The trick that makes it fast
    Grouped ("L2-swizzled") program order: consecutive program ids walk down
    a column of GROUP_M tiles before moving right, so the GROUP_M A row-panels
    and the B column-panel in flight stay L2-resident, instead of the plain
    row-major order that streams all of B again for every row of tiles. Plus
    the usual: tile sizes autotuned per (M, N, K) on a GPU, software
    pipelining (num_stages) so loads of step k+1 overlap the MMA of step k,
    and an epilogue that never sends C back to memory before it is final.

Numerics
    alpha, beta and slope reach the kernel as float32 scalars (Triton types
    Python floats so). Each is split on the host into hi + lo float32 parts and
    re-added in the accumulation type, so the float64 path sees them to ~2^-48
    relative (float32 sees the correctly rounded value). Python float literals
    in the kernel are materialised in the type of the tensor they meet, so the
    activation constants are full float64 precision in the float64 path.
    Activations follow csrc/common/act.h (the same formulas); tanh is computed
    from exp as sign(x) * (1 - e) / (1 + e), e = exp(-2|x|), because the
    interpreter cannot run libdevice (absolute error ~1 ulp of 1).

Interpreter (TRITON_INTERPRET=1, the CPU tests)
    * bf16 tl.dot is wrong there (triton#11584, still so in triton 3.8: it
      multiplies the raw uint16 bit patterns). Under the interpreter only, the
      bf16 tiles are widened to float32 before tl.dot (WIDEN_BF16): exact,
      since a bf16*bf16 product fits in float32. `bf16_dot_is_right()` is the
      canary that says whether the workaround is still needed; compiled
      kernels never take this branch.
    * one small fixed tile config (_INTERP_CONFIG), no autotuning.

Autotuning: on a GPU the GEMM is a triton.autotune over a short config list
per dtype class (16-bit / float32 / float64), keyed on (M, N, K);
MINITORCH_EXT_TRITON_AUTOTUNE=0 picks one fixed config per class instead.
float64 uses tl.dot when the GPU compiles it, else (or with
MINITORCH_EXT_TRITON_FP64_DOT=0) a broadcast-multiply-sum fallback: correct,
slow, enough for gradcheck.

Launching: under triton_op the launches go through torch.library.wrap_triton
(kernels/_common.launch); under the interpreter the bare kernel runs.

Checked without a GPU: tests/test_gemm_triton.py (interpreter) and
scripts/triton_gemm_compile_check.py, which compiles every config and
epilogue variant for sm_90 ahead of time (wgmma + cp.async pipelining for
16-bit and TF32, DMMA for float64) with triton 3.8 and 3.6. On a lent GPU:
scripts/gpu_gemm_triton.py (errors and TFLOP/s against torch.mm).
"""
from __future__ import annotations

import functools
import math
import os
import struct
import warnings

import torch
import triton
import triton.language as tl

from ._common import INTERPRETER
from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import store as _store_out

ACTS = ("none", "relu", "leaky_relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid")
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# Under the interpreter, whose cost is per program instance and per numpy op:
# tiles small enough that the tests' shapes (up to 257) still span several
# tiles and a few swizzle groups, large enough to keep the tests fast.
_INTERP_CONFIG = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=4)


def _cfg(bm, bn, bk, stages, warps, group=8):
    return triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group),
                         num_stages=stages, num_warps=warps)


# Config lists for Hopper/Ampere-class GPUs (an H200 is the one we get lent).
# Short on purpose: autotuning compiles every entry once per (M, N, K).
_CONFIGS = {
    "16": [_cfg(128, 256, 64, 3, 8), _cfg(256, 128, 64, 3, 8), _cfg(128, 128, 64, 4, 8),
           _cfg(128, 128, 64, 3, 4), _cfg(128, 64, 64, 4, 4), _cfg(64, 128, 64, 4, 4),
           _cfg(64, 64, 64, 4, 4)],
    "32": [_cfg(128, 128, 32, 3, 8), _cfg(128, 256, 32, 3, 8), _cfg(128, 64, 32, 4, 4),
           _cfg(64, 128, 32, 4, 4), _cfg(64, 64, 32, 4, 4)],
    "64": [_cfg(64, 64, 32, 3, 4), _cfg(128, 64, 16, 3, 8), _cfg(64, 64, 16, 4, 4),
           _cfg(32, 32, 32, 3, 4)],
}
_FIXED = {"16": _cfg(128, 128, 64, 3, 8), "32": _cfg(128, 128, 32, 3, 8),
          "64": _cfg(64, 64, 32, 3, 4)}
# float64 without tl.dot: the [BM, BK, BN] product lives in registers.
_FP64_FMA_CONFIG = _cfg(32, 32, 8, 2, 4)


def _empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty for every buffer a kernel fills; NaN-filled when the
    checker's poison switch is on (minitorch_ext._poison), so an element the
    kernel never writes fails the tests. Plain torch.empty without the package."""
    try:
        from minitorch_ext import _poison
    except ImportError:
        return torch.empty(shape, dtype=dtype, device=device)
    return _poison.empty(shape, dtype=dtype, device=device)


def _f32(x: float) -> float:
    """x rounded to float32, in plain Python (no tensor: this runs while
    torch.compile traces a triton_op, where a tensor would be fake)."""
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:  # beyond the float32 range
        return math.copysign(math.inf, x)


def _split(x: float) -> tuple[float, float]:
    """x as hi + lo, both float32-representable (x to ~2^-48 relative)."""
    hi = _f32(x)
    lo = x - hi
    if not math.isfinite(lo):  # x inf/nan or beyond the float32 range
        lo = 0.0
    return hi, _f32(lo)


def _check_act(act: str) -> None:
    if act not in ACTS:
        raise ValueError(f"act: expected one of {', '.join(ACTS)}; got {act!r}")


def _check_dtype(name: str, t: torch.Tensor, dtype) -> None:
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected a float32, float64, bfloat16 or float16 tensor, got {t.dtype}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (as the other operands), got {t.dtype}")


def _check_device(name: str, t: torch.Tensor, device) -> None:
    if t.device != device:
        raise RuntimeError(f"{name}: expected a tensor on {device}, got one on {t.device}")


# --------------------------------------------------------------------------
# Activations: the formulas of csrc/common/act.h, on the accumulation type.
# --------------------------------------------------------------------------
@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)  # NaN stays NaN (NaN < 0 is false)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _act_fwd(x, slope, ACT: tl.constexpr):
    if ACT == "relu":
        y = tl.where(x < 0, 0.0, x)  # NaN stays NaN, as torch.relu
    elif ACT == "leaky_relu":
        y = tl.where(x > 0, x, x * slope)
    elif ACT == "gelu":
        y = x * 0.5 * (1.0 + tl.erf(x * 0.70710678118654752440))
    elif ACT == "gelu_tanh":
        u = 0.79788456080286535588 * (x + 0.044715 * x * x * x)
        y = 0.5 * x * (1.0 + _tanh(u))
    elif ACT == "silu":
        y = x / (1.0 + tl.exp(-x))
    elif ACT == "tanh":
        y = _tanh(x)
    elif ACT == "sigmoid":
        y = _sigmoid(x)
    else:
        y = x
    return y


@triton.jit
def _act_grad(x, slope, ACT: tl.constexpr):
    """d act / dx at the pre-activation x."""
    if ACT == "relu":
        d = tl.where(x > 0, 1.0, 0.0)
    elif ACT == "leaky_relu":
        d = tl.where(x > 0, 1.0, slope)
    elif ACT == "gelu":
        cdf = 0.5 * (1.0 + tl.erf(x * 0.70710678118654752440))
        pdf = 0.39894228040143267794 * tl.exp(-0.5 * x * x)
        d = cdf + x * pdf
    elif ACT == "gelu_tanh":
        x2 = x * x
        t = _tanh(0.79788456080286535588 * (x + 0.044715 * x2 * x))
        du = 0.79788456080286535588 * (1.0 + 3.0 * 0.044715 * x2)
        d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    elif ACT == "silu":
        s = _sigmoid(x)
        d = s * (1.0 + x * (1.0 - s))
    elif ACT == "tanh":
        t = _tanh(x)
        d = 1.0 - t * t
    elif ACT == "sigmoid":
        s = _sigmoid(x)
        d = s * (1.0 - s)
    else:
        d = tl.full(x.shape, 1.0, x.dtype)
    return d.to(x.dtype)


# --------------------------------------------------------------------------
# The GEMM kernel
# --------------------------------------------------------------------------
@triton.jit
def _store(ptrs, x, mask, FIX_BF16: tl.constexpr):
    # FIX_BF16 (interpreter + bf16): kernels/_common.store's round-to-nearest
    # fix of the interpreter's truncating bf16 conversion; else a plain store.
    if FIX_BF16:
        _store_out(ptrs, x, mask)
    else:
        tl.store(ptrs, x.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _gemm_kernel(
    A, B, C, Bias, Out, Pre,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_bias,
    alpha_hi, alpha_lo, beta_hi, beta_lo, slope_hi, slope_lo,
    FP64: tl.constexpr,           # accumulate in float64 (float64 inputs), else float32
    HAS_C: tl.constexpr, HAS_BIAS: tl.constexpr, BIAS_DIM: tl.constexpr,
    ACT: tl.constexpr, STORE_PRE: tl.constexpr,
    USE_DOT: tl.constexpr,        # False: the float64 fallback without tl.dot
    PRECISION: tl.constexpr,      # tl.dot input_precision: "ieee"/"tf32" (float32), "ieee" (float64), None (16-bit)
    WIDEN_BF16: tl.constexpr,     # interpreter only: bf16 tiles -> float32 before tl.dot (triton#11584)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped program order (the L2 swizzle): GROUP_M row-tiles per group,
    # walked column-major inside the group.
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M  # (not tl.cdiv: a jit call costs ~ms in the interpreter)
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # Rows/columns past the edge are read wrapped (valid addresses, results
    # never stored), so the loads need a mask only on the K tail. int64
    # offsets: row * stride must not wrap on large tensors.
    ram = (rm % M).to(tl.int64)
    rbn = (rn % N).to(tl.int64)
    a_ptrs = A + ram[:, None] * stride_am + rk[None, :].to(tl.int64) * stride_ak
    b_ptrs = B + rk[:, None].to(tl.int64) * stride_bk + rbn[None, :] * stride_bn
    a_step = tl.full([], BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full([], BLOCK_K, tl.int64) * stride_bk

    # (a bool constexpr, not a tl.dtype one: plain values are what every
    # torch.compile version can put in its generated launch code)
    if FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ACC = acc.dtype
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rk[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < k_left, other=0.0)
        if USE_DOT:
            # out_dtype given: triton 3.6's default is float32 even with a float64 acc
            if WIDEN_BF16:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=ACC)
            else:
                acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
        else:
            acc += tl.sum(a[:, :, None].to(ACC) * b[None, :, :].to(ACC), axis=1)
        a_ptrs += a_step
        b_ptrs += b_step

    # Epilogue, on the accumulator in registers.
    alpha = tl.cast(alpha_hi, ACC) + tl.cast(alpha_lo, ACC)
    acc = acc * alpha
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_C:
        beta = tl.cast(beta_hi, ACC) + tl.cast(beta_lo, ACC)
        c = tl.load(C + rm64[:, None] * stride_cm + rn64[None, :] * stride_cn, mask=mask, other=0.0)
        acc += beta * c.to(ACC)
    if HAS_BIAS:
        if BIAS_DIM == 1:
            bias = tl.load(Bias + rn64 * stride_bias, mask=rn < N, other=0.0).to(ACC)
            acc += bias[None, :]
        else:
            bias = tl.load(Bias + rm64 * stride_bias, mask=rm < M, other=0.0).to(ACC)
            acc += bias[:, None]
    offs = rm64[:, None] * N + rn64[None, :]  # Out and Pre are contiguous [M, N]
    if STORE_PRE:
        _store(Pre + offs, acc, mask, WIDEN_BF16)
    if ACT != "none":
        slope = tl.cast(slope_hi, ACC) + tl.cast(slope_lo, ACC)
        acc = _act_fwd(acc, slope, ACT)
    _store(Out + offs, acc, mask, WIDEN_BF16)


@functools.lru_cache(maxsize=None)
def _autotuned(cls: str):
    return triton.autotune(configs=_CONFIGS[cls], key=["M", "N", "K"])(_gemm_kernel)


def _autotune_on() -> bool:
    return os.environ.get("MINITORCH_EXT_TRITON_AUTOTUNE", "1") != "0"


def _fp32_precision() -> str:
    """tl.dot input precision for float32, following torch's matmul setting:
    "highest" (torch's default) -> exact fp32 FMA, "high"/"medium" -> TF32."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


_FP64_DOT_BROKEN: set = set()  # devices whose Triton could not compile an fp64 tl.dot


def _fp64_use_dot(device) -> bool:
    if os.environ.get("MINITORCH_EXT_TRITON_FP64_DOT", "1") == "0":
        return False
    return str(device) not in _FP64_DOT_BROKEN


def _gemm_launch(a, b, c, bias, bias_dim, out, pre, alpha, beta, act, slope):
    """Launch the GEMM kernel on prepared operands: a [M, K], b [K, N] views,
    out (and pre) new contiguous [M, N]."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return
    dtype = out.dtype
    has_c = c is not None
    has_bias = bias is not None
    cls = "64" if dtype == torch.float64 else ("32" if dtype == torch.float32 else "16")
    use_dot = cls != "64" or _fp64_use_dot(out.device)
    alpha_hi, alpha_lo = _split(alpha)
    beta_hi, beta_lo = _split(beta)
    slope_hi, slope_lo = _split(slope)
    args = (
        a, b, c if has_c else out, bias if has_bias else out, out, pre if pre is not None else out,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        c.stride(0) if has_c else 0, c.stride(1) if has_c else 0, bias.stride(0) if has_bias else 0,
        alpha_hi, alpha_lo, beta_hi, beta_lo, slope_hi, slope_lo,
    )
    flags = dict(
        FP64=dtype == torch.float64, HAS_C=has_c, HAS_BIAS=has_bias, BIAS_DIM=bias_dim,
        ACT=act, STORE_PRE=pre is not None,
        PRECISION=_fp32_precision() if dtype == torch.float32 else ("ieee" if dtype == torch.float64 else None),
        WIDEN_BF16=_interpreting() and dtype == torch.bfloat16,
    )

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    if _interpreting():
        cfg = dict(_INTERP_CONFIG) if use_dot else dict(_FP64_FMA_CONFIG.kwargs)
        _launch(_gemm_kernel)[grid](*args, USE_DOT=use_dot, **flags, **cfg)
        return
    if not use_dot:
        cfg = _FP64_FMA_CONFIG
        _launch(_gemm_kernel)[grid](*args, USE_DOT=False, **flags, **cfg.kwargs,
                                    num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        return
    try:
        if _autotune_on():
            _launch(_autotuned(cls))[grid](*args, USE_DOT=True, **flags)
        else:
            cfg = _FIXED[cls]
            _launch(_gemm_kernel)[grid](*args, USE_DOT=True, **flags, **cfg.kwargs,
                                        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    except Exception as e:  # noqa: BLE001  (only the fp64 tl.dot may fall back)
        if cls != "64" or torch.compiler.is_compiling():
            raise
        warnings.warn(f"minitorch_ext: Triton could not compile a float64 tl.dot on {out.device} "
                      f"({type(e).__name__}); using the slower FMA fallback for float64 GEMMs")
        _FP64_DOT_BROKEN.add(str(out.device))
        _gemm_launch(a, b, c, bias, bias_dim, out, pre, alpha, beta, act, slope)


# --------------------------------------------------------------------------
# g = grad_out * act'(preact), with per-program column partial sums for db
# --------------------------------------------------------------------------
@triton.jit
def _act_bwd_kernel(
    DY, Pre, G, Part,
    M, N, stride_dym, stride_dyn, stride_pm, stride_pn, rows_per_program,
    slope_hi, slope_lo,
    FP64: tl.constexpr, ACT: tl.constexpr, WRITE_G: tl.constexpr, WRITE_PART: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Program (pid_r, pid_n) owns rows [row_start, row_end) x BLOCK_N columns
    # and row pid_r of the [P, N] partial buffer: no two programs write the
    # same place, and the order of the additions is fixed.
    pid_r = tl.program_id(0)
    pid_n = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    rn64 = rn.to(tl.int64)
    row_start = pid_r.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    if FP64:
        colsum = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float64)
    else:
        colsum = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    ACC = colsum.dtype
    slope = tl.cast(slope_hi, ACC) + tl.cast(slope_lo, ACC)
    for r0 in range(row_start, row_end, BLOCK_R):
        rr = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        mask = (rr[:, None] < row_end) & nmask[None, :]
        g = tl.load(DY + rr[:, None] * stride_dym + rn64[None, :] * stride_dyn, mask=mask, other=0.0).to(ACC)
        if ACT != "none":
            x = tl.load(Pre + rr[:, None] * stride_pm + rn64[None, :] * stride_pn, mask=mask, other=0.0).to(ACC)
            g = g * _act_grad(x, slope, ACT)
        if WRITE_G:
            _store_out(G + rr[:, None] * N + rn64[None, :], g, mask)
        if WRITE_PART:
            colsum += tl.where(mask, g, 0.0)
    if WRITE_PART:
        tl.store(Part + pid_r.to(tl.int64) * N + rn64, tl.sum(colsum, axis=0), mask=nmask)


@triton.jit
def _sum_rows_kernel(Part, Out, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program per BLOCK_N columns, walking the P partial rows top to bottom.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=Part.dtype.element_ty)
    for start in range(0, P, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        ptrs = Part + rows[:, None].to(tl.int64) * N + cols[None, :]
        acc += tl.load(ptrs, mask=(rows[:, None] < P) & col_mask[None, :], other=0.0)
    _store_out(Out + cols, tl.sum(acc, axis=0), col_mask)


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _act_bwd_launch(grad_out, preact, act, slope, write_g: bool, want_db: bool):
    """(g or None, db or None) for 2-D grad_out/preact [M, N]."""
    assert write_g or want_db
    M, N = grad_out.shape
    dev, dtype = grad_out.device, grad_out.dtype
    g = _empty((M, N), dtype, dev) if write_g else None
    if M == 0 or N == 0:
        db = torch.zeros((N,), dtype=dtype, device=dev) if want_db else None
        return g, db
    acc_t = torch.float64 if dtype == torch.float64 else torch.float32
    if _interpreting():
        BLOCK_R, BLOCK_N, target = 32, 64, 4
    else:
        BLOCK_R, BLOCK_N = 16, 128
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        target = 4 * _sm_count(idx)
    n_col = triton.cdiv(N, BLOCK_N)
    # Row chunks: enough programs to fill the device, each a multiple of
    # BLOCK_R rows. P depends only on (device, M, N): a fixed summation order.
    p_want = max(1, min(triton.cdiv(M, BLOCK_R), target // n_col))
    rows_per_program = triton.cdiv(triton.cdiv(M, p_want), BLOCK_R) * BLOCK_R
    P = triton.cdiv(M, rows_per_program)
    part = _empty((P, N), acc_t, dev) if want_db else None
    slope_hi, slope_lo = _split(slope)
    pre = preact if act != "none" else grad_out
    _launch(_act_bwd_kernel)[(P, n_col)](
        grad_out, pre, g if write_g else part, part if want_db else g,
        M, N, grad_out.stride(0), grad_out.stride(1), pre.stride(0), pre.stride(1), rows_per_program,
        slope_hi, slope_lo,
        FP64=dtype == torch.float64, ACT=act, WRITE_G=write_g, WRITE_PART=want_db,
        BLOCK_R=BLOCK_R, BLOCK_N=BLOCK_N, **({} if _interpreting() else dict(num_warps=4)),
    )
    db = None
    if want_db:
        db = _empty((N,), dtype, dev)
        SUM_N = 1024 if _interpreting() else 128
        _launch(_sum_rows_kernel)[(triton.cdiv(N, SUM_N),)](
            part, db, P, N, BLOCK_P=min(32, triton.next_power_of_2(P)), BLOCK_N=SUM_N,
            **({} if _interpreting() else dict(num_warps=4)))
    return g, db


# --------------------------------------------------------------------------
# Host functions (the lead wires these into torch.library ops)
# --------------------------------------------------------------------------
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, bias=None, bias_dim=1, act="none", slope=0.01):
    """out[M, N] = act(alpha * a @ b + beta * c + bias), a new contiguous tensor.

    a [M, K], b [K, N], c [M, N] (optional) with any strides; bias [N]
    (bias_dim=1) or [M] (bias_dim=0). One dtype for all. c is ignored when
    beta == 0 (NaN/inf in it do not propagate), as torch.addmm."""
    _check_act(act)
    if a.dim() != 2 or b.dim() != 2:
        raise RuntimeError(f"gemm: a and b must be 2-D, got {a.dim()}-D and {b.dim()}-D")
    if a.shape[1] != b.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({a.shape[0]}x{a.shape[1]} and "
                           f"{b.shape[0]}x{b.shape[1]})")
    M, K = a.shape
    N = b.shape[1]
    dtype, dev = a.dtype, a.device
    _check_dtype("a", a, dtype)
    _check_dtype("b", b, dtype)
    _check_device("b", b, dev)
    if c is not None:
        _check_dtype("c", c, dtype)
        _check_device("c", c, dev)
        if tuple(c.shape) != (M, N):
            raise RuntimeError(f"gemm: c must have shape [{M}, {N}], got {list(c.shape)}")
    if bias is not None:
        if bias_dim not in (0, 1):
            raise ValueError(f"gemm: bias_dim must be 0 (per row) or 1 (per column), got {bias_dim}")
        _check_dtype("bias", bias, dtype)
        _check_device("bias", bias, dev)
        want = N if bias_dim == 1 else M
        if tuple(bias.shape) != (want,):
            raise RuntimeError(f"gemm: bias (bias_dim={bias_dim}) must have shape [{want}], got {list(bias.shape)}")
    out = _empty((M, N), dtype, dev)
    _gemm_launch(a, b, c if (c is not None and beta != 0) else None, bias, bias_dim, out, None,
                 float(alpha), float(beta), act, float(slope))
    return out


def linear_fwd(x, weight, bias, act, slope):
    """(out, preact): out = act(x @ weight^T + bias) for x [M, K], weight [N, K],
    bias [N] or None; preact [M, N] (the pre-activation, written by the same
    kernel) when act != "none", else None."""
    _check_act(act)
    if x.dim() != 2 or weight.dim() != 2:
        raise RuntimeError(f"linear_fwd: input and weight must be 2-D, got {x.dim()}-D and {weight.dim()}-D")
    if x.shape[1] != weight.shape[1]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({x.shape[0]}x{x.shape[1]} and "
                           f"{weight.shape[1]}x{weight.shape[0]})")
    M, N = x.shape[0], weight.shape[0]
    dtype, dev = x.dtype, x.device
    _check_dtype("input", x, dtype)
    _check_dtype("weight", weight, dtype)
    _check_device("weight", weight, dev)
    if bias is not None:
        _check_dtype("bias", bias, dtype)
        _check_device("bias", bias, dev)
        if tuple(bias.shape) != (N,):
            raise RuntimeError(f"linear_fwd: bias must have shape [{N}], got {list(bias.shape)}")
    out = _empty((M, N), dtype, dev)
    pre = _empty((M, N), dtype, dev) if act != "none" else None
    _gemm_launch(x, weight.t(), None, bias, 1, out, pre, 1.0, 0.0, act, float(slope))
    return out, pre


def act_backward(grad_out, preact, act, slope=0.01):
    """g = grad_out * act'(preact), a new contiguous tensor of grad_out's shape
    (any shape; preact unused for act == "none")."""
    _check_act(act)
    shape = grad_out.shape
    if act != "none":
        if preact is None or preact.shape != shape:
            raise RuntimeError(f"act_backward: preact must have grad_out's shape {list(shape)}, got "
                               f"{None if preact is None else list(preact.shape)}")
        _check_dtype("preact", preact, grad_out.dtype)
    if grad_out.numel() == 0:
        return _empty(shape, grad_out.dtype, grad_out.device)
    n = shape[-1] if grad_out.dim() else 1
    go2 = grad_out.reshape(-1, n)  # a view where the strides allow (2-D: always)
    pre2 = preact.reshape(-1, n) if act != "none" else None
    g, _ = _act_bwd_launch(go2, pre2, act, float(slope), write_g=True, want_db=False)
    return g.reshape(shape)


def linear_bwd(grad_out, x, weight, preact, act, slope, mask):
    """(dx, dw, db), each None where mask (need dx, need dw, need db) says so.

    g = grad_out * act'(preact) (one elementwise pass, which also produces the
    column partial sums for db); dx = g @ weight, dw = g^T @ x (strided views,
    no transposed copy); db = column sums of g in a fixed order."""
    _check_act(act)
    need_dx, need_dw, need_db = (bool(m) for m in mask)
    M, N = grad_out.shape
    K = x.shape[1]
    if tuple(x.shape) != (M, K) or tuple(weight.shape) != (N, K):
        raise RuntimeError(f"linear_bwd: shapes grad_output {list(grad_out.shape)}, input {list(x.shape)}, "
                           f"weight {list(weight.shape)} do not match")
    dtype = grad_out.dtype
    if act != "none" and (preact is None or tuple(preact.shape) != (M, N)):
        raise RuntimeError(f"linear_bwd: act={act!r} needs preact of shape [{M}, {N}] (linear_fwd's second output), "
                           f"got {None if preact is None else list(preact.shape)}")
    for name, t in (("input", x), ("weight", weight)) + ((("preact", preact),) if act != "none" else ()):
        _check_dtype(name, t, dtype)
    if act == "none":
        g = grad_out
        db = _act_bwd_launch(grad_out, None, "none", 0.0, write_g=False, want_db=True)[1] if need_db else None
    elif need_dx or need_dw or need_db:
        g, db = _act_bwd_launch(grad_out, preact, act, float(slope), write_g=need_dx or need_dw, want_db=need_db)
    else:
        g, db = None, None
    dx = dw = None
    if need_dx:
        dx = _empty((M, K), dtype, x.device)
        _gemm_launch(g, weight, None, None, 1, dx, None, 1.0, 0.0, "none", 0.0)
    if need_dw:
        dw = _empty((N, K), dtype, x.device)
        _gemm_launch(g.t(), x, None, None, 1, dw, None, 1.0, 0.0, "none", 0.0)
    return dx, dw, db


# --------------------------------------------------------------------------
# Interpreter canaries
# --------------------------------------------------------------------------
@triton.jit
def _canary_dot_kernel(A, B, C, WIDEN: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a = tl.load(A + rm[:, None] * BK + rk[None, :])
    b = tl.load(B + rk[:, None] * BN + rn[None, :])
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    acc = tl.zeros((BM, BN), dtype=C.dtype.element_ty)
    acc = tl.dot(a, b, acc, input_precision="ieee", out_dtype=C.dtype.element_ty)
    tl.store(C + rm[:, None] * BN + rn[None, :], acc)


def _dot_canary(dtype, widen: bool, device) -> bool:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(32, 16, generator=g).to(device=device, dtype=dtype)
    acc_t = torch.float64 if dtype == torch.float64 else torch.float32
    c = torch.empty(16, 16, dtype=acc_t, device=device)
    _canary_dot_kernel[(1,)](a, b, c, WIDEN=widen, BM=16, BN=16, BK=32)
    ref = a.double() @ b.double()
    return bool(((c.double() - ref).abs().max() <= 1e-5 * (1 + ref.abs().max())).item())


def bf16_dot_is_right(device=None) -> bool:
    """Canary of triton#11584: does a plain bf16 tl.dot give the right answer?
    Under the interpreter of triton 3.6-3.8 it does not; the GEMM then widens
    bf16 tiles to float32 (WIDEN_BF16). Compiled kernels: True."""
    if device is None:
        device = "cpu" if _interpreting() else "cuda"
    return _dot_canary(torch.bfloat16, False, device)


def interpreter_canaries(device=None):
    """[(name, ok)] for the interpreter features the GEMM relies on (the raw
    bf16 dot is bf16_dot_is_right(), reported separately: it may be wrong)."""
    if device is None:
        device = "cpu" if _interpreting() else "cuda"
    return [
        ("float32 tl.dot", _dot_canary(torch.float32, False, device)),
        ("float16 tl.dot", _dot_canary(torch.float16, False, device)),
        ("float64 tl.dot", _dot_canary(torch.float64, False, device)),
        ("bf16 tl.dot widened to float32", _dot_canary(torch.bfloat16, True, device)),
    ]
