"""Smoke check of kernels/norm.py (Triton LayerNorm / RMSNorm) on small shapes.

    TRITON_INTERPRET=1 python scripts/try_triton_norm.py      # CPU, interpreter
    python scripts/try_triton_norm.py                          # on a CUDA GPU

Every output and gradient is compared with a float64 torch reference; the
kernel's error must be within a small factor of native torch's own error at the
same dtype (the Liger / flash-attention criterion). Also: bitwise-deterministic
backward, empty shapes, the chunked (wide-row) path, the interpreter canaries,
NaN-poisoned outputs (when the package is built).
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from kernels import norm as K  # noqa: E402

DEV = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
EPS = 1e-5
# absolute slack on top of "within 4x of torch's own error"
ATOL = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3, torch.float64: 1e-12}


def err(a, ref):
    """max |a - ref|, scaled by max(1, max |ref|)."""
    if ref is None or ref.numel() == 0:
        return 0.0
    ref = ref.double()
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


def torch_ln(x, w, b, dy, rms):
    """(y, dx, dw, db) from native torch, with autograd."""
    x = x.detach().requires_grad_()
    ins = [x]
    for t in (w, b):
        if t is not None:
            ins.append(t.detach().requires_grad_())
    w_ = ins[1] if w is not None else None
    b_ = ins[-1] if b is not None else None
    N = x.shape[-1]
    y = F.rms_norm(x, (N,), w_, EPS) if rms else F.layer_norm(x, (N,), w_, b_, EPS)
    grads = torch.autograd.grad(y, ins, dy) if y.numel() else [torch.zeros_like(t) for t in ins]
    dx = grads[0]
    dw = grads[1] if w is not None else None
    db = grads[-1] if b is not None else None
    return y.detach(), dx, dw, db


def ours(x, w, b, dy, rms, **kw):
    if rms:
        y, rstd = K.rms_norm_fwd(x, w, EPS, **kw)
        dx, dw = K.rms_norm_bwd(dy, x, rstd, w, **kw)
        return y, dx, dw, None
    y, mean, rstd = K.layer_norm_fwd(x, w, b, EPS, **kw)
    dx, dw, db = K.layer_norm_bwd(dy, x, mean, rstd, w, b, **kw)
    return y, dx, dw, db


def check(M, N, dtype, rms, affine, worst, **kw):
    g = torch.Generator().manual_seed(M * 1000 + N)
    x = (torch.randn(M, N, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype).to(DEV)
    dy = torch.randn(M, N, generator=g, dtype=torch.float64).to(dtype).to(DEV)
    w = (1 + 0.3 * torch.randn(N, generator=g, dtype=torch.float64)).to(dtype).to(DEV) if affine >= 1 else None
    b = (0.3 * torch.randn(N, generator=g, dtype=torch.float64)).to(dtype).to(DEV) if affine >= 2 else None

    up = lambda t: None if t is None else t.double()  # noqa: E731
    ref = torch_ln(up(x), up(w), up(b), up(dy), rms)
    nat = torch_ln(x, w, b, dy, rms)
    got = ours(x, w, b, dy, rms, **kw)
    again = ours(x, w, b, dy, rms, **kw)

    tag = f"{'rms' if rms else 'ln'} {M}x{N} {str(dtype)[6:]} affine={affine} {kw or ''}"
    for name, o, n, r, a in zip(("y", "dx", "dw", "db"), got, nat, ref, again):
        if r is None:
            assert o is None, f"{tag}: {name} should be None"
            continue
        assert o is not None, f"{tag}: {name} is None"
        assert o.shape == r.shape and o.dtype == (x.dtype if name in ("y", "dx") else w.dtype), \
            f"{tag}: {name} shape/dtype {o.shape} {o.dtype}"
        assert torch.equal(o, a), f"{tag}: {name} not bitwise deterministic"
        e_ours, e_nat = err(o, r), err(n, r)
        key = (str(dtype)[6:], name)
        worst[key] = max(worst.get(key, (0, 0)), (e_ours, e_nat))
        assert e_ours <= 4 * e_nat + ATOL[dtype], f"{tag}: {name} err {e_ours:.3g} vs torch {e_nat:.3g}"


def main():
    t0 = time.time()
    try:  # NaN-fill every kernel output first, so an unwritten element fails
        from minitorch_ext import _poison
        _poison.set_enabled(True)
        print("outputs NaN-poisoned before each kernel")
    except ImportError:
        print("minitorch_ext not built: outputs not poisoned")
    for name, ok in K.interpreter_canaries(DEV):
        print(f"canary {'ok  ' if ok else 'FAIL'} {name}")
        assert ok, name

    shapes = [(1, 1), (3, 1), (2, 2), (1, 97), (5, 131), (9, 33)]
    worst = {}
    n = 0
    for rms in (False, True):
        for dtype in (torch.float32, torch.bfloat16, torch.float64, torch.float16):
            for affine in ((0, 1) if rms else (0, 1, 2)):
                for M, N in shapes if dtype != torch.float16 else shapes[3:5]:
                    check(M, N, dtype, rms, affine, worst)
                    n += 1
                # the chunked (wide-row) path, forced with a small block
                check(7, 45, dtype, rms, affine, worst, max_block_n=16)
                check(1, 131, dtype, rms, affine, worst, max_block_n=32)
                n += 2
            if dtype != torch.float16:  # the largest shape once per dtype (the interpreter is slow)
                check(64, 300, dtype, rms, 1 if rms else 2, worst)
                n += 1
        # a genuinely wide row: chunked without forcing
        check(1, 65537, torch.float32, rms, 2 if not rms else 1, worst)
        # empty shapes
        for M, N in ((0, 5), (4, 0), (0, 0)):
            check(M, N, torch.float32, rms, 1 if rms else 2, worst)
        n += 4

    print(f"{n} cases passed; worst error (ours / native torch, each vs float64 torch):")
    for (dt, name), (eo, en) in sorted(worst.items()):
        print(f"  {dt:9s} {name:3s} {eo:.2e} / {en:.2e}")
    print(f"time {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
