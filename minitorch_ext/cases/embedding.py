"""The embedding family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

``ours(x_weight, idx, **kw)`` is minitorch_ext.nn.functional.embedding, ``native`` torch's
F.embedding; the weight is the one differentiable leaf (the indices ride in the sample's
meta). Samples cover int32/int64 indices of rank 0-3, repeated indices (the scatter-add),
padding_idx (positive and negative), scale_grad_by_freq, max_norm with several
norm types (applied to a fresh copy of the weight on each call, so the calls compare
the same renormalised table), and a non-contiguous weight (a column slice).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
MF = mte.nn.functional
BACKENDS = tuple(b for b in ("cpp", "triton") if b in mte.available_backends("cpu"))


def _call(f, weight, idx, kw):
    if kw.get("max_norm") is not None:
        # renorm writes into the weight: run it on a copy that still carries the graph, as a
        # model would on its parameter (torch's own embedding does the same to its argument)
        weight = weight * 1
    return f(idx, weight, **kw)


def _ours(weight, idx, kw):
    return _call(MF.embedding, weight, idx, kw)


def _native(weight, idx, kw):
    return _call(F.embedding, weight, idx, kw)


def embedding_sample(V: int, D: int, idx_shape, seed: int, idx_dtype=torch.int64, layout="contig",
                     repeat: bool = True, **kw) -> Sample:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((V, 2 * D) if layout == "noncontig" else (V, D), generator=g, dtype=torch.float64)
    hi = max(1, V // 3) if repeat else V  # repeat: few rows, many hits each
    idx = torch.randint(0, hi, tuple(idx_shape), generator=g).to(idx_dtype)
    view = (lambda t: t[:, ::2]) if layout == "noncontig" else (lambda t: t)

    def build(f, L):
        return f(view(L["weight"]), idx, kw)

    return Sample({"weight": w}, build,
                  desc=f"V={V} D={D} idx={tuple(idx_shape)} {idx_dtype} {layout} {kw}",
                  meta={"idx": idx, "kw": kw, "view": view})


TRITON_FIXED = [
    (7, 5, (3, 4), dict(padding_idx=5)),
    (5, 9, (6,), dict(padding_idx=-2)),
]


def _fixed(backend: str):
    if backend == "triton":
        return [embedding_sample(V, D, s, seed=i, **kw) for i, (V, D, s, kw) in enumerate(TRITON_FIXED)]
    cases = [
        (10, 4, (3, 5), torch.int64, "contig", dict()),
        (7, 9, (2, 3, 4), torch.int32, "contig", dict(padding_idx=2)),
        (6, 5, (11,), torch.int64, "noncontig", dict(padding_idx=-1)),
        (9, 3, (), torch.int64, "contig", dict()),
        (8, 17, (0, 3), torch.int64, "contig", dict()),
        (12, 33, (4, 8), torch.int64, "contig", dict()),
    ]
    return [embedding_sample(V, D, s, seed=i, idx_dtype=dt, layout=lay, **kw)
            for i, (V, D, s, dt, lay, kw) in enumerate(cases)]


def max_norm_samples():
    """max_norm, scale_grad_by_freq and referenced-padding_idx samples: parity and opcheck only.
    Their gradient is not the Jacobian by design (torch's and ours): the renorm's dependence on the
    weight is left out, scale_grad_by_freq divides by the index counts, the padding row gets none."""
    cases = [
        (8, 6, (4, 4), torch.int32, "contig", dict(max_norm=1.0)),
        (8, 6, (5,), torch.int64, "noncontig", dict(max_norm=0.7, norm_type=1.0)),
        (9, 5, (3, 3), torch.int64, "contig", dict(max_norm=1.5, norm_type=3.0, padding_idx=1)),
        (6, 4, (7,), torch.int64, "contig", dict(max_norm=0.5, norm_type=float("inf"), scale_grad_by_freq=True)),
    ]
    return [embedding_sample(V, D, s, seed=100 + i, idx_dtype=dt, layout=lay, **kw)
            for i, (V, D, s, dt, lay, kw) in enumerate(cases)] + [
        embedding_sample(6, 5, (11,), seed=120, layout="noncontig", padding_idx=-1, scale_grad_by_freq=True),
        embedding_sample(12, 33, (4, 8), seed=121, scale_grad_by_freq=True, padding_idx=0),
        embedding_sample(10, 7, (5, 3), seed=123, padding_idx=1),  # a referenced padding row: no gradient
        embedding_sample(5, 9, (6,), seed=122, idx_dtype=torch.int32, scale_grad_by_freq=True)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    interp = backend == "triton"

    @st.composite
    def draw(data):
        V = data(st.sampled_from((1, 2, 5, 17) if interp else (1, 2, 5, 17, 64, 301)))
        D = data(st.sampled_from((1, 3, 8) if interp else (1, 3, 8, 31, 64, 129)))
        nd = data(st.integers(0, 3))
        shape = tuple(data(st.sampled_from((0, 1, 3, 7) if interp else (0, 1, 3, 7, 19))) for _ in range(nd))
        kw = {}
        if data(st.booleans()):
            kw["padding_idx"] = data(st.integers(-V, V - 1))
        if data(st.booleans()):
            kw["scale_grad_by_freq"] = True
        if not interp and data(st.integers(0, 3)) == 0:
            kw["max_norm"] = data(st.sampled_from((0.5, 1.0, 3.0)))
            kw["norm_type"] = data(st.sampled_from((1.0, 2.0, 3.0, float("inf"))))
        return embedding_sample(V, D, shape, data(st.integers(0, 2**16)),
                                idx_dtype=data(st.sampled_from((torch.int64, torch.int32))),
                                layout=data(st.sampled_from(("contig", "noncontig"))),
                                repeat=data(st.booleans()), **kw)

    return draw()


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    L = sample.cast(torch.float32, device, requires_grad=False)
    w = sample.meta["view"](L["weight"])
    idx = sample.meta["idx"].to(device)
    kw = sample.meta["kw"]
    pad = kw.get("padding_idx")
    pad = -1 if pad is None else (pad + w.shape[0] if pad < 0 else pad)
    sgbf = bool(kw.get("scale_grad_by_freq", False))
    sfx = "_triton" if backend == "triton" else ""
    wg = w.detach().clone().requires_grad_(True)
    gy = torch.randn((*idx.shape, w.shape[1]))
    ops = [(getattr(OPS, "embedding_fwd" + sfx), (wg, idx, pad, sgbf)),
           (getattr(OPS, "embedding_bwd" + sfx), (gy, idx, w.shape[0], pad, sgbf))]
    if not sfx and kw.get("max_norm") is not None:
        ops.append((OPS.embedding_renorm_, (w.detach().clone(), idx, float(kw["max_norm"]),
                                            float(kw.get("norm_type", 2.0)))))
    return ops


def _bad_inputs():
    w = torch.randn(10, 3)
    i = torch.tensor([[1, 2], [3, 9]])
    items = [
        BadInput(lambda: MF.embedding(torch.tensor([1, 10]), w), IndexError, r"index out of range in self",
                 "index == num_embeddings", native=lambda: F.embedding(torch.tensor([1, 10]), w)),
        BadInput(lambda: MF.embedding(torch.tensor([-1, 2]), w), IndexError, r"index out of range in self",
                 "negative index", native=lambda: F.embedding(torch.tensor([-1, 2]), w)),
        BadInput(lambda: MF.embedding(torch.tensor([3, 11], dtype=torch.int32), w), IndexError,
                 r"index out of range in self", "int32 index out of range",
                 native=lambda: F.embedding(torch.tensor([3, 11], dtype=torch.int32), w)),
        BadInput(lambda: MF.embedding(i.float(), w), RuntimeError,
                 r"'indices' to have one of the following scalar types: Long, Int", "float indices",
                 native=lambda: F.embedding(i.float(), w)),
        BadInput(lambda: MF.embedding(i, torch.randn(10)), RuntimeError, r"'weight' must be 2-D", "1-D weight",
                 native=lambda: F.embedding(i, torch.randn(10))),
        BadInput(lambda: MF.embedding(i, w, padding_idx=10), AssertionError, r"Padding_idx must be within",
                 "padding_idx too large", native=lambda: F.embedding(i, w, padding_idx=10)),
        BadInput(lambda: MF.embedding(i, w, padding_idx=-11), AssertionError, r"Padding_idx must be within",
                 "padding_idx too small", native=lambda: F.embedding(i, w, padding_idx=-11)),
        BadInput(lambda: MF.embedding(i, w, sparse=True), NotImplementedError, r"sparse=True", "sparse gradient"),
        BadInput(lambda: MF.embedding(torch.tensor([1, 10]), w.clone(), max_norm=1.0), IndexError,
                 r"index out of range", "max_norm with an index out of range",
                 native=lambda: F.embedding(torch.tensor([1, 10]), w.clone(), max_norm=1.0)),
        BadInput(lambda: MF.embedding([1, 2], w), TypeError, r"input", "input not a tensor",
                 native=lambda: F.embedding([1, 2], w)),
        # the raw ops check their arguments too
        BadInput(lambda: OPS.embedding_bwd(torch.randn(2, 3, 3), i, 10, -1, False), RuntimeError,
                 r"grad_output: expected shape", "raw embedding_bwd shape"),
        BadInput(lambda: OPS.embedding_bwd(torch.randn(2, 2, 3), i, 5, -1, False), IndexError,
                 r"index out of range in self", "raw embedding_bwd index >= num_weights"),
        BadInput(lambda: OPS.embedding_fwd(w.int(), i, -1, False), RuntimeError,
                 r"weight: expected a floating point tensor", "raw embedding_fwd integer weight"),
    ]
    return items


def spec() -> OpSpec:
    return OpSpec(name="embedding", ours=_ours, native=_native, samples=_fixed, strategy=_strategy,
                  raw_ops=_raw_ops, bad_inputs=_bad_inputs, autocast=())


def small_model():
    """A bag-of-embeddings classifier on our Embedding and torch's Linear (input: [N, L] int64 in [0, 50))."""

    def make():
        torch.manual_seed(0)

        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = mte.nn.Embedding(50, 8, padding_idx=0)
                self.lin = torch.nn.Linear(8, 3)

            def forward(self, x):
                return self.lin(self.emb(x).mean(1))

        return M()

    return make
