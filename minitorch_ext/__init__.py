"""minitorch_ext: hand-written CPU (C++), CUDA and Triton kernels for PyTorch.

    import minitorch_ext as mte
    mte.nn.functional.layer_norm(x, (512,))      # == torch.nn.functional.layer_norm
    mte.nn.LayerNorm(512)                         # == torch.nn.LayerNorm(512)
    mte.use_backend("triton")                     # or "cpp"; also a context manager
    mte.available_backends("cpu")
    torch.ops.minitorch_ext.*                     # the raw registered ops
"""
import torch  # noqa: F401  (loads libtorch before our extension)

from . import _preflight


def _load_extension():
    """Check that the build fits this process (torch version, CUDA, CPU ISA), then load _C."""
    try:
        from . import _build_meta
    except ImportError:  # built by an older setup.py: no record to compare
        _build_meta = None
    if _build_meta is not None:
        _preflight.check_build(_build_meta, torch.__version__, torch.version.cuda, _preflight.cpu_flags())
    try:
        from . import _C
    except ImportError as e:
        if "undefined symbol" in str(e):
            raise _preflight.undefined_symbol_error(e, torch.__version__) from None
        raise
    return _C


_C = _load_extension()  # registers the C++/CUDA kernels with the dispatcher
from ._backend import available_backends, current_backend, use_backend
from . import ops  # noqa: F401  fake kernels, autograd, Triton ops
from . import nn  # noqa: F401
from . import optim  # noqa: F401

__version__ = "0.1.0"

__all__ = ["nn", "ops", "optim", "use_backend", "available_backends", "current_backend", "build_info",
           "empty_cache", "cache_stats"]


def build_info() -> dict:
    """What this build compiled: CPU ISA, CUDA and its archs, torch version built against."""
    return _C.build_info()


def empty_cache() -> int:
    """Release the free blocks the CPU output cache holds (like torch.cuda.empty_cache); returns bytes freed.

    Our CPU kernels draw outputs of >= 1 MiB from a cache of freed blocks whose pages are
    already mapped, saving the page faults a fresh large tensor costs.
    MINITORCH_EXT_CPU_CACHE_MB (default 1024, 0 = off) bounds what it keeps."""
    return _C.empty_cache()


def cache_stats() -> dict:
    """{'cached_bytes', 'hits', 'misses'} of the CPU output cache."""
    b, h, m = _C.cache_stats()
    return {"cached_bytes": b, "hits": h, "misses": m}


_backend._init_from_env()
