"""Linear (plain and with a fused activation) on every backend here, through the shared checker,
plus the module, the GEMM core's repeatability, and an MLP trained on digits."""
import math

import pytest
import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.linear import make_sample, small_model, spec

SPEC = spec()

# gradcheck, opcheck, Hypothesis parity (float32, bfloat16), float64, bad input, compile, meta, autocast
globals().update(testing.standard_tests(SPEC, small_model(), torch.randn(4, 16)))


@pytest.mark.parametrize("backend", testing.backends_for("cpu"))
def test_parity_table_samples(backend):
    # the larger shapes of `python -m minitorch_ext parity`, in float32
    for sample in SPEC.extra["parity_samples"](backend):
        testing.check_parity(SPEC, sample, backend, torch.float32)


def test_module_matches_torch_init_and_state_dict():
    for kw in [{}, {"bias": False}]:
        torch.manual_seed(7)
        native = torch.nn.Linear(13, 9, **kw)
        torch.manual_seed(7)
        ours = mte.nn.Linear(13, 9, **kw)
        # the same initial weights under the same seed, the same keys, the same repr
        assert list(ours.state_dict()) == list(native.state_dict())
        for k, v in native.state_dict().items():
            assert torch.equal(ours.state_dict()[k], v), k
        assert repr(ours).replace("minitorch_ext.nn.", "") == repr(native)
        x = torch.randn(4, 13)
        torch.testing.assert_close(ours(x), native(x))
        back = torch.nn.Linear(13, 9, **kw)
        back.load_state_dict(ours.state_dict())
        torch.testing.assert_close(back(x), native(x))


def test_module_constructor_and_activation():
    m = mte.nn.Linear(4, 3, device="cpu", dtype=torch.float64, activation="gelu")
    assert m.weight.dtype == torch.float64 and m.weight.shape == (3, 4) and m.bias.shape == (3,)
    assert "activation='gelu'" in repr(m)
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), F.gelu(F.linear(x, m.weight, m.bias)))
    with pytest.raises(ValueError, match="activation"):
        mte.nn.Linear(4, 3, activation="swish")


def test_meta_module():
    with torch.device("meta"):
        m = mte.nn.Linear(1024, 4096)
    y = m(torch.randn(8, 1024, device="meta"))
    assert y.device.type == "meta" and y.shape == (8, 4096)


def test_vector_shapes_like_torch():
    # 1-D input and/or 1-D weight, scalar bias: torch's matmul rules
    x, w, w1 = torch.randn(4), torch.randn(5, 4), torch.randn(4)
    for args in [(x, w), (torch.randn(3, 4), w1), (x, w1), (torch.randn(3, 4), w, torch.randn(())),
                 (torch.randn(3, 4), w, torch.randn(1))]:
        torch.testing.assert_close(mte.nn.functional.linear(*args), F.linear(*args))


def test_backward_bitwise_repeatable_over_threads():
    # a fixed reduction order over K (and over rows for grad_bias): 1 and 2 threads agree bitwise
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 517, generator=g, requires_grad=True)
    w = torch.randn(260, 517, generator=g, requires_grad=True)
    b = torch.randn(260, generator=g, requires_grad=True)
    dy = torch.randn(300, 260, generator=g)
    runs = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            y = mte.nn.functional.linear(x, w, b, activation="gelu")
            runs.append((y.detach(),) + torch.autograd.grad(y, (x, w, b), dy))
    finally:
        torch.set_num_threads(prev)
    for r in runs[1:]:
        for a, b_ in zip(r, runs[0]):
            assert torch.equal(a, b_)


def test_large_k_against_float64():
    # K = 8192 with values spanning magnitudes: our float32 error stays within torch's own
    g = torch.Generator().manual_seed(1)
    scale = torch.exp(torch.randn(8192, generator=g, dtype=torch.float64) * 2)
    x = torch.randn(33, 8192, generator=g, dtype=torch.float64) * scale
    w = torch.randn(65, 8192, generator=g, dtype=torch.float64) / scale.sqrt()
    ref = x @ w.t()
    ours = mte.nn.functional.linear(x.float(), w.float()).double()
    nat = F.linear(x.float(), w.float()).double()
    err_o, err_n = (ours - ref).abs().max().item(), (nat - ref).abs().max().item()
    assert err_o <= 4 * err_n + 1e-6 * ref.abs().max().item(), (err_o, err_n)


def test_mlp_on_digits_trains_like_torch():
    # 200 steps of SGD on scikit-learn's digits: ours and torch.nn from the same seed
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)

    def run(lin, act):
        torch.manual_seed(0)
        model = torch.nn.Sequential(lin(64, 128), act(), lin(128, 64), act(), lin(64, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(200):
            idx = torch.randint(0, X.shape[0], (64,), generator=g)
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    ours = run(mte.nn.Linear, mte.nn.ReLU)
    native = run(torch.nn.Linear, torch.nn.ReLU)
    assert native[-1] < 0.5 * native[0]  # it learns
    for i, (a, b) in enumerate(zip(ours, native)):
        # float32 noise, compounded over the steps
        assert math.isclose(a, b, rel_tol=2e-3, abs_tol=2e-4), (i, a, b)
