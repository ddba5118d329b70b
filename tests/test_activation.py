"""The activation family (relu, leaky_relu, gelu, silu, tanh, sigmoid, softmax,
log_softmax; the in-place forms) on every backend this machine runs, through
the shared checker, plus what is particular to it: in-place semantics, the
modules, softmax's dim and dtype arguments."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import minitorch_ext as mte
from minitorch_ext import testing
from minitorch_ext.cases.activation import small_model, spec

MF = mte.nn.functional
BACKENDS = testing.backends_for("cpu")
by_backend = pytest.mark.parametrize("backend", BACKENDS)

# gradcheck, opcheck, Hypothesis parity (float32, bfloat16), float64, bad input,
# meta, autocast, compile: one battery per spec, test names prefixed by the spec
# (the compile smoke test once: its MLP has every activation module, LogSoftmax included)
for _name in ("activation", "softmax"):
    for _test, _fn in testing.standard_tests(spec(_name), small_model(), torch.randn(4, 16)).items():
        if _name == "softmax" and _test == "test_compile_fullgraph":
            continue
        globals()[_test.replace("test_", f"test_{_name}_", 1)] = _fn


def _close(a, b, dtype):
    tol = {torch.float32: 2e-6, torch.float64: 1e-12, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# ---------------------------------------------------------------------------
# in place
# ---------------------------------------------------------------------------

INPLACE = [("relu", {}), ("leaky_relu", {"negative_slope": 0.2}), ("leaky_relu", {"negative_slope": -0.4}),
           ("silu", {})]


@by_backend
@pytest.mark.parametrize("fn,kw", INPLACE, ids=lambda v: str(v))
@pytest.mark.parametrize("layout", ["contig", "transposed", "sliced"])
def test_inplace_same_storage_version_and_grads(backend, fn, kw, layout):
    torch.manual_seed(0)
    base = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(6, 10, dtype=torch.float64)
    if layout == "transposed":
        dy = dy.t()
    elif layout == "sliced":
        dy = dy[:, ::2]

    def view(t):
        return t.t() if layout == "transposed" else (t[:, ::2] if layout == "sliced" else t)

    with mte.use_backend(backend):
        x = view(base * 2.0)  # a non-leaf
        ptr, v0 = x.data_ptr(), x._version
        y = getattr(MF, fn)(x, inplace=True, **kw)
        assert y is x and x.data_ptr() == ptr
        assert x._version > v0
        (gx,) = torch.autograd.grad(y, base, dy)
    xn = view(base * 2.0)
    yn = getattr(F, fn)(xn, **kw)  # torch's out-of-place: in-place leaky_relu(<0) has no torch backward
    (gn,) = torch.autograd.grad(yn, base, dy)
    _close(y, yn, torch.float64)
    _close(gx, gn, torch.float64)


@by_backend
def test_inplace_no_grad_and_plain_tensors(backend):
    x = torch.randn(5, 7)
    ref = F.relu(x)
    with mte.use_backend(backend):
        v0 = x._version
        assert MF.relu_(x) is x
        assert x._version > v0
    assert torch.equal(x, ref)
    leaf = torch.randn(4, requires_grad=True)
    with torch.no_grad(), mte.use_backend(backend):  # allowed under no_grad, as in torch
        MF.silu(leaf, inplace=True)
    xi = torch.arange(-5, 6).reshape(11, 1).expand(11, 2).contiguous()
    with mte.use_backend(backend):
        assert torch.equal(MF.relu(xi), F.relu(xi)) and MF.relu(xi).dtype == torch.int64
        MF.relu(xi, inplace=True)
    assert torch.equal(xi, F.relu(xi))


@by_backend
def test_inplace_stale_saved_tensor_is_detected(backend):
    # a graph that saved x before the update refuses to backward, as torch's does
    base = torch.randn(5, requires_grad=True)
    with mte.use_backend(backend):
        x = base * 1.0
        z = x * x  # saves x
        MF.relu(x, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_inplace_raw_op_refuses_a_tensor_that_requires_grad():
    x = torch.randn(3, requires_grad=True) * 1.0
    with pytest.raises(RuntimeError, match="act_: self requires grad"):
        torch.ops.minitorch_ext.act_(x, "relu", 0.0)


@by_backend
def test_inplace_strided_cpp_kernel_writes_only_its_elements(backend):
    # a sliced 3-D view: the elements between the slices must stay untouched
    base = torch.randn(4, 9, 12)
    keep = base.clone()
    view = base[:, 1::2, ::3]
    ref = F.silu(view)
    with mte.use_backend(backend):
        MF.silu(view, inplace=True)
    torch.testing.assert_close(view, ref)
    mask = torch.ones_like(base, dtype=torch.bool)
    mask[:, 1::2, ::3] = False
    assert torch.equal(base[mask], keep[mask])


# ---------------------------------------------------------------------------
# functional details
# ---------------------------------------------------------------------------

@by_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
def test_gelu_tanh_and_every_activation_in_dtype(backend, dtype):
    torch.manual_seed(1)
    x = (torch.randn(33, 65) * 4).to(dtype)
    with mte.use_backend(backend):
        for ours, nat in [(lambda t: MF.gelu(t, approximate="tanh"), lambda t: F.gelu(t, approximate="tanh")),
                          (MF.gelu, F.gelu), (MF.silu, F.silu), (MF.tanh, torch.tanh), (MF.sigmoid, torch.sigmoid),
                          (MF.relu, F.relu), (lambda t: MF.leaky_relu(t, 0.3), lambda t: F.leaky_relu(t, 0.3))]:
            y = ours(x)
            assert y.dtype == dtype
            _close(y.float(), nat(x).float(), dtype)


@by_backend
def test_tanh_sigmoid_promote_integers(backend):
    xi = torch.arange(-3, 4)
    with mte.use_backend(backend):
        for ours, nat in [(MF.tanh, torch.tanh), (MF.sigmoid, torch.sigmoid)]:
            y = ours(xi)
            assert y.dtype == torch.get_default_dtype()
            torch.testing.assert_close(y, nat(xi))


@by_backend
@pytest.mark.parametrize("log", [False, True])
def test_softmax_every_dim_of_3d(backend, log):
    torch.manual_seed(2)
    x = torch.randn(3, 70, 5, dtype=torch.float64, requires_grad=True) * 3
    ours, nat = (MF.log_softmax, F.log_softmax) if log else (MF.softmax, F.softmax)
    for dim in range(-3, 3):
        dy = torch.randn(3, 70, 5, dtype=torch.float64)
        with mte.use_backend(backend):
            y = ours(x, dim)
            (g,) = torch.autograd.grad(y, x, dy)
        yn = nat(x, dim)
        (gn,) = torch.autograd.grad(yn, x, dy)
        _close(y, yn, torch.float64)
        _close(g, gn, torch.float64)


@by_backend
@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_softmax_dtype_argument(backend, fn):
    x = torch.randn(4, 9)
    ours, nat = getattr(MF, fn), getattr(F, fn)
    with mte.use_backend(backend):
        for dt in (torch.float64, torch.bfloat16):
            y = ours(x, 1, dtype=dt)
            assert y.dtype == dt
            torch.testing.assert_close(y, nat(x, 1, dtype=dt))
        xi = torch.arange(12).reshape(3, 4)
        torch.testing.assert_close(ours(xi, 0, dtype=torch.float32), nat(xi, 0, dtype=torch.float32))
        xr = x.clone().requires_grad_(True)
        ours(xr, -1, dtype=torch.float64).sum().backward()
        assert xr.grad.dtype == torch.float32


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_softmax_implicit_dim_warns_like_torch(fn):
    ours, nat = getattr(MF, fn), getattr(F, fn)
    for shape in [(), (4,), (2, 3), (2, 3, 4), (2, 3, 4, 5)]:
        x = torch.randn(shape)
        with warnings.catch_warnings(record=True) as w_ours:
            warnings.simplefilter("always")
            y = ours(x)
        with warnings.catch_warnings(record=True) as w_nat:
            warnings.simplefilter("always")
            yn = nat(x)
        torch.testing.assert_close(y, yn)
        assert [str(w.message) for w in w_ours] == [str(w.message) for w in w_nat]
        assert w_ours[0].filename == __file__  # the warning points at the caller, as torch's


def test_autocast_cpu_keeps_dtypes_like_torch():
    x = torch.randn(4, 8)
    with torch.autocast("cpu", torch.bfloat16):
        for ours, nat in [(lambda t: MF.softmax(t, -1), lambda t: F.softmax(t, -1)), (MF.gelu, F.gelu),
                          (MF.silu, F.silu), (MF.relu, F.relu)]:
            assert ours(x).dtype == nat(x).dtype
            assert ours(x.bfloat16()).dtype == nat(x.bfloat16()).dtype


def test_backward_deterministic_across_threads():
    x = torch.randn(300, 257, requires_grad=True)
    dy = torch.randn(300, 257)
    runs = []
    prev = torch.get_num_threads()
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        outs = []
        for f in (lambda t: MF.softmax(t, 1), lambda t: MF.softmax(t, 0), MF.gelu):
            y = f(x)
            outs += [y.detach(), torch.autograd.grad(y, x, dy)[0]]
        runs.append(outs)
    torch.set_num_threads(prev)
    for r in runs[1:]:
        for a, b in zip(r, runs[0]):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------

MODULES = [("ReLU", (), {}), ("ReLU", (True,), {}), ("LeakyReLU", (), {}), ("LeakyReLU", (0.2, True), {}),
           ("LeakyReLU", (), {"negative_slope": -0.1}), ("GELU", (), {}), ("GELU", ("tanh",), {}),
           ("SiLU", (), {}), ("SiLU", (), {"inplace": True}), ("Tanh", (), {}), ("Sigmoid", (), {}),
           ("Softmax", (), {"dim": 1}), ("Softmax", (0,), {}), ("LogSoftmax", (), {"dim": -1})]


@pytest.mark.parametrize("name,args,kw", MODULES, ids=lambda v: str(v))
def test_module_matches_torch(name, args, kw):
    ours = getattr(mte.nn, name)(*args, **kw)
    native = getattr(torch.nn, name)(*args, **kw)
    assert repr(ours).replace("minitorch_ext.nn.", "") == repr(native)
    assert list(ours.state_dict()) == list(native.state_dict()) == []
    assert list(ours.parameters()) == []
    for attr in ("inplace", "negative_slope", "approximate", "dim"):
        assert getattr(ours, attr, None) == getattr(native, attr, None)
    x = torch.randn(3, 6)
    torch.testing.assert_close(ours(x.clone()), native(x.clone()))


def test_softmax_module_without_dim_warns_and_matches():
    x = torch.randn(2, 3, 4)
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        y = mte.nn.Softmax()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(y, torch.nn.Softmax()(x))
    with pytest.raises(TypeError, match="dim must be an int or None"):
        mte.nn.Softmax(dim=1.5)


# ---------------------------------------------------------------------------
# the Triton interpreter features the kernels rely on
# ---------------------------------------------------------------------------

@pytest.mark.skipif("triton" not in BACKENDS, reason="needs triton and TRITON_INTERPRET=1")
def test_triton_interpreter_canaries():
    from minitorch_ext.kernels import act

    results = act.interpreter_canaries()
    assert len(results) >= 8
    bad = [name for name, ok in results if not ok]
    assert not bad, f"interpreter canaries failed: {bad}"


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs triton and TRITON_INTERPRET=1")
@pytest.mark.parametrize("log", [False, True])
def test_triton_softmax_streaming_path(log):
    # narrow rows forced through the wide-row (three-pass) kernels
    from minitorch_ext.kernels import act as K

    x = torch.randn(5, 77, dtype=torch.float64) * 5
    y = K.softmax_fwd(x, log, max_block_d=16)
    ref = F.log_softmax(x, 1) if log else F.softmax(x, 1)
    _close(y, ref, torch.float64)
    dy = torch.randn_like(x)
    dx = K.softmax_bwd(dy, y, log, max_block_d=16)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.log_softmax(xr, 1) if log else F.softmax(xr, 1), xr, dy)
    _close(dx, g, torch.float64)


@by_backend
@pytest.mark.parametrize("name", ["activation", "softmax"])
def test_parity_float16_fixed_samples(backend, name):
    # float16 output and gradient on every fixed sample (Hypothesis runs float32 and bfloat16)
    s = spec(name)
    for sample in s.samples(backend):
        testing.check_parity(s, sample, backend, torch.float16)
