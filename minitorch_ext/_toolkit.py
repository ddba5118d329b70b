"""Find a complete CUDA toolkit for the build, or say in one line why there is none.

Used by setup.py before torch.utils.cpp_extension is imported (it reads
CUDA_HOME once, at import), and by the tests. Plain Python, no torch import,
so setup.py can load this file by path without importing the package.

A toolkit is accepted only when it is complete: the `nvcc` the build will run
(bin/nvcc, executable), `include/cuda_runtime.h`, and `libcudart.so` in
`lib64/`, `lib/` or `targets/<arch>-linux/lib/`. Candidates, in order:

    1. $CUDA_HOME   2. $CUDA_PATH   3. the nvcc on PATH   4. /usr/local/cuda

The nvcc on PATH is followed through symlinks and through small wrapper
scripts (`exec /real/toolkit/bin/nvcc "$@"`), so a wrapper in a general bin/
folder leads to the toolkit it runs, not to that folder's parent.
MINITORCH_EXT_CUDA_SEARCH=dir[:dir...] replaces the candidate list (tests, or
to point at one toolkit among several).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import List, Optional

DEFAULT_ROOT = "/usr/local/cuda"


@dataclass
class Probe:
    home: Optional[str] = None          # the accepted toolkit root, or None
    version: Optional[str] = None       # nvcc's release, e.g. "13.0"
    reason: str = ""                    # one line: why no toolkit was accepted
    tried: List[str] = field(default_factory=list)


def missing_parts(root: str) -> List[str]:
    """What a toolkit at `root` lacks (empty: complete)."""
    lacks = []
    nvcc = os.path.join(root, "bin", "nvcc")
    if not (os.path.isfile(nvcc) and os.access(nvcc, os.X_OK)):
        lacks.append("bin/nvcc")
    if not os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
        lacks.append("include/cuda_runtime.h")
    libdirs = ["lib64", "lib"] + [os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "targets", "*", "lib"))]
    if not any(glob.glob(os.path.join(root, d, "libcudart.so*")) for d in libdirs):
        lacks.append("lib64/libcudart.so")
    return lacks


def _wrapper_target(path: str) -> Optional[str]:
    """The real nvcc a small shell wrapper execs, if `path` is such a script."""
    try:
        if os.path.getsize(path) > 64 * 1024:
            return None
        with open(path, "rb") as f:
            head = f.read(2)
            if head != b"#!":
                return None
            text = (head + f.read()).decode("utf-8", "replace")
    except OSError:
        return None
    for m in re.finditer(r"(/[^\s\"';|&]*?/bin/nvcc)\b", text):
        cand = os.path.realpath(m.group(1))
        if cand != os.path.realpath(path) and os.path.isfile(cand):
            return cand
    return None


def _root_of_nvcc(nvcc: str) -> str:
    real = os.path.realpath(nvcc)
    target = _wrapper_target(real)
    if target is not None:
        real = target
    return os.path.dirname(os.path.dirname(real))


def candidates(env=None) -> List[tuple]:
    """(where it came from, root) in search order, duplicates dropped."""
    env = os.environ if env is None else env
    out = []
    search = env.get("MINITORCH_EXT_CUDA_SEARCH")
    if search is not None:
        out = [("MINITORCH_EXT_CUDA_SEARCH", p) for p in search.split(os.pathsep) if p]
    else:
        for var in ("CUDA_HOME", "CUDA_PATH"):
            if env.get(var):
                out.append((var, env[var]))
        nvcc = shutil.which("nvcc", path=env.get("PATH"))
        if nvcc:
            out.append(("nvcc on PATH", _root_of_nvcc(nvcc)))
        out.append(("default", DEFAULT_ROOT))
    seen, uniq = set(), []
    for src, root in out:
        key = os.path.realpath(root)
        if key not in seen:
            seen.add(key)
            uniq.append((src, root))
    return uniq


def nvcc_version(root: str) -> Optional[str]:
    try:
        out = subprocess.run([os.path.join(root, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def find_toolkit(torch_cuda: Optional[str], env=None) -> Probe:
    """The first complete toolkit whose major version matches torch's CUDA (`torch.version.cuda`)."""
    probe = Probe()
    notes = []
    for src, root in candidates(env):
        probe.tried.append(root)
        lacks = missing_parts(root)
        if lacks:
            notes.append(f"{root} ({src}) lacks {', '.join(lacks)}" if os.path.isdir(root)
                         else f"{root} ({src}) does not exist")
            continue
        version = nvcc_version(root)
        if version is None:
            notes.append(f"{root} ({src}): bin/nvcc --version gave no release number")
            continue
        if torch_cuda and version.split(".")[0] != torch_cuda.split(".")[0]:
            notes.append(f"{root} ({src}) is CUDA {version}, but torch was built with CUDA {torch_cuda}")
            continue
        probe.home, probe.version = root, version
        return probe
    probe.reason = "no complete CUDA toolkit: " + "; ".join(notes) if notes else "no CUDA toolkit candidates"
    return probe
