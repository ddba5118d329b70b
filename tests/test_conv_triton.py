"""Kernel-level and op-level tests of the Triton conv kernels (kernels/conv.py), on CPU
through Triton's interpreter (on cuda where a GPU is visible and TRITON_INTERPRET is unset).

Reference: torch's F.conv2d (after F.pad for the padding modes, as torch.nn.Conv2d does)
in float64 on the very same rounded inputs, gradients by torch.autograd. Judged by the
error-ratio rule of tests/test_attention_triton.py: our error against the float64
reference within TOLERANCE_FACTOR x the error of torch's own conv in the test dtype,
plus a floor of 8 ulps of the result's scale. Outputs are poisoned (NaN-filled) where
the package allows, so an element never written fails.

The interpreter runs one program instance after another: every case is tiny (a few
hundred output elements) and the file is kept to well under half a minute.
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


@pytest.fixture(scope="module")
def K():
    from minitorch_ext.kernels import conv
    return conv


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


def torch_conv(x, w, b, stride, pads, dilation, groups, mode):
    rp = [pads[2], pads[3], pads[0], pads[1]]
    xp = F.pad(x, rp) if mode == "zeros" else F.pad(x, rp, mode=mode)
    return F.conv2d(xp, w, b, stride, 0, dilation, groups)


def rand(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEV)


def run_case(K, N, C, H, W, O, kh, kw, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1,
             mode="zeros", bias=True, dtype=torch.float32, x_cl=False, w_cl=False, x_strided=False,
             output_mask=(True, True, True)):
    x = rand((N, C, H, 2 * W if x_strided else W), dtype, 1)
    if x_strided:
        x = x[..., ::2]
    if x_cl:
        x = x.contiguous(memory_format=torch.channels_last)
    w = rand((O, C // groups, kh, kw), dtype, 2, scale=(C // groups * kh * kw) ** -0.5)
    if w_cl:
        w = w.contiguous(memory_format=torch.channels_last)
    b = rand((O,), dtype, 3) if bias else None
    stride, pads, dilation = list(stride), list(pads), list(dilation)

    y = K.conv_fwd(x, w, b, stride, pads, dilation, groups, mode)
    go = rand(tuple(y.shape), dtype, 4)
    gi, gw, gb = K.conv_bwd(go, x, w, stride, pads, dilation, groups, mode, list(output_mask))

    def ref(dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (x, w)] + \
                 ([b.detach().to(dt).requires_grad_()] if bias else [])
        out = torch_conv(leaves[0], leaves[1], leaves[2] if bias else None, stride, pads, dilation, groups, mode)
        return out.detach(), torch.autograd.grad(out, leaves, go.to(dt))

    r_y, r_g = ref(torch.float64)
    n_y, n_g = ref(dtype)
    tag = f"x{list(x.shape)} w{list(w.shape)} s{stride} p{pads} d{dilation} g{groups} {mode}"
    check(f"out {tag}", y, n_y, r_y, dtype)
    want_cl = x_cl or w_cl
    assert y.is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format), tag
    for name, ours, nat, rf, want in zip(("grad_input", "grad_weight", "grad_bias"), (gi, gw, gb),
                                         n_g + (None,) * (3 - len(n_g)), r_g + (None,) * (3 - len(r_g)),
                                         output_mask):
        if not want:
            assert ours is None, name
            continue
        if rf is None:  # no bias: torch has no gradient to compare with
            continue
        check(f"{name} {tag}", ours, nat, rf, dtype)
    if output_mask[0]:
        assert gi.is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format)
    if output_mask[1]:
        assert gw.is_contiguous()
    return y, (gi, gw, gb)


# (N, C, H, W, O, kh, kw, options): each spans several 16-wide tiles in M or K
CASES = {
    "plain": (2, 3, 7, 6, 5, 3, 3, dict(pads=(1, 1, 1, 1))),
    "channels_last_stride2_asym": (2, 4, 9, 8, 6, 3, 2, dict(stride=(2, 2), pads=(1, 0, 2, 1), x_cl=True)),
    "cl_weight_same_even": (1, 3, 6, 7, 4, 4, 4, dict(pads=(1, 2, 1, 2), w_cl=True)),
    "reflect": (2, 2, 6, 7, 3, 3, 3, dict(pads=(2, 1, 1, 2), mode="reflect")),
    "replicate_stride": (1, 3, 5, 6, 4, 3, 3, dict(pads=(2, 2, 1, 1), stride=(2, 1), mode="replicate")),
    "circular_cl": (1, 2, 5, 5, 3, 3, 3, dict(pads=(2, 1, 3, 2), mode="circular", x_cl=True)),
    "groups_dilation": (2, 4, 8, 7, 6, 3, 3, dict(groups=2, dilation=(2, 1), pads=(2, 2, 1, 1), bias=False)),
    "depthwise_stride2": (2, 5, 7, 7, 10, 3, 3, dict(groups=5, stride=(2, 2), pads=(1, 1, 1, 1))),
    "pointwise_strided_input": (3, 6, 5, 5, 7, 1, 1, dict(stride=(2, 2), x_strided=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_conv_float32(K, case):
    N, C, H, W, O, kh, kw, opts = CASES[case]
    run_case(K, N, C, H, W, O, kh, kw, dtype=torch.float32, **opts)


@pytest.mark.parametrize("case", ["plain", "reflect", "groups_dilation", "channels_last_stride2_asym"])
def test_conv_float64(K, case):
    N, C, H, W, O, kh, kw, opts = CASES[case]
    run_case(K, N, C, H, W, O, kh, kw, dtype=torch.float64, **opts)


@pytest.mark.parametrize("case", ["plain", "depthwise_stride2"])
def test_conv_bfloat16(K, case):
    N, C, H, W, O, kh, kw, opts = CASES[case]
    run_case(K, N, C, H, W, O, kh, kw, dtype=torch.bfloat16, **opts)


def test_output_mask_empty_batch_and_determinism(K):
    run_case(K, 1, 2, 5, 5, 3, 3, 3, pads=(1, 1, 1, 1), output_mask=(False, True, False))
    run_case(K, 1, 2, 5, 5, 3, 3, 3, pads=(1, 1, 1, 1), output_mask=(True, False, True))
    # empty batch: an empty output, zero weight and bias gradients
    x, w = rand((0, 2, 5, 5), torch.float32, 1), rand((3, 2, 3, 3), torch.float32, 2)
    y = K.conv_fwd(x, w, None, [1, 1], [1, 1], [1, 1], 1, "zeros")
    assert y.shape == (0, 3, 5, 5)
    gi, gw, gb = K.conv_bwd(y, x, w, [1, 1], [1, 1], [1, 1], 1, "zeros", [True, True, True])
    assert gi.shape == x.shape and torch.equal(gw, torch.zeros_like(gw))
    assert torch.equal(gb, torch.zeros(3, device=DEV))
    # the backward is bitwise repeatable (no atomics)
    x, w = rand((2, 4, 6, 6), torch.float32, 5), rand((4, 2, 3, 3), torch.float32, 6)
    go = rand((2, 4, 6, 6), torch.float32, 7)
    a = K.conv_bwd(go, x, w, [1, 1], [1, 1, 1, 1], [1, 1], 2, "reflect", [True, True, True])
    b = K.conv_bwd(go, x, w, [1, 1], [1, 1, 1, 1], [1, 1], 2, "reflect", [True, True, True])
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
def test_fused_activation_epilogue(K, act):
    x, w, b = rand((2, 3, 5, 6), torch.float32, 1), rand((4, 3, 3, 3), torch.float32, 2), rand((4,), torch.float32, 3)
    y = K.conv_fwd(x, w, b, [1, 1], [1, 1], [1, 1], 1, "zeros", act)
    r = getattr(F, act)(F.conv2d(x.double(), w.double(), b.double(), padding=1))
    torch.testing.assert_close(y.double(), r, atol=2e-6, rtol=1e-5)


def test_bad_inputs(K):
    x, w = rand((1, 3, 5, 5), torch.float32, 1), rand((4, 3, 3, 3), torch.float32, 2)
    with pytest.raises(ValueError, match="padding_mode"):
        K.conv_fwd(x, w, None, [1, 1], [0, 0], [1, 1], 1, "mirror")
    with pytest.raises(ValueError, match="act"):
        K.conv_fwd(x, w, None, [1, 1], [0, 0], [1, 1], 1, "zeros", "swish")
    with pytest.raises(RuntimeError, match="float16"):
        K.conv_fwd(x.half(), w.half(), None, [1, 1], [0, 0], [1, 1], 1, "zeros")
    with pytest.raises(RuntimeError, match="grad_output: expected size"):
        K.conv_bwd(rand((1, 4, 2, 2), torch.float32, 3), x, w, [1, 1], [0, 0], [1, 1], 1, "zeros",
                   [True, True, True])


# ---- through the registered ops and the functionals (backend "triton") -----------

@pytest.mark.skipif(DEV != "cpu", reason="the interpreter path (opaque custom ops)")
def test_functional_autograd_opcheck_and_no_native_conv():
    import minitorch_ext as mte
    from torch.utils._python_dispatch import TorchDispatchMode

    class Trace(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    with mte.use_backend("triton"):
        with Trace() as t:
            y = mte.nn.functional.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2)
            gx, gw, gb = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
        assert any("conv_fwd_triton" in op for op in t.ops) and any("conv_bwd_triton" in op for op in t.ops)
        banned = ("convolution", "conv2d", "mkldnn", "mm.", "addmm", "bmm", "matmul", "im2col", "slow_conv")
        assert not [op for op in t.ops if any(s in op for s in banned)]
        # conv1d (H == 1 inside), unbatched, padding='same' with an even kernel
        x1 = torch.randn(3, 9, generator=g, dtype=torch.float64, requires_grad=True)
        w1 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
        y1 = mte.nn.functional.conv1d(x1, w1, padding="same")
        g1 = torch.autograd.grad(y1, (x1, w1), torch.ones_like(y1))
    r = F.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2)
    rg = torch.autograd.grad(r, (x, w, b), torch.ones_like(r))
    torch.testing.assert_close(y, r)
    for a, e in zip((gx, gw, gb), rg):
        torch.testing.assert_close(a, e)
    r1 = F.conv1d(x1, w1, padding="same")
    torch.testing.assert_close(y1, r1)
    for a, e in zip(g1, torch.autograd.grad(r1, (x1, w1), torch.ones_like(r1))):
        torch.testing.assert_close(a, e)
    ops = torch.ops.minitorch_ext
    xs, ws = x.detach().float(), w.detach().float()
    torch.library.opcheck(ops.conv_fwd_triton, (xs.requires_grad_(), ws, None, [1, 1], [1, 1], [1, 1], 2, "zeros",
                                                "none"), test_utils=("test_schema", "test_faketensor"))
    go = torch.randn(2, 6, 6, 6, generator=g)
    torch.library.opcheck(ops.conv_bwd_triton, (go, xs.detach(), ws, [1, 1], [1, 1], [1, 1], 2, "zeros",
                                                [True, True, False]), test_utils=("test_schema", "test_faketensor"))
