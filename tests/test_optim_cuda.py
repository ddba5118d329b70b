"""Optimizer-step family on CUDA tensors: the CUDA kernels ("cpp") and Triton.

Runs only where a GPU is visible (scripts/gpu_check.sh on the lent device).
"""
import math

import pytest
import torch

import minitorch_ext as mte

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
BACKENDS = mte.available_backends("cuda") if torch.cuda.is_available() else []


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 33), torch.nn.Tanh(), torch.nn.Linear(33, 1)).cuda()


def _train(model, opt, steps=20):
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(64, 6, generator=g).cuda(), torch.randn(64, 1, generator=g).cuda()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        opt.step()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kw", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("Adam", dict(lr=1e-2, weight_decay=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1)),
])
def test_trajectory_matches_torch_cuda(backend, name, kw):
    ours_m, ref_m = _model(), _model()
    with mte.use_backend(backend):
        _train(ours_m, getattr(mte.optim, name)(ours_m.parameters(), **kw))
    _train(ref_m, getattr(torch.optim, name)(ref_m.parameters(), fused=True, **kw))
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_cuda_equals_cpu_op(backend):
    shapes = (1, 7, 1000, 4097, 70000)
    ps = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]

    def args(dev):
        return ([p.clone().to(dev) for p in ps], [(p * 0.1 + 0.01).to(dev) for p in ps],
                [(p * 0.01).to(dev) for p in ps], [(p.abs() * 1e-3).to(dev) for p in ps],
                [(p.abs() * 2e-3).to(dev) for p in ps], [torch.tensor(3.0, device=dev) for _ in ps])

    kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=True, maximize=False,
              decoupled_weight_decay=True, grad_scale=None, found_inf=None)
    cpu, gpu = args("cpu"), args("cuda")
    torch.ops.minitorch_ext.adam_step_(*cpu, **kw)
    name = "adam_step_" if backend == "cpp" else "adam_step_triton_"
    getattr(torch.ops.minitorch_ext, name)(*gpu, **kw)
    torch.cuda.synchronize()
    for la, lb in zip(cpu, gpu):
        for x, y in zip(la, lb):
            torch.testing.assert_close(y.cpu(), x, rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_cuda(backend):
    m = _model()
    with mte.use_backend(backend):
        opt = mte.optim.AdamW(m.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cuda", init_scale=16.0)
        before = [p.detach().clone() for p in m.parameters()]
        scaler.scale(m(torch.randn(4, 6, device="cuda")).sum()).backward()
        next(m.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
    for p, q in zip(m.parameters(), before):
        assert torch.equal(p, q)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_cuda(backend, norm_type):
    ours_m, ref_m = _model(), _model()
    X = torch.randn(8, 6, device="cuda")
    for m in (ours_m, ref_m):
        (m(X) ** 2).sum().backward()
    with mte.use_backend(backend):
        t = mte.nn.utils.clip_grad_norm_(ours_m.parameters(), 0.5, norm_type)
    r = torch.nn.utils.clip_grad_norm_(ref_m.parameters(), 0.5, norm_type)
    torch.testing.assert_close(t, r, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["SGD", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_clip_cuda_is_clip_then_step(backend, name, dtype):
    """optimizer.clip_grad_norm_ then step(): the step kernel applies the clip on the
    device; params, state and grads equal clip_grad_norm_ then step() bitwise."""
    kw = dict(lr=0.1, momentum=0.9, nesterov=True) if name == "SGD" else dict(lr=1e-2, weight_decay=0.1,
                                                                               amsgrad=True)
    runs = []
    for fold in (False, True):
        m = _model().to(dtype)
        g = torch.Generator().manual_seed(1)
        X, y = torch.randn(64, 6, generator=g).cuda().to(dtype), torch.randn(64, 1, generator=g).cuda().to(dtype)
        with mte.use_backend(backend):
            opt = getattr(mte.optim, name)(m.parameters(), **kw)
            for s in range(6):
                opt.zero_grad()
                torch.nn.functional.mse_loss(m(X), y).backward()
                max_norm = (0.05, 1e9)[s % 2]
                if fold:
                    opt.clip_grad_norm_(max_norm)
                else:
                    mte.nn.utils.clip_grad_norm_(m.parameters(), max_norm)
                opt.step()
        runs.append((m, opt))
    (ma, oa), (mb, ob) = runs
    for a, b in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
        for k, v in oa.state[a].items():
            assert torch.equal(v, ob.state[b][k]), k


def _rms_args(dev, dtype=torch.float32):
    shapes = (1, 7, 1000, 4097, 70000)
    g = torch.Generator().manual_seed(0)
    r = lambda: [torch.randn(s, generator=g).to(dtype) for s in shapes]  # noqa: E731
    ps, gs, ga, bf = r(), r(), r(), r()
    sq = [(a.double() ** 2 + 1.0).to(dtype) for a in ga]
    return [[t.to(dev) for t in lst] for lst in (ps, gs, sq, ga, bf)] + \
        [[torch.tensor(3.0, device=dev) for _ in shapes]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rmsprop_adagrad_cuda_equal_cpu_op_bitwise(backend, dtype):
    """The same IEEE operations in the same order on both devices: bitwise equal
    (also the folded clip and GradScaler's unscale)."""
    rk = dict(lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.01, momentum=0.9, centered=True, maximize=False)
    ak = dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, eps=1e-10, maximize=True)
    sfx = "" if backend == "cpp" else "_triton_"
    for op, kw, pick in (("rmsprop_step_", rk, lambda a: a),
                         ("adagrad_step_", ak, lambda a: (a[0], a[1], a[2], a[5]))):
        for extra in ({}, dict(grad_scale=True, clip=True)):
            cpu, gpu = pick(_rms_args("cpu", dtype)), pick(_rms_args("cuda", dtype))
            kc, kg = dict(kw), dict(kw)
            if extra:
                kc.update(grad_scale=torch.tensor(4.0), clip_total_norm=torch.tensor(30.0), clip_max_norm=1.0)
                kg.update(grad_scale=torch.tensor(4.0, device="cuda"),
                          clip_total_norm=torch.tensor(30.0, device="cuda"), clip_max_norm=1.0)
            getattr(torch.ops.minitorch_ext, op)(*cpu, **kc)
            getattr(torch.ops.minitorch_ext, op.rstrip("_") + "_triton_" if sfx else op)(*gpu, **kg)
            torch.cuda.synchronize()
            for la, lb in zip(cpu, gpu):
                for x, y in zip(la, lb):
                    assert torch.equal(y.cpu(), x), (op, extra)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,kw", [("RMSprop", dict(lr=1e-2, momentum=0.9, centered=True)),
                                     ("Adagrad", dict(lr=0.05, lr_decay=0.01))])
def test_rmsprop_adagrad_trajectory_cuda(backend, name, kw):
    ours_m, ref_m = _model(), _model()
    with mte.use_backend(backend):
        _train(ours_m, getattr(mte.optim, name)(ours_m.parameters(), **kw))
    _train(ref_m, getattr(torch.optim, name)(ref_m.parameters(), foreach=False, **kw))
    for a, b in zip(ours_m.parameters(), ref_m.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
