"""The pwloss family (mse, l1, smooth_l1, huber, bce, bce_with_logits, kl_div) on the C++ CPU
kernels, through the shared checker (gradcheck float64 on input and target, opcheck,
Hypothesis parity float32/bfloat16, float64, bad inputs vs torch, poisoned outputs, meta,
compile), plus what is particular to it: bitwise-repeatable reductions for 1 and 2 threads,
the modules' state_dict keys equal torch's, the legacy size_average/reduce arguments, and a
dispatch trace showing that no aten loss op runs."""
import warnings
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.pwloss import FN, KINDS, small_model, spec

MF = mte.nn.functional
SPEC = spec()
CPP = ["cpp"]

# the battery on the cpp backend (the Triton kernels run in tests/test_pwloss_triton.py)
with mock.patch.object(testing, "backends_for", lambda device="cpu": CPP):
    for _test, _fn in testing.standard_tests(SPEC, small_model(), torch.randn(4, 8)).items():
        globals()[_test.replace("test_", "test_pwloss_", 1)] = _fn


def test_fixed_samples_cover_every_kind_and_reduction():
    seen = {(s.meta["kind"], s.meta["reduction"]) for s in SPEC.samples("cpp")}
    for kind in KINDS:
        for red in ("none", "mean", "sum") + (("batchmean",) if kind == "kl_div" else ()):
            assert (kind, red) in seen


@pytest.mark.parametrize("kind", KINDS)
def test_reduction_bitwise_repeatable_across_threads(kind):
    g = torch.Generator().manual_seed(1)
    shape = (97, 1031)  # many 4096-element chunks, a ragged tail
    x = torch.randn(shape, generator=g)
    t = torch.rand(shape, generator=g)
    if kind == "bce":
        x = torch.sigmoid(x)
    kw = {"reduction": "batchmean"} if kind == "kl_div" else {}
    prev = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            xg, tg = x.clone().requires_grad_(), t.clone().requires_grad_()
            y = getattr(MF, FN[kind])(xg, tg, **kw)
            y.backward()
            outs.append((y.detach(), xg.grad, tg.grad))
    finally:
        torch.set_num_threads(prev)
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert torch.equal(a, b)
    ref = getattr(F, FN[kind])(x.double(), t.double(), **kw)
    assert abs(outs[0][0].double() - ref).item() <= 1e-5 * max(1.0, abs(ref.item()))


MODULES = [
    ("MSELoss", {}), ("L1Loss", {"reduction": "sum"}), ("SmoothL1Loss", {"beta": 0.3}), ("HuberLoss", {"delta": 2.0}),
    ("BCELoss", {"weight": torch.rand(5)}), ("BCELoss", {}),
    ("BCEWithLogitsLoss", {"weight": torch.rand(5), "pos_weight": torch.rand(5)}), ("BCEWithLogitsLoss", {}),
    ("KLDivLoss", {"reduction": "batchmean", "log_target": True}),
    ("MSELoss", {"size_average": False}), ("L1Loss", {"reduce": False}),
]


@pytest.mark.parametrize("name,kw", MODULES, ids=[f"{n}{i}" for i, (n, _) in enumerate(MODULES)])
def test_modules_match_torch(name, kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = getattr(mte.nn, name)(**kw), getattr(torch.nn, name)(**kw)
    assert isinstance(ours, getattr(torch.nn, name))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)
    assert ours.reduction == theirs.reduction
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 5, generator=g).clamp(0.05, 0.95)
    if name == "KLDivLoss":
        x = x.log()
    t = torch.rand(4, 5, generator=g)
    xo, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yn = ours(xo, t), theirs(xn, t)
    torch.testing.assert_close(yo, yn)
    yo.sum().backward()
    yn.sum().backward()
    torch.testing.assert_close(xo.grad, xn.grad)


def test_legacy_size_average_reduce_as_torch():
    x, t = torch.randn(3, 4), torch.rand(3, 4) + 0.1  # a positive target: kl_div's probabilities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in ("mse_loss", "l1_loss", "smooth_l1_loss", "kl_div"):
            for sa, rd in ((None, False), (False, None), (True, True), (False, True)):
                torch.testing.assert_close(getattr(MF, fn)(x, t, size_average=sa, reduce=rd),
                                           getattr(F, fn)(x, t, size_average=sa, reduce=rd))
        xp, tp = torch.rand(3, 4), torch.rand(3, 4)
        for fn in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
            torch.testing.assert_close(getattr(MF, fn)(xp, tp, size_average=False), getattr(F, fn)(xp, tp, size_average=False))


def test_promotion_and_extremes_as_torch():
    x = torch.rand(4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dtype promotion: float32 input, float64 / bfloat16 / integer target
        for fn in ("mse_loss", "l1_loss", "smooth_l1_loss", "kl_div", "huber_loss"):
            for t in (torch.rand(4, 6).double(), torch.rand(4, 6).bfloat16(), (torch.rand(4, 6) > 0.5).long()):
                if fn == "kl_div" and not t.is_floating_point():
                    continue
                a, b = getattr(MF, fn)(x, t), getattr(F, fn)(x, t)
                assert a.dtype == b.dtype
                # torch computes kl_div's xlogy(t, t) in the bfloat16 of a bfloat16 target; we promote
                # first: judged against float64, ours is no worse
                ref = getattr(F, fn)(x.double(), t.double())
                assert (a.double() - ref).abs().item() <= (b.double() - ref).abs().item() + 1e-6
    # bce's clamp of each log at -100: inputs exactly 0 and 1
    xb = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.5])
    tb = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3])
    for red in ("none", "sum"):
        torch.testing.assert_close(MF.binary_cross_entropy(xb, tb, reduction=red), F.binary_cross_entropy(xb, tb, reduction=red))
    # bce_with_logits stable at large |x|
    xl = torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0])
    tl = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0])
    pw = torch.tensor([2.0, 0.5, 1.0, 3.0, 1.0])
    xg, xn = xl.clone().requires_grad_(), xl.clone().requires_grad_()
    a = MF.binary_cross_entropy_with_logits(xg, tl, pos_weight=pw, reduction="none")
    b = F.binary_cross_entropy_with_logits(xn, tl, pos_weight=pw, reduction="none")
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(xg.grad, xn.grad)
    # kl_div: a zero target contributes 0 (xlogy), as torch
    xk, tk = torch.randn(3, 4), torch.rand(3, 4)
    tk[0, :2] = 0
    torch.testing.assert_close(MF.kl_div(xk, tk, reduction="sum"), F.kl_div(xk, tk, reduction="sum"))


def test_pos_weight_broadcast_over_last_dim():
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(6, 3, 5, generator=g), torch.rand(6, 3, 5, generator=g)
    for pw in (torch.rand(5, generator=g) * 2, torch.rand(3, 1, generator=g) * 2, torch.rand(1, generator=g) * 2):
        for w in (None, torch.rand(5, generator=g), torch.rand(3, 5, generator=g)):
            xo, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
            to, tn = t.clone().requires_grad_(), t.clone().requires_grad_()
            a = MF.binary_cross_entropy_with_logits(xo, to, w, pos_weight=pw)
            b = F.binary_cross_entropy_with_logits(xn, tn, w, pos_weight=pw)
            torch.testing.assert_close(a, b)
            a.backward()
            b.backward()
            torch.testing.assert_close(xo.grad, xn.grad)
            torch.testing.assert_close(to.grad, tn.grad)


class _AtenTrace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


FORBIDDEN = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy", "kl_div", "xlogy",
             "log_sigmoid", "soft_margin")


def test_no_aten_loss_op_runs():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(4, 7, generator=g).clamp(0.05, 0.95).requires_grad_()
    t = torch.rand(4, 7, generator=g).requires_grad_()
    w, pw = torch.rand(7, generator=g), torch.rand(7, generator=g)
    with _AtenTrace() as tr, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for red in ("none", "mean", "sum"):
            ys = [MF.mse_loss(x, t, reduction=red), MF.l1_loss(x, t[:1], reduction=red),
                  MF.smooth_l1_loss(x, t, reduction=red, beta=0.5), MF.huber_loss(x, t, reduction=red),
                  MF.binary_cross_entropy(x, t.detach(), w, reduction=red),
                  MF.binary_cross_entropy_with_logits(x, t, w, reduction=red, pos_weight=pw),
                  MF.kl_div(x, t, reduction=red), MF.kl_div(x, t, reduction="batchmean", log_target=True)]
            sum(y.sum() for y in ys).backward()
    assert any(n.startswith("minitorch_ext::pwloss_fwd") for n in tr.names)
    assert any(n.startswith("minitorch_ext::pwloss_bwd") for n in tr.names)
    bad = [n for n in tr.names if n.startswith("aten::") and any(f in n for f in FORBIDDEN)]
    assert not bad, bad


def test_empty_input_mean_is_nan_as_torch():
    x, t = torch.rand(0, 3), torch.rand(0, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in FN.values():
            for red in ("mean", "sum") + (("batchmean",) if fn == "kl_div" else ()):
                a, b = getattr(MF, fn)(x, t, reduction=red), getattr(F, fn)(x, t, reduction=red)
                assert a.shape == b.shape and torch.equal(a.isnan(), b.isnan()), (fn, red)


# double backward (torch offers it for every one of these losses): gradgradcheck in float64 through
# the backward op's registered autograd, on every kind and reduction of the fixed samples
_GG = [i for i, s in enumerate(SPEC.samples("cpp")) if all(v is None or v.numel() for v in s.leaves.values())]


@pytest.mark.parametrize("i", _GG)
def test_pwloss_gradgradcheck(i):
    testing.check_gradcheck(SPEC, SPEC.samples("cpp")[i], "cpp", gradgrad=True)


def test_weighted_mse_l1_huber_as_torch():
    import inspect

    if "weight" not in inspect.signature(F.mse_loss).parameters:
        pytest.skip("this torch has no weight argument on mse_loss / l1_loss / huber_loss")
    g = torch.Generator().manual_seed(8)
    x, t, w = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), torch.rand(4, 5, generator=g)
    for fn in ("mse_loss", "l1_loss", "huber_loss"):
        for red in ("none", "mean", "sum"):
            xo, xn = x.clone().requires_grad_(), x.clone().requires_grad_()
            a, b = getattr(MF, fn)(xo, t, reduction=red, weight=w), getattr(F, fn)(xn, t, reduction=red, weight=w)
            torch.testing.assert_close(a, b)
            a.sum().backward()
            b.sum().backward()
            torch.testing.assert_close(xo.grad, xn.grad)


def test_no_aten_loss_op_runs_in_double_backward():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 5, generator=g).clamp(0.05, 0.95).requires_grad_()
    t = torch.rand(3, 5, generator=g).requires_grad_()
    pw = torch.rand(5, generator=g)
    with _AtenTrace() as tr:
        for y in (MF.binary_cross_entropy_with_logits(x, t, pos_weight=pw), MF.binary_cross_entropy(x, t),
                  MF.kl_div(x, t, reduction="batchmean"), MF.smooth_l1_loss(x, t, beta=0.3)):
            gx, gt = torch.autograd.grad(y, [x, t], create_graph=True)
            (gx.pow(2).sum() + gt.pow(2).sum()).backward()
    bad = [n for n in tr.names if n.startswith("aten::") and any(f in n for f in FORBIDDEN)]
    assert not bad, bad
