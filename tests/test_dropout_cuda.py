"""The dropout family's CUDA kernels (csrc/dropout/dropout_cuda.cu): the mask equals the CPU
kernel's and the NumPy reference (minitorch_ext._philox) bit for bit, elementwise and channel
dropout, every dtype; backward uses the forward's mask; in place; poisoned outputs.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device); elsewhere every
test here is skipped."""
import pytest
import torch

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases import dropout as C


def _has_cuda_kernel(op: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"minitorch_ext::{op}", "CUDA")
    except Exception:  # noqa: BLE001
        return False


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("dropout_fwd"),
                       reason="the extension was built without its CUDA dropout kernels"),
]
ops = torch.ops.minitorch_ext
MF = mte.nn.functional


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("kind,shape,p", [("dropout", (37, 1029), 0.3), ("dropout", (5, 3), 1.0),
                                          ("dropout2d", (4, 9, 5, 7), 0.5), ("dropout1d", (3, 10, 13), 0.2),
                                          ("dropout2d", (2, 3, 2, 2), 0.6)])
def test_cuda_mask_equals_cpu_and_reference(dtype, kind, shape, p):
    x = (torch.randn(shape).abs() + 0.5).to(dtype)
    with testing.poisoned():
        torch.manual_seed(3)
        yc = getattr(MF, kind)(x, p)
        torch.manual_seed(3)
        yg = getattr(MF, kind)(x.cuda(), p)
    assert torch.equal(yg.cpu(), yc)
    assert torch.equal(yg.cpu() != 0, C.reference_keep(kind, shape, p, C.seed_after_manual_seed(3)))


def test_cuda_backward_and_inplace():
    x = torch.randn(64, 257, device="cuda", requires_grad=True)
    with testing.poisoned():
        torch.manual_seed(1)
        y = MF.dropout(x, 0.25)
        y.backward(torch.ones_like(y))
    keep = y != 0
    assert torch.equal(x.grad != 0, keep)
    torch.testing.assert_close(x.grad[keep], torch.full_like(x.grad[keep], 1 / 0.75))
    z = x.detach() * 1
    torch.manual_seed(1)
    r = MF.dropout(z, 0.25, inplace=True)
    assert r is z and torch.equal(z, y.detach())
    v = x.detach().clone()[:, ::2]
    torch.manual_seed(1)
    w = MF.dropout(v.contiguous(), 0.25)
    torch.manual_seed(1)
    MF.dropout(v, 0.25, inplace=True)
    assert torch.equal(v, w)


def test_cuda_opcheck():
    x = torch.randn(6, 10, device="cuda")
    seed = torch.tensor(123, dtype=torch.int64)
    torch.library.opcheck(ops.dropout_fwd, (x.requires_grad_(), 0.3, seed, 1))
    torch.library.opcheck(ops.dropout_bwd, (torch.randn(6, 10, device="cuda"), 0.3, seed, 5))
    torch.library.opcheck(ops.dropout_fwd_, (torch.randn(6, 10, device="cuda"), 0.3, seed, 2))
