"""Which implementation runs: "cpp" (the compiled C++/CUDA kernels) or "triton".

Defaults: CPU tensors -> "cpp" (the C++ kernel); CUDA tensors -> "cpp" (the CUDA
kernel) when this build compiled one, else "triton". `MINITORCH_EXT_BACKEND`
sets the choice from the environment, `use_backend` at run time (a plain call
or a context manager). An unavailable backend is an error that says what is
missing: we never fall back to native torch behind the user's back.
"""
from __future__ import annotations

import importlib.util
import os

BACKENDS = ("cpp", "triton")

_choice: str | None = None  # None: the per-device default


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _have_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _build_info() -> dict:
    from minitorch_ext import _C

    return _C.build_info()


def _cuda_built() -> bool:
    return bool(_build_info()["cuda"])


def _why_not(backend: str, device_type: str) -> str | None:
    """None when `backend` can run tensors of `device_type`, else the reason."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; expected one of {BACKENDS}"
    if device_type not in ("cpu", "cuda"):
        return f"minitorch_ext runs on 'cpu' and 'cuda' tensors, not {device_type!r}"
    if backend == "cpp":
        if device_type == "cuda" and not _cuda_built():
            return ("this build of minitorch_ext has no CUDA kernels; reinstall with a CUDA "
                    "toolkit (CUDA_HOME) and a CUDA build of torch, or use_backend('triton')")
        return None
    if not _have_triton():
        return "the 'triton' backend needs the triton package (pip install triton)"
    if device_type == "cpu" and not _triton_interpret():
        return ("the 'triton' backend runs CPU tensors only through Triton's interpreter: "
                "start Python with TRITON_INTERPRET=1")
    if device_type == "cuda" and _triton_interpret():
        return "TRITON_INTERPRET=1 is set, so Triton kernels cannot run on CUDA tensors"
    return None


def available_backends(device: str | None = None) -> list[str]:
    """Backends this build can run for `device` ('cpu' or 'cuda'; default: cuda if
    a GPU is visible, else cpu)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.device(device).type
    if dtype == "cuda" and not torch.cuda.is_available():
        return []
    return [b for b in BACKENDS if _why_not(b, dtype) is None]


class use_backend:
    """Select the backend: ``use_backend("triton")`` for the rest of the program,
    or ``with use_backend("cpp"): ...`` for a block. ``use_backend(None)`` returns
    to the per-device default."""

    def __init__(self, name: str | None):
        global _choice
        if name is not None:
            if name not in BACKENDS:
                raise ValueError(f"use_backend(name): unknown backend {name!r}; expected one of {BACKENDS}")
            import torch

            devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            reasons = [_why_not(name, d) for d in devices]
            if all(r is not None for r in reasons):
                raise RuntimeError(f"use_backend({name!r}): backend cannot run here: " + "; ".join(reasons))
        self._previous = _choice
        _choice = name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _choice
        _choice = self._previous
        return False


def current_backend() -> str | None:
    return _choice


def resolve(device) -> str:
    """The backend that runs a tensor on `device`; raises if it cannot.

    Meta tensors (torch.device("meta") model construction, FSDP's to_empty)
    run nothing: every op's fake kernel is also its Meta kernel, so any
    backend's op gives the right shapes and dtypes."""
    dtype = device.type if hasattr(device, "type") else str(device).split(":")[0]
    name = _choice
    if dtype == "meta":
        return name or "cpp"
    if name is None:
        if dtype == "cuda" and not _cuda_built():
            name = "triton"
        else:
            name = "cpp"
    reason = _why_not(name, dtype)
    if reason is not None:
        raise RuntimeError(f"minitorch_ext backend {name!r} cannot run {dtype} tensors: {reason}")
    return name


def _init_from_env():
    name = os.environ.get("MINITORCH_EXT_BACKEND")
    if name:
        if name not in BACKENDS:
            raise ValueError(f"MINITORCH_EXT_BACKEND={name!r}: expected one of {BACKENDS}")
        use_backend(name)
