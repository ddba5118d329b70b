"""The Triton dropout kernel (kernels/dropout.py), on CPU through Triton's interpreter (on cuda
where a GPU is visible and TRITON_INTERPRET is unset), through the shared checker with tiny
samples, plus: the mask equals the NumPy reference (minitorch_ext._philox) and the C++
kernel's, bit for bit, for elementwise and channel dropout."""
import os

import pytest
import torch

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases import dropout as C

try:
    import triton  # noqa: F401
    _HAVE_TRITON = True
except ImportError:
    _HAVE_TRITON = False

pytestmark = [pytest.mark.triton, pytest.mark.skipif(
    not _HAVE_TRITON or "triton" not in mte.available_backends("cpu"),
    reason="Triton cannot run here (needs triton, and TRITON_INTERPRET=1 without a GPU)")]

SPEC = C.spec()
MF = mte.nn.functional


@pytest.mark.parametrize("i", range(len(C.TRITON_FIXED)))
def test_triton_dropout_gradcheck(i):
    sample = SPEC.samples("triton")[i]
    leaves = sample.cast(torch.float64, "cpu", requires_grad=True)

    def f(x):
        with mte.use_backend("triton"):
            return sample.build(SPEC.ours, {**leaves, "input": x})

    with testing.poisoned():
        assert torch.autograd.gradcheck(f, (leaves["input"],), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_triton_dropout_opcheck():
    testing.check_opcheck(SPEC, SPEC.samples("triton")[0], "triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_triton_dropout_parity(dtype):
    for sample in SPEC.samples("triton"):
        testing.check_parity(SPEC, sample, "triton", dtype)


@pytest.mark.parametrize("kind,shape,p", [("dropout", (5, 301), 0.3), ("dropout2d", (2, 7, 3, 3), 0.5),
                                          ("dropout1d", (3, 6, 11), 0.9), ("dropout", (4, 9), 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_mask_is_the_cpp_mask_and_the_reference(kind, shape, p, dtype):
    x = (torch.randn(shape).abs() + 0.5).to(dtype)
    torch.manual_seed(17)
    with mte.use_backend("triton"):
        yt = getattr(MF, kind)(x, p)
    torch.manual_seed(17)
    with mte.use_backend("cpp"):
        yc = getattr(MF, kind)(x, p)
    assert torch.equal(yt, yc)  # same words, same float32 math, one rounding
    keep = C.reference_keep(kind, shape, p, C.seed_after_manual_seed(17))
    assert torch.equal(yt != 0, keep)


def test_triton_backend_runs_the_triton_ops():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Trace(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, 4, requires_grad=True)
    with mte.use_backend("triton"), Trace() as t:
        MF.dropout(x, 0.5).sum().backward()
        MF.dropout(x * 1, 0.5, inplace=True).sum().backward()
    assert any("dropout_fwd_triton" in op for op in t.ops) and any("dropout_bwd_triton" in op for op in t.ops)
    assert not any("bernoulli" in op or "aten.dropout" in op or "native_dropout" in op for op in t.ops)


if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available():  # pragma: no cover - GPU only
    def test_triton_dropout_cuda_matches_cpu():
        x = torch.randn(1000, 33)
        torch.manual_seed(5)
        yc = MF.dropout(x, 0.4)
        torch.manual_seed(5)
        with mte.use_backend("triton"):
            yg = MF.dropout(x.cuda(), 0.4)
        assert torch.equal(yg.cpu(), yc)
