"""Triton dropout: one map serves forward (y = x * keep / (1-p)) and backward (the same
map on grad_output), the mask regenerated from (seed, index), never stored.

Mask: element (channel) c is kept iff word c & 3 of Philox4x32-10 at counter c >> 2
(tl.philox(seed, lo32(c >> 2), hi32(c >> 2), 0, 0): key = (seed lo, seed hi), ten
rounds, the constants of Random123/curand) is >= floor(p * 2^32); c is the linear
element index for dropout, the (n, c) channel index i // channel_size for dropout1d/2d.
Bit for bit the words of csrc/common/philox.h and of minitorch_ext/_philox.py (the
NumPy reference the tests compare with), so every backend draws the same mask.

Algorithm: one program per BLOCK contiguous elements (int64 offsets): load x, make the
words of its indices (elementwise: BLOCK/4 Philox calls, whose four words are interleaved
back into element order with tl.join + tl.reshape; channel dropout: one call per element,
for its channel's word), compare, multiply in float32 (float64 for double), one rounded
store.
Memory traffic: read x once, write y once; no mask tensor.
The trick: a counter-based generator is a pure function of (seed, index), so a
backward needs only the 8-byte seed and runs in any order on any grid.
Interpreter (TRITON_INTERPRET=1): bf16 stores rounded to nearest even through
kernels/_common.store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch, store


@triton.jit
def _dropout_kernel(x_ptr, y_ptr, s_ptr, n, cs, seed, thresh, BLOCK: tl.constexpr, CHAN: tl.constexpr,
                    FP64: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0)
    if CHAN:  # one word per channel c = i // cs: a generator call per element
        c = offs // cs
        ctr = c >> 2
        c0 = (ctr & 0xFFFFFFFF).to(tl.uint32)
        c1 = (ctr >> 32).to(tl.uint32)
        z = c0 * 0
        r0, r1, r2, r3 = tl.philox(seed, c0, c1, z, z)
        w = c & 3
        r = tl.where(w == 0, r0, tl.where(w == 1, r1, tl.where(w == 2, r2, r3)))
    else:  # elementwise: one call per counter gives the words of its four elements
        ctr = pid * (BLOCK // 4) + tl.arange(0, BLOCK // 4).to(tl.int64)
        c0 = (ctr & 0xFFFFFFFF).to(tl.uint32)
        c1 = (ctr >> 32).to(tl.uint32)
        z = c0 * 0
        r0, r1, r2, r3 = tl.philox(seed, c0, c1, z, z)
        # [n, j, k] = word 2j + k of counter n: flattened, element 4n + w gets word w
        r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [BLOCK])
    keep = r.to(tl.int64) >= thresh
    s = tl.load(s_ptr)  # 1/(1-p) in float64 (0 when p == 1)
    if FP64:
        y = x.to(tl.float64) * tl.where(keep, s, 0.0)
    else:
        y = x.to(tl.float32) * tl.where(keep, s.to(tl.float32), 0.0)
    store(y_ptr + offs, y, m)


def _threshold(p: float) -> int:
    return min(int(p * 4294967296.0), 4294967295)


def dropout_map(x: torch.Tensor, p: float, seed: int, channel_size: int) -> torch.Tensor:
    """x * keep / (1 - p), contiguous, x's dtype (the forward on the input, the backward on grad_output)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if channel_size < 1 or x.numel() % channel_size:
        raise RuntimeError(f"channel_size: {channel_size} does not divide the {x.numel()} elements")
    if not x.is_floating_point():
        raise RuntimeError(f"input: expected a floating point tensor, got {x.dtype}")
    from minitorch_ext import _poison

    xc = x.contiguous()
    y = _poison.empty(x.shape, dtype=x.dtype, device=x.device)
    n = xc.numel()
    if n == 0:
        return y
    s = torch.tensor([0.0 if p >= 1.0 else 1.0 / (1.0 - p)], dtype=torch.float64, device=x.device)
    BLOCK = 1024
    launch(_dropout_kernel)[(triton.cdiv(n, BLOCK),)](
        xc, y, s, n, channel_size, int(seed), _threshold(p), BLOCK=BLOCK,
        CHAN=channel_size > 1, FP64=x.dtype == torch.float64)
    return y
