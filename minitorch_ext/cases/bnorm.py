"""The bnorm family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

One spec, "bnorm", over five kinds:
    bn_train    batch_norm(training=True), batch statistics, no running buffers
    bn_running  batch_norm(training=True) with fresh running buffers (updated in place)
    bn_eval     batch_norm(training=False) from running statistics (leaves, no grad)
    gn          group_norm(num_groups)
    in          instance_norm (use_input_stats)
Layouts: contiguous, channels_last (4-D), a non-contiguous slice (every other
element of the last dim). ``ours(kind, L, **kw)`` calls minitorch_ext.nn.functional,
``native(...)`` torch.nn.functional.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
MF = mte.nn.functional

KINDS = ("bn_train", "bn_running", "bn_eval", "gn", "in")
LAYOUTS = ("contig", "channels_last", "noncontig")
BACKENDS = tuple(b for b in ("cpp", "triton") if b in mte.available_backends("cpu"))


def _call(mod, kind: str, x, L, kw):
    w, b = L.get("weight"), L.get("bias")
    if kind == "bn_train":
        return mod.batch_norm(x, None, None, w, b, True, kw.get("momentum", 0.1), kw.get("eps", 1e-5))
    if kind == "bn_running":
        C = x.shape[1]
        # torch's CPU kernel wants running stats of the weight's dtype (float32 beside a bf16 input)
        rm = torch.zeros(C, dtype=w.dtype if w is not None else x.dtype, device=x.device)
        rv = torch.ones_like(rm)
        return mod.batch_norm(x, rm, rv, w, b, True, kw.get("momentum", 0.1), kw.get("eps", 1e-5))
    if kind == "bn_eval":
        rm, rv = L["running_mean"].detach(), L["running_var"].detach().abs() + 0.5
        return mod.batch_norm(x, rm, rv, w, b, False, 0.1, kw.get("eps", 1e-5))
    if kind == "gn":
        return mod.group_norm(x, kw["num_groups"], w, b, kw.get("eps", 1e-5))
    return mod.instance_norm(x, None, None, w, b, True, 0.1, kw.get("eps", 1e-5))


def _ours(kind, x, L, kw):
    return _call(MF, kind, x, L, kw)


def _native(kind, x, L, kw):
    return _call(F, kind, x, L, kw)


def _view(layout: str):
    if layout == "channels_last":
        return lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
    if layout == "noncontig":
        return lambda t: t[..., ::2]
    return lambda t: t


def bn_sample(kind: str, shape, layout: str, seed: int, affine: bool = True, **kw) -> Sample:
    shape = tuple(shape)
    leaf_shape = (*shape[:-1], 2 * shape[-1]) if layout == "noncontig" else shape
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    leaves = {"input": torch.randn(leaf_shape, generator=g, dtype=torch.float64) * 2 + 0.5,
              "weight": (torch.rand(C, generator=g, dtype=torch.float64) + 0.5) if affine else None,
              "bias": torch.randn(C, generator=g, dtype=torch.float64) if affine else None}
    grad = ["input"] + (["weight", "bias"] if affine else [])
    if kind == "bn_eval":
        leaves["running_mean"] = torch.randn(C, generator=g, dtype=torch.float64)
        leaves["running_var"] = torch.rand(C, generator=g, dtype=torch.float64)
    view = _view(layout)

    def build(f, L):
        return f(kind, view(L["input"]), L, kw)

    return Sample(leaves, build, desc=f"{kind} shape={shape} {layout} affine={affine} {kw}", grad_leaves=grad,
                  meta={"kind": kind, "kw": kw, "view": view, "layout": layout})


TRITON_FIXED = [
    ("bn_running", (2, 3, 3, 4), "channels_last", {}),
    ("bn_eval", (3, 2, 5), "noncontig", {}),
    ("gn", (2, 4, 3, 2), "contig", {"num_groups": 2}),
    ("in", (2, 2, 5), "contig", {}),
]


def _fixed(backend: str):
    if backend == "triton":
        return [bn_sample(k, s, lay, seed=i, **kw) for i, (k, s, lay, kw) in enumerate(TRITON_FIXED)]
    cases = [
        ("bn_train", (3, 4, 5, 6), "contig", True, {}),
        ("bn_train", (2, 5, 3, 7), "channels_last", True, {}),
        ("bn_train", (7, 3), "contig", False, {"eps": 1e-3}),
        ("bn_running", (2, 3, 9), "noncontig", True, {}),
        ("bn_running", (4, 6, 2, 3), "channels_last", True, {}),
        ("bn_eval", (2, 3, 4, 5), "contig", True, {}),
        ("bn_eval", (2, 5, 3, 3), "channels_last", False, {}),
        ("gn", (2, 6, 4, 5), "contig", True, {"num_groups": 3}),
        ("gn", (3, 4, 3, 3), "channels_last", True, {"num_groups": 2}),
        ("gn", (2, 6, 7), "noncontig", False, {"num_groups": 6}),
        ("in", (2, 3, 4, 5), "contig", True, {}),
        ("in", (3, 2, 6), "noncontig", False, {}),
    ]
    return [bn_sample(k, s, lay, seed=i, affine=a, **kw) for i, (k, s, lay, a, kw) in enumerate(cases)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    interp = backend == "triton"

    @st.composite
    def draw(data):
        kind = data(st.sampled_from(KINDS))
        N = data(st.sampled_from([1, 2, 3] if interp else [1, 2, 3, 5, 8]))
        C = data(st.sampled_from([1, 2, 4] if interp else [1, 2, 3, 4, 6, 17, 33]))
        rank = data(st.sampled_from([2, 3, 4]))
        spatial = [data(st.sampled_from([1, 2, 3, 5] if interp else [1, 2, 3, 5, 7, 16, 31]))
                   for _ in range(rank - 2)]
        shape = (N, C, *spatial)
        S = 1
        for s in spatial:
            S *= s
        kw = {}
        if kind in ("bn_train", "bn_running") and N * S == 1:
            N, shape = 2, (2, C, *spatial)
        if kind == "in":
            if rank == 2 or S == 1:
                spatial = [3] * max(1, rank - 2)
                shape = (N, C, *spatial)
        if kind == "gn":
            divs = [g for g in range(1, C + 1) if C % g == 0]
            kw["num_groups"] = data(st.sampled_from(divs))
        layout = data(st.sampled_from(LAYOUTS if len(shape) > 2 else ("contig",)))
        if layout == "channels_last" and len(shape) != 4:
            layout = "contig"
        if data(st.integers(0, 3)) == 0:
            kw["eps"] = 1e-3
        affine = data(st.booleans())
        return bn_sample(kind, shape, layout, data(st.integers(0, 2**16)), affine=affine, **kw)

    return draw()


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    L = sample.cast(torch.float32, device, requires_grad=False)
    x = sample.meta["view"](L["input"])
    w, b = L.get("weight"), L.get("bias")
    kind, kw = sample.meta["kind"], sample.meta["kw"]
    sfx = "_triton" if backend == "triton" else ""
    op = lambda name: getattr(OPS, name + sfx)  # noqa: E731
    eps = kw.get("eps", 1e-5)
    if kind.startswith("bn"):
        C = x.shape[1]
        training = kind != "bn_eval"
        rm = L["running_mean"] if kind == "bn_eval" else (torch.zeros(C) if kind == "bn_running" else None)
        rv = (L["running_var"].abs() + 0.5) if kind == "bn_eval" else (torch.ones(C) if kind == "bn_running" else None)
        y, m, s = op("batch_norm_fwd")(x, w, b, rm, rv, training, 0.1, eps)
        return [(op("batch_norm_fwd"), (x, w, b, rm, rv, training, 0.1, eps)),
                (op("batch_norm_bwd"), (torch.randn_like(y), x, w, m, s, training, [True, w is not None, True]))]
    G = kw.get("num_groups", x.shape[1])
    y, m, r = op("group_norm_fwd")(x, w, b, G, eps)
    return [(op("group_norm_fwd"), (x, w, b, G, eps)),
            (op("group_norm_bwd"), (torch.randn_like(y), x, w, m, r, G, [True, w is not None, True]))]


def _bad(call, native, err, match, desc):
    return BadInput(call, err, match, desc, native=native)


def _bad_inputs():
    x = torch.randn(2, 3, 4, 4)
    rm, rv = torch.zeros(3), torch.ones(3)
    return [
        _bad(lambda: MF.batch_norm(torch.randn(1, 3), None, None, training=True),
             lambda: F.batch_norm(torch.randn(1, 3), None, None, training=True), ValueError,
             r"Expected more than 1 value per channel when training", "batch_norm one value per channel"),
        _bad(lambda: MF.batch_norm(x, torch.zeros(4), rv), lambda: F.batch_norm(x, torch.zeros(4), rv),
             RuntimeError, r"running_mean", "batch_norm running_mean of the wrong size"),
        _bad(lambda: MF.batch_norm(x, rm, rv, torch.ones(5), training=True),
             lambda: F.batch_norm(x, rm, rv, torch.ones(5), training=True), RuntimeError, r"weight",
             "batch_norm weight of the wrong size"),
        _bad(lambda: MF.batch_norm(x, rm, rv, None, torch.ones(2), training=True),
             lambda: F.batch_norm(x, rm, rv, None, torch.ones(2), training=True), RuntimeError, r"bias",
             "batch_norm bias of the wrong size"),
        _bad(lambda: MF.batch_norm(x, None, None, training=False), lambda: F.batch_norm(x, None, None, training=False),
             RuntimeError, r"running_mean", "batch_norm eval without running stats"),
        _bad(lambda: MF.batch_norm(x.int(), rm, rv), lambda: F.batch_norm(x.int(), rm, rv), NotImplementedError,
             r"\"batch_norm\" not implemented for 'Int'", "batch_norm integer input"),
        _bad(lambda: MF.group_norm(x, 2), lambda: F.group_norm(x, 2), RuntimeError,
             r"Expected number of channels in input to be divisible by num_groups", "group_norm indivisible"),
        _bad(lambda: MF.group_norm(x, 3, torch.ones(4)), lambda: F.group_norm(x, 3, torch.ones(4)), RuntimeError,
             r"weight", "group_norm weight of the wrong size"),
        _bad(lambda: MF.instance_norm(torch.randn(2, 3, 1)), lambda: F.instance_norm(torch.randn(2, 3, 1)),
             ValueError, r"Expected more than 1 spatial element when training", "instance_norm one element"),
        _bad(lambda: MF.batch_norm("x", rm, rv), lambda: F.batch_norm("x", rm, rv), TypeError,
             r"argument 'input' .*must be Tensor", "batch_norm input not a tensor"),
        BadInput(lambda: OPS.batch_norm_fwd(x[0, 0, 0], None, None, None, None, True, 0.1, 1e-5), RuntimeError,
                 r"input: expected a tensor of at least 2 dimensions", "raw batch_norm_fwd 1-D"),
        BadInput(lambda: OPS.batch_norm_bwd(torch.randn(2, 3, 4), x, None, rm, rv, True, [True, False, True]),
                 RuntimeError, r"grad_output: expected size", "raw batch_norm_bwd shape"),
        BadInput(lambda: OPS.group_norm_fwd(x, None, None, 0, 1e-5), RuntimeError,
                 r"num_groups: expected a positive number", "raw group_norm_fwd zero groups"),
    ]


def spec() -> OpSpec:
    return OpSpec(name="bnorm", ours=_ours, native=_native, samples=_fixed, strategy=_strategy, raw_ops=_raw_ops,
                  bad_inputs=_bad_inputs, mixed=((torch.bfloat16, {"weight": torch.float32, "bias": torch.float32,
                                                                   "running_mean": torch.float32,
                                                                   "running_var": torch.float32}),),
                  autocast=())


def small_model():
    """A small conv net on torch's Conv2d and our norms (input [N, 3, 8, 8]), for torch.compile."""

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), mte.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.Conv2d(4, 6, 3), mte.nn.GroupNorm(3, 6), mte.nn.InstanceNorm2d(6, affine=True),
            torch.nn.Flatten(), torch.nn.Linear(6 * 6 * 6, 3))

    return make
