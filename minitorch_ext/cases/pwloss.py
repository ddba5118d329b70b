"""The pwloss family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

One spec, "pwloss", over seven kinds: mse, l1, smooth_l1, huber, bce, bce_logits, kl_div;
each sample names its kind, reduction and keyword arguments. ``ours(kind, input, target, **kw)``
calls minitorch_ext.nn.functional's loss, ``native(...)`` torch.nn.functional's.
Layouts: contiguous, a transposed (non-contiguous) input, a broadcast target (a size-1 dim:
mse/l1/smooth_l1/huber/kl_div, whose target gradient autograd sums back), a [C] weight /
pos_weight broadcast over the batch (bce, bce_logits), 0-d and empty tensors.
Input values fit the kind: bce inputs in (0.02, 0.98); kl_div targets positive
probabilities (log-probabilities under log_target).
"""
from __future__ import annotations

import inspect
import warnings

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
MF = mte.nn.functional

FN = {"mse": "mse_loss", "l1": "l1_loss", "smooth_l1": "smooth_l1_loss", "huber": "huber_loss",
      "bce": "binary_cross_entropy", "bce_logits": "binary_cross_entropy_with_logits", "kl_div": "kl_div"}
KINDS = tuple(FN)
REDUCTIONS = ("none", "mean", "sum")
BROADCASTING = ("mse", "l1", "smooth_l1", "huber", "kl_div")  # torch broadcasts input and target for these
RED_CODE = {"none": 0, "mean": 1, "sum": 2, "batchmean": 3}
BACKENDS = tuple(b for b in ("cpp", "triton") if b in mte.available_backends("cpu"))


def _call(mod, kind, x, t, weight=None, pos_weight=None, **kw):
    extra = {}
    if weight is not None:
        extra["weight"] = weight
    if pos_weight is not None:
        extra["pos_weight"] = pos_weight
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # size-mismatch and kl_div 'mean' warnings: the results are what counts
        return getattr(mod, FN[kind])(x, t, **extra, **kw)


def _ours(kind, x, t, **kw):
    return _call(MF, kind, x, t, **kw)


def _native(kind, x, t, **kw):
    return _call(F, kind, x, t, **kw)


def _values(kind, shape, g, which, log_target=False):
    r = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "bce" and which == "input":
        return torch.sigmoid(r).clamp(0.02, 0.98)
    if kind in ("bce", "bce_logits") and which == "target":
        return torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == "kl_div" and which == "input":
        return r - 1.0
    if kind == "kl_div" and which == "target":
        return r * 0.5 - 1.0 if log_target else torch.rand(shape, generator=g, dtype=torch.float64) + 0.05
    return r * 1.5


def loss_sample(kind: str, shape, reduction: str, layout: str, seed: int, **kw) -> Sample:
    """layout: contig | transposed (input viewed through .t() of a leaf) | bcast_target (target with a
    size-1 dim 0) | weighted (bce/bce_logits: [C] weight, and pos_weight for bce_logits)."""
    shape = tuple(shape)
    if 0 in shape and reduction in ("mean", "batchmean"):
        reduction = "sum"  # the mean of nothing is NaN (as torch: tests/test_pwloss.py); the checker needs numbers
    g = torch.Generator().manual_seed(seed)
    log_target = kw.get("log_target", False)
    tshape = shape
    if layout == "bcast_target" and len(shape) >= 1:
        tshape = (1,) + shape[1:]
    transposed = layout == "transposed" and len(shape) == 2
    xleaf_shape = (shape[1], shape[0]) if transposed else shape
    leaves = {"input": _values(kind, xleaf_shape, g, "input"), "target": _values(kind, tshape, g, "target", log_target),
              "weight": None, "pos_weight": None}
    if layout == "weighted" and kind in ("bce", "bce_logits") and len(shape) >= 1:
        leaves["weight"] = torch.rand(shape[-1], generator=g, dtype=torch.float64) + 0.5
        if kind == "bce_logits":
            leaves["pos_weight"] = torch.rand(shape[-1], generator=g, dtype=torch.float64) * 3 + 0.2

    def build(f, L):
        x = L["input"].t() if transposed else L["input"]
        extra = {k: L[k] for k in ("weight", "pos_weight") if L.get(k) is not None}
        return f(kind, x, L["target"], reduction=reduction, **kw, **extra)

    return Sample(leaves, build, desc=f"{kind} {shape} {reduction} {layout} {kw}", grad_leaves=("input", "target"),
                  meta={"kind": kind, "reduction": reduction, "kw": kw, "transposed": transposed})


def _kw(kind, i):
    if kind == "smooth_l1":
        return {"beta": (1.0, 0.5, 0.0)[i % 3]}
    if kind == "huber":
        return {"delta": (1.0, 0.7, 2.0)[i % 3]}
    if kind == "kl_div":
        return {"log_target": bool(i % 2)}
    return {}


# Triton's interpreter runs one program instance after another: a few tiny cases for it
TRITON_FIXED = [
    ("mse", (3, 5), "mean", "bcast_target", {}),
    ("smooth_l1", (4, 3), "none", "transposed", {"beta": 0.5}),
    ("huber", (7,), "sum", "contig", {"delta": 0.7}),
    ("bce", (2, 5), "mean", "weighted", {}),
    ("bce_logits", (3, 4), "sum", "weighted", {}),
    ("kl_div", (3, 4), "batchmean", "contig", {"log_target": True}),
    ("kl_div", (2, 3), "none", "contig", {}),
    ("l1", (), "mean", "contig", {}),
]


def _fixed(backend: str):
    if backend == "triton":
        return [loss_sample(k, s, r, lay, seed=i, **kw) for i, (k, s, r, lay, kw) in enumerate(TRITON_FIXED)]
    cases = []
    i = 0
    for kind in KINDS:
        layouts = ["contig", "transposed", "bcast_target" if kind in BROADCASTING else "weighted"]
        reds = ["none", "mean", "sum"] + (["batchmean"] if kind == "kl_div" else [])
        for j, red in enumerate(reds):
            cases.append((kind, (5, 7) if j % 2 else (3, 4, 5), red, layouts[j % 3], _kw(kind, j)))
        i += 1
    cases += [("bce_logits", (6, 5), "mean", "weighted", {}), ("bce", (4, 9), "sum", "weighted", {}),
              ("mse", (), "mean", "contig", {}), ("kl_div", (), "batchmean", "contig", {}),
              ("huber", (0, 3), "sum", "contig", {"delta": 1.0}), ("bce", (0,), "sum", "contig", {}),
              ("kl_div", (5, 4), "mean", "bcast_target", {"log_target": True})]
    return [loss_sample(k, s, r, lay, seed=n, **kw) for n, (k, s, r, lay, kw) in enumerate(cases)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    interp = backend == "triton"
    SIZES = (1, 2, 3, 5, 7) if interp else (1, 2, 3, 5, 7, 8, 16, 17, 31, 64, 257)

    @st.composite
    def draw(data):
        kind = data(st.sampled_from(KINDS))
        nd = data(st.integers(0, 3))
        shape = tuple(data(st.sampled_from(SIZES)) for _ in range(nd))
        if nd and data(st.integers(0, 9)) == 0:
            shape = (0,) + shape[1:]
        layouts = ["contig"] + (["transposed"] if nd == 2 else [])
        layouts += ["bcast_target"] if kind in BROADCASTING and nd else []
        layouts += ["weighted"] if kind in ("bce", "bce_logits") and nd else []
        layout = data(st.sampled_from(layouts))
        reds = list(REDUCTIONS) + (["batchmean"] if kind == "kl_div" else [])
        red = data(st.sampled_from(reds))
        kw = _kw(kind, data(st.integers(0, 5)))
        return loss_sample(kind, shape, red, layout, data(st.integers(0, 2**16)), **kw)

    return draw()


def raw_args(sample: Sample, dtype=torch.float32, device="cpu", requires_grad=False):
    """(input, target, weight, pos_weight, kind, param, reduction, log_target) of the raw forward op."""
    L = sample.cast(dtype, device, requires_grad=requires_grad)
    kind, kw = sample.meta["kind"], sample.meta["kw"]
    x = L["input"].t() if sample.meta["transposed"] else L["input"]
    shape = torch.broadcast_shapes(x.shape, L["target"].shape)
    x, t = x.expand(shape), L["target"].expand(shape)
    w = None if L["weight"] is None else L["weight"].expand(shape)
    pw = None if L["pos_weight"] is None else L["pos_weight"].expand(shape)
    param = float(kw.get("beta", kw.get("delta", 0.0)))
    if kind == "smooth_l1" and param == 0.0:
        kind = "l1"
    return (x, t, w, pw, kind, param, RED_CODE[sample.meta["reduction"]], bool(kw.get("log_target", False)))


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    sfx = "_triton" if backend == "triton" else ""
    fwd, bwd = getattr(OPS, "pwloss_fwd" + sfx), getattr(OPS, "pwloss_bwd" + sfx)
    args = raw_args(sample, torch.float32, device, requires_grad=True)
    plain = raw_args(sample, torch.float32, device)
    y = fwd(*plain)
    go = torch.randn(y.shape, dtype=y.dtype, device=device)
    return [(fwd, args), (bwd, (go, *plain, True, True)), (bwd, (go, *plain, False, True))]


def _bad(call, native, err, match, desc):
    return BadInput(call, err, match, desc, native=native)


def _bad_inputs():
    x, t = torch.rand(3, 4), torch.rand(3, 4)
    items = []
    for kind in KINDS:
        items.append(_bad(lambda k=kind: _ours(k, x, t, reduction="foo"), lambda k=kind: _native(k, x, t, reduction="foo"),
                          ValueError, r"foo is not a valid value for reduction", f"{kind} invalid reduction"))
    items.append(_bad(lambda: _ours("mse", x, t, reduction="batchmean"),
                      lambda: _native("mse", x, t, reduction="batchmean"), ValueError,
                      r"batchmean is not a valid value for reduction", "mse batchmean"))
    for kind in BROADCASTING:
        items.append(_bad(lambda k=kind: _ours(k, x, torch.rand(5)), lambda k=kind: _native(k, x, torch.rand(5)),
                          RuntimeError, r"(?i)mismatch|must match", f"{kind} target not broadcastable"))
    items += [
        _bad(lambda: MF.binary_cross_entropy(x, t[:1]), lambda: F.binary_cross_entropy(x, t[:1]), ValueError,
             r"Using a target size \(torch.Size\(\[1, 4\]\)\) that is different to the input size", "bce target size"),
        _bad(lambda: MF.binary_cross_entropy_with_logits(x, t[:1]), lambda: F.binary_cross_entropy_with_logits(x, t[:1]),
             ValueError, r"Target size \(torch.Size\(\[1, 4\]\)\) must be the same as input size", "bce_logits target size"),
        _bad(lambda: MF.binary_cross_entropy(x * 3, t), lambda: F.binary_cross_entropy(x * 3, t), RuntimeError,
             r"all elements of input should be between 0 and 1", "bce input above 1"),
        _bad(lambda: MF.binary_cross_entropy(x - 2, t), lambda: F.binary_cross_entropy(x - 2, t), RuntimeError,
             r"all elements of input should be between 0 and 1", "bce input below 0"),
        _bad(lambda: MF.binary_cross_entropy(x * float("nan"), t), lambda: F.binary_cross_entropy(x * float("nan"), t),
             RuntimeError, r"all elements of input should be between 0 and 1", "bce NaN input"),
        _bad(lambda: MF.binary_cross_entropy(x, t, weight=torch.rand(5)),
             lambda: F.binary_cross_entropy(x, t, weight=torch.rand(5)), RuntimeError, r"weight|broadcast",
             "bce weight of the wrong size"),
        _bad(lambda: MF.binary_cross_entropy(x, t.double()), lambda: F.binary_cross_entropy(x, t.double()), RuntimeError,
             r"Found dtype Double but expected Float", "bce target dtype"),
        _bad(lambda: MF.binary_cross_entropy(x, t, weight=torch.rand(4, requires_grad=True)),
             lambda: F.binary_cross_entropy(x, t, weight=torch.rand(4, requires_grad=True)), RuntimeError,
             r"not differentiable with respect to argument 'weight'", "bce weight requires grad"),
        _bad(lambda: MF.binary_cross_entropy_with_logits(x, t, weight=torch.rand(5)),
             lambda: F.binary_cross_entropy_with_logits(x, t, weight=torch.rand(5)), RuntimeError,
             r"(?i)mismatch|must match", "bce_logits weight of the wrong size"),
        _bad(lambda: MF.binary_cross_entropy_with_logits(x, t, pos_weight=torch.rand(5)),
             lambda: F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.rand(5)), RuntimeError,
             r"(?i)mismatch|must match", "bce_logits pos_weight of the wrong size"),
        _bad(lambda: MF.binary_cross_entropy_with_logits(x, t, pos_weight=torch.rand(4, requires_grad=True)),
             lambda: F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.rand(4, requires_grad=True)),
             RuntimeError, r"not differentiable with respect to argument 'pos_weight'",
             "bce_logits pos_weight requires grad"),
        _bad(lambda: MF.binary_cross_entropy_with_logits(x, (t > 0.5).long()),
             lambda: F.binary_cross_entropy_with_logits(x, (t > 0.5).long()), RuntimeError,
             r"can't be cast to the desired output type Long", "bce_logits integer target"),
        _bad(lambda: MF.smooth_l1_loss(x, t, beta=-1.0), lambda: F.smooth_l1_loss(x, t, beta=-1.0), RuntimeError,
             r"smooth_l1_loss does not support negative values for beta", "smooth_l1 negative beta"),
        _bad(lambda: MF.huber_loss(x, t, delta=0.0), lambda: F.huber_loss(x, t, delta=0.0), RuntimeError,
             r"huber_loss does not support non-positive values for delta", "huber zero delta"),
        _bad(lambda: MF.kl_div(x.long(), t, reduction="sum"), lambda: F.kl_div(x.long(), t, reduction="sum"), RuntimeError,
             r"kl_div: Integral inputs not supported", "kl_div integer input"),
        _bad(lambda: MF.kl_div(x, t, reduction="batchmeanx"), lambda: F.kl_div(x, t, reduction="batchmeanx"),
             ValueError, r"batchmeanx is not a valid value for reduction", "kl_div invalid reduction"),
    ]
    if "weight" in inspect.signature(F.mse_loss).parameters:  # torch >= 2.12: mse/l1/huber take a weight
        items.append(_bad(lambda: MF.mse_loss(x, t, weight=torch.rand(4)),
                          lambda: F.mse_loss(x, t, weight=torch.rand(4)), ValueError,
                          r"Weights and input must have the same size", "mse weight size"))
    items += [
        _bad(lambda: MF.mse_loss(x.int(), t.int()), lambda: F.mse_loss(x.int(), t.int()), NotImplementedError,
             r"not implemented for 'Int'", "mse integer input and target"),
        BadInput(lambda: MF.mse_loss("x", t), TypeError, r"argument 'input'", "mse input not a tensor"),
        # the raw ops check their arguments too
        BadInput(lambda: OPS.pwloss_fwd(x, t[:1], None, None, "mse", 0.0, 1, False), RuntimeError,
                 r"target: expected shape", "raw fwd target shape"),
        BadInput(lambda: OPS.pwloss_fwd(x, t.double(), None, None, "mse", 0.0, 1, False), RuntimeError,
                 r"target: expected dtype", "raw fwd target dtype"),
        BadInput(lambda: OPS.pwloss_fwd(x, t, None, None, "hinge", 0.0, 1, False), ValueError,
                 r"kind must be one of", "raw fwd unknown kind"),
        BadInput(lambda: OPS.pwloss_fwd(x, t, None, None, "mse", 0.0, 3, False), RuntimeError,
                 r"batchmean\) is for kl_div only", "raw fwd batchmean for mse"),
        BadInput(lambda: OPS.pwloss_fwd(x, t, torch.rand(4), None, "bce", 0.0, 1, False), RuntimeError,
                 r"weight: expected shape", "raw fwd weight not expanded"),
        BadInput(lambda: OPS.pwloss_bwd(torch.ones(2), x, t, None, None, "mse", 0.0, 1, False, True, True),
                 RuntimeError, r"grad_output: expected one element", "raw bwd grad_output shape"),
    ]
    return items


def spec() -> OpSpec:
    return OpSpec(name="pwloss", ours=_ours, native=_native, samples=_fixed, strategy=_strategy, raw_ops=_raw_ops,
                  bad_inputs=_bad_inputs, dtypes=(torch.float32, torch.bfloat16, torch.float16), autocast=((torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16)))


class _LossModel(torch.nn.Module):
    """A Linear head scored by every one of our loss modules (for torch.compile)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 6)
        self.register_buffer("target", torch.rand(4, 6))
        self.losses = torch.nn.ModuleList([
            mte.nn.MSELoss(), mte.nn.L1Loss(reduction="sum"), mte.nn.SmoothL1Loss(beta=0.5), mte.nn.HuberLoss(delta=0.7),
            mte.nn.BCEWithLogitsLoss(pos_weight=torch.full((6,), 2.0)), mte.nn.KLDivLoss(reduction="batchmean")])
        self.bce = mte.nn.BCELoss(weight=torch.rand(6) + 0.5)

    def forward(self, x):
        y = self.lin(x)
        total = sum(loss(y, self.target) for loss in self.losses[:5])
        total = total + self.losses[5](torch.log_softmax(y, -1), self.target.softmax(-1))
        return total + self.bce(torch.sigmoid(y), self.target)


def small_model():
    return _LossModel
