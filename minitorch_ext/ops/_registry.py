"""How a Triton-backed op is registered with torch.library.

On a GPU: `torch.library.triton_op`, whose body launches kernels through
`torch.library.wrap_triton`, so torch.compile traces into the kernels.
Under Triton's interpreter (TRITON_INTERPRET=1, our CPU tests) that traced
path does not work (pytorch#152868), so the same function is registered as an
opaque `torch.library.custom_op` with an explicit fake kernel: eager calls,
opcheck and autograd behave the same, compile treats the op as a black box.
"""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_custom_op(name: str, *, mutates_args=(), fake=None):
    """Decorator: register `fn` as op `name` (triton_op on GPU, custom_op under the interpreter)."""

    def wrap(fn):
        if interpreting() or not hasattr(torch.library, "triton_op"):
            op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
            if fake is not None:
                op.register_fake(fake)
        else:
            op = torch.library.triton_op(name, fn, mutates_args=mutates_args)
        return op

    return wrap


# ---------------------------------------------------------------------------
# autocast: each op follows torch's autocast policy for the op it replaces
# ---------------------------------------------------------------------------

_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA"}
_AUTOCAST_LIB = None
_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)  # autocast never touches float64


def _autocast_cast(x, device: str, dtype):
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if (x.device.type == device and x.dtype in _ELIGIBLE) else x
    if isinstance(x, (list, tuple)):
        return type(x)(_autocast_cast(v, device, dtype) for v in x)
    return x


def register_autocast_policy(name: str, **policies: str) -> None:
    """Give op `name` ("minitorch_ext::op") torch's autocast behaviour per device:
    ``"fp32"`` casts its floating inputs to float32 (torch's fp32 list: layer_norm and
    rms_norm on CUDA, softmax, the losses), ``"lower"`` to the autocast dtype
    (torch.get_autocast_dtype: linear, conv, attention). A device not named keeps
    the default, a fallthrough: the op runs on its inputs as given, which is what
    torch does for an op on neither list (layer_norm on CPU). float64 inputs are
    never cast, as in torch.

        register_autocast_policy("minitorch_ext::linear_fwd", cpu="lower", cuda="lower")
    """
    global _AUTOCAST_LIB
    if _AUTOCAST_LIB is None:
        _AUTOCAST_LIB = torch.library.Library("minitorch_ext", "IMPL")
    ns, opname = name.split("::")
    for device, policy in policies.items():
        if policy not in ("fp32", "lower"):
            raise ValueError(f"register_autocast_policy: policy {policy!r}: expected 'fp32' or 'lower'")
        key = _AUTOCAST_KEYS[device]
        op = getattr(getattr(torch.ops, ns), opname).default

        def kernel(*args, _op=op, _device=device, _policy=policy, _key=key, **kwargs):
            dtype = torch.float32 if _policy == "fp32" else torch.get_autocast_dtype(_device)
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return _op(*_autocast_cast(args, _device, dtype),
                           **{k: _autocast_cast(v, _device, dtype) for k, v in kwargs.items()})

        _AUTOCAST_LIB.impl(opname, kernel, key)


# ---------------------------------------------------------------------------
# torch's names for scalar types, as its error messages print them
# ---------------------------------------------------------------------------

_TYPE_NAMES = {torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char",
               torch.uint8: "Byte", torch.bool: "Bool", torch.float16: "Half", torch.float32: "Float",
               torch.float64: "Double", torch.bfloat16: "BFloat16", torch.complex64: "ComplexFloat",
               torch.complex128: "ComplexDouble"}


def scalar_type_name(dtype: torch.dtype) -> str:
    """torch's ScalarType name of `dtype` ("Long", "Half", ...), as in "... not implemented for 'Long'"."""
    return _TYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
