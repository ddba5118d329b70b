"""conv1d / conv2d (CPU C++ kernels) through the shared checker, plus the modules, the
1x1 stride-2 channels_last weight-gradient case, bitwise thread repeatability and a
tracing test that no native convolution or matmul runs. Small shapes: < 1 min."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.conv import make_sample, small_model, spec

SPEC = spec()

BACKENDS = testing.backends_for("cpu")

# gradcheck, opcheck, Hypothesis parity (float32, bfloat16), float64, bad input, compile, meta, autocast,
# on every backend here (cpp; triton through its interpreter)
globals().update(testing.standard_tests(SPEC, small_model(), torch.randn(2, 1, 12, 12)))

# Triton runs through its interpreter here, one program instance after another: its fixed samples are three
# tiny ones (cases.conv.TRITON_FIXED), gradcheck runs in fast mode (one random direction), opcheck on one
# sample, Hypothesis parity on fewer and smaller examples; the compile smoke test is cpp only (under the
# interpreter the Triton ops are opaque custom ops: compile would test nothing of theirs)
_FIXED_RUNS = [(b, i) for b in BACKENDS for i in range(len(SPEC.samples(b)))]
_OPCHECK_RUNS = [(b, i) for b in BACKENDS for i in range(len(SPEC.samples(b))) if b != "triton" or i == 0]


@pytest.mark.parametrize("backend,i", _FIXED_RUNS)
def test_gradcheck(backend, i):
    sample = SPEC.samples(backend)[i]
    if backend != "triton":
        testing.check_gradcheck(SPEC, sample, backend)
        return
    leaves = sample.cast(torch.float64, "cpu", requires_grad=True)
    names = [n for n in sample._grad_names() if leaves.get(n) is not None]

    def f(*ts):
        d = dict(leaves)
        d.update(zip(names, ts))
        with mte.use_backend(backend):
            return sample.build(SPEC.ours, d)

    with testing.poisoned():
        assert torch.autograd.gradcheck(f, tuple(leaves[n] for n in names), eps=1e-6, atol=1e-5, rtol=1e-4,
                                        fast_mode=True)


@pytest.mark.parametrize("backend,i", _OPCHECK_RUNS)
def test_opcheck(backend, i):
    testing.check_opcheck(SPEC, SPEC.samples(backend)[i], backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_compile_fullgraph(backend):
    testing.check_compile(small_model(), torch.randn(2, 1, 12, 12), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(SPEC.dtypes), ids=str)
def test_parity(backend, dtype):
    from hypothesis import given, settings

    @settings(max_examples=5 if backend == "triton" else settings().max_examples)
    @given(SPEC.strategy(backend))
    def run(sample):
        testing.check_parity(SPEC, sample, backend, dtype)

    run()


def test_module_matches_torch_init_state_dict_and_forward():
    cases = [(torch.nn.Conv2d, mte.nn.Conv2d, (3, 8, 3), {}),
             (torch.nn.Conv2d, mte.nn.Conv2d, (4, 6, (3, 2)), {"stride": 2, "padding": 1, "bias": False,
                                                              "groups": 2}),
             (torch.nn.Conv2d, mte.nn.Conv2d, (2, 4, 4), {"padding": "same", "padding_mode": "reflect",
                                                         "dilation": 1}),
             (torch.nn.Conv2d, mte.nn.Conv2d, (3, 3, 3), {"padding": 2, "padding_mode": "circular", "groups": 3}),
             (torch.nn.Conv1d, mte.nn.Conv1d, (3, 5, 5), {"padding": 2, "padding_mode": "replicate"}),
             (torch.nn.Conv1d, mte.nn.Conv1d, (4, 4, 4), {"padding": "same", "dilation": 2})]
    for nat_cls, our_cls, args, kw in cases:
        torch.manual_seed(3)
        nat = nat_cls(*args, **kw)
        torch.manual_seed(3)
        our = our_cls(*args, **kw)
        assert list(our.state_dict()) == list(nat.state_dict())
        for k, v in nat.state_dict().items():
            assert torch.equal(our.state_dict()[k], v), k
        assert repr(our) == repr(nat)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode"):
            assert getattr(our, attr) == getattr(nat, attr), attr
        shape = (2, args[0], 9, 8) if nat_cls is torch.nn.Conv2d else (2, args[0], 11)
        x = torch.randn(shape)
        torch.testing.assert_close(our(x), nat(x), atol=1e-5, rtol=1e-5)


def test_module_constructor_errors_are_torchs():
    for kw in [{"padding": "same", "stride": 2}, {"padding_mode": "mirror"}, {"groups": 2}, {"padding": "foo"}]:
        with pytest.raises(ValueError):
            torch.nn.Conv2d(3, 4, 3, **kw)
        with pytest.raises(ValueError):
            mte.nn.Conv2d(3, 4, 3, **kw)


def test_1x1_stride2_channels_last_odd_batch_weight_grad():
    # the oneDNN case (heap corruption on torch's side): ours must be right, against float64
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(3, 16, 9, 9, generator=g, dtype=torch.float64)
    w64 = torch.randn(24, 16, 1, 1, generator=g, dtype=torch.float64) / 4
    dy64 = torch.randn(3, 24, 5, 5, generator=g, dtype=torch.float64)
    x = x64.float().contiguous(memory_format=torch.channels_last).requires_grad_()
    w = w64.float().requires_grad_()
    y = mte.nn.functional.conv2d(x, w, stride=2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    gx, gw = torch.autograd.grad(y, (x, w), dy64.float())
    x64.requires_grad_()
    w64.requires_grad_()
    y64 = F.conv2d(x64, w64, stride=2)
    rx, rw = torch.autograd.grad(y64, (x64, w64), dy64)
    torch.testing.assert_close(y.double(), y64.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gw.double(), rw, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gx.double(), rx, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["contig", "channels_last"])
@pytest.mark.parametrize("groups", [1, "dw"])
def test_backward_bitwise_repeatable_over_threads(layout, groups):
    g = torch.Generator().manual_seed(1)
    cin = 12
    cg = cin if groups == 1 else 1
    G = 1 if groups == 1 else cin
    x = torch.randn(5, cin, 17, 15, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(24, cg, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(24, generator=g, requires_grad=True)
    runs = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            y = mte.nn.functional.conv2d(x, w, b, stride=1, padding=1, groups=G)
            dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
            runs.append((y.detach(),) + torch.autograd.grad(y, (x, w, b), dy))
    finally:
        torch.set_num_threads(prev)
    for r in runs[1:]:
        for a, b_ in zip(r, runs[0]):
            assert torch.equal(a, b_)


def test_channels_last_in_channels_last_out():
    x = torch.randn(2, 4, 7, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 4, 3, 3)
    y = mte.nn.functional.conv2d(x, w, padding=1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert mte.nn.functional.conv2d(x.contiguous(), w).is_contiguous()


def test_fused_activation_epilogue():
    x, w, b = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xx = x.contiguous(memory_format=fmt)
        y = torch.ops.minitorch_ext.conv_fwd(xx, w, b, [1, 1], [1, 1], [1, 1], 1, "zeros", "relu")
        torch.testing.assert_close(y, F.relu(F.conv2d(x, w, b, padding=1)), atol=1e-5, rtol=1e-5)


class _Trace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_no_native_convolution_or_matmul_runs():
    banned = ("convolution", "conv2d", "conv1d", "mkldnn", "mm.", "addmm", "bmm", "matmul", "baddbmm", "im2col",
              "col2im", "conv_depthwise", "slow_conv")
    g = torch.Generator().manual_seed(0)
    for fmt in (torch.contiguous_format, torch.channels_last):
        for groups, cg in ((1, 4), (4, 1), (2, 2)):
            x = torch.randn(2, 4, 8, 8, generator=g).contiguous(memory_format=fmt).requires_grad_()
            w = torch.randn(8, cg, 3, 3, generator=g, requires_grad=True)
            b = torch.randn(8, generator=g, requires_grad=True)
            with _Trace() as t:
                y = mte.nn.functional.conv2d(x, w, b, stride=2, padding=1, groups=groups)
                y.backward(torch.randn_like(y))
                z = mte.nn.functional.conv2d(x, torch.randn(8, 4 // groups, 1, 1), groups=groups)
                z.sum().backward()
            hits = [op for op in t.ops if any(s in op for s in banned)]
            assert not hits, hits
            assert any("minitorch_ext.conv_fwd" in op for op in t.ops)
            assert any("minitorch_ext.conv_bwd" in op for op in t.ops)


def test_larger_shapes_parity_float32():
    # a few layers past the GEMM's block sizes (K > KC, many tiles, both layouts)
    for args in [(2, 2, 24, 48, 1, 15, 3, 1, 1, 1, True, "contig", "zeros"),
                 (2, 2, 24, 40, 1, 15, 3, 2, 1, 1, True, "channels_last", "zeros"),
                 (2, 3, 20, 3, "dw", 13, 3, 1, 1, 1, True, "contig", "zeros"),
                 (1, 2, 40, 24, 1, 37, 5, 1, 2, 1, False, "contig", "zeros")]:
        testing.check_parity(SPEC, make_sample(*args, seed=9), "cpp", torch.float32)
