"""Kernel-level and op-level tests of the Triton pooling kernels (kernels/pool.py), on CPU
through Triton's interpreter (on cuda where a GPU is visible and TRITON_INTERPRET is unset).

References: torch's F.max_pool2d / F.avg_pool2d / F.adaptive_avg_pool2d in float64 on the
very same rounded inputs (indices compared exactly, incl. ties and NaN windows), gradients
by torch.autograd; the max backward also against an index scatter in float64. Errors are
judged as in tests/test_conv_triton.py (within a small factor of torch's own error in the
test dtype, plus a few ulps). Outputs are poisoned (NaN-filled) where the package allows.
Tiny shapes: the interpreter runs one program instance after another.
"""
import contextlib
import os

import pytest
import torch
import torch.nn.functional as F

try:
    import triton  # noqa: F401
    _HAVE_TRITON = True
except ImportError:
    _HAVE_TRITON = False

pytestmark = [pytest.mark.triton, pytest.mark.skipif(
    not _HAVE_TRITON or not (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()),
    reason="Triton cannot run here (needs triton, and TRITON_INTERPRET=1 without a GPU)")]

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
TOLERANCE_FACTOR = {torch.float32: 4.0, torch.bfloat16: 2.0, torch.float64: 4.0}
# (dtype, channels_last): both layouts in float32, bf16 on channels_last, float64 contiguous
VARIANTS = [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True), (torch.float64, False)]
VARIANT_IDS = ["float32", "float32-channels_last", "bfloat16-channels_last", "float64"]


@pytest.fixture(scope="module")
def P():
    from minitorch_ext.kernels import pool
    return pool


@pytest.fixture(autouse=True)
def _poison():
    try:
        from minitorch_ext.testing import poisoned
        ctx = poisoned()
    except Exception:  # noqa: BLE001
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def max_err(a, ref):
    if a.numel() == 0 and ref.numel() == 0:
        return 0.0
    return (a.detach().double().cpu() - ref.detach().double().cpu()).abs().max().item()


def check(name, ours, native, ref, dtype):
    assert ours.dtype == dtype, f"{name}: dtype {ours.dtype}, expected {dtype}"
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    eo, en = max_err(ours, ref), max_err(native, ref)
    res = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
    scale = ref.abs().max().item() if ref.numel() else 0.0
    bound = TOLERANCE_FACTOR[dtype] * en + 8 * res * max(1.0, scale)
    assert eo <= bound, f"{name}[{dtype}]: our error {eo:.3e} > bound {bound:.3e} (native {en:.3e})"


def rand(shape, dtype, seed, cl=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def same_format(ours, like):
    fmt = torch.channels_last if (like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last)
                                  and not like.is_contiguous()) else torch.contiguous_format
    return ours.is_contiguous(memory_format=fmt)


def grads(fn, x, go, dt):
    xr = x.detach().to(dt).requires_grad_()
    y = fn(xr)
    y = y[0] if isinstance(y, tuple) else y
    return y.detach(), torch.autograd.grad(y, xr, go.to(dt))[0]


# ---- max pool ------------------------------------------------------------------

MAX_CASES = [  # (shape, k, s, p, d, ceil)
    ((2, 3, 7, 9), [3, 3], [2, 2], [1, 1], [1, 1], False),
    ((1, 4, 6, 11), [3, 2], [2, 1], [1, 1], [1, 2], True),
    ((1, 2, 5, 5), [2, 2], [3, 3], [0, 0], [1, 1], True),
]


@pytest.mark.parametrize("dtype,cl", VARIANTS, ids=VARIANT_IDS)
def test_max_pool(P, dtype, cl):
    for i, (shape, k, s, p, d, ceil) in enumerate(MAX_CASES):
        x = rand(shape, dtype, i)
        x.view(-1)[::7] = x.view(-1)[1]                   # ties: the first position wins
        x[0, 0, 1, 2] = float("nan")                       # a NaN window reports its (last) NaN
        x[0, 1, 1:3, 1:3] = float("-inf")
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y, ind = P.max_pool2d_fwd(x, k, s, p, d, ceil)
        ry, ri = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        assert torch.equal(ind, ri), f"indices differ {shape} {k} {s} {p} {d} {ceil}"
        assert torch.equal(y.isnan(), ry.isnan()) and torch.equal(y.nan_to_num(), ry.nan_to_num())
        assert same_format(y, x) and same_format(ind, x)
        go = rand(tuple(y.shape), dtype, 10 + i)
        gi = P.max_pool2d_bwd(go, x, ind)
        ref = torch.zeros(shape[0] * shape[1], shape[2] * shape[3], dtype=torch.float64)
        ref.scatter_add_(1, ind.reshape(ref.shape[0], -1).cpu(), go.double().reshape(ref.shape[0], -1).cpu())
        nat = torch.zeros(ref.shape, dtype=dtype).scatter_add_(1, ind.reshape(ref.shape[0], -1).cpu(),
                                                               go.reshape(ref.shape[0], -1).cpu())
        check(f"max grad_input {shape}", gi, nat.view(shape), ref.view(shape), dtype)
        assert same_format(gi, x)


def test_max_pool_backward_collisions_and_determinism(P):
    # stride 1, kernel 3: every input is the max of up to 9 windows, more than one 64-lane chunk apart
    x = rand((1, 2, 12, 13), torch.float32, 3)
    y, ind = P.max_pool2d_fwd(x, [3, 3], [1, 1], [1, 1], [1, 1], False)
    go = rand(tuple(y.shape), torch.float32, 4)
    gi = P.max_pool2d_bwd(go, x, ind)
    xr = x.double().requires_grad_()
    rg, = torch.autograd.grad(F.max_pool2d(xr, 3, 1, 1), xr, go.double())
    torch.testing.assert_close(gi.double(), rg, atol=1e-6, rtol=1e-6)
    assert torch.equal(gi, P.max_pool2d_bwd(go, x, ind))
    with pytest.raises(RuntimeError, match="outside"):
        P.max_pool2d_bwd(go, x, ind + 1000)


# ---- avg pool ------------------------------------------------------------------

AVG_CASES = [  # (shape, k, s, p, ceil, count_include_pad, divisor_override)
    ((2, 3, 7, 9), [3, 3], [2, 2], [1, 1], True, True, None),
    ((1, 3, 8, 7), [3, 2], [2, 2], [1, 0], True, False, None),
    ((1, 2, 6, 11), [2, 2], [2, 2], [0, 0], False, True, 3),
]


@pytest.mark.parametrize("dtype,cl", VARIANTS, ids=VARIANT_IDS)
def test_avg_pool(P, dtype, cl):
    for i, (shape, k, s, p, ceil, cip, div) in enumerate(AVG_CASES):
        x = rand(shape, dtype, i, cl)
        y = P.avg_pool2d_fwd(x, k, s, p, ceil, cip, div)
        go = rand(tuple(y.shape), dtype, 10 + i)
        gi = P.avg_pool2d_bwd(go, x, k, s, p, ceil, cip, div)
        fn = lambda t: F.avg_pool2d(t, k, s, p, ceil, cip, div)  # noqa: E731
        ry, rg = grads(fn, x, go, torch.float64)
        ny, ng = grads(fn, x, go, dtype)
        check(f"avg out {shape}", y, ny, ry, dtype)
        check(f"avg grad_input {shape}", gi, ng, rg, dtype)
        assert same_format(y, x) and same_format(gi, x)


# ---- adaptive avg pool -----------------------------------------------------------

ADAPTIVE_CASES = [((2, 3, 7, 9), [3, 4]), ((1, 5, 4, 3), [1, 1]), ((1, 2, 5, 5), [7, 2])]


@pytest.mark.parametrize("dtype,cl", VARIANTS, ids=VARIANT_IDS)
def test_adaptive_avg_pool(P, dtype, cl):
    for i, (shape, out) in enumerate(ADAPTIVE_CASES):
        x = rand(shape, dtype, i, cl)
        y = P.adaptive_avg_pool2d_fwd(x, out)
        go = rand(tuple(y.shape), dtype, 10 + i)
        gi = P.adaptive_avg_pool2d_bwd(go, x)
        fn = lambda t: F.adaptive_avg_pool2d(t, out)  # noqa: E731
        ry, rg = grads(fn, x, go, torch.float64)
        ny, ng = grads(fn, x, go, dtype)
        check(f"adaptive out {shape}->{out}", y, ny, ry, dtype)
        check(f"adaptive grad_input {shape}->{out}", gi, ng, rg, dtype)
        assert same_format(y, x) and same_format(gi, x)


def test_strided_input(P):
    x = rand((2, 3, 6, 14), torch.float32, 1)[..., ::2]
    y, ind = P.max_pool2d_fwd(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    ry, ri = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(y, ry) and torch.equal(ind, ri)
    torch.testing.assert_close(P.avg_pool2d_fwd(x, [3, 3], [1, 1], [1, 1], False, False, None),
                               F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))


# ---- through the functionals (backend "triton") ------------------------------------

@pytest.mark.skipif(DEV != "cpu", reason="the interpreter path (opaque custom ops)")
def test_functionals_autograd_and_opcheck():
    import minitorch_ext as mte

    MF = mte.nn.functional
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    x1 = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    calls = [
        (lambda f, t: f.max_pool2d(t, 3, 2, 1), x),
        (lambda f, t: f.avg_pool2d(t, 3, 2, 1, ceil_mode=True, count_include_pad=False), x),
        (lambda f, t: f.adaptive_avg_pool2d(t, (4, None)), x),
        (lambda f, t: f.max_pool1d(t, 2, dilation=2), x1),
        (lambda f, t: f.avg_pool1d(t, 3, 2, 1), x1),
        (lambda f, t: f.adaptive_avg_pool1d(t, 4), x1),
    ]
    for call, t in calls:
        with mte.use_backend("triton"):
            y = call(MF, t)
            g, = torch.autograd.grad(y, t, torch.ones_like(y))
        r = call(F, t)
        rg, = torch.autograd.grad(r, t, torch.ones_like(r))
        torch.testing.assert_close(y, r)
        torch.testing.assert_close(g, rg)
    ops = torch.ops.minitorch_ext
    xs = x.detach().float()
    y, ind = ops.max_pool2d_fwd_triton(xs, [3, 3], [2, 2], [1, 1], [1, 1], False)
    for op, args in [
        (ops.max_pool2d_fwd_triton, (xs.clone().requires_grad_(), [3, 3], [2, 2], [1, 1], [1, 1], False)),
        (ops.max_pool2d_bwd_triton, (torch.randn_like(y), xs, ind)),
        (ops.avg_pool2d_fwd_triton, (xs, [2, 2], [2, 2], [0, 0], False, True, None)),
        (ops.adaptive_avg_pool2d_bwd_triton, (torch.randn(2, 3, 2, 2), xs)),
    ]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
