"""Checks run at import, before the compiled extension is loaded.

An extension built against one torch and loaded into another fails with an
undefined-symbol trace (torch's C++ ABI changes between minor releases), and
one compiled for AVX-512 dies of SIGILL on a CPU without it. Both happen in
ordinary installs: `pip install -e .` with build isolation compiles against
whatever torch the build environment resolved, not the torch the user runs.
So minitorch_ext/_build_meta.py (written by setup.py) records what the build
was made for, and `check_build` compares it with what is running, raising an
ImportError that names both sides and the command that fixes it.
"""
from __future__ import annotations

import re

FIX = "pip install --no-build-isolation -e ."   # rebuild against the torch that runs

# the CPU flags (as /proc/cpuinfo spells them) each build ISA needs
ISA_NEEDS = {
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"),
    "avx2": ("avx2", "fma"),
    "default": (),
}


def _major_minor(version: str):
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def cpu_flags() -> set | None:
    """The running CPU's feature flags, or None where they cannot be read (non-Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def check_build(meta, torch_version: str, torch_cuda: str | None, flags: set | None) -> None:
    """Raise ImportError when the build described by `meta` cannot load into this process."""
    built = getattr(meta, "TORCH_VERSION", None)
    if built is not None and _major_minor(built) != _major_minor(torch_version):
        raise ImportError(
            f"minitorch_ext was compiled against torch {built}, but torch {torch_version} is running; "
            f"torch's C++ ABI differs between those releases. Rebuild against the running torch: "
            f"`{FIX}` (in the source folder; an isolated build compiles against the torch its build "
            f"environment resolved)")
    if getattr(meta, "CUDA", False) and torch_cuda is None:
        raise ImportError(
            f"minitorch_ext was compiled with CUDA kernels against a CUDA build of torch {built}, but the "
            f"running torch {torch_version} is a CPU-only build. Rebuild: `{FIX}`")
    isa = getattr(meta, "CPU_ISA", "default")
    lacks = [f for f in ISA_NEEDS.get(isa, ()) if flags is not None and f not in flags]
    if lacks:
        raise ImportError(
            f"minitorch_ext was compiled for the {isa} instruction set, which this CPU lacks "
            f"({', '.join(lacks)}); it would crash with an illegal instruction. Rebuild on this machine "
            f"(`{FIX}` picks the widest ISA it has) or set MINITORCH_EXT_CPU_ISA=avx2|default when building")


def undefined_symbol_error(err: ImportError, torch_version: str) -> ImportError:
    """A clearer error for an extension that does not link against the running torch."""
    return ImportError(
        f"minitorch_ext's compiled extension does not match the running torch {torch_version} "
        f"({err}). It was most likely built against another torch: rebuild with `{FIX}`")
