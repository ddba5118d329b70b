"""Triton FlashAttention-2: fused scaled-dot-product attention, forward and
backward, plus the probabilities themselves (attention_weights).

The kernels see the normalized 4-D layout of csrc/ops.cpp (the attention
family's schema; minitorch_ext/ops/attention.py maps torch's sdpa arguments
onto it and registers these functions as ops):

    query [B, Hq, Lq, D], key [B, Hkv, Lk, D], value [B, Hkv, Lk, Dv], any strides
    attn_mask None or [B, Hq, Lq, Lk] (any strides, stride 0 = broadcast), bool
    (True = takes part) or query's dtype (added to the scaled scores)
    S = scale * Q K^T + mask, causal keeps key j <= query i (top-left aligned),
    P = softmax(S) per row; a row with no key left: output 0, logsumexp +inf,
    zero gradients. Dropout: element (b, h, i, j) of P dropped iff word c & 3 of
    Philox4x32-10(key = seed, counter = (n lo, n hi, 0, 0)) < thresh, n = c >> 2,
    c = ((b*Hq + h)*Lq + i)*Lk + j, thresh = min(floor(p * 2^32), 2^32 - 1)
    (p == 1 drops everything); kept elements scaled by 1/(1-p).
    minitorch_ext/_philox.py is the NumPy reference; tl.philox(seed, c0, c1, 0, 0)
    is the same generator (its four words), so the mask is regenerated, never stored.

Algorithm
    Forward (_fwd_kernel): one program per (query block of BLOCK_M rows, b*Hq + h).
    The Q tile stays in registers; the program walks the key/value blocks of
    head h // (Hq / Hkv) (GQA/MQA by index arithmetic: no K/V copy), computes
    S = Q K^T * scale (+ mask, loaded through its strides), and keeps the
    online softmax state (running max m, running sum l, unnormalised output
    acc) in registers; scores are scaled by log2(e) so exp2 is used. Causal:
    key blocks past the last row of the query block are skipped entirely (the
    loop ends at min(Lk, (m+1)*BLOCK_M)); the diagonal blocks use a predicate.
    Every exclusion (causal, bool mask, key padding) is a tl.where to -inf on
    the scaled scores, never a multiply, so scale <= 0 cannot make 0*inf NaNs;
    a row whose running max is still -inf uses 0 as its shift (no -inf - -inf).
    At the end out = acc / l (0 where l == 0) and lse = m + log(l) (+inf where
    l == 0), both stored once. Dropout: l sums the undropped P (the softmax
    normaliser), acc the dropped-and-rescaled P @ V.
    Backward, FA2 style, three kernels, no atomics (deterministic):
      _bwd_pre_kernel:  Delta = rowsum(dO * O) per query row (float32/float64);
      _bwd_dkdv_kernel: one program per (key block, b*Hkv + hk). K, V tiles and
        the dK, dV accumulators stay in registers; it loops over the group's
        Hq/Hkv query heads and over their query blocks (causal: starting at the
        first block that can see the key block), recomputes P = exp(S - lse),
        the dropout mask, dP = dO V^T, dS = P * (dP - Delta), and accumulates
        dV += P_drop^T dO, dK += scale * dS^T Q. GQA sums come from that loop.
      _bwd_dq_kernel:   one program per (query block, b*Hq + h): the same
        recomputation over the key blocks, dQ += scale * dS K, and dS itself
        stored as grad_attn_mask when asked (zero-filled first if causal: the
        skipped blocks are exactly 0).
    attention_weights (_weights_kernel): P = exp(S - lse) per tile, no dropout.

Memory traffic (element size s, per (b, h))
    Forward: Q and O once (s*Lq*(D+Dv)), K and V once per query block
    (s*Lk*(D+Dv)*ceil(Lq/BLOCK_M), halved by causal skipping; served mostly by
    L2), the mask (when given) once, lse 4*Lq. Nothing of size Lq*Lk is ever
    written: O(L) extra memory. Backward: Q, dO, lse, Delta read once per key
    block in dK/dV and K, V once per query block in dQ; P is recomputed twice
    (once per kernel) instead of being stored, dS written only when asked.

The trick that makes it fast
    The online softmax (rescaling acc by exp2(m_old - m_new)) lets the whole
    row of S live only one BLOCK_N slice at a time, so QK^T and PV are two
    back-to-back tensor-core MMAs on register/shared tiles and the kernel is
    compute bound; the 1/l normalisation is deferred to the end (one divide
    per output element instead of per step); exp2 of log2(e)-prescaled scores
    maps to the MUFU ex2 instruction; causal block skipping halves the work.
    In backward, keeping dK/dV in registers across the query loop (and looping
    over the GQA group inside the program) avoids the atomics of the FA1/FA2
    "one kernel" formulation at the cost of recomputing P once more in dQ.

Numerics
    float32/float16/bfloat16 accumulate in float32 (16-bit: P and dS rounded
    to the input dtype before their MMA, as FlashAttention does), float64 in
    float64. scale and 1/(1-p) reach the kernel as float32 hi + lo pairs,
    re-added in the accumulation type (float64 sees them to ~2^-48).
    float64: tl.dot is not used at all. A float64 tl.dot may not compile on
    every GPU/Triton, so the float64 path (FP64=True) computes every product
    as tl.sum of a broadcast [M, K, N] product (_mm) and uses tl.exp/tl.log
    instead of exp2/log2 (no fp64 ex2 instruction): slow, small blocks, and
    only meant for gradcheck; it runs the same way in the interpreter and on
    a GPU.

Interpreter (TRITON_INTERPRET=1, the CPU tests)
    * bf16 tl.dot is wrong there (triton#11584): bf16 tiles are widened to
      float32 before tl.dot (WIDEN_BF16), and P/dS are rounded to bf16 values
      with kernels/_common.rtne_bf16 (what the compiled conversion does)
      instead of a truncating .to(bfloat16); stores go through _common.store.
    * 16 x 16 blocks (_INTERP_BLOCK), no autotuning.

GPU: the forward is a small triton.autotune (keyed on Lq, Lk, D, Dv and the
flags; MINITORCH_EXT_TRITON_AUTOTUNE=0 uses one fixed config), the backward
uses fixed configs. Checked without a GPU by tests/test_attention_triton.py
(interpreter) and `scripts/gpu_attention_triton.py --compile-only` (compiles
every kernel variant for sm_90); on a lent GPU by scripts/gpu_attention_triton.py.
"""
from __future__ import annotations

import functools
import math
import os
import struct

import torch
import triton
import triton.language as tl

from ._common import interpreting as _interpreting
from ._common import launch as _launch
from ._common import rtne_bf16
from ._common import store as _store

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_INTERP_BLOCK = 16  # BLOCK_M = BLOCK_N under the interpreter (every test shape spans several blocks)

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# --------------------------------------------------------------------------
# host helpers
# --------------------------------------------------------------------------
def _empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, NaN-filled when the checker's poison switch is on."""
    try:
        from minitorch_ext import _poison
        return _poison.empty(shape, dtype=dtype, device=device)
    except Exception:  # noqa: BLE001  (no built extension: plain empty)
        return torch.empty(shape, dtype=dtype, device=device)


def _f32(x: float) -> float:
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _split(x: float) -> tuple[float, float]:
    """x as hi + lo, both float32-representable."""
    hi = _f32(x)
    lo = x - hi
    if not math.isfinite(lo):
        lo = 0.0
    return hi, _f32(lo)


def _fp32_precision() -> str:
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _autotune_on() -> bool:
    return os.environ.get("MINITORCH_EXT_TRITON_AUTOTUNE", "1") != "0"


def _check_inputs(name, query, key, value=None):
    for n, t in (("query", query), ("key", key)) + ((("value", value),) if value is not None else ()):
        if t.dim() != 4:
            raise RuntimeError(f"{name}: {n} must be 4-D [B, H, L, D], got {t.dim()}-D")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: {n} must be float32, float64, bfloat16 or float16, got {t.dtype}")
        if t.dtype != query.dtype:
            raise TypeError(f"{name}: {n} has dtype {t.dtype}, query has {query.dtype}")
        if t.device != query.device:
            raise RuntimeError(f"{name}: {n} is on {t.device}, query on {query.device}")
    B, Hq, Lq, D = query.shape
    if key.shape[0] != B or key.shape[3] != D:
        raise RuntimeError(f"{name}: key {list(key.shape)} does not fit query {list(query.shape)}")
    Hkv, Lk = key.shape[1], key.shape[2]
    if Hkv == 0 and Hq != 0 or (Hkv and Hq % Hkv):
        raise RuntimeError(f"{name}: query heads ({Hq}) must be a multiple of key heads ({Hkv})")
    if value is not None and (value.shape[0] != B or value.shape[1] != Hkv or value.shape[2] != Lk):
        raise RuntimeError(f"{name}: value {list(value.shape)} does not fit key {list(key.shape)}")


def _mask_args(attn_mask, query, B, Hq, Lq, Lk):
    """(tensor, strides, MASK_KIND): 0 none, 1 bool (read as uint8), 2 additive."""
    if attn_mask is None:
        return query, (0, 0, 0, 0), 0
    m = attn_mask.expand(B, Hq, Lq, Lk)  # a no-op view for the normalized layout
    if m.dtype == torch.bool:
        m = m.view(torch.uint8)
        kind = 1
    elif m.dtype == query.dtype:
        kind = 2
    else:
        raise TypeError(f"attention: attn_mask must be bool or {query.dtype}, got {attn_mask.dtype}")
    if m.device != query.device:
        raise RuntimeError(f"attention: attn_mask is on {m.device}, query on {query.device}")
    return m, tuple(m.stride()), kind


def _dropout_args(dropout_p: float, seed: int):
    """(DROPOUT, seed as an unsigned 64-bit int, thresh, inv_keep hi, lo)."""
    p = float(dropout_p)
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"attention: dropout_p must be in [0, 1], got {p}")
    if p == 0.0:
        return False, 0, 0, 1.0, 0.0
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF  # non-negative: Triton types it i32/i64/u64, all zero-extended
    if p >= 1.0:
        return True, seed, 1 << 32, 0.0, 0.0  # every uint32 word is < 2^32: nothing kept
    thresh = min(int(p * 4294967296.0), 4294967295)
    hi, lo = _split(1.0 / (1.0 - p))
    return True, seed, thresh, hi, lo


def _blocks_d(D, Dv, fp64):
    # tl.dot wants every dimension >= 16; the float64 FMA path only a power of two
    lo = 1 if fp64 else 16
    return max(lo, triton.next_power_of_2(max(D, 1))), max(lo, triton.next_power_of_2(max(Dv, 1)))


# GPU configs: (BLOCK_M, BLOCK_N, num_warps, num_stages)
_FWD_CONFIGS = {
    "16": [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3)],
    "32": [(64, 64, 4, 2), (64, 32, 4, 3)],
}
_FWD_FIXED = {"16": (128, 64, 4, 3), "32": (64, 64, 4, 2), "64": (16, 16, 4, 1)}
_BWD_FIXED = {  # (dkdv BLOCK_M, BLOCK_N, dq BLOCK_M, BLOCK_N, num_warps, num_stages)
    "16": (32, 64, 64, 32, 4, 2),
    "32": (32, 64, 64, 32, 4, 2),
    "64": (16, 16, 16, 16, 4, 1),
}


def _cls(dtype) -> str:
    return "64" if dtype == torch.float64 else ("32" if dtype == torch.float32 else "16")


# --------------------------------------------------------------------------
# device helpers
# --------------------------------------------------------------------------
# Under the interpreter every call of a nested @triton.jit function re-patches
# triton.language (~5 ms a call, several calls per loop step): there the helpers
# below are plain Python functions, which the interpreted kernel calls with the
# same (already patched) tl. Compiled kernels get ordinary @triton.jit helpers.
_helper = (lambda fn: fn) if _interpreting() else triton.jit


@_helper
def _mm(a, b, FP64: tl.constexpr, PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr):
    """a [M, K] @ b [K, N] in the accumulation type. FP64: no tl.dot (see the
    module docstring): the [M, K, N] broadcast product summed over K."""
    if FP64:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        if WIDEN_BF16:  # interpreter only (triton#11584): exact, a bf16 product fits in float32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, b, input_precision=PRECISION, out_dtype=tl.float32)


@_helper
def _lowp(x, like, WIDEN_BF16: tl.constexpr):
    """x rounded to the dtype of `like` (a 16-bit operand) before an MMA. Under
    the interpreter's bf16 path: bf16 values kept as float32 (rounded to nearest,
    as compiled code does)."""
    if WIDEN_BF16:
        return rtne_bf16(x.to(tl.float32))
    else:
        return x.to(like.dtype)


@_helper
def _exp2(x, FP64: tl.constexpr):
    if FP64:
        return tl.exp(x * 0.6931471805599453)
    else:
        return tl.exp2(x)


@_helper
def _log2(x, FP64: tl.constexpr):
    if FP64:
        return tl.log(x) * 1.4426950408889634
    else:
        return tl.log2(x)


@_helper
def _scores(s, offs_m, offs_n, Lq, Lk, Mask, mbase, smm, smn, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr):
    """Scaled scores s [BM, BN] -> + additive mask, -inf where a key does not
    take part (padding, bool mask, causal). Predicates only (no 0*inf)."""
    valid = (offs_n < Lk)[None, :] & (offs_m >= 0)[:, None]
    if MASK_KIND != 0:
        inb = (offs_m < Lq)[:, None] & (offs_n < Lk)[None, :]
        mp = Mask + mbase + offs_m[:, None].to(tl.int64) * smm + offs_n[None, :].to(tl.int64) * smn
        if MASK_KIND == 1:
            valid = valid & (tl.load(mp, mask=inb, other=0) != 0)
        else:
            s = s + tl.load(mp, mask=inb, other=0.0).to(s.dtype)
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    return tl.where(valid, s, float("-inf"))


@_helper
def _keep(seed, thresh, bh, offs_m, offs_n, Lq, Lk):
    """The dropout keep mask [BM, BN] of rows offs_m, keys offs_n of head bh = b*Hq + h."""
    c = (bh.to(tl.int64) * Lq + offs_m[:, None].to(tl.int64)) * Lk + offs_n[None, :].to(tl.int64)
    n = c >> 2  # element c: word c & 3 of the evaluation at counter c >> 2
    c0 = (n & 0xFFFFFFFF).to(tl.uint32)
    c1 = (n >> 32).to(tl.uint32)
    z = c0 * 0
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, z, z)
    w = c & 3
    r = tl.where(w == 0, r0, tl.where(w == 1, r1, tl.where(w == 2, r2, r3)))
    return r.to(tl.int64) >= thresh


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------
@triton.jit
def _fwd_kernel(
    Q, K, V, Mask, Out, Lse,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smh, smm, smn,
    Hq, GROUP, Lq, Lk, D, Dv,
    scale_hi, scale_lo, seed, thresh, ik_hi, ik_lo,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, FP64: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // GROUP
    ACC = Lse.dtype.element_ty  # float32, or float64 for float64 inputs
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    inv_keep = tl.cast(ik_hi, ACC) + tl.cast(ik_lo, ACC)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Lq
    qbase = b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    kbase = b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    vbase = b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    mbase = b.to(tl.int64) * smb + h.to(tl.int64) * smh
    q = tl.load(Q + qbase + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), ACC)
    l_i = tl.zeros((BLOCK_M,), ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), ACC)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, (pid_m + 1) * BLOCK_M)  # later key blocks are all j > i: skipped
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Lk
        kt = tl.load(K + kbase + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=col_ok[None, :] & (offs_d < D)[:, None], other=0.0)
        v = tl.load(V + vbase + offs_n[:, None] * svn + offs_dv[None, :] * svd,
                    mask=col_ok[:, None] & (offs_dv < Dv)[None, :], other=0.0)
        s = _mm(q, kt, FP64, PRECISION, WIDEN_BF16) * scale
        s = _scores(s, offs_m, offs_n, Lq, Lk, Mask, mbase, smm, smn, MASK_KIND, CAUSAL) * 1.4426950408889634
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: any finite shift
        p = _exp2(s - m_safe[:, None], FP64)
        alpha = _exp2(m_i - m_safe, FP64)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _keep(seed, thresh, bh, offs_m, offs_n, Lq, Lk)
            p = tl.where(keep, p * inv_keep, 0.0)
        if FP64:
            pv = _mm(p, v, FP64, PRECISION, WIDEN_BF16)
        else:
            pv = _mm(_lowp(p, v, WIDEN_BF16), v, FP64, PRECISION, WIDEN_BF16)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), (m_i + _log2(tl.where(empty, 1.0, l_i), FP64)) * 0.6931471805599453)
    _store(Out + bh.to(tl.int64) * Lq * Dv + offs_m[:, None] * Dv + offs_dv[None, :], out,
           row_ok[:, None] & (offs_dv < Dv)[None, :])
    tl.store(Lse + bh.to(tl.int64) * Lq + offs_m, lse, mask=row_ok)


_FWD_ARGS = ("Lq", "Lk", "D", "Dv", "MASK_KIND", "CAUSAL", "DROPOUT", "PRECISION")


@functools.lru_cache(maxsize=None)
def _fwd_autotuned(cls: str):
    cfgs = [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn), num_warps=w, num_stages=st)
            for bm, bn, w, st in _FWD_CONFIGS[cls]]
    return triton.autotune(configs=cfgs, key=list(_FWD_ARGS))(_fwd_kernel)


def attention_fwd(query, key, value, attn_mask, dropout_p: float, is_causal: bool, scale: float, seed: int):
    """(output [B, Hq, Lq, Dv] in query's dtype, logsumexp [B, Hq, Lq] float32/float64), contiguous."""
    _check_inputs("attention_fwd", query, key, value)
    B, Hq, Lq, D = query.shape
    Hkv, Lk, Dv = key.shape[1], key.shape[2], value.shape[3]
    dtype, dev = query.dtype, query.device
    fp64 = dtype == torch.float64
    out = _empty((B, Hq, Lq, Dv), dtype, dev)
    lse = _empty((B, Hq, Lq), torch.float64 if fp64 else torch.float32, dev)
    if B * Hq * Lq == 0:
        return out, lse
    mask, ms, kind = _mask_args(attn_mask, query, B, Hq, Lq, Lk)
    drop, seed_u, thresh, ik_hi, ik_lo = _dropout_args(dropout_p, seed)
    s_hi, s_lo = _split(float(scale))
    BD, BDV = _blocks_d(D, Dv, fp64)
    args = (query, key, value, mask, out, lse, *query.stride(), *key.stride(), *value.stride(), *ms,
            Hq, Hq // Hkv, Lq, Lk, D, Dv, s_hi, s_lo, seed_u, thresh, ik_hi, ik_lo)
    cls = _cls(dtype)
    flags = dict(MASK_KIND=kind, CAUSAL=bool(is_causal), DROPOUT=drop, FP64=fp64,
                 PRECISION=_fp32_precision() if dtype == torch.float32 else ("ieee" if fp64 else None),
                 WIDEN_BF16=_interpreting() and dtype == torch.bfloat16, BLOCK_D=BD, BLOCK_DV=BDV)

    def grid(meta):
        return (triton.cdiv(Lq, meta["BLOCK_M"]), B * Hq)

    if _interpreting():
        _launch(_fwd_kernel)[grid](*args, **flags, BLOCK_M=_INTERP_BLOCK, BLOCK_N=_INTERP_BLOCK)
    elif cls != "64" and _autotune_on():
        _launch(_fwd_autotuned(cls))[grid](*args, **flags)
    else:
        bm, bn, w, st = _FWD_FIXED[cls]
        _launch(_fwd_kernel)[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)
    return out, lse


# --------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------
@triton.jit
def _bwd_pre_kernel(O, DO, Delta, sob, soh, som, sod, sdb, sdh, sdm, sdd, Hq, Lq, Dv,
                    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    ACC = Delta.dtype.element_ty
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    msk = (offs_m < Lq)[:, None] & (offs_dv < Dv)[None, :]
    o = tl.load(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * som + offs_dv[None, :] * sod,
                mask=msk, other=0.0).to(ACC)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sdm + offs_dv[None, :] * sdd,
                 mask=msk, other=0.0).to(ACC)
    tl.store(Delta + bh.to(tl.int64) * Lq + offs_m, tl.sum(o * do, 1), mask=offs_m < Lq)


@_helper
def _probs(s, lse, FP64: tl.constexpr):
    """P = exp(S - lse) from masked scaled scores s and the forward's lse
    (+inf on empty rows: P = 0 there, no NaN)."""
    p = _exp2(s * 1.4426950408889634 - lse[:, None] * 1.4426950408889634, FP64)
    return tl.where(s == float("-inf"), 0.0, p)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, Mask, DO, Lse, Delta, DK, DV,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smh, smm, smn,
    sdb, sdh, sdm, sdd,
    Hq, GROUP, Lq, Lk, D, Dv,
    scale_hi, scale_lo, seed, thresh, ik_hi, ik_lo,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, FP64: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    Hkv = Hq // GROUP
    b = bhk // Hkv
    hk = bhk % Hkv
    ACC = Delta.dtype.element_ty
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    inv_keep = tl.cast(ik_hi, ACC) + tl.cast(ik_lo, ACC)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = offs_n < Lk
    kt = tl.load(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_n[None, :] * skn + offs_d[:, None] * skd,
                 mask=col_ok[None, :] & (offs_d < D)[:, None], other=0.0)       # [BD, BN]
    vt = tl.load(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + offs_n[None, :] * svn + offs_dv[:, None] * svd,
                 mask=col_ok[None, :] & (offs_dv < Dv)[:, None], other=0.0)     # [BDV, BN]
    dk = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), ACC)
    lo = 0
    if CAUSAL:
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M  # earlier query blocks see none of these keys
    for g in range(0, GROUP):
        h = hk * GROUP + g
        bh = b * Hq + h
        qbase = b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        dobase = b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        mbase = b.to(tl.int64) * smb + h.to(tl.int64) * smh
        for start_m in range(lo, Lq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < Lq
            q = tl.load(Q + qbase + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                        mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
            do = tl.load(DO + dobase + offs_m[:, None] * sdm + offs_dv[None, :] * sdd,
                         mask=row_ok[:, None] & (offs_dv < Dv)[None, :], other=0.0)
            lse = tl.load(Lse + bh.to(tl.int64) * Lq + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(Delta + bh.to(tl.int64) * Lq + offs_m, mask=row_ok, other=0.0)
            s = _mm(q, kt, FP64, PRECISION, WIDEN_BF16) * scale
            s = _scores(s, offs_m, offs_n, Lq, Lk, Mask, mbase, smm, smn, MASK_KIND, CAUSAL)
            p = _probs(s, lse, FP64)
            dp = _mm(do, vt, FP64, PRECISION, WIDEN_BF16)
            if DROPOUT:
                keep = _keep(seed, thresh, bh, offs_m, offs_n, Lq, Lk)
                pd = tl.where(keep, p * inv_keep, 0.0)
                dp = tl.where(keep, dp * inv_keep, 0.0)
            else:
                pd = p
            ds = p * (dp - delta[:, None])
            if FP64:
                dv += _mm(tl.trans(pd), do, FP64, PRECISION, WIDEN_BF16)
                dk += _mm(tl.trans(ds), q, FP64, PRECISION, WIDEN_BF16)
            else:
                dv += _mm(tl.trans(_lowp(pd, do, WIDEN_BF16)), do, FP64, PRECISION, WIDEN_BF16)
                dk += _mm(tl.trans(_lowp(ds, q, WIDEN_BF16)), q, FP64, PRECISION, WIDEN_BF16)
    dk = dk * scale
    _store(DK + bhk.to(tl.int64) * Lk * D + offs_n[:, None] * D + offs_d[None, :], dk,
           col_ok[:, None] & (offs_d < D)[None, :])
    _store(DV + bhk.to(tl.int64) * Lk * Dv + offs_n[:, None] * Dv + offs_dv[None, :], dv,
           col_ok[:, None] & (offs_dv < Dv)[None, :])


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, Mask, DO, Lse, Delta, DQ, DS,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, smb, smh, smm, smn,
    sdb, sdh, sdm, sdd,
    Hq, GROUP, Lq, Lk, D, Dv,
    scale_hi, scale_lo, seed, thresh, ik_hi, ik_lo,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, FP64: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr, STORE_DQ: tl.constexpr, STORE_DS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // GROUP
    ACC = Delta.dtype.element_ty
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    inv_keep = tl.cast(ik_hi, ACC) + tl.cast(ik_lo, ACC)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < Lq
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sdm + offs_dv[None, :] * sdd,
                 mask=row_ok[:, None] & (offs_dv < Dv)[None, :], other=0.0)
    lse = tl.load(Lse + bh.to(tl.int64) * Lq + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(Delta + bh.to(tl.int64) * Lq + offs_m, mask=row_ok, other=0.0)
    kbase = b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    vbase = b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    mbase = b.to(tl.int64) * smb + h.to(tl.int64) * smh
    dq = tl.zeros((BLOCK_M, BLOCK_D), ACC)
    hi = Lk
    if CAUSAL:
        hi = tl.minimum(Lk, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Lk
        k = tl.load(K + kbase + offs_n[:, None] * skn + offs_d[None, :] * skd,
                    mask=col_ok[:, None] & (offs_d < D)[None, :], other=0.0)     # [BN, BD]
        vt = tl.load(V + vbase + offs_n[None, :] * svn + offs_dv[:, None] * svd,
                     mask=col_ok[None, :] & (offs_dv < Dv)[:, None], other=0.0)  # [BDV, BN]
        s = _mm(q, tl.trans(k), FP64, PRECISION, WIDEN_BF16) * scale
        s = _scores(s, offs_m, offs_n, Lq, Lk, Mask, mbase, smm, smn, MASK_KIND, CAUSAL)
        p = _probs(s, lse, FP64)
        dp = _mm(do, vt, FP64, PRECISION, WIDEN_BF16)
        if DROPOUT:
            keep = _keep(seed, thresh, bh, offs_m, offs_n, Lq, Lk)
            dp = tl.where(keep, dp * inv_keep, 0.0)
        ds = p * (dp - delta[:, None])
        if STORE_DQ:
            if FP64:
                dq += _mm(ds, k, FP64, PRECISION, WIDEN_BF16)
            else:
                dq += _mm(_lowp(ds, k, WIDEN_BF16), k, FP64, PRECISION, WIDEN_BF16)
        if STORE_DS:
            _store(DS + bh.to(tl.int64) * Lq * Lk + offs_m[:, None].to(tl.int64) * Lk + offs_n[None, :], ds,
                   row_ok[:, None] & col_ok[None, :])
    if STORE_DQ:
        dq = dq * scale
        _store(DQ + bh.to(tl.int64) * Lq * D + offs_m[:, None] * D + offs_d[None, :], dq,
               row_ok[:, None] & (offs_d < D)[None, :])


def attention_bwd(grad_output, query, key, value, output, logsumexp, attn_mask, dropout_p, is_causal, scale, seed,
                  output_mask):
    """(grad_query, grad_key, grad_value, grad_attn_mask); a result output_mask
    does not ask for is an empty [0] tensor. Deterministic (no atomics)."""
    _check_inputs("attention_bwd", query, key, value)
    B, Hq, Lq, D = query.shape
    Hkv, Lk, Dv = key.shape[1], key.shape[2], value.shape[3]
    dtype, dev = query.dtype, query.device
    fp64 = dtype == torch.float64
    acc_t = torch.float64 if fp64 else torch.float32
    if tuple(grad_output.shape) != (B, Hq, Lq, Dv) or tuple(output.shape) != (B, Hq, Lq, Dv):
        raise RuntimeError(f"attention_bwd: grad_output {list(grad_output.shape)} / output {list(output.shape)} "
                           f"must be [{B}, {Hq}, {Lq}, {Dv}]")
    if tuple(logsumexp.shape) != (B, Hq, Lq):
        raise RuntimeError(f"attention_bwd: logsumexp must be [{B}, {Hq}, {Lq}], got {list(logsumexp.shape)}")
    need_q, need_k, need_v, need_m = (bool(x) for x in output_mask)
    empty0 = lambda: torch.empty((0,), dtype=dtype, device=dev)  # noqa: E731
    dq = _empty((B, Hq, Lq, D), dtype, dev) if need_q else empty0()
    dk = _empty((B, Hkv, Lk, D), dtype, dev) if need_k else empty0()
    dv = _empty((B, Hkv, Lk, Dv), dtype, dev) if need_v else empty0()
    if need_m:
        dm = (torch.zeros if is_causal else _empty)((B, Hq, Lq, Lk), dtype=dtype, device=dev)
    else:
        dm = empty0()
    if not (need_q or need_k or need_v or need_m):
        return dq, dk, dv, dm
    lse = logsumexp.to(acc_t).contiguous()
    mask, ms, kind = _mask_args(attn_mask, query, B, Hq, Lq, Lk)
    drop, seed_u, thresh, ik_hi, ik_lo = _dropout_args(dropout_p, seed)
    s_hi, s_lo = _split(float(scale))
    BD, BDV = _blocks_d(D, Dv, fp64)
    cls = _cls(dtype)
    if _interpreting():
        kbm = kbn = qbm = qbn = _INTERP_BLOCK
        kw = {}
    else:
        kbm, kbn, qbm, qbn, w, st = _BWD_FIXED[cls]
        kw = dict(num_warps=w, num_stages=st)
    delta = torch.empty((B, Hq, Lq), dtype=acc_t, device=dev)
    if B * Hq * Lq > 0:
        _launch(_bwd_pre_kernel)[(triton.cdiv(Lq, 32), B * Hq)](
            output, grad_output, delta, *output.stride(), *grad_output.stride(), Hq, Lq, Dv,
            BLOCK_M=32, BLOCK_DV=BDV, **kw)
    common = (*query.stride(), *key.stride(), *value.stride(), *ms, *grad_output.stride(),
              Hq, Hq // Hkv if Hkv else 1, Lq, Lk, D, Dv, s_hi, s_lo, seed_u, thresh, ik_hi, ik_lo)
    flags = dict(MASK_KIND=kind, CAUSAL=bool(is_causal), DROPOUT=drop, FP64=fp64,
                 PRECISION=_fp32_precision() if dtype == torch.float32 else ("ieee" if fp64 else None),
                 WIDEN_BF16=_interpreting() and dtype == torch.bfloat16, BLOCK_D=BD, BLOCK_DV=BDV)
    if (need_k or need_v) and B * Hkv * Lk > 0:
        dk_t = dk if need_k else _empty((B, Hkv, Lk, D), dtype, dev)
        dv_t = dv if need_v else _empty((B, Hkv, Lk, Dv), dtype, dev)
        _launch(_bwd_dkdv_kernel)[(triton.cdiv(Lk, kbn), B * Hkv)](
            query, key, value, mask, grad_output, lse, delta, dk_t, dv_t, *common, **flags,
            BLOCK_M=kbm, BLOCK_N=kbn, **kw)
    if (need_q or need_m) and B * Hq * Lq > 0:
        _launch(_bwd_dq_kernel)[(triton.cdiv(Lq, qbm), B * Hq)](
            query, key, value, mask, grad_output, lse, delta, dq if need_q else delta, dm if need_m else delta,
            *common, **flags, STORE_DQ=need_q, STORE_DS=need_m, BLOCK_M=qbm, BLOCK_N=qbn, **kw)
    return dq, dk, dv, dm


# --------------------------------------------------------------------------
# attention_weights
# --------------------------------------------------------------------------
@triton.jit
def _weights_kernel(
    Q, K, Mask, Lse, P,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, smb, smh, smm, smn,
    Hq, GROUP, Lq, Lk, D, scale_hi, scale_lo,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, FP64: tl.constexpr,
    PRECISION: tl.constexpr, WIDEN_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // GROUP
    ACC = Lse.dtype.element_ty
    scale = tl.cast(scale_hi, ACC) + tl.cast(scale_lo, ACC)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < Lq
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d < D)[None, :], other=0.0)
    lse = tl.load(Lse + bh.to(tl.int64) * Lq + offs_m, mask=row_ok, other=float("inf"))
    kbase = b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    mbase = b.to(tl.int64) * smb + h.to(tl.int64) * smh
    for start_n in range(0, Lk, BLOCK_N):  # every block: the causal ones are written as 0
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Lk
        kt = tl.load(K + kbase + offs_n[None, :] * skn + offs_d[:, None] * skd,
                     mask=col_ok[None, :] & (offs_d < D)[:, None], other=0.0)
        s = _mm(q, kt, FP64, PRECISION, WIDEN_BF16) * scale
        s = _scores(s, offs_m, offs_n, Lq, Lk, Mask, mbase, smm, smn, MASK_KIND, CAUSAL)
        p = _probs(s, lse, FP64)
        _store(P + bh.to(tl.int64) * Lq * Lk + offs_m[:, None].to(tl.int64) * Lk + offs_n[None, :], p,
               row_ok[:, None] & col_ok[None, :])


def attention_weights(query, key, attn_mask, is_causal, scale, logsumexp):
    """P = softmax(S) [B, Hq, Lq, Lk] contiguous in query's dtype from the
    forward's logsumexp (no dropout; 0 on empty rows)."""
    _check_inputs("attention_weights", query, key)
    B, Hq, Lq, D = query.shape
    Hkv, Lk = key.shape[1], key.shape[2]
    dtype, dev = query.dtype, query.device
    fp64 = dtype == torch.float64
    out = _empty((B, Hq, Lq, Lk), dtype, dev)
    if out.numel() == 0:
        return out
    lse = logsumexp.to(torch.float64 if fp64 else torch.float32).contiguous()
    mask, ms, kind = _mask_args(attn_mask, query, B, Hq, Lq, Lk)
    s_hi, s_lo = _split(float(scale))
    BD, _ = _blocks_d(D, 1, fp64)
    if _interpreting():
        bm = bn = _INTERP_BLOCK
        kw = {}
    else:
        bm, bn = (16, 16) if fp64 else (64, 64)
        kw = dict(num_warps=4, num_stages=2)
    _launch(_weights_kernel)[(triton.cdiv(Lq, bm), B * Hq)](
        query, key, mask, lse, out, *query.stride(), *key.stride(), *ms, Hq, Hq // Hkv, Lq, Lk, D, s_hi, s_lo,
        MASK_KIND=kind, CAUSAL=bool(is_causal), FP64=fp64,
        PRECISION=_fp32_precision() if dtype == torch.float32 else ("ieee" if fp64 else None),
        WIDEN_BF16=_interpreting() and dtype == torch.bfloat16, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=BD, **kw)
    return out
