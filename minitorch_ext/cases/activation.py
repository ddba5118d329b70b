"""The activation family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

Two parametrised specs: "activation" (relu, leaky_relu, gelu, gelu tanh, silu,
tanh, sigmoid, and the in-place forms of relu, leaky_relu and silu; each sample
names its kind) and "softmax" (softmax and log_softmax over any dim). `ours`
and `native` take the kind first: ``ours("gelu", x, approximate="tanh")`` calls
minitorch_ext.nn.functional.gelu, ``native(...)`` torch.nn.functional's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
MF = mte.nn.functional

# kind -> (functional name, keyword arguments, act string of the raw op, slope)
ACT_KINDS = {
    "relu": ("relu", {}, "relu", 0.0),
    "leaky_relu": ("leaky_relu", {"negative_slope": 0.2}, "leaky_relu", 0.2),
    "leaky_relu_neg": ("leaky_relu", {"negative_slope": -0.3}, "leaky_relu", -0.3),
    "gelu": ("gelu", {}, "gelu", 0.0),
    "gelu_tanh": ("gelu", {"approximate": "tanh"}, "gelu_tanh", 0.0),
    "silu": ("silu", {}, "silu", 0.0),
    "tanh": ("tanh", {}, "tanh", 0.0),
    "sigmoid": ("sigmoid", {}, "sigmoid", 0.0),
    # in place, on a differentiable copy: the output is the modified tensor
    "relu_inplace": ("relu", {"inplace": True}, "relu", 0.0),
    "leaky_relu_inplace": ("leaky_relu", {"negative_slope": 0.1, "inplace": True}, "leaky_relu", 0.1),
    "leaky_relu_neg_inplace": ("leaky_relu", {"negative_slope": -0.5, "inplace": True}, "leaky_relu", -0.5),
    "silu_inplace": ("silu", {"inplace": True}, "silu", 0.0),
}
LAYOUTS = ("contig", "noncontig", "transposed", "expanded", "permuted")
# sizes off every vector, segment (1024) and block multiple
SIZES = (1, 2, 3, 5, 7, 8, 16, 17, 31, 64, 65, 97, 130, 257, 1000, 1025, 2049)


def _ours(fn: str, x, **kw):
    return getattr(MF, fn)(x, **kw)


def _native(fn: str, x, **kw):
    if fn == "leaky_relu" and kw.get("inplace") and kw.get("negative_slope", 0.01) < 0 and x.requires_grad:
        # torch has no backward for an in-place leaky_relu with a negative slope
        # (it raises); ours keeps a copy of the input: compare with the out-of-place result
        kw = dict(kw, inplace=False)
    if fn in ("tanh", "sigmoid"):
        return getattr(torch, fn)(x)
    return getattr(F, fn)(x, **kw)


def _layout(shape, layout: str):
    """(leaf shape, view): the leaf is laid out so that view(leaf) has `shape` in `layout`."""
    shape = tuple(shape)
    if layout == "transposed" and len(shape) < 2:
        layout = "contig"
    if layout == "permuted" and len(shape) < 3:
        layout = "transposed" if len(shape) == 2 else "contig"
    if layout == "expanded" and (len(shape) == 0 or math.prod(shape) == 0):
        layout = "contig"
    if layout == "noncontig" and len(shape) == 0:
        layout = "contig"
    if layout == "contig":
        return shape, (lambda t: t), layout
    if layout == "noncontig":
        return (*shape[:-1], 2 * shape[-1]), (lambda t: t[..., ::2]), layout
    if layout == "transposed":
        return (*shape[:-2], shape[-1], shape[-2]), (lambda t: t.transpose(-1, -2)), layout
    if layout == "permuted":  # the leaf's dims (2, 0, 1, ...) permuted back
        leaf = (shape[1], shape[2], shape[0], *shape[3:])
        return leaf, (lambda t: t.permute(2, 0, 1, *range(3, t.dim()))), layout
    # expanded: the first dim broadcast
    return (1, *shape[1:]), (lambda t: t.expand(*shape)), layout


def act_sample(kind: str, shape, layout: str, seed: int) -> Sample:
    fn, kw, act, slope = ACT_KINDS[kind]
    leaf_shape, view, layout = _layout(shape, layout)
    inplace = kw.get("inplace", False)
    if inplace and layout == "expanded":  # torch refuses to write an expanded tensor
        leaf_shape, view, layout = _layout(shape, "noncontig")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(leaf_shape, generator=g, dtype=torch.float64) * 3.0

    def build(f, L):
        t = view(L["input"])
        if inplace:  # a differentiable non-leaf of the same layout, so the update is legal
            t = t * 1.0 if layout == "contig" else view(L["input"] * 1.0)
        return f(fn, t, **kw)

    return Sample({"input": x}, build, desc=f"{kind} shape={tuple(shape)} {layout}",
                  meta={"kind": kind, "act": act, "slope": slope, "view": view, "inplace": inplace})


def softmax_sample(log: bool, shape, dim: int, layout: str, seed: int, scale: float = 4.0) -> Sample:
    fn = "log_softmax" if log else "softmax"
    leaf_shape, view, layout = _layout(shape, layout)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(leaf_shape, generator=g, dtype=torch.float64) * scale

    def build(f, L):
        return f(fn, view(L["input"]), dim=dim)

    return Sample({"input": x}, build, desc=f"{fn} shape={tuple(shape)} dim={dim} {layout}",
                  meta={"log": log, "dim": dim, "view": view})


def _act_fixed(backend: str):
    cases = [("relu", (3, 5), "contig"), ("leaky_relu", (2, 3, 7), "noncontig"),
             ("leaky_relu_neg", (4, 6), "transposed"),
             ("gelu", (3, 4), "expanded"), ("gelu_tanh", (2, 3, 4), "permuted"), ("silu", (), "contig"),
             ("tanh", (0, 4), "contig"), ("sigmoid", (1,), "contig"), ("relu_inplace", (3, 5), "transposed"),
             ("leaky_relu_neg_inplace", (2, 6), "noncontig"), ("silu_inplace", (4, 3), "contig")]
    return [act_sample(k, s, lay, seed=i) for i, (k, s, lay) in enumerate(cases)]


def _softmax_fixed(backend: str):
    cases = [(False, (3, 5), -1, "contig"), (True, (2, 3, 4), 1, "noncontig"), (False, (4, 6), 0, "transposed"),
             (True, (3, 4), 1, "expanded"), (False, (), 0, "contig"), (True, (0, 4), 1, "contig"),
             (False, (2, 5, 3), 0, "permuted"), (True, (7,), 0, "contig")]
    return [softmax_sample(log, s, d, lay, seed=i) for i, (log, s, d, lay) in enumerate(cases)]


def _shape_strategy(data, st, max_numel: int, max_dims: int = 4):
    nd = data(st.integers(0, max_dims))
    shape = [data(st.sampled_from(SIZES)) for _ in range(nd)]
    if nd and data(st.integers(0, 9)) == 0:
        shape[data(st.integers(0, nd - 1))] = 0  # an empty tensor
    while math.prod(shape) > max_numel:
        k = max(range(nd), key=lambda j: shape[j])
        shape[k] = max(1, shape[k] // 2)
    return tuple(shape)


def _act_strategy(backend: str):
    from hypothesis import strategies as st

    # the interpreter runs one program at a time and is slow: small tensors there
    max_numel = 1 << 12 if backend == "triton" else 1 << 15

    @st.composite
    def draw(data):
        kind = data(st.sampled_from(sorted(ACT_KINDS)))
        shape = _shape_strategy(data, st, max_numel)
        return act_sample(kind, shape, data(st.sampled_from(LAYOUTS)), data(st.integers(0, 2**16)))

    return draw()


def _softmax_strategy(backend: str):
    from hypothesis import strategies as st

    max_numel = 1 << 12 if backend == "triton" else 1 << 15

    @st.composite
    def draw(data):
        log = data(st.booleans())
        if data(st.integers(0, 9)) == 0:  # a row wider than any register block
            shape, dim = (data(st.sampled_from([1, 2])), 8193 if backend == "triton" else 65537), 1
        else:
            shape = _shape_strategy(data, st, max_numel)
            nd = max(len(shape), 1)
            dim = data(st.integers(-nd, nd - 1))
        scale = data(st.sampled_from([1.0, 4.0, 30.0]))
        return softmax_sample(log, shape, dim, data(st.sampled_from(LAYOUTS)), data(st.integers(0, 2**16)), scale)

    return draw()


def _act_raw_ops(sample: Sample, backend: str, device="cpu"):
    sfx = "_triton" if backend == "triton" else ""
    L = sample.cast(torch.float32, device, requires_grad=False)
    x = sample.meta["view"](L["input"])
    act, slope = sample.meta["act"], sample.meta["slope"]
    fwd, bwd = getattr(OPS, f"act_fwd{sfx}"), getattr(OPS, f"act_bwd{sfx}")
    inplace = OPS.act__triton if backend == "triton" else OPS.act_
    from_out = mte.ops.activation.grad_from_output_ok(act, slope)
    y = fwd(x, act, slope)
    ops = [(fwd, (x.detach().clone().requires_grad_(True), act, slope)),
           (bwd, (torch.randn_like(y), y if from_out else x, act, slope, from_out))]
    if sample.meta["inplace"] or sample.meta["kind"] in ("relu", "gelu"):
        target = x.clone() if sample.meta["view"](L["input"]).is_contiguous() else x.clone().transpose(0, -1)
        ops.append((inplace, (target, act, slope)))
    return ops


def _softmax_raw_ops(sample: Sample, backend: str, device="cpu"):
    sfx = "_triton" if backend == "triton" else ""
    L = sample.cast(torch.float32, device, requires_grad=False)
    x = sample.meta["view"](L["input"])
    dim, log = sample.meta["dim"], sample.meta["log"]
    fwd, bwd = getattr(OPS, f"softmax_fwd{sfx}"), getattr(OPS, f"softmax_bwd{sfx}")
    y = fwd(x, dim, log)
    return [(fwd, (x.detach().clone().requires_grad_(True), dim, log)), (bwd, (torch.randn_like(y), y, dim, log))]


def _bad(call, native, err, match, desc):
    return BadInput(call, err, match, desc, native=native)


def _act_bad_inputs():
    x = torch.randn(3, 4)
    xi = torch.arange(12).reshape(3, 4)
    items = []
    for fn in ("leaky_relu", "gelu", "silu"):
        items.append(_bad(lambda fn=fn: _ours(fn, xi), lambda fn=fn: _native(fn, xi), NotImplementedError,
                          r"not implemented for 'Long'", f"{fn} integer input"))
    items += [
        _bad(lambda: MF.relu(xi.bool()), lambda: F.relu(xi.bool()), NotImplementedError, r"Boolean", "relu bool"),
        _bad(lambda: MF.relu("x"), lambda: F.relu("x"), TypeError, r"input", "relu input not a tensor"),
        _bad(lambda: MF.gelu(x, approximate="erf"), lambda: F.gelu(x, approximate="erf"), RuntimeError,
             r"approximate", "gelu approximate"),
        _bad(lambda: MF.leaky_relu(x, "a"), lambda: F.leaky_relu(x, "a"), TypeError, r"negative_slope",
             "leaky_relu slope not a number"),
        _bad(lambda: MF.relu(torch.randn(1, 4).expand(3, 4), inplace=True),
             lambda: F.relu(torch.randn(1, 4).expand(3, 4), inplace=True), RuntimeError,
             r"more than one element", "in place on an expanded tensor"),
        _bad(lambda: MF.silu(torch.randn(3, requires_grad=True), inplace=True),
             lambda: F.silu(torch.randn(3, requires_grad=True), inplace=True), RuntimeError, r"leaf Variable",
             "in place on a leaf that requires grad"),
        _bad(lambda: MF.relu(torch.randn(3, 4, requires_grad=True)[0], inplace=True),
             lambda: F.relu(torch.randn(3, 4, requires_grad=True)[0], inplace=True), RuntimeError,
             r"view of a leaf Variable", "in place on a view of a leaf that requires grad"),
        # the raw ops check their arguments too
        BadInput(lambda: OPS.act_fwd(x, "swish", 0.0), ValueError, r"act: expected one of", "raw op act name"),
        BadInput(lambda: OPS.act_bwd(torch.randn(3, 5), x, "gelu", 0.0, False), RuntimeError,
                 r"grad_output: expected shape", "raw act_bwd shape"),
        BadInput(lambda: OPS.act_bwd(x.double(), x, "gelu", 0.0, False), RuntimeError,
                 r"grad_output: expected dtype", "raw act_bwd dtype"),
        BadInput(lambda: OPS.act_bwd(x, x, "gelu", 0.0, True), RuntimeError, r"saved_is_output",
                 "raw act_bwd from output of gelu"),
        BadInput(lambda: OPS.act_(torch.randn(1, 4).expand(3, 4), "relu", 0.0), RuntimeError,
                 r"self: unsupported operation", "raw act_ on an expanded tensor"),
        BadInput(lambda: OPS.act_fwd(xi, "gelu", 0.0), NotImplementedError, r"input.*not implemented for 'Long'",
                 "raw act_fwd integer gelu"),
    ]
    return items


def _softmax_bad_inputs():
    x = torch.randn(3, 4)
    xi = torch.arange(12).reshape(3, 4)
    items = []
    for fn in ("softmax", "log_softmax"):
        ours, nat = getattr(MF, fn), getattr(F, fn)
        items += [
            _bad(lambda ours=ours: ours(x, 2), lambda nat=nat: nat(x, 2), IndexError, r"Dimension out of range",
                 f"{fn} dim out of range"),
            _bad(lambda ours=ours: ours(torch.tensor(1.0), 1), lambda nat=nat: nat(torch.tensor(1.0), 1), IndexError,
                 r"Dimension out of range", f"{fn} dim of a 0-dim tensor"),
            _bad(lambda ours=ours: ours(xi, 1), lambda nat=nat: nat(xi, 1), NotImplementedError,
                 r"not implemented for 'Long'", f"{fn} integer input"),
            _bad(lambda ours=ours: ours(x, 1, dtype=torch.int32), lambda nat=nat: nat(x, 1, dtype=torch.int32),
                 NotImplementedError, r"not implemented for 'Int'", f"{fn} integer dtype="),
            BadInput(lambda ours=ours: ours("x", 0), TypeError, r"input", f"{fn} input not a tensor"),
        ]
    items += [
        BadInput(lambda: OPS.softmax_fwd(x, 5, False), IndexError, r"Dimension out of range", "raw op dim"),
        BadInput(lambda: OPS.softmax_fwd(xi, 0, False), NotImplementedError, r"not implemented for 'Long'",
                 "raw op integer input"),
        BadInput(lambda: OPS.softmax_bwd(torch.randn(3, 5), x, 1, False), RuntimeError,
                 r"grad_output: expected shape", "raw softmax_bwd shape"),
    ]
    return items


def spec(kind: str) -> OpSpec:
    if kind == "activation":
        return OpSpec(name="activation", ours=_ours, native=_native, samples=_act_fixed, strategy=_act_strategy,
                      raw_ops=_act_raw_ops, bad_inputs=_act_bad_inputs,
                      extra={"parity_samples": lambda backend: [act_sample(k, (64, 1000) if backend != "triton"
                                                                           else (8, 97), "contig", seed=i)
                                                                for i, k in enumerate(sorted(ACT_KINDS))]})
    if kind == "softmax":
        return OpSpec(name="softmax", ours=_ours, native=_native, samples=_softmax_fixed,
                      strategy=_softmax_strategy, raw_ops=_softmax_raw_ops, bad_inputs=_softmax_bad_inputs,
                      extra={"parity_samples": lambda backend: [
                          softmax_sample(log, (64, 1000) if backend != "triton" else (8, 97), d, "contig", seed=i)
                          for i, (log, d) in enumerate([(False, -1), (True, -1), (False, 0)])]})
    raise ValueError(f"unknown activation spec {kind!r}: expected 'activation' or 'softmax'")


def small_model():
    """An MLP on torch's Linear and our activation modules, for the torch.compile smoke test."""

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(16, 32), mte.nn.ReLU(), torch.nn.Linear(32, 32), mte.nn.GELU(),
            torch.nn.Linear(32, 32), mte.nn.GELU("tanh"), torch.nn.Linear(32, 32), mte.nn.SiLU(inplace=True),
            torch.nn.Linear(32, 32), mte.nn.LeakyReLU(0.1, inplace=True), torch.nn.Linear(32, 32), mte.nn.Tanh(),
            torch.nn.Linear(32, 32), mte.nn.Sigmoid(), torch.nn.Linear(32, 32), mte.nn.ReLU(inplace=True),
            torch.nn.Linear(32, 8), mte.nn.LogSoftmax(dim=-1))

    return make
