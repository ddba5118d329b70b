"""The pool family's sample inputs, bad inputs and raw ops, for minitorch_ext.testing.

One spec, "pool", over six kinds: max2d, avg2d, adaptive2d, max1d, avg1d,
adaptive1d; each sample names its kind and keyword arguments. ``ours(kind, x, **kw)``
calls minitorch_ext.nn.functional's pool, ``native(...)`` torch.nn.functional's.
Layouts: contiguous, channels_last, a non-contiguous slice (every other column),
unbatched (3-D, or 2-D for the 1-D pools).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.ops.pool import pool_out_size
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
MF = mte.nn.functional

KINDS = {
    "max2d": "max_pool2d", "avg2d": "avg_pool2d", "adaptive2d": "adaptive_avg_pool2d",
    "max1d": "max_pool1d", "avg1d": "avg_pool1d", "adaptive1d": "adaptive_avg_pool1d",
}
LAYOUTS = ("contig", "channels_last", "noncontig", "unbatched")
# the backends the battery runs here: cpp, and triton through its interpreter (TRITON_INTERPRET=1)
BACKENDS = tuple(b for b in ("cpp", "triton") if b in mte.available_backends("cpu"))


def _ours(kind: str, x, **kw):
    return getattr(MF, KINDS[kind])(x, **kw)


def _native(kind: str, x, **kw):
    return getattr(F, KINDS[kind])(x, **kw)


def _layout(shape, layout: str, one_d: bool):
    """(leaf shape, view, layout): view(leaf) has `shape` in `layout`. shape is batched."""
    shape = tuple(shape)
    if layout == "channels_last" and one_d:
        layout = "noncontig"
    if layout == "unbatched":
        return shape[1:], (lambda t: t), layout
    if layout == "contig":
        return shape, (lambda t: t), layout
    if layout == "channels_last":
        return shape, (lambda t: t.contiguous(memory_format=torch.channels_last)), layout
    return (*shape[:-1], 2 * shape[-1]), (lambda t: t[..., ::2]), layout


def pool_sample(kind: str, shape, layout: str, seed: int, **kw) -> Sample:
    one_d = kind.endswith("1d")
    leaf_shape, view, layout = _layout(shape, layout, one_d)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(leaf_shape, generator=g, dtype=torch.float64)

    def build(f, L):
        return f(kind, view(L["input"]), **kw)

    return Sample({"input": x}, build, desc=f"{kind} shape={tuple(shape)} {layout} {kw}",
                  meta={"kind": kind, "kw": kw, "view": view, "one_d": one_d, "unbatched": layout == "unbatched"})


# Triton's interpreter runs one program instance after another: four tiny cases for the triton backend
# (max with dilation and ceil_mode on channels_last, avg with divisor_override on a strided view, adaptive
# upsampling on an unbatched input, a 1-D max pool)
TRITON_FIXED = [
    ("max2d", (1, 2, 5, 6), "channels_last", dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1),
                                                  ceil_mode=True)),
    ("avg2d", (2, 2, 5, 6), "noncontig", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                              count_include_pad=False)),
    ("adaptive2d", (1, 2, 4, 5), "unbatched", dict(output_size=(6, 2))),
    ("max1d", (2, 2, 9), "contig", dict(kernel_size=3, stride=2, padding=1)),
]


def _fixed(backend: str):
    if backend == "triton":
        return [pool_sample(k, s, lay, seed=i, **kw) for i, (k, s, lay, kw) in enumerate(TRITON_FIXED)]
    cases = [
        ("max2d", (2, 3, 7, 9), "contig", dict(kernel_size=3, stride=2, padding=1)),
        ("max2d", (1, 3, 6, 7), "channels_last", dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1),
                                                      ceil_mode=True)),
        ("max2d", (2, 2, 6, 11), "noncontig", dict(kernel_size=2)),
        ("max2d", (1, 3, 5, 5), "unbatched", dict(kernel_size=3, stride=1, padding=1, ceil_mode=True)),
        ("max2d", (1, 2, 4, 21), "contig", dict(kernel_size=2, stride=2)),  # vector + scalar columns
        ("max2d", (1, 9, 5, 4), "channels_last", dict(kernel_size=3, stride=3, padding=1)),
        ("avg2d", (2, 3, 7, 9), "contig", dict(kernel_size=3, stride=2, padding=1)),
        ("avg2d", (1, 3, 8, 7), "channels_last", dict(kernel_size=(3, 2), stride=2, padding=(1, 0),
                                                      ceil_mode=True, count_include_pad=False)),
        ("avg2d", (2, 2, 6, 11), "noncontig", dict(kernel_size=2, divisor_override=3)),
        ("avg2d", (1, 3, 5, 5), "unbatched", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                                  count_include_pad=True)),
        ("avg2d", (1, 2, 5, 21), "contig", dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
        ("adaptive2d", (2, 3, 7, 9), "contig", dict(output_size=(3, 4))),
        ("adaptive2d", (1, 10, 3, 4), "channels_last", dict(output_size=1)),
        ("adaptive2d", (1, 9, 4, 3), "channels_last", dict(output_size=(4, None))),
        ("adaptive2d", (1, 3, 5, 5), "unbatched", dict(output_size=(7, 2))),
        ("max1d", (2, 3, 11), "contig", dict(kernel_size=3, stride=2, padding=1)),
        ("max1d", (1, 4, 9), "noncontig", dict(kernel_size=2, dilation=2, ceil_mode=True)),
        ("avg1d", (2, 3, 11), "contig", dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
        ("avg1d", (1, 3, 7), "unbatched", dict(kernel_size=2, ceil_mode=True)),
        ("adaptive1d", (2, 5, 10), "contig", dict(output_size=3)),
    ]
    return [pool_sample(k, s, lay, seed=i, **kw) for i, (k, s, lay, kw) in enumerate(cases)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    interp = backend == "triton"  # the interpreter: smaller batches, channels and planes
    SIZES = (1, 2, 3, 5, 7, 8) if interp else (1, 2, 3, 5, 7, 8, 11, 13, 16, 17)

    @st.composite
    def draw(data):
        kind = data(st.sampled_from(sorted(KINDS)))
        one_d = kind.endswith("1d")
        N = data(st.sampled_from([0, 1, 2] if interp else [0, 1, 2, 3]))
        C = data(st.sampled_from([1, 2, 3] if interp else [1, 2, 3, 5, 8, 17, 19]))
        H = 1 if one_d else data(st.sampled_from(SIZES))
        W = data(st.sampled_from(SIZES + ((11,) if interp else (29, 40))))
        shape = (N, C, W) if one_d else (N, C, H, W)
        layout = data(st.sampled_from(LAYOUTS))
        if N == 0 and layout == "unbatched":
            N, shape = 1, (1, *shape[1:])
        dims = [W] if one_d else [H, W]
        if kind.startswith("adaptive"):
            out = [data(st.integers(1, d + 3)) for d in dims]
            kw = {"output_size": out[0] if one_d else tuple(out)}
        else:
            k, s, p, d = [], [], [], []
            for size in dims:
                kk = data(st.integers(1, 4))
                dd = data(st.integers(1, 2)) if kind.startswith("max") else 1
                while (kk - 1) * dd + 1 > size + 2 * ((kk - 1) * dd + 1) // 2 and kk > 1:
                    kk -= 1
                # pad <= half the kernel: torch's max_pool1d and avg pools demand it, and so does its
                # max_pool2d on some paths (an empty batch: "pad should be smaller than or equal to half
                # of kernel size"), though its shape check allows half the *effective* kernel
                pp = data(st.integers(0, kk // 2))
                ss = data(st.integers(1, 3))
                k.append(kk), s.append(ss), p.append(pp), d.append(dd)
            ceil = data(st.booleans())
            for i, size in enumerate(dims):  # shrink until the output is not empty
                while pool_out_size(size, k[i], p[i], s[i], d[i], ceil) < 1:
                    k[i], p[i], d[i] = max(1, k[i] - 1), 0, 1
            one = (lambda v: v[0]) if one_d else tuple
            kw = {"kernel_size": one(k), "stride": one(s), "padding": one(p), "ceil_mode": ceil}
            if kind.startswith("max"):
                kw["dilation"] = one(d)
            else:
                kw["count_include_pad"] = data(st.booleans())
                if kind == "avg2d" and data(st.integers(0, 3)) == 0:
                    kw["divisor_override"] = data(st.sampled_from([1, 3, 7]))
        return pool_sample(kind, shape, layout, data(st.integers(0, 2**16)), **kw)

    return draw()


def raw_args(sample: Sample, dtype=torch.float32, device="cpu"):
    """The 4-D input and the normalized arguments of the sample's raw forward op."""
    L = sample.cast(dtype, device, requires_grad=False)
    x = sample.meta["view"](L["input"])
    kind, kw = sample.meta["kind"], dict(sample.meta["kw"])
    if sample.meta["unbatched"]:
        x = x.unsqueeze(0)
    if sample.meta["one_d"]:
        x = x.unsqueeze(-2)

    def two(v, fill):
        if v is None:
            return None
        v = [v] if isinstance(v, int) else list(v)
        v = v * (1 if sample.meta["one_d"] else 2 // len(v))
        return [fill] + v if sample.meta["one_d"] else v

    if kind.startswith("adaptive"):
        out = two(kw["output_size"], 1)
        if not sample.meta["one_d"] and not isinstance(kw["output_size"], int):
            out = [x.shape[2 + i] if v is None else v for i, v in enumerate(kw["output_size"])]
        return x, ("adaptive", out)
    k = two(kw["kernel_size"], 1)
    s = two(kw.get("stride") or kw["kernel_size"], 1)
    p = two(kw.get("padding", 0), 0)
    ceil = kw.get("ceil_mode", False)
    if kind.startswith("max"):
        return x, ("max", k, s, p, two(kw.get("dilation", 1), 1), ceil)
    return x, ("avg", k, s, p, ceil, kw.get("count_include_pad", True), kw.get("divisor_override"))


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    x, (which, *args) = raw_args(sample, torch.float32, device)
    xg = x.detach().clone().requires_grad_(True)
    sfx = "_triton" if backend == "triton" else ""

    def op(name):
        return getattr(OPS, name + sfx)

    if which == "max":
        y, ind = op("max_pool2d_fwd")(x, *args)
        return [(op("max_pool2d_fwd"), (xg, *args)), (op("max_pool2d_bwd"), (torch.randn_like(y), x, ind))]
    if which == "avg":
        y = op("avg_pool2d_fwd")(x, *args)
        return [(op("avg_pool2d_fwd"), (xg, *args)), (op("avg_pool2d_bwd"), (torch.randn_like(y), x, *args))]
    y = op("adaptive_avg_pool2d_fwd")(x, *args)
    return [(op("adaptive_avg_pool2d_fwd"), (xg, *args)),
            (op("adaptive_avg_pool2d_bwd"), (torch.randn_like(y), x))]


def _bad(call, native, err, match, desc):
    return BadInput(call, err, match, desc, native=native)


def _bad_inputs():
    x = torch.randn(2, 3, 5, 5)
    x1 = torch.randn(2, 3, 5)
    items = []
    for fn in ("max_pool2d", "avg_pool2d"):
        ours, nat = getattr(MF, fn), getattr(F, fn)
        items += [
            _bad(lambda o=ours: o(x, 7), lambda n=nat: n(x, 7), RuntimeError, r"Output size is too small",
                 f"{fn} kernel larger than the input"),
            _bad(lambda o=ours: o(x, 3, padding=2), lambda n=nat: n(x, 3, padding=2), RuntimeError,
                 r"pad should be at most half", f"{fn} padding over half the kernel"),
            _bad(lambda o=ours: o(x, 2, stride=0), lambda n=nat: n(x, 2, stride=0), RuntimeError,
                 r"stride should not be zero", f"{fn} zero stride"),
            _bad(lambda o=ours: o(torch.randn(5, 5), 2), lambda n=nat: n(torch.randn(5, 5), 2),
                 RuntimeError if fn == "max_pool2d" else IndexError,
                 r"3D or 4D" if fn == "max_pool2d" else r"Dimension out of range", f"{fn} 2-D input"),
            _bad(lambda o=ours: o(torch.randn(2, 0, 5, 5), 2), lambda n=nat: n(torch.randn(2, 0, 5, 5), 2),
                 RuntimeError, r"3D or 4D \(batch mode\) tensor with optional 0 dim batch size",
                 f"{fn} zero channels"),
            _bad(lambda o=ours: o(x, (2, 2, 2)), lambda n=nat: n(x, (2, 2, 2)), RuntimeError,
                 r"kernel_size must either be a single int, or a tuple of two ints", f"{fn} 3 kernel sizes"),
        ]
    items += [
        _bad(lambda: MF.max_pool2d(x, 2, dilation=0), lambda: F.max_pool2d(x, 2, dilation=0), RuntimeError,
             r"dilation should be greater than zero", "max_pool2d zero dilation"),
        _bad(lambda: MF.avg_pool2d(x, 2, divisor_override=0), lambda: F.avg_pool2d(x, 2, divisor_override=0),
             RuntimeError, r"divisor must be not zero", "avg_pool2d zero divisor"),
        _bad(lambda: MF.avg_pool2d(x.int(), 2), lambda: F.avg_pool2d(x.int(), 2), NotImplementedError,
             r"\"avg_pool2d\" not implemented for 'Int'", "avg_pool2d integer input"),
        _bad(lambda: MF.adaptive_avg_pool2d(torch.randn(5, 5), 2), lambda: F.adaptive_avg_pool2d(torch.randn(5, 5), 2),
             RuntimeError, r"Expected 3D or 4D tensor", "adaptive_avg_pool2d 2-D input"),
        _bad(lambda: MF.adaptive_avg_pool2d(x, (2, 2, 2)), lambda: F.adaptive_avg_pool2d(x, (2, 2, 2)),
             RuntimeError, r"output_size must be 2", "adaptive_avg_pool2d 3 output sizes"),
        _bad(lambda: MF.adaptive_avg_pool2d(x, -1), lambda: F.adaptive_avg_pool2d(x, -1), RuntimeError,
             r"greater than or equal to 0", "adaptive_avg_pool2d negative output size"),
        _bad(lambda: MF.adaptive_avg_pool2d(x.int(), 2), lambda: F.adaptive_avg_pool2d(x.int(), 2),
             NotImplementedError, r"not implemented for 'Int'", "adaptive_avg_pool2d integer input"),
        _bad(lambda: MF.max_pool1d(x1, 7), lambda: F.max_pool1d(x1, 7), RuntimeError,
             r"max_pool1d\(\) Invalid computed output size: 0", "max_pool1d kernel larger than the input"),
        _bad(lambda: MF.max_pool1d(x1, 3, padding=2), lambda: F.max_pool1d(x1, 3, padding=2), RuntimeError,
             r"padding should be at most half of kernel size", "max_pool1d padding over half the kernel"),
        _bad(lambda: MF.max_pool1d(torch.randn(5), 2), lambda: F.max_pool1d(torch.randn(5), 2), RuntimeError,
             r"Expected 2D or 3D", "max_pool1d 1-D input"),
        _bad(lambda: MF.max_pool1d(x1, 0), lambda: F.max_pool1d(x1, 0), RuntimeError,
             r"kernel_size must be greater than zero", "max_pool1d zero kernel"),
        _bad(lambda: MF.avg_pool1d(x1, 7), lambda: F.avg_pool1d(x1, 7), RuntimeError, r"Output size is too small",
             "avg_pool1d kernel larger than the input"),
        _bad(lambda: MF.avg_pool1d(torch.randn(5), 2), lambda: F.avg_pool1d(torch.randn(5), 2), RuntimeError,
             r"Expected 2 to 3 dimensions", "avg_pool1d 1-D input"),
        _bad(lambda: MF.adaptive_avg_pool1d(torch.randn(5), 2), lambda: F.adaptive_avg_pool1d(torch.randn(5), 2),
             RuntimeError, r"Expected 2 to 3 dimensions", "adaptive_avg_pool1d 1-D input"),
        _bad(lambda: MF.max_pool2d("x", 2), lambda: F.max_pool2d("x", 2), TypeError, r"input",
             "max_pool2d input not a tensor"),
        # the raw ops check their arguments too
        BadInput(lambda: OPS.max_pool2d_fwd(x[0], [2, 2], [2, 2], [0, 0], [1, 1], False), RuntimeError,
                 r"input: expected a 4-D tensor", "raw max_pool2d_fwd rank"),
        BadInput(lambda: OPS.max_pool2d_fwd(x, [3, 3], [1, 1], [2, 2], [1, 1], False), RuntimeError,
                 r"pad should be at most half", "raw max_pool2d_fwd padding"),
        BadInput(lambda: OPS.max_pool2d_fwd(x, [7, 7], [1, 1], [0, 0], [1, 1], False), RuntimeError,
                 r"Output size is too small", "raw max_pool2d_fwd kernel too large"),
        BadInput(lambda: OPS.max_pool2d_bwd(torch.randn(2, 3, 2, 2), x,
                                            torch.full((2, 3, 2, 2), 99, dtype=torch.long)), RuntimeError,
                 r"indices: found an index outside", "raw max_pool2d_bwd index out of range"),
        BadInput(lambda: OPS.avg_pool2d_bwd(torch.randn(2, 3, 3, 3), x, [2, 2], [2, 2], [0, 0], False, True, None),
                 RuntimeError, r"grad_output: expected shape", "raw avg_pool2d_bwd shape"),
        BadInput(lambda: OPS.avg_pool2d_fwd(x.half(), [2, 2], [2, 2], [0, 0], False, True, None),
                 NotImplementedError, r"input: not implemented for 'Half'", "raw avg_pool2d_fwd float16"),
        BadInput(lambda: OPS.adaptive_avg_pool2d_bwd(torch.randn(2, 3, 2, 2).double(), x), RuntimeError,
                 r"grad_output: expected dtype", "raw adaptive_avg_pool2d_bwd dtype"),
    ]
    return items


def spec() -> OpSpec:
    return OpSpec(name="pool", ours=_ours, native=_native, samples=_fixed, strategy=_strategy, raw_ops=_raw_ops,
                  bad_inputs=_bad_inputs, autocast=(), extra={"parity_samples": _fixed})


def small_model():
    """A LeNet-shaped model on torch's Conv2d/Linear and our pooling modules, for torch.compile
    (input [N, 3, 14, 14])."""

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), mte.nn.MaxPool2d(2), torch.nn.Conv2d(4, 6, 3, padding=1),
            mte.nn.AvgPool2d(2, ceil_mode=True), mte.nn.AdaptiveAvgPool2d((2, None)), torch.nn.Flatten(),
            torch.nn.Linear(6 * 2 * 3, 5))

    return make
