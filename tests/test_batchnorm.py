"""The bnorm family (batch_norm, group_norm, instance_norm and their modules) on the C++
CPU kernels and the Triton ones (interpreter), through the shared checker, plus what is
particular to it: running statistics against torch's over 50 training steps
(momentum=None included), checkpoints both ways bit-exact, train/eval switching,
bitwise repeatability for 1 and 2 threads, and a dispatch trace showing that no
aten normalization op runs."""
import io
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.bnorm import BACKENDS, small_model, spec

MF = mte.nn.functional
SPEC = spec()

# gradcheck, opcheck, Hypothesis parity (float32, bfloat16), float64, bad input, meta, mixed dtypes,
# compile: the shared battery on cpp (triton below, on its own tiny samples)
with mock.patch.object(testing, "backends_for", lambda device="cpu": ["cpp"]):
    for _test, _fn in testing.standard_tests(SPEC, small_model(), torch.randn(2, 3, 8, 8)).items():
        globals()[_test.replace("test_", "test_bnorm_", 1)] = _fn

TRITON = pytest.mark.skipif("triton" not in BACKENDS, reason="Triton interpreter not available")


@TRITON
@pytest.mark.parametrize("i", range(len(SPEC.samples("triton"))))
def test_bnorm_triton_parity_and_gradcheck(i):
    sample = SPEC.samples("triton")[i]
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        testing.check_parity(SPEC, sample, "triton", dtype)
    leaves = sample.cast(torch.float64, "cpu", requires_grad=True)
    names = [k for k in sample._grad_names() if leaves.get(k) is not None]

    def f(*ts):
        d = dict(leaves)
        d.update(zip(names, ts))
        with mte.use_backend("triton"):
            return sample.build(SPEC.ours, d)

    with testing.poisoned():
        assert torch.autograd.gradcheck(f, tuple(leaves[k] for k in names), eps=1e-6, atol=1e-5, rtol=1e-4,
                                        fast_mode=True)


@TRITON
def test_bnorm_triton_opcheck():
    testing.check_opcheck(SPEC, SPEC.samples("triton")[0], "triton")
    testing.check_opcheck(SPEC, SPEC.samples("triton")[2], "triton")


def _cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("fmt", ["contig", "channels_last"])
def test_running_stats_follow_torch_over_50_steps(backend, momentum, fmt):
    torch.manual_seed(0)
    steps, shape = (50, (4, 5, 6, 6)) if backend == "cpp" else (6, (2, 3, 3, 3))
    ours, ref = mte.nn.BatchNorm2d(shape[1], momentum=momentum), torch.nn.BatchNorm2d(shape[1], momentum=momentum)
    with mte.use_backend(backend):
        for step in range(steps):
            x = torch.randn(shape) * (1 + step % 3) + step * 0.1
            if fmt == "channels_last":
                x = _cl(x)
            torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == steps
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-6, rtol=1e-5)
    ours.eval(), ref.eval()
    x = torch.randn(shape)
    with mte.use_backend(backend):
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_instance_norm_running_stats_follow_torch():
    torch.manual_seed(1)
    ours = mte.nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    ref = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True)
    for _ in range(20):
        x = torch.randn(4, 3, 5, 6) * 3 + 1
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-5, rtol=1e-5)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 5, 6)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    # unbatched input, as torch
    torch.testing.assert_close(ours(x[0]), ref(x[0]), atol=1e-5, rtol=1e-5)


def _model(ns):
    return torch.nn.Sequential(ns.Conv2d(3, 4, 3), ns.BatchNorm2d(4), ns.ReLU(), ns.Conv2d(4, 4, 1),
                               ns.GroupNorm(2, 4), ns.InstanceNorm2d(4, affine=True, track_running_stats=True),
                               ns.Flatten(), ns.BatchNorm1d(4 * 6 * 6))


class _NS:
    """torch.nn with our norms swapped in."""
    Conv2d, ReLU, Flatten = torch.nn.Conv2d, torch.nn.ReLU, torch.nn.Flatten
    BatchNorm2d, BatchNorm1d, GroupNorm, InstanceNorm2d = (mte.nn.BatchNorm2d, mte.nn.BatchNorm1d,
                                                            mte.nn.GroupNorm, mte.nn.InstanceNorm2d)


def test_checkpoints_round_trip_bit_exact_both_ways():
    torch.manual_seed(3)
    ref = _model(torch.nn)
    torch.manual_seed(3)
    ours = _model(_NS)
    # same initialisation and state_dict keys (buffers included) as torch's
    assert list(ours.state_dict()) == list(ref.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    x = torch.randn(4, 3, 8, 8)
    for _ in range(3):
        ours(x).sum().backward()
        ref(x).sum().backward()
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    fresh = _model(torch.nn)
    fresh.load_state_dict(torch.load(buf))
    for k, v in ours.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    back = _model(_NS)
    back.load_state_dict(fresh.state_dict())
    for k, v in back.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k]), k
    # and the loaded models agree in eval mode
    back.eval(), fresh.eval()
    torch.testing.assert_close(back(x), fresh(x), atol=1e-5, rtol=1e-5)


def test_train_eval_switching_matches_torch():
    torch.manual_seed(4)
    ours, ref = mte.nn.BatchNorm1d(6), torch.nn.BatchNorm1d(6)
    for mode in ("train", "eval", "train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        x = torch.randn(5, 6, 7)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yr = ours(xo), ref(xr)
        torch.testing.assert_close(yo, yr, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(yo)
        yo.backward(g), yr.backward(g)
        torch.testing.assert_close(xo.grad, xr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    # track_running_stats=False and affine=False
    ours, ref = mte.nn.BatchNorm2d(3, affine=False, track_running_stats=False), torch.nn.BatchNorm2d(
        3, affine=False, track_running_stats=False)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert ours.running_mean is None and list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("fmt", ["contig", "channels_last"])
def test_bitwise_repeatable_for_1_and_2_threads(fmt):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(8, 16, 20, 20, generator=g)
    if fmt == "channels_last":
        x = _cl(x)
    w = torch.rand(16, generator=g) + 0.5
    b = torch.randn(16, generator=g)
    prev = torch.get_num_threads()
    res = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
            rm, rv = torch.zeros(16), torch.ones(16)
            y = MF.batch_norm(xg, rm, rv, wg, bg, True)
            z = MF.group_norm(y, 4, wg, bg)
            (z.pow(2).sum()).backward()
            res.append([z.detach(), rm, rv, xg.grad, wg.grad, bg.grad])
    finally:
        torch.set_num_threads(prev)
    for a, c in zip(res[0], res[1]):
        assert torch.equal(a, c)
    for a, c in zip(res[0], res[2]):
        assert torch.equal(a, c)


class _AtenTrace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_no_aten_normalization_op_runs():
    torch.manual_seed(5)
    model = _model(_NS)
    x = torch.randn(2, 3, 8, 8)
    with _AtenTrace() as t:
        model(x).sum().backward()
        model(_cl(x)).sum().backward()
        model.eval()
        model(x).sum().backward()
    ours = set(n for n in t.names if n.startswith("minitorch_ext::"))
    assert {"minitorch_ext::batch_norm_fwd", "minitorch_ext::batch_norm_bwd", "minitorch_ext::group_norm_fwd",
            "minitorch_ext::group_norm_bwd"} <= ours
    banned = [n for n in t.names if n.startswith("aten::") and any(
        w in n for w in ("batch_norm", "group_norm", "instance_norm", "layer_norm", "var", "std"))]
    assert not banned, banned


def test_empty_batch_and_group_norm_channels_last_keeps_format():
    x = _cl(torch.randn(2, 4, 3, 5))
    y = MF.group_norm(x, 2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, F.group_norm(x, 2), atol=1e-5, rtol=1e-5)
    yb = MF.batch_norm(x, None, None, training=True)
    assert yb.is_contiguous(memory_format=torch.channels_last)
    e = torch.randn(0, 3, 4, 4, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    ye = MF.batch_norm(e, rm, rv, training=True)
    assert ye.shape == e.shape
