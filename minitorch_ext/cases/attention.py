"""The attention family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

One spec, "sdpa": ours is minitorch_ext.nn.functional.scaled_dot_product_attention,
native is torch.nn.functional.scaled_dot_product_attention, same arguments. A
sample stores float64 masters in a *storage* layout and `build` turns them into
the call's views, so non-contiguous inputs (transposed B/H/L, strided D),
3-D / 5-D inputs, broadcast masks and GQA all reach the kernels as strides and
gradients flow back to the masters:

    layout  "contig"      q [B, H, L, D]
            "blhd"        stored [B, L, H, D], called with .transpose(1, 2) (MultiheadAttention's)
            "hbld"        stored [H, B, L, D], called with .transpose(0, 1)
            "dstride"     stored [..., 2D], called with [..., ::2]
            "3d"          [H, L, D] (no batch dim; B = 1)
            "5d"          [2, B/2, H, L, D]
    mask    None | "bool" | "float" (additive, requires grad: its gradient is checked)
            | "bool_empty" (some rows with no key left) | "float_inf" (-inf entries, no grad)
    mshape  "full" [B, H, Lq, Lk] | "LL" [Lq, Lk] | "B1LL" [B, 1, Lq, Lk] | "1H1L" [1, H, 1, Lk] (a 1-D mask: torch raises IndexError)

`reference` is the explicit float64 math (used where torch itself is not the
reference: scale <= 0 with causal, dropout against the Philox mask).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
HEAD_DIMS = (1, 8, 16, 32, 63, 64, 80, 128, 256)
LENGTHS = (1, 2, 17, 63, 64, 65, 127, 129)          # 1000: the two big forward tests in tests/
LAYOUTS = ("contig", "blhd", "hbld", "dstride", "3d", "5d")
MASKS = (None, "bool", "float", "bool_empty", "float_inf")
MSHAPES = ("full", "LL", "B1LL", "1H1L")  # a 1-D mask is an IndexError in torch (bad inputs)


def ours(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return mte.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal,
                                                          scale, enable_gqa=enable_gqa)


def native(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                                          enable_gqa=enable_gqa)


def reference(q, k, v, attn_mask=None, is_causal=False, scale=None, keep=None, p=0.0):
    """Explicit float64 math on 4-D [B, H, L, D] inputs (GQA by head index): empty rows give 0; `keep`
    ([B, Hq, Lq, Lk] bool) applies dropout with 1/(1-p) scaling."""
    q, k, v = q.double(), k.double(), v.double()
    r = q.shape[-3] // k.shape[-3]
    if r > 1:
        k, v = k.repeat_interleave(r, -3), v.repeat_interleave(r, -3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2)) * scale
    allow = torch.ones(s.shape, dtype=torch.bool)
    if is_causal:
        allow = allow & torch.ones(s.shape[-2:], dtype=torch.bool).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allow = allow & attn_mask
        else:
            s = s + attn_mask.double()
    s = s.masked_fill(~allow, -math.inf)
    m = s.amax(-1, keepdim=True).clamp(min=-1e300)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    den = e.sum(-1, keepdim=True)
    pr = torch.where(den > 0, e / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(e))
    if keep is not None:
        pr = pr * keep.double() / (1.0 - p) if p < 1 else torch.zeros_like(pr)
    return pr @ v


def make_sample(B, Hq, Hkv, Lq, Lk, D, Dv, layout="contig", mask=None, mshape="full", causal=False,
                scale=None, gqa=False, seed=0) -> Sample:
    g = torch.Generator().manual_seed(seed)
    if layout == "3d" and B != 1:
        layout = "contig"
    if layout == "5d" and B % 2:
        layout = "contig"
    if not gqa:
        Hkv = Hq

    def store(shape4):
        b, h, l_, d = shape4
        if layout == "blhd":
            shp = (b, l_, h, d)
        elif layout == "hbld":
            shp = (h, b, l_, d)
        elif layout == "dstride":
            shp = (b, h, l_, 2 * d)
        elif layout == "3d":
            shp = (h, l_, d)
        elif layout == "5d":
            shp = (2, b // 2, h, l_, d)
        else:
            shp = shape4
        return torch.randn(shp, generator=g, dtype=torch.float64)

    def view(t):
        if layout == "blhd":
            return t.transpose(1, 2)
        if layout == "hbld":
            return t.transpose(0, 1)
        if layout == "dstride":
            return t[..., ::2]
        return t

    q = store((B, Hq, Lq, D))
    k = store((B, Hkv, Lk, D))
    v = store((B, Hkv, Lk, Dv))
    m = None
    if mask is not None:
        mshp = {"full": (B, Hq, Lq, Lk), "LL": (Lq, Lk), "B1LL": (B, 1, Lq, Lk), "1H1L": (1, Hq, 1, Lk),
                "L": (Lk,)}[mshape]
        if layout == "3d" and len(mshp) == 4:
            mshp = mshp[1:]
        if layout == "5d" and len(mshp) == 4:
            mshp = (2, mshp[0] // 2 if mshp[0] > 1 else 1, *mshp[1:])
        if mask.startswith("bool"):
            m = torch.rand(mshp, generator=g) > 0.3
            if mask == "bool_empty" and m.dim() >= 2 and m.shape[-2] > 1:
                m[..., 1::3, :] = False         # every third row: no key left
        else:
            m = torch.randn(mshp, generator=g, dtype=torch.float64)
            if mask == "float_inf":
                m = m.masked_fill(torch.rand(mshp, generator=g) < 0.3, -math.inf)
    grad_leaves = ["query", "key", "value"] + (["attn_mask"] if mask == "float" else [])

    def build(fn, L):
        return fn(view(L["query"]), view(L["key"]), view(L["value"]), L["attn_mask"], 0.0, causal, scale,
                  enable_gqa=gqa)

    return Sample({"query": q, "key": k, "value": v, "attn_mask": m}, build,
                  desc=(f"sdpa B={B} Hq={Hq} Hkv={Hkv} Lq={Lq} Lk={Lk} D={D} Dv={Dv} {layout} mask={mask}/{mshape} "
                        f"causal={causal} scale={scale} gqa={gqa}"),
                  grad_leaves=grad_leaves,
                  meta={"view": view, "causal": causal, "scale": scale, "gqa": gqa, "layout": layout})


FIXED = [
    # B, Hq, Hkv, Lq, Lk, D, Dv, layout, mask, mshape, causal, scale, gqa
    (1, 2, 2, 5, 7, 4, 4, "contig", None, "full", False, None, False),
    (1, 2, 2, 7, 5, 3, 3, "blhd", None, "full", True, None, False),           # causal, Lq > Lk
    (2, 2, 2, 4, 6, 3, 5, "hbld", "float", "LL", False, None, False),         # mask grad, broadcast, Dv != D
    (2, 3, 3, 5, 4, 2, 2, "contig", "float", "1H1L", False, 0.7, False),
    (2, 1, 1, 6, 5, 3, 2, "dstride", "bool_empty", "B1LL", False, None, False),  # empty rows
    (1, 4, 2, 3, 5, 4, 3, "3d", None, "full", False, 0.6, True),              # GQA, 3-D
    (2, 2, 1, 5, 3, 2, 2, "5d", "float_inf", "full", False, None, True),      # MQA, 5-D, -inf entries
    (1, 2, 2, 5, 6, 3, 3, "hbld", None, "full", True, 0.25, False),          # causal, custom scale, Lq < Lk
    (2, 1, 1, 3, 0, 2, 3, "contig", None, "full", False, None, False),        # Lk = 0
    (1, 1, 1, 1, 1, 1, 1, "contig", "float", "LL", False, None, False),
]


# Triton's interpreter runs one program instance after another (~0.1 s a launch here): four tiny cases,
# with a plain layout, a broadcast additive mask and its gradient, GQA on 3-D inputs, an empty row and causal
TRITON_FIXED = [
    (1, 2, 2, 3, 4, 2, 2, "blhd", None, "full", False, None, False),
    (1, 2, 2, 2, 3, 2, 3, "contig", "float", "LL", False, 0.7, False),
    (1, 4, 2, 3, 3, 2, 2, "3d", "bool_empty", "full", False, None, True),
    (1, 1, 1, 4, 3, 3, 2, "dstride", None, "full", True, None, False),
]


def _fixed_samples(backend: str):
    return [make_sample(*c, seed=i) for i, c in enumerate(TRITON_FIXED if backend == "triton" else FIXED)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    interp = backend == "triton"
    dims = (1, 8, 16) if interp else HEAD_DIMS
    lens = (1, 2, 5, 17) if interp else LENGTHS
    max_work = 1 << 12 if interp else 1 << 21   # B * Hq * Lq * Lk * (D + Dv)

    @st.composite
    def draw(data):
        gqa = data(st.integers(0, 4)) == 0
        Hkv = data(st.sampled_from((1, 2)))
        Hq = Hkv * data(st.sampled_from((1, 2, 3))) if gqa else data(st.sampled_from((1, 2, 3)))
        B = 1 if interp else data(st.sampled_from((1, 2)))
        Lq = data(st.sampled_from(lens))
        Lk = data(st.sampled_from(lens)) if data(st.booleans()) else Lq
        if data(st.integers(0, 12)) == 0:   # empty tensors
            if data(st.booleans()):
                Lk = 0
            else:
                Lq = 0
        D = data(st.sampled_from(dims))
        Dv = D if data(st.integers(0, 3)) else data(st.sampled_from(dims))
        while B * Hq * Lq * Lk * (D + Dv) > max_work:
            if max(Lq, Lk) > 17:
                Lq, Lk = (max(1, Lq // 2), Lk) if Lq >= Lk else (Lq, max(1, Lk // 2))
            elif D + Dv > 16:
                D, Dv = max(1, D // 2), max(1, Dv // 2)
            elif B * Hq > Hkv:
                B, Hq = 1, Hkv
            else:   # one batch, one query head per kv head: shorter rows (always ends: 1x1 fits)
                Lq, Lk = (max(1, Lq // 2), Lk) if Lq >= Lk else (Lq, max(1, Lk // 2))
        layout = data(st.sampled_from(LAYOUTS))
        causal = data(st.integers(0, 3)) == 0
        mask = None if causal else data(st.sampled_from(MASKS))
        if mask == "float" and Lq * Lk == 0:
            mask = "float_inf"   # torch gives no gradient (None) to an empty mask: nothing to compare with
        mshape = data(st.sampled_from(MSHAPES))
        scale = data(st.sampled_from((None, None, 0.3, 2.0)))
        return make_sample(B, Hq, Hkv, Lq, Lk, D, Dv, layout, mask, mshape, causal, scale, gqa,
                           seed=data(st.integers(0, 2**16)))

    return draw()


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    from minitorch_ext.ops.attention import prepare

    sfx = "_triton" if backend == "triton" else ""
    fwd, bwd, wts = (getattr(OPS, f"attention_{n}{sfx}") for n in ("fwd", "bwd", "weights"))
    L = sample.cast(torch.float32, device, requires_grad=False)
    view = sample.meta["view"]
    q, k, v, m, p, causal, scale, _ = prepare(view(L["query"]), view(L["key"]), view(L["value"]), L["attn_mask"],
                                              0.0, sample.meta["causal"], sample.meta["scale"], sample.meta["gqa"])
    out, lse = fwd(q, k, v, m, 0.0, causal, scale, 0)
    go = torch.randn_like(out)
    fm = m is not None and m.is_floating_point()
    if backend == "triton":  # the interpreter: the two ops autograd wires, once each
        return [(fwd, (q.clone().requires_grad_(True), k.clone().requires_grad_(True), v, m, 0.0, causal, scale,
                       0)),
                (bwd, (go, q, k, v, out, lse, m, 0.25, causal, scale, 1234, [True, True, True, fm]))]
    return [(fwd, (q.clone().requires_grad_(True), k.clone().requires_grad_(True), v, m, 0.0, causal, scale, 0)),
            (fwd, (q, k, v, m, 0.25, causal, scale, 1234)),
            (bwd, (go, q, k, v, out, lse, m, 0.0, causal, scale, 0, [True, True, True, fm])),
            (bwd, (go, q, k, v, out, lse, m, 0.25, causal, scale, 1234, [True, False, True, False])),
            (wts, (q, k, m, causal, scale, lse))]


def _bad_inputs():
    sd = mte.nn.functional.scaled_dot_product_attention

    def bad():
        q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
        B = torch.ones(5, 7, dtype=torch.bool)
        # (ours, native or None, error, match, desc); native None: torch accepts what we refuse
        cases = [
            (lambda: sd(q[0, 0, 0], k, v), lambda: F.scaled_dot_product_attention(q[0, 0, 0], k, v), RuntimeError,
             r"at least 2 dimensional.*query.dim: 1", "1-D query"),
            (lambda: sd(q, k.double(), v), lambda: F.scaled_dot_product_attention(q, k.double(), v), RuntimeError,
             r"same dtype.*key.dtype: double", "key dtype"),
            (lambda: sd(q, k, v.to("meta")), lambda: F.scaled_dot_product_attention(q, k, v.to("meta")),
             RuntimeError, r"same device.*value.device: meta", "value device"),
            (lambda: sd(q, torch.randn(2, 3, 7, 6), v),
             lambda: F.scaled_dot_product_attention(q, torch.randn(2, 3, 7, 6), v), RuntimeError,
             r"head dim.*\[2, 3, 5, 8\].*\[2, 3, 7, 6\]", "query/key head dims differ"),
            (lambda: sd(q, k, torch.randn(2, 3, 6, 4)),
             lambda: F.scaled_dot_product_attention(q, k, torch.randn(2, 3, 6, 4)), RuntimeError,
             r"same length.*\[2, 3, 7, 8\].*\[2, 3, 6, 4\]", "key/value lengths differ"),
            (lambda: sd(q, k, v, attn_mask=B[0]), lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=B[0]),
             IndexError, r"Dimension out of range", "1-D mask"),
            (lambda: sd(q, k, v, attn_mask=B, is_causal=True),
             lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=B, is_causal=True), RuntimeError,
             r"attn_mask should not be set when is_causal=True", "mask with is_causal"),
            (lambda: sd(q, k, v, attn_mask=B.long()),
             lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=B.long()), RuntimeError,
             r"attn_mask dtype.*long", "integer mask"),
            (lambda: sd(q, k, v, attn_mask=B.double()),
             lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=B.double()), RuntimeError,
             r"attn_mask dtype.*double", "float64 mask, float32 query"),
            (lambda: sd(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool)),
             lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(5, 6, dtype=torch.bool)),
             RuntimeError, r"attn_mask of shape \[5, 6\] is not broadcastable to \[2, 3, 5, 7\]", "mask shape"),
            (lambda: sd(q, k, v, attn_mask=torch.ones(2, 2, 3, 5, 7)),
             lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(2, 2, 3, 5, 7)), RuntimeError,
             r"attn_mask of shape \[2, 2, 3, 5, 7\]", "mask with more dims than the attention"),
            (lambda: sd(q, k, v, dropout_p=1.5), lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=1.5),
             RuntimeError, r"dropout probability.*1.5", "dropout_p > 1"),
            (lambda: sd(torch.randn(2, 4, 5, 8), k, v, enable_gqa=True),
             lambda: F.scaled_dot_product_attention(torch.randn(2, 4, 5, 8), k, v, enable_gqa=True),
             RuntimeError, r"must divide the number of heads in query.*4 heads, key 3", "GQA: 4 heads over 3"),
            (lambda: sd(torch.randn(2, 6, 5, 8), k, v),
             lambda: F.scaled_dot_product_attention(torch.randn(2, 6, 5, 8), k, v), RuntimeError,
             r"not broadcastable", "6 query heads, 3 key heads, no enable_gqa"),
            (lambda: sd(q, k, v, scale="x"), lambda: F.scaled_dot_product_attention(q, k, v, scale="x"), TypeError,
             r"scale", "scale not a number"),
            (lambda: sd(1, k, v), lambda: F.scaled_dot_product_attention(1, k, v), TypeError,
             r"argument 'query'", "query not a tensor"),
            (lambda: sd(q.long(), k.long(), v.long()),
             lambda: F.scaled_dot_product_attention(q.long(), k.long(), v.long()), RuntimeError,
             r"query: expected a floating point", "integer inputs"),
            (lambda: sd(torch.randn(2, 6, 5, 8), k, v[:, :1], enable_gqa=True), None, RuntimeError,
             r"same number of heads", "GQA with different key and value head counts (torch repeats each)"),
        ]
        return [BadInput(o, err, match, desc, native=n) for o, n, err, match, desc in cases]

    return bad


def spec() -> OpSpec:
    return OpSpec(name="sdpa", ours=ours, native=native, samples=_fixed_samples, strategy=_strategy,
                  raw_ops=_raw_ops, bad_inputs=_bad_inputs(), extra={"parity_samples": _fixed_samples})


class SmallAttention(torch.nn.Module):
    """x [N, L, E] -> our Linear -> q, k, v heads -> our sdpa (causal) -> our Linear -> our
    MultiheadAttention (with a key padding mask): the compile smoke model of both entry points."""

    def __init__(self, E=16, H=2):
        super().__init__()
        self.H = H
        self.qkv = mte.nn.Linear(E, 3 * E)
        self.out = mte.nn.Linear(E, E)
        self.mha = mte.nn.MultiheadAttention(E, H, batch_first=True)

    def forward(self, x):
        N, L, E = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.H, E // self.H).permute(2, 0, 3, 1, 4).unbind(0)
        o = mte.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = self.out(o.transpose(1, 2).reshape(N, L, E))
        pad = torch.zeros(N, L, dtype=torch.bool, device=x.device)
        pad[:, -1] = True
        return self.mha(y, y, y, key_padding_mask=pad, need_weights=False)[0]


def small_model():
    def make():
        torch.manual_seed(0)
        return SmallAttention()

    return make
