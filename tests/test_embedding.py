"""The embedding family (F.embedding, nn.Embedding) on the C++ CPU kernels, through the
shared checker, plus what is particular to it: the backward equals torch's (bitwise
for float64 sums in index order), is bitwise repeatable for 1 and 2 threads, gives
padding rows no gradient, scale_grad_by_freq, max_norm renormalising in place as
torch, the module (init under a seed, state_dict, repr, from_pretrained), compile,
and a dispatch trace showing that no aten embedding/index op runs."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases import embedding as C

MF = mte.nn.functional
SPEC = C.spec()
BACKENDS = [b for b in C.BACKENDS if b == "cpp"]  # the Triton ones: tests/test_embedding_triton.py

with mock.patch.object(testing, "backends_for", lambda device="cpu": list(BACKENDS)):
    _T = testing.standard_tests(SPEC, C.small_model(), torch.zeros(1))
    del _T["test_compile_fullgraph"]  # the checker's compile test feeds a float input: ours is below
    for _test, _fn in _T.items():
        globals()[_test.replace("test_", "test_embedding_", 1)] = _fn


@pytest.mark.parametrize("i", range(len(C.max_norm_samples())))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_max_norm_parity(i, dtype):
    testing.check_parity(SPEC, C.max_norm_samples()[i], "cpp", dtype)


@pytest.mark.parametrize("i", range(len(C.max_norm_samples())))
def test_max_norm_opcheck(i):
    testing.check_opcheck(SPEC, C.max_norm_samples()[i], "cpp")


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, float("inf")])
def test_max_norm_renormalises_the_weight_in_place_as_torch(norm_type):
    torch.manual_seed(0)
    w = torch.randn(20, 7) * 2
    idx = torch.tensor([[1, 3, 3], [19, 0, 5]])
    wo, wn = w.clone(), w.clone()
    yo = MF.embedding(idx, wo, max_norm=1.2, norm_type=norm_type)
    yn = F.embedding(idx, wn, max_norm=1.2, norm_type=norm_type)
    torch.testing.assert_close(wo, wn, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(yo, yn, rtol=1e-6, atol=1e-7)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[idx.flatten()] = False
    assert torch.equal(wo[untouched], w[untouched])
    # the module with max_norm: its parameter is renormalised, as torch's
    torch.manual_seed(1)
    mo = mte.nn.Embedding(20, 7, max_norm=1.0, norm_type=norm_type)
    torch.manual_seed(1)
    mn = torch.nn.Embedding(20, 7, max_norm=1.0, norm_type=norm_type)
    mo(idx).sum().backward()
    mn(idx).sum().backward()
    torch.testing.assert_close(mo.weight, mn.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mo.weight.grad, mn.weight.grad)


@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32], ids=str)
@pytest.mark.parametrize("kw", [dict(), dict(padding_idx=3), dict(scale_grad_by_freq=True),
                                dict(padding_idx=-2, scale_grad_by_freq=True)], ids=str)
def test_backward_equals_torch(idx_dtype, kw):
    g = torch.Generator().manual_seed(2)
    V, D = 40, 37
    w = torch.randn(V, D, dtype=torch.float64, generator=g)
    idx = torch.randint(0, 10, (13, 11), generator=g).to(idx_dtype)  # many repeats
    dy = torch.randn(13, 11, D, dtype=torch.float64, generator=g)
    wo, wn = w.clone().requires_grad_(), w.clone().requires_grad_()
    yo, yn = MF.embedding(idx, wo, **kw), F.embedding(idx, wn, **kw)
    assert torch.equal(yo, yn)
    yo.backward(dy)
    yn.backward(dy)
    torch.testing.assert_close(wo.grad, wn.grad, rtol=1e-13, atol=1e-13)
    if "padding_idx" in kw:
        assert not wo.grad[kw["padding_idx"]].any()
    unused = torch.ones(V, dtype=torch.bool)
    unused[idx.long().flatten()] = False
    assert not wo.grad[unused].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_bitwise_repeatable_across_threads(dtype):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(500, 64, generator=g).to(dtype)
    idx = torch.randint(0, 50, (64, 100), generator=g)
    dy = torch.randn(64, 100, 64, generator=g).to(dtype)
    prev = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            wg = w.clone().requires_grad_()
            MF.embedding(idx, wg, scale_grad_by_freq=len(grads) >= 2).backward(dy)
            grads.append(wg.grad)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[2], grads[3])


def test_forward_is_a_copy_of_the_rows():
    for dtype in (torch.float32, torch.bfloat16, torch.float64, torch.float16):
        w = torch.randn(30, 19).to(dtype)
        idx = torch.randint(0, 30, (4, 5, 6))
        assert torch.equal(MF.embedding(idx, w), F.embedding(idx, w))
        assert torch.equal(MF.embedding(idx.int(), w[:, 3:11]), F.embedding(idx.int(), w[:, 3:11]))
    assert MF.embedding(torch.tensor(4), w).shape == (19,)


def test_module_matches_torch():
    for kw in (dict(), dict(padding_idx=2), dict(padding_idx=-1, max_norm=2.0, scale_grad_by_freq=True)):
        torch.manual_seed(0)
        ours = mte.nn.Embedding(11, 6, **kw)
        torch.manual_seed(0)
        nat = torch.nn.Embedding(11, 6, **kw)
        assert isinstance(ours, torch.nn.Embedding) and repr(ours) == repr(nat)
        assert list(ours.state_dict()) == list(nat.state_dict()) == ["weight"]
        assert torch.equal(ours.weight, nat.weight)  # the same init under a seed, the padding row zeroed
        if "padding_idx" in kw:
            assert not ours.weight[kw["padding_idx"]].any()
        ours.load_state_dict(nat.state_dict())
        idx = torch.tensor([[0, 2, 10], [2, 2, 5]])
        ours(idx).pow(2).sum().backward()
        nat(idx).pow(2).sum().backward()
        torch.testing.assert_close(ours.weight.grad, nat.weight.grad)
    pre = torch.randn(5, 3)
    for kw in (dict(), dict(freeze=False, padding_idx=1)):
        e, n = mte.nn.Embedding.from_pretrained(pre, **kw), torch.nn.Embedding.from_pretrained(pre, **kw)
        assert type(e) is mte.nn.Embedding and repr(e) == repr(n)
        assert e.weight.requires_grad == n.weight.requires_grad and torch.equal(e.weight, n.weight)
        assert torch.equal(e(torch.tensor([4, 1])), n(torch.tensor([4, 1])))
    e = mte.nn.Embedding(4, 2, sparse=True)
    with pytest.raises(NotImplementedError, match="sparse=True"):
        e(torch.tensor([1]))
    d = mte.nn.Embedding(4, 3, dtype=torch.float64, _freeze=True)
    assert d.weight.dtype == torch.float64 and not d.weight.requires_grad


def test_compile_fullgraph():
    make = C.small_model()
    m = make()
    x = torch.randint(0, 50, (4, 7))
    eager = m(x)
    eager.sum().backward()
    ge = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    c = torch.compile(m, fullgraph=True, backend="inductor")
    out = c(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for a, b in zip([p.grad for p in m.parameters()], ge):
        torch.testing.assert_close(a, b)


class _AtenTrace(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def test_no_aten_embedding_op_runs():
    w = torch.randn(20, 5, requires_grad=True)
    idx = torch.randint(0, 20, (3, 4))
    with _AtenTrace() as t:
        (MF.embedding(idx, w, padding_idx=1, scale_grad_by_freq=True).sum()
         + MF.embedding(idx.int(), w * 1, max_norm=1.0).sum()).backward()
    ours = {n for n in t.names if n.startswith("minitorch_ext::")}
    assert {"minitorch_ext::embedding_fwd", "minitorch_ext::embedding_bwd",
            "minitorch_ext::embedding_renorm_"} <= ours
    banned = [n for n in t.names if n.startswith("aten::") and any(
        s in n for s in ("embedding", "index", "gather", "scatter", "norm", "sort", "unique"))]
    assert not banned, banned
