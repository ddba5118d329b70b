"""The dropout family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

The mask is ours by design (Philox4x32-10, not torch's bernoulli stream), so the
"native" side of the parity check is torch arithmetic on the mask made by the NumPy
reference minitorch_ext._philox from the seed the call draws: ``native(kind, x, p, s)``
is ``x * keep / (1 - p)`` with keep from _philox.element_words(seed, channel index),
where seed is the first draw of torch's default generator after torch.manual_seed(s).
``ours(kind, x, p, s)`` is minitorch_ext.nn.functional.<kind>(x, p) after
torch.manual_seed(s). Both are deterministic in x, so gradcheck, opcheck, Hypothesis
parity (float32, bfloat16), the float64 check and the meta check all apply unchanged;
the bad inputs are compared with torch.nn.functional's own dropouts.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext import _philox
from minitorch_ext.ops.dropout import draw_seed
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
MF = mte.nn.functional

KINDS = ("dropout", "dropout1d", "dropout2d")
BACKENDS = tuple(b for b in ("cpp", "triton") if b in mte.available_backends("cpu"))


def seed_after_manual_seed(s: int) -> int:
    """The seed a dropout call draws right after torch.manual_seed(s) (the global state is restored)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(s)
        return int(draw_seed())
    finally:
        torch.random.set_rng_state(state)


def channels(kind: str, shape):
    """(number of mask entries, elements per entry) of `kind` on an input of `shape` (torch's rules)."""
    shape = tuple(shape)
    if kind == "dropout":
        return math.prod(shape), 1
    if kind == "dropout1d" and len(shape) == 2:
        shape = (1, *shape)
    return shape[0] * shape[1], math.prod(shape[2:]) if len(shape) > 2 else 1


def reference_keep(kind: str, shape, p: float, seed: int) -> torch.Tensor:
    """The boolean keep mask of shape `shape`, from the NumPy reference (minitorch_ext._philox)."""
    nch, cs = channels(kind, shape)
    if p >= 1.0:
        keep = np.zeros(nch, dtype=bool)
    else:
        keep = _philox.element_words(seed, np.arange(nch, dtype=np.uint64)) >= np.uint32(_philox.dropout_threshold(p))
    return torch.from_numpy(np.repeat(keep, cs).reshape(shape))


def _ours(kind: str, x, p: float, s: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(s)
    try:
        return getattr(MF, kind)(x, p)
    finally:
        torch.random.set_rng_state(state)


def _native(kind: str, x, p: float, s: int):
    if p == 0.0:
        return x
    keep = reference_keep(kind, x.shape, p, seed_after_manual_seed(s)).to(x.device)
    if p >= 1.0:
        return x * keep.to(x.dtype)
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


def _view(layout: str):
    if layout == "noncontig":
        return lambda t: t[..., ::2]
    if layout == "transposed":
        return lambda t: t.transpose(-1, -2)
    return lambda t: t


def dropout_sample(kind: str, shape, p: float, layout: str, seed: int) -> Sample:
    shape = tuple(shape)
    leaf = (*shape[:-1], 2 * shape[-1]) if layout == "noncontig" else shape
    if layout == "transposed":
        leaf = (*shape[:-2], shape[-1], shape[-2])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(leaf, generator=g, dtype=torch.float64)
    view = _view(layout)

    def build(f, L):
        return f(kind, view(L["input"]), p, seed)

    return Sample({"input": x}, build, desc=f"{kind} shape={shape} p={p} {layout} seed={seed}",
                  meta={"kind": kind, "p": p, "seed": seed, "view": view})


TRITON_FIXED = [
    ("dropout", (3, 37), 0.3, "contig"),
    ("dropout2d", (2, 3, 2, 5), 0.5, "noncontig"),
]


def _fixed(backend: str):
    if backend == "triton":
        return [dropout_sample(k, s, p, lay, seed=i) for i, (k, s, p, lay) in enumerate(TRITON_FIXED)]
    cases = [
        ("dropout", (4, 33), 0.5, "contig"),
        ("dropout", (2, 3, 17), 0.2, "noncontig"),
        ("dropout", (5, 7), 0.9, "transposed"),
        ("dropout", (3, 5), 1.0, "contig"),
        ("dropout", (6,), 0.0, "contig"),
        ("dropout1d", (2, 4, 9), 0.5, "contig"),
        ("dropout1d", (5, 6), 0.4, "noncontig"),
        ("dropout2d", (2, 5, 3, 4), 0.5, "contig"),
        ("dropout2d", (2, 3, 3, 5), 0.3, "noncontig"),
    ]
    return [dropout_sample(k, s, p, lay, seed=i) for i, (k, s, p, lay) in enumerate(cases)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    interp = backend == "triton"

    @st.composite
    def draw(data):
        kind = data(st.sampled_from(KINDS))
        sizes = st.sampled_from((1, 2, 3, 5, 8) if interp else (1, 2, 3, 5, 8, 13, 17, 33))
        if kind == "dropout":
            nd = data(st.integers(1, 3))
        elif kind == "dropout1d":
            nd = data(st.integers(2, 3))
        else:
            nd = 4
        shape = tuple(data(sizes) for _ in range(nd))
        if data(st.integers(0, 5)) == 0:
            shape = (0, *shape[1:])
        p = data(st.sampled_from((0.0, 0.1, 0.5, 0.75, 1.0)))
        layout = data(st.sampled_from(("contig", "noncontig") + (("transposed",) if nd >= 2 else ())))
        return dropout_sample(kind, shape, p, layout, data(st.integers(0, 2**16)))

    return draw()


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    L = sample.cast(torch.float32, device, requires_grad=False)
    x = sample.meta["view"](L["input"])
    kind, p = sample.meta["kind"], sample.meta["p"]
    _, cs = channels(kind, x.shape)
    seed = torch.tensor(seed_after_manual_seed(sample.meta["seed"]), dtype=torch.int64)
    sfx = "_triton" if backend == "triton" else ""
    xg = x.detach().clone().requires_grad_(True)
    ops = [(getattr(OPS, "dropout_fwd" + sfx), (xg, p, seed, cs)),
           (getattr(OPS, "dropout_bwd" + sfx), (torch.randn_like(x), p, seed, cs))]
    if not sfx:
        ops.append((OPS.dropout_fwd_, (x.detach().clone(), p, seed, cs)))
    return ops


_S0 = torch.zeros((), dtype=torch.int64)


def _bad_inputs():
    x = torch.randn(2, 3, 4)
    items = []
    for fn in KINDS:
        ours, nat = getattr(MF, fn), getattr(F, fn)
        for p in (1.5, -0.1):
            items.append(BadInput(lambda o=ours, p=p: o(x, p), ValueError,
                                  rf"dropout probability has to be between 0 and 1, but got {p}",
                                  f"{fn} p={p}", native=lambda n=nat, p=p: n(x, p)))
        items.append(BadInput(lambda o=ours: o(torch.arange(24).reshape(2, 3, 4), 0.5), RuntimeError,
                              r"can't be cast", f"{fn} integer input",
                              native=lambda n=nat: n(torch.arange(24).reshape(2, 3, 4), 0.5)))
    items += [
        BadInput(lambda: MF.dropout1d(torch.randn(2, 3, 4, 5), 0.5), RuntimeError, r"dropout1d: Expected 2D or 3D input",
                 "dropout1d 4-D input", native=lambda: F.dropout1d(torch.randn(2, 3, 4, 5), 0.5)),
        BadInput(lambda: MF.dropout1d(torch.randn(5), 0.5), RuntimeError, r"dropout1d: Expected 2D or 3D input",
                 "dropout1d 1-D input", native=lambda: F.dropout1d(torch.randn(5), 0.5)),
        BadInput(lambda: MF.dropout("x", 0.5), TypeError, r"input", "dropout input not a tensor",
                 native=lambda: F.dropout("x", 0.5)),
        BadInput(lambda: mte.nn.Dropout(1.5), ValueError, r"between 0 and 1", "Dropout module p",
                 native=lambda: torch.nn.Dropout(1.5)),
        # the raw ops check their arguments too
        BadInput(lambda: OPS.dropout_fwd(x, 1.5, _S0, 1), ValueError, r"between 0 and 1, but got 1.5",
                 "raw dropout_fwd p"),
        BadInput(lambda: OPS.dropout_fwd(x, 0.5, _S0, 5), RuntimeError, r"channel_size: 5 does not divide",
                 "raw dropout_fwd channel_size"),
        BadInput(lambda: OPS.dropout_bwd(x.int(), 0.5, _S0, 1), RuntimeError,
                 r"grad_output: expected a floating point tensor", "raw dropout_bwd integer grad"),
        BadInput(lambda: OPS.dropout_fwd(x, 0.5, _S0, 0), RuntimeError, r"channel_size: expected >= 1",
                 "raw dropout_fwd channel_size 0"),
        BadInput(lambda: OPS.dropout_fwd(x, 0.5, torch.zeros(2, dtype=torch.int64), 1), RuntimeError,
                 r"seed: expected a one-element int64 tensor", "raw dropout_fwd seed of 2 elements"),
        BadInput(lambda: OPS.dropout_fwd(x, 0.5, torch.zeros(()), 1), RuntimeError,
                 r"seed: expected a one-element int64 tensor", "raw dropout_fwd float seed"),
    ]
    return items


def spec() -> OpSpec:
    return OpSpec(name="dropout", ours=_ours, native=_native, samples=_fixed, strategy=_strategy,
                  raw_ops=_raw_ops, bad_inputs=_bad_inputs, autocast=())


def small_model():
    """An MLP on torch's Linear and our dropout modules, for torch.compile (input [N, 3, 4, 4]),
    in eval mode (the checker compares compiled with eager values: a training-mode compiled graph
    draws its seed through inductor's generator; tests/test_dropout.py compiles that too)."""

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            mte.nn.Dropout2d(0.2), torch.nn.Flatten(), torch.nn.Linear(48, 16), mte.nn.Dropout(0.5),
            torch.nn.Linear(16, 4), mte.nn.Dropout(0.1, inplace=True)).eval()

    return make
