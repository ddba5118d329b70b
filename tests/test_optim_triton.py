"""Optimizer-step family on the Triton backend (through the interpreter on CPU).

The same drop-in classes with use_backend("triton"): trajectories against
torch.optim, the Triton ops against the C++ ops on identical inputs, GradScaler,
clip_grad_norm_, opcheck, and the interpreter canaries of kernels/optim.py.
Small models: the interpreter runs one program instance at a time.
"""
import math

import pytest
import torch

import minitorch_ext as mte

pytestmark = pytest.mark.skipif("triton" not in mte.available_backends("cpu"),
                                reason="Triton cannot run CPU tensors here (needs triton and TRITON_INTERPRET=1)")
OPS = torch.ops.minitorch_ext


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 17), torch.nn.Tanh(), torch.nn.Linear(17, 1))


def _train(model, opt, steps=8, clip=None):
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(32, 6, generator=g), torch.randn(32, 1, generator=g)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        if clip is not None:
            clip(model.parameters())
        opt.step()
    return model


@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("SGD", dict(lr=0.1, momentum=0.5, dampening=0.3, maximize=True)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1)),
])
def test_trajectory_matches_torch(name, kw):
    ours_m, ref_m = _model(), _model()
    with mte.use_backend("triton"):
        _train(ours_m, getattr(mte.optim, name)(ours_m.parameters(), **kw))
    _train(ref_m, getattr(torch.optim, name)(ref_m.parameters(), foreach=False, **kw))
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        # SGD is bitwise; Adam differs from torch's MKL sqrt by an ulp here and there
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item())


def test_triton_adam_op_equals_cpp_op_bitwise():
    g = torch.Generator().manual_seed(0)
    shapes = (1, 7, 1000, 4097)

    def args():
        ps = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
        return ([p.clone() for p in ps], [p * 0.1 + 0.01 for p in ps], [p * 0.01 for p in ps],
                [p.abs() * 1e-3 for p in ps], [p.abs() * 2e-3 for p in ps],
                [torch.tensor(3.0) for _ in ps])

    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=True, maximize=False,
              decoupled_weight_decay=True)
    a, b = args(), args()
    OPS.adam_step_(*a, **kw)
    OPS.adam_step_triton_(*b, **kw)
    for la, lb in zip(a, b):
        for x, y in zip(la, lb):
            assert torch.equal(x, y)
    del g


def test_grad_scaler_skips_inf_step_on_triton():
    m = _model()
    with mte.use_backend("triton"):
        opt = mte.optim.Adam(m.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)
        before = [p.detach().clone() for p in m.parameters()]
        loss = m(torch.randn(4, 6)).sum()
        scaler.scale(loss).backward()
        next(m.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
    for p, q in zip(m.parameters(), before):
        assert torch.equal(p, q)
    assert scaler.get_scale() == 2.0 ** 3


@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0])
def test_clip_grad_norm_matches_torch(norm_type):
    ours_m, ref_m = _model(), _model()
    X = torch.randn(8, 6)
    for m in (ours_m, ref_m):
        (m(X) ** 2).sum().backward()
    with mte.use_backend("triton"):
        t_ours = mte.nn.utils.clip_grad_norm_(ours_m.parameters(), 0.5, norm_type)
    t_ref = torch.nn.utils.clip_grad_norm_(ref_m.parameters(), 0.5, norm_type)
    torch.testing.assert_close(t_ours, t_ref, rtol=1e-6, atol=0)
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


def test_opcheck_triton_ops():
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(s, generator=g) for s in (5, 17)]
    grads = [torch.randn(p.shape, generator=g) for p in ps]
    bufs = [torch.randn(p.shape, generator=g) for p in ps]
    torch.library.opcheck(OPS.sgd_step_triton_.default, ([p.clone() for p in ps], [x.clone() for x in grads],
                                                          [b.clone() for b in bufs]),
                          dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True,
                               maximize=False, is_first_step=False))
    steps = [torch.tensor(1.0) for _ in ps]
    torch.library.opcheck(OPS.adam_step_triton_.default,
                          ([p.clone() for p in ps], [x.clone() for x in grads], [b.clone() for b in bufs],
                           [b.abs() for b in bufs], [], steps),
                          dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, amsgrad=False,
                               maximize=False, decoupled_weight_decay=False, grad_scale=torch.tensor(2.0),
                               found_inf=torch.tensor(0.0)))
    torch.library.opcheck(OPS.total_norm_triton.default, (ps, 2.0))
    torch.library.opcheck(OPS.clip_scale_triton_.default, ([p.clone() for p in ps], torch.tensor(10.0), 1.0))


def test_optim_interpreter_canaries():
    from minitorch_ext.kernels import optim

    results = optim.interpreter_canaries()
    assert results and not [n for n, ok in results if not ok], results


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_clip_triton_equals_cpp_bitwise(name, dtype):
    """optimizer.clip_grad_norm_ then step() on the Triton backend: the Triton step
    kernel applies the clip, and params, state and grads equal the C++ backend's."""
    kw = dict(lr=0.1, momentum=0.9, nesterov=True) if name == "SGD" else dict(lr=1e-2, weight_decay=0.1,
                                                                               amsgrad=True)
    runs = []
    for backend in ("cpp", "triton"):
        m = _model().to(dtype)
        g = torch.Generator().manual_seed(1)
        X, y = torch.randn(32, 6, generator=g).to(dtype), torch.randn(32, 1, generator=g).to(dtype)
        with mte.use_backend(backend):
            opt = getattr(mte.optim, name)(m.parameters(), **kw)
            for s in range(4):
                opt.zero_grad()
                torch.nn.functional.mse_loss(m(X), y).backward()
                opt.clip_grad_norm_((0.05, 1e9)[s % 2])  # clipping, then a coefficient of 1
                opt.step()
        runs.append((m, opt))
    (ma, oa), (mb, ob) = runs
    for a, b in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
        for k, v in oa.state[a].items():
            assert torch.equal(v, ob.state[b][k]), k


def _rms_lists(dtype, centered, momentum, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = (1, 7, 1000, 4097)
    r = lambda: [torch.randn(s, generator=g).to(dtype) for s in shapes]  # noqa: E731
    ps, gs, ga = r(), r(), r()
    sq = [(a.double() ** 2 + 1.0 + torch.rand(a.shape, generator=g).double()).to(dtype) for a in ga]  # > E[g]^2
    return (ps, gs, sq, ga if centered else [], r() if momentum else [],
            [torch.tensor(float(i)) for i in range(len(shapes))])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("centered,momentum,extra", [
    (False, 0.0, {}), (True, 0.9, dict(weight_decay=0.01, maximize=True)),
    (True, 0.0, dict(grad_scale=True)), (False, 0.5, dict(clip=True)),
])
def test_triton_rmsprop_op_equals_cpp_op_bitwise(dtype, centered, momentum, extra):
    kw = dict(lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=extra.get("weight_decay", 0.0), momentum=momentum,
              centered=centered, maximize=extra.get("maximize", False))
    if extra.get("grad_scale"):
        kw["grad_scale"] = torch.tensor(4.0)
    if extra.get("clip"):
        kw.update(clip_total_norm=torch.tensor(30.0), clip_max_norm=1.0)
    a, b = _rms_lists(dtype, centered, momentum), _rms_lists(dtype, centered, momentum)
    for _ in range(3):
        OPS.rmsprop_step_(*a, **kw)
        OPS.rmsprop_step_triton_(*b, **kw)
    for x, y in zip(sum(a, []), sum(b, [])):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_triton_adagrad_op_equals_cpp_op_bitwise(dtype):
    kw = dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, eps=1e-10, maximize=True, grad_scale=torch.tensor(2.0),
              clip_total_norm=torch.tensor(50.0), clip_max_norm=2.0)

    def lists():
        ps, gs, sq, _, _, steps = _rms_lists(dtype, False, 0.0)
        return ps, gs, sq, steps

    a, b = lists(), lists()
    for _ in range(3):
        OPS.adagrad_step_(*a, **kw)
        OPS.adagrad_step_triton_(*b, **kw)
    for x, y in zip(sum(a, []), sum(b, [])):
        assert torch.equal(x, y)


@pytest.mark.parametrize("name,kw", [("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True)),
                                     ("Adagrad", dict(lr=0.05, lr_decay=0.01))])
def test_rmsprop_adagrad_trajectory_triton_matches_torch(name, kw):
    ours_m, ref_m = _model(), _model()
    with mte.use_backend("triton"):
        _train(ours_m, getattr(mte.optim, name)(ours_m.parameters(), **kw))
    _train(ref_m, getattr(torch.optim, name)(ref_m.parameters(), foreach=False, **kw))
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
