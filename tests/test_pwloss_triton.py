"""The pwloss family on its Triton kernels (kernels/pwloss.py): on CPU through Triton's
interpreter (TRITON_INTERPRET=1, set by tests/conftest.py without a GPU), on cuda where a GPU is
visible. The shared checker on tiny samples (cases.pwloss.TRITON_FIXED): gradcheck in float64
(fast mode: one random direction) on input and target, parity against torch and a float64
reference in float32/bfloat16/float64, opcheck on one sample, bad inputs; plus every kind and
reduction once through the functionals, and a bitwise-repeat check of the reduction.
Tiny shapes: the interpreter runs one program instance after another."""
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

import minitorch_ext as mte  # noqa: E402
from minitorch_ext import testing  # noqa: E402
from minitorch_ext.cases.pwloss import FN, KINDS, spec  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
SPEC = spec()
MF = mte.nn.functional


def _samples():
    return SPEC.samples("triton")


@pytest.mark.parametrize("i", range(len(_samples())))
def test_pwloss_triton_gradcheck(i):
    sample = _samples()[i]
    leaves = sample.cast(torch.float64, DEV, requires_grad=True)

    def f(x, t):
        with mte.use_backend("triton"):
            return sample.build(SPEC.ours, {**leaves, "input": x, "target": t})

    with testing.poisoned():
        assert torch.autograd.gradcheck(f, (leaves["input"], leaves["target"]), eps=1e-6, atol=1e-5, rtol=1e-4,
                                        fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_pwloss_triton_parity(dtype):
    for sample in _samples():
        testing.check_parity(SPEC, sample, "triton", dtype, device=DEV)


def test_pwloss_triton_opcheck():
    testing.check_opcheck(SPEC, _samples()[0], "triton", device=DEV)


def test_pwloss_triton_bad_inputs():
    bads = [b for b in SPEC.bad_inputs() if "raw" not in b.desc]
    for bad in bads:
        with mte.use_backend("triton"), pytest.raises(bad.error, match=bad.match):
            bad.call()


@pytest.mark.parametrize("kind", KINDS)
def test_pwloss_triton_every_reduction(kind):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    t = torch.rand(3, 5, generator=g, dtype=torch.float64)
    if kind == "bce":
        x = torch.sigmoid(x)
    for red in ("none", "mean", "sum") + (("batchmean",) if kind == "kl_div" else ()):
        xo, xn = x.clone().to(DEV).requires_grad_(), x.clone().to(DEV).requires_grad_()
        to, tn = t.clone().to(DEV).requires_grad_(), t.clone().to(DEV).requires_grad_()
        with mte.use_backend("triton"), testing.poisoned():
            yo = getattr(MF, FN[kind])(xo, to, reduction=red)
            yo.sum().backward()
        yn = getattr(F, FN[kind])(xn, tn, reduction=red)
        yn.sum().backward()
        torch.testing.assert_close(yo, yn)
        torch.testing.assert_close(xo.grad, xn.grad)
        torch.testing.assert_close(to.grad, tn.grad)


def test_pwloss_triton_reduction_repeatable_and_matches_cpp():
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(40, 33, generator=g), torch.randn(40, 33, generator=g)
    with mte.use_backend("triton"):
        a = MF.mse_loss(x.to(DEV), t.to(DEV))
        b = MF.mse_loss(x.to(DEV), t.to(DEV))
    assert torch.equal(a, b)
    torch.testing.assert_close(a.cpu(), F.mse_loss(x, t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_pwloss_triton_hypothesis_parity(dtype):
    from hypothesis import given, settings

    @settings(max_examples=6)
    @given(SPEC.strategy("triton"))
    def run(sample):
        testing.check_parity(SPEC, sample, "triton", dtype, device=DEV)

    run()


def test_pwloss_triton_gradgradcheck():
    # the double backward composes pointwise torch ops over the Triton backward op's inputs
    for sample in (_samples()[3], _samples()[5]):  # bce with a weight, kl_div log_target batchmean
        leaves = sample.cast(torch.float64, DEV, requires_grad=True)

        def f(x, t):
            with mte.use_backend("triton"):
                return sample.build(SPEC.ours, {**leaves, "input": x, "target": t})

        assert torch.autograd.gradgradcheck(f, (leaves["input"], leaves["target"]), fast_mode=True)
