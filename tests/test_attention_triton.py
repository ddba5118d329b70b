"""Kernel-level tests of the Triton FlashAttention-2 kernels (kernels/attention.py):
attention_fwd / attention_bwd / attention_weights called directly, on CPU through
Triton's interpreter (on cuda where a GPU is visible).

Reference: the plain-torch formula of csrc/ops.cpp's attention schema in float64
(scores, bool/additive mask, top-left causal, softmax with empty rows -> 0,
dropout from minitorch_ext._philox.keep_mask), gradients by torch.autograd on it;
grad_attn_mask is the gradient of a zero leaf added to S. Judged by the
error-ratio rule of tests/test_gemm_triton.py: our error against the float64
reference (from the very same rounded inputs) within TOLERANCE_FACTOR x the error
of the same formula run by torch in the test dtype, plus a floor of 8 ulps of
the result's scale. Outputs are poisoned (NaN-filled) where the package allows.

Shapes from {1, 17, 33} (the interpreter runs 16 x 16 blocks: 17 and 33 leave
ragged blocks), head dims 1, 16, 63, 80. The whole file is kept to well under a
minute of interpreter time: few, dense cases.
"""
import contextlib
import math
import os
import sys

import pytest
import torch

try:
    import triton  # noqa: F401
    _HAVE_TRITON = True
except ImportError:
    _HAVE_TRITON = False

pytestmark = pytest.mark.skipif(
    not _HAVE_TRITON or not (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()),
    reason="Triton cannot run here (needs triton, and TRITON_INTERPRET=1 without a GPU)")

DEV = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
TOLERANCE_FACTOR = {torch.float32: 4.0, torch.float16: 2.0, torch.bfloat16: 2.0, torch.float64: 4.0}
INF = float("inf")


def _load_kernels():
    try:
        from minitorch_ext.kernels import attention
        return attention
    except ImportError:  # an in-tree checkout without the package mapping: the kernels package itself
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        if root not in sys.path:
            sys.path.insert(0, root)
        from kernels import attention
        return attention


@pytest.fixture(scope="module")
def A():
    return _load_kernels()


@pytest.fixture(autouse=True)
def _poison():
    try:
        from minitorch_ext.testing import poisoned
        ctx = poisoned()
    except Exception:  # noqa: BLE001  (no built extension: no poison switch)
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def keep_mask(seed, p, B, H, Lq, Lk):
    from minitorch_ext._philox import keep_mask as km  # NumPy only; does not need the extension
    return km(seed, p, B, H, Lq, Lk)


try:
    import minitorch_ext._philox  # noqa: F401
except Exception:  # noqa: BLE001  (the package's __init__ needs the built extension): load the file itself
    import importlib.util
    _spec = importlib.util.spec_from_file_location(
        "_philox_ref", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "minitorch_ext", "_philox.py"))
    _philox_ref = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_philox_ref)

    def keep_mask(seed, p, B, H, Lq, Lk):  # noqa: F811
        return _philox_ref.keep_mask(seed, p, B, H, Lq, Lk)


# ---- the plain-torch reference ----------------------------------------------------

def reference(q, k, v, mask, causal, scale, p, seed, z):
    """(out, lse) of the schema's formula in q's dtype; z: a zero [B, Hq, Lq, Lk] leaf
    added to S (its gradient is grad_attn_mask)."""
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = scale * (q @ kk.transpose(-1, -2)) + z
    allowed = torch.ones(B, Hq, Lq, Lk, dtype=torch.bool, device=q.device)
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            s = s + mask
    if causal:
        allowed = allowed & torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~allowed, -INF)
    empty = (s == -INF).all(-1, keepdim=True)
    P = torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    lse = torch.where(empty[..., 0], INF, torch.logsumexp(s.detach().double(), -1))
    if p > 0:
        keep = keep_mask(seed, p, B, Hq, Lq, Lk).to(q.device)
        P = P * keep / (1.0 - p) if p < 1 else P * 0.0
    return P @ vv, lse


def max_err(a, ref):
    if a.numel() == 0 and ref.numel() == 0:
        return 0.0
    return (a.detach().double().cpu() - ref.detach().double().cpu()).abs().max().item()


def check(name, ours, native, ref, dtype):
    assert ours.dtype == dtype, f"{name}: dtype {ours.dtype}, expected {dtype}"
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    assert ours.is_contiguous(), f"{name}: not contiguous"
    eo, en = max_err(ours, ref), max_err(native, ref)
    res = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
    scale = ref.abs().max().item() if ref.numel() else 0.0
    bound = TOLERANCE_FACTOR[dtype] * en + 8 * res * max(1.0, scale)
    assert eo <= bound, f"{name}[{dtype}]: our error {eo:.3e} > bound {bound:.3e} (native {en:.3e})"


def rand(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(DEV)


def make_mask(kind, B, Hq, Lq, Lk, dtype, seed):
    """An attn_mask in the normalized [B, Hq, Lq, Lk] layout, as the op layer passes it
    (broadcast dims as stride-0 expand()ed views)."""
    g = torch.Generator().manual_seed(seed + 100)
    if kind is None:
        return None
    if kind == "bool_k":        # per (batch, key): [B, 1, 1, Lk], runs cut across 16-blocks
        m = torch.rand(B, 1, 1, Lk, generator=g) < 0.7
    elif kind == "bool_rows":   # [1, 1, Lq, Lk] with an all-masked row and an all-masked key block
        m = torch.rand(1, 1, Lq, Lk, generator=g) < 0.6
        m[..., 3, :] = False
        m[..., :, 16:min(Lk, 32)] = False
        m[..., 5, -1] = True
    elif kind == "add":         # [1, Hq, Lq, Lk] additive, with -inf entries and a fully -inf row
        m = torch.randn(1, Hq, Lq, Lk, generator=g, dtype=torch.float64)
        m = m.masked_fill(torch.rand(1, Hq, Lq, Lk, generator=g) < 0.2, -INF)
        m[:, 0, min(2, Lq - 1), :] = -INF
        m = m.to(dtype)
    elif kind == "add_k":       # [B, 1, 1, Lk] additive (a key-padding bias)
        m = torch.randn(B, 1, 1, Lk, generator=g, dtype=torch.float64).to(dtype)
    else:
        raise ValueError(kind)
    return m.to(DEV).expand(B, Hq, Lq, Lk)


def run_case(A, B, Hq, Hkv, Lq, Lk, D, Dv, *, causal=False, mask=None, dtype=torch.float32, scale=None, p=0.0,
             seed=0, transposed=False, output_mask=(True, True, True, True)):
    scale = 1.0 / math.sqrt(max(D, 1)) if scale is None else scale
    if transposed:  # [B, L, H, D] storage seen as [B, H, L, D]: a strided view, not a copy
        q = rand((B, Lq, Hq, D), dtype, 1).transpose(1, 2)
        k = rand((B, Lk, Hkv, D), dtype, 2).transpose(1, 2)
        v = rand((B, Lk, Hkv, Dv), dtype, 3).transpose(1, 2)
    else:
        q, k, v = rand((B, Hq, Lq, D), dtype, 1), rand((B, Hkv, Lk, D), dtype, 2), rand((B, Hkv, Lk, Dv), dtype, 3)
    m = make_mask(mask, B, Hq, Lq, Lk, dtype, seed)
    do = rand((B, Hq, Lq, Dv), dtype, 4)

    out, lse = A.attention_fwd(q, k, v, m, p, causal, scale, seed)
    grads = A.attention_bwd(do, q, k, v, out, lse, m, p, causal, scale, seed, output_mask)

    def ref_run(dt):
        leaves = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        z = torch.zeros(B, Hq, Lq, Lk, dtype=dt, device=DEV, requires_grad=True)
        mm = m.to(dt) if (m is not None and m.dtype != torch.bool) else m
        o, l_ = reference(*leaves, mm, causal, scale, p, seed, z)
        gs = torch.autograd.grad(o, leaves + [z], do.to(dt), allow_unused=True)
        gs = [torch.zeros_like(t) if g is None else g for g, t in zip(gs, leaves + [z])]
        return o.detach(), l_, gs

    r_out, r_lse, r_g = ref_run(torch.float64)
    n_out, n_lse, n_g = ref_run(dtype)
    tag = f"B{B} H{Hq}/{Hkv} L{Lq}x{Lk} D{D}/{Dv} causal={causal} mask={mask} p={p}"
    check(f"out {tag}", out, n_out, r_out, dtype)
    # logsumexp: float32 (float64 for float64), +inf exactly on the empty rows
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and lse.is_contiguous()
    assert lse.shape == (B, Hq, Lq)
    assert torch.equal(lse.cpu() == INF, r_lse.cpu() == INF), f"lse +inf rows differ {tag}"
    fin = r_lse != INF
    check(f"lse {tag}", torch.where(fin, lse, 0.0).to(lse.dtype), torch.where(fin, n_lse, 0.0),
          torch.where(fin, r_lse, 0.0), lse.dtype)
    for name, ours, nat, ref, want in zip(("dq", "dk", "dv", "dmask"), grads, n_g, r_g, output_mask):
        if not want:
            assert ours.shape == (0,), f"{name}: expected an empty [0] tensor, got {tuple(ours.shape)}"
            continue
        assert not ours.isnan().any(), f"{name}: NaN {tag}"
        check(f"{name} {tag}", ours, nat, ref, dtype)
    return q, k, v, m, do, out, lse, grads


# ---- forward + backward against the reference ---------------------------------------

CASES = [
    # id, (B, Hq, Hkv, Lq, Lk, D, Dv), options
    ("mha_transposed", (1, 2, 2, 17, 33, 16, 16), dict(transposed=True, scale=0.25)),
    ("gqa_causal_lq_gt_lk_d63", (1, 4, 2, 33, 17, 63, 16), dict(causal=True)),
    ("mqa_causal_bool_d1", (2, 4, 1, 17, 33, 1, 1), dict(causal=True, mask="bool_k", scale=1.0)),
    ("add_mask_neg_scale", (1, 2, 2, 33, 17, 16, 80), dict(mask="add", scale=-0.3)),
    ("zero_scale_masked_rows", (1, 2, 1, 17, 33, 16, 16), dict(mask="bool_rows", scale=0.0)),
    ("lq1_add_k", (2, 2, 2, 1, 33, 16, 16), dict(mask="add_k")),
    ("lk1_causal", (1, 2, 2, 17, 1, 16, 16), dict(causal=True)),
    ("bf16_d80_causal_add", (1, 2, 1, 33, 33, 80, 80), dict(causal=True, mask="add", dtype=torch.bfloat16)),
    ("bf16_gqa_bool_rows", (1, 4, 2, 17, 33, 16, 16), dict(mask="bool_rows", dtype=torch.bfloat16)),
    ("fp16_causal", (1, 2, 2, 17, 17, 16, 16), dict(causal=True, dtype=torch.float16)),
    ("fp64_gqa_causal_bool", (1, 4, 2, 17, 33, 63, 16), dict(causal=True, mask="bool_rows", dtype=torch.float64)),
    ("dropout_gqa_causal", (1, 4, 2, 17, 33, 16, 16), dict(causal=True, p=0.3, seed=(1 << 40) + 12345)),
    ("dropout_fp64_add", (1, 2, 2, 17, 17, 16, 16), dict(mask="add", p=0.5, seed=7, dtype=torch.float64)),
    ("dropout_bf16", (1, 2, 1, 33, 17, 16, 16), dict(p=0.2, seed=3, dtype=torch.bfloat16)),
]


@pytest.mark.parametrize("shape,opts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_attention_fwd_bwd(A, shape, opts):
    run_case(A, *shape, **opts)


def test_empty_keys(A):
    # Lk == 0: every row empty -> output 0, logsumexp +inf, zero dq, empty dk/dv
    _, _, _, _, _, out, lse, (dq, dk, dv, dm) = run_case(A, 1, 2, 1, 17, 0, 16, 16)
    assert torch.equal(out, torch.zeros_like(out)) and bool((lse == INF).all())
    assert torch.equal(dq, torch.zeros_like(dq)) and dk.shape == (1, 1, 0, 16) and dm.shape == (1, 2, 17, 0)


def test_output_mask_and_determinism(A):
    q, k, v, m, do, out, lse, full = run_case(A, 1, 4, 2, 17, 33, 16, 16, causal=True, mask="bool_k", p=0.1, seed=5)
    again = A.attention_bwd(do, q, k, v, out, lse, m, 0.1, True, 0.25, 5, (True,) * 4)
    for a, b in zip(full, again):
        assert torch.equal(a, b), "backward not bitwise repeatable"
    for om in [(False, True, False, False), (True, False, False, True)]:
        part = A.attention_bwd(do, q, k, v, out, lse, m, 0.1, True, 0.25, 5, om)
        for want, a, b in zip(om, part, full):
            if want:
                assert torch.equal(a, b), "a partial backward differs from the full one"
            else:
                assert a.shape == (0,)


def test_dropout_pattern_exact(A):
    # Q = 0 and V = I: out[b, h, i, j] = keep[b, h, i, j] / ((1 - p) * Lk) exactly-ish,
    # so the nonzero pattern IS the kernel's keep mask; compared with _philox.keep_mask.
    B, Hq, Hkv, Lq, Lk = 2, 2, 1, 17, 33
    seed, p = 0x1234_5678_9ABC, 0.4
    q = torch.zeros(B, Hq, Lq, 16, device=DEV)
    k = rand((B, Hkv, Lk, 16), torch.float32, 2)
    v = torch.eye(Lk, device=DEV).expand(B, Hkv, Lk, Lk)
    out, lse = A.attention_fwd(q, k, v, None, p, False, 0.5, seed)
    keep = keep_mask(seed, p, B, Hq, Lq, Lk).to(DEV)
    assert torch.equal(out != 0, keep), f"dropout pattern differs in {int(((out != 0) != keep).sum())} places"
    torch.testing.assert_close(out, keep.float() / ((1 - p) * Lk), rtol=1e-6, atol=0)
    torch.testing.assert_close(lse, torch.full_like(lse, math.log(Lk)))
    # the backward regenerates the same mask: dV = P_drop^T dO with dO = 1
    dq, dk, dv, _ = A.attention_bwd(torch.ones_like(out), q, k, v, out, lse, None, p, False, 0.5, seed,
                                    (True, True, True, False))
    ref_dv = (keep.float() / ((1 - p) * Lk)).sum(2, keepdim=False)  # [B, Hq, Lk], summed over rows
    torch.testing.assert_close(dv, ref_dv.sum(1, keepdim=True)[..., None].expand(B, Hkv, Lk, Lk).contiguous(),
                               rtol=1e-5, atol=1e-6)
    # dropout_p = 1 drops everything
    out1, _ = A.attention_fwd(q, k, v, None, 1.0, False, 0.5, seed)
    assert torch.equal(out1, torch.zeros_like(out1))


@pytest.mark.parametrize("dtype,causal,mask", [(torch.float32, True, "bool_rows"), (torch.bfloat16, False, "add")])
def test_attention_weights(A, dtype, causal, mask):
    B, Hq, Hkv, Lq, Lk, D = 1, 4, 2, 17, 33, 16
    q, k, v = rand((B, Hq, Lq, D), dtype, 1), rand((B, Hkv, Lk, D), dtype, 2), rand((B, Hkv, Lk, D), dtype, 3)
    m = make_mask(mask, B, Hq, Lq, Lk, dtype, 0)
    _, lse = A.attention_fwd(q, k, v, m, 0.0, causal, 0.3, 0)
    P = A.attention_weights(q, k, m, causal, 0.3, lse)

    def probs(dt):
        # P as the reference sees it: its output with V = I (Dv = Lk)
        eye = torch.eye(Lk, dtype=dt, device=DEV).expand(B, Hkv, Lk, Lk)
        z = torch.zeros(B, Hq, Lq, Lk, dtype=dt, device=DEV)
        mm = m.to(dt) if (m is not None and m.dtype != torch.bool) else m
        return reference(q.to(dt), k.to(dt), eye, mm, causal, 0.3, 0.0, 0, z)[0]

    check("attention_weights", P, probs(dtype), probs(torch.float64), dtype)
    assert (P.sum(-1) == 0).any(), "expected an empty row (all masked) with P = 0"
