"""Triton implicit-GEMM 2-D convolution: forward (with a fused bias + activation
epilogue), grad_input, grad_weight and grad_bias.

The kernels see the 4-D layout of csrc/ops.cpp's conv schema (minitorch_ext/ops/conv.py
maps conv1d / unbatched / 'same' onto it and registers these functions as ops):

    input [N, C, H, W], weight [O, C/groups, kH, kW], bias [O] or None, any strides
    stride [sH, sW], dilation [dH, dW], padding [pH, pW] or [top, bottom, left, right]
    padding_mode "zeros" | "reflect" | "replicate" | "circular", by index mapping
    output [N, O, Ho, Wo]: channels_last when input or weight is, else contiguous

Algorithm
    Forward (_fwd_kernel): the convolution as a GEMM that is never materialised,
        out[m, o] = sum_k patch[m, k] * weight[o, k],  m = (n, oh, ow), k = (c, kh, kw),
    per group. One program owns a BLOCK_M x BLOCK_N tile of (N*Ho*Wo) x (O/groups) of
    group g (grid axis 2). It walks K = C/groups*kH*kW in BLOCK_K steps; each step
    decodes k into (c, kh, kw), computes the input coordinates
    ih = oh*sH - top + kh*dH, iw = ow*sW - left + kw*dW of the [BLOCK_M, BLOCK_K] patch
    tile, maps them through the padding mode (zeros: a load mask; reflect: -i and
    2(H-1)-i; replicate: a clamp; circular: (i + H) % H), gathers the tile straight
    from the input through its four strides (NCHW and channels_last are the same code),
    loads the [BLOCK_K, BLOCK_N] weight tile, and accumulates tl.dot into float32
    (float64 for double). Epilogue on the accumulator: + bias, the activation
    (kernels/gemm._act_fwd, the formulas of csrc/common/act.h), one rounded store
    through the output's strides. Rows / columns past the edge are read wrapped
    (index % M), so only the K tail and the padding need load masks.
    grad_input (_dgrad_kernel): the gather form, a convolution of grad_output with the
    flipped weight: for input pixel (n, ih, iw) and k = (o, kh, kw),
        th = ih + top - kh*dH, oh = th / sH   (taken iff th >= 0, sH | th, oh < Ho)
    and the same for w; GEMM M = N*H*W, N = C/groups, K = O/groups*kH*kW. Each output
    element is owned by one program: no atomics, deterministic. The padding modes
    other than zeros first take the gradient of the padded input (a zeros-mode dgrad
    on the padded geometry, pads 0, into a float32/float64 workspace) and then fold
    it back (_fold_kernel): every input pixel sums, in a fixed order, the padded
    positions that map onto it (a small per-dim host table, <= pad+1 entries).
    grad_weight (_wgrad_kernel): gw[o, k] = sum_r go[r, o] * patch[r, k] over
    r = (n, oh, ow); one program owns a BLOCK_M x BLOCK_N tile of (O/groups) x K of
    a group and loops over the whole reduction R = N*Ho*Wo itself (the patch tile
    gathered as in the forward, padding modes included): no split-K, no atomics,
    bitwise repeatable.
    grad_bias (_bgrad_kernel): one program per BLOCK_N output channels, a fixed-order
    reduction over R in BLOCK_R steps.

Memory traffic (element size s)
    Forward: each weight tile is read once per M tile and each input element
    ~kH*kW/(sH*sW) times per N tile (the implicit im2col reuse lives in L1/L2, not in
    memory: no N*Ho*Wo x K patch matrix is ever written); output written once.
    grad_input: grad_output read ~kH*kW/(sH*sW) times per C/groups tile, weight once
    per M tile; non-zeros modes add one float32 workspace of the padded input (written
    once, read once). grad_weight: grad_output read once per K tile, input patches once
    per O tile.

The trick
    Index arithmetic instead of data movement: the patch gather, the padding modes,
    the groups and both memory formats are all address computations feeding the same
    tl.dot tile loop, so the tensor cores see a plain GEMM and nothing of size
    N*Ho*Wo*K is stored. The backward is all "owner computes" (gather) formulations,
    which costs some masked work (strided dgrad visits kH*kW taps of which about
    1/(sH*sW) are live) but needs no atomics and is deterministic.

Numerics
    float32 / bfloat16 accumulate in float32, float64 in float64; one rounding on store.
    float32 tl.dot precision follows torch.get_float32_matmul_precision ("highest":
    ieee, else tf32), as kernels/gemm.py. float64: tl.dot when the GPU compiles it
    (kernels/gemm._fp64_use_dot, MINITORCH_EXT_TRITON_FP64_DOT=0 to turn it off), else a
    broadcast multiply-sum fallback (USE_DOT=False): slow, for gradcheck.

Interpreter (TRITON_INTERPRET=1, the CPU tests)
    * bf16 tl.dot is wrong there (triton#11584): bf16 tiles are widened to float32
      before tl.dot (WIDEN_BF16; exact), and bf16 stores round to nearest even through
      kernels/_common.store.
    * 32 x 16 x 32 tiles (the interpreter pays per op, not per element), no autotuning.

GPU: fixed tile configs per dtype class (no autotune yet). Checked without a GPU by
tests/test_conv_triton.py (interpreter) and scripts/triton_conv_pool_compile_check.py
(compiles every variant for sm_90: wgmma for bf16 / tf32, DMMA for float64). Not yet run
on a GPU (none was lent to this slice): scripts/gpu_check.sh runs
tests/test_conv_triton.py on cuda when one is.
"""
from __future__ import annotations

import math
import struct
import warnings

import torch
import triton
import triton.language as tl

from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import store as _store
from .gemm import ACTS, _act_fwd, _fp32_precision, _fp64_use_dot, _FP64_DOT_BROKEN

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_MODE = {m: i for i, m in enumerate(PADDING_MODES)}
_DTYPES = (torch.float32, torch.float64, torch.bfloat16)

_INTERP_CFG = dict(BLOCK_M=32, BLOCK_N=16, BLOCK_K=32)  # M and K tails still cut tiles in the tests
_GPU_CFG = {"16": (dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32), 4, 3),
            "32": (dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32), 4, 3),
            "64": (dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16), 4, 2)}
_FP64_FMA_CFG = (dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=8), 4, 2)


# --------------------------------------------------------------------------
# host helpers
# --------------------------------------------------------------------------
def _empty(shape, dtype, device) -> torch.Tensor:
    try:
        from minitorch_ext import _poison
        return _poison.empty(shape, dtype=dtype, device=device)
    except Exception:  # noqa: BLE001
        return torch.empty(shape, dtype=dtype, device=device)


def _empty_like_format(shape, dtype, device, channels_last: bool) -> torch.Tensor:
    n, c, h, w = shape
    if channels_last:
        return _empty((n, h, w, c), dtype, device).permute(0, 3, 1, 2)
    return _empty((n, c, h, w), dtype, device)


def _split(x: float):
    hi = struct.unpack("f", struct.pack("f", x))[0] if math.isfinite(x) else x
    lo = x - hi if math.isfinite(x) else 0.0
    return hi, struct.unpack("f", struct.pack("f", lo))[0]


def _is_cl(t: torch.Tensor) -> bool:
    from torch._prims_common import suggest_memory_format
    return t.dim() == 4 and suggest_memory_format(t) == torch.channels_last


def _pads4(padding):
    p = [int(v) for v in padding]
    if len(p) == 2:
        return [p[0], p[0], p[1], p[1]]
    if len(p) != 4:
        raise RuntimeError(f"conv: expected padding to have 2 values (H, W) or 4 (top, bottom, left, right), got {p}")
    return p


def _check(input, weight, bias, stride, padding, dilation, groups, padding_mode, act="none"):
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of 'zeros', 'reflect', 'replicate' or 'circular', but got "
                         f"'{padding_mode}'")
    if act not in ACTS:
        raise ValueError(f"conv: unknown act {act!r}; expected one of {ACTS}")
    for name, t in (("input", input), ("weight", weight)):
        if t.dtype == torch.float16:
            raise RuntimeError(f"conv: {name}: float16 is not supported by the Triton conv kernel (use float32, "
                               f"float64 or bfloat16)")
        if t.dtype not in _DTYPES:
            raise RuntimeError(f"conv: {name}: expected float32, float64 or bfloat16, got {t.dtype}")
    if input.dim() != 4 or weight.dim() != 4:
        raise RuntimeError(f"conv: expected a 4-D input and weight, got {input.dim()}-D and {weight.dim()}-D")
    if input.dtype != weight.dtype:
        raise RuntimeError(f"Input type ({input.dtype}) and weight type ({weight.dtype}) should be the same")
    if len(stride) != 2 or len(dilation) != 2:
        raise RuntimeError(f"conv: expected stride and dilation to have 2 values, got {list(stride)}, "
                           f"{list(dilation)}")
    if min(stride) <= 0:
        raise RuntimeError("non-positive stride is not supported")
    if min(dilation) <= 0:
        raise RuntimeError(f"dilation should be greater than zero, but got {list(dilation)}")
    pads = _pads4(padding)
    if min(pads) < 0:
        raise RuntimeError("negative padding is not supported")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if weight.shape[0] % groups or input.shape[1] != weight.shape[1] * groups:
        raise RuntimeError(f"Given groups={groups}, weight of size {list(weight.shape)}, expected input"
                           f"{list(input.shape)} to have {weight.shape[1] * groups} channels, but got "
                           f"{input.shape[1]} channels instead")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0] or bias.dtype != input.dtype):
        raise RuntimeError(f"Given weight of size {list(weight.shape)}, expected bias to be 1-dimensional with "
                           f"{weight.shape[0]} elements of dtype {input.dtype}, got {list(bias.shape)} {bias.dtype}")
    H, W = input.shape[2], input.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    Hp, Wp = H + pads[0] + pads[1], W + pads[2] + pads[3]
    eh, ew = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if Hp < eh or Wp < ew:
        raise RuntimeError(f"Calculated padded input size per channel: ({Hp} x {Wp}). Kernel size: ({eh} x {ew}). "
                           f"Kernel size can't be greater than actual input size")
    if padding_mode == "reflect" and (max(pads[:2]) >= H or max(pads[2:]) >= W):
        raise RuntimeError("Padding size should be less than the corresponding input dimension")
    if padding_mode == "circular" and (max(pads[:2]) > H or max(pads[2:]) > W):
        raise RuntimeError("Padding value causes wrapping around more than once.")
    Ho = (Hp - eh) // stride[0] + 1
    Wo = (Wp - ew) // stride[1] + 1
    return pads, Ho, Wo


def _flags(dtype, device):
    cls = "64" if dtype == torch.float64 else ("32" if dtype == torch.float32 else "16")
    use_dot = cls != "64" or _fp64_use_dot(device)
    flags = dict(
        FP64=dtype == torch.float64, USE_DOT=use_dot,
        PRECISION=_fp32_precision() if dtype == torch.float32 else ("ieee" if dtype == torch.float64 else None),
        WIDEN_BF16=_interpreting() and dtype == torch.bfloat16,
    )
    if _interpreting():
        return flags, dict(_INTERP_CFG) if use_dot else dict(_FP64_FMA_CFG[0]), {}
    cfg, warps, stages = _GPU_CFG[cls] if use_dot else _FP64_FMA_CFG
    return flags, dict(cfg), dict(num_warps=warps, num_stages=stages)


def _run(kernel, grid, args, dtype, device, **const):
    """Launch with this dtype's flags and tiles (plus the constexprs `const`); a float64
    tl.dot that does not compile falls back (once per device) to the FMA path, as
    kernels/gemm.py does."""
    flags, cfg, extra = _flags(dtype, device)
    try:
        _launch(kernel)[grid(cfg)](*args, **const, **flags, **cfg, **extra)
    except Exception as e:  # noqa: BLE001
        if dtype != torch.float64 or not flags["USE_DOT"] or _interpreting() or torch.compiler.is_compiling():
            raise
        warnings.warn(f"minitorch_ext: Triton could not compile a float64 tl.dot on {device} "
                      f"({type(e).__name__}); using the slower FMA fallback for float64 convolutions")
        _FP64_DOT_BROKEN.add(str(device))
        _run(kernel, grid, args, dtype, device, **const)


# --------------------------------------------------------------------------
# jit helpers
# --------------------------------------------------------------------------
@triton.jit
def _map(i, size, MODE: tl.constexpr):
    """Padded coordinate i -> (input coordinate, taken?) under the padding mode."""
    if MODE == 0:      # zeros
        ok = (i >= 0) & (i < size)
        j = tl.where(ok, i, 0)
    elif MODE == 1:    # reflect (pad < size)
        j = tl.where(i < 0, -i, i)
        j = tl.where(j >= size, 2 * (size - 1) - j, j)
        ok = j >= 0
    elif MODE == 2:    # replicate
        j = tl.minimum(tl.maximum(i, 0), size - 1)
        ok = j >= 0
    else:              # circular (pad <= size)
        j = (i + size) % size
        ok = j >= 0
    return j, ok


@triton.jit
def _mma(acc, a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr):
    if USE_DOT:
        if WIDEN_BF16:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
        else:
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    else:
        acc += tl.sum(a[:, :, None].to(acc.dtype) * b[None, :, :].to(acc.dtype), axis=1)
    return acc


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------
@triton.jit
def _fwd_kernel(
    X, Wt, Bias, Out,
    N, H, W, Ho, Wo, Cg, Og, KH, KW,
    sxn, sxc, sxh, sxw, swo, swc, swh, sww, syn, syc, syh, syw, sb,
    strH, strW, padT, padL, dilH, dilW, slope_hi, slope_lo,
    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    FP64: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    M = N * Ho * Wo
    K = Cg * KH * KW
    KHW = KH * KW
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m = rm % M                     # wrapped: valid addresses, never stored
    n = (m // (Ho * Wo)).to(tl.int64)
    r = m % (Ho * Wo)
    oh = r // Wo
    ow = r % Wo
    oc = (g * Og + rn % Og).to(tl.int64)
    ih0 = oh * strH - padT
    iw0 = ow * strW - padL
    x_base = X + n * sxn + (g * Cg).to(tl.int64) * sxc
    if FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < K
        kk = rk % K
        c = (kk // KHW).to(tl.int64)
        t = kk % KHW
        kh = t // KW
        kw = t % KW
        jh, vh = _map(ih0[:, None] + kh[None, :] * dilH, H, MODE)
        jw, vw = _map(iw0[:, None] + kw[None, :] * dilW, W, MODE)
        a = tl.load(x_base[:, None] + c[None, :] * sxc + jh.to(tl.int64) * sxh + jw.to(tl.int64) * sxw,
                    mask=vh & vw & kmask[None, :], other=0.0)
        b = tl.load(Wt + oc[None, :] * swo + c[:, None] * swc + kh[:, None].to(tl.int64) * swh
                    + kw[:, None].to(tl.int64) * sww, mask=kmask[:, None], other=0.0)
        acc = _mma(acc, a, b, USE_DOT, PRECISION, WIDEN_BF16)
    if HAS_BIAS:
        acc += tl.load(Bias + oc * sb).to(acc.dtype)[None, :]
    if ACT != "none":
        slope = tl.cast(slope_hi, acc.dtype) + tl.cast(slope_lo, acc.dtype)
        acc = _act_fwd(acc, slope, ACT)
    offs = n[:, None] * syn + oc[None, :] * syc + oh[:, None].to(tl.int64) * syh + ow[:, None].to(tl.int64) * syw
    _store(Out + offs, acc, (rm[:, None] < M) & (rn[None, :] < Og))


def conv_fwd(input, weight, bias, stride, padding, dilation, groups, padding_mode, act="none", slope=0.01):
    """The conv_fwd op on Triton: see the module docstring."""
    pads, Ho, Wo = _check(input, weight, bias, stride, padding, dilation, groups, padding_mode, act)
    N, C, H, W = input.shape
    O, Cg, KH, KW = weight.shape
    out = _empty_like_format((N, O, Ho, Wo), input.dtype, input.device, _is_cl(input) or _is_cl(weight))
    Og = O // groups
    M = N * Ho * Wo
    if M == 0 or Og == 0:
        return out
    if Cg * KH * KW == 0:
        raise RuntimeError("conv: the weight has no input channels / taps")
    s_hi, s_lo = _split(float(slope))
    args = (input, weight, bias if bias is not None else weight, out,
            N, H, W, Ho, Wo, Cg, Og, KH, KW,
            *input.stride(), *weight.stride(), *out.stride(), bias.stride(0) if bias is not None else 0,
            stride[0], stride[1], pads[0], pads[2], dilation[0], dilation[1], s_hi, s_lo)

    def grid(cfg):
        return (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(Og, cfg["BLOCK_N"]), groups)

    _run(_fwd_kernel, grid, args, input.dtype, input.device,
         MODE=_MODE[padding_mode], HAS_BIAS=bias is not None, ACT=act)
    return out


# --------------------------------------------------------------------------
# grad_input: gather (zeros-mode geometry), then the fold for the other modes
# --------------------------------------------------------------------------
@triton.jit
def _dgrad_kernel(
    GO, Wt, GI,
    N, H, W, Ho, Wo, Cg, Og, KH, KW,
    sgn, sgc, sgh, sgw, swo, swc, swh, sww, sin, sic, sih, siw,
    strH, strW, padT, padL, dilH, dilW,
    FP64: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    M = N * H * W
    K = Og * KH * KW
    KHW = KH * KW
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m = rm % M
    n = (m // (H * W)).to(tl.int64)
    r = m % (H * W)
    ih = r // W
    iw = r % W
    cl = (g * Cg + rn % Cg).to(tl.int64)      # input channel
    th0 = ih + padT
    tw0 = iw + padL
    go_base = GO + n * sgn
    if FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = rk < K
        kk = rk % K
        o = (g * Og + kk // KHW).to(tl.int64)
        t = kk % KHW
        kh = t // KW
        kw = t % KW
        th = th0[:, None] - kh[None, :] * dilH
        tw = tw0[:, None] - kw[None, :] * dilW
        thc = tl.where(th >= 0, th, 0)
        twc = tl.where(tw >= 0, tw, 0)
        oh = thc // strH
        ow = twc // strW
        ok = (th >= 0) & (thc - oh * strH == 0) & (oh < Ho) & (tw >= 0) & (twc - ow * strW == 0) & (ow < Wo)
        a = tl.load(go_base[:, None] + o[None, :] * sgc + oh.to(tl.int64) * sgh + ow.to(tl.int64) * sgw,
                    mask=ok & kmask[None, :], other=0.0)
        b = tl.load(Wt + o[:, None] * swo + (rn % Cg).to(tl.int64)[None, :] * swc
                    + kh[:, None].to(tl.int64) * swh + kw[:, None].to(tl.int64) * sww,
                    mask=kmask[:, None], other=0.0)
        acc = _mma(acc, a, b, USE_DOT, PRECISION, WIDEN_BF16)
    offs = n[:, None] * sin + cl[None, :] * sic + ih[:, None].to(tl.int64) * sih + iw[:, None].to(tl.int64) * siw
    _store(GI + offs, acc, (rm[:, None] < M) & (rn[None, :] < Cg))


@triton.jit
def _fold_kernel(
    GP, GI, TabH, TabW,
    NC, C, H, W, Hp, Wp, TH, TW,
    sin, sic, sih, siw,
    BLOCK: tl.constexpr,
):
    """grad_input[n, c, ih, iw] = sum over the padded positions (ph, pw) that the padding
    mode maps onto (ih, iw) of the padded gradient GP [N*C, Hp, Wp] (contiguous)."""
    pid = tl.program_id(0)
    e = pid * BLOCK + tl.arange(0, BLOCK)
    emask = e < NC * H * W
    e = e % (NC * H * W)
    nc = (e // (H * W)).to(tl.int64)
    r = e % (H * W)
    ih = r // W
    iw = r % W
    acc = tl.zeros((BLOCK,), dtype=GP.dtype.element_ty)
    for t1 in range(0, TH):
        ph = tl.load(TabH + ih * TH + t1)
        for t2 in range(0, TW):
            pw = tl.load(TabW + iw * TW + t2)
            ok = (ph >= 0) & (pw >= 0)
            v = tl.load(GP + nc * (Hp * Wp) + tl.where(ok, ph, 0).to(tl.int64) * Wp + tl.where(ok, pw, 0),
                        mask=ok & emask, other=0.0)
            acc += v
    n = nc // C
    c = nc % C
    _store(GI + n * sin + c * sic + ih.to(tl.int64) * sih + iw.to(tl.int64) * siw, acc, emask)


def _fold_table(size: int, before: int, after: int, mode: str, device) -> torch.Tensor:
    """[size, T] int32: for each input coordinate, the padded coordinates mapped onto it (-1 = none)."""
    lists = [[] for _ in range(size)]
    for p in range(size + before + after):
        i = p - before
        if mode == "reflect":
            i = -i if i < 0 else i
            i = 2 * (size - 1) - i if i >= size else i
        elif mode == "replicate":
            i = min(max(i, 0), size - 1)
        elif mode == "circular":
            i = (i + size) % size
        lists[i].append(p)
    T = max(len(v) for v in lists)
    tab = [v + [-1] * (T - len(v)) for v in lists]
    return torch.tensor(tab, dtype=torch.int32, device=device), T


def _grad_input(go, weight, input, stride, pads, dilation, groups, mode, channels_last):
    N, C, H, W = input.shape
    O, Cg, KH, KW = weight.shape
    Ho, Wo = go.shape[2], go.shape[3]
    Og = O // groups
    gi = _empty_like_format((N, C, H, W), input.dtype, input.device, channels_last)
    if gi.numel() == 0:
        return gi
    if mode == "zeros":
        target, Hg, Wg, pt, pl = gi, H, W, pads[0], pads[2]
    else:  # the gradient of the padded input, in the accumulation type, folded back below
        Hg, Wg = H + pads[0] + pads[1], W + pads[2] + pads[3]
        acc_t = torch.float64 if input.dtype == torch.float64 else torch.float32
        target, pt, pl = torch.empty((N, C, Hg, Wg), dtype=acc_t, device=input.device), 0, 0
    M = N * Hg * Wg
    args = (go, weight, target, N, Hg, Wg, Ho, Wo, Cg, Og, KH, KW,
            *go.stride(), *weight.stride(), *target.stride(), stride[0], stride[1], pt, pl, dilation[0], dilation[1])

    def grid(cfg):
        return (triton.cdiv(M, cfg["BLOCK_M"]), triton.cdiv(Cg, cfg["BLOCK_N"]), groups)

    _run(_dgrad_kernel, grid, args, input.dtype, input.device)
    if mode != "zeros":
        th, TH = _fold_table(H, pads[0], pads[1], mode, input.device)
        tw, TW = _fold_table(W, pads[2], pads[3], mode, input.device)
        BLOCK = 64 if _interpreting() else 256
        total = N * C * H * W
        _launch(_fold_kernel)[(triton.cdiv(total, BLOCK),)](
            target, gi, th, tw, N * C, C, H, W, Hg, Wg, TH, TW, *gi.stride(), BLOCK=BLOCK)
    return gi


# --------------------------------------------------------------------------
# grad_weight and grad_bias: owner-computes reductions over N*Ho*Wo
# --------------------------------------------------------------------------
@triton.jit
def _wgrad_kernel(
    GO, X, GW,
    N, H, W, Ho, Wo, Cg, Og, KH, KW,
    sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
    strH, strW, padT, padL, dilH, dilW,
    MODE: tl.constexpr,
    FP64: tl.constexpr, USE_DOT: tl.constexpr, PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # rows: output channels of group g (BLOCK_M), columns: k = (c, kh, kw) (BLOCK_N),
    # reduction over r = (n, oh, ow) in BLOCK_K steps
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    R = N * Ho * Wo
    K = Cg * KH * KW
    KHW = KH * KW
    ro = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    oc = (g * Og + ro % Og).to(tl.int64)
    kk = rk % K
    c = (g * Cg + kk // KHW).to(tl.int64)
    t = kk % KHW
    kh = t // KW
    kw = t % KW
    if FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_K):
        rr = r0 + tl.arange(0, BLOCK_K)
        rmask = rr < R
        rw = rr % R
        n = (rw // (Ho * Wo)).to(tl.int64)
        q = rw % (Ho * Wo)
        oh = q // Wo
        ow = q % Wo
        a = tl.load(GO + oc[:, None] * sgc + n[None, :] * sgn + oh[None, :].to(tl.int64) * sgh
                    + ow[None, :].to(tl.int64) * sgw, mask=rmask[None, :], other=0.0)
        jh, vh = _map((oh * strH - padT)[:, None] + kh[None, :] * dilH, H, MODE)
        jw, vw = _map((ow * strW - padL)[:, None] + kw[None, :] * dilW, W, MODE)
        b = tl.load(X + n[:, None] * sxn + c[None, :] * sxc + jh.to(tl.int64) * sxh + jw.to(tl.int64) * sxw,
                    mask=vh & vw & rmask[:, None], other=0.0)
        acc = _mma(acc, a, b, USE_DOT, PRECISION, WIDEN_BF16)
    offs = oc[:, None] * K + kk[None, :].to(tl.int64)   # GW contiguous [O, Cg, kH, kW]
    _store(GW + offs, acc, (ro[:, None] < Og) & (rk[None, :] < K))


@triton.jit
def _bgrad_kernel(GO, GB, N, O, HW, Wo, sgn, sgc, sgh, sgw,
                  FP64: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    ro = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    omask = ro < O
    oc = (ro % O).to(tl.int64)
    R = N * HW
    if FP64:
        acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        rmask = rr < R
        rw = rr % R
        n = (rw // HW).to(tl.int64)
        q = rw % HW
        oh = (q // Wo).to(tl.int64)
        ow = (q % Wo).to(tl.int64)
        v = tl.load(GO + oc[:, None] * sgc + (n * sgn + oh * sgh + ow * sgw)[None, :], mask=rmask[None, :], other=0.0)
        acc += v.to(acc.dtype)
    _store(GB + ro, tl.sum(acc, axis=1), omask)


def conv_bwd(grad_output, input, weight, stride, padding, dilation, groups, padding_mode, output_mask):
    """The conv_bwd op on Triton: (grad_input, grad_weight, grad_bias), None where output_mask is False."""
    pads, Ho, Wo = _check(input, weight, None, stride, padding, dilation, groups, padding_mode)
    N, C, H, W = input.shape
    O, Cg, KH, KW = weight.shape
    if grad_output.dtype != input.dtype:
        raise RuntimeError(f"grad_output: expected dtype {input.dtype}, got {grad_output.dtype}")
    if tuple(grad_output.shape) != (N, O, Ho, Wo):
        raise RuntimeError(f"grad_output: expected size {[N, O, Ho, Wo]}, got {list(grad_output.shape)}")
    Og = O // groups
    cl = _is_cl(input) or _is_cl(weight)
    gi = gw = gb = None
    if output_mask[0]:
        gi = _grad_input(grad_output, weight, input, stride, pads, dilation, groups, padding_mode, cl)
    R = N * Ho * Wo
    if output_mask[1]:
        gw = _empty(tuple(weight.shape), weight.dtype, weight.device)
        if gw.numel():
            if R == 0:
                gw.zero_()
            else:
                K = Cg * KH * KW
                args = (grad_output, input, gw, N, H, W, Ho, Wo, Cg, Og, KH, KW,
                        *grad_output.stride(), *input.stride(), stride[0], stride[1], pads[0], pads[2],
                        dilation[0], dilation[1])

                def grid(cfg):
                    return (triton.cdiv(Og, cfg["BLOCK_M"]), triton.cdiv(K, cfg["BLOCK_N"]), groups)

                _run(_wgrad_kernel, grid, args, input.dtype, input.device, MODE=_MODE[padding_mode])
    if output_mask[2]:
        gb = _empty((O,), weight.dtype, weight.device)
        if O:
            if R == 0:
                gb.zero_()
            else:
                BN, BR = (16, 64) if _interpreting() else (32, 128)
                _launch(_bgrad_kernel)[(triton.cdiv(O, BN),)](
                    grad_output, gb, N, O, Ho * Wo, Wo, *grad_output.stride(),
                    FP64=input.dtype == torch.float64, BLOCK_N=BN, BLOCK_R=BR)
    return gi, gw, gb
