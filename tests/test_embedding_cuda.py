"""The embedding family's CUDA kernels (csrc/embedding/embedding_cuda.cu): the forward equals
torch's gather, the backward (cub radix sort + one thread per (row, column), no atomics)
equals torch's within the float64-reference rule and is bitwise repeatable; padding_idx,
scale_grad_by_freq, max_norm (renorm in place) as torch's; int32 and int64 indices.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device)."""
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
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("embedding_fwd"),
                       reason="the extension was built without its CUDA embedding kernels"),
]
ops = torch.ops.minitorch_ext
MF = mte.nn.functional


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("kw", [dict(), dict(padding_idx=3), dict(scale_grad_by_freq=True, padding_idx=-1)], ids=str)
def test_cuda_embedding_matches_torch(dtype, idx_dtype, kw):
    g = torch.Generator().manual_seed(0)
    V, D = 300, 67
    w = torch.randn(V, D, generator=g)
    idx = torch.randint(0, 40, (17, 23), generator=g).to(idx_dtype)
    dy = torch.randn(17, 23, D, generator=g)
    wd = w.double().requires_grad_()
    F.embedding(idx, wd, **kw).backward(dy.double())
    wn = w.to(dtype).cuda().requires_grad_()
    F.embedding(idx.cuda(), wn, **kw).backward(dy.to(dtype).cuda())
    grads = []
    for _ in range(2):
        wo = w.to(dtype).cuda().requires_grad_()
        with testing.poisoned():
            y = MF.embedding(idx.cuda(), wo, **kw)
            y.backward(dy.to(dtype).cuda())
        assert torch.equal(y, F.embedding(idx.cuda(), wo.detach()))
        grads.append(wo.grad)
    assert torch.equal(grads[0], grads[1])
    eo = (grads[0].double().cpu() - wd.grad).abs().max().item()
    en = (wn.grad.double().cpu() - wd.grad).abs().max().item()
    assert eo <= 4 * en + torch.finfo(dtype).eps * wd.grad.abs().max().item(), (eo, en)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, float("inf")])
def test_cuda_max_norm(norm_type):
    w = torch.randn(50, 9) * 3
    idx = torch.randint(0, 50, (8, 6))
    wo, wn = w.cuda(), w.clone()
    yo = MF.embedding(idx.cuda(), wo, max_norm=1.5, norm_type=norm_type)
    yn = F.embedding(idx, wn, max_norm=1.5, norm_type=norm_type)
    torch.testing.assert_close(wo.cpu(), wn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(yo.cpu(), yn, rtol=1e-5, atol=1e-6)


def test_cuda_embedding_opcheck():
    w = torch.randn(20, 8, device="cuda", requires_grad=True)
    idx = torch.randint(0, 20, (4, 5), device="cuda")
    torch.library.opcheck(ops.embedding_fwd, (w, idx, 2, False))
    torch.library.opcheck(ops.embedding_bwd, (torch.randn(4, 5, 8, device="cuda"), idx, 20, 2, True))
    torch.library.opcheck(ops.embedding_renorm_, (torch.randn(20, 8, device="cuda"), idx, 1.0, 2.0))
