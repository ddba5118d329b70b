"""The activation family on CUDA tensors: the CUDA kernels ("cpp" backend) and Triton.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device);
elsewhere every test here is skipped because there is no CUDA device.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.activation import small_model, spec

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BACKENDS = testing.backends_for("cuda") if torch.cuda.is_available() else []
SPECS = ["activation", "softmax"]


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_cuda(name, backend):
    s = spec(name)
    for sample in s.samples(backend):
        testing.check_gradcheck(s, sample, backend, device="cuda")


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_parity_cuda(name, backend, dtype):
    s = spec(name)

    # few examples: every (activation, dtype) pair is its own Triton compile on a GPU,
    # and scripts/gpu_check.sh gives all CUDA tests 240 s
    @settings(max_examples=6 if backend == "triton" else 12)
    @given(s.strategy("cpp"))
    def run(sample):
        testing.check_parity(s, sample, backend, dtype, device="cuda")

    run()


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_cuda(name, backend):
    s = spec(name)
    for sample in s.samples(backend)[:3]:
        testing.check_opcheck(s, sample, backend, device="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_cuda(backend):
    make = small_model()
    testing.check_compile(lambda: make().cuda(), torch.randn(4, 16, device="cuda"), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_cuda(backend):
    base = torch.randn(8, 12, device="cuda", requires_grad=True)
    dy = torch.randn(12, 8, device="cuda")[:, ::2]
    with mte.use_backend(backend):
        x = (base * 2.0).t()[:, ::2]  # strided non-leaf
        v0 = x._version
        y = mte.nn.functional.silu(x, inplace=True)
        assert y is x and x._version > v0
        (g,) = torch.autograd.grad(y, base, dy)
    (gn,) = torch.autograd.grad(F.silu((base * 2.0).t()[:, ::2]), base, dy)
    torch.testing.assert_close(g, gn)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_autocast_cuda_is_float32(backend):
    # torch's fp32_set_opt_dtype policy: float16 input -> float32 result, unless dtype= is given
    x = torch.randn(4, 33, device="cuda", dtype=torch.float16)
    with torch.autocast("cuda", torch.float16), mte.use_backend(backend):
        for fn in ("softmax", "log_softmax"):
            ours, nat = getattr(mte.nn.functional, fn), getattr(F, fn)
            assert ours(x, -1).dtype == nat(x, -1).dtype == torch.float32
            assert ours(x.float(), -1, dtype=torch.float16).dtype == nat(x.float(), -1, dtype=torch.float16).dtype
