"""Triton embedding: the gather forward and a deterministic scatter-add backward.

Forward (_fwd_kernel): one program per (index, BLOCK_D columns): load the index, copy
that slice of the weight row (int64 offsets). Traffic: read n rows, write n rows.

Backward (_bwd_kernel): no atomics. The indices are sorted once by a stable sort
(torch.sort(stable=True): the positions of each row stay in increasing order) and the
start of every row's segment found by a binary search (torch.searchsorted); then one
program per (row r, BLOCK_D columns) owns grad_weight[r, cols]: it walks r's segment in
order, sums the grad_output rows in float32 (float64 for double), and stores once;
a row with an empty segment, or r == padding_idx, is stored as zeros by the same
program. scale_grad_by_freq multiplies each contribution by 1/count(r), as torch.
Every element has one writer and one summation order: bitwise repeatable.
Traffic: read grad_output once, write grad_weight once (plus the n-element sort).

Semantics are those of csrc/embedding/embedding_cpu.cpp; range checks are made by
minitorch_ext/ops/embedding.py before the launch. max_norm (embedding_renorm_) stays
on the C++ op. Interpreter (TRITON_INTERPRET=1): bf16 stores rounded to nearest even
through kernels/_common.store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch, store


@triton.jit
def _fwd_kernel(w_ptr, idx_ptr, y_ptr, D, ws0, ws1, BLOCK_D: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    m = cols < D
    k = tl.load(idx_ptr + i).to(tl.int64)
    v = tl.load(w_ptr + k * ws0 + cols * ws1, mask=m, other=0)
    tl.store(y_ptr + i * D + cols, v, mask=m)


@triton.jit
def _bwd_kernel(g_ptr, order_ptr, start_ptr, gw_ptr, D, padding_idx, SGBF: tl.constexpr, BLOCK_D: tl.constexpr,
                FP64: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    m = cols < D
    b = tl.load(start_ptr + r)
    e = tl.load(start_ptr + r + 1)
    if r == padding_idx:
        e = b
    if FP64:
        acc = tl.zeros([BLOCK_D], dtype=tl.float64)
    else:
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if SGBF:
        sc = 1.0 / tl.maximum(e - b, 1).to(acc.dtype)
    for q in range(b, e):
        src = tl.load(order_ptr + q)
        g = tl.load(g_ptr + src * D + cols, mask=m, other=0).to(acc.dtype)
        if SGBF:
            g = g * sc
        acc += g
    store(gw_ptr + r * D + cols, acc, m)


def _block_d(D: int) -> int:
    return min(256, triton.next_power_of_2(max(D, 1)))


def embedding_fwd(weight: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """weight[indices]: [*indices.shape, D] contiguous, weight's dtype (indices checked by the caller)."""
    from minitorch_ext import _poison

    idx = indices.contiguous()
    V, D = weight.shape
    y = _poison.empty((*indices.shape, D), dtype=weight.dtype, device=weight.device)
    n = idx.numel()
    if n == 0 or D == 0:
        return y
    BD = _block_d(D)
    launch(_fwd_kernel)[(n, triton.cdiv(D, BD))](weight, idx, y, D, weight.stride(0), weight.stride(1), BLOCK_D=BD)
    return y


def embedding_bwd(grad_output: torch.Tensor, indices: torch.Tensor, num_weights: int, padding_idx: int,
                  scale_grad_by_freq: bool) -> torch.Tensor:
    """The [num_weights, D] gradient: rows summed in index order, one program per row slice."""
    from minitorch_ext import _poison

    if grad_output.dim() != indices.dim() + 1 or tuple(grad_output.shape[:-1]) != tuple(indices.shape):
        raise RuntimeError(f"grad_output: expected shape {list(indices.shape)} + [embedding_dim], got "
                           f"{list(grad_output.shape)}")
    D = grad_output.shape[-1]
    gw = _poison.empty((num_weights, D), dtype=grad_output.dtype, device=grad_output.device)
    if num_weights == 0 or D == 0:
        return gw
    g = grad_output.contiguous()
    flat = indices.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_weights):
        raise IndexError("index out of range in self")
    sorted_idx, order = torch.sort(flat, stable=True)
    start = torch.searchsorted(sorted_idx, torch.arange(num_weights + 1, device=flat.device))
    BD = _block_d(D)
    launch(_bwd_kernel)[(num_weights, triton.cdiv(D, BD))](
        g, order, start, gw, D, padding_idx, SGBF=bool(scale_grad_by_freq), BLOCK_D=BD,
        FP64=g.dtype == torch.float64)
    return gw
