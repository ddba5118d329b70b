"""The cross-entropy family's CUDA kernels (csrc/loss/ce_cuda.cu): torch.ops.minitorch_ext.ce_fwd /
ce_bwd on CUDA tensors, through the shared checker: gradcheck in float64, opcheck, parity against
native torch on CUDA with the error-ratio rule (float32, bfloat16, float16, float64) on the fixed
samples, bitwise repeatability, torch's IndexError for an out-of-range class, and the peak-memory
rule (the gradient is the only input-sized allocation).

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device); elsewhere every
test here is skipped. Sizes are small (seconds on a GPU)."""
import pytest
import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.ce import spec


def _has_cuda_kernel(op: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"minitorch_ext::{op}", "CUDA")
    except Exception:  # noqa: BLE001
        return False


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("ce_fwd"),
                       reason="the extension was built without its CUDA cross-entropy kernels"),
]

SPEC = spec()
N_FIXED = len(SPEC.samples("cpp"))
MF = mte.nn.functional


@pytest.mark.parametrize("i", range(N_FIXED))
def test_ce_cuda_gradcheck(i):
    testing.check_gradcheck(SPEC, SPEC.samples("cpp")[i], "cpp", device="cuda")


@pytest.mark.parametrize("i", [0, 1, 7, 10, 13])
def test_ce_cuda_opcheck(i):
    testing.check_opcheck(SPEC, SPEC.samples("cpp")[i], "cpp", device="cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_ce_cuda_parity(dtype):
    for sample in SPEC.samples("cpp"):
        testing.check_parity(SPEC, sample, "cpp", dtype, device="cuda")


def test_ce_cuda_repeatable_and_index_error():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5000, generator=g).cuda()
    t = torch.randint(0, 5000, (300,), generator=g).cuda()
    outs = []
    for _ in range(2):
        xg = x.clone().requires_grad_()
        loss = MF.cross_entropy(xg, t, label_smoothing=0.1)
        loss.backward()
        outs.append((loss.detach(), xg.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    t[5] = 7000
    with pytest.raises(IndexError, match="Target 7000 is out of bounds"):
        MF.cross_entropy(x, t)


def test_ce_cuda_peak_memory_only_the_gradient():
    x = torch.randn(256, 32000, device="cuda", requires_grad=True)
    t = torch.randint(0, 32000, (256,), device="cuda")
    t[::7] = -100
    nbytes = x.numel() * 4
    for fn, limit in ((MF.cross_entropy, 1.2), (F.cross_entropy, None)):
        x.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(x, t, label_smoothing=0.1).backward()
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - base) / nbytes
        if limit is not None:
            assert extra <= limit, f"peak {extra:.2f} x the input's size beyond it (only the gradient allowed)"
        else:
            assert extra >= 2, extra  # the measure sees native's log_softmax and backward temporaries
