"""The conv family's samples, bad inputs and raw ops, for minitorch_ext.testing.

A sample is one convolution configuration (1-D or 2-D, batch, channels,
groups incl. depthwise, kernel, stride, padding incl. 'same'/'valid' and
asymmetric pads, dilation, padding_mode, bias, memory layout); `ours` runs
minitorch_ext's conv, `native` torch's (F.pad + F.conv for the padding modes,
as torch.nn.Conv*d does), so forward and every gradient are compared.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext.ops.conv import _conv
from minitorch_ext.testing import BadInput, OpSpec, Sample

OPS = torch.ops.minitorch_ext
LAYOUTS = ("contig", "channels_last", "noncontig", "cl_weight")
MODES = ("zeros", "reflect", "replicate", "circular")


def _pairs(cfg, weight):
    nd, p = cfg["nd"], cfg["padding"]
    if p == "valid":
        return [(0, 0)] * nd
    if p == "same":
        out = []
        for d in range(nd):
            t = cfg["dilation"][d] * (weight.shape[2 + d] - 1)
            out.append((t // 2, t - t // 2))
        return out
    return [(v, v) for v in p]


def ours(input, weight, bias, cfg):
    nd, mode = cfg["nd"], cfg["mode"]
    if mode == "zeros":
        fn = mte.nn.functional.conv1d if nd == 1 else mte.nn.functional.conv2d
        return fn(input, weight, bias, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    return _conv(input, weight, bias, cfg["stride"], _pairs(cfg, weight), cfg["dilation"], cfg["groups"], nd, mode)


def native(input, weight, bias, cfg):
    nd, mode = cfg["nd"], cfg["mode"]
    fn = F.conv1d if nd == 1 else F.conv2d
    if mode == "zeros":
        return fn(input, weight, bias, cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"])
    rp = [v for pair in reversed(_pairs(cfg, weight)) for v in pair]
    return fn(F.pad(input, rp, mode), weight, bias, cfg["stride"], 0, cfg["dilation"], cfg["groups"])


def make_sample(nd, n, cg, og, groups, size, k, stride, padding, dilation, bias, layout, mode, seed) -> Sample:
    """One sample; groups == 'dw' makes it depthwise (see below)."""
    g = torch.Generator().manual_seed(seed)
    if groups == "dw":  # depthwise: groups = in_channels = cg + 1, og output channels per input channel
        groups = cin = cg + 1
        cout, cg = cin * og, 1
    else:
        cin, cout = cg * groups, og * groups
    ks = (k,) * nd if isinstance(k, int) else tuple(k)
    size = (size,) * nd if isinstance(size, int) else tuple(size)
    stride = (stride,) * nd if isinstance(stride, int) else tuple(stride)
    dilation = (dilation,) * nd if isinstance(dilation, int) else tuple(dilation)
    if isinstance(padding, int):
        padding = (padding,) * nd
    if nd == 1 and layout in ("channels_last", "cl_weight"):
        layout = "contig"
    batch = () if n is None else (n,)
    xs = (*batch, cin, *size)
    leaf_x = (*xs[:-1], 2 * xs[-1]) if layout == "noncontig" else xs
    x = torch.randn(leaf_x, generator=g, dtype=torch.float64)
    w = torch.randn((cout, cg, *ks), generator=g, dtype=torch.float64) / math.sqrt(cg * math.prod(ks))
    b = torch.randn(cout, generator=g, dtype=torch.float64) if bias else None
    cfg = {"nd": nd, "stride": stride, "padding": padding, "dilation": dilation, "groups": groups, "mode": mode}

    def view_x(t):
        if layout == "noncontig":
            return t[..., ::2]
        if layout == "channels_last" and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def view_w(t):
        if layout == "cl_weight" and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def build(fn, L):
        return fn(view_x(L["input"]), view_w(L["weight"]), L["bias"], cfg)

    return Sample({"input": x, "weight": w, "bias": b}, build,
                  desc=f"conv{nd}d x={xs} w={tuple(w.shape)} s={stride} p={padding} d={dilation} g={groups} "
                       f"{mode} {layout} bias={bias}",
                  meta={"cfg": cfg, "view_x": view_x, "view_w": view_w})


# (nd, n, cg, og, groups, size, k, stride, padding, dilation, bias, layout, mode)
FIXED = [
    (2, 2, 3, 2, 1, 5, 3, 1, 1, 1, True, "contig", "zeros"),
    (2, 2, 2, 3, 1, (6, 5), (3, 2), 2, (1, 0), 1, True, "channels_last", "zeros"),
    (2, 1, 2, 2, 2, 6, 3, 1, "same", 2, False, "contig", "zeros"),
    (2, 2, 1, 2, "dw", 6, 3, 2, 1, 1, True, "contig", "zeros"),
    (2, 3, 3, 2, 1, 4, 1, 2, 0, 1, True, "channels_last", "zeros"),   # 1x1 stride 2, odd batch
    (2, 1, 2, 2, 1, 5, 4, 1, "same", 1, True, "cl_weight", "zeros"),   # even kernel: asymmetric
    (2, 2, 2, 2, 1, 5, 3, 1, 2, 1, True, "channels_last", "reflect"),
    (2, 1, 1, 2, 1, 4, 3, 2, 2, 1, True, "contig", "circular"),
    (2, None, 2, 2, 1, 5, 3, 1, 1, 1, True, "noncontig", "replicate"),  # unbatched
    (1, None, 3, 2, 1, 7, 3, 1, "valid", 2, True, "noncontig", "zeros"),  # unbatched
    (2, 0, 2, 3, 1, 5, 3, 1, 1, 1, True, "contig", "zeros"),          # empty batch
]


# Triton's interpreter runs one program instance after another: three tiny cases for the triton backend,
# channels_last with bias, an unbatched strided-view input with reflect padding and stride 2, and a
# depthwise 'same' conv with dilation 2 (no bias)
TRITON_FIXED = [
    (2, 1, 2, 2, 1, 4, 3, 1, 1, 1, True, "channels_last", "zeros"),
    (2, None, 2, 2, 1, 5, 3, 2, 1, 1, True, "noncontig", "reflect"),
    (2, 1, 1, 2, "dw", 5, 3, 1, "same", 2, False, "contig", "zeros"),
]


def _fixed_samples(backend: str):
    return [make_sample(*c, seed=i) for i, c in enumerate(TRITON_FIXED if backend == "triton" else FIXED)]


def _strategy(backend: str):
    from hypothesis import strategies as st

    # the interpreter (triton): fewer and smaller channels, batches, kernels and sizes; every choice is
    # drawn from a bounded set, no loop
    interp = backend == "triton"

    @st.composite
    def draw(data):
        nd = data(st.sampled_from((1, 2, 2)))
        n = data(st.sampled_from((0, 1, 2) if interp else (0, 1, 2, 3, 5)))
        groups = data(st.sampled_from((1, 2, "dw") if interp else (1, 1, 2, 3, "dw")))
        cg = data(st.sampled_from((1, 2, 3) if interp else (1, 2, 3, 5, 8)))
        og = data(st.sampled_from((1, 2, 3) if interp else (1, 2, 3, 7, 8)))
        kmax = (5 if nd == 1 else 3) if interp else (11 if nd == 1 else 7)
        k = tuple(data(st.integers(1, kmax)) for _ in range(nd))
        padding = data(st.sampled_from(("int", "int", "same", "valid")))
        mode = data(st.sampled_from(MODES)) if padding != "valid" else "zeros"
        if padding == "same":
            stride = (1,) * nd
        else:
            stride = tuple(data(st.integers(1, 3)) for _ in range(nd))
        dilation = tuple(data(st.integers(1, 2)) for _ in range(nd))
        pad = tuple(data(st.integers(0, 3)) for _ in range(nd)) if padding == "int" else padding
        size = []
        for d in range(nd):
            ext = dilation[d] * (k[d] - 1) + 1
            p = 2 * pad[d] if padding == "int" else 0
            lo = max(1, ext - p)
            if mode != "zeros":  # reflect: pad < size; circular: pad <= size
                lo = max(lo, (pad[d] if padding == "int" else ext) + 1)
            size.append(lo + data(st.integers(0, 3 if interp else 6)))
        layout = data(st.sampled_from(LAYOUTS))
        return make_sample(nd, n, cg, og, groups, tuple(size), k, stride, pad, dilation, data(st.booleans()),
                           layout, mode, data(st.integers(0, 2 ** 16)))

    return draw()


def _raw_ops(sample: Sample, backend: str, device="cpu"):
    L = sample.cast(torch.float32, device, requires_grad=False)
    cfg = sample.meta["cfg"]
    x = sample.meta["view_x"](L["input"])
    w = sample.meta["view_w"](L["weight"])
    b = L["bias"]
    nd = cfg["nd"]
    if x.dim() == nd + 1:
        x = x.unsqueeze(0)
    pairs = _pairs(cfg, w)
    if nd == 1:
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        st, dl, pads = [1, cfg["stride"][0]], [1, cfg["dilation"][0]], [0, 0, *pairs[0]]
    else:
        st, dl, pads = list(cfg["stride"]), list(cfg["dilation"]), [*pairs[0], *pairs[1]]
    args = (st, pads, dl, cfg["groups"], cfg["mode"])
    sfx = "_triton" if backend == "triton" else ""
    fwd, bwd = getattr(OPS, "conv_fwd" + sfx), getattr(OPS, "conv_bwd" + sfx)
    y = fwd(x, w, b, *args, "none")
    return [(fwd, (x.clone().requires_grad_(True), w.clone().requires_grad_(True), b, *args, "none")),
            (bwd, (torch.randn_like(y), x, w, *args, [True, True, b is not None]))]


def _bad_inputs():
    c2, c1 = mte.nn.functional.conv2d, mte.nn.functional.conv1d

    def bad():
        x, w, b = torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(4)
        cases = [
            (lambda: c2(x, torch.randn(4, 2, 3, 3)), lambda: F.conv2d(x, torch.randn(4, 2, 3, 3)), RuntimeError,
             r"expected input\[1, 3, 5, 5\] to have 2 channels, but got 3", "channel mismatch"),
            (lambda: c2(x, torch.randn(3, 1, 3, 3), groups=2), lambda: F.conv2d(x, torch.randn(3, 1, 3, 3), groups=2),
             RuntimeError, r"groups=2.*divisible by 2", "groups not dividing out channels"),
            (lambda: c2(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3), groups=3),
             lambda: F.conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3), groups=3), RuntimeError,
             r"groups=3", "groups not dividing in channels"),
            (lambda: c2(x[:, :, :2, :2], w), lambda: F.conv2d(x[:, :, :2, :2], w), RuntimeError,
             r"padded input size per channel: \(2 x 2\). Kernel size: \(3 x 3\)", "kernel larger than input"),
            (lambda: c2(x[0, 0], w), lambda: F.conv2d(x[0, 0], w), RuntimeError,
             r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d, but got input of size: \[5, 5\]",
             "input rank"),
            (lambda: c1(x, w), lambda: F.conv1d(x, w), RuntimeError, r"input to conv1d", "conv1d rank"),
            (lambda: c2(x, w, torch.randn(3)), lambda: F.conv2d(x, w, torch.randn(3)), RuntimeError,
             r"expected bias to be 1-dimensional with 4 elements, but got bias of size \[3\]", "bias size"),
            (lambda: c2(x, w.double()), lambda: F.conv2d(x, w.double()), RuntimeError, r"weight type|Double",
             "weight dtype"),
            (lambda: c2(x, w, stride=2, padding="same"), lambda: F.conv2d(x, w, stride=2, padding="same"),
             RuntimeError, r"padding='same' is not supported for strided convolutions", "same with stride"),
            (lambda: c2(x, w, padding="foo"), lambda: F.conv2d(x, w, padding="foo"), RuntimeError,
             r"Invalid padding string", "bad padding string"),
            (lambda: c2(x, w, stride=0), lambda: F.conv2d(x, w, stride=0), RuntimeError, r"non-positive stride",
             "zero stride"),
            (lambda: c2(x, w, padding=-1), lambda: F.conv2d(x, w, padding=-1), RuntimeError, r"negative padding",
             "negative padding"),
            (lambda: c2(x, w, dilation=0), lambda: F.conv2d(x, w, dilation=0), RuntimeError,
             r"dilation should be greater than zero", "zero dilation"),
            (lambda: c2(x, w, groups=0), lambda: F.conv2d(x, w, groups=0), RuntimeError, r"non-positive groups",
             "zero groups"),
            (lambda: c2(x, w, stride=(1, 1, 1)), lambda: F.conv2d(x, w, stride=(1, 1, 1)), RuntimeError,
             r"stride", "stride length"),
            (lambda: c2("x", w), lambda: F.conv2d("x", w), TypeError, r"input", "input not a tensor"),
            (lambda: OPS.conv_fwd(x, w, None, [1, 1], [0, 0], [1, 1], 1, "mirror", "none"), None, ValueError,
             r"padding_mode", "raw op: unknown padding_mode"),
            (lambda: OPS.conv_fwd(x.half(), w.half(), None, [1, 1], [0, 0], [1, 1], 1, "zeros", "none"), None,
             RuntimeError, r"float16", "raw op: float16"),
            (lambda: OPS.conv_fwd(x, w, None, [1, 1], [0, 0], [1, 1], 1, "zeros", "swish"), None, ValueError,
             r"act", "raw op: unknown act"),
            (lambda: OPS.conv_bwd(torch.randn(1, 4, 2, 2), x, w, [1, 1], [0, 0], [1, 1], 1, "zeros",
                                  [True, True, True]), None, RuntimeError, r"grad_output: expected size",
             "raw bwd: grad_output size"),
        ]
        return [BadInput(o, err, match, desc, native=n) for o, n, err, match, desc in cases]

    return bad


def spec() -> OpSpec:
    return OpSpec(name="conv", ours=ours, native=native, samples=_fixed_samples, strategy=_strategy,
                  raw_ops=_raw_ops, bad_inputs=_bad_inputs(), extra={"parity_samples": _fixed_samples})


def small_model():
    """A LeNet-shaped model (conv5 -> relu -> conv5 -> relu -> flatten -> linear) on our Conv2d."""

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(mte.nn.Conv2d(1, 6, 5, padding=2), torch.nn.ReLU(), mte.nn.Conv2d(6, 16, 5),
                                   torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10))

    return make
