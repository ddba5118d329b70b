"""The dense family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

One spec, "linear", covers plain and fused Linear: every sample carries an
activation, and the native side applies torch's own activation after
F.linear, so `linear(x, w, b, activation="gelu")` is checked against
`F.gelu(F.linear(x, w, b))`, forward and every gradient.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
# sizes off every block and tile multiple (the list)
SIZES = (1, 7, 63, 65, 257, 1000)
ACTS = (None, "relu", ("leaky_relu", 0.2), "gelu", "gelu_tanh", "silu", "tanh", "sigmoid")
LAYOUTS = ("contig", "transposed_input", "strided_weight", "transposed_weight", "strided_input")


def _native_act(y, activation):
    if activation is None:
        return y
    if isinstance(activation, tuple):
        return F.leaky_relu(y, activation[1])
    return {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
            "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[activation](y)


def ours(input, weight, bias=None, activation=None):
    return mte.nn.functional.linear(input, weight, bias, activation=activation)


def native(input, weight, bias=None, activation=None):
    return _native_act(F.linear(input, weight, bias), activation)


def make_sample(lead, k, n, layout: str, bias: bool, activation, seed: int) -> Sample:
    g = torch.Generator().manual_seed(seed)
    lead = tuple(lead)
    m = math.prod(lead)
    if layout == "transposed_input" and len(lead) != 1:
        layout = "contig"
    x_shape = {"contig": (*lead, k), "transposed_input": (k, m), "strided_input": (*lead, 2 * k)}.get(layout,
                                                                                                       (*lead, k))
    w_shape = {"strided_weight": (n, 2 * k), "transposed_weight": (k, n)}.get(layout, (n, k))
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    w = torch.randn(w_shape, generator=g, dtype=torch.float64) / math.sqrt(max(k, 1))
    b = torch.randn(n, generator=g, dtype=torch.float64) if bias else None

    def view_x(t):
        if layout == "transposed_input":
            return t.t()
        if layout == "strided_input":
            return t[..., ::2]
        return t

    def view_w(t):
        if layout == "strided_weight":
            return t[:, ::2]
        if layout == "transposed_weight":
            return t.t()
        return t

    def build(fn, L):
        return fn(view_x(L["input"]), view_w(L["weight"]), L["bias"], activation)

    return Sample({"input": x, "weight": w, "bias": b}, build,
                  desc=f"linear lead={lead} k={k} n={n} {layout} bias={bias} act={activation}",
                  meta={"view_x": view_x, "view_w": view_w, "activation": activation})


def _fixed_samples(backend: str):
    cases = [((3,), 5, 4, "contig", True, None),
             ((2, 3), 7, 6, "transposed_weight", True, "gelu"),
             ((4,), 6, 3, "transposed_input", False, "relu"),
             ((5,), 3, 7, "strided_weight", True, ("leaky_relu", 0.2)),
             ((1,), 1, 1, "contig", True, "gelu_tanh"),
             ((3,), 4, 5, "strided_input", True, "silu"),
             ((2,), 5, 3, "contig", True, "tanh"),
             ((3,), 2, 4, "contig", False, "sigmoid"),
             ((0,), 4, 3, "contig", True, None),
             ((3,), 0, 4, "contig", True, "gelu")]
    return [make_sample(*c, seed=i) for i, c in enumerate(cases)]


def parity_samples(backend: str):
    big = backend != "triton"
    cases = [((64,), 257 if big else 33, 65 if big else 17, "contig", True, "gelu"),
             ((8, 7), 63, 1000 if big else 9, "transposed_weight", True, None),
             ((1,), 1000 if big else 65, 7, "contig", False, "relu")]
    return [make_sample(*c, seed=200 + i) for i, c in enumerate(cases)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    # the interpreter runs one program instance at a time: keep its products small
    sizes = SIZES[:4] if backend == "triton" else SIZES
    max_work = 1 << 15 if backend == "triton" else 1 << 22   # m*n*k

    @st.composite
    def draw(data):
        m = data(st.sampled_from((0,) + sizes))
        k = data(st.sampled_from((0,) + sizes)) if data(st.integers(0, 9)) == 0 else data(st.sampled_from(sizes))
        n = data(st.sampled_from(sizes))
        while m * n * max(k, 1) > max_work:  # shrink the largest of the three
            if m >= n and m >= k:
                m = max(1, m // 4)
            elif n >= k:
                n = max(1, n // 4)
            else:
                k = max(1, k // 4)
        lead = (m,)
        if m and data(st.booleans()) and m % 7 == 0:
            lead = (7, m // 7)  # leading batch dims
        layout = data(st.sampled_from(LAYOUTS))
        return make_sample(lead, k, n, layout, data(st.booleans()), data(st.sampled_from(ACTS)),
                           data(st.integers(0, 2**16)))

    return draw()


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    sfx = "_triton" if backend == "triton" else ""
    L = sample.cast(torch.float32, device, requires_grad=False)
    x = sample.meta["view_x"](L["input"])
    w = sample.meta["view_w"](L["weight"])
    b = L["bias"]
    act, slope = mte.nn.functional.parse_activation(sample.meta["activation"])
    fwd, bwd, gemm = (getattr(OPS, f"{name}{sfx}") for name in ("linear_fwd", "linear_bwd", "gemm"))
    y, pre = fwd(x, w, b, act, slope)
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    c = torch.randn(x2.shape[0], w.shape[0])
    return [(fwd, (x.clone().requires_grad_(True), w.clone().requires_grad_(True), b, act, slope)),
            (bwd, (torch.randn_like(y), x, w, pre, act, slope, [True, True, b is not None])),
            (gemm, (x2, w.t(), c), {"alpha": 0.5, "beta": 2.0, "bias": b, "bias_dim": 1, "act": act,
                                    "slope": slope})]


def _bad_inputs():
    lin = mte.nn.functional.linear

    def bad():
        x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
        # (ours, native or None, error, match, desc); native None: torch accepts what we refuse
        cases = [
            (lambda: lin(x, torch.randn(5, 6)), lambda: F.linear(x, torch.randn(5, 6)), RuntimeError,
             r"mat1 and mat2 shapes cannot be multiplied \(3x4 and 6x5\)", "shape mismatch"),
            (lambda: lin(x, w.double()), lambda: F.linear(x, w.double()), RuntimeError,
             r"same dtype.*float != double", "weight dtype"),
            (lambda: lin(x.bfloat16(), w), lambda: F.linear(x.bfloat16(), w), RuntimeError,
             r"same dtype", "input bf16, weight float32"),
            (lambda: lin(x, w, torch.randn(6)), lambda: F.linear(x, w, torch.randn(6)), RuntimeError,
             r"bias", "bias shape"),
            (lambda: lin(x, torch.randn(2, 5, 4)), lambda: F.linear(x, torch.randn(2, 5, 4)), RuntimeError,
             r"weight|dimensions", "3-D weight"),
            (lambda: lin(torch.randn(()), w), lambda: F.linear(torch.randn(()), w), RuntimeError,
             r"at least 1D", "0-D input"),
            (lambda: lin("x", w), lambda: F.linear("x", w), TypeError, r"input", "input not a tensor"),
            (lambda: lin(x.long(), w.long()), None, RuntimeError, r"input: expected a floating point",
             "integer input (torch computes it; our kernels are floating point)"),
            (lambda: lin(x, torch.randn(5, 4, device="meta")), None, RuntimeError, r"weight.*device",
             "weight on another device (torch returns garbage here)"),
            (lambda: lin(x, w, b, activation="swish"), None, ValueError, r"activation", "unknown activation"),
            (lambda: lin(x, w, b, activation=("leaky_relu", "x")), None, ValueError, r"activation",
             "bad leaky_relu slope"),
            # the raw C++ ops check their arguments too
            (lambda: OPS.linear_fwd(x, torch.randn(5, 6), None, "none", 0.0), None, RuntimeError,
             r"mat1 and mat2 shapes cannot be multiplied", "raw linear_fwd shape"),
            (lambda: OPS.linear_fwd(x, w, b, "swish", 0.0), None, ValueError, r"act", "raw linear_fwd act"),
            (lambda: OPS.gemm(x, torch.randn(5, 6)), None, RuntimeError, r"3x4.*5x6|cannot be multiplied",
             "raw gemm shape"),
            (lambda: OPS.gemm(x, torch.randn(4, 6).double()), None, RuntimeError, r"dtype", "raw gemm dtype"),
            (lambda: OPS.gemm(x, torch.randn(4, 6), bias=torch.randn(5)), None, RuntimeError, r"bias",
             "raw gemm bias shape"),
        ]
        return [BadInput(o, err, match, desc, native=n) for o, n, err, match, desc in cases]

    return bad


def spec() -> OpSpec:
    return OpSpec(
        name="linear",
        ours=ours,
        native=native,
        samples=_fixed_samples,
        strategy=_strategy,
        raw_ops=_raw_ops,
        bad_inputs=_bad_inputs(),
        extra={"parity_samples": parity_samples},
    )


def small_model():
    """An MLP on our Linear (fused activations and plain), for the torch.compile smoke test."""

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(mte.nn.Linear(16, 32, activation="gelu"), mte.nn.Linear(32, 24),
                                   mte.nn.SiLU(), mte.nn.Linear(24, 8, activation="relu"))

    return make
