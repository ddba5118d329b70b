"""Triton 2-D pooling: max_pool2d (with int64 indices), avg_pool2d and
adaptive_avg_pool2d, forward and backward.

The kernels see the 4-D layout of csrc/ops.cpp's pool schemas (minitorch_ext/ops/pool.py
maps unbatched and 1-D pools onto it and registers these functions as ops): input
[N, C, H, W] with any strides; the output, the indices and grad_input keep
input.suggest_memory_format() (contiguous or channels_last). Semantics are those of
csrc/pool/pool_cpu.cpp, element for element:
    max: taps scanned row-major (ih outer, iw inner) from the first in-bounds one; a
      tap replaces the running max when `v > max || isnan(v)` (ties keep the first
      position, a NaN window reports its last NaN); index = ih*W + iw in the plane.
    avg: window [oh*sH - pH, +kH) x [...] clipped to the padded input gives the
      count_include_pad divisor, clipped to the input the summed taps and the other
      divisor; divisor_override replaces both; sum / divisor (0 for an empty window).
    adaptive avg: rows [floor(o*H/Ho), ceil((o+1)*H/Ho)), columns alike; sum / kh / kw.

Algorithm
    Forwards (_max_fwd_kernel, _avg_fwd_kernel, _adaptive_fwd_kernel): one program per
    BLOCK output elements, taken in the output's memory order (for channels_last the
    channel is the fastest index, so neighbouring lanes read neighbouring addresses);
    a loop over the kH x kW taps (adaptive: over the largest window of the call, masked
    per element), accumulating in float32 (float64 for double), one rounded store.
    Backwards, all deterministic and free of atomics:
      avg / adaptive (_avg_bwd_kernel, _adaptive_bwd_kernel): gather per input element:
        for avg the taps kh, kw give the outputs oh = (ih + pH - kh) / sH that see it
        (when the division is exact and in range), each contributing go / divisor(oh,
        ow); for adaptive the outputs that see row ih are exactly
        [floor(ih*Ho/H), ceil((ih+1)*Ho/H)), columns alike.
      max (_max_bwd_kernel): the op gets no window parameters (grad_output, input,
        indices), so a gather cannot enumerate the outputs that chose an element.
        Instead one program owns one (n, c) plane and walks its outputs in BLOCK
        chunks, in order: inside a chunk, equal indices are combined first (a
        BLOCK x BLOCK equality matrix; the first lane of each index adds the chunk's
        sum for it), so every address is written by one lane per chunk; a barrier
        separates the chunks. The sums go into a zeroed float32/float64 workspace
        plane that is rounded into grad_input at the end: one rounding per element.

Memory traffic
    Forward: each input element is read ~kH*kW/(sH*sW) times (from L1/L2: neighbouring
    lanes share taps), output (+ indices) written once. avg/adaptive backward: grad_output
    read ~kH*kW/(sH*sW) times, grad_input written once. max backward: grad_output and
    indices read once, a workspace of the input's size (float32) written ~once and read
    once, grad_input written once.

The trick
    Ownership instead of atomics: every output element of every kernel has exactly one
    program that writes it, so results are bitwise repeatable; for the max backward the
    in-chunk deduplication turns a scatter with collisions into a collision-free one.

Interpreter (TRITON_INTERPRET=1, the CPU tests): BLOCK = 64, bf16 stores rounded to
nearest even through kernels/_common.store. scripts/triton_conv_pool_compile_check.py
compiles every variant for sm_90 without a GPU; no GPU has run these yet (none was lent
to this slice): scripts/gpu_check.sh runs tests/test_pool_triton.py on cuda when one is.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import store as _store

_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _block() -> int:
    return 64 if _interpreting() else 256


def _empty(shape, dtype, device) -> torch.Tensor:
    try:
        from minitorch_ext import _poison
        return _poison.empty(shape, dtype=dtype, device=device)
    except Exception:  # noqa: BLE001
        return torch.empty(shape, dtype=dtype, device=device)


def _is_cl(t: torch.Tensor) -> bool:
    from torch._prims_common import suggest_memory_format
    return suggest_memory_format(t) == torch.channels_last


def _alloc4(shape, dtype, device, cl: bool) -> torch.Tensor:
    n, c, h, w = shape
    if cl:
        return _empty((n, h, w, c), dtype, device).permute(0, 3, 1, 2)
    return _empty((n, c, h, w), dtype, device)


def pool_out_size(size, k, pad, stride, dilation, ceil_mode):
    out = (size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check_input(x, op):
    if x.dim() != 4:
        raise RuntimeError(f"{op}: input: expected a 4-D tensor [N, C, H, W], got {x.dim()}-D of size "
                           f"{list(x.shape)}")
    if x.dtype not in _DTYPES:
        raise NotImplementedError(f"{op}: input: expected float32, float64 or bfloat16, got {x.dtype}")
    if any(s == 0 for s in x.shape[1:]):
        raise RuntimeError(f"{op}: input: expected non-zero sizes for C, H and W, got {list(x.shape)}")


def _geo(x, k, s, p, d, ceil_mode, op):
    _check_input(x, op)
    k, s, p, d = (list(map(int, v)) for v in (k, s, p, d))
    if not (len(k) == len(s) == len(p) == len(d) == 2):
        raise RuntimeError(f"{op}: kernel_size, stride, padding and dilation must have 2 values each")
    if min(k) <= 0:
        raise RuntimeError(f"{op}: kernel size should be greater than zero, but got kH: {k[0]} kW: {k[1]}")
    if min(s) <= 0:
        raise RuntimeError(f"{op}: stride should be greater than zero, but got dH: {s[0]} dW: {s[1]}")
    if min(d) <= 0:
        raise RuntimeError(f"{op}: dilation should be greater than zero, but got dilationH: {d[0]} dilationW: {d[1]}")
    for i in range(2):
        if p[i] < 0:
            raise RuntimeError(f"{op}: pad must be non-negative, but got pad: {p[i]}")
        if p[i] > ((k[i] - 1) * d[i] + 1) // 2:
            raise RuntimeError(f"{op}: pad should be at most half of effective kernel size, but got pad={p[i]}, "
                               f"kernel_size={k[i]} and dilation={d[i]}")
    N, C, H, W = x.shape
    Ho = pool_out_size(H, k[0], p[0], s[0], d[0], ceil_mode)
    Wo = pool_out_size(W, k[1], p[1], s[1], d[1], ceil_mode)
    if Ho < 1 or Wo < 1:
        raise RuntimeError(f"{op}: Given input size: ({C}x{H}x{W}). Calculated output size: ({C}x{Ho}x{Wo}). "
                           f"Output size is too small")
    return k, s, p, d, Ho, Wo


def _check_grad(go, x, Ho, Wo, op):
    N, C = x.shape[:2]
    if go.dim() != 4 or tuple(go.shape) != (N, C, Ho, Wo):
        raise RuntimeError(f"{op}: grad_output: expected size {[N, C, Ho, Wo]}, got {list(go.shape)}")
    if go.dtype != x.dtype:
        raise RuntimeError(f"{op}: grad_output: expected dtype {x.dtype}, got {go.dtype}")
    if go.device != x.device:
        raise RuntimeError(f"{op}: grad_output: expected a tensor on {x.device}, got one on {go.device}")


# --------------------------------------------------------------------------
# shared index decoding
# --------------------------------------------------------------------------
@triton.jit
def _decode(e, C, Ho, Wo, CL: tl.constexpr):
    """Flat element e in the (output) memory order -> (n, c, oh, ow)."""
    if CL:
        c = e % C
        t = e // C
        ow = t % Wo
        t = t // Wo
        oh = t % Ho
        n = t // Ho
    else:
        ow = e % Wo
        t = e // Wo
        oh = t % Ho
        t = t // Ho
        c = t % C
        n = t // C
    return n.to(tl.int64), c.to(tl.int64), oh, ow


# --------------------------------------------------------------------------
# max pool
# --------------------------------------------------------------------------
@triton.jit
def _max_fwd_kernel(X, Y, Ind, total, C, H, W, Ho, Wo, KH, KW, sH, sW, pH, pW, dH, dW,
                    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                    CL: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    emask = e < total
    n, c, oh, ow = _decode(e % total, C, Ho, Wo, CL)
    base = X + n * sxn + c * sxc
    if FP64:
        mv = tl.full((BLOCK,), float("-inf"), tl.float64)
    else:
        mv = tl.full((BLOCK,), float("-inf"), tl.float32)
    mi = tl.full((BLOCK,), -1, tl.int64)
    h0 = oh * sH - pH
    w0 = ow * sW - pW
    for kh in range(0, KH):
        ih = h0 + kh * dH
        okh = (ih >= 0) & (ih < H)
        for kw in range(0, KW):
            iw = w0 + kw * dW
            ok = okh & (iw >= 0) & (iw < W)
            v = tl.load(base + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=ok & emask,
                        other=float("-inf")).to(mv.dtype)
            take = ok & ((v > mv) | (v != v) | (mi < 0))
            mv = tl.where(take, v, mv)
            mi = tl.where(take, ih.to(tl.int64) * W + iw, mi)
    offs = n * syn + c * syc + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw
    _store(Y + offs, mv, emask)
    tl.store(Ind + offs, mi, mask=emask)


def max_pool2d_fwd(input, kernel_size, stride, padding, dilation, ceil_mode):
    k, s, p, d, Ho, Wo = _geo(input, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d_fwd")
    N, C, H, W = input.shape
    cl = _is_cl(input)
    y = _alloc4((N, C, Ho, Wo), input.dtype, input.device, cl)
    ind = _alloc4((N, C, Ho, Wo), torch.int64, input.device, cl)
    assert y.stride() == ind.stride()
    total = y.numel()
    if total:
        B = _block()
        _launch(_max_fwd_kernel)[(triton.cdiv(total, B),)](
            input, y, ind, total, C, H, W, Ho, Wo, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1],
            *input.stride(), *y.stride(), CL=cl, FP64=input.dtype == torch.float64, BLOCK=B)
    return y, ind


@triton.jit
def _max_bwd_kernel(GO, Ind, WS, GI, C, H, W, Ho, Wo,
                    sgn, sgc, sgh, sgw, sdn, sdc, sdh, sdw, sin_, sic, sih, siw,
                    BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)   # the (n, c) plane this program owns
    n = p // C
    c = p % C
    HW = H * W
    L = Ho * Wo
    ws = WS + p * HW                       # zeroed float32/float64 plane
    ar = tl.arange(0, BLOCK)
    for o0 in range(0, L, BLOCK):
        o = o0 + ar
        om = o < L
        oo = o % L
        oh = (oo // Wo).to(tl.int64)
        ow = (oo % Wo).to(tl.int64)
        idx = tl.load(Ind + n * sdn + c * sdc + oh * sdh + ow * sdw, mask=om, other=-1)
        g = tl.load(GO + n * sgn + c * sgc + oh * sgh + ow * sgw, mask=om, other=0.0).to(WS.dtype.element_ty)
        valid = om & (idx >= 0) & (idx < HW)
        idx = tl.where(valid, idx, -1)
        eq = (idx[:, None] == idx[None, :]) & valid[:, None] & valid[None, :]
        earlier = eq & (ar[None, :] < ar[:, None])
        leader = valid & (tl.sum(earlier.to(tl.int32), axis=1) == 0)
        s = tl.sum(tl.where(eq, g[None, :], 0.0), axis=1)
        tgt = ws + tl.where(leader, idx, 0)
        old = tl.load(tgt, mask=leader, other=0.0)
        tl.store(tgt, old + s, mask=leader)
        tl.debug_barrier()                 # this chunk's adds land before the next chunk reads
    for i0 in range(0, HW, BLOCK):
        i = i0 + ar
        im = i < HW
        ii = i % HW
        v = tl.load(ws + ii, mask=im, other=0.0)
        ih = (ii // W).to(tl.int64)
        iw = (ii % W).to(tl.int64)
        _store(GI + n * sin_ + c * sic + ih * sih + iw * siw, v, im)


def max_pool2d_bwd(grad_output, input, indices):
    _check_input(input, "max_pool2d_bwd")
    if indices.dtype != torch.int64 or indices.shape != grad_output.shape:
        raise RuntimeError(f"max_pool2d_bwd: indices: expected an int64 tensor of grad_output's shape "
                           f"{list(grad_output.shape)}, got {indices.dtype} of shape {list(indices.shape)}")
    Ho = grad_output.shape[2] if grad_output.dim() == 4 else -1
    Wo = grad_output.shape[3] if grad_output.dim() == 4 else -1
    _check_grad(grad_output, input, Ho, Wo, "max_pool2d_bwd")
    N, C, H, W = input.shape
    gi = _alloc4((N, C, H, W), input.dtype, input.device, _is_cl(input))
    if gi.numel() == 0:
        return gi
    if indices.numel() and (bool((indices < 0).any()) or bool((indices >= H * W).any())):
        raise RuntimeError(f"max_pool2d_bwd: indices: found an index outside [0, H*W) = [0, {H * W})")
    acc_t = torch.float64 if input.dtype == torch.float64 else torch.float32
    ws = torch.zeros((N * C, H * W), dtype=acc_t, device=input.device)
    B = 64
    _launch(_max_bwd_kernel)[(N * C,)](
        grad_output, indices, ws, gi, C, H, W, Ho, Wo,
        *grad_output.stride(), *indices.stride(), *gi.stride(), BLOCK=B)
    return gi


# --------------------------------------------------------------------------
# avg pool
# --------------------------------------------------------------------------
@triton.jit
def _avg_div(oh, ow, H, W, KH, KW, sH, sW, pH, pW, COUNT_PAD: tl.constexpr, div_override):
    """(window start row/col, clipped bounds, divisor; 0 = empty window) of output (oh, ow)."""
    hs = oh * sH - pH
    wss = ow * sW - pW
    he = tl.minimum(hs + KH, H + pH)
    we = tl.minimum(wss + KW, W + pW)
    pool = (he - hs) * (we - wss)
    hs2 = tl.maximum(hs, 0)
    ws2 = tl.maximum(wss, 0)
    he2 = tl.minimum(he, H)
    we2 = tl.minimum(we, W)
    if COUNT_PAD:
        div = pool
    else:
        div = (he2 - hs2) * (we2 - ws2)
    div = tl.where(div_override > 0, div_override, div)
    div = tl.where((hs2 >= he2) | (ws2 >= we2), 0, div)
    return hs, wss, div


@triton.jit
def _avg_fwd_kernel(X, Y, total, C, H, W, Ho, Wo, KH, KW, sH, sW, pH, pW, div_override,
                    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                    COUNT_PAD: tl.constexpr, CL: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    emask = e < total
    n, c, oh, ow = _decode(e % total, C, Ho, Wo, CL)
    base = X + n * sxn + c * sxc
    hs, wss, div = _avg_div(oh, ow, H, W, KH, KW, sH, sW, pH, pW, COUNT_PAD, div_override)
    if FP64:
        acc = tl.zeros((BLOCK,), tl.float64)
    else:
        acc = tl.zeros((BLOCK,), tl.float32)
    for kh in range(0, KH):
        ih = hs + kh
        okh = (ih >= 0) & (ih < H)
        for kw in range(0, KW):
            iw = wss + kw
            ok = okh & (iw >= 0) & (iw < W)
            acc += tl.load(base + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=ok & emask,
                           other=0.0).to(acc.dtype)
    out = tl.where(div > 0, acc / tl.maximum(div, 1).to(acc.dtype), 0.0)
    _store(Y + n * syn + c * syc + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw, out, emask)


@triton.jit
def _avg_bwd_kernel(GO, GI, total, C, H, W, Ho, Wo, KH, KW, sH, sW, pH, pW, div_override,
                    sgn, sgc, sgh, sgw, sin_, sic, sih, siw,
                    COUNT_PAD: tl.constexpr, CL: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    emask = e < total
    n, c, ih, iw = _decode(e % total, C, H, W, CL)
    base = GO + n * sgn + c * sgc
    if FP64:
        acc = tl.zeros((BLOCK,), tl.float64)
    else:
        acc = tl.zeros((BLOCK,), tl.float32)
    for kh in range(0, KH):
        th = ih + pH - kh
        thc = tl.where(th >= 0, th, 0)
        oh = thc // sH
        okh = (th >= 0) & (thc - oh * sH == 0) & (oh < Ho)
        for kw in range(0, KW):
            tw = iw + pW - kw
            twc = tl.where(tw >= 0, tw, 0)
            ow = twc // sW
            ok = okh & (tw >= 0) & (twc - ow * sW == 0) & (ow < Wo) & emask
            hs, wss, div = _avg_div(oh, ow, H, W, KH, KW, sH, sW, pH, pW, COUNT_PAD, div_override)
            ok = ok & (div > 0)
            g = tl.load(base + oh.to(tl.int64) * sgh + ow.to(tl.int64) * sgw, mask=ok, other=0.0).to(acc.dtype)
            acc += tl.where(ok, g / tl.maximum(div, 1).to(acc.dtype), 0.0)
    _store(GI + n * sin_ + c * sic + ih.to(tl.int64) * sih + iw.to(tl.int64) * siw, acc, emask)


def _avg_geo(input, kernel_size, stride, padding, ceil_mode, divisor_override, op):
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError(f"{op}: divisor must be not zero")
    return _geo(input, kernel_size, stride, padding, [1, 1], ceil_mode, op)


def avg_pool2d_fwd(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    k, s, p, _, Ho, Wo = _avg_geo(input, kernel_size, stride, padding, ceil_mode, divisor_override,
                                  "avg_pool2d_fwd")
    N, C, H, W = input.shape
    cl = _is_cl(input)
    y = _alloc4((N, C, Ho, Wo), input.dtype, input.device, cl)
    total = y.numel()
    if total:
        B = _block()
        _launch(_avg_fwd_kernel)[(triton.cdiv(total, B),)](
            input, y, total, C, H, W, Ho, Wo, k[0], k[1], s[0], s[1], p[0], p[1],
            int(divisor_override) if divisor_override is not None else 0, *input.stride(), *y.stride(),
            COUNT_PAD=bool(count_include_pad), CL=cl, FP64=input.dtype == torch.float64, BLOCK=B)
    return y


def avg_pool2d_bwd(grad_output, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
    k, s, p, _, Ho, Wo = _avg_geo(input, kernel_size, stride, padding, ceil_mode, divisor_override,
                                  "avg_pool2d_bwd")
    _check_grad(grad_output, input, Ho, Wo, "avg_pool2d_bwd")
    N, C, H, W = input.shape
    cl = _is_cl(input)
    gi = _alloc4((N, C, H, W), input.dtype, input.device, cl)
    total = gi.numel()
    if total:
        B = _block()
        _launch(_avg_bwd_kernel)[(triton.cdiv(total, B),)](
            grad_output, gi, total, C, H, W, Ho, Wo, k[0], k[1], s[0], s[1], p[0], p[1],
            int(divisor_override) if divisor_override is not None else 0, *grad_output.stride(), *gi.stride(),
            COUNT_PAD=bool(count_include_pad), CL=cl, FP64=input.dtype == torch.float64, BLOCK=B)
    return gi


# --------------------------------------------------------------------------
# adaptive avg pool
# --------------------------------------------------------------------------
@triton.jit
def _adaptive_fwd_kernel(X, Y, total, C, H, W, Ho, Wo, MH, MW,
                         sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                         CL: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    emask = e < total
    n, c, oh, ow = _decode(e % total, C, Ho, Wo, CL)
    base = X + n * sxn + c * sxc
    h0 = (oh * H) // Ho
    h1 = ((oh + 1) * H + Ho - 1) // Ho
    w0 = (ow * W) // Wo
    w1 = ((ow + 1) * W + Wo - 1) // Wo
    if FP64:
        acc = tl.zeros((BLOCK,), tl.float64)
    else:
        acc = tl.zeros((BLOCK,), tl.float32)
    for th in range(0, MH):
        ih = h0 + th
        okh = ih < h1
        for tw in range(0, MW):
            iw = w0 + tw
            ok = okh & (iw < w1) & emask
            acc += tl.load(base + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw, mask=ok, other=0.0).to(acc.dtype)
    out = acc / (h1 - h0).to(acc.dtype) / (w1 - w0).to(acc.dtype)
    _store(Y + n * syn + c * syc + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw, out, emask)


@triton.jit
def _adaptive_bwd_kernel(GO, GI, total, C, H, W, Ho, Wo, MH, MW,
                         sgn, sgc, sgh, sgw, sin_, sic, sih, siw,
                         CL: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    e = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    emask = e < total
    n, c, ih, iw = _decode(e % total, C, H, W, CL)
    base = GO + n * sgn + c * sgc
    # the outputs whose window holds row ih: [floor(ih*Ho/H), ceil((ih+1)*Ho/H))
    o0 = (ih * Ho) // H
    o1 = ((ih + 1) * Ho + H - 1) // H
    q0 = (iw * Wo) // W
    q1 = ((iw + 1) * Wo + W - 1) // W
    if FP64:
        acc = tl.zeros((BLOCK,), tl.float64)
    else:
        acc = tl.zeros((BLOCK,), tl.float32)
    for th in range(0, MH):
        oh = o0 + th
        okh = oh < o1
        kh = (((oh + 1) * H + Ho - 1) // Ho - (oh * H) // Ho).to(acc.dtype)
        for tw in range(0, MW):
            ow = q0 + tw
            ok = okh & (ow < q1) & emask
            kw = (((ow + 1) * W + Wo - 1) // Wo - (ow * W) // Wo).to(acc.dtype)
            g = tl.load(base + oh.to(tl.int64) * sgh + ow.to(tl.int64) * sgw, mask=ok, other=0.0).to(acc.dtype)
            acc += tl.where(ok, g / kh / kw, 0.0)
    _store(GI + n * sin_ + c * sic + ih.to(tl.int64) * sih + iw.to(tl.int64) * siw, acc, emask)


def _max_span(size: int, out: int) -> int:
    """The longest window [floor(o*size/out), ceil((o+1)*size/out)) over o < out."""
    return max(((o + 1) * size + out - 1) // out - (o * size) // out for o in range(out)) if out else 0


def adaptive_avg_pool2d_fwd(input, output_size):
    _check_input(input, "adaptive_avg_pool2d_fwd")
    if len(output_size) != 2:
        raise RuntimeError("adaptive_avg_pool2d_fwd: output_size must be 2")
    Ho, Wo = int(output_size[0]), int(output_size[1])
    if Ho < 0 or Wo < 0:
        raise RuntimeError(f"adaptive_avg_pool2d_fwd: elements of output_size must be greater than or equal to 0 "
                           f"but received {{{Ho}, {Wo}}}")
    N, C, H, W = input.shape
    cl = _is_cl(input)
    y = _alloc4((N, C, Ho, Wo), input.dtype, input.device, cl)
    total = y.numel()
    if total:
        B = _block()
        _launch(_adaptive_fwd_kernel)[(triton.cdiv(total, B),)](
            input, y, total, C, H, W, Ho, Wo, _max_span(H, Ho), _max_span(W, Wo), *input.stride(), *y.stride(),
            CL=cl, FP64=input.dtype == torch.float64, BLOCK=B)
    return y


def adaptive_avg_pool2d_bwd(grad_output, input):
    _check_input(input, "adaptive_avg_pool2d_bwd")
    if grad_output.dim() != 4:
        raise RuntimeError(f"adaptive_avg_pool2d_bwd: grad_output: expected a 4-D tensor, got "
                           f"{list(grad_output.shape)}")
    Ho, Wo = grad_output.shape[2], grad_output.shape[3]
    _check_grad(grad_output, input, Ho, Wo, "adaptive_avg_pool2d_bwd")
    N, C, H, W = input.shape
    cl = _is_cl(input)
    gi = _alloc4((N, C, H, W), input.dtype, input.device, cl)
    total = gi.numel()
    if total == 0:
        return gi
    if grad_output.numel() == 0:
        return gi.zero_()
    B = _block()
    _launch(_adaptive_bwd_kernel)[(triton.cdiv(total, B),)](
        grad_output, gi, total, C, H, W, Ho, Wo, _max_span(Ho, H), _max_span(Wo, W), *grad_output.stride(),
        *gi.stride(), CL=cl, FP64=input.dtype == torch.float64, BLOCK=B)
    return gi
