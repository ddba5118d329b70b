"""The norm family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

One description drives every check for LayerNorm and RMSNorm, on every backend.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
LAYOUTS = ("contig", "noncontig", "transposed", "expanded")
# sizes off every block multiple: 1, primes, powers of two and their neighbours
WIDTHS = (1, 2, 3, 5, 7, 16, 17, 31, 64, 97, 128, 257, 1000, 1024, 4097)


def _make_sample(kind: str, lead, ns, layout: str, affine: bool, bias: bool, seed: int) -> Sample:
    g = torch.Generator().manual_seed(seed)
    ns = tuple(ns)
    if layout == "transposed" and (len(lead) != 1 or len(ns) != 1):
        layout = "contig"
    if layout == "expanded" and math.prod(lead) == 0:
        layout = "contig"
    if layout == "contig":
        leaf_shape = (*lead, *ns)
    elif layout == "noncontig":
        leaf_shape = (*lead, *ns[:-1], 2 * ns[-1])
    elif layout == "transposed":
        leaf_shape = (ns[0], lead[0])
    else:  # expanded: one row broadcast over the batch
        leaf_shape = (1,) * len(lead) + ns
    # an offset mean and a scale, so that centring is exercised
    x = torch.randn(leaf_shape, generator=g, dtype=torch.float64) * 2.0 + 3.0
    w = (torch.randn(ns, generator=g, dtype=torch.float64) * 0.5 + 1.0) if affine else None
    b = torch.randn(ns, generator=g, dtype=torch.float64) if (affine and bias and kind == "layer_norm") else None
    eps = 1e-5

    def view(t):
        if layout == "noncontig":
            return t[..., ::2]
        if layout == "transposed":
            return t.t()
        if layout == "expanded":
            return t.expand(*lead, *ns)
        return t

    if kind == "layer_norm":
        def build(fn, L):
            return fn(view(L["input"]), ns, L["weight"], L["bias"], eps)
        leaves = {"input": x, "weight": w, "bias": b}
    else:
        def build(fn, L):
            return fn(view(L["input"]), ns, L["weight"], eps)
        leaves = {"input": x, "weight": w}
    return Sample(leaves, build, desc=f"{kind} lead={lead} ns={ns} {layout} affine={affine} bias={b is not None}",
                  meta={"ns": list(ns), "view": view})


def parity_samples(kind: str, backend: str):
    """A few representative shapes for the parity table (small enough for the interpreter)."""
    big = backend != "triton"
    cases = [((64,), (1024,) if big else (128,), "contig", True, True),
             ((33,), (97,), "noncontig", True, True),
             ((2,), (65537,), "contig", True, False),
             ((4, 5), (3, 17), "expanded", True, True),
             ((0,), (8,), "contig", True, True)]
    return [_make_sample(kind, *c, seed=100 + i) for i, c in enumerate(cases)]


def _fixed_samples(kind: str, backend: str):
    """Small shapes for gradcheck / opcheck."""
    cases = [
        ((3,), (5,), "contig", True, True),
        ((2, 3), (7,), "noncontig", True, False),
        ((4,), (6,), "transposed", False, False),
        ((3,), (2, 3), "expanded", True, True),
        ((1,), (1,), "contig", True, True),
        ((0,), (4,), "contig", True, True),
    ]
    return [_make_sample(kind, *c, seed=i) for i, c in enumerate(cases)]


def _strategy(kind: str, backend: str):
    from hypothesis import strategies as st  # a test dependency, imported only here

    # the interpreter runs one program instance at a time: keep its shapes small
    max_numel = 1 << 12 if backend == "triton" else 1 << 18

    @st.composite
    def draw(data):
        wide = data(st.integers(0, 9)) == 0
        if wide:  # a row wider than any block: 65537 elements
            lead, ns = (data(st.sampled_from([1, 2])),), (65537,)
        else:
            n = data(st.sampled_from(WIDTHS))
            ns = (n,) if data(st.booleans()) else (data(st.sampled_from([2, 3])), n)
            lead = data(st.sampled_from([(), (0,), (1,), (2,), (3,), (5,), (13,), (2, 3), (4, 7), (64,)]))
            while math.prod(lead) * math.prod(ns) > max_numel and math.prod(lead) > 1:
                k = max(range(len(lead)), key=lambda j: lead[j])  # halve the largest batch dim
                lead = lead[:k] + (lead[k] // 2,) + lead[k + 1:]
        layout = data(st.sampled_from(LAYOUTS))
        affine = data(st.booleans())
        bias = data(st.booleans())
        seed = data(st.integers(0, 2**16))
        return _make_sample(kind, lead, ns, layout, affine, bias, seed)

    return draw()


def _raw_ops(kind: str):
    def raw(sample: Sample, backend: str, device="cpu"):
        sfx = "_triton" if backend == "triton" else ""
        L = sample.cast(torch.float32, device, requires_grad=False)
        ns, view = sample.meta["ns"], sample.meta["view"]
        x = view(L["input"]).contiguous()
        xg = x.clone().requires_grad_(True)
        w = L["weight"]
        fwd = getattr(OPS, f"{kind}_fwd{sfx}")
        bwd = getattr(OPS, f"{kind}_bwd{sfx}")
        if kind == "layer_norm":
            y, mean, rstd = fwd(x, ns, w, L["bias"], 1e-5)
            return [(fwd, (xg, ns, w, L["bias"], 1e-5)),
                    (bwd, (torch.randn_like(y), x, ns, mean, rstd, w, L["bias"]))]
        y, rstd = fwd(x, ns, w, 1e-6)
        return [(fwd, (xg, ns, w, 1e-6)), (bwd, (torch.randn_like(y), x, ns, rstd, w))]

    return raw


def _bad_inputs(kind: str):
    ours = getattr(mte.nn.functional, kind)
    native = getattr(F, kind)

    def bad():
        x = torch.randn(3, 4)
        xb = x.bfloat16()
        w4, w5 = torch.ones(4), torch.ones(5)
        # (args, error, match, desc): each case is checked on ours and, with the
        # same arguments, on torch, which must raise the same error type
        cases = [
            (lambda: (x, (5,)), RuntimeError, r"normalized_shape=\[5\].*input", "shape mismatch"),
            (lambda: (x, (2, 4)), RuntimeError, r"normalized_shape", "trailing dims mismatch"),
            (lambda: (torch.randn(4), (2, 4)), ValueError if kind == "rms_norm" else RuntimeError,
             r"normalized_shape=\[2, 4\]", "normalized_shape longer than input dims"),
            (lambda: (x, ()), RuntimeError, r"normalized_shape", "empty normalized_shape"),
            (lambda: (x, (4,), w5), RuntimeError, r"weight.*shape", "weight shape"),
            (lambda: (torch.ones(3, 4, dtype=torch.long), (4,)), RuntimeError, r"input.*floating",
             "integer input"),
            (lambda: (torch.ones(3, 4, dtype=torch.int32), (4,), torch.ones(4, dtype=torch.int32)),
             RuntimeError, r"input.*floating", "integer input and weight"),
            (lambda: (x, (4,), torch.ones(4, device="meta")), RuntimeError, r"weight.*device",
             "weight on another device"),
        ]
        if kind == "layer_norm":
            cases += [
                (lambda: (x, (4,), w4.double()), RuntimeError, r"weight.*dtype", "weight float64, input float32"),
                (lambda: (x, (4,), w4.bfloat16()), RuntimeError, r"weight.*dtype", "weight bf16, input float32"),
                (lambda: (xb, (4,), w4.bfloat16(), w4), RuntimeError, r"bias.*dtype", "weight bf16, bias float32"),
                (lambda: (xb, (4,), w4, w4.bfloat16()), RuntimeError, r"bias.*dtype", "weight float32, bias bf16"),
                (lambda: (x, (4,), w4, w5), RuntimeError, r"bias.*shape", "bias shape"),
                (lambda: (x, (4,), w4, torch.ones(4, device="meta")), RuntimeError, r"bias.*device",
                 "bias on another device"),
            ]
        items = [BadInput(lambda a=args: ours(*a()), err, match, desc, native=lambda a=args: native(*a()))
                 for args, err, match, desc in cases]
        items.append(BadInput(lambda: ours("x", (4,)), TypeError, r"input", "input not a tensor",
                              native=lambda: native("x", (4,))))
        if kind == "layer_norm":
            items += [
                # the raw C++ op checks its arguments too
                BadInput(lambda: OPS.layer_norm_fwd(x, [5], None, None, 1e-5), RuntimeError,
                         r"input: given normalized_shape", "raw op shape"),
                BadInput(lambda: OPS.layer_norm_fwd(x, [4], w5, None, 1e-5), RuntimeError,
                         r"weight: expected shape", "raw op weight"),
                BadInput(lambda: OPS.layer_norm_fwd(x, [4], w4.bfloat16(), None, 1e-5), RuntimeError,
                         r"weight: expected dtype", "raw op weight dtype"),
            ]
        else:
            items += [
                BadInput(lambda: OPS.rms_norm_fwd(x.long(), [4], None, 1e-5), RuntimeError,
                         r"input: expected a floating point", "raw op dtype"),
            ]
        return items

    return bad


def spec(kind: str) -> OpSpec:
    ours = getattr(mte.nn.functional, kind)
    native = getattr(F, kind)
    return OpSpec(
        name=kind,
        ours=ours,
        native=native,
        samples=lambda backend: _fixed_samples(kind, backend),
        strategy=lambda backend: _strategy(kind, backend),
        raw_ops=_raw_ops(kind),
        bad_inputs=_bad_inputs(kind),
        # float32 master weights with a reduced-precision activation (autocast, mixed precision)
        mixed=[(torch.bfloat16, {"weight": torch.float32, "bias": torch.float32}),
               (torch.float16, {"weight": torch.float32, "bias": torch.float32})]
        + ([(torch.float32, {"weight": torch.bfloat16}), (torch.float64, {"weight": torch.float32})]
           if kind == "rms_norm" else []),
        extra={"parity_samples": lambda backend: parity_samples(kind, backend)},
    )


def small_model(kind: str):
    """A small model on our modules, for the torch.compile smoke test."""
    norm = (lambda n: mte.nn.LayerNorm(n)) if kind == "layer_norm" else (lambda n: mte.nn.RMSNorm(n))

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 32), norm(32), torch.nn.ReLU(),
                                   torch.nn.Linear(32, 8), norm(8))

    return make
