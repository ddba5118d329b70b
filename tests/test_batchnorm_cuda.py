"""The bnorm family's CUDA kernels (csrc/bnorm/bnorm_cuda.cu) through the public functionals on
CUDA tensors: forward and every gradient against a float64 CPU reference with the error-ratio
rule (our error within FACTOR x torch's own CUDA error in the same dtype, plus a floor), running
statistics against torch's, both memory formats, bitwise-repeatable backward, poisoned outputs.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device); skipped elsewhere.
"""
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
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("batch_norm_fwd"),
                       reason="the extension was built without its CUDA bnorm kernels"),
]

MF = mte.nn.functional
FACTOR = 4.0
CASES = [("bn", (4, 8, 7, 9), "contig"), ("bn", (4, 8, 7, 9), "cl"), ("bn", (16, 5), "contig"),
         ("gn", (3, 8, 5, 6), "contig"), ("gn", (3, 8, 5, 6), "cl"), ("in", (2, 4, 11), "contig"),
         ("bn_eval", (4, 6, 5, 5), "cl")]


def _run(mod, kind, x, w, b, rm, rv):
    if kind == "bn":
        return mod.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)
    if kind == "bn_eval":
        return mod.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5)
    if kind == "gn":
        return mod.group_norm(x, 4, w, b, 1e-5)
    return mod.instance_norm(x, None, None, w, b, True, 0.1, 1e-5)


def _grads(mod, kind, x0, w0, b0, dtype, device, dy0):
    x = x0.to(device, dtype)
    if x.dim() == 4 and kind != "in":
        x = x.contiguous(memory_format=torch.channels_last) if getattr(x0, "_cl", False) else x
    x = x.detach().requires_grad_()
    pdt = dtype if dtype == torch.float64 else torch.float32
    w = w0.to(device, pdt).requires_grad_()
    b = b0.to(device, pdt).requires_grad_()
    C = x.shape[1]
    rm = torch.linspace(-1, 1, C, device=device, dtype=pdt)
    rv = torch.linspace(0.5, 2, C, device=device, dtype=pdt)
    y = _run(mod, kind, x, w, b, rm, rv)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy0.to(device, y.dtype))
    return [y, gx, gw, gb, rm, rv]


@pytest.mark.parametrize("kind,shape,fmt", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_cuda_against_float64(kind, shape, fmt, dtype):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    x0._cl = fmt == "cl"
    C = shape[1]
    w0, b0 = torch.rand(C, generator=g, dtype=torch.float64) + 0.5, torch.randn(C, generator=g, dtype=torch.float64)
    dy0 = torch.randn(shape, generator=g, dtype=torch.float64)
    with testing.poisoned():
        ours = _grads(MF, kind, x0, w0, b0, dtype, "cuda", dy0)
        again = _grads(MF, kind, x0, w0, b0, dtype, "cuda", dy0)
    nat = _grads(F, kind, x0, w0, b0, dtype, "cuda", dy0)
    xr = x0.to(dtype).double()
    ref = _grads(F, kind, xr, w0.to(dtype if dtype == torch.float64 else torch.float32).double(),
                 b0.to(dtype if dtype == torch.float64 else torch.float32).double(), torch.float64, "cpu",
                 dy0.to(dtype).double())
    eps = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
    for name, o, n, r in zip(("y", "dx", "dw", "db", "running_mean", "running_var"), ours, nat, ref):
        eo, en = testing.max_err(o, r), testing.max_err(n, r)
        assert eo <= FACTOR * en + eps * max(1.0, r.abs().max().item()), (name, eo, en)
    for a, c in zip(ours, again):
        assert torch.equal(a, c)
