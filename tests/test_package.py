"""Package surface: subpackages, backend control, and a model trained on our kernels."""
import os
import subprocess
import sys

import pytest
import torch

import minitorch_ext as mte


def test_subpackages_import():
    import minitorch_ext.kernels.norm  # noqa: F401
    import minitorch_ext.models as models

    assert models.SimpleNet is not None


def test_info_command_runs():
    out = subprocess.run([sys.executable, "-m", "minitorch_ext", "info"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "backends cpu" in out.stdout and "compiled" in out.stdout


def test_use_backend_call_and_context_manager():
    assert mte.current_backend() is None
    with mte.use_backend("cpp"):
        assert mte.current_backend() == "cpp"
        with mte.use_backend("triton"):
            assert mte.current_backend() == "triton"
        assert mte.current_backend() == "cpp"
    assert mte.current_backend() is None
    mte.use_backend("cpp")
    try:
        assert mte.current_backend() == "cpp"
    finally:
        mte.use_backend(None)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        mte.use_backend("cuda-magic")


def test_backend_unavailable_is_an_error_not_a_fallback():
    # a fresh interpreter without TRITON_INTERPRET cannot run Triton on CPU tensors
    code = ("import minitorch_ext as m\n"
            "try:\n    m.use_backend('triton')\nexcept RuntimeError as e:\n    print('ERR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


def test_env_var_selects_backend():
    code = "import minitorch_ext as m; print(m.current_backend(), m.available_backends('cpu'))"
    env = dict(os.environ, MINITORCH_EXT_BACKEND="triton", TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.startswith("triton"), out.stdout + out.stderr


def test_cuda_tensor_without_cuda_build_names_the_fix(monkeypatch):
    from minitorch_ext import _backend

    monkeypatch.setattr(_backend, "_cuda_built", lambda: False)
    monkeypatch.setattr(_backend, "_have_triton", lambda: False)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        _backend.resolve(torch.device("cuda"))


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_model_trains_like_native(norm):
    """SimpleNet on our norm vs its native twin: same init, 30 SGD steps, same losses."""
    from minitorch_ext.models import SimpleNet

    torch.manual_seed(0)
    ours = SimpleNet(20, 64, 5, norm=norm)
    native = SimpleNet(20, 64, 5, norm=norm, nn=torch.nn)
    native.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(1)
    X = torch.randn(256, 20, generator=g)
    y = (X[:, :5].argmax(1))
    losses = {}
    for name, m in (("ours", ours), ("native", native)):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        hist = []
        for _ in range(30):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(m(X), y)
            loss.backward()
            opt.step()
            hist.append(loss.item())
        losses[name] = hist
    assert losses["ours"][-1] < 0.7 * losses["ours"][0]
    torch.testing.assert_close(torch.tensor(losses["ours"]), torch.tensor(losses["native"]), rtol=1e-4, atol=1e-5)


def test_cpu_output_cache_reuses_blocks_without_aliasing():
    x = torch.randn(1024, 512)  # 2 MiB outputs: cached
    f = mte.nn.functional.layer_norm
    ref = torch.nn.functional.layer_norm(x, (512,))
    before = mte.cache_stats()
    y1 = f(x, (512,))
    y2 = f(x * 2, (512,))       # y1 still alive: must get its own block
    assert y1.data_ptr() != y2.data_ptr()
    torch.testing.assert_close(y1, ref)
    del y1, y2
    y3 = f(x, (512,))           # a freed block comes back
    after = mte.cache_stats()
    assert after["hits"] > before["hits"]
    torch.testing.assert_close(y3, ref)
    assert mte.empty_cache() >= 0
    assert mte.cache_stats()["cached_bytes"] == 0


def test_cpu_output_cache_can_be_turned_off():
    code = ("import torch, minitorch_ext as m\n"
            "x = torch.randn(1024, 512)\n"
            "for _ in range(3): m.nn.functional.layer_norm(x, (512,))\n"
            "print(m.cache_stats())\n")
    env = dict(os.environ, MINITORCH_EXT_CPU_CACHE_MB="0")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "'hits': 0" in out.stdout and "'cached_bytes': 0" in out.stdout, out.stdout + out.stderr
