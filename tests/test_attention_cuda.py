"""The attention family's CUDA kernels (csrc/attention/attention_cuda.cu):
torch.ops.minitorch_ext.attention_fwd / attention_bwd / attention_weights on CUDA tensors,
against a float64 reference computed with plain torch math on the same (rounded) inputs,
the dropout keep mask taken from minitorch_ext._philox.keep_mask.

Judged by the error-ratio rule: our max error against the float64 reference must be within
FACTOR times torch's own error in the same dtype (F.scaled_dot_product_attention and its
autograd; the same plain math in the low dtype where sdpa cannot take the case: dropout
with our mask, empty rows), plus a tiny absolute floor. Every call runs with the poison
switch on, so an output element a kernel forgot to write is NaN and fails.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device); elsewhere every
test here is skipped. Sizes are small (seconds on a GPU).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import minitorch_ext  # noqa: F401  (loads the extension: registers the ops)
from minitorch_ext import testing
from minitorch_ext._philox import keep_mask


def _has_cuda_kernel(op: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"minitorch_ext::{op}", "CUDA")
    except Exception:  # noqa: BLE001
        return False


pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(torch.cuda.is_available() and not _has_cuda_kernel("attention_fwd"),
                       reason="the extension was built without its CUDA attention kernels"),
]

ops = torch.ops.minitorch_ext
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
FACTOR = 4.0
DEV = "cuda"


def _floor(dtype, ref):
    """A tiny absolute floor, for cases where torch's own error happens to be (near) 0: a few
    ulps of the result's magnitude (more in float32/float64, where torch's math may round
    the same way as the reference and the exp2/log2 path here does not)."""
    eps = torch.finfo(dtype).eps
    mag = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    return (2 if dtype in (torch.bfloat16, torch.float16) else 64) * eps * mag


def _err(a, ref):
    if ref.numel() == 0:
        return 0.0
    return float((a.double() - ref.double()).abs().max())  # NaN (an unwritten element) stays NaN


# ---- the reference: plain torch math -------------------------------------------------

def _take(B, Hq, Lq, Lk, mask, causal, device):
    take = torch.ones(B, Hq, Lq, Lk, dtype=torch.bool, device=device)
    if causal:
        take &= torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril()
    if mask is not None and mask.dtype == torch.bool:
        take = take & mask
    return take


def reference(q, k, v, mask, causal, scale, p, seed, keep=None, dtype=torch.float64):
    """O, lse of the spec in `dtype` math (inputs cast to it): differentiable in q, k, v and
    an additive mask. Empty rows: O = 0, lse = +inf."""
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv if Hkv else 1
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    kk = k.repeat_interleave(G, dim=1)
    vv = v.repeat_interleave(G, dim=1)
    s = (q @ kk.transpose(-1, -2)) * scale
    if mask is not None and mask.dtype != torch.bool:
        s = s + mask.to(dtype)
    take = _take(B, Hq, Lq, Lk, mask, causal, q.device) & (s != -math.inf)
    s = torch.where(take, s, torch.full_like(s, -math.inf))
    m = s.amax(-1, keepdim=True).detach() if Lk else torch.zeros(B, Hq, Lq, 1, dtype=dtype, device=q.device)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.where(take, torch.exp(s - m), torch.zeros_like(s))
    l = e.sum(-1, keepdim=True)
    ok = l > 0
    P = torch.where(ok, e / torch.where(ok, l, torch.ones_like(l)), torch.zeros_like(e))
    lse = torch.where(ok, m + torch.log(torch.where(ok, l, torch.ones_like(l))),
                      torch.full_like(l, math.inf)).squeeze(-1)
    if p > 0:
        if keep is None:
            keep = keep_mask(seed, p, B, Hq, Lq, Lk).to(q.device)
        P = torch.where(keep, P / (1 - p), torch.zeros_like(P)) if p < 1 else torch.zeros_like(P)
    return P @ vv, lse, P


def torch_baseline(q, k, v, mask, causal, scale, p, seed, use_sdpa):
    """torch's own result in the inputs' dtype: sdpa where it can take the case."""
    if use_sdpa:
        Hq, Hkv = q.shape[1], k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False if mask is not None else causal,
                                              scale=scale, enable_gqa=Hq != Hkv)
    return reference(q, k, v, mask, causal, scale, p, seed, dtype=q.dtype)[0]


def _sdpa_ok(mask, causal, p, empty_rows, scale):
    # (torch's math sdpa scales q and k by sqrt(scale) each: NaN for a negative scale)
    return p == 0 and not empty_rows and not (mask is not None and causal) and scale > 0


def run_case(B, Hq, Hkv, Lq, Lk, D, Dv, dtype, *, causal=False, mask_kind=None, scale=None, p=0.0, seed=1234,
             bwd=True, layout="contig", empty_rows=False, logit_mag=None, gen_seed=0):
    g = torch.Generator(device="cpu").manual_seed(gen_seed)

    def mk(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def place(t):  # [B, H, L, D] with the requested strides
        if layout == "blhd":  # a [B, L, H, D] buffer seen as [B, H, L, D]
            return t.transpose(1, 2).contiguous().to(DEV, dtype).transpose(1, 2)
        if layout == "strided":  # every other element of the head dim
            b = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
            b[..., ::2] = t
            return b.to(DEV, dtype)[..., ::2]
        return t.to(DEV, dtype)

    q, k, v = mk(B, Hq, Lq, D), mk(B, Hkv, Lk, D), mk(B, Hkv, Lk, Dv)
    if logit_mag is not None:  # scores about +-logit_mag
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-6) * math.sqrt(logit_mag)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-6) * math.sqrt(logit_mag)
    q, k, v = place(q), place(k), place(v)
    sc = 1.0 / math.sqrt(D) if scale is None else scale
    mask = None
    if mask_kind == "bool":  # a [Lq, Lk] pattern broadcast over B, H (stride 0)
        mb = torch.rand(Lq, Lk, generator=g) > 0.3
        if empty_rows and Lq > 1:
            mb[Lq // 2] = False
        mask = mb.to(DEV).expand(B, Hq, Lq, Lk)
    elif mask_kind == "bool_keys":  # key padding [B, 1, 1, Lk]
        mb = torch.rand(B, 1, 1, Lk, generator=g) > 0.4
        mask = mb.to(DEV).expand(B, Hq, Lq, Lk)
    elif mask_kind == "add":  # additive [1, Hq, Lq, Lk] over B, with some -inf
        ma = torch.randn(1, Hq, Lq, Lk, generator=g, dtype=torch.float64)
        ma[torch.rand(1, Hq, Lq, Lk, generator=g) < 0.2] = -math.inf
        if empty_rows and Lq > 1:
            ma[:, :, Lq // 2] = -math.inf
        mask = ma.to(DEV, dtype).expand(B, Hq, Lq, Lk)
    empties = empty_rows or mask_kind == "bool_keys"

    with testing.poisoned():
        out, lse = ops.attention_fwd(q, k, v, mask, p, causal, sc, seed)
    keep = keep_mask(seed, p, B, Hq, Lq, Lk).to(DEV) if p > 0 else None
    ref_o, ref_lse, ref_P = reference(q, k, v, mask, causal, sc, p, seed, keep=keep)
    assert out.shape == (B, Hq, Lq, Dv) and out.is_contiguous() and out.dtype == dtype
    assert lse.shape == (B, Hq, Lq) and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)

    use_sdpa = _sdpa_ok(mask, causal, p, empties, sc) and ref_o.numel() > 0
    base = torch_baseline(q, k, v, mask, causal, sc, p, seed, use_sdpa)
    e_ours, e_torch = _err(out, ref_o), _err(base, ref_o)
    tol = FACTOR * e_torch + _floor(dtype, ref_o)
    assert e_ours <= tol, f"output: error {e_ours:.3g} > {tol:.3g} (torch {e_torch:.3g})"

    # lse: +inf exactly where the reference has it, else close
    inf_ref = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), inf_ref) and not torch.isnan(lse).any()
    if (~inf_ref).any():
        lse_low = reference(q, k, v, mask, causal, sc, 0.0, seed, dtype=dtype)[1].double()
        e_l = _err(lse[~inf_ref], ref_lse[~inf_ref])
        tol_l = FACTOR * _err(lse_low[~inf_ref], ref_lse[~inf_ref]) + _floor(dtype, ref_lse[~inf_ref])
        assert e_l <= tol_l, f"logsumexp: error {e_l:.3g} > {tol_l:.3g}"

    # repeatable bit for bit
    out2, lse2 = ops.attention_fwd(q, k, v, mask, p, causal, sc, seed)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)

    if not bwd:
        return
    go = torch.randn(B, Hq, Lq, Dv, generator=g, dtype=torch.float64).to(DEV, dtype)
    want_mask_grad = mask is not None and mask.dtype != torch.bool
    with testing.poisoned():
        gq, gk, gv, gm = ops.attention_bwd(go, q, k, v, out, lse, mask, p, causal, sc, seed,
                                           [True, True, True, want_mask_grad])
    # the float64 reference gradients (grad of the additive mask: of a materialised copy)
    qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
    mr = None
    if mask is not None:
        mr = mask.double().contiguous().requires_grad_() if want_mask_grad else mask
    o_r = reference(qr, kr, vr, mr, causal, sc, p, seed, keep=keep)[0]
    inputs = [qr, kr, vr] + ([mr] if want_mask_grad else [])
    refs = torch.autograd.grad(o_r, inputs, go.double(), allow_unused=True)
    refs = [torch.zeros_like(x) if r is None else r for r, x in zip(refs, inputs)]
    # torch's own gradients in the low dtype
    ql, kl, vl = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ml = None
    if mask is not None:
        ml = mask.detach().clone().requires_grad_() if want_mask_grad else mask
    if use_sdpa:
        o_l = torch_baseline(ql, kl, vl, ml, causal, sc, p, seed, True)
    else:
        o_l = reference(ql, kl, vl, ml, causal, sc, p, seed, keep=keep, dtype=dtype)[0]
    lows = torch.autograd.grad(o_l, [ql, kl, vl] + ([ml] if want_mask_grad else []), go, allow_unused=True)
    lows = [torch.zeros_like(x) if r is None else r for r, x in zip(lows, inputs)]
    ours = [gq, gk, gv] + ([gm] if want_mask_grad else [])
    for name, a, r, lo in zip(["grad_query", "grad_key", "grad_value", "grad_attn_mask"], ours, refs, lows):
        assert a.shape == r.shape and a.is_contiguous() and a.dtype == dtype, name
        e_a, e_t = _err(a, r), _err(lo, r)
        if math.isnan(e_t):
            e_t = 0.0
        tol = FACTOR * e_t + _floor(dtype, r)
        assert e_a <= tol, f"{name}: error {e_a:.3g} > {tol:.3g} (torch {e_t:.3g})"
    again = ops.attention_bwd(go, q, k, v, out, lse, mask, p, causal, sc, seed, [True, True, True, want_mask_grad])
    for a, b2 in zip(ours, again):
        assert torch.equal(a, b2), "attention_bwd is not bitwise repeatable"


# ---- the cases ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D", [1, 16, 63, 64, 80, 128, 256])
def test_head_dims(D, dtype):
    run_case(2, 3, 3, 65, 129, D, D, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("Lq", [1, 17, 64, 65, 129])
@pytest.mark.parametrize("Lk", [1, 17, 64, 65, 129])
def test_lengths(Lq, Lk, dtype):
    run_case(1, 2, 2, Lq, Lk, 64, 64, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D,Dv", [(64, 128), (80, 256), (256, 16), (16, 63)])
def test_d_ne_dv(D, Dv, dtype):
    run_case(1, 2, 1, 33, 70, D, Dv, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Lq,Lk", [(17, 129), (129, 17), (65, 64), (64, 64)])
def test_causal(Lq, Lk, dtype):
    run_case(2, 2, 2, Lq, Lk, 64, 64, dtype, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["bool", "bool_keys", "add"])
@pytest.mark.parametrize("causal", [False, True])
def test_masks(mask_kind, causal, dtype):
    run_case(2, 2, 2, 40, 75, 64, 64, dtype, mask_kind=mask_kind, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["bool", "add"])
def test_empty_rows(mask_kind, dtype):
    run_case(1, 2, 2, 33, 70, 64, 64, dtype, mask_kind=mask_kind, empty_rows=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Hq,Hkv", [(4, 2), (4, 1), (6, 3)])
def test_gqa(Hq, Hkv, dtype):
    run_case(2, Hq, Hkv, 50, 80, 64, 64, dtype, causal=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", [0.0, -0.3])
def test_scale_le_zero(scale, dtype):
    run_case(1, 2, 2, 30, 45, 64, 64, dtype, scale=scale, causal=True)
    run_case(1, 2, 2, 30, 45, 64, 64, dtype, scale=scale, mask_kind="add")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.3, 1.0])
def test_dropout(p, dtype):
    run_case(2, 4, 2, 65, 70, 64, 64, dtype, p=p, causal=True, seed=0x123456789AB)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["blhd", "strided"])
def test_layouts(layout, dtype):
    run_case(2, 2, 2, 40, 70, 80, 80, dtype, layout=layout, mask_kind="add")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_logits(dtype):
    run_case(1, 2, 2, 33, 64, 64, 64, dtype, scale=1.0, logit_mag=1e4, bwd=False)
    with testing.poisoned():
        g = torch.Generator(device="cpu").manual_seed(3)
        q = torch.randn(1, 1, 16, 64, generator=g).to(DEV, dtype)
        q = q / q.norm(dim=-1, keepdim=True) * 100.0
        out, lse = ops.attention_fwd(q, q, q, None, 0.0, False, 1.0, 0)  # scores up to 1e4
        out_n, lse_n = ops.attention_fwd(q, q, q, None, 0.0, False, -1.0, 0)  # down to -1e4
    for t in (out, lse, out_n, lse_n):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_tensors(dtype):
    with testing.poisoned():
        q = torch.randn(2, 2, 5, 16, device=DEV, dtype=dtype)
        k0 = torch.randn(2, 2, 0, 16, device=DEV, dtype=dtype)
        v0 = torch.randn(2, 2, 0, 8, device=DEV, dtype=dtype)
        out, lse = ops.attention_fwd(q, k0, v0, None, 0.0, False, 0.25, 0)  # Lk == 0
        assert out.shape == (2, 2, 5, 8) and torch.equal(out, torch.zeros_like(out))
        assert torch.isinf(lse).all() and (lse > 0).all()
        go = torch.randn(2, 2, 5, 8, device=DEV, dtype=dtype)
        gq, gk, gv, gm = ops.attention_bwd(go, q, k0, v0, out, lse, None, 0.0, False, 0.25, 0,
                                           [True, True, True, False])
        assert torch.equal(gq, torch.zeros_like(q)) and gk.shape == k0.shape and gv.shape == v0.shape
        qe = torch.randn(0, 2, 5, 16, device=DEV, dtype=dtype)
        ke = torch.randn(0, 2, 7, 16, device=DEV, dtype=dtype)
        out, lse = ops.attention_fwd(qe, ke, ke, None, 0.0, False, 0.25, 0)
        assert out.shape == (0, 2, 5, 16) and lse.shape == (0, 2, 5)
        q1 = torch.randn(1, 2, 0, 16, device=DEV, dtype=dtype)
        k1 = torch.randn(1, 2, 7, 16, device=DEV, dtype=dtype)
        out, lse = ops.attention_fwd(q1, k1, k1, None, 0.0, False, 0.25, 0)  # Lq == 0
        gq, gk, gv, _ = ops.attention_bwd(out, q1, k1, k1, out, lse, None, 0.0, False, 0.25, 0,
                                          [True, True, True, False])
        assert torch.equal(gk, torch.zeros_like(k1)) and torch.equal(gv, torch.zeros_like(k1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind,causal", [(None, False), ("bool", True), ("add", False)])
def test_weights(mask_kind, causal, dtype):
    B, Hq, Hkv, Lq, Lk, D = 2, 4, 2, 33, 70, 80
    g = torch.Generator(device="cpu").manual_seed(5)
    q = torch.randn(B, Hq, Lq, D, generator=g).to(DEV, dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=g).to(DEV, dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=g).to(DEV, dtype)
    mask = None
    if mask_kind == "bool":
        mb = torch.rand(Lq, Lk, generator=g) > 0.3
        mb[3] = False  # an empty row
        mask = mb.to(DEV).expand(B, Hq, Lq, Lk)
    elif mask_kind == "add":
        mask = torch.randn(1, 1, Lq, Lk, generator=g).to(DEV, dtype).expand(B, Hq, Lq, Lk)
    sc = 0.125
    with testing.poisoned():
        _, lse = ops.attention_fwd(q, k, v, mask, 0.0, causal, sc, 0)
        w = ops.attention_weights(q, k, mask, causal, sc, lse)
    assert w.shape == (B, Hq, Lq, Lk) and w.is_contiguous() and w.dtype == dtype
    ref_P = reference(q, k, v, mask, causal, sc, 0.0, 0)[2]
    low_P = reference(q, k, v, mask, causal, sc, 0.0, 0, dtype=dtype)[2]
    e, et = _err(w, ref_P), _err(low_P, ref_P)
    assert e <= FACTOR * et + _floor(dtype, ref_P), f"weights: error {e:.3g} (torch {et:.3g})"
    assert torch.equal(w, ops.attention_weights(q, k, mask, causal, sc, lse))


def test_dropout_mask_pattern():
    """With V = I (one-hot values), O recovers P * keep / (1-p) exactly in float64: the keep
    mask is the reference's bit for bit."""
    B, H, L, p, seed = 1, 2, 48, 0.4, 987654321
    g = torch.Generator(device="cpu").manual_seed(9)
    q = torch.randn(B, H, L, 16, generator=g, dtype=torch.float64).to(DEV)
    k = torch.randn(B, H, L, 16, generator=g, dtype=torch.float64).to(DEV)
    v = torch.eye(L, dtype=torch.float64, device=DEV).expand(B, H, L, L)
    for dtype in DTYPES:
        qq, kk, vv = q.to(dtype), k.to(dtype), v.to(dtype)
        out, _ = ops.attention_fwd(qq, kk, vv, None, p, False, 0.25, seed)
        keep = keep_mask(seed, p, B, H, L, L).to(DEV)
        assert torch.equal(out != 0, keep), f"{dtype}: the dropout mask differs from _philox.keep_mask"


def test_bad_args():
    q = torch.randn(1, 3, 4, 16, device=DEV)
    k = torch.randn(1, 2, 4, 16, device=DEV)
    with pytest.raises(RuntimeError, match="key"):
        ops.attention_fwd(q, k, k, None, 0.0, False, 0.25, 0)  # 3 % 2 != 0
    with pytest.raises(RuntimeError, match="dtype"):
        ops.attention_fwd(q, q.double(), q, None, 0.0, False, 0.25, 0)
    with pytest.raises(RuntimeError, match="attn_mask"):
        ops.attention_fwd(q, q, q, torch.ones(1, 3, 4, 5, dtype=torch.bool, device=DEV), 0.0, False, 0.25, 0)
    with pytest.raises(RuntimeError, match="dropout_p"):
        ops.attention_fwd(q, q, q, None, 1.5, False, 0.25, 0)
    big = torch.randn(1, 1, 4, 300, device=DEV)
    with pytest.raises(RuntimeError, match="head dimension"):
        ops.attention_fwd(big, big, big, None, 0.0, False, 0.25, 0)
