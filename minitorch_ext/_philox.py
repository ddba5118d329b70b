"""The counter-based generator behind the attention family's dropout, in NumPy.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC'11; the same constants and round as Random123, curand and Triton's
``tl.philox``): a 128-bit counter and a 64-bit key go through ten rounds of two
32x32->64 multiplies and xors; every output is a pure function of (key,
counter), so a kernel can regenerate any element of the dropout mask in any
order, on any backend, without storing it.

The attention kernels (C++, CUDA, Triton) drop element (b, h, i, j) of the
attention probabilities iff ``keep_mask`` below says False; this module is the
reference the tests compare them with (it is not used by the kernels). One
Philox evaluation gives four 32-bit words: element c (the linear index) uses
word c % 4 of counter c // 4, so four neighbouring keys share one evaluation
(the CPU kernel's cost per element is a quarter of word-0-only schemes).
"""
from __future__ import annotations

import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_SH32 = np.uint64(32)


def philox4x32_10(seed: int, counter: np.ndarray):
    """The four words of Philox4x32-10 with key (seed low 32 bits, seed high 32 bits)
    and counter (c low 32, c high 32, 0, 0) for every 64-bit c in ``counter``:
    a tuple of four uint32 arrays."""
    c = np.asarray(counter, dtype=np.uint64)
    c0, c1 = c & _MASK32, c >> _SH32
    c2 = np.zeros_like(c0)
    c3 = np.zeros_like(c0)
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(10):
        p0 = _M0 * c0  # < 2**64: no wrap
        p1 = _M1 * c2
        c0, c1, c2, c3 = ((p1 >> _SH32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> _SH32) ^ c3 ^ k1, p0 & _MASK32)
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return tuple(w.astype(np.uint32) for w in (c0, c1, c2, c3))


def element_words(seed: int, index: np.ndarray) -> np.ndarray:
    """The dropout word of each element index c: word c % 4 of Philox at counter c // 4."""
    c = np.asarray(index, dtype=np.uint64)
    words = np.stack(philox4x32_10(seed, c >> np.uint64(2)))
    return np.take_along_axis(words, (c & np.uint64(3)).astype(np.int64)[None], axis=0)[0]


def dropout_threshold(p: float) -> int:
    """The uint32 threshold: an element is dropped iff its word is below it."""
    return min(int(p * 4294967296.0), 4294967295)


def keep_mask(seed: int, p: float, B: int, H: int, Lq: int, Lk: int):
    """The [B, H, Lq, Lk] boolean keep mask of attention dropout (True = kept):
    element (b, h, i, j) has index c = ((b*H + h)*Lq + i)*Lk + j and is kept iff
    element_words(seed, c) >= dropout_threshold(p). p == 1 keeps nothing."""
    import torch

    if p >= 1.0:
        return torch.zeros((B, H, Lq, Lk), dtype=torch.bool)
    c = np.arange(B * H * Lq * Lk, dtype=np.uint64)
    words = element_words(seed, c)
    keep = words >= np.uint32(dropout_threshold(p))
    return torch.from_numpy(keep.reshape(B, H, Lq, Lk))
