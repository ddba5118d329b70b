"""Build minitorch_ext: the C++ (and, where possible, CUDA) extension `minitorch_ext._C`.

    pip install -e .                          # build isolation (pip's default)
    pip install --no-build-isolation -e .     # against the torch already installed (recommended)

* CPU sources: csrc/**/*.cpp (always).
* CUDA sources: csrc/**/*.cu, compiled when a complete CUDA toolkit and a CUDA
  build of torch are both present. The toolkit is found by
  minitorch_ext/_toolkit.py ($CUDA_HOME, $CUDA_PATH, the nvcc on PATH followed
  through symlinks and wrapper scripts, /usr/local/cuda; accepted only with
  bin/nvcc, include/cuda_runtime.h and libcudart, and a major version equal to
  torch's CUDA); otherwise the CPU part is built and one line says why.
  TORCH_CUDA_ARCH_LIST is honoured; with no GPU visible it defaults to "9.0"
  (Hopper, the lent H200). MINITORCH_EXT_NO_CUDA=1 skips CUDA.
* CPU vector ISA: the kernels use at::vec; we compile them for the widest ISA
  the *building* CPU has (AVX-512 > AVX2 > scalar), so an editable install is
  tuned to its machine. MINITORCH_EXT_CPU_ISA=avx512|avx2|default overrides.
  The import refuses, with a clear ImportError, a CPU that lacks the build's ISA.
* minitorch_ext/_build_meta.py records the torch version built against; the
  import compares it with the running torch (see minitorch_ext/__init__.py).
* torch's headers are included as system headers, so their warnings stay out
  of the build log; -Wall applies to csrc/.
* MAX_JOBS limits parallel compile jobs (ninja); two cores here: MAX_JOBS=2.
"""
import glob
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"[minitorch_ext] {msg}", file=sys.stderr)


def _load_toolkit_probe():
    # minitorch_ext/_toolkit.py, loaded by path: the package itself cannot be
    # imported before its extension is built
    spec = importlib.util.spec_from_file_location("_mte_toolkit", os.path.join(ROOT, "minitorch_ext", "_toolkit.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


import torch  # noqa: E402


def cuda_toolkit():
    """The CUDA toolkit root to build with, or None (after saying why in one line)."""
    if os.environ.get("MINITORCH_EXT_NO_CUDA", "0") == "1":
        log("MINITORCH_EXT_NO_CUDA=1: building the CPU part only")
        return None
    if torch.version.cuda is None:
        log("torch is a CPU-only build: building the CPU part only")
        return None
    probe = _load_toolkit_probe().find_toolkit(torch.version.cuda)
    if probe.home is None:
        log(f"{probe.reason}: building the CPU part only")
        return None
    return probe.home


# Decide on the toolkit before torch.utils.cpp_extension is imported: it reads
# CUDA_HOME once, at import, and its own guess (the parent of the first nvcc on
# PATH) can be a wrapper's folder without lib64/libcudart.
CUDA_ROOT = cuda_toolkit()
if CUDA_ROOT is not None:
    os.environ["CUDA_HOME"] = CUDA_ROOT
else:  # CPU only, reason given above: torch's own CUDA_HOME guess would only add a misleading warning
    import logging

    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

from torch.utils.cpp_extension import (  # noqa: E402
    BuildExtension,
    CppExtension,
    CUDAExtension,
    include_paths,
)


def cpu_isa():
    forced = os.environ.get("MINITORCH_EXT_CPU_ISA")
    if forced:
        return forced
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    have = set(flags.split())
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= have:
        return "avx512"
    if {"avx2", "fma"} <= have:
        return "avx2"
    return "default"


ISA_FLAGS = {
    # -Wno-(maybe-)uninitialized: GCC 12's own AVX-512 intrinsic headers (the `__Y` of
    # _mm512_undefined_*) trip them by the thousand (GCC bug 105593), 68k lines of -v output
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
               "-Wno-maybe-uninitialized", "-Wno-uninitialized"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": [],
}


def system_includes(cuda):
    """torch's (and CUDA's) headers as system headers: their warnings (thousands
    of "ignoring #pragma unroll" under -Wall) are not ours to fix, while -Wall
    stays on for csrc/. GCC ignores a -I for a folder also given with -isystem."""
    flags = []
    for p in include_paths("cuda" if cuda else "cpu"):
        flags += ["-isystem", p]
    return flags


def write_build_meta(isa, cuda, archs):
    """minitorch_ext/_build_meta.py: what the extension was built against, readable
    at import before the extension itself is loaded (see minitorch_ext/__init__.py)."""
    path = os.path.join(ROOT, "minitorch_ext", "_build_meta.py")
    text = ("# Written by setup.py at build time; not in git.\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"TORCH_CUDA = {torch.version.cuda if cuda else None!r}\n"
            f"CPU_ISA = {isa!r}\n"
            f"CUDA = {bool(cuda)!r}\n"
            f"CUDA_ARCHS = {archs!r}\n")
    old = open(path).read() if os.path.exists(path) else None
    if old != text:
        with open(path, "w") as f:
            f.write(text)


def main():
    isa = cpu_isa()
    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"] + ISA_FLAGS.get(isa, [])
    cxx.append(f"-DMINITORCH_EXT_CPU_ISA=\"{isa}\"")
    define_macros = []
    link = ["-fopenmp"]
    cuda = CUDA_ROOT is not None
    cxx += system_includes(cuda)
    archs = ""
    if cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
            log("no GPU visible: TORCH_CUDA_ARCH_LIST defaults to 9.0")
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "(from the visible GPU)")
        log(f"building CPU ({isa}) + CUDA ({archs}) kernels with the toolkit in {CUDA_ROOT}")
        cxx.append("-DMINITORCH_EXT_WITH_CUDA")
        cxx.append(f"-DMINITORCH_EXT_CUDA_ARCHS=\"{archs}\"")
        ext = CUDAExtension(
            "minitorch_ext._C",
            cpp_sources + cu_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={
                "cxx": cxx,
                "nvcc": ["-O3", "--use_fast_math", "-lineinfo",
                         "-DMINITORCH_EXT_WITH_CUDA"] + system_includes(True),
            },
            extra_link_args=link,
        )
    else:
        log(f"building CPU ({isa}) kernels only")
        ext = CppExtension(
            "minitorch_ext._C",
            cpp_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )

    write_build_meta(isa, cuda, archs if cuda else "")
    setup(
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


main()
