"""The CUDA GEMM (csrc/gemm/gemm_cuda.cu): torch.ops.minitorch_ext.gemm / linear_fwd / linear_bwd
on CUDA tensors, against a float64 reference, judged by the error-ratio rule against
torch's own error on the same (rounded) inputs: cuBLAS through torch.mm / F.linear and
torch's activations, in the same dtype.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device); elsewhere
every test here is skipped. Sizes are small (a few seconds on a GPU).
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
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("gemm"),
                       reason="the extension was built without its CUDA kernels"),
]

ops = torch.ops.minitorch_ext
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
ACTS = [("none", 0.01), ("relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", -0.5), ("gelu", 0.01),
        ("gelu_tanh", 0.01), ("silu", 0.01), ("tanh", 0.01), ("sigmoid", 0.01)]
FACTOR = testing.TOLERANCE_FACTOR

# setup.py compiles .cu files with --use_fast_math, under which tanhf would become
# tanh.approx.f32 (relative error ~2^-11); common/act_cuda.cuh computes float tanh through
# double for that reason. test_float32_tanh_epilogue checks those two epilogues apart.
FAST_MATH_TANH = {"tanh", "gelu_tanh"}


def _acts_for(dtype):
    return list(ACTS)


@pytest.fixture(autouse=True)
def _exact_float32():
    """cuBLAS float32 as the baseline must be true float32 (no TF32), as torch's default."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = prev


def _act(x, act, slope):
    if act == "none":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "leaky_relu":
        return F.leaky_relu(x, slope)
    if act == "gelu":
        return F.gelu(x)
    if act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "silu":
        return F.silu(x)
    if act == "tanh":
        return torch.tanh(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(act)


def _rand(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).cuda()


def _err(x, ref):
    if x.numel() == 0:
        return 0.0
    return (x.double() - ref).abs().max().item()


def _judge(name, ours, native, ref, dtype, factor=None):
    """ours vs ref within factor x native's error + eps(dtype) x scale (NaN fails)."""
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)}, expected {tuple(ref.shape)}"
    assert ours.dtype == native.dtype, f"{name}: dtype {ours.dtype}, torch gives {native.dtype}"
    eo, en = _err(ours, ref), _err(native, ref)
    scale = ref.abs().max().item() if ref.numel() else 0.0
    res = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
    bound = (factor or FACTOR[dtype]) * en + res * max(1.0, scale)
    assert eo <= bound, f"{name} [{dtype}]: our error {eo:.3e} > {bound:.3e} (torch's {en:.3e}, scale {scale:.3e})"


def _operand(rows, cols, layout, dtype, seed, scale=1.0):
    """A [rows, cols] operand laid out as asked: contiguous, transposed (a .t() view),
    strided (every other column of a wider tensor), or offset (a view 1 element into its storage:
    not 16-byte aligned)."""
    if layout == "contig":
        return _rand(rows, cols, dtype=dtype, seed=seed, scale=scale)
    if layout == "t":
        return _rand(cols, rows, dtype=dtype, seed=seed, scale=scale).t()
    if layout == "strided":
        return _rand(rows, 2 * cols, dtype=dtype, seed=seed, scale=scale)[:, ::2]
    if layout == "offset":
        return _rand(rows * cols + 1, dtype=dtype, seed=seed, scale=scale)[1:].view(rows, cols)
    raise ValueError(layout)


def _gemm_ref(a, b, c=None, alpha=1.0, beta=1.0, bias=None, bias_dim=1, act="none", slope=0.01):
    v = alpha * (a.double() @ b.double())
    if c is not None and beta != 0:
        v = v + beta * c.double()
    if bias is not None:
        v = v + (bias.double()[None, :] if bias_dim == 1 else bias.double()[:, None])
    return _act(v, act, slope)


def _gemm_native(a, b, c=None, alpha=1.0, beta=1.0, bias=None, bias_dim=1, act="none", slope=0.01):
    v = torch.mm(a, b)
    if alpha != 1.0:
        v = v * alpha
    if c is not None and beta != 0:
        v = v + beta * c
    if bias is not None:
        v = v + (bias[None, :] if bias_dim == 1 else bias[:, None])
    return _act(v, act, slope)


# sizes that are 1, primes, and off every tile (128x128x32 tensor-core, 128x128x8 / 64x64x8 SIMT)
SHAPES = [(1, 1, 1), (7, 13, 5), (1, 64, 130), (63, 65, 257), (128, 32, 128), (129, 33, 127),
          (257, 1, 63), (65, 257, 1), (5, 1000, 7), (300, 520, 200)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_shapes_and_layouts(dtype):
    with testing.poisoned():
        for i, (M, K, N) in enumerate(SHAPES):
            for la, lb in [("contig", "contig"), ("t", "contig"), ("contig", "t"), ("t", "t"),
                           ("strided", "offset"), ("offset", "strided")]:
                a = _operand(M, K, la, dtype, seed=2 * i)
                b = _operand(K, N, lb, dtype, seed=2 * i + 1)
                out = ops.gemm(a, b)
                assert out.is_contiguous()
                _judge(f"gemm {M}x{K}x{N} a:{la} b:{lb}", out, _gemm_native(a, b), _gemm_ref(a, b), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gemm_epilogues(dtype):
    M, K, N = 67, 45, 131
    a = _operand(M, K, "contig", dtype, seed=1)
    b = _operand(K, N, "t", dtype, seed=2)
    c = _operand(M, N, "t", dtype, seed=3)          # a strided c (the BLAS C or a residual)
    with testing.poisoned():
        for act, slope in _acts_for(dtype):
            for bias_dim in (1, 0):
                bias = _rand(N if bias_dim == 1 else M, dtype=dtype, seed=4 + bias_dim)
                kw = dict(alpha=0.5, beta=-1.5, bias=bias, bias_dim=bias_dim, act=act, slope=slope)
                out = ops.gemm(a, b, c, **kw)
                _judge(f"gemm epilogue {kw | dict(bias=None)}", out, _gemm_native(a, b, c, **kw),
                       _gemm_ref(a, b, c, **kw), dtype)
            # the activation alone, and with only c (alpha = 1)
            kw = dict(act=act, slope=slope)
            _judge(f"gemm act {act}", ops.gemm(a, b, **kw), _gemm_native(a, b, **kw), _gemm_ref(a, b, **kw), dtype)
            kw = dict(beta=1.0, act=act, slope=slope)
            _judge(f"gemm c+act {act}", ops.gemm(a, b, c, **kw), _gemm_native(a, b, c, **kw),
                   _gemm_ref(a, b, c, **kw), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gemm_edges(dtype):
    dev = "cuda"
    a, b = _rand(9, 4, dtype=dtype, seed=0), _rand(4, 11, dtype=dtype, seed=1)
    c = torch.full((9, 11), float("nan"), dtype=dtype, device=dev)
    with testing.poisoned():
        # beta == 0: c is not read (BLAS), a NaN in it does not leak
        out = ops.gemm(a, b, c, beta=0.0)
        assert not out.isnan().any()
        _judge("gemm beta=0", out, torch.mm(a, b), _gemm_ref(a, b), dtype)
        # K == 0: the epilogue alone
        c = _rand(9, 11, dtype=dtype, seed=2)
        bias = _rand(11, dtype=dtype, seed=3)
        a0, b0 = torch.empty(9, 0, dtype=dtype, device=dev), torch.empty(0, 11, dtype=dtype, device=dev)
        out = ops.gemm(a0, b0, c, beta=2.0, bias=bias, act="relu")
        torch.testing.assert_close(out, torch.relu(2.0 * c.float() + bias.float()).to(dtype), rtol=0, atol=0)
        # empty M or N
        assert ops.gemm(torch.empty(0, 4, dtype=dtype, device=dev), b).shape == (0, 11)
        assert ops.gemm(a, torch.empty(4, 0, dtype=dtype, device=dev)).shape == (9, 0)
        # an expanded (stride-0) operand
        row = _rand(1, 40, dtype=dtype, seed=4)
        a_exp = row.expand(33, 40)
        b2 = _rand(40, 17, dtype=dtype, seed=5)
        _judge("gemm expanded a", ops.gemm(a_exp, b2), torch.mm(a_exp, b2), _gemm_ref(a_exp, b2), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gemm_long_k_and_magnitudes(dtype):
    M, K, N = 70, 8192, 66
    g = torch.Generator().manual_seed(7)
    span = 4.0 if dtype != torch.float16 else 1.0   # float16 would overflow past ~2^15 per product
    a = (torch.randn(M, K, generator=g, dtype=torch.float64) * torch.exp(span * torch.randn(M, K, generator=g,
                                                                                        dtype=torch.float64)))
    b = torch.randn(K, N, generator=g, dtype=torch.float64) * torch.exp(torch.randn(K, N, generator=g,
                                                                                 dtype=torch.float64))
    if dtype == torch.float16:
        a, b = a.clamp(-200, 200), b.clamp(-200, 200)
    a, b = a.to(dtype).cuda(), b.to(dtype).cuda()
    with testing.poisoned():
        out = ops.gemm(a, b.t().contiguous().t())   # b transposed in memory
    # float32: our kernel adds the 8192 products of an output in one sequential chain;
    # cuBLAS may split K into parallel partial sums (lower rounding error, by up to
    # sqrt(splits)), so this one check allows twice the usual factor.
    _judge("gemm K=8192", out, torch.mm(a, b), _gemm_ref(a, b), dtype,
           factor=2 * FACTOR[dtype] if dtype == torch.float32 else None)


def _linear_ref(x, w, b, act, slope):
    return _act(F.linear(x.double(), w.double(), None if b is None else b.double()), act, slope)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_fwd(dtype):
    cases = [((2, 5, 33), 17, True), ((64, 784), 130, True), ((1, 1), 1, False), ((3, 4, 2, 8), 64, False),
             ((9,), 5, True)]
    with testing.poisoned():
        for i, (shape, n_out, has_bias) in enumerate(cases):
            x = _rand(*shape, dtype=dtype, seed=10 * i)
            w = _rand(n_out, shape[-1], dtype=dtype, seed=10 * i + 1, scale=shape[-1] ** -0.5)
            b = _rand(n_out, dtype=dtype, seed=10 * i + 2) if has_bias else None
            for act, slope in _acts_for(dtype):
                out, pre = ops.linear_fwd(x, w, b, act, slope)
                native_pre = F.linear(x, w, b)
                ref_pre = _linear_ref(x, w, b, "none", slope)
                _judge(f"linear_fwd {shape}->{n_out} {act}", out, _act(native_pre, act, slope),
                       _act(ref_pre, act, slope), dtype)
                if act == "none":
                    assert pre.numel() == 0
                else:
                    _judge(f"linear_fwd preact {shape} {act}", pre, native_pre, ref_pre, dtype)
    # a non-contiguous input (a transposed batch) and a transposed weight
    x = _rand(40, 3, 24, dtype=dtype, seed=99).transpose(0, 1)
    w = _rand(24, 31, dtype=dtype, seed=98).t()
    out, _ = ops.linear_fwd(x, w, None, "none", 0.01)
    _judge("linear_fwd strided", out, F.linear(x, w), _linear_ref(x, w, None, "none", 0.01), dtype)


def _linear_bwd_case(dtype, shape, n_out, act, slope, seed, go_layout="contig"):
    x = _rand(*shape, dtype=dtype, seed=seed)
    w = _rand(n_out, shape[-1], dtype=dtype, seed=seed + 1, scale=shape[-1] ** -0.5)
    b = _rand(n_out, dtype=dtype, seed=seed + 2)
    out_shape = (*shape[:-1], n_out)
    if go_layout == "expanded":   # what out.sum().backward() sends
        go = torch.ones((), dtype=dtype, device="cuda").expand(out_shape)
    else:
        go = _rand(*out_shape, dtype=dtype, seed=seed + 3)
    # native: torch's autograd of act(F.linear) in the dtype; reference: the same in float64
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    nat = torch.autograd.grad(_act(F.linear(*leaves), act, slope), leaves, go)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ref = torch.autograd.grad(_act(F.linear(*leaves64), act, slope), leaves64, go.double())
    _, pre = ops.linear_fwd(x, w, b, act, slope)
    return x, w, go, pre, nat, ref


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_bwd(dtype):
    cases = [((2, 5, 33), 17), ((64, 784), 130), ((1, 1), 1), ((300, 7), 257), ((9,), 5)]
    with testing.poisoned():
        for i, (shape, n_out) in enumerate(cases):
            for act, slope in _acts_for(dtype):
                x, w, go, pre, nat, ref = _linear_bwd_case(dtype, shape, n_out, act, slope, seed=20 * i)
                dx, dw, db = ops.linear_bwd(go, x, w, pre, act, slope, [True, True, True])
                for name, o, n, r in zip(("grad_input", "grad_weight", "grad_bias"), (dx, dw, db), nat, ref):
                    _judge(f"linear_bwd {shape}->{n_out} {act} {name}", o, n, r, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_bwd_masks_and_layouts(dtype):
    with testing.poisoned():
        for act, slope in [("none", 0.01), ("gelu", 0.01)]:
            x, w, go, pre, nat, ref = _linear_bwd_case(dtype, (4, 6, 40), 24, act, slope, seed=5,
                                                       go_layout="expanded")
            dx, dw, db = ops.linear_bwd(go, x, w, pre, act, slope, [True, True, True])
            for name, o, n, r in zip(("grad_input", "grad_weight", "grad_bias"), (dx, dw, db), nat, ref):
                _judge(f"linear_bwd expanded grad_output {act} {name}", o, n, r, dtype)
            x, w, go, pre, nat, ref = _linear_bwd_case(dtype, (50, 40), 24, act, slope, seed=6)
            for mask in ([True, False, False], [False, True, False], [False, False, True], [False, True, True]):
                res = ops.linear_bwd(go, x, w, pre, act, slope, mask)
                for k, (name, o) in enumerate(zip(("grad_input", "grad_weight", "grad_bias"), res)):
                    if mask[k]:
                        _judge(f"linear_bwd mask {mask} {act} {name}", o, nat[k], ref[k], dtype)
                    else:
                        assert o.shape == (0,), f"{name} not asked for: expected an empty [0] tensor, got {o.shape}"
        # no rows: zero parameter gradients
        x = torch.empty(0, 8, dtype=dtype, device="cuda")
        w = _rand(3, 8, dtype=dtype, seed=1)
        go = torch.empty(0, 3, dtype=dtype, device="cuda")
        dx, dw, db = ops.linear_bwd(go, x, w, torch.empty(0, 3, dtype=dtype, device="cuda"), "relu", 0.01,
                                    [True, True, True])
        assert dx.shape == (0, 8) and (dw == 0).all() and (db == 0).all() and db.shape == (3,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bitwise_repeatable(dtype):
    a = _operand(513, 1000, "contig", dtype, seed=1)
    b = _operand(1000, 257, "t", dtype, seed=2)
    bias = _rand(257, dtype=dtype, seed=3)
    r1 = ops.gemm(a, b, bias=bias, act="gelu")
    r2 = ops.gemm(a, b, bias=bias, act="gelu")
    assert torch.equal(r1, r2)
    x = _rand(4, 300, 96, dtype=dtype, seed=4)
    w = _rand(200, 96, dtype=dtype, seed=5)
    go = _rand(4, 300, 200, dtype=dtype, seed=6)
    _, pre = ops.linear_fwd(x, w, bias[:200], "silu", 0.01)
    g1 = ops.linear_bwd(go, x, w, pre, "silu", 0.01, [True, True, True])
    g2 = ops.linear_bwd(go, x, w, pre, "silu", 0.01, [True, True, True])
    for u, v in zip(g1, g2):
        assert torch.equal(u, v)


def _raises(exc, match, fn, native=None):
    with pytest.raises(exc, match=match):
        fn()
    if native is not None:   # torch refuses the same call with the same error type
        with pytest.raises(exc):
            native()


def test_bad_inputs():
    f32 = dict(dtype=torch.float32, device="cuda")
    a, b = torch.randn(3, 4, **f32), torch.randn(5, 6, **f32)
    _raises(RuntimeError, r"mat1 and mat2 shapes cannot be multiplied \(3x4 and 5x6\)", lambda: ops.gemm(a, b),
            lambda: torch.mm(a, b))
    x, w = torch.randn(2, 3, 4, **f32), torch.randn(6, 5, **f32)
    _raises(RuntimeError, r"mat1 and mat2 shapes cannot be multiplied \(6x4 and 5x6\)",
            lambda: ops.linear_fwd(x, w, None, "none", 0.01), lambda: F.linear(x, w))
    w = torch.randn(6, 4, **f32)
    _raises(RuntimeError, "same dtype", lambda: ops.linear_fwd(x, w.double(), None, "none", 0.01),
            lambda: F.linear(x, w.double()))
    _raises(RuntimeError, "same dtype", lambda: ops.gemm(a, torch.randn(4, 2, dtype=torch.bfloat16, device="cuda")))
    i32 = torch.ones(4, 2, dtype=torch.int32, device="cuda")
    _raises(RuntimeError, "floating point", lambda: ops.gemm(a.int(), i32), lambda: torch.mm(a.int(), i32))
    _raises(RuntimeError, "expected a tensor on cuda", lambda: ops.linear_fwd(x, w.cpu(), None, "none", 0.01),
            lambda: F.linear(x, w.cpu()))
    b5 = torch.randn(5, **f32)
    _raises(RuntimeError, r"bias: expected shape \[6\]", lambda: ops.linear_fwd(x, w, b5, "none", 0.01),
            lambda: F.linear(x, w, b5))
    _raises(RuntimeError, r"c: expected shape \[3, 2\]",
            lambda: ops.gemm(a, torch.randn(4, 2, **f32), torch.randn(2, 3, **f32)))
    _raises(ValueError, "bias_dim",
            lambda: ops.gemm(a, torch.randn(4, 2, **f32), bias=torch.randn(2, **f32), bias_dim=2))
    _raises(ValueError, "act", lambda: ops.gemm(a, torch.randn(4, 2, **f32), act="swish"))
    _raises(RuntimeError, "2-D", lambda: ops.gemm(torch.randn(2, 3, 4, **f32), torch.randn(4, 2, **f32)))
    go = torch.randn(2, 3, 5, **f32)
    _raises(RuntimeError, "grad_output: expected shape",
            lambda: ops.linear_bwd(go, x, w, go, "none", 0.01, [True, True, True]))


@pytest.mark.parametrize("act", sorted(FAST_MATH_TANH))
def test_float32_tanh_epilogue(act):
    dtype = torch.float32
    a, b = _operand(67, 45, "contig", dtype, seed=1), _operand(45, 131, "t", dtype, seed=2)
    _judge(f"gemm act {act}", ops.gemm(a, b, act=act), _gemm_native(a, b, act=act), _gemm_ref(a, b, act=act), dtype)
    x, w, go, pre, nat, ref = _linear_bwd_case(dtype, (30, 40), 24, act, 0.01, seed=3)
    out, _ = ops.linear_fwd(x, w, None, act, 0.01)
    _judge(f"linear_fwd {act}", out, _act(F.linear(x, w), act, 0.01), _linear_ref(x, w, None, act, 0.01), dtype)
    for name, o, n, r in zip(("grad_input", "grad_weight", "grad_bias"),
                             ops.linear_bwd(go, x, w, pre, act, 0.01, [True, True, True]), nat, ref):
        _judge(f"linear_bwd {act} {name}", o, n, r, dtype)
