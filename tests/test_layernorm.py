"""LayerNorm on every backend this machine runs, through the shared checker."""
import torch

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.norm import small_model, spec

KIND = "layer_norm"
SPEC = spec(KIND)


# gradcheck, opcheck, Hypothesis parity (float32, bfloat16), float64, bad input, compile
globals().update(testing.standard_tests(SPEC, small_model(KIND), torch.randn(4, 16)))


def test_module_state_dict_round_trip():
    for kw in [{}, {"bias": False}, {"elementwise_affine": False}, {"eps": 1e-3}]:
        native = torch.nn.LayerNorm((3, 5), **kw)
        ours = mte.nn.LayerNorm((3, 5), **kw)
        if native.weight is not None:
            torch.nn.init.normal_(native.weight)
        if native.bias is not None:
            torch.nn.init.normal_(native.bias)
        assert list(ours.state_dict()) == list(native.state_dict())
        ours.load_state_dict(native.state_dict())
        x = torch.randn(2, 3, 5)
        torch.testing.assert_close(ours(x), native(x))
        back = torch.nn.LayerNorm((3, 5), **kw)
        back.load_state_dict(ours.state_dict())
        torch.testing.assert_close(back(x), native(x))
        assert repr(ours).replace("minitorch_ext.nn.", "") == repr(native)


def test_module_constructor_matches_torch():
    m = mte.nn.LayerNorm(8, device="cpu", dtype=torch.float64)
    assert m.weight.dtype == torch.float64 and m.normalized_shape == (8,)
    assert m.eps == torch.nn.LayerNorm(8).eps


def test_backward_deterministic():
    x = torch.randn(257, 300, requires_grad=True)
    w = torch.randn(300, requires_grad=True)
    b = torch.randn(300, requires_grad=True)
    dy = torch.randn(257, 300)
    runs = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        y = mte.nn.functional.layer_norm(x, (300,), w, b)
        runs.append(torch.autograd.grad(y, (x, w, b), dy))
    torch.set_num_threads(2)
    for r in runs[1:]:
        for a, b_ in zip(r, runs[0]):
            assert torch.equal(a, b_)
