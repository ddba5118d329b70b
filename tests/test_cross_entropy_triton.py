"""The cross-entropy family on its Triton kernels (kernels/ce.py), on the CPU through Triton's
interpreter (on cuda where a GPU is visible and TRITON_INTERPRET is unset): the shared
checker's gradcheck (float64), opcheck, float64/float32/bfloat16 parity against native torch
with the error-ratio rule on a few tiny samples, the bad inputs, and the op trace.
Tiny shapes: the interpreter runs one program instance after another."""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
from minitorch_ext.cases.ce import ce_sample, spec  # noqa: E402

SPEC = spec()
DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
N_FIXED = len(SPEC.samples("triton"))


@pytest.fixture(autouse=True)
def _need_backend():
    if "triton" not in mte.available_backends(DEV):
        pytest.skip("the triton backend is not available here")


@pytest.mark.parametrize("i", range(N_FIXED))
def test_ce_triton_gradcheck(i):
    sample = SPEC.samples("triton")[i]
    leaves = sample.cast(torch.float64, DEV, requires_grad=True)

    def f(x):
        with mte.use_backend("triton"):
            return sample.build(SPEC.ours, {**leaves, "input": x})

    with testing.poisoned():
        assert torch.autograd.gradcheck(f, (leaves["input"],), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("i", [0, 2])
def test_ce_triton_opcheck(i):
    testing.check_opcheck(SPEC, SPEC.samples("triton")[i], "triton", device=DEV)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_ce_triton_parity(dtype):
    for sample in SPEC.samples("triton"):
        testing.check_parity(SPEC, sample, "triton", dtype, device=DEV)


def test_ce_triton_parity_block_loop():
    # more classes than one block (4096): the online logsumexp across blocks
    s = ce_sample("ce", (2, 4500), "contig", 7, label_smoothing=0.1, weight=True)
    testing.check_parity(SPEC, s, "triton", torch.float32, device=DEV)


def test_ce_triton_bad_inputs():
    assert len(testing.check_bad_inputs(SPEC, "triton")) == len(SPEC.bad_inputs())


def test_ce_triton_backend_runs_the_triton_ops():
    x = torch.randn(3, 5, device=DEV, requires_grad=True)
    t = torch.tensor([0, 4, 2], device=DEV)

    class Trace(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with mte.use_backend("triton"), Trace() as tr:
        mte.nn.functional.cross_entropy(x, t, label_smoothing=0.1).backward()
    assert any("ce_fwd_triton" in op for op in tr.ops) and any("ce_bwd_triton" in op for op in tr.ops), tr.ops
    assert not [op for op in tr.ops if "softmax" in op or "nll_loss" in op or "cross_entropy" in op]
