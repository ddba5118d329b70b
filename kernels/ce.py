"""Triton kernels of the cross-entropy family: fused log-softmax + loss + input gradient per row
(ce_fwd), and the in-place scaling of that gradient by grad_output (ce_bwd). Same schemas and
semantics as the C++ kernels (csrc/ops.cpp, csrc/loss/ce_cpu.cpp).

Algorithm (Liger-Kernel's fused cross-entropy, with torch's weight / label smoothing /
reduction rules): one program per row (n, d) of the [N, C, D] input, classes at stride sC.
  loop 1 over the classes in BLOCK chunks: the online logsumexp (running max m and
    s = sum exp(x - m), rescaled when the max grows), plus the weighted sums of x that
    label smoothing or probability targets need;
  the row's loss (written to a float32/float64 per-row buffer);
  loop 2 (only when the input requires grad): the gradient
    class t:  g_j = (p_j ((1-eps) w_t + eps/C W) - eps/C w_j - [j=t] (1-eps) w_t) * scale
    probs P:  g_j = (p_j sum_c w_c q_c - w_j q_j) * scale,  q = (1-eps) P + eps/C
    nll:      g_j = -[j=t] w_t * scale
  with scale = 1/denominator for 'mean' (read from a one-element tensor: the summed
  target weights of the non-ignored rows, or N*D for probabilities), so the gradient is
  final up to grad_output. Ignored rows: loss 0, gradient 0.
The per-row losses are reduced on the host side of the op (a fixed-order torch sum of
the [N*D] buffer), the target range check and the denominator come from a prepass on
the [N, D] targets (torch's IndexError "Target t is out of bounds.").
Memory traffic: the input is read twice (loop 2 re-reads the row; on a GPU mostly from
L2) and the gradient written once; no softmax tensor is stored. ce_bwd reads and writes
the gradient once (skipped by nothing on this path: Triton has no host-side view of
grad_output without a sync).
The trick: the gradient is produced while the row's statistics are in registers, so
backward is a single scale, and the only input-sized buffer is the gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch, store

try:
    from minitorch_ext import _poison

    def _empty(shape, dtype, device):
        return _poison.empty(shape, dtype=dtype, device=device)
except Exception:  # noqa: BLE001
    def _empty(shape, dtype, device):
        return torch.empty(shape, dtype=dtype, device=device)


@triton.jit
def _ce_fwd_kernel(X, T, P, Wt, LOSS, G, DEN, EPS, C, D, sN, sC, sD, ignore_index,
                   HAS_W: tl.constexpr, PROB: tl.constexpr, LOG_INPUT: tl.constexpr, GRAD: tl.constexpr,
                   MEAN: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    ACC = tl.float64 if F64 else tl.float32
    r = tl.program_id(0).to(tl.int64)
    n = r // D
    d = r % D
    xb = X + n * sN + d * sD          # input row, class stride sC
    ob = n * C * D + d                # gradient / probability row, class stride D
    scale = 1.0
    if MEAN:
        scale = 1.0 / tl.load(DEN).to(ACC)
    eps = tl.load(EPS).to(ACC)  # a tensor: float64 label smoothing stays float64
    epsC = eps / C
    if PROB:
        t = 0
    else:
        t = tl.load(T + r)
        ign = t == ignore_index
        keep = t != ignore_index
        t = tl.where(ign, 0, t)
    if HAS_W:
        wt = tl.load(Wt + t).to(ACC)
    else:
        wt = 1.0
    xt = tl.load(xb + t * sC).to(ACC)
    if LOG_INPUT:
        loss = tl.where(ign, 0.0, -wt * xt)
        tl.store(LOSS + r, loss)
        if GRAD:
            for start in range(0, C, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < C
                g = tl.where((cols == t) & keep, -wt * scale, 0.0)
                store(G + ob + cols.to(tl.int64) * D, g.to(ACC), mask)
    else:
        # running max m, s = sum exp(x - m), and the sums relative to m: sq = sum w q (or W),
        # sd = sum w q (m - x) (or sum w (m - x)), rebased when m grows; all terms >= 0
        m = tl.max(tl.full([BLOCK], float("-inf"), ACC), axis=0)
        s = tl.sum(tl.zeros([BLOCK], ACC), axis=0)
        sq = tl.sum(tl.zeros([BLOCK], ACC), axis=0)
        sd = tl.sum(tl.zeros([BLOCK], ACC), axis=0)
        for start in range(0, C, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < C
            x = tl.load(xb + cols.to(tl.int64) * sC, mask=mask, other=-float("inf")).to(ACC)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            sd += sq * tl.where(m == float("-inf"), 0.0, m_new - m)  # (m = -inf only while sq == 0)
            m = m_new
            if HAS_W:
                w = tl.load(Wt + cols, mask=mask, other=0.0).to(ACC)
            else:
                w = tl.where(mask, 1.0, 0.0).to(ACC)
            if PROB:
                p = tl.load(P + ob + cols.to(tl.int64) * D, mask=mask, other=0.0).to(ACC)
                q = tl.where(mask, (p * (1.0 - eps) + epsC) * w, 0.0)
            else:
                q = w
            sq += tl.sum(q, axis=0)
            sd += tl.sum(q * (m - tl.where(mask, x, m)), axis=0)  # padding lanes: q = 0, m - m = 0
        ls = tl.log(s)  # lse - m
        lse = m + ls
        if PROB:
            loss = sq * ls + sd
            a = sq * scale
        else:
            nll = wt * (ls + (m - xt))
            loss = (1.0 - eps) * nll + epsC * (sq * ls + sd)
            a = ((1.0 - eps) * wt + epsC * sq) * scale
            loss = tl.where(ign, 0.0, loss)
        tl.store(LOSS + r, loss)
        if GRAD:
            for start in range(0, C, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                mask = cols < C
                x = tl.load(xb + cols.to(tl.int64) * sC, mask=mask, other=0.0).to(ACC)
                if HAS_W:
                    w = tl.load(Wt + cols, mask=mask, other=0.0).to(ACC)
                else:
                    w = tl.full([BLOCK], 1.0, ACC)
                e = tl.exp(x - lse)
                if PROB:
                    p = tl.load(P + ob + cols.to(tl.int64) * D, mask=mask, other=0.0).to(ACC)
                    g = e * a - (p * (1.0 - eps) + epsC) * w * scale
                else:
                    g = e * a - epsC * w * scale
                    g = tl.where(cols == t, g - (1.0 - eps) * wt * scale, g)
                    g = tl.where(ign, 0.0, g)
                store(G + ob + cols.to(tl.int64) * D, g, mask)


@triton.jit
def _ce_bwd_kernel(GO, G, n, C, D, PER_ROW: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr):
    ACC = tl.float64 if F64 else tl.float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(ACC)
    if PER_ROW:
        row = (offs // (C * D)) * D + offs % D
        f = tl.load(GO + row, mask=mask, other=0.0).to(ACC)
    else:
        f = tl.load(GO).to(ACC)
    store(G + offs, g * f, mask)


def _block(C: int) -> int:
    return max(16, min(triton.next_power_of_2(max(C, 1)), 4096))


def ce_fwd(input, target, weight, reduction: int, ignore_index: int, label_smoothing: float, log_input: bool,
           compute_grad: bool):
    """The C++ ce_fwd's contract on Triton: (loss, grad_input)."""
    if input.dim() != 3:
        raise RuntimeError(f"ce_fwd: input: expected a 3-D tensor [N, C, D], got {input.dim()}-D of size "
                           f"{list(input.shape)}")
    if reduction not in (0, 1, 2):
        raise RuntimeError(f"ce_fwd: reduction: expected 0 (none), 1 (mean) or 2 (sum), got {reduction}")
    N, C, D = input.shape
    R = N * D
    prob = target.is_floating_point()
    dev = input.device
    acc = torch.float64 if input.dtype == torch.float64 else torch.float32
    if weight is not None and (weight.dim() != 1 or weight.numel() != C):
        raise RuntimeError(f"weight tensor should be defined either for all {C} classes or no classes but got "
                           f"weight tensor of shape: {list(weight.shape)}")
    if prob:
        if tuple(target.shape) != (N, C, D) or target.dtype != input.dtype:
            raise RuntimeError(f"ce_fwd: target: expected shape {[N, C, D]} and dtype {input.dtype} for class "
                               f"probabilities, got {list(target.shape)} {target.dtype}")
        target = target.contiguous()
        den = torch.full((1,), float(R), dtype=acc, device=dev)
    else:
        if target.dtype != torch.int64 or tuple(target.shape) != (N, D):
            raise RuntimeError(f"ce_fwd: target: expected int64 of shape {[N, D]}, got {target.dtype} "
                               f"{list(target.shape)}")
        target = target.contiguous()
        keep = target != ignore_index
        bad = keep & ((target < 0) | (target >= C))
        if bool(bad.any()):
            raise IndexError(f"Target {int(target[bad].flatten()[0])} is out of bounds.")
        tk = target[keep]
        den = (weight.to(acc)[tk].sum() if weight is not None else
               torch.tensor(float(tk.numel()), dtype=acc, device=dev)).reshape(1)
    rows = _empty((R,), acc, dev)
    grad = _empty((N, C, D), input.dtype, dev) if compute_grad else torch.empty((0,), dtype=input.dtype, device=dev)
    if R > 0:
        w = weight.contiguous() if weight is not None else rows
        launch(_ce_fwd_kernel)[(R,)](
            input, target, target, w, rows, grad if compute_grad else rows, den,
            torch.full((1,), float(label_smoothing), dtype=acc, device=dev), C, D,
            input.stride(0), input.stride(1), input.stride(2), int(ignore_index),
            HAS_W=weight is not None, PROB=prob, LOG_INPUT=bool(log_input), GRAD=bool(compute_grad),
            MEAN=reduction == 1, F64=acc == torch.float64, BLOCK=_block(C), num_warps=4)
    if reduction == 0:
        loss = rows.reshape(N, D).to(input.dtype)
    else:
        tot = rows.double().sum()
        if reduction == 1:
            tot = tot / den.double()[0]
        loss = tot.to(input.dtype).reshape(())
    return loss, grad


def ce_bwd(grad_output, grad_input, reduction: int) -> None:
    """grad_input *= grad_output (scalar for mean/sum, [N, D] for 'none'), in place."""
    N, C, D = grad_input.shape
    n = grad_input.numel()
    if n == 0:
        return
    go = grad_output.contiguous()
    B = 1024
    launch(_ce_bwd_kernel)[(triton.cdiv(n, B),)](
        go, grad_input, n, C, D, PER_ROW=reduction == 0, F64=grad_input.dtype == torch.float64, BLOCK=B,
        num_warps=4)
