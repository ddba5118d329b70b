"""The install path (issue: `pip install -e .` must work on a fresh machine).

The CUDA toolkit probe setup.py runs (complete toolkits only, wrappers
followed, one-line reasons), and the import-time checks that turn a build
which cannot load into a clear ImportError. The real fresh-venv installs
(plain `pip install -e .`, the wheel) run in scripts/install_check.sh, which
.ci/run calls.
"""
import os
import stat
import subprocess
import sys
import types

import pytest
import torch

from minitorch_ext import _preflight, _toolkit


def _fake_toolkit(root, *, nvcc=True, header=True, cudart=True, release="13.0", libdir="lib64"):
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    if nvcc:
        path = os.path.join(root, "bin", "nvcc")
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.0'\n")
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)
    if header:
        os.makedirs(os.path.join(root, "include"), exist_ok=True)
        open(os.path.join(root, "include", "cuda_runtime.h"), "w").close()
    if cudart:
        os.makedirs(os.path.join(root, libdir), exist_ok=True)
        open(os.path.join(root, libdir, "libcudart.so"), "w").close()
    return root


def test_complete_toolkit_is_accepted(tmp_path):
    root = _fake_toolkit(str(tmp_path / "cuda"))
    probe = _toolkit.find_toolkit("13.0", env={"MINITORCH_EXT_CUDA_SEARCH": root})
    assert probe.home == root and probe.version == "13.0"


@pytest.mark.parametrize("missing, lacks", [("nvcc", "bin/nvcc"), ("header", "include/cuda_runtime.h"),
                                            ("cudart", "libcudart")])
def test_incomplete_toolkit_is_refused_with_the_reason(tmp_path, missing, lacks):
    root = _fake_toolkit(str(tmp_path / "cuda"), **{missing: False})
    probe = _toolkit.find_toolkit("13.0", env={"MINITORCH_EXT_CUDA_SEARCH": root})
    assert probe.home is None
    assert root in probe.reason and lacks in probe.reason and "\n" not in probe.reason


def test_nonexistent_search_path_says_so():
    probe = _toolkit.find_toolkit("13.0", env={"MINITORCH_EXT_CUDA_SEARCH": "/nonexistent"})
    assert probe.home is None and "/nonexistent" in probe.reason and "does not exist" in probe.reason


def test_major_version_mismatch_is_refused(tmp_path):
    root = _fake_toolkit(str(tmp_path / "cuda"), release="12.4")
    probe = _toolkit.find_toolkit("13.0", env={"MINITORCH_EXT_CUDA_SEARCH": root})
    assert probe.home is None and "CUDA 12.4" in probe.reason and "13.0" in probe.reason


def test_lib_and_targets_layouts_count_as_complete(tmp_path):
    a = _fake_toolkit(str(tmp_path / "a"), libdir="lib")
    b = _fake_toolkit(str(tmp_path / "b"), libdir=os.path.join("targets", "x86_64-linux", "lib"))
    for root in (a, b):
        assert _toolkit.missing_parts(root) == []


def test_wrapper_on_path_leads_to_the_real_toolkit(tmp_path):
    # what this machine has: a small script in a general bin/ that execs the real nvcc
    real = _fake_toolkit(str(tmp_path / "cuda-13.0"))
    general_bin = tmp_path / "usr" / "bin"
    general_bin.mkdir(parents=True)
    wrapper = general_bin / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    env = {"PATH": str(general_bin)}
    cands = _toolkit.candidates(env)
    assert cands[0] == ("nvcc on PATH", real)
    # the wrapper's own parent (torch's guess) is not a toolkit; the probe skips past it
    assert _toolkit.missing_parts(str(tmp_path / "usr"))
    probe = _toolkit.find_toolkit("13.0", env=env)
    assert probe.home == real or probe.home == _toolkit.DEFAULT_ROOT


def test_order_cuda_home_then_cuda_path(tmp_path):
    a = _fake_toolkit(str(tmp_path / "a"))
    b = _fake_toolkit(str(tmp_path / "b"))
    env = {"CUDA_HOME": str(tmp_path / "missing"), "CUDA_PATH": b, "PATH": ""}
    assert [r for _, r in _toolkit.candidates(env)][:2] == [str(tmp_path / "missing"), b]
    assert _toolkit.find_toolkit("13.0", env=env).home == b
    assert _toolkit.find_toolkit("13.0", env={"CUDA_HOME": a, "CUDA_PATH": b, "PATH": ""}).home == a


def _meta(**kw):
    base = dict(TORCH_VERSION=torch.__version__, TORCH_CUDA=torch.version.cuda, CPU_ISA="default",
                CUDA=False, CUDA_ARCHS="")
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_preflight_accepts_this_build():
    import minitorch_ext._build_meta as built

    _preflight.check_build(built, torch.__version__, torch.version.cuda, _preflight.cpu_flags())


def test_preflight_refuses_another_torch_minor_naming_both_and_the_fix():
    with pytest.raises(ImportError) as e:
        _preflight.check_build(_meta(TORCH_VERSION="2.99.0"), "2.14.1", "13.0", set())
    msg = str(e.value)
    assert "2.99.0" in msg and "2.14.1" in msg and "pip install --no-build-isolation -e ." in msg


def test_preflight_patch_releases_are_compatible():
    _preflight.check_build(_meta(TORCH_VERSION="2.14.0"), "2.14.1+cu130", "13.0", set())


def test_preflight_refuses_cuda_build_on_cpu_only_torch():
    with pytest.raises(ImportError, match="CPU-only"):
        _preflight.check_build(_meta(CUDA=True), torch.__version__, None, set())


def test_preflight_refuses_an_isa_this_cpu_lacks():
    with pytest.raises(ImportError, match=r"avx512.*avx512f"):
        _preflight.check_build(_meta(CPU_ISA="avx512"), torch.__version__, None, {"avx2", "fma"})
    _preflight.check_build(_meta(CPU_ISA="avx2"), torch.__version__, None, {"avx2", "fma"})


def test_import_with_a_mismatched_build_record_raises_clear_importerror():
    # a fresh interpreter whose recorded build says another torch: the import refuses before _C loads
    code = ("import sys, types\n"
            "m = types.ModuleType('minitorch_ext._build_meta')\n"
            "m.TORCH_VERSION = '2.99.0'; m.TORCH_CUDA = None; m.CPU_ISA = 'default'; m.CUDA = False\n"
            "sys.modules['minitorch_ext._build_meta'] = m\n"
            "try:\n    import minitorch_ext\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORTERROR" in out.stdout, out.stdout + out.stderr
    assert "2.99.0" in out.stdout and torch.__version__ in out.stdout
    assert "pip install --no-build-isolation -e ." in out.stdout


def test_setup_prints_one_line_reason_without_toolkit(tmp_path):
    # setup.py's probe with no complete toolkit visible: CPU only, one line saying why
    code = ("import importlib.util, sys, os\n"
            "spec = importlib.util.spec_from_file_location('t', os.path.join(sys.argv[1], 'minitorch_ext', '_toolkit.py'))\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['t'] = m; spec.loader.exec_module(m)\n"
            "p = m.find_toolkit('13.0')\nprint(p.home, '|', p.reason)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, MINITORCH_EXT_CUDA_SEARCH="/nonexistent")
    out = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.startswith("None |") and "/nonexistent" in out.stdout, out.stdout + out.stderr
