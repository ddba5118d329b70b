"""The pool family (max/avg/adaptive avg pooling, 2-D and 1-D) on the C++ CPU kernels,
through the shared checker, plus what is particular to it: indices equal to torch's,
NaN propagation, memory formats kept, deterministic backward, the modules, and a
dispatch trace showing that no aten pooling op runs."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.pool import BACKENDS, small_model, spec

MF = mte.nn.functional

SPEC = spec()

# gradcheck, opcheck, Hypothesis parity (float32, bfloat16), float64, bad input, meta,
# compile: the shared battery, on the backends pooling has here (cpp; triton through its interpreter)
with mock.patch.object(testing, "backends_for", lambda device="cpu": list(BACKENDS)):
    for _test, _fn in testing.standard_tests(SPEC, small_model(), torch.randn(2, 3, 14, 14)).items():
        globals()[_test.replace("test_", "test_pool_", 1)] = _fn

# Triton runs through its interpreter here, one program instance after another: its fixed samples are four
# tiny ones (cases.pool.TRITON_FIXED), gradcheck runs in fast mode (one random direction), opcheck on one
# sample, Hypothesis parity on fewer and smaller examples; the compile smoke test is cpp only (under the
# interpreter the Triton ops are opaque custom ops: compile would test nothing of theirs)
_FIXED_RUNS = [(b, i) for b in BACKENDS for i in range(len(SPEC.samples(b)))]
_OPCHECK_RUNS = [(b, i) for b in BACKENDS for i in range(len(SPEC.samples(b))) if b != "triton" or i == 0]


@pytest.mark.parametrize("backend,i", _FIXED_RUNS)
def test_pool_gradcheck(backend, i):
    sample = SPEC.samples(backend)[i]
    if backend != "triton":
        testing.check_gradcheck(SPEC, sample, backend)
        return
    leaves = sample.cast(torch.float64, "cpu", requires_grad=True)

    def f(x):
        with mte.use_backend(backend):
            return sample.build(SPEC.ours, {**leaves, "input": x})

    with testing.poisoned():
        assert torch.autograd.gradcheck(f, (leaves["input"],), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("backend,i", _OPCHECK_RUNS)
def test_pool_opcheck(backend, i):
    testing.check_opcheck(SPEC, SPEC.samples(backend)[i], backend)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_pool_compile_fullgraph(backend):
    testing.check_compile(small_model(), torch.randn(2, 3, 14, 14), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", list(SPEC.dtypes), ids=str)
def test_pool_parity(backend, dtype):
    from hypothesis import given, settings

    @settings(max_examples=6 if backend == "triton" else settings().max_examples)
    @given(SPEC.strategy(backend))
    def run(sample):
        testing.check_parity(SPEC, sample, backend, dtype)

    run()


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


MAX_CASES = [
    ((2, 3, 9, 11), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 4, 8, 8), dict(kernel_size=2)),
    ((2, 5, 7, 13), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 2), ceil_mode=True)),
    ((1, 17, 10, 37), dict(kernel_size=3, stride=1, padding=1)),
    ((1, 3, 6, 40), dict(kernel_size=2, stride=3, ceil_mode=True)),
]


@pytest.mark.parametrize("fmt", ["contig", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("case", range(len(MAX_CASES)))
def test_max_pool_indices_equal_torch(case, dtype, fmt):
    shape, kw = MAX_CASES[case]
    g = torch.Generator().manual_seed(case)
    x = torch.randn(shape, generator=g).to(dtype)
    if dtype == torch.bfloat16:
        x = (x * 4).round() / 4  # many ties: the first position must win, as in torch
    if fmt == "channels_last":
        x = _cl(x)
    y, i = MF.max_pool2d(x, return_indices=True, **kw)
    yn, inat = F.max_pool2d(x, return_indices=True, **kw)
    assert torch.equal(i, inat) and torch.equal(y, yn)
    assert y.stride() == yn.stride() and i.stride() == inat.stride()
    # the backward scatters by the same indices: bitwise torch's for float32/float64
    xg, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
    dy = torch.randn(yn.shape, generator=g).to(dtype)
    MF.max_pool2d(xg, **kw).backward(dy)
    F.max_pool2d(xn, **kw).backward(dy)
    assert xg.grad.stride() == xn.grad.stride()
    if dtype != torch.bfloat16:
        assert torch.equal(xg.grad, xn.grad)


@pytest.mark.parametrize("fmt", ["contig", "channels_last"])
def test_max_pool_nan_propagates_like_torch(fmt):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 9, 20, generator=g)
    x[x > 1.2] = float("nan")  # several NaNs in some windows: torch reports the last one
    x[0, 0, :3, :3] = float("nan")
    if fmt == "channels_last":
        x = _cl(x)
    for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2), dict(kernel_size=3, stride=1)):
        y, i = MF.max_pool2d(x, return_indices=True, **kw)
        yn, inat = F.max_pool2d(x, return_indices=True, **kw)
        assert torch.equal(y.isnan(), yn.isnan())
        assert torch.equal(y.nan_to_num(7.0), yn.nan_to_num(7.0))
        assert torch.equal(i, inat)
    y1, i1 = MF.max_pool1d(x[0], 3, 2, 1, return_indices=True)
    yn1, in1 = F.max_pool1d(x[0], 3, 2, 1, return_indices=True)
    assert torch.equal(i1, in1) and torch.equal(y1.isnan(), yn1.isnan())


@pytest.mark.parametrize("fmt", ["contig", "channels_last"])
def test_avg_and_adaptive_match_torch_and_keep_format(fmt):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 19, 13, 29, generator=g)
    if fmt == "channels_last":
        x = _cl(x)
    for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True),
               dict(kernel_size=3, stride=2, padding=1, count_include_pad=False, ceil_mode=True),
               dict(kernel_size=(2, 3), divisor_override=5)):
        y, yn = MF.avg_pool2d(x, **kw), F.avg_pool2d(x, **kw)
        assert y.stride() == yn.stride()
        torch.testing.assert_close(y, yn, atol=1e-6, rtol=1e-6)
    for out in (1, (3, 5), (None, 4), (13, 29), (20, 31)):
        y, yn = MF.adaptive_avg_pool2d(x, out), F.adaptive_avg_pool2d(x, out)
        assert y.shape == yn.shape and y.stride() == yn.stride()
        torch.testing.assert_close(y, yn, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fmt", ["contig", "channels_last"])
def test_backward_is_deterministic_across_threads(fmt):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 20, 15, 15, generator=g).bfloat16()
    if fmt == "channels_last":
        x = _cl(x)
    prev = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            xg = x.clone().requires_grad_()
            y = (MF.max_pool2d(xg, 3, 2, 1).sum() + MF.avg_pool2d(xg, 3, 2, 1).float().pow(2).sum()
                 + MF.adaptive_avg_pool2d(xg, (4, 5)).float().pow(2).sum())
            y.backward()
            grads.append(xg.grad)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


class _AtenTrace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_no_aten_pooling_op_runs():
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    xc = _cl(x.detach()).requires_grad_()
    x1 = torch.randn(2, 4, 17, requires_grad=True)
    with _AtenTrace() as t:
        for inp in (x, xc):
            (MF.max_pool2d(inp, 3, 2, 1).sum() + MF.avg_pool2d(inp, 2, ceil_mode=True).sum()
             + MF.adaptive_avg_pool2d(inp, 1).sum() + MF.adaptive_avg_pool2d(inp, (2, 3)).sum()).backward()
        (MF.max_pool1d(x1, 3).sum() + MF.avg_pool1d(x1, 2).sum() + MF.adaptive_avg_pool1d(x1, 4).sum()).backward()
    ours = [n for n in t.names if n.startswith("minitorch_ext::")]
    assert {"minitorch_ext::max_pool2d_fwd", "minitorch_ext::max_pool2d_bwd", "minitorch_ext::avg_pool2d_bwd",
            "minitorch_ext::adaptive_avg_pool2d_bwd"} <= set(ours)
    banned = [n for n in t.names if n.startswith("aten::") and any(
        w in n for w in ("pool", "mean", "sum.dim", "avg", "max.dim", "amax", "conv", "mm"))]
    assert not [n for n in banned if n != "aten::sum"], banned


MODULES = [
    (mte.nn.MaxPool2d, torch.nn.MaxPool2d, dict(kernel_size=3, stride=2, padding=1), (2, 3, 9, 9)),
    (mte.nn.MaxPool2d, torch.nn.MaxPool2d, dict(kernel_size=2, return_indices=True, ceil_mode=True), (2, 3, 7, 7)),
    (mte.nn.AvgPool2d, torch.nn.AvgPool2d, dict(kernel_size=2, count_include_pad=False, padding=1), (2, 3, 7, 8)),
    (mte.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, dict(output_size=(1, None)), (3, 6, 5)),
    (mte.nn.MaxPool1d, torch.nn.MaxPool1d, dict(kernel_size=3, stride=2), (2, 4, 11)),
    (mte.nn.AvgPool1d, torch.nn.AvgPool1d, dict(kernel_size=3, ceil_mode=True), (4, 11)),
    (mte.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool1d, dict(output_size=4), (2, 3, 9)),
]


@pytest.mark.parametrize("i", range(len(MODULES)))
def test_modules_match_torch(i):
    ours_cls, nat_cls, kw, shape = MODULES[i]
    ours, nat = ours_cls(**kw), nat_cls(**kw)
    assert isinstance(ours, nat_cls) and repr(ours) == repr(nat) and ours.state_dict() == {}
    x = torch.randn(shape)
    a, b = ours(x), nat(x)
    if isinstance(b, tuple):
        assert torch.equal(a[1], b[1])
        a, b = a[0], b[0]
    torch.testing.assert_close(a, b)


def test_module_constructor_errors_are_torchs():
    with pytest.raises(TypeError):
        mte.nn.MaxPool2d()


def test_triton_backend_runs_the_triton_ops():
    x = torch.randn(1, 2, 4, 4)
    if "triton" not in mte.available_backends("cpu"):
        pytest.skip("triton cannot run here")

    class Trace(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with mte.use_backend("triton"), Trace() as t:
        y = MF.max_pool2d(x, 2)
    assert any("max_pool2d_fwd_triton" in op for op in t.ops), t.ops
    torch.testing.assert_close(y, F.max_pool2d(x, 2))
