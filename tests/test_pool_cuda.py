"""The pool family's CUDA kernels (csrc/pool/pool_cuda.cu): torch.ops.minitorch_ext.
max_pool2d_fwd/bwd, avg_pool2d_fwd/bwd, adaptive_avg_pool2d_fwd/bwd on CUDA tensors.

max pool: values and indices equal to torch's (F.max_pool2d(return_indices=True) on CUDA)
and to our CPU kernel (float32/float64/bfloat16), NaN windows included; the backward
against the float64 reference (the gradient scattered to the indices).
avg / adaptive avg: the error-ratio rule against a float64 CPU reference (our error within
FACTOR times torch's own error in the same dtype on CUDA, plus a tiny floor), forward and
backward. Every call runs with the poison switch on; backward results must be bitwise
repeatable.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device); elsewhere every
test here is skipped. Sizes are small (seconds on a GPU).
"""
import pytest
import torch
import torch.nn.functional as F

import minitorch_ext  # noqa: F401  (loads the extension: registers the ops)
from minitorch_ext import testing


def _has_cuda_kernel(op: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"minitorch_ext::{op}", "CUDA")
    except Exception:  # noqa: BLE001
        return False


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("max_pool2d_fwd"),
                       reason="the extension was built without its CUDA pool kernels"),
]

ops = torch.ops.minitorch_ext
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
CPU_DTYPES = (torch.bfloat16, torch.float32, torch.float64)
FACTOR = 4.0
DEV = "cuda"


def _floor(dtype, ref):
    eps = torch.finfo(dtype).eps
    mag = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    return (2 if dtype in (torch.bfloat16, torch.float16) else 16) * eps * mag


def _err(a, ref):
    if ref.numel() == 0:
        return 0.0
    return float((a.double().cpu() - ref.double().cpu()).abs().max())


def _check(name, ours, ref, low, dtype):
    e_o, e_t = _err(ours, ref), _err(low, ref)
    tol = FACTOR * e_t + _floor(dtype, ref)
    assert e_o <= tol, f"{name}: error {e_o:.3g} > {tol:.3g} (torch {e_t:.3g})"


def _input(N, C, H, W, dtype, cl, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64).to(DEV, dtype)
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def _fmt_ok(t, cl):
    return t.is_contiguous(memory_format=torch.channels_last) if cl else t.is_contiguous()


# N, C, H, W, kernel, stride, padding, dilation, ceil_mode
MAX_CASES = [
    (2, 3, 8, 9, (2, 2), (2, 2), (0, 0), (1, 1), False),
    (2, 3, 9, 10, (3, 3), (2, 2), (1, 1), (1, 1), False),
    (1, 4, 9, 10, (3, 2), (2, 1), (1, 1), (2, 1), True),
    (2, 2, 7, 7, (3, 3), (3, 3), (1, 0), (1, 1), True),
    (1, 5, 1, 13, (1, 4), (1, 3), (0, 2), (1, 1), False),  # 1-D as H == 1
    (2, 3, 20, 20, (5, 5), (1, 1), (2, 2), (1, 1), False),  # > 256 outputs per plane: several chunks
    (0, 3, 8, 8, (2, 2), (2, 2), (0, 0), (1, 1), False),    # empty batch
]


def _mid(c):
    N, C, H, W, k, s, p, d, cm = c
    return f"N{N}C{C}H{H}W{W}k{k[0]}{k[1]}s{s[0]}{s[1]}p{p[0]}{p[1]}d{d[0]}{d[1]}{'ceil' if cm else ''}"


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MAX_CASES, ids=_mid)
def test_max_pool(case, dtype, cl):
    N, C, H, W, k, s, p, d, cm = case
    x = _input(N, C, H, W, dtype, cl)
    with testing.poisoned():
        y, idx = ops.max_pool2d_fwd(x, list(k), list(s), list(p), list(d), cm)
    ty, tidx = F.max_pool2d(x, k, s, p, d, ceil_mode=cm, return_indices=True)
    assert y.shape == ty.shape and y.dtype == dtype and idx.dtype == torch.int64
    assert _fmt_ok(y, cl) and _fmt_ok(idx, cl)
    assert torch.equal(y, ty) and torch.equal(idx, tidx)
    if dtype in CPU_DTYPES:
        cy, cidx = ops.max_pool2d_fwd(x.cpu(), list(k), list(s), list(p), list(d), cm)
        assert torch.equal(y.cpu(), cy) and torch.equal(idx.cpu(), cidx)
    # backward: the gradient scattered to the indices, float64 reference
    gen = torch.Generator().manual_seed(5)
    go = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(DEV, dtype)
    with testing.poisoned():
        gi = ops.max_pool2d_bwd(go, x, idx)
    assert gi.shape == x.shape and gi.dtype == dtype and _fmt_ok(gi, cl)
    xr = x.detach().double().cpu().requires_grad_()
    ref = torch.autograd.grad(F.max_pool2d(xr, k, s, p, d, ceil_mode=cm), xr, go.double().cpu())[0]
    xl = x.detach().clone().requires_grad_()
    low = torch.autograd.grad(F.max_pool2d(xl, k, s, p, d, ceil_mode=cm), xl, go)[0]
    _check("grad_input", gi, ref, low, dtype)
    assert torch.equal(gi, ops.max_pool2d_bwd(go, x, idx))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_max_pool_nan_and_ties(dtype):
    x = torch.zeros(1, 2, 6, 6, dtype=dtype)  # ties everywhere: the first position wins
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 2] = float("nan")  # a NaN window reports its last NaN
    x[0, 1, 3, 3] = float("nan")
    xc = x.to(DEV)
    y, idx = ops.max_pool2d_fwd(xc, [3, 3], [2, 2], [1, 1], [1, 1], False)
    cy, cidx = ops.max_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], [1, 1], False)
    assert torch.equal(y.cpu().isnan(), cy.isnan()) and torch.equal(idx.cpu(), cidx)
    ty, tidx = F.max_pool2d(xc, 3, 2, 1, return_indices=True)
    assert torch.equal(idx, tidx)


def test_max_pool_bwd_bad_index():
    x = torch.randn(1, 2, 4, 4, device=DEV)
    y, idx = ops.max_pool2d_fwd(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    idx = idx.clone()
    idx[0, 1, 0, 0] = 16
    with pytest.raises(RuntimeError, match="index outside"):
        ops.max_pool2d_bwd(torch.ones_like(y), x, idx)


def test_max_pool_bwd_repeated_indices():
    # indices that all point at one element (no window geometry behind them): deterministic sum
    x = torch.randn(2, 3, 5, 5, device=DEV)
    go = torch.randn(2, 3, 30, 30, device=DEV)  # 900 outputs per plane: four chunks
    idx = torch.randint(0, 3, (2, 3, 30, 30), device=DEV)
    gi = ops.max_pool2d_bwd(go, x, idx)
    ref = torch.zeros(2, 3, 25, dtype=torch.float64)
    ref.scatter_add_(2, idx.cpu().flatten(2), go.double().cpu().flatten(2))
    assert _err(gi.flatten(2), ref) <= 1e-4
    assert torch.equal(gi, ops.max_pool2d_bwd(go, x, idx))


# N, C, H, W, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override
AVG_CASES = [
    (2, 3, 8, 9, (2, 2), (2, 2), (0, 0), False, True, None),
    (2, 3, 9, 10, (3, 3), (2, 2), (1, 1), False, True, None),
    (2, 3, 9, 10, (3, 3), (2, 2), (1, 1), False, False, None),
    (1, 4, 9, 10, (3, 2), (2, 1), (1, 1), True, True, None),
    (1, 4, 9, 10, (3, 2), (2, 1), (1, 1), True, False, None),
    (2, 2, 7, 8, (3, 3), (2, 3), (1, 1), False, True, 5),
    (1, 5, 1, 13, (1, 4), (1, 3), (0, 2), False, False, None),
    (0, 3, 8, 8, (2, 2), (2, 2), (0, 0), False, True, None),
]


def _aid(c):
    N, C, H, W, k, s, p, cm, cip, dv = c
    return (f"N{N}C{C}H{H}W{W}k{k[0]}{k[1]}s{s[0]}{s[1]}p{p[0]}{p[1]}{'ceil' if cm else ''}"
            f"{'' if cip else 'nopad'}{'' if dv is None else f'div{dv}'}")


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", AVG_CASES, ids=_aid)
def test_avg_pool(case, dtype, cl):
    N, C, H, W, k, s, p, cm, cip, dv = case
    x = _input(N, C, H, W, dtype, cl, seed=1)
    args = (list(k), list(s), list(p), cm, cip, dv)
    with testing.poisoned():
        y = ops.avg_pool2d_fwd(x, *args)
    xr = x.detach().double().cpu().requires_grad_()
    ref = F.avg_pool2d(xr, k, s, p, cm, cip, dv)
    xl = x.detach().clone().requires_grad_()
    low = F.avg_pool2d(xl, k, s, p, cm, cip, dv)
    assert y.shape == ref.shape and y.dtype == dtype and _fmt_ok(y, cl)
    _check("output", y, ref.detach(), low.detach(), dtype)
    gen = torch.Generator().manual_seed(5)
    go = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(DEV, dtype)
    with testing.poisoned():
        gi = ops.avg_pool2d_bwd(go, x, *args)
    assert gi.shape == x.shape and gi.dtype == dtype and _fmt_ok(gi, cl)
    gref = torch.autograd.grad(ref, xr, go.double().cpu())[0]
    glow = torch.autograd.grad(low, xl, go)[0]
    _check("grad_input", gi, gref, glow, dtype)
    assert torch.equal(gi, ops.avg_pool2d_bwd(go, x, *args))


# N, C, H, W, output_size
ADAPTIVE_CASES = [
    (2, 3, 8, 9, (4, 3)),
    (2, 3, 7, 10, (3, 4)),
    (1, 4, 5, 6, (7, 9)),   # upsampling: overlapping windows
    (2, 3, 9, 9, (1, 1)),   # global average
    (1, 2, 1, 13, (1, 5)),
    (2, 3, 6, 6, (0, 3)),   # empty output
    (0, 3, 8, 8, (2, 2)),
]


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ADAPTIVE_CASES, ids=lambda c: f"N{c[0]}C{c[1]}H{c[2]}W{c[3]}o{c[4][0]}x{c[4][1]}")
def test_adaptive_avg_pool(case, dtype, cl):
    N, C, H, W, osz = case
    x = _input(N, C, H, W, dtype, cl, seed=2)
    with testing.poisoned():
        y = ops.adaptive_avg_pool2d_fwd(x, list(osz))
    xr = x.detach().double().cpu().requires_grad_()
    ref = F.adaptive_avg_pool2d(xr, osz)
    assert y.shape == ref.shape and y.dtype == dtype
    if y.numel():
        assert _fmt_ok(y, cl)
        xl = x.detach().clone().requires_grad_()
        low = F.adaptive_avg_pool2d(xl, osz)
        _check("output", y, ref.detach(), low.detach(), dtype)
    gen = torch.Generator().manual_seed(5)
    go = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(DEV, dtype)
    with testing.poisoned():
        gi = ops.adaptive_avg_pool2d_bwd(go, x)
    assert gi.shape == x.shape and gi.dtype == dtype
    if x.numel():
        assert _fmt_ok(gi, cl)
    gref = torch.autograd.grad(ref, xr, go.double().cpu())[0] if y.numel() else torch.zeros(x.shape)
    if y.numel():
        xl = x.detach().clone().requires_grad_()
        glow = torch.autograd.grad(F.adaptive_avg_pool2d(xl, osz), xl, go)[0]
        _check("grad_input", gi, gref, glow, dtype)
    else:
        assert _err(gi, gref) == 0.0
    assert torch.equal(gi, ops.adaptive_avg_pool2d_bwd(go, x))
