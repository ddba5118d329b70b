"""The cross-entropy family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

One spec, "cross_entropy", over two kinds: "ce" (cross_entropy: class indices or class
probabilities, weight, ignore_index, label_smoothing, every reduction) and "nll"
(nll_loss). ``ours(kind, x, t, w, **kw)`` calls minitorch_ext.nn.functional's,
``native(...)`` torch.nn.functional's. Layouts: contiguous, a strided slice (every
other element of the last dim), transposed ((N, C) with unit stride along N),
unbatched ((C,) input). Only the input gets gradients (torch refuses a weight that
requires grad; probability targets are detached here).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.ops.ce import reduction_enum
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
MF = mte.nn.functional

LAYOUTS = ("contig", "noncontig", "transposed", "unbatched")
BACKENDS = tuple(b for b in ("cpp", "triton") if b in mte.available_backends("cpu"))


def _ours(kind, x, t, w, **kw):
    return (MF.cross_entropy if kind == "ce" else MF.nll_loss)(x, t, weight=w, **kw)


def _native(kind, x, t, w, **kw):
    return (F.cross_entropy if kind == "ce" else F.nll_loss)(x, t, weight=w, **kw)


def _view(shape, layout):
    """(leaf shape, view): view(leaf) has `shape` (batched (N, C, ...)) in `layout`."""
    shape = tuple(shape)
    if layout == "unbatched":
        return shape[1:2], (lambda t: t)
    if layout == "noncontig":
        return (*shape[:-1], 2 * shape[-1]), (lambda t: t[..., ::2])
    if layout == "transposed" and len(shape) == 2:
        return (shape[1], shape[0]), (lambda t: t.t())
    return shape, (lambda t: t)


def ce_sample(kind: str, shape, layout: str, seed: int, prob: bool = False, weight: bool = False,
              ignore=None, **kw) -> Sample:
    """shape is batched (N, C, d...); `ignore`: None (no ignored rows) or the ignore_index
    value, given to a third of the rows (never row 0, so a mean is not 0/0)."""
    g = torch.Generator().manual_seed(seed)
    leaf_shape, view = _view(shape, layout)
    x = torch.randn(leaf_shape, generator=g, dtype=torch.float64) * 2
    N, C = shape[0], shape[1]
    unb = layout == "unbatched"
    if ignore is not None and C == 1 and 0 <= ignore:
        ignore = -100  # one class: ignoring it would ignore every row (a mean of 0/0)
    tshape = () if unb else (N, *shape[2:])
    if prob:
        pshape = (C,) if unb else tuple(shape)
        t = torch.rand(pshape, generator=g, dtype=torch.float64)
        t = t / t.sum(0 if unb else 1, keepdim=True)
    else:
        t = torch.randint(0, C, tshape, generator=g)
        if ignore is not None and not unb:
            flat = t.view(-1)
            sel = torch.rand(flat.shape, generator=g) < 0.34
            if flat.numel():
                sel[0] = False
                flat[0] = (ignore + 1) % C if 0 <= ignore < C and flat[0] == ignore else flat[0]
            flat[sel] = ignore
        if ignore is not None and unb and int(t) == ignore:
            t = torch.tensor((ignore + 1) % C)  # the one row stays counted (no 0/0 mean)
        if ignore is not None:
            kw["ignore_index"] = ignore
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5 if weight else None

    def build(f, L):
        return f(kind, view(L["input"]), L["target"], L["weight"], **kw)

    return Sample({"input": x, "target": t, "weight": w}, build, grad_leaves=("input",),
                  desc=f"{kind} shape={tuple(shape)} {layout} prob={prob} weight={weight} {kw}",
                  meta={"kind": kind, "view": view, "kw": kw, "unbatched": unb, "shape": tuple(shape)})


# Triton's interpreter: a few tiny samples
TRITON_FIXED = [
    ("ce", (3, 7), "contig", dict(label_smoothing=0.1, weight=True, ignore=-100)),
    ("ce", (2, 5, 3), "noncontig", dict(reduction="none", ignore=1)),
    ("ce", (3, 6), "transposed", dict(prob=True, label_smoothing=0.2, reduction="sum")),
    ("nll", (4, 5), "contig", dict(weight=True, ignore=2)),
]


def _fixed(backend: str):
    if backend == "triton":
        return [ce_sample(k, s, lay, i, **kw) for i, (k, s, lay, kw) in enumerate(TRITON_FIXED)]
    cases = [
        ("ce", (4, 7), "contig", dict()),
        ("ce", (5, 19), "contig", dict(label_smoothing=0.1, weight=True, ignore=-100)),
        ("ce", (5, 19), "contig", dict(label_smoothing=0.3, ignore=3, reduction="sum")),
        ("ce", (6, 33), "contig", dict(weight=True, label_smoothing=0.2, reduction="none", ignore=-100)),
        ("ce", (3, 5), "noncontig", dict(weight=True)),
        ("ce", (4, 9), "transposed", dict(label_smoothing=0.1)),
        ("ce", (2, 4, 3), "contig", dict(label_smoothing=0.1, ignore=-100, weight=True)),
        ("ce", (2, 3, 2, 3), "noncontig", dict(reduction="none", ignore=0)),
        ("ce", (1, 6), "unbatched", dict(label_smoothing=0.25)),
        ("ce", (3, 8), "contig", dict(prob=True)),
        ("ce", (3, 8), "contig", dict(prob=True, weight=True, label_smoothing=0.2, reduction="none")),
        ("ce", (2, 4, 3), "noncontig", dict(prob=True, reduction="sum")),
        ("ce", (1, 5), "unbatched", dict(prob=True, weight=True)),
        ("nll", (4, 7), "contig", dict(weight=True, ignore=-100)),
        ("nll", (2, 3, 4), "contig", dict(reduction="none", ignore=1)),
        ("nll", (3, 6), "transposed", dict(reduction="sum")),
        ("ce", (2, 40), "contig", dict(label_smoothing=0.1, reduction="none")),  # vector + tail classes
    ]
    return [ce_sample(k, s, lay, i, **kw) for i, (k, s, lay, kw) in enumerate(cases)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    interp = backend == "triton"

    @st.composite
    def draw(data):
        kind = data(st.sampled_from(["ce", "ce", "nll"]))
        layout = data(st.sampled_from(LAYOUTS))
        N = data(st.sampled_from([1, 2, 3] if interp else [0, 1, 2, 3, 5, 8]))
        C = data(st.sampled_from([1, 2, 3, 5, 17] if interp else [1, 2, 3, 5, 7, 16, 17, 31, 64, 100]))
        nsp = 0 if layout in ("unbatched", "transposed") else data(st.integers(0, 2 if not interp else 1))
        spatial = tuple(data(st.sampled_from([1, 2, 3, 5])) for _ in range(nsp))
        if layout == "unbatched":
            N = 1
        prob = kind == "ce" and data(st.booleans())
        reduction = data(st.sampled_from(["mean", "sum", "none"]))
        if N == 0 and reduction == "mean":
            reduction = "sum"
        kw = {"reduction": reduction}
        if kind == "ce":
            kw["label_smoothing"] = data(st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]))
        ignore = None if prob else data(st.sampled_from([None, -100, 0, 1]))
        return ce_sample(kind, (N, C, *spatial), layout, data(st.integers(0, 2**16)), prob=prob,
                         weight=data(st.booleans()), ignore=ignore, **kw)

    return draw()


def raw_args(sample: Sample, dtype=torch.float32, device="cpu"):
    """The [N, C, D] input, target and the normalized arguments of the sample's ce_fwd."""
    L = sample.cast(dtype, device, requires_grad=False)
    x = sample.meta["view"](L["input"])
    t = L["target"]
    kw = sample.meta["kw"]
    if x.dim() == 1:
        x = x.view(1, -1, 1)
    else:
        x = x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))
    N, C, D = x.shape
    t = t.reshape(N, C, D).contiguous() if t.is_floating_point() else t.reshape(N, D)
    red = reduction_enum(None, None, kw.get("reduction", "mean"))
    return x, t, L["weight"], (red, kw.get("ignore_index", -100), kw.get("label_smoothing", 0.0),
                               sample.meta["kind"] == "nll")


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    x, t, w, (red, ii, ls, log) = raw_args(sample, torch.float32, device)
    sfx = "_triton" if backend == "triton" else ""
    fwd, bwd = getattr(OPS, "ce_fwd" + sfx), getattr(OPS, "ce_bwd" + sfx)
    xg = x.detach().clone().requires_grad_(True)
    loss, g = fwd(x, t, w, red, ii, ls, log, True)
    return [(fwd, (xg, t, w, red, ii, ls, log, True)), (fwd, (x, t, w, red, ii, ls, log, False)),
            (bwd, (torch.randn_like(loss), g.clone(), red))]


def _bad(call, native, err, match, desc):
    return BadInput(call, err, match, desc, native=native)


def _bad_inputs():
    x = torch.randn(3, 5)
    t = torch.tensor([0, 1, 2])
    x4 = torch.randn(2, 3, 4, 5)
    items = []
    for fn in ("cross_entropy", "nll_loss"):
        o, n = getattr(MF, fn), getattr(F, fn)
        items += [
            _bad(lambda o=o: o(x, t[:2]), lambda n=n: n(x, t[:2]), ValueError,
                 r"Expected input batch_size \(3\) to match target batch_size \(2\)\.", f"{fn} batch size"),
            _bad(lambda o=o: o(x, torch.tensor([0, 1, 7])), lambda n=n: n(x, torch.tensor([0, 1, 7])), IndexError,
                 r"Target 7 is out of bounds\.", f"{fn} class index out of range"),
            _bad(lambda o=o: o(x, torch.tensor([0, -3, 1])), lambda n=n: n(x, torch.tensor([0, -3, 1])),
                 IndexError, r"Target -3 is out of bounds\.", f"{fn} negative class index"),
            _bad(lambda o=o: o(x, t.float()), lambda n=n: n(x, t.float()), RuntimeError,
                 r"expected target dtype to be Long or Byte, but got Float", f"{fn} float target"),
            _bad(lambda o=o: o(x, t.int()), lambda n=n: n(x, t.int()), RuntimeError,
                 r"expected target dtype to be Long or Byte, but got Int", f"{fn} int32 target"),
            _bad(lambda o=o: o(x, t, weight=torch.ones(4)), lambda n=n: n(x, t, weight=torch.ones(4)),
                 RuntimeError, r"weight tensor should be defined either for all 5 classes", f"{fn} weight size"),
            _bad(lambda o=o: o(x, t, weight=torch.ones(5).double()),
                 lambda n=n: n(x, t, weight=torch.ones(5).double()), RuntimeError,
                 r"expected scalar type Float but found Double", f"{fn} weight dtype"),
            _bad(lambda o=o: o(x, t, weight=torch.ones(5, requires_grad=True)),
                 lambda n=n: n(x, t, weight=torch.ones(5, requires_grad=True)), RuntimeError,
                 r"not differentiable with respect to argument 'weight'", f"{fn} weight requires grad"),
            _bad(lambda o=o: o(x, torch.zeros(3, 2, dtype=torch.long)),
                 lambda n=n: n(x, torch.zeros(3, 2, dtype=torch.long)), RuntimeError,
                 r"multi-target not supported", f"{fn} 2-D target"),
            _bad(lambda o=o: o(torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)),
                 lambda n=n: n(torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)), RuntimeError,
                 r"Expected target size \[2, 4\], got \[2, 5\]", f"{fn} spatial target size"),
            _bad(lambda o=o: o(x4, torch.zeros(2, 4, dtype=torch.long)),
                 lambda n=n: n(x4, torch.zeros(2, 4, dtype=torch.long)), RuntimeError,
                 r"only batches of spatial targets supported", f"{fn} 4-D input, 2-D target"),
            _bad(lambda o=o: o(x4, torch.zeros(2, 4, 6, dtype=torch.long)),
                 lambda n=n: n(x4, torch.zeros(2, 4, 6, dtype=torch.long)), RuntimeError,
                 r"size mismatch", f"{fn} 4-D target size"),
            _bad(lambda o=o: o(x4, torch.full((2, 4, 5), 9, dtype=torch.long)),
                 lambda n=n: n(x4, torch.full((2, 4, 5), 9, dtype=torch.long)), IndexError,
                 r"Target 9 is out of bounds\.", f"{fn} spatial class index out of range"),
            _bad(lambda o=o: o(x, t, reduction="bad"), lambda n=n: n(x, t, reduction="bad"), ValueError,
                 r"bad is not a valid value for reduction", f"{fn} reduction"),
            _bad(lambda o=o: o(x.int(), t), lambda n=n: n(x.int(), t), NotImplementedError,
                 r"not implemented for 'Int'", f"{fn} integer input"),
            _bad(lambda o=o: o("x", t), lambda n=n: n("x", t), TypeError, r"input", f"{fn} input not a tensor"),
        ]
    items += [
        _bad(lambda: MF.cross_entropy(x, torch.rand(3, 5), weight=torch.ones(4)),
             lambda: F.cross_entropy(x, torch.rand(3, 5), weight=torch.ones(4)), RuntimeError,
             r"cross_entropy: weight tensor should be defined either for all 5 classes", "probability target, weight size"),
        _bad(lambda: MF.cross_entropy(x, torch.rand(3, 5), ignore_index=1),
             lambda: F.cross_entropy(x, torch.rand(3, 5), ignore_index=1), RuntimeError,
             r"ignore_index is not supported for floating point target", "probability target with ignore_index"),
        _bad(lambda: MF.cross_entropy(x, torch.rand(3, 5).bool()),
             lambda: F.cross_entropy(x, torch.rand(3, 5).bool()), RuntimeError,
             r"Expected floating point type for target with class probabilities, got Bool",
             "probability-shaped bool target"),
        _bad(lambda: MF.cross_entropy(x, t, label_smoothing=1.5), lambda: F.cross_entropy(x, t, label_smoothing=1.5),
             RuntimeError, r"label_smoothing must be between 0\.0 and 1\.0\. Got: 1\.5", "label_smoothing > 1"),
        _bad(lambda: MF.nll_loss(x, torch.rand(3, 5)), lambda: F.nll_loss(x, torch.rand(3, 5)), RuntimeError,
             r"multi-target not supported", "nll_loss probability-shaped target"),
        _bad(lambda: MF.cross_entropy(torch.randn(5), torch.tensor(7)),
             lambda: F.cross_entropy(torch.randn(5), torch.tensor(7)), IndexError, r"Target 7 is out of bounds\.",
             "unbatched class index out of range"),
        # the raw ops check their arguments too
        BadInput(lambda: OPS.ce_fwd(x, t, None, 1, -100, 0.0, False, False), RuntimeError,
                 r"ce_fwd: input: expected a 3-D tensor", "raw ce_fwd rank"),
        BadInput(lambda: OPS.ce_fwd(x[..., None], torch.tensor([[0], [1], [9]]), None, 1, -100, 0.0, False, False),
                 IndexError, r"Target 9 is out of bounds\.", "raw ce_fwd class index out of range"),
        BadInput(lambda: OPS.ce_fwd(x[..., None], t[:, None], None, 3, -100, 0.0, False, False), RuntimeError,
                 r"reduction: expected 0", "raw ce_fwd reduction"),
        BadInput(lambda: OPS.ce_fwd(x[..., None], t[:, None], torch.ones(2), 1, -100, 0.0, False, False),
                 RuntimeError, r"weight tensor should be defined either for all 5", "raw ce_fwd weight size"),
        BadInput(lambda: OPS.ce_fwd(x[..., None].half(), t[:, None], None, 1, -100, 0.0, False, False),
                 NotImplementedError, r"input: not implemented for 'Half'", "raw ce_fwd float16"),
        BadInput(lambda: OPS.ce_bwd(torch.ones(2, 1), torch.zeros(3, 5, 1), 0), RuntimeError,
                 r"ce_bwd: grad_output: expected shape \[3, 1\]", "raw ce_bwd grad_output shape"),
        BadInput(lambda: OPS.ce_bwd(torch.ones(()).double(), torch.zeros(3, 5, 1), 1), RuntimeError,
                 r"ce_bwd: grad_output: expected dtype", "raw ce_bwd grad_output dtype"),
    ]
    return items


def spec() -> OpSpec:
    return OpSpec(name="cross_entropy", ours=_ours, native=_native, samples=_fixed, strategy=_strategy,
                  raw_ops=_raw_ops, bad_inputs=_bad_inputs)


def small_model():
    """Linear(8, 5) followed by our CrossEntropyLoss (label smoothing, class weights, an
    ignored row) against a fixed target: the loss as the output, for torch.compile
    (input [6, 8])."""

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(8, 5)
            self.loss = mte.nn.CrossEntropyLoss(weight=torch.rand(5) + 0.5, label_smoothing=0.1, ignore_index=4)
            self.register_buffer("target", torch.tensor([0, 1, 4, 3, 2, 1]))

        def forward(self, x):
            return self.loss(self.lin(x), self.target)

    return M
