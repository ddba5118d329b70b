"""The dropout family (dropout, dropout1d, dropout2d and their modules) on the C++ CPU kernels.

The mask is ours by design (Philox4x32-10; minitorch_ext._philox is the NumPy
reference), so the shared battery compares us with torch arithmetic on the reference
mask (cases.dropout); what is particular to dropout: the mask equals the NumPy
reference, its statistics (keep rate within a binomial bound, mean preserved),
repeatability under torch.manual_seed, backward uses the forward's mask, the no-draw
cases return the input itself, in-place autograd as torch's, the modules, and a
dispatch trace showing that no aten dropout/bernoulli op runs.
"""
import math
import warnings
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases import dropout as C

MF = mte.nn.functional
SPEC = C.spec()
BACKENDS = [b for b in C.BACKENDS if b == "cpp"]  # the Triton ones: tests/test_dropout_triton.py

with mock.patch.object(testing, "backends_for", lambda device="cpu": list(BACKENDS)):
    for _test, _fn in testing.standard_tests(SPEC, C.small_model(), torch.randn(2, 3, 4, 4)).items():
        globals()[_test.replace("test_", "test_dropout_", 1)] = _fn


@pytest.mark.parametrize("kind,shape", [("dropout", (3, 5, 7)), ("dropout1d", (2, 3, 5)), ("dropout1d", (4, 6)),
                                        ("dropout2d", (2, 3, 4, 5)), ("dropout2d", (3, 4, 5))])
@pytest.mark.parametrize("p", [0.25, 0.5, 0.9])
def test_mask_equals_numpy_reference(kind, shape, p):
    x = torch.randn(shape).abs() + 0.5  # nonzero: the mask is y != 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(123)
        y = getattr(MF, kind)(x, p)
    keep = C.reference_keep(kind, shape, p, C.seed_after_manual_seed(123))
    assert torch.equal(y != 0, keep)
    torch.testing.assert_close(y[keep], x[keep] / (1 - p), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
def test_mask_equals_numpy_reference_across_blocks(dtype):
    # 9000 elements: several 2048-element blocks of the CPU kernel, its 4 x 16-counter AVX-512
    # groups, the 16- and 8-counter tails and the scalar tail, on every dtype path
    x = (torch.randn(9000).abs() + 0.5).to(dtype)
    torch.manual_seed(321)
    y = MF.dropout(x, 0.35)
    keep = C.reference_keep("dropout", (9000,), 0.35, C.seed_after_manual_seed(321))
    assert torch.equal(y != 0, keep)
    # channel dropout split over 2 threads at an odd channel (18002 channels of 2 elements)
    xc = (torch.randn(2, 9001, 2).abs() + 0.5).to(dtype)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        torch.manual_seed(322)
        yc = MF.dropout1d(xc, 0.35)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(yc != 0, C.reference_keep("dropout1d", (2, 9001, 2), 0.35, C.seed_after_manual_seed(322)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rate_and_mean(dtype, p):
    n = 1 << 20
    x = torch.ones(n, dtype=dtype)
    torch.manual_seed(7)
    y = MF.dropout(x, p)
    kept = (y != 0).sum().item()
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 6 * sigma, (kept, n * (1 - p), sigma)
    # the mean is preserved: E[y] = 1, within the binomial bound (and the dtype's rounding of 1/(1-p))
    scale_err = abs(float(torch.tensor(1 / (1 - p), dtype=dtype)) * (1 - p) - 1)
    assert abs(y.double().mean().item() - 1) < 6 * sigma / n / (1 - p) + scale_err
    # channels: the keep rate of whole channels
    xc = torch.ones(64, 256, 4, 4, dtype=dtype)
    yc = MF.dropout2d(xc, p)
    ch = (yc != 0).flatten(2)
    assert torch.equal(ch.all(-1), ch.any(-1))  # a channel is kept or dropped whole
    m = 64 * 256
    assert abs(ch.any(-1).sum().item() - m * (1 - p)) < 6 * math.sqrt(m * p * (1 - p))


def test_repeatable_under_manual_seed_and_fresh_per_call():
    x = torch.randn(64, 129)
    torch.manual_seed(0)
    a, b = MF.dropout(x, 0.5), MF.dropout(x, 0.5)
    torch.manual_seed(0)
    a2, b2 = MF.dropout(x, 0.5), MF.dropout(x, 0.5)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(a != 0, b != 0)  # every call draws a new seed
    torch.manual_seed(1)
    assert not torch.equal(MF.dropout(x, 0.5) != 0, a != 0)


@pytest.mark.parametrize("kind", C.KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_uses_the_forwards_mask(kind, dtype):
    x = (torch.randn(4, 6, 5, 3).abs() + 0.5).to(dtype).requires_grad_()
    inp = x if kind != "dropout1d" else x.flatten(2)
    torch.manual_seed(3)
    y = getattr(MF, kind)(inp, 0.4)
    dy = torch.randn(y.shape).to(dtype)
    y.backward(dy)
    g = x.grad.reshape(y.shape)
    s = torch.tensor(1 / 0.6, dtype=torch.float32)  # the kernel scales in float32, rounding once
    keep = y != 0
    assert torch.equal(g != 0, keep & (dy != 0))
    torch.testing.assert_close(g.float(), (dy.float() * keep * s).to(dtype).float(), rtol=0, atol=0)


def test_no_draw_cases_return_the_input_itself():
    x = torch.randn(4, 5)
    state = torch.random.get_rng_state()
    for f in (lambda: MF.dropout(x, 0.5, training=False), lambda: MF.dropout(x, 0.0),
              lambda: MF.dropout(x, 0.0, inplace=True), lambda: MF.dropout2d(x.view(2, 2, 5), 0.5, training=False),
              lambda: MF.dropout1d(x, 0.0)):
        y = f()
        assert y.data_ptr() == x.data_ptr() and torch.equal(y.reshape(x.shape), x)
    assert MF.dropout(x, 0.5, training=False) is x and F.dropout(x, 0.5, training=False) is x
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing drawn
    e = torch.randn(0, 3)
    assert MF.dropout(e, 0.5) is e
    # eval mode accepts what torch's eval accepts (an integer tensor)
    i = torch.arange(4)
    assert MF.dropout(i, 0.5, training=False) is i


def test_p_one_gives_zeros_as_torch():
    x = torch.randn(3, 4, requires_grad=True)
    y = MF.dropout(x, 1.0)
    assert torch.equal(y, F.dropout(x, 1.0)) and not y.detach().any()
    y.sum().backward()
    assert not x.grad.any()
    # torch's x * 0: a NaN stays NaN
    z = torch.tensor([1.0, float("nan"), -2.0])
    assert torch.equal(MF.dropout(z, 1.0).isnan(), F.dropout(z, 1.0).isnan())


def test_inplace_autograd_matches_torch():
    leaf = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        F.dropout(leaf, 0.5, inplace=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        MF.dropout(leaf, 0.5, inplace=True)
    z = leaf * 2
    torch.manual_seed(5)
    out = MF.dropout(z, 0.5, inplace=True)
    assert out is z and z._version > 0
    keep = C.reference_keep("dropout", (3, 4), 0.5, C.seed_after_manual_seed(5))
    torch.testing.assert_close(out, leaf.detach() * 2 * keep * 2.0)
    out.sum().backward()
    torch.testing.assert_close(leaf.grad, keep * 4.0)
    # without grad: the input is overwritten; a non-contiguous view too
    x = torch.randn(6, 8)
    base = x.clone()
    v = x[:, ::2]
    torch.manual_seed(2)
    r = MF.dropout(v, 0.5, inplace=True)
    assert r is v
    keep = C.reference_keep("dropout", (6, 4), 0.5, C.seed_after_manual_seed(2))
    torch.testing.assert_close(x[:, ::2], base[:, ::2] * keep * 2.0)
    assert torch.equal(x[:, 1::2], base[:, 1::2])
    # dropout1d in place on an unbatched input keeps the input's shape
    u = torch.randn(3, 5)
    assert MF.dropout1d(u, 0.5, inplace=True) is u and u.shape == (3, 5)


def test_dropout2d_warns_like_torch():
    for shape in ((2, 3, 4), (3, 4), (2, 3, 4, 5, 6)):
        x = torch.randn(shape)
        with warnings.catch_warnings(record=True) as ours:
            warnings.simplefilter("always")
            MF.dropout2d(x, 0.5)
        with warnings.catch_warnings(record=True) as nat:
            warnings.simplefilter("always")
            F.dropout2d(x, 0.5)
        assert [str(w.message) for w in ours] == [str(w.message) for w in nat]
    with pytest.raises(RuntimeError, match="Feature dropout requires at least 2 dimensions"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MF.dropout2d(torch.randn(5), 0.5)


def test_bitwise_repeatable_across_threads():
    x = torch.randn(300, 1000).bfloat16()
    prev = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(11)
            xg = x.clone().requires_grad_()
            y = MF.dropout(xg, 0.3) + MF.dropout2d(xg.view(3, 100, 10, 100), 0.3).view(300, 1000)
            y.float().pow(2).sum().backward()
            outs.append((y, xg.grad))
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


class _AtenTrace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_no_aten_dropout_op_runs():
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    with _AtenTrace() as t:
        (MF.dropout(x, 0.3).sum() + MF.dropout2d(x, 0.5).sum() + MF.dropout1d(x.flatten(2), 0.2).sum()
         + mte.nn.Dropout(0.5)(x * 1).sum() + MF.dropout(x * 1, 0.5, inplace=True).sum()).backward()
    ours = {n for n in t.names if n.startswith("minitorch_ext::")}
    assert {"minitorch_ext::dropout_fwd", "minitorch_ext::dropout_bwd", "minitorch_ext::dropout_fwd_"} <= ours
    banned = [n for n in t.names if n.startswith("aten::") and any(
        w in n for w in ("dropout", "bernoulli", "rand_like", "uniform"))]
    assert not banned, banned


MODULES = [
    (mte.nn.Dropout, torch.nn.Dropout, dict(p=0.3), (4, 7)),
    (mte.nn.Dropout, torch.nn.Dropout, dict(p=0.5, inplace=True), (4, 7)),
    (mte.nn.Dropout1d, torch.nn.Dropout1d, dict(p=0.2), (2, 3, 7)),
    (mte.nn.Dropout2d, torch.nn.Dropout2d, dict(), (2, 3, 4, 4)),
]


@pytest.mark.parametrize("i", range(len(MODULES)))
def test_modules_match_torch(i):
    ours_cls, nat_cls, kw, shape = MODULES[i]
    ours, nat = ours_cls(**kw), nat_cls(**kw)
    assert isinstance(ours, nat_cls) and repr(ours) == repr(nat) and ours.state_dict() == {}
    x = torch.randn(shape)
    # eval: the identity, as torch
    ours.eval(), nat.eval()
    assert torch.equal(ours(x.clone()), nat(x.clone()))
    # train: whole channels (or elements) dropped, the kept ones scaled by 1/(1-p)
    ours.train()
    torch.manual_seed(4)
    y = ours(x.clone())
    kind = {torch.nn.Dropout: "dropout", torch.nn.Dropout1d: "dropout1d", torch.nn.Dropout2d: "dropout2d"}[nat_cls]
    keep = C.reference_keep(kind, shape, ours.p, C.seed_after_manual_seed(4))
    torch.testing.assert_close(y, x * keep / (1 - ours.p))


def test_dropout_in_training_compiles_without_graph_breaks():
    # the seed is a 0-d tensor drawn by torch.randint: fullgraph traces it (no .item()); under the
    # eager backend the draw is torch's own, so the masks are the eager ones under manual_seed
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), mte.nn.Dropout(0.5), mte.nn.Dropout2d(0.3))
    x = torch.randn(2, 3, 4, 8)  # Dropout2d on a 4-D input (a 3-D one warns: a graph break)
    torch._dynamo.reset()
    c = torch.compile(m, backend="eager", fullgraph=True)
    torch.manual_seed(9)
    a = c(x)
    torch.manual_seed(9)
    b = m(x)
    assert torch.equal(a, b)
    # inductor: its own generator draws the seed; the result is still a dropout of the same layer,
    # and backward uses the forward's mask
    torch._dynamo.reset()
    ci = torch.compile(m, backend="inductor", fullgraph=True)
    xi = torch.randn(2, 3, 4, 8, requires_grad=True)
    h = m[0](xi).detach()
    y = ci(xi)
    keep = y != 0
    torch.testing.assert_close(y[keep], (h / 0.5 / 0.7)[keep], rtol=1e-5, atol=1e-6)
    assert 0.2 < keep.float().mean().item() < 0.5
    y.sum().backward()
    ref = torch.autograd.grad(m[0](xi), xi, keep.float() / 0.5 / 0.7)[0]
    torch.testing.assert_close(xi.grad, ref, rtol=1e-5, atol=1e-6)
