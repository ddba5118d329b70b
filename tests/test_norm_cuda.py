"""The norm family on CUDA tensors: the CUDA kernels ("cpp" backend) and Triton.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device);
elsewhere every test here is skipped because there is no CUDA device.
"""
import pytest
import torch
from hypothesis import given

from minitorch_ext import testing
from minitorch_ext.cases.norm import small_model, spec

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BACKENDS = testing.backends_for("cuda") if torch.cuda.is_available() else []
KINDS = ["layer_norm", "rms_norm"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_cuda(kind, backend):
    s = spec(kind)
    for sample in s.samples(backend):
        testing.check_gradcheck(s, sample, backend, device="cuda")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_parity_cuda(kind, backend, dtype):
    s = spec(kind)

    @given(s.strategy("cpp"))
    def run(sample):
        testing.check_parity(s, sample, backend, dtype, device="cuda")

    run()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_cuda(kind, backend):
    s = spec(kind)
    for sample in s.samples(backend)[:2]:
        testing.check_opcheck(s, sample, backend, device="cuda")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_cuda(kind, backend):
    make = small_model(kind)
    testing.check_compile(lambda: make().cuda(), torch.randn(4, 16, device="cuda"), backend)
