"""The pwloss family's CUDA kernels (csrc/loss/pwloss_cuda.cu): torch.ops.minitorch_ext.pwloss_fwd /
pwloss_bwd on CUDA tensors, through minitorch_ext.nn.functional on the 'cpp' backend.

Every kind and reduction, float32/bfloat16/float16/float64, against a float64 CPU reference with
the error-ratio rule (our error within FACTOR times torch's own CUDA error in the same dtype, plus
a small floor), forward and the input and target gradients; the reduced loss must be bitwise
repeatable; outputs poisoned. Runs only where a GPU is visible (scripts/gpu_check.sh on the lent
device); elsewhere every test here is skipped.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext import testing


def _has_cuda_kernel(op: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"minitorch_ext::{op}", "CUDA")
    except Exception:  # noqa: BLE001
        return False


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("pwloss_fwd"),
                       reason="the extension was built without its CUDA loss kernels"),
]

MF = mte.nn.functional
DEV = "cuda"
FACTOR = 4.0
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
FN = {"mse": "mse_loss", "l1": "l1_loss", "smooth_l1": "smooth_l1_loss", "huber": "huber_loss",
      "bce": "binary_cross_entropy", "bce_logits": "binary_cross_entropy_with_logits", "kl_div": "kl_div"}
TARGET_GRAD = ("mse", "l1", "smooth_l1", "huber", "bce_logits", "kl_div", "bce")


def _inputs(kind, shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == "bce":
        x = torch.sigmoid(x).clamp(0.02, 0.98)
    if kind == "kl_div":
        t = t + 0.05
    return x.to(dtype), t.to(dtype)


def _run(mod, kind, x, t, dev, red, kw):
    xg = x.to(dev).requires_grad_()
    tg = t.to(dev).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = getattr(mod, FN[kind])(xg, tg, reduction=red, **kw)
    go = torch.ones_like(y) if y.dim() == 0 else torch.linspace(-1, 1, y.numel(), device=dev).reshape(y.shape).to(y.dtype)
    gx, gt = torch.autograd.grad(y, [xg, tg], go)
    return y.detach(), gx, gt


def _err(a, ref):
    if ref.numel() == 0:
        return 0.0
    return float((a.double().cpu() - ref.double().cpu()).abs().max())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(FN))
def test_every_kind_and_reduction(kind, dtype):
    kws = {"smooth_l1": {"beta": 0.5}, "huber": {"delta": 0.7}}.get(kind, {})
    reds = ("none", "mean", "sum") + (("batchmean",) if kind == "kl_div" else ())
    for i, shape in enumerate([(3, 5), (64, 1031), (0, 4), ()]):
        x, t = _inputs(kind, shape, dtype, i)
        for red in reds:
            with testing.poisoned():
                ours = _run(MF, kind, x, t, DEV, red, kws)
            low = _run(F, kind, x, t, DEV, red, kws)
            ref = _run(F, kind, x.double(), t.double(), "cpu", red, kws)
            for name, o, n, r in zip(("loss", "grad_input", "grad_target"), ours, low, ref):
                assert o.dtype == n.dtype and o.shape == n.shape, name
                if r.numel() and bool(r.isnan().any()):  # the mean of an empty tensor: NaN, as torch
                    assert torch.equal(o.isnan().cpu(), r.isnan()), f"{kind} {red} {shape} {name}: NaN pattern"
                    continue
                eps = torch.finfo(dtype).eps
                tol = FACTOR * _err(n, r) + 4 * eps * max(1.0, float(r.abs().max()) if r.numel() else 1.0)
                assert _err(o, r) <= tol, f"{kind} {red} {shape} {name}: {_err(o, r):.3g} > {tol:.3g}"


def test_weights_and_pos_weight():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(33, 17, generator=g).to(DEV)
    t = torch.rand(33, 17, generator=g).to(DEV)
    w, pw = torch.rand(17, generator=g).to(DEV), torch.rand(17, generator=g).to(DEV) * 3
    a = MF.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw)
    b = F.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw)
    torch.testing.assert_close(a, b)
    xs = torch.sigmoid(x)
    torch.testing.assert_close(MF.binary_cross_entropy(xs, t, w), F.binary_cross_entropy(xs, t, w))


def test_reduction_bitwise_repeatable():
    x = torch.randn(1000, 1000, device=DEV)
    t = torch.randn(1000, 1000, device=DEV)
    a = [MF.mse_loss(x, t) for _ in range(3)]
    assert all(torch.equal(a[0], b) for b in a[1:])
