"""Build minitorch_ext: the C++ (and, where possible, CUDA) extension `minitorch_ext._C`.

    pip install --no-build-isolation -e .

* CPU sources: csrc/**/*.cpp (always).
* CUDA sources: csrc/**/*.cu, compiled when a CUDA toolkit (CUDA_HOME / nvcc)
  and a CUDA build of torch are both present. TORCH_CUDA_ARCH_LIST is honoured;
  with no GPU visible it defaults to "9.0" (Hopper, the lent H200).
  MINITORCH_EXT_NO_CUDA=1 skips CUDA even when it could be built.
* CPU vector ISA: the kernels use at::vec; we compile them for the widest ISA
  the *building* CPU has (AVX-512 > AVX2 > scalar), so an editable install is
  tuned to its machine. MINITORCH_EXT_CPU_ISA=avx512|avx2|default overrides.
* MAX_JOBS limits parallel compile jobs (ninja); two cores here: MAX_JOBS=2.
"""
import glob
import os
import sys

from setuptools import setup

import torch
from torch.utils.cpp_extension import (
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

ROOT = os.path.dirname(os.path.abspath(__file__))


def log(msg):
    print(f"[minitorch_ext] {msg}", file=sys.stderr)


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
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": [],
}


def want_cuda():
    if os.environ.get("MINITORCH_EXT_NO_CUDA", "0") == "1":
        log("MINITORCH_EXT_NO_CUDA=1: building the CPU part only")
        return False
    if torch.version.cuda is None:
        log("torch is a CPU-only build: building the CPU part only")
        return False
    if CUDA_HOME is None:
        log("no CUDA toolkit found (set CUDA_HOME): building the CPU part only")
        return False
    return True


def main():
    isa = cpu_isa()
    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"] + ISA_FLAGS.get(isa, [])
    cxx.append(f"-DMINITORCH_EXT_CPU_ISA=\"{isa}\"")
    define_macros = []
    link = ["-fopenmp"]
    cuda = want_cuda()
    if cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
            log("no GPU visible: TORCH_CUDA_ARCH_LIST defaults to 9.0")
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "(from the visible GPU)")
        log(f"building CPU ({isa}) + CUDA ({archs}) kernels with {CUDA_HOME}")
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
                         "-DMINITORCH_EXT_WITH_CUDA"],
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

    setup(
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


main()
