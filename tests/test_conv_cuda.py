"""The conv family's CUDA kernels (csrc/conv/conv_cuda.cu): torch.ops.minitorch_ext.conv_fwd /
conv_bwd on CUDA tensors, against a float64 CPU reference (F.conv2d after F.pad for the
padding modes other than zeros, and its autograd) on the same (rounded) inputs.

Judged by the error-ratio rule: our max error against the float64 reference must be within
FACTOR times torch's own error in the same dtype (F.conv2d on CUDA and its autograd; cuDNN,
which may use TF32 for float32), plus a tiny absolute floor. Every call runs with the poison
switch on, so an output element a kernel forgot to write is NaN and fails. conv_bwd must be
bitwise repeatable (no atomics).

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
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("conv_fwd"),
                       reason="the extension was built without its CUDA conv kernels"),
]

ops = torch.ops.minitorch_ext
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
FACTOR = 4.0
DEV = "cuda"


@pytest.fixture(autouse=True)
def _no_tf32():
    """torch's float32 baseline in full float32 (cuDNN would use TF32 by default), so the
    error-ratio rule compares like with like."""
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = prev


def _floor(dtype, ref):
    eps = torch.finfo(dtype).eps
    mag = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    return (4 if dtype in (torch.bfloat16, torch.float16) else 64) * eps * mag


def _err(a, ref):
    if ref.numel() == 0:
        return 0.0
    return float((a.double().cpu() - ref.double().cpu()).abs().max())  # NaN stays NaN


def _pads4(padding):
    padding = list(padding)
    return [padding[0], padding[0], padding[1], padding[1]] if len(padding) == 2 else padding


def torch_conv(x, w, b, stride, padding, dilation, groups, mode):
    """torch's conv2d with our padding contract: [pT, pB, pL, pR] and the padding modes."""
    pt, pb, pl, pr = _pads4(padding)
    if mode == "zeros":
        if pt == pb and pl == pr:
            return F.conv2d(x, w, b, stride, (pt, pl), dilation, groups)
        x = F.pad(x, (pl, pr, pt, pb))
    else:
        x = F.pad(x, (pl, pr, pt, pb), mode=mode)
    return F.conv2d(x, w, b, stride, 0, dilation, groups)


ACTS = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu, "silu": F.silu,
        "leaky_relu": lambda t: F.leaky_relu(t, 0.01)}

# N, C, H, W, O, kh, kw, stride, padding, dilation, groups, mode
CASES = [
    (2, 4, 9, 11, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1, "zeros"),
    (2, 4, 9, 11, 6, 3, 3, (2, 2), (1, 1), (1, 1), 1, "zeros"),
    (1, 6, 10, 7, 4, 3, 2, (2, 1), (0, 2, 1, 0), (1, 1), 2, "zeros"),      # asymmetric pads, groups
    (2, 3, 8, 8, 5, 3, 3, (1, 2), (2, 2), (2, 1), 1, "zeros"),             # dilation
    (2, 4, 7, 9, 8, 3, 3, (1, 1), (1, 1), (1, 1), 4, "zeros"),             # depthwise x2
    (1, 5, 9, 6, 5, 5, 3, (2, 1), (2, 1), (1, 1), 5, "reflect"),           # depthwise, reflect
    (2, 4, 6, 7, 6, 3, 3, (1, 1), (1, 2), (1, 1), 1, "reflect"),
    (2, 4, 6, 7, 6, 3, 3, (2, 1), (2, 1, 0, 2), (1, 1), 2, "replicate"),
    (1, 3, 5, 6, 4, 3, 3, (1, 2), (1, 1, 2, 1), (1, 2), 1, "circular"),
    (2, 8, 5, 5, 4, 1, 1, (1, 1), (0, 0), (1, 1), 1, "zeros"),             # 1x1
    (3, 4, 1, 17, 6, 1, 5, (1, 2), (0, 2), (1, 1), 1, "zeros"),            # conv1d as H == 1
    (2, 70, 12, 13, 130, 3, 3, (1, 1), (1, 1), (1, 1), 1, "zeros"),        # several tiles in M, N and K
    (2, 16, 32, 32, 24, 3, 3, (1, 1), (1, 1), (1, 1), 1, "zeros"),         # P = 2048: several grad_weight slots
    (0, 4, 5, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1, "zeros"),             # empty batch
]


def _ids(c):
    N, C, H, W, O, kh, kw, s, p, d, g, m = c
    return f"N{N}C{C}H{H}W{W}O{O}k{kh}x{kw}s{s[0]}{s[1]}p{''.join(map(str, p))}d{d[0]}{d[1]}g{g}{m[:3]}"


def _make(case, dtype, cl, gen_seed=0):
    N, C, H, W, O, kh, kw, s, p, d, g, m = case
    gen = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    w = torch.randn(O, C // g, kh, kw, generator=gen, dtype=torch.float64) / (C // g * kh * kw) ** 0.5
    b = torch.randn(O, generator=gen, dtype=torch.float64)
    x, w, b = x.to(DEV, dtype), w.to(DEV, dtype), b.to(DEV, dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, w, b


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv_fwd_bwd(case, dtype, cl):
    N, C, H, W, O, kh, kw, s, p, d, g, m = case
    x, w, b = _make(case, dtype, cl)
    with testing.poisoned():
        out = ops.conv_fwd(x, w, b, list(s), list(p), list(d), g, m, "none")
    ref = torch_conv(x.double().cpu(), w.double().cpu(), b.double().cpu(), s, p, d, g, m)
    assert out.shape == ref.shape and out.dtype == dtype and out.device.type == "cuda"
    if cl:
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()
    base = torch_conv(x, w, b, s, p, d, g, m)
    e_ours, e_torch = _err(out, ref), _err(base, ref)
    tol = FACTOR * e_torch + _floor(dtype, ref)
    assert e_ours <= tol, f"output: error {e_ours:.3g} > {tol:.3g} (torch {e_torch:.3g})"

    # backward: every output, against float64 autograd and torch's own autograd
    gen = torch.Generator().manual_seed(7)
    go = torch.randn(ref.shape, generator=gen, dtype=torch.float64).to(DEV, dtype)
    if cl:
        go = go.contiguous(memory_format=torch.channels_last)
    with testing.poisoned():
        gi, gw, gb = ops.conv_bwd(go, x, w, list(s), list(p), list(d), g, m, [True, True, True])
    xr, wr, br = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
    refs = torch.autograd.grad(torch_conv(xr, wr, br, s, p, d, g, m), (xr, wr, br), go.double().cpu())
    xl, wl, bl = (t.detach().clone().requires_grad_() for t in (x, w, b))
    lows = torch.autograd.grad(torch_conv(xl, wl, bl, s, p, d, g, m), (xl, wl, bl), go)
    for name, ours, r, low, like in (("grad_input", gi, refs[0], lows[0], x), ("grad_weight", gw, refs[1], lows[1], w),
                                     ("grad_bias", gb, refs[2], lows[2], b)):
        assert ours.shape == like.shape and ours.dtype == dtype, name
        e_o, e_t = _err(ours, r), _err(low, r)
        tol = FACTOR * e_t + _floor(dtype, r)
        assert e_o <= tol, f"{name}: error {e_o:.3g} > {tol:.3g} (torch {e_t:.3g})"
    if cl:
        assert gi.is_contiguous(memory_format=torch.channels_last)
    assert gw.is_contiguous()

    # deterministic: bitwise the same on a second run
    gi2, gw2, gb2 = ops.conv_bwd(go, x, w, list(s), list(p), list(d), g, m, [True, True, True])
    assert torch.equal(gi, gi2) and torch.equal(gw, gw2) and torch.equal(gb, gb2)


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=_ids)
def test_conv_fwd_act_epilogue(case, dtype, act):
    N, C, H, W, O, kh, kw, s, p, d, g, m = case
    x, w, b = _make(case, dtype, False, gen_seed=3)
    with testing.poisoned():
        out = ops.conv_fwd(x, w, b, list(s), list(p), list(d), g, m, act)
    ref = ACTS[act](torch_conv(x.double().cpu(), w.double().cpu(), b.double().cpu(), s, p, d, g, m))
    base = ACTS[act](torch_conv(x, w, b, s, p, d, g, m))
    e_ours, e_torch = _err(out, ref), _err(base, ref)
    tol = FACTOR * e_torch + _floor(dtype, ref)
    assert e_ours <= tol, f"{act}: error {e_ours:.3g} > {tol:.3g} (torch {e_torch:.3g})"


def test_conv_no_bias_output_mask_and_strided_views():
    # no bias; a weight in channels_last (output follows it); an input that is a strided view
    case = CASES[1]
    N, C, H, W, O, kh, kw, s, p, d, g, m = case
    x, w, _ = _make(case, torch.float32, False)
    xv = torch.randn(N, C, H, 2 * W, device=DEV)[..., ::2]
    xv.copy_(x)
    wcl = w.contiguous(memory_format=torch.channels_last)
    with testing.poisoned():
        out = ops.conv_fwd(xv, wcl, None, list(s), list(p), list(d), g, m, "none")
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = torch_conv(x.double().cpu(), w.double().cpu(), None, s, p, d, g, m)
    assert _err(out, ref) <= 1e-4
    go = torch.randn(out.shape, device=DEV)
    gi, gw, gb = ops.conv_bwd(go, xv, w, list(s), list(p), list(d), g, m, [False, True, False])
    assert gi.numel() == 0 and gb.numel() == 0 and gw.shape == w.shape
    gi, gw, gb = ops.conv_bwd(go, xv, w, list(s), list(p), list(d), g, m, [True, False, False])
    assert gi.shape == x.shape and gw.numel() == 0 and gb.numel() == 0


def test_conv_empty_batch_grads_are_zero():
    x = torch.randn(0, 4, 5, 5, device=DEV)
    w = torch.randn(6, 4, 3, 3, device=DEV)
    go = torch.randn(0, 6, 5, 5, device=DEV)
    gi, gw, gb = ops.conv_bwd(go, x, w, [1, 1], [1, 1], [1, 1], 1, "zeros", [True, True, True])
    assert gi.shape == x.shape and torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros(6, device=DEV))


def test_conv_bad_inputs():
    x = torch.randn(1, 4, 5, 5, device=DEV)
    w = torch.randn(6, 4, 3, 3, device=DEV)
    with pytest.raises(RuntimeError, match="should be the same"):
        ops.conv_fwd(x, w.double(), None, [1, 1], [1, 1], [1, 1], 1, "zeros", "none")
    with pytest.raises(RuntimeError, match="channels"):
        ops.conv_fwd(x, w, None, [1, 1], [1, 1], [1, 1], 2, "zeros", "none")
    with pytest.raises(ValueError, match="padding_mode"):
        ops.conv_fwd(x, w, None, [1, 1], [1, 1], [1, 1], 1, "mirror", "none")
    with pytest.raises(RuntimeError, match="reflect"):
        ops.conv_fwd(x, w, None, [1, 1], [5, 5], [1, 1], 1, "reflect", "none")
    with pytest.raises(RuntimeError):
        ops.conv_fwd(x, w.cpu(), None, [1, 1], [1, 1], [1, 1], 1, "zeros", "none")
